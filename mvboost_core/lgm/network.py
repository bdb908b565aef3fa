"""The LGM network (Large Multi-View Gaussian Model, 3DTopia/LGM), re-implemented so its checkpoints load.

State-dict keys and shapes equal the reference exactly (``unet.*`` + a final 1x1 ``conv.*``); see
``../shared/notes/lgm.md`` for the architecture facts. Differences from the reference are implementation only:

* attention runs through :func:`torch.nn.functional.scaled_dot_product_attention` on 4-D ``[B,heads,N,d]``
  tensors (flash / memory-efficient kernels, no materialised score matrix, no xformers);
* skip tensors that the decoder never reads (the full-resolution ones) are not kept, and every other skip is
  released as soon as it is consumed; during inference, resnets on maps of 64² or more (including the decoder's
  skip concatenation), the stem (``conv_in`` + first down block) and the head (last upsample + last up block +
  ``conv_out``) run one image at a time, so their temporaries exist for one view, not four;
* without autograd, element-wise ops run in place, so inference holds few activation copies; on CPU, 3x3 convs
  on maps with fewer pixels than output channels run as im2col + GEMM (no per-call copy of the weight), and
  freed heap memory is returned to the OS between blocks (:func:`release_freed_heap`, glibc ``malloc_trim``);
* gaussian activations are applied in float32 whatever the compute dtype;
* the weights' storage dtype and the activations' compute dtype may differ (:attr:`LGM.compute_dtype`): e.g.
  bf16 weights (half the memory) computed in float32 on CPUs without native bf16 kernels, where bf16
  convolutions are ~9x slower than fp32; layers cast their weights on the fly, one layer at a time;
* an optional channels-last activation layout (:meth:`LGM.set_compute`), off by default: it speeds up the
  high-resolution CPU convolutions by ~30%, but PyTorch's channels-last GroupNorm kernel on CPU is ~100x less
  accurate (1.9e-4 vs 1.3e-6 max error on a 256² map), which breaks the fp32 parity tolerances.

Tensor layout: the 4 views of a sample are folded into the batch (``[B*4, C, H, W]``) everywhere except inside
the multi-view attention, which attends jointly over the tokens of all 4 views (token = ``v*H*W + row*W + col``).
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..heap import release_freed_heap
from .config import LGMConfig, get_config

__all__ = ["LGM", "UNet", "cpu_has_native", "MVAttention", "ResnetBlock", "gaussians_from_raw", "NUM_VIEWS"]

NUM_VIEWS = 4  # hard-coded in the reference network
IN_CHANNELS = 9  # RGB (ImageNet-normalised) + 6 Plücker channels
OUT_CHANNELS = 14  # pos 3, opacity 1, scale 3, rotation 4, rgb 3
SKIP_SCALE = math.sqrt(0.5)
HEADS = 16
LAYERS_PER_BLOCK = 2
CHUNK_PIXELS = 64 * 64  # resnets on maps at least this large run image by image during inference


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` whose weights may be stored in a narrower dtype than the activations: they are cast to the
    input's dtype on the fly (a no-op when the dtypes agree). Same state-dict keys as ``nn.Conv2d``.

    During CPU inference, a 3x3 conv on a map with fewer pixels than output channels (LGM's 2048->1024 convs at
    8² and 16²) runs as im2col + one GEMM per image (:func:`_conv3x3_as_matmul`) instead of oneDNN, which copies
    the whole weight (72 MiB for 2048->1024) into its blocked layout on every call: same speed or faster there,
    a fraction of the transient memory, and closer to a float64 conv (max error 2e-6 vs oneDNN's 2.4e-5 on
    a 2048->1024 8² conv with unit-variance inputs)."""

    def forward(self, x: Tensor) -> Tensor:
        w, b = self.weight, self.bias
        if w.dtype != x.dtype:
            w, b = w.to(x.dtype), (b.to(x.dtype) if b is not None else None)
        if (
            not torch.is_grad_enabled()
            and x.device.type == "cpu"
            and x.ndim == 4
            and x.shape[-2] * x.shape[-1] < self.out_channels
            and self.kernel_size == (3, 3) and self.stride == (1, 1) and self.padding == (1, 1)
            and self.dilation == (1, 1) and self.groups == 1 and self.padding_mode == "zeros"
        ):
            return _conv3x3_as_matmul(x, w, b)
        return self._conv_forward(x, w, b)


