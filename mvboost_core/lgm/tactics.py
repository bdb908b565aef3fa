"""CPU inference tactics for the LGM network: subclasses of :mod:`.network`'s modules that compute the same values
with less memory (and, for small-map convolutions, less time) when autograd is off.

Swapped in and out by :func:`mvboost_core.tactics.enable_cpu_inference_tactics` (class swap; parameters, state-dict
keys and the module tree are unchanged). With autograd on, every subclass runs its parent's forward.

* :class:`InferenceUNet`: skip tensors the decoder never reads (the full-resolution ones) are not kept and every
  other skip is released as soon as it is consumed; on maps of at least :data:`CHUNK_PIXELS` the stem (``conv_in`` +
  first down block) and the head (last upsample + last up block + ``conv_out``) run one image at a time, so their
  temporaries exist for one view, not four (everything there is per-image: convs, GroupNorm over one image's groups,
  SiLU); freed heap memory is returned to the OS between blocks (:func:`mvboost_core.heap.release_freed_heap`).
* :class:`InferenceResnetBlock`: image by image on maps of at least :data:`CHUNK_PIXELS` (including the decoder's
  skip concatenation, done per image), SiLU / residual / scaling in place.
* :class:`InferenceMVAttention`: residual and scaling in place.
* :class:`InferenceUpBlock`: the 2x nearest upsampling + conv one image at a time (the upsampled input is 4x the
  input's size).
* :class:`InferenceConv2d`: a 3x3 convolution on a map with fewer pixels than output channels (LGM's 2048->1024
  convs at 8² and 16²) runs as im2col + one GEMM per image (:func:`conv3x3_as_matmul`) instead of oneDNN, which
  copies the whole weight (72 MiB for 2048->1024) into its blocked layout on every call: same speed or faster, a
  fraction of the transient memory, and closer to a float64 conv (max error 2e-6 vs oneDNN's 2.4e-5 on a
  2048->1024 8² conv with unit-variance inputs).

Measured (docs/benchmarks.md, LGM big fp32, 2 threads, AMD EPYC AVX2): peak RSS 2.39 GiB with the tactics vs
2.66-2.69 GiB without, time within noise.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..heap import release_freed_heap
from .network import SKIP_SCALE, DownBlock, MVAttention, ResnetBlock, UNet, UpBlock

__all__ = ["CHUNK_PIXELS", "SWAPS", "InferenceUNet", "InferenceResnetBlock", "InferenceMVAttention",
           "InferenceDownBlock", "InferenceUpBlock", "InferenceConv2d", "conv3x3_as_matmul"]

CHUNK_PIXELS = 64 * 64  # maps at least this large run image by image during inference


class InferenceConv2d(nn.Conv2d):
    """``nn.Conv2d`` with the small-map GEMM path of the module docstring (CPU, no autograd)."""

    def _conv_forward(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        if (
            not torch.is_grad_enabled()
            and x.device.type == "cpu"
            and x.ndim == 4
            and x.shape[-2] * x.shape[-1] < self.out_channels
            and self.kernel_size == (3, 3) and self.stride == (1, 1) and self.padding == (1, 1)
            and self.dilation == (1, 1) and self.groups == 1 and self.padding_mode == "zeros"
        ):
            return conv3x3_as_matmul(x, w, b)
        return super()._conv_forward(x, w, b)


def conv3x3_as_matmul(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """3x3 conv, stride 1, zero padding 1, of ``x [N,C,H,W]`` with ``w [O,C,3,3]`` (+ ``b [O]``) -> ``[N,O,H,W]``:
    per image, ``F.unfold`` gives ``cols [C·9, H·W]`` (row ``c·9 + ky·3 + kx``, the order of ``w.reshape(O, C·9)``)
    and one GEMM writes the output in place. Temporaries: one image's ``cols`` (C·9·H·W floats). Any input
    layout (attention outputs are channels-last strided); the output is contiguous NCHW."""
    N, C, H, W = x.shape
    O = w.shape[0]
    out = x.new_empty((N, O, H, W))
    w2 = w.reshape(O, C * 9)
    for i in range(N):
        cols = F.unfold(x[i : i + 1], 3, padding=1)[0]
        o = out[i].view(O, H * W)
        if b is None:
            torch.mm(w2, cols, out=o)
        else:
            torch.addmm(b.unsqueeze(1), w2, cols, out=o)
        del cols
    return out


class InferenceResnetBlock(ResnetBlock):
    """:class:`ResnetBlock` that may take the decoder's skip separately (concatenated after ``x``, per image)."""

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        """``[BV,cx,H,W]`` (+ ``skip [BV,cs,H,W]``) -> ``[BV,cout,H,W]``."""
        if torch.is_grad_enabled():
            return super().forward(x if skip is None else torch.cat([x, skip], dim=1))
        BV, _, H, W = x.shape
        if BV == 1 or H * W < CHUNK_PIXELS:
            return self._forward_inplace(x if skip is None else torch.cat([x, skip], dim=1))
        out = None
        for i in range(BV):
            xi = x[i : i + 1] if skip is None else torch.cat([x[i : i + 1], skip[i : i + 1]], dim=1)
            oi = self._forward_inplace(xi)
            if out is None:
                out = oi.new_empty((BV, *oi.shape[1:]))
            out[i : i + 1] = oi
            del xi, oi
        return out

    def _forward_inplace(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x), inplace=True))
        h = self.conv2(F.silu(self.norm2(h), inplace=True))
        return h.add_(self.shortcut(x)).mul_(SKIP_SCALE)


