"""Building blocks of Era3D's multi-view UNet (module names = upstream/diffusers, so state dicts load by name).

Made from diffusers parts (``ResnetBlock2D``, ``Downsample2D``, ``Upsample2D``, ``Attention`` for the q/k/v/out
weight layout, ``FeedForward`` with GEGLU); the attention maths lives in :mod:`.attention`.

Shapes: feature maps ``[B, C, h, w]``; B = 2·G·num_views laid out ``[normal groups ; colour groups]`` (each group =
``num_views`` consecutive views of one object and CFG branch); ``temb`` [B, time_embed_dim];
``encoder_hidden_states`` [B, T, cross_attention_dim].
"""
from __future__ import annotations

import torch
import torch.nn as nn
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D

from .attention import JointAttnProcessor, RowwiseMVAttnProcessor, SDPAAttnProcessor

__all__ = [
    "MVTransformerBlock", "TransformerMV2D", "CrossAttnDownBlockMV2D", "CrossAttnUpBlockMV2D",
    "MidBlockMV2DCrossAttn", "ResidualRegressor",
]


class MVTransformerBlock(nn.Module):
    """norm1→attn1 (joint normal/colour) +res, norm_mv→attn_mv (row-wise MV) +res, norm2→attn2 (cross) +res,
    norm3→GEGLU ff +res. x [B, h·w, C] -> same."""

    def __init__(self, dim: int, heads: int, head_dim: int, cross_attention_dim: int, *, num_views: int,
                 multiview_attention: bool, mvcd_attention: bool, upcast_attention: bool):
        super().__init__()
        self.num_views = num_views
        self.mvcd_attention = mvcd_attention
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(query_dim=dim, heads=heads, dim_head=head_dim, bias=False,
                               upcast_attention=upcast_attention,
                               processor=JointAttnProcessor() if mvcd_attention else SDPAAttnProcessor())
        if multiview_attention:
            self.norm_mv = nn.LayerNorm(dim)
            self.attn_mv = Attention(query_dim=dim, heads=heads, dim_head=head_dim, bias=False,
                                     upcast_attention=upcast_attention, processor=RowwiseMVAttnProcessor(num_views))
        else:
            self.norm_mv = None
            self.attn_mv = None
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(query_dim=dim, cross_attention_dim=cross_attention_dim, heads=heads,
                               dim_head=head_dim, bias=False, upcast_attention=upcast_attention,
                               processor=SDPAAttnProcessor())
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, activation_fn="geglu")

    def forward(self, x: torch.Tensor, context: torch.Tensor, height: int, width: int) -> torch.Tensor:
        # the Attention modules run our processors (attention.py): joint / row-wise MV / cross
        x = self.attn1(self.norm1(x)) + x
        if self.attn_mv is not None:
            x = self.attn_mv(self.norm_mv(x), height=height, width=width) + x
        x = self.attn2(self.norm2(x), encoder_hidden_states=context) + x
        return self.ff(self.norm3(x)) + x


class TransformerMV2D(nn.Module):
    """GroupNorm(eps 1e-6) → linear proj_in → MVTransformerBlock × n → linear proj_out → + residual.
    x [B, C, h, w] -> same."""

    def __init__(self, heads: int, head_dim: int, in_channels: int, *, num_layers: int, cross_attention_dim: int,
                 norm_num_groups: int, **block_kw):
        super().__init__()
        inner = heads * head_dim
        self.norm = nn.GroupNorm(norm_num_groups, in_channels, eps=1e-6, affine=True)
        self.proj_in = nn.Linear(in_channels, inner)
        self.transformer_blocks = nn.ModuleList(
            [MVTransformerBlock(inner, heads, head_dim, cross_attention_dim, **block_kw) for _ in range(num_layers)]
        )
        self.proj_out = nn.Linear(inner, in_channels)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        residual = x
        t = self.norm(x).permute(0, 2, 3, 1).reshape(b, h * w, c)
        t = self.proj_in(t)
        for blk in self.transformer_blocks:
            t = blk(t, context, h, w)
        t = self.proj_out(t)
        return t.reshape(b, h, w, -1).permute(0, 3, 1, 2) + residual


def _resnet(cin: int, cout: int, temb: int, eps: float, groups: int, act: str, scale: float = 1.0):
    return ResnetBlock2D(in_channels=cin, out_channels=cout, temb_channels=temb, eps=eps, groups=groups,
                         non_linearity=act, time_embedding_norm="default", output_scale_factor=scale,
                         pre_norm=True)