def _conv3x3_as_matmul(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
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


class Linear(nn.Linear):
    """``nn.Linear`` with on-the-fly weight casting (see :class:`Conv2d`); still an ``nn.Linear`` for peft."""

    def forward(self, x: Tensor) -> Tensor:
        w, b = self.weight, self.bias
        if w.dtype != x.dtype:
            w, b = w.to(x.dtype), (b.to(x.dtype) if b is not None else None)
        return F.linear(x, w, b)


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` with on-the-fly weight casting (see :class:`Conv2d`)."""

    def forward(self, x: Tensor) -> Tensor:
        w, b = self.weight, self.bias
        if w.dtype != x.dtype:
            w, b = w.to(x.dtype), b.to(x.dtype)
        return F.group_norm(x, self.num_groups, w, b, self.eps)


def _norm(c: int) -> GroupNorm:
    return GroupNorm(32, c, eps=1e-5, affine=True)


def _silu(x: Tensor) -> Tensor:
    # In place when no autograd graph is being recorded (inference); the out-of-place op otherwise.
    return F.silu(x, inplace=not torch.is_grad_enabled())


def _residual(h: Tensor, r: Tensor) -> Tensor:
    """``(h + r) * sqrt(0.5)``; in place on ``h`` during inference (``h`` is a fresh temporary there)."""
    if torch.is_grad_enabled():
        return (h + r) * SKIP_SCALE
    return h.add_(r).mul_(SKIP_SCALE)


class ResnetBlock(nn.Module):
    """``(conv2(silu(norm2(conv1(silu(norm1(x)))))) + shortcut(x)) * sqrt(0.5)``; 1x1 shortcut iff cin != cout."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1 = _norm(cin)
        self.conv1 = Conv2d(cin, cout, 3, 1, 1)
        self.norm2 = _norm(cout)
        self.conv2 = Conv2d(cout, cout, 3, 1, 1)
        self.shortcut = Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        """``[BV,cx,H,W]`` (+ optional ``skip [BV,cs,H,W]``, concatenated after ``x``) -> ``[BV,cout,H,W]``.

        During inference at high resolution the images are processed one at a time (every op here is
        per-image), so the block's temporaries exist for one image instead of the whole batch.
        """
        BV, _, H, W = x.shape
        if torch.is_grad_enabled() or BV == 1 or H * W < CHUNK_PIXELS:
            return self._forward(x if skip is None else torch.cat([x, skip], dim=1))
        out = None
        for i in range(BV):
            xi = x[i : i + 1] if skip is None else torch.cat([x[i : i + 1], skip[i : i + 1]], dim=1)
            oi = self._forward(xi)
            if out is None:
                out = oi.new_empty((BV, *oi.shape[1:]))
            out[i : i + 1] = oi
            del xi, oi
        return out

    def _forward(self, x: Tensor) -> Tensor:
        h = self.conv1(_silu(self.norm1(x)))
        h = self.conv2(_silu(self.norm2(h)))
        return _residual(h, self.shortcut(x))


class Attention(nn.Module):
    """Multi-head self-attention over ``[B, N, C]`` tokens: bias-free ``qkv`` (rows q|k|v, heads contiguous),
    scale ``head_dim**-0.5``, output ``proj`` with bias. ``qkv``/``proj`` are the LoRA targets."""

    def __init__(self, dim: int, num_heads: int = HEADS):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = Linear(dim, 3 * dim, bias=False)
        self.proj = Linear(dim, dim, bias=True)

    def forward(self, x: Tensor) -> Tensor:  # [B,N,C] -> [B,N,C]
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [B,heads,N,d]
        del qkv
        o = F.scaled_dot_product_attention(q, k, v)  # scale defaults to d**-0.5
        del q, k, v
        o = o.transpose(1, 2).reshape(B, N, C)
        return self.proj(o)


class MVAttention(nn.Module):
    """Cross-view self-attention: GroupNorm per image, then attention over the tokens of all 4 views of a
    sample, then ``(out + x) * sqrt(0.5)`` with the un-normalised input ``x``."""

    def __init__(self, dim: int, num_heads: int = HEADS, num_frames: int = NUM_VIEWS):
        super().__init__()
        self.num_frames = num_frames
        self.norm = _norm(dim)
        self.attn = Attention(dim, num_heads)

    def forward(self, x: Tensor) -> Tensor:  # [B*V,C,H,W] -> [B*V,C,H,W]
        BV, C, H, W = x.shape
        V = self.num_frames
        B = BV // V
        h = self.norm(x).reshape(B, V, C, H, W).permute(0, 1, 3, 4, 2).reshape(B, V * H * W, C)
        h = self.attn(h)
        h = h.reshape(B, V, H, W, C).permute(0, 1, 4, 2, 3).reshape(BV, C, H, W)
        return _residual(h, x)


class DownBlock(nn.Module):
    def __init__(self, cin: int, cout: int, attention: bool, downsample: bool):
        super().__init__()
        self.nets = nn.ModuleList([ResnetBlock(cin if i == 0 else cout, cout) for i in range(LAYERS_PER_BLOCK)])
        self.attns = nn.ModuleList([MVAttention(cout) for _ in range(LAYERS_PER_BLOCK)]) if attention else None
        self.downsample = Conv2d(cout, cout, 3, 2, 1) if downsample else None

    def forward(self, x: Tensor, keep) -> tuple[Tensor, list]:
        """Returns the output and the skips, each ``None`` when ``keep()`` says the decoder never reads it."""
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


class MidBlock(nn.Module):
    def __init__(self, c: int, attention: bool):
        super().__init__()
        self.nets = nn.ModuleList([ResnetBlock(c, c), ResnetBlock(c, c)])
        self.attns = nn.ModuleList([MVAttention(c)]) if attention else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.nets[0](x)
        if self.attns is not None:
            x = self.attns[0](x)
        return self.nets[1](x)


class UpBlock(nn.Module):
    def __init__(self, cin: int, cprev: int, cout: int, attention: bool, upsample: bool):
        super().__init__()
        n = LAYERS_PER_BLOCK + 1
        # The first resnets concatenate a skip of width cout, the last one a skip of width cprev (reference rule).
        nets = []
        for i in range(n):
            c_x = cin if i == 0 else cout
            c_skip = cprev if i == n - 1 else cout
            nets.append(ResnetBlock(c_x + c_skip, cout))
        self.nets = nn.ModuleList(nets)
        self.attns = nn.ModuleList([MVAttention(cout) for _ in range(n)]) if attention else None
        self.upsample = Conv2d(cout, cout, 3, 1, 1) if upsample else None

    def forward(self, x: Tensor, skips: list, upsample: bool = True) -> Tensor:
        """Resnets (each concatenating ``skips.pop()``) and attentions, then the upsample unless
        ``upsample=False`` (the caller then applies :meth:`up` itself)."""
        for i, net in enumerate(self.nets):
            x = net(x, skips.pop())  # concatenates (x, skip) on channels
            if self.attns is not None:
                x = self.attns[i](x)
        return self.up(x) if upsample else x

    def up(self, x: Tensor) -> Tensor:
        """Nearest 2x upsampling followed by a 3x3 conv (identity if this block does not upsample). During
        inference one image at a time, so the upsampled input (4x the input's size) exists for one image."""
        if self.upsample is None:
            return x
        if torch.is_grad_enabled() or x.shape[0] == 1:
            return self.upsample(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return _image_by_image(self.up, x)[0]


class UNet(nn.Module):
    """LGM's UNet: 9 -> 14 channels, spatial ``input_size -> splat_size``."""

    def __init__(self, cfg: LGMConfig):
        super().__init__()
        d, u = cfg.down_channels, cfg.up_channels
        self.conv_in = Conv2d(IN_CHANNELS, d[0], 3, 1, 1)
        self.down_blocks = nn.ModuleList(
            DownBlock(d[max(i - 1, 0)], d[i], cfg.down_attention[i], downsample=i != len(d) - 1)
            for i in range(len(d))
        )
        self.mid_block = MidBlock(d[-1], cfg.mid_attention)
        up = []
        for i in range(len(u)):
            cin = u[max(i - 1, 0)]
            cprev = d[max(-2 - i, -len(d))]
            up.append(UpBlock(cin, cprev, u[i], cfg.up_attention[i], upsample=i != len(u) - 1))
        self.up_blocks = nn.ModuleList(up)
        self.norm_out = _norm(u[-1])
        self.conv_out = Conv2d(u[-1], OUT_CHANNELS, 3, 1, 1)
        n_skips = 1 + sum(LAYERS_PER_BLOCK + (0 if blk.downsample is None else 1) for blk in self.down_blocks)
        self._unused_skips = n_skips - (LAYERS_PER_BLOCK + 1) * len(u)

    def forward(self, x: Tensor) -> Tensor:  # [B*4,9,S,S] -> [B*4,14,s,s]
        """During inference on maps of at least ``CHUNK_PIXELS`` the stem (``conv_in`` + the first down block,
        whose full-resolution skips the decoder never reads) and the head (the last upsample, the last up block,
        ``norm_out``/``conv_out``) run one image at a time, when they contain no cross-view attention: only their
        inputs, outputs and the skips they produce or read exist for the whole batch, every temporary for one
        image. Everything in them is per-image (convs, GroupNorm over one image's groups, SiLU), so the result
        is the batched one up to float rounding."""
        BV, _, H, W = x.shape
        blk0, last = self.down_blocks[0], self.up_blocks[-1]
        by_image = not torch.is_grad_enabled() and BV > 1
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

    def _keeper(self, start: int):
        """``keep()`` for the skips numbered from ``start``: False for the first ``_unused_skips`` (never read)."""
        counter = iter(range(start, 10**6))
        return lambda: next(counter) >= self._unused_skips

    def _stem(self, x: Tensor, keep) -> tuple[Tensor, list]:
        """``conv_in`` + the first down block: ``[n,9,S,S]`` -> (output, its skips with ``None`` for unused)."""
        x = self.conv_in(x)
        skips = [x if keep() else None]
        x, s = self.down_blocks[0](x, keep)
        return x, skips + s

    def _head(self, x: Tensor, skips: list) -> Tensor:
        """The last up block (consuming ``skips``) + ``norm_out``/SiLU/``conv_out`` -> ``[n,14,s,s]``."""
        x = self.up_blocks[-1](x, skips)
        return self.conv_out(_silu(self.norm_out(x)))


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


@functools.lru_cache(maxsize=None)
def cpu_has_native(dtype: torch.dtype) -> bool:
    """Whether this CPU has fast oneDNN kernels for ``dtype`` (bf16: avx512_bf16/AMX; fp16: avx512_fp16/AMX)."""
    if dtype == torch.float32:
        return True
    try:
        if dtype == torch.bfloat16:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        if dtype == torch.float16:
            return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):
        pass
    return False


def gaussians_from_raw(raw: Tensor) -> Tensor:
    """Reference activations: ``[B,4,14,s,s]`` raw head output -> ``[B,4·s²,14]`` gaussians (float32).

    Index ``n = v·s² + row·s + col``; channels: xyz ``clamp(-1,1)`` | opacity ``sigmoid`` | scale
    ``0.1·softplus`` | quaternion wxyz normalised per gaussian ("fixrot") | rgb ``0.5·tanh + 0.5``.
    """
    B = raw.shape[0]
    x = raw.float().permute(0, 1, 3, 4, 2).reshape(B, -1, OUT_CHANNELS)
    pos = x[..., 0:3].clamp(-1, 1)
    opacity = torch.sigmoid(x[..., 3:4])
    scale = 0.1 * F.softplus(x[..., 4:7])
    rot = F.normalize(x[..., 7:11], dim=-1)
    rgb = 0.5 * torch.tanh(x[..., 11:14]) + 0.5
    return torch.cat([pos, opacity, scale, rot, rgb], dim=-1)


class LGM(nn.Module):
    """LGM: 4 posed views ``[B,4,9,S,S]`` -> ``B`` sets of ``4·s²`` 3D Gaussians ``[B,N,14]``.

    Build it from a config name or :class:`LGMConfig`; load weights with :func:`mvboost_core.lgm.load_lgm`.
    The module holds no renderer and no LPIPS (those are not part of the checkpoints).
    """

    def __init__(self, config: "str | LGMConfig" = "big"):
        super().__init__()
        self.config = get_config(config)
        self.unet = UNet(self.config)
        self.conv = Conv2d(OUT_CHANNELS, OUT_CHANNELS, 1)  # final 1x1 (key ``conv.*``)
        self.compute_dtype: torch.dtype | None = None  # None: the weights' dtype
        self.channels_last: bool = False

    def set_compute(self, dtype: torch.dtype | None = None, channels_last: bool = False) -> "LGM":
        """Choose the activation dtype (``None`` = the weights' dtype) and memory format; returns ``self``."""
        self.compute_dtype = dtype
        self.channels_last = channels_last
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.conv.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv.weight.device

    def resolved_compute_dtype(self) -> torch.dtype:
        """The activation dtype used now: :attr:`compute_dtype` if set, else the weights' dtype, except that
        bf16/fp16 weights on a CPU without native kernels for them compute in float32."""
        if self.compute_dtype is not None:
            return self.compute_dtype
        wdt = self.dtype
        if self.device.type == "cpu" and wdt in (torch.bfloat16, torch.float16) and not cpu_has_native(wdt):
            return torch.float32
        return wdt

    def forward_raw(self, x: Tensor) -> Tensor:
        """``[B,4,9,S,S]`` -> raw head output ``[B,4,14,s,s]`` in the compute dtype (before activations)."""
        if x.ndim != 5 or x.shape[1] != NUM_VIEWS or x.shape[2] != IN_CHANNELS:
            raise ValueError(
                f"LGM input must be [B,4,9,H,W] (4 views of RGB + Plücker rays, see prepare_lgm_input), "
                f"got {list(x.shape)}"
            )
        B, V, C, H, W = x.shape
        S = self.config.input_size
        if (H, W) != (S, S):
            raise ValueError(f"LGM config {self.config.name!r} expects {S}x{S} inputs, got {H}x{W}")
        cdt = self.resolved_compute_dtype()
        h = x.reshape(B * V, C, H, W).to(device=self.device, dtype=cdt)
        if self.channels_last:
            h = h.contiguous(memory_format=torch.channels_last)
        h = self.conv(self.unet(h))
        return h.reshape(B, V, OUT_CHANNELS, h.shape[-2], h.shape[-1])

    def forward_gaussians(self, x: Tensor) -> Tensor:
        """``[B,4,9,S,S]`` network input -> activated gaussians ``[B,N,14]`` float32 (N = 4·splat_size²)."""
        return gaussians_from_raw(self.forward_raw(x))

    forward = forward_gaussians
