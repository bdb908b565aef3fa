"""Attention processors of Era3D's multi-view UNet, on ``torch.nn.functional.scaled_dot_product_attention``.

The released Era3D weights only ever ran with upstream's xformers processors; these functions reproduce those
semantics (softmax(Q Kᵀ / √d) V, no mask, no dropout) with our own code:

* :func:`joint_self_attention` (``attn1``): the batch is ``[normal half ; colour half]``; sample ``i`` of the
  normal half and sample ``i`` of the colour half attend jointly over their ``2·h·w`` tokens (normal tokens first).
* :func:`rowwise_mv_attention` (``attn_mv``): consecutive groups of ``num_views`` samples (one object's views of one
  domain and CFG branch); the tokens of image row ``r`` of all views of a group (``num_views·w`` tokens, view-major)
  attend to each other.
* :func:`cross_attention` (``attn2``): each sample attends to its own prompt tokens.

All attention calls use 4-D ``[batch, heads, tokens, head_dim]`` tensors: with 3-D inputs the CPU SDPA backend
falls back to the math kernel and materialises the full score matrix (8 GiB for one 64×64 joint attention).

The projections are applied per token, so the token regrouping is done once on the normalised hidden states
(``C`` wide) instead of three times on q, k and v; mathematically identical to upstream's order.

``upcast_attention`` (true in the released config): the released model ran with xformers'
``memory_efficient_attention``, which takes q, k, v in the half-precision compute dtype and computes the scores and
the softmax in float32 inside the kernel (the probabilities go back to the input dtype for the product with v); the
flag itself only acts in diffusers' unfused ``AttnProcessor``, which the released model never used. PyTorch's fused
SDPA kernels (CPU flash attention, CUDA flash / memory-efficient) accumulate the same way for float16 / bfloat16, so
q, k, v go to :func:`torch.nn.functional.scaled_dot_product_attention` in the compute dtype, as upstream passes them
to xformers. Measured on an AMX host (docs/benchmarks.md): Era3D UNet batch 12 in bf16, relative L2 vs fp32
1.429e-2 with q, k, v in bf16 vs 1.428e-2 with them cast to float32, forward 13.8 s vs 22.6 s
(``tests/test_era3d_unet.py::test_half_attention_core_accumulates_in_float32`` checks the accumulation).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["attention_core", "joint_self_attention", "rowwise_mv_attention", "cross_attention", "self_attention",
           "JointAttnProcessor", "RowwiseMVAttnProcessor", "SDPAAttnProcessor"]


def attention_core(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Multi-head attention of already projected tokens.

    ``q`` [N, Lq, heads·d], ``k``/``v`` [N, Lk, heads·d] (one dtype) -> [N, Lq, heads·d] in that dtype.
    ``attn`` is a diffusers ``Attention`` module (gives ``heads``). Half-precision inputs stay half: the fused kernel
    computes scores and softmax in float32 (module docstring).
    """
    n, lq, inner = q.shape
    lk = k.shape[1]
    heads = attn.heads
    d = inner // heads
    qh = q.view(n, lq, heads, d).transpose(1, 2)
    kh = k.view(n, lk, heads, d).transpose(1, 2)
    vh = v.view(n, lk, heads, d).transpose(1, 2)
    o = F.scaled_dot_product_attention(qh, kh, vh)  # [N, heads, Lq, d], fp32 scores/softmax inside for fp16/bf16
    return o.transpose(1, 2).reshape(n, lq, inner)


