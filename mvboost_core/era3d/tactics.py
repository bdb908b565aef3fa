"""CPU inference tactics for Era3D's UNet: subclasses of :mod:`.blocks`' modules (and diffusers' ``ResnetBlock2D``)
that compute the same values with fewer large allocations when autograd is off.

Swapped in and out by :func:`mvboost_core.tactics.enable_cpu_inference_tactics` (class swap; parameters and
state-dict keys unchanged). With autograd on, every subclass runs its parent's forward.

* :class:`InferenceResnetBlock2D`: SiLU, the temb and shortcut additions and the output scaling write into tensors
  the block just allocated (four feature-map-sized allocations, and their page faults, fewer per block).
* :class:`InferenceMVTransformerBlock`: residuals accumulated into each sublayer's fresh output; the GEGLU
  feed-forward runs on batch slices of at most :data:`FF_CHUNK_TOKENS` tokens (its 8·C-wide intermediate is ≈85 MB
  instead of ≈1 GB at the 64×64 level with batch 12) with the product written into GELU's output.
* :class:`InferenceTransformerMV2D`: returns freed heap memory to the OS before each transformer
  (:func:`mvboost_core.heap.release_freed_heap`) and adds the residual first, so the sum keeps the residual's
  NCHW-contiguous layout (the convolutions that follow need it for NNPACK); addition is commutative.
* every ``nn.Conv2d`` becomes a :class:`~mvboost_core.fastconv.FastConv2d` (NNPACK's Winograd 3×3 path where the
  CPU class prefers it).

Measured (docs/benchmarks.md, batch-12 fp32 forward, 2 threads, AMD EPYC AVX2): minor page faults 6.9 M -> 5.1 M,
peak RSS 5.50 GiB with the heap trim vs 5.65-5.88 GiB without; NNPACK 0.4-0.75x oneDNN's time per convolution.
Bit equality with the autograd forwards is asserted by the tests.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.models.resnet import ResnetBlock2D

from ..fastconv import FastConv2d
from ..heap import release_freed_heap
from .blocks import MVTransformerBlock, TransformerMV2D

__all__ = ["FF_CHUNK_TOKENS", "SWAPS", "InferenceResnetBlock2D", "InferenceMVTransformerBlock",
           "InferenceTransformerMV2D"]

#: token count per feed-forward slice (see InferenceMVTransformerBlock.forward)
FF_CHUNK_TOKENS = 8192


class InferenceResnetBlock2D(ResnetBlock2D):
    """diffusers' ``ResnetBlock2D`` whose no-grad forward works in place.

    GroupNorm → SiLU → conv1 → + temb → GroupNorm → SiLU → dropout → conv2 → + shortcut → / output_scale_factor,
    the same operations on the same values as diffusers' forward. Used when autograd is off and the block has no
    resampler, ``"default"`` temb norm and a SiLU (Era3D's configuration); anything else runs diffusers' forward.
    """

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if (torch.is_grad_enabled() or args or kwargs or self.upsample is not None or self.downsample is not None
                or self.time_embedding_norm != "default" or not isinstance(self.nonlinearity, nn.SiLU)):
            return super().forward(input_tensor, temb, *args, **kwargs)
        h = F.silu(self.norm1(input_tensor), inplace=True)
        h = self.conv1(h)
        if self.time_emb_proj is not None and temb is not None:
            t = temb if self.skip_time_act else F.silu(temb)
            h.add_(self.time_emb_proj(t)[:, :, None, None])
        elif temb is not None:
            h.add_(temb)
        h = self.conv2(self.dropout(F.silu(self.norm2(h), inplace=True)))
        shortcut = input_tensor if self.conv_shortcut is None else self.conv_shortcut(input_tensor)
        h.add_(shortcut)  # = shortcut + h (addition is commutative)
        if self.output_scale_factor != 1.0:
            h.div_(self.output_scale_factor)
        return h


class InferenceMVTransformerBlock(MVTransformerBlock):
    def forward(self, x: torch.Tensor, context: torch.Tensor, height: int, width: int) -> torch.Tensor:
        if torch.is_grad_enabled():
            return super().forward(x, context, height, width)
        # each sublayer's output is fresh: accumulate the residual into it
        x = self.attn1(self.norm1(x)).add_(x)
        if self.attn_mv is not None:
            x = self.attn_mv(self.norm_mv(x), height=height, width=width).add_(x)
        x = self.attn2(self.norm2(x), encoder_hidden_states=context).add_(x)
        b, l, _ = x.shape
        if b * l <= 2 * FF_CHUNK_TOKENS:
            return self._feed_forward(self.norm3(x)).add_(x)
        out = torch.empty_like(x)
        step = max(1, FF_CHUNK_TOKENS // l)
        for i in range(0, b, step):  # the feed-forward is per token: batch slices give identical values
            xs = x[i:i + step]
            torch.add(self._feed_forward(self.norm3(xs)), xs, out=out[i:i + step])
        return out

    def _feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        """diffusers' GEGLU FeedForward (proj → a·gelu(gate) → dropout → linear) without autograd, with the
        product written into gelu's output (a·g = g·a exactly). x [..., C] -> [..., C]."""
        geglu, drop, out = self.ff.net[0], self.ff.net[1], self.ff.net[2]
        a, gate = geglu.proj(x).chunk(2, dim=-1)
        return out(drop(geglu.gelu(gate).mul_(a)))


class InferenceTransformerMV2D(TransformerMV2D):
    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return super().forward(x, context)
        release_freed_heap(x)  # return the previous block's freed activations to the OS
        b, c, h, w = x.shape
        t = self.norm(x).permute(0, 2, 3, 1).reshape(b, h * w, c)
        t = self.proj_in(t)
        for blk in self.transformer_blocks:
            t = blk(t, context, h, w)
        t = self.proj_out(t)
        return x + t.reshape(b, h, w, -1).permute(0, 3, 1, 2)  # residual first: NCHW result


#: plain class -> tactic subclass (exact types), used by :func:`mvboost_core.tactics.enable_cpu_inference_tactics`
SWAPS: dict[type, type] = {
    ResnetBlock2D: InferenceResnetBlock2D,
    MVTransformerBlock: InferenceMVTransformerBlock,
    TransformerMV2D: InferenceTransformerMV2D,
    nn.Conv2d: FastConv2d,
}
