"""The LGM network (Large Multi-View Gaussian Model, 3DTopia/LGM), re-implemented so its checkpoints load.

State-dict keys and shapes equal the reference exactly (``unet.*`` + a final 1x1 ``conv.*``); see
``../shared/notes/lgm.md`` for the architecture facts. The modules below follow the published network block by
block; implementation differences:

* attention runs through :func:`torch.nn.functional.scaled_dot_product_attention` on 4-D ``[B,heads,N,d]``
  tensors (flash / memory-efficient kernels, no materialised score matrix, no xformers);
* gaussian activations are applied in float32 whatever the compute dtype;
* the input is cast to the model's compute dtype (:func:`mvboost_core.precision.compute_dtype`): weights may be
  stored in a narrower dtype and cast per layer (:func:`mvboost_core.precision.apply_precision`).

CPU inference tactics (image-by-image high-resolution blocks, in-place residuals, unread skips dropped, GEMM
convolutions on small maps, heap trimming) are not here: :func:`mvboost_core.tactics.enable_cpu_inference_tactics`
swaps in the subclasses of :mod:`.tactics`, which compute the same values.

Tensor layout: the 4 views of a sample are folded into the batch (``[B*4, C, H, W]``) everywhere except inside
the multi-view attention, which attends jointly over the tokens of all 4 views (token = ``v*H*W + row*W + col``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import precision
from .config import LGMConfig, get_config

__all__ = ["LGM", "UNet", "MVAttention", "ResnetBlock", "DownBlock", "MidBlock", "UpBlock", "gaussians_from_raw",
           "NUM_VIEWS"]

NUM_VIEWS = 4  # hard-coded in the reference network
IN_CHANNELS = 9  # RGB (ImageNet-normalised) + 6 Plücker channels
OUT_CHANNELS = 14  # pos 3, opacity 1, scale 3, rotation 4, rgb 3
SKIP_SCALE = math.sqrt(0.5)
HEADS = 16
LAYERS_PER_BLOCK = 2


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, c, eps=1e-5, affine=True)


class ResnetBlock(nn.Module):
    """``(conv2(silu(norm2(conv1(silu(norm1(x)))))) + shortcut(x)) * sqrt(0.5)``; 1x1 shortcut iff cin != cout."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1 = _norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1)
        self.norm2 = _norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:  # [BV,cin,H,W] -> [BV,cout,H,W]
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (h + self.shortcut(x)) * SKIP_SCALE


class Attention(nn.Module):
    """Multi-head self-attention over ``[B, N, C]`` tokens: bias-free ``qkv`` (rows q|k|v, heads contiguous),
    scale ``head_dim**-0.5``, output ``proj`` with bias. ``qkv``/``proj`` are the LoRA targets."""

    def __init__(self, dim: int, num_heads: int = HEADS):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=True)

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

    def attend(self, x: Tensor) -> Tensor:
        """The attention branch alone: ``[B*V,C,H,W]`` -> ``[B*V,C,H,W]`` (before the residual)."""
        BV, C, H, W = x.shape
        V = self.num_frames
        B = BV // V
        h = self.norm(x).reshape(B, V, C, H, W).permute(0, 1, 3, 4, 2).reshape(B, V * H * W, C)
        h = self.attn(h)
        return h.reshape(B, V, H, W, C).permute(0, 1, 4, 2, 3).reshape(BV, C, H, W)

    def forward(self, x: Tensor) -> Tensor:  # [B*V,C,H,W] -> [B*V,C,H,W]
        return (self.attend(x) + x) * SKIP_SCALE


class DownBlock(nn.Module):
    """``LAYERS_PER_BLOCK`` x (resnet [+ MV attention]), then an optional stride-2 3x3 conv."""

    def __init__(self, cin: int, cout: int, attention: bool, downsample: bool):
        super().__init__()
        self.nets = nn.ModuleList([ResnetBlock(cin if i == 0 else cout, cout) for i in range(LAYERS_PER_BLOCK)])
        self.attns = nn.ModuleList([MVAttention(cout) for _ in range(LAYERS_PER_BLOCK)]) if attention else None
        self.downsample = nn.Conv2d(cout, cout, 3, 2, 1) if downsample else None

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Returns the output and the skips (after every resnet/attention and after the downsample)."""
        xs = []
        for i, net in enumerate(self.nets):
            x = net(x)
            if self.attns is not None:
                x = self.attns[i](x)
            xs.append(x)
        if self.downsample is not None:
            x = self.downsample(x)
            xs.append(x)
        return x, xs


class MidBlock(nn.Module):
    """resnet, [MV attention], resnet."""

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
    """``LAYERS_PER_BLOCK + 1`` x (concatenate a skip, resnet [+ MV attention]), then an optional nearest 2x
    upsampling + 3x3 conv."""

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
        self.upsample = nn.Conv2d(cout, cout, 3, 1, 1) if upsample else None

    def forward(self, x: Tensor, xs: list[Tensor]) -> Tensor:
        """Each resnet concatenates (x, the last remaining skip of ``xs``) on channels."""
        for i, net in enumerate(self.nets):
            x = net(torch.cat([x, xs[-1 - i]], dim=1))
            if self.attns is not None:
                x = self.attns[i](x)
        if self.upsample is not None:
            x = self.upsample(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return x


class UNet(nn.Module):
    """LGM's UNet: 9 -> 14 channels, spatial ``input_size -> splat_size``."""

    def __init__(self, cfg: LGMConfig):
        super().__init__()
        d, u = cfg.down_channels, cfg.up_channels
        self.conv_in = nn.Conv2d(IN_CHANNELS, d[0], 3, 1, 1)
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
        self.conv_out = nn.Conv2d(u[-1], OUT_CHANNELS, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor:  # [B*4,9,S,S] -> [B*4,14,s,s]
        x = self.conv_in(x)
        xss = [x]
        for blk in self.down_blocks:
            x, xs = blk(x)
            xss.extend(xs)
        x = self.mid_block(x)
        for blk in self.up_blocks:
            n = len(blk.nets)
            xs, xss = xss[-n:], xss[:-n]
            x = blk(x, xs)
        return self.conv_out(F.silu(self.norm_out(x)))


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
        self.conv = nn.Conv2d(OUT_CHANNELS, OUT_CHANNELS, 1)  # final 1x1 (key ``conv.*``)

    @property
    def dtype(self) -> torch.dtype:
        """The weights' storage dtype (see :attr:`compute_dtype`)."""
        return self.conv.weight.dtype

    @property
    def compute_dtype(self) -> torch.dtype:
        """The activations' dtype (:func:`mvboost_core.precision.compute_dtype`)."""
        return precision.compute_dtype(self)

    @property
    def device(self) -> torch.device:
        return self.conv.weight.device

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
        h = x.reshape(B * V, C, H, W).to(device=self.device, dtype=self.compute_dtype)
        h = self.conv(self.unet(h))
        return h.reshape(B, V, OUT_CHANNELS, h.shape[-2], h.shape[-1])

    def forward_gaussians(self, x: Tensor) -> Tensor:
        """``[B,4,9,S,S]`` network input -> activated gaussians ``[B,N,14]`` float32 (N = 4·splat_size²)."""
        return gaussians_from_raw(self.forward_raw(x))

    forward = forward_gaussians