def _project_attend(attn, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
    ctx = x if context is None else context
    q = attn.to_q(x)
    k = attn.to_k(ctx)
    v = attn.to_v(ctx)
    o = attention_core(attn, q, k, v)
    o = attn.to_out[0](o)
    return attn.to_out[1](o)


def self_attention(attn, x: torch.Tensor) -> torch.Tensor:
    """Plain per-sample self-attention (``mvcd_attention=False`` configs). x [B, L, C] -> [B, L, C]."""
    return _project_attend(attn, x)


def cross_attention(attn, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """``attn2``: x [B, L, C] attends to context [B, T, cross_attention_dim] -> [B, L, C]."""
    return _project_attend(attn, x, context)


def joint_self_attention(attn, x: torch.Tensor) -> torch.Tensor:
    """``attn1`` of Era3D: joint normal/colour self-attention.

    x [B, L, C] with B = 2·M laid out ``[normal samples (M) ; colour samples (M)]``. Sample i of each half is
    concatenated on the token axis (normal first, 2·L tokens), attended with attn's weights, and split back.
    """
    b, l, c = x.shape
    if b % 2:
        raise ValueError(
            f"joint normal/colour attention needs an even batch [normals ; colours], got batch {b}"
        )
    m = b // 2
    xj = torch.cat([x[:m], x[m:]], dim=1)  # [M, 2L, C]
    o = _project_attend(attn, xj)
    return torch.cat([o[:, :l], o[:, l:]], dim=0)


def rowwise_mv_attention(attn, x: torch.Tensor, num_views: int, height: int, width: int,
                         axis: str = "row") -> torch.Tensor:
    """``attn_mv`` of Era3D: row-wise multi-view attention.

    x [B, h·w, C] (tokens row-major), B a multiple of ``num_views``; consecutive ``num_views`` samples form a group.
    For every row r, the tokens of row r of the group's views (``num_views·w`` tokens, view-major) attend to each
    other. ``axis="column"`` groups image columns instead: NOT the reference, only used by tests to show the
    parity fixture catches that mistake.
    """
    b, l, c = x.shape
    if b % num_views:
        raise ValueError(f"multi-view attention needs a batch that is a multiple of num_views={num_views}, got {b}")
    if height * width != l:
        raise ValueError(f"token count {l} does not match feature map {height}x{width}")
    g = b // num_views
    xv = x.view(g, num_views, height, width, c)
    if axis == "row":
        xr = xv.permute(0, 2, 1, 3, 4).reshape(g * height, num_views * width, c)
    elif axis == "column":
        xr = xv.permute(0, 3, 1, 2, 4).reshape(g * width, num_views * height, c)
    else:
        raise ValueError(f"axis must be 'row' or 'column', got {axis!r}")
    o = _project_attend(attn, xr)
    if axis == "row":
        o = o.view(g, height, num_views, width, c).permute(0, 2, 1, 3, 4)
    else:
        o = o.view(g, width, num_views, height, c).permute(0, 2, 3, 1, 4)
    return o.reshape(b, l, c)


# ---------------------------------------------------------------------------------------------------------------
# diffusers-style processors, installed on the ``Attention`` modules so that calling the module itself (as diffusers
# code and ``unet.attn_processors`` users do) runs Era3D's semantics. Signature: (attn, hidden_states [B,L,C],
# encoder_hidden_states=None, attention_mask=None, ...) -> [B,L,C]. Masks are not supported (Era3D uses none).
class _Era3DProcessorBase:
    def _no_mask(self, attention_mask):
        if attention_mask is not None:
            raise NotImplementedError(f"{type(self).__name__} does not support attention masks (Era3D uses none)")


class JointAttnProcessor(_Era3DProcessorBase):
    """``attn1``: joint normal/colour self-attention over the two batch halves (see :func:`joint_self_attention`)."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        self._no_mask(attention_mask)
        if encoder_hidden_states is not None:
            raise ValueError("the joint normal/colour attention is a self-attention (no encoder_hidden_states)")
        return joint_self_attention(attn, hidden_states)


class RowwiseMVAttnProcessor(_Era3DProcessorBase):
    """``attn_mv``: row-wise multi-view attention over groups of ``num_views`` consecutive samples.

    ``height``/``width`` of the feature map may be passed; otherwise the map is assumed square (as upstream).
    ``axis`` is ``"row"`` (reference); ``"column"`` exists only for tests.
    """

    def __init__(self, num_views: int, axis: str = "row"):
        self.num_views = num_views
        self.axis = axis

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 height: int | None = None, width: int | None = None):
        self._no_mask(attention_mask)
        if encoder_hidden_states is not None:
            raise ValueError("the row-wise multi-view attention is a self-attention (no encoder_hidden_states)")
        if height is None or width is None:
            height = width = int(round(hidden_states.shape[1] ** 0.5))
        return rowwise_mv_attention(attn, hidden_states, self.num_views, height, width, axis=self.axis)


class SDPAAttnProcessor(_Era3DProcessorBase):
    """``attn2`` (cross-attention to ``encoder_hidden_states``) or plain per-sample self-attention, 4-D SDPA."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        self._no_mask(attention_mask)
        if encoder_hidden_states is None:
            return self_attention(attn, hidden_states)
        return cross_attention(attn, hidden_states, encoder_hidden_states)