class InferenceMVAttention(MVAttention):
    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            return super().forward(x)
        return self.attend(x).add_(x).mul_(SKIP_SCALE)  # attend() returns a fresh tensor


class InferenceDownBlock(DownBlock):
    def forward(self, x: Tensor, keep=None) -> tuple[Tensor, list]:
        """As :meth:`DownBlock.forward`; a skip is ``None`` where ``keep()`` says the decoder never reads it."""
        if torch.is_grad_enabled() or keep is None:
            return super().forward(x)
        skips = []
        for i, net in enumerate(self.nets):
            x = net(x)
            if self.attns is not None:
                x = self.attns[i](x)
            skips.append(x if keep() else None)
        if self.downsample is not None:
            x = self.downsample(x)
            skips.append(x if keep() else None)
        return x, skips


class InferenceUpBlock(UpBlock):
    def forward(self, x: Tensor, xs: list, upsample: bool = True) -> Tensor:
        """Resnets (each taking ``xs.pop()``: the list is consumed, each skip released after use) and attentions,
        then the upsample unless ``upsample=False`` (the caller then applies :meth:`up` itself)."""
        if torch.is_grad_enabled():
            return super().forward(x, xs)
        for i, net in enumerate(self.nets):
            x = net(x, xs.pop())
            if self.attns is not None:
                x = self.attns[i](x)
        return self.up(x) if upsample else x

    def up(self, x: Tensor) -> Tensor:
        """Nearest 2x upsampling + 3x3 conv (identity without an upsampler), one image at a time."""
        if self.upsample is None:
            return x
        if torch.is_grad_enabled() or x.shape[0] == 1:
            return self.upsample(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return _image_by_image(self.up, x)[0]


class InferenceUNet(UNet):
    def forward(self, x: Tensor) -> Tensor:  # [B*4,9,S,S] -> [B*4,14,s,s]
        if torch.is_grad_enabled():
            return super().forward(x)
        BV, _, H, W = x.shape
        blk0, last = self.down_blocks[0], self.up_blocks[-1]
        by_image = BV > 1
        stem_by_image = by_image and H * W >= CHUNK_PIXELS and blk0.attns is None
        n_stem = 1 + len(blk0.nets) + (blk0.downsample is not None)  # skips produced by the stem
        if stem_by_image:
            x, skips = _image_by_image(lambda xi: self._stem(xi, self._keeper(0)), x)
        else:
            x, skips = self._stem(x, self._keeper(0))
        keep = self._keeper(n_stem)
        for blk in self.down_blocks[1:]:
            release_freed_heap(x)
            x, s = blk(x, keep)
            skips.extend(s)
            del s
        release_freed_heap(x)
        x = self.mid_block(x)
        head_pixels = H * W * 4 ** (len(self.up_blocks) - 1) // 4 ** (len(self.down_blocks) - 1)
        head_by_image = by_image and last.attns is None and head_pixels >= CHUNK_PIXELS
        for blk in self.up_blocks[:-1]:
            release_freed_heap(x)
            x = blk(x, skips, upsample=not (head_by_image and blk is self.up_blocks[-2]))
        release_freed_heap(x)
        if not head_by_image:
            x = self._head(x, skips)
        else:
            prev = self.up_blocks[-2] if len(self.up_blocks) > 1 else None
            n = len(last.nets)  # the head reads the last n skips; each image gets its slices of them
            head_skips, skips[-n:] = skips[-n:], []
            x = _image_by_image(
                lambda xi, *si: self._head(prev.up(xi) if prev is not None else xi, list(si)), x, *head_skips
            )[0]
            del head_skips
        release_freed_heap(x)
        return x

    def _unused_skips(self) -> int:
        n_skips = 1 + sum(len(b.nets) + (0 if b.downsample is None else 1) for b in self.down_blocks)
        return n_skips - sum(len(b.nets) for b in self.up_blocks)

    def _keeper(self, start: int):
        """``keep()`` for the skips numbered from ``start``: False for the first unused ones (never read)."""
        counter = iter(range(start, 10**6))
        unused = self._unused_skips()
        return lambda: next(counter) >= unused

    def _stem(self, x: Tensor, keep) -> tuple[Tensor, list]:
        """``conv_in`` + the first down block: ``[n,9,S,S]`` -> (output, its skips with ``None`` for unused)."""
        x = self.conv_in(x)
        skips = [x if keep() else None]
        x, s = self.down_blocks[0](x, keep)
        return x, skips + s

    def _head(self, x: Tensor, skips: list) -> Tensor:
        """The last up block (consuming ``skips``) + ``norm_out``/SiLU/``conv_out`` -> ``[n,14,s,s]``."""
        x = self.up_blocks[-1](x, skips)
        return self.conv_out(F.silu(self.norm_out(x), inplace=True))


def _image_by_image(fn, x: Tensor, *batched: Tensor) -> tuple[Tensor, list]:
    """Run ``fn(x[i:i+1], *(b[i:i+1] for b in batched))`` for each image ``i`` and gather its results into
    batch tensors allocated once. ``fn`` returns a tensor, or ``(tensor, list of tensors or None)`` (e.g. skips;
    a list entry that *is* the returned tensor shares its buffer). Returns ``(tensor, list)``."""
    out, outs = None, []
    for i in range(x.shape[0]):
        res = fn(x[i : i + 1], *(b[i : i + 1] for b in batched))
        yi, si = res if isinstance(res, tuple) else (res, [])
        if out is None:
            out = yi.new_empty((x.shape[0], *yi.shape[1:]))
            outs = [None if t is None else out if t is yi else t.new_empty((x.shape[0], *t.shape[1:])) for t in si]
        out[i : i + 1] = yi
        for buf, t in zip(outs, si):
            if buf is not None and buf is not out:
                buf[i : i + 1] = t
        del res, yi, si
    return out, outs


#: plain class -> tactic subclass (exact types), used by :func:`mvboost_core.tactics.enable_cpu_inference_tactics`
SWAPS: dict[type, type] = {
    UNet: InferenceUNet,
    DownBlock: InferenceDownBlock,
    UpBlock: InferenceUpBlock,
    ResnetBlock: InferenceResnetBlock,
    MVAttention: InferenceMVAttention,
    nn.Conv2d: InferenceConv2d,
}