class CrossAttnDownBlockMV2D(nn.Module):
    """(resnet → transformer) × num_layers, then an optional stride-2 conv downsampler.
    forward -> (hidden [B,C,h',w'], tuple of skip tensors)."""

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, *, num_layers: int, eps: float,
                 groups: int, act: str, heads: int, add_downsample: bool, downsample_padding: int,
                 transformer_layers: int, cross_attention_dim: int, **block_kw):
        super().__init__()
        attentions, resnets = [], []
        for i in range(num_layers):
            resnets.append(_resnet(in_channels if i == 0 else out_channels, out_channels, temb_channels, eps,
                                   groups, act))
            attentions.append(TransformerMV2D(heads, out_channels // heads, out_channels,
                                              num_layers=transformer_layers, cross_attention_dim=cross_attention_dim,
                                              norm_num_groups=groups, **block_kw))
        self.attentions = nn.ModuleList(attentions)
        self.resnets = nn.ModuleList(resnets)
        self.downsamplers = (
            nn.ModuleList([Downsample2D(out_channels, use_conv=True, out_channels=out_channels,
                                        padding=downsample_padding, name="op")])
            if add_downsample else None
        )

    def forward(self, x, temb, context):
        skips = ()
        for resnet, attn in zip(self.resnets, self.attentions):
            x = attn(resnet(x, temb), context)
            skips += (x,)
        if self.downsamplers is not None:
            for d in self.downsamplers:
                x = d(x)
            skips += (x,)
        return x, skips


class CrossAttnUpBlockMV2D(nn.Module):
    """(concat skip → resnet → transformer) × num_layers, then an optional nearest ×2 + conv upsampler."""

    def __init__(self, in_channels: int, out_channels: int, prev_output_channel: int, temb_channels: int, *,
                 num_layers: int, eps: float, groups: int, act: str, heads: int, add_upsample: bool,
                 transformer_layers: int, cross_attention_dim: int, **block_kw):
        super().__init__()
        attentions, resnets = [], []
        for i in range(num_layers):
            skip_ch = in_channels if i == num_layers - 1 else out_channels
            res_in = prev_output_channel if i == 0 else out_channels
            resnets.append(_resnet(res_in + skip_ch, out_channels, temb_channels, eps, groups, act))
            attentions.append(TransformerMV2D(heads, out_channels // heads, out_channels,
                                              num_layers=transformer_layers, cross_attention_dim=cross_attention_dim,
                                              norm_num_groups=groups, **block_kw))
        self.attentions = nn.ModuleList(attentions)
        self.resnets = nn.ModuleList(resnets)
        self.upsamplers = (nn.ModuleList([Upsample2D(out_channels, use_conv=True, out_channels=out_channels)])
                           if add_upsample else None)

    def forward(self, x, skips, temb, context, upsample_size=None):
        for resnet, attn in zip(self.resnets, self.attentions):
            x = torch.cat([x, skips[-1]], dim=1)
            skips = skips[:-1]
            x = attn(resnet(x, temb), context)
        if self.upsamplers is not None:
            for u in self.upsamplers:
                x = u(x, upsample_size)
        return x


class MidBlockMV2DCrossAttn(nn.Module):
    """resnet → (transformer → resnet) × num_layers, at constant width."""

    def __init__(self, channels: int, temb_channels: int, *, eps: float, groups: int, act: str, heads: int,
                 output_scale_factor: float, transformer_layers: int, cross_attention_dim: int,
                 num_layers: int = 1, **block_kw):
        super().__init__()
        attentions = [TransformerMV2D(heads, channels // heads, channels, num_layers=transformer_layers,
                                      cross_attention_dim=cross_attention_dim, norm_num_groups=groups, **block_kw)
                      for _ in range(num_layers)]
        resnets = [_resnet(channels, channels, temb_channels, eps, groups, act, output_scale_factor)
                   for _ in range(num_layers + 1)]
        self.attentions = nn.ModuleList(attentions)
        self.resnets = nn.ModuleList(resnets)

    def forward(self, x, temb, context):
        x = self.resnets[0](x, temb)
        for attn, resnet in zip(self.attentions, self.resnets[1:]):
            x = resnet(attn(x, context), temb)
        return x


class _ResidualLinear(nn.Module):
    """linear1 → SiLU → linear2 → + input → SiLU."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear1 = nn.Linear(dim, dim)
        self.linear2 = nn.Linear(dim, dim)

    def forward(self, x):
        return nn.functional.silu(self.linear2(nn.functional.silu(self.linear1(x))) + x)


class ResidualRegressor(nn.Module):
    """Era3D's elevation/focal head: Linear(in→H)+SiLU, ``num_blocks`` residual blocks, Linear(H→out).
    Keys: ``linear_in.0``, ``blocks.k.linear{1,2}``, ``linear_out``. x [N, in] -> [N, out]."""

    def __init__(self, in_features: int, out_features: int, hidden: int, num_blocks: int):
        super().__init__()
        self.linear_in = nn.Sequential(nn.Linear(in_features, hidden), nn.SiLU())
        self.blocks = nn.ModuleList([_ResidualLinear(hidden) for _ in range(num_blocks)])
        self.linear_out = nn.Linear(hidden, out_features)

    def forward(self, x):
        x = self.linear_in(x)
        for b in self.blocks:
            x = b(x)
        return self.linear_out(x)
