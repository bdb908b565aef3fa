"""Era3D's multi-view UNet (upstream ``UNetMV2DConditionModel``, pengHTYX/Era3D) on current diffusers parts.

:class:`Era3DUNet` reproduces the released ``pengHTYX/MacLab-Era3D-512-6view`` UNet with the semantics of the
xformers attention processors the model was trained and released with (see :mod:`.attention`):

* SD-2.1-unclip skeleton with 8 input channels (4 noisy latents + 4 condition-image latents), ``class_embedding`` =
  TimestepEmbedding(projection_class_embeddings_input_dim → 4·block_out_channels[0]) added to the time embedding;
* every transformer block runs joint normal/colour ``attn1``, row-wise multi-view ``attn_mv``, cross-attention
  ``attn2`` and a GEGLU feed-forward;
* after the mid block, two regression heads predict ``[elevation (rad, camera above = positive), focal (24/f_mm,
  0 = orthographic)]`` per multi-view group from the pooled mid features of ``[normal ; colour]``; their
  ``camera_embedding`` of ``[sin e, sin f, cos e, cos f]`` is added to the embedding of the **up blocks only**.

Batch layout (mandatory): B = 2·G·num_views, ``[normal half ; colour half]``, each half G groups of ``num_views``
consecutive views (order front, front_right, right, back, left, front_left); with CFG the pipeline passes the four
blocks ``[normal_uncond, normal_cond, colour_uncond, colour_cond]`` (G = 2 per half).

State-dict keys and order are those of the released checkpoint (838 tensors, 947,664,646 parameters for the real
config), so ``unet/diffusion_pytorch_model.safetensors`` loads by name; no upstream Era3D module is imported.

Precision: the weights' storage and compute dtypes come from :mod:`mvboost_core.precision` (``from_folder``'s
``dtype``; the forward casts its inputs to :func:`~mvboost_core.precision.compute_dtype`). float16/bfloat16 compute
runs the attention core as the released model's xformers kernel did: q, k, v in the half dtype, scores and softmax
accumulated in float32 inside the fused kernel (:mod:`.attention`). CPU inference tactics (in-place blocks, NNPACK
convolutions, heap trimming) are in :mod:`.tactics`, switched by :func:`mvboost_core.tactics.enable_cpu_inference_tactics`.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.unets.unet_2d_blocks import DownBlock2D, UpBlock2D

from .. import precision
from .blocks import CrossAttnDownBlockMV2D, CrossAttnUpBlockMV2D, MidBlockMV2DCrossAttn, ResidualRegressor

__all__ = ["Era3DUNet", "Era3DConfigError", "normalize_unet_config", "load_unet_weights",
           "UNET_CLASS_NAMES", "WEIGHTS_NAME"]

logger = logging.getLogger(__name__)

#: ``_class_name`` values accepted in ``unet/config.json`` (the released one says ``UNetMV2DConditionModel``).
UNET_CLASS_NAMES = ("UNetMV2DConditionModel", "Era3DUNet")
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
CONFIG_NAME = "config.json"

#: Constructor arguments and their defaults (upstream's defaults, except the ones fixed by the released model).
_DEFAULTS: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 8,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlockMV2D", "CrossAttnDownBlockMV2D", "CrossAttnDownBlockMV2D", "DownBlock2D"],
    "mid_block_type": "UNetMidBlockMV2DCrossAttn",
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlockMV2D", "CrossAttnUpBlockMV2D", "CrossAttnUpBlockMV2D"],
    "only_cross_attention": False,
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 1024,
    "transformer_layers_per_block": 1,
    "attention_head_dim": [5, 10, 20, 20],
    "num_attention_heads": None,
    "dual_cross_attention": False,
    "use_linear_projection": True,
    "class_embed_type": "projection",
    "projection_class_embeddings_input_dim": 2048,
    "upcast_attention": True,
    "resnet_time_scale_shift": "default",
    "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "time_embedding_act_fn": None,
    "timestep_post_act": None,
    "time_cond_proj_dim": None,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "projection_camera_embeddings_input_dim": 4,
    "class_embeddings_concat": False,
    "mid_block_only_cross_attention": None,
    "cross_attention_norm": None,
    "addition_embed_type": None,
    "addition_time_embed_dim": None,
    "addition_embed_type_num_heads": 64,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "num_class_embeds": None,
    "num_views": 6,
    "cd_attention_last": False,
    "cd_attention_mid": False,
    "multiview_attention": True,
    "sparse_mv_attention": True,
    "selfattn_block": "self_rowwise",
    "mvcd_attention": True,
    "regress_elevation": True,
    "regress_focal_length": True,
    "num_regress_blocks": 3,
    "regress_hidden_dim": 1280,
    "use_dino": False,
    "addition_downsample": False,
    "addition_channels": [1280, 1280, 1280],
}

#: EMA bookkeeping written into the released config by diffusers' EMAModel; not constructor arguments.
_EMA_KEYS = {"decay", "inv_gamma", "min_decay", "optimization_step", "power", "update_after_step", "use_ema_warmup"}

#: Keys that identify an Era3D multi-view UNet config.
_ERA3D_MARKERS = ("num_views", "mvcd_attention", "multiview_attention", "selfattn_block")

#: Options the released model does not use; only their "off" value is implemented.
_MUST_BE = {
    "only_cross_attention": (False,),
    "num_attention_heads": (None,),
    "dual_cross_attention": (False,),
    "use_linear_projection": (True,),
    "class_embed_type": ("projection",),
    "resnet_time_scale_shift": ("default",),
    "resnet_skip_time_act": (False,),
    "resnet_out_scale_factor": (1, 1.0),
    "time_embedding_type": ("positional",),
    "time_embedding_act_fn": (None,),
    "timestep_post_act": (None,),
    "time_cond_proj_dim": (None,),
    "class_embeddings_concat": (False,),
    "mid_block_only_cross_attention": (None, False),
    "cross_attention_norm": (None,),
    "addition_embed_type": (None,),
    "encoder_hid_dim": (None,),
    "encoder_hid_dim_type": (None,),
    "num_class_embeds": (None,),
    "cd_attention_last": (False,),
    "cd_attention_mid": (False,),
    "selfattn_block": ("self_rowwise",),
    "mid_block_type": ("UNetMidBlockMV2DCrossAttn",),
    "use_dino": (False,),
    "addition_downsample": (False,),
    "act_fn": ("silu", "swish"),
}


class Era3DConfigError(ValueError):
    """A UNet config that is not (or not a supported variant of) Era3D's ``UNetMV2DConditionModel``."""


class _Config(dict):
    """A dict whose keys are also attributes (``unet.config.in_channels`` like diffusers)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def normalize_unet_config(config: dict) -> _Config:
    """Validate an Era3D ``unet/config.json`` dict and return the full constructor arguments.

    Ignores ``_``-prefixed bookkeeping (``_class_name``, ``_diffusers_version``, ``_name_or_path``), the EMA keys
    (``decay``, ``optimization_step``, ...) and unknown keys (logged). Raises :class:`Era3DConfigError` naming what
    was found and what is expected for a config of another model or an unsupported option.
    """
    if not isinstance(config, dict):
        raise Era3DConfigError(f"UNet config must be a dict (parsed config.json), got {type(config).__name__}")
    cls_name = config.get("_class_name")
    found = (f"_class_name={cls_name!r}, down_block_types={config.get('down_block_types')!r}, "
             f"in_channels={config.get('in_channels')!r}")
    expected = ("expected the unet/config.json of an Era3D multi-view UNet (_class_name 'UNetMV2DConditionModel' "
                "as in pengHTYX/MacLab-Era3D-512-6view, with keys num_views, multiview_attention, mvcd_attention, "
                "selfattn_block and CrossAttnDownBlockMV2D blocks)")
    if cls_name is not None and cls_name not in UNET_CLASS_NAMES:
        raise Era3DConfigError(f"this UNet config is for another model ({found}); {expected}. "
                               "Point the loader at an Era3D diffusers folder.")
    missing_markers = [k for k in _ERA3D_MARKERS if k not in config]
    if missing_markers:
        raise Era3DConfigError(f"this UNet config lacks the Era3D keys {missing_markers} ({found}); {expected}.")

    out = _Config(_DEFAULTS)
    for k, v in config.items():
        if k.startswith("_") or k in _EMA_KEYS:
            continue
        if k not in _DEFAULTS:
            logger.warning("Era3D UNet config: ignoring unknown key %r=%r", k, v)
            continue
        out[k] = list(v) if isinstance(v, tuple) else v

    for k, allowed in _MUST_BE.items():
        if out[k] not in allowed:
            raise Era3DConfigError(f"Era3D UNet config: {k}={out[k]!r} is not supported (the released model uses "
                                   f"{allowed[0]!r}); {expected}.")
    n = len(out["block_out_channels"])
    for k in ("down_block_types", "up_block_types"):
        if len(out[k]) != n:
            raise Era3DConfigError(f"Era3D UNet config: {k} has {len(out[k])} entries but block_out_channels has {n}")
    for t in out["down_block_types"]:
        if t not in ("CrossAttnDownBlockMV2D", "DownBlock2D"):
            raise Era3DConfigError(f"Era3D UNet config: down block type {t!r} is not supported ({found}); {expected}.")
    for t in out["up_block_types"]:
        if t not in ("CrossAttnUpBlockMV2D", "UpBlock2D"):
            raise Era3DConfigError(f"Era3D UNet config: up block type {t!r} is not supported ({found}); {expected}.")
    for k in ("attention_head_dim", "layers_per_block", "transformer_layers_per_block", "cross_attention_dim"):
        v = out[k]
        if isinstance(v, list) and len(v) != n:
            raise Era3DConfigError(f"Era3D UNet config: {k} has {len(v)} entries, expected {n}")
    if isinstance(out["cross_attention_dim"], list) and len(set(out["cross_attention_dim"])) != 1:
        raise Era3DConfigError("Era3D UNet config: per-block cross_attention_dim values are not supported")
    if out["num_views"] < 1:
        raise Era3DConfigError(f"Era3D UNet config: num_views must be >= 1, got {out['num_views']}")
    n_reg = int(bool(out["regress_elevation"])) + int(bool(out["regress_focal_length"]))
    if n_reg:
        if not out["mvcd_attention"]:
            raise Era3DConfigError("Era3D UNet config: the elevation/focal regressors need mvcd_attention=true "
                                   "(they read the pooled [normal ; colour] features)")
        if out["projection_camera_embeddings_input_dim"] != 2 * n_reg:
            raise Era3DConfigError(
                f"Era3D UNet config: projection_camera_embeddings_input_dim is "
                f"{out['projection_camera_embeddings_input_dim']}, expected {2 * n_reg} (sin and cos of the "
                f"{n_reg} regressed value(s))")
    if out["projection_class_embeddings_input_dim"] is None:
        raise Era3DConfigError("Era3D UNet config: class_embed_type 'projection' needs "
                               "projection_class_embeddings_input_dim (2048 for the released model)")
    return out


def _per_block(v, n):
    return list(v) if isinstance(v, (list, tuple)) else [v] * n


class Era3DUNet(nn.Module):
    """Era3D multi-view UNet. Build with :meth:`from_config` / :meth:`from_folder`; see the module docstring.

    ``forward(sample [B,in_channels,h,w], timestep, encoder_hidden_states [B,T,cross_attention_dim],
    class_labels [B,projection_class_embeddings_input_dim])`` -> ``(out_sample [B,out_channels,h,w] (v-prediction),
    out_pose [G,2] | None)`` where G = B / (2·num_views) = number of multi-view groups in the normal half (rows in
    batch order, e.g. ``[uncond, cond]`` with CFG), columns ``[elevation, focal]``.
    """

    def __init__(self, config: dict):
        super().__init__()
        cfg = normalize_unet_config(config)
        self.config = cfg
        boc = list(cfg["block_out_channels"])
        n = len(boc)
        heads = _per_block(cfg["attention_head_dim"], n)  # upstream naming quirk: these are head COUNTS
        layers = _per_block(cfg["layers_per_block"], n)
        tlayers = _per_block(cfg["transformer_layers_per_block"], n)
        xdim = _per_block(cfg["cross_attention_dim"], n)[0]
        groups, eps, act = cfg["norm_num_groups"], cfg["norm_eps"], cfg["act_fn"]
        for i, (c, h) in enumerate(zip(boc, heads)):
            if c % h:
                raise Era3DConfigError(f"block_out_channels[{i}]={c} is not divisible by its head count {h}")
        block_kw = dict(num_views=cfg["num_views"], multiview_attention=bool(cfg["multiview_attention"]),
                        mvcd_attention=bool(cfg["mvcd_attention"]), upcast_attention=bool(cfg["upcast_attention"]))

        kin, kout = cfg["conv_in_kernel"], cfg["conv_out_kernel"]
        self.conv_in = nn.Conv2d(cfg["in_channels"], boc[0], kernel_size=kin, padding=(kin - 1) // 2)
        temb_dim = cfg["time_embedding_dim"] or boc[0] * 4
        self.time_proj = Timesteps(boc[0], cfg["flip_sin_to_cos"], cfg["freq_shift"])
        self.time_embedding = TimestepEmbedding(boc[0], temb_dim, act_fn=act)
        self.class_embedding = TimestepEmbedding(cfg["projection_class_embeddings_input_dim"], temb_dim)

        # registration order = state-dict order of the released checkpoint: down, up, mid, camera/regressors, out
        self.down_blocks = nn.ModuleList([])
        self.up_blocks = nn.ModuleList([])

        out_ch = boc[0]
        for i, btype in enumerate(cfg["down_block_types"]):
            in_ch, out_ch = out_ch, boc[i]
            final = i == n - 1
            if btype == "CrossAttnDownBlockMV2D":
                blk = CrossAttnDownBlockMV2D(in_ch, out_ch, temb_dim, num_layers=layers[i], eps=eps, groups=groups,
                                             act=act, heads=heads[i], add_downsample=not final,
                                             downsample_padding=cfg["downsample_padding"],
                                             transformer_layers=tlayers[i], cross_attention_dim=xdim, **block_kw)
            else:
                blk = DownBlock2D(in_channels=in_ch, out_channels=out_ch, temb_channels=temb_dim,
                                  num_layers=layers[i], resnet_eps=eps, resnet_act_fn=act, resnet_groups=groups,
                                  add_downsample=not final, downsample_padding=cfg["downsample_padding"])
            self.down_blocks.append(blk)

        self.mid_block = MidBlockMV2DCrossAttn(boc[-1], temb_dim, eps=eps, groups=groups, act=act, heads=heads[-1],
                                               output_scale_factor=cfg["mid_block_scale_factor"],
                                               transformer_layers=tlayers[-1], cross_attention_dim=xdim, **block_kw)

        self.regress_elevation = bool(cfg["regress_elevation"])
        self.regress_focal_length = bool(cfg["regress_focal_length"])
        if self.regress_elevation or self.regress_focal_length:
            self.camera_embedding = TimestepEmbedding(cfg["projection_camera_embeddings_input_dim"], temb_dim)
        else:
            self.camera_embedding = None
        reg_in, reg_h, reg_n = 2 * boc[-1], int(cfg.get("regress_hidden_dim") or 1280), cfg["num_regress_blocks"]
        self.elevation_regressor = (ResidualRegressor(reg_in, 1, reg_h, reg_n) if self.regress_elevation else None)
        self.focal_regressor = (ResidualRegressor(reg_in, 1, reg_h, reg_n) if self.regress_focal_length else None)

        rboc = list(reversed(boc))
        rheads, rlayers, rtl = list(reversed(heads)), list(reversed(layers)), list(reversed(tlayers))
        out_ch = rboc[0]
        self.num_upsamplers = 0
        for i, btype in enumerate(cfg["up_block_types"]):
            final = i == n - 1
            prev_ch, out_ch = out_ch, rboc[i]
            in_ch = rboc[min(i + 1, n - 1)]
            if not final:
                self.num_upsamplers += 1
            if btype == "CrossAttnUpBlockMV2D":
                blk = CrossAttnUpBlockMV2D(in_ch, out_ch, prev_ch, temb_dim, num_layers=rlayers[i] + 1, eps=eps,
                                           groups=groups, act=act, heads=rheads[i], add_upsample=not final,
                                           transformer_layers=rtl[i], cross_attention_dim=xdim, **block_kw)
            else:
                blk = UpBlock2D(in_channels=in_ch, prev_output_channel=prev_ch, out_channels=out_ch,
                                temb_channels=temb_dim, resolution_idx=i, num_layers=rlayers[i] + 1, resnet_eps=eps,
                                resnet_act_fn=act, resnet_groups=groups, add_upsample=not final)
            self.up_blocks.append(blk)

        self.conv_norm_out = nn.GroupNorm(groups, boc[0], eps=eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(boc[0], cfg["out_channels"], kernel_size=kout, padding=(kout - 1) // 2)

    # ------------------------------------------------------------------ construction / loading
    @classmethod
    def from_config(cls, config: dict, device: torch.device | str | None = None) -> "Era3DUNet":
        """Build with default (random) init from a ``unet/config.json`` dict; ``device="meta"`` allocates nothing."""
        if device is None:
            return cls(config)
        with torch.device(device):
            return cls(config)

    @classmethod
    def from_folder(cls, unet_dir: str | os.PathLike, device: torch.device | str | None = None,
                    dtype="fp32", cpu_tactics: bool | None = None) -> "Era3DUNet":
        """Load a diffusers ``unet/`` folder: ``config.json`` + ``diffusion_pytorch_model.safetensors``.

        ``dtype``: ``"fp32"`` (default: exact), ``"auto"`` (what :func:`~mvboost_core.era3d.load_era3d` passes by
        default), ``"bf16"`` / ``"fp16"`` / a ``torch.dtype`` / a :class:`~mvboost_core.precision.Precision`, resolved by :func:`mvboost_core.precision.choose` for ``device``
        (default CPU) and the checkpoint's dtype; weights are read tensor by tensor straight into their storage dtype.
        ``cpu_tactics``: switch :mod:`.tactics` on (default: :func:`mvboost_core.precision.cpu_tactics_default`).
        The state dict must match exactly (strict). Returns the model in eval mode with ``requires_grad`` off.
        """
        unet_dir = Path(unet_dir)
        if not unet_dir.is_dir():
            raise FileNotFoundError(f"Era3D UNet folder not found: {unet_dir} (expected <era3d folder>/unet/ with "
                                    f"{CONFIG_NAME} and {WEIGHTS_NAME})")
        cfg_path = unet_dir / CONFIG_NAME
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{cfg_path} is missing: an Era3D unet/ folder needs {CONFIG_NAME} and "
                                    f"{WEIGHTS_NAME} (re-download pengHTYX/MacLab-Era3D-512-6view)")
        try:
            config = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise Era3DConfigError(f"{cfg_path} is not valid JSON: {e}") from e
        weights = unet_dir / WEIGHTS_NAME
        if not weights.is_file():
            alt = sorted(p.name for p in unet_dir.iterdir() if p.is_file() and p.name != CONFIG_NAME)
            raise FileNotFoundError(
                f"{weights} is missing (found: {alt or 'nothing else'}). Era3D's UNet loads from {WEIGHTS_NAME}; "
                f"if you have a .bin checkpoint convert it to safetensors, or re-download the released folder.")
        prec = precision.choose("era3d", device, dtype, weights)
        model = cls.from_config(config, device="meta")
        precision.apply_precision(model, prec)
        sd = load_unet_weights(weights, model, device=device, dtype=precision.storage_dtypes(model))
        model.load_state_dict(sd, strict=True, assign=True)
        model.eval().requires_grad_(False)
        dev = torch.device(device) if device is not None else torch.device("cpu")
        if precision.cpu_tactics_default(dev) if cpu_tactics is None else cpu_tactics:
            from ..tactics import enable_cpu_inference_tactics

            enable_cpu_inference_tactics(model)
        logger.info("Era3D UNet: %s", prec)
        return model

    # ------------------------------------------------------------------ properties
    @property
    def in_channels(self) -> int:
        return int(self.config["in_channels"])

    @property
    def out_channels(self) -> int:
        return int(self.config["out_channels"])

    @property
    def num_views(self) -> int:
        return int(self.config["num_views"])

    @property
    def dtype(self) -> torch.dtype:
        """The weights' storage dtype (see :attr:`compute_dtype`)."""
        return self.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv_in.weight.device

    def _set_mv_axis(self, axis: str) -> None:
        """Internal/testing: ``"row"`` (the reference) or ``"column"`` (a deliberate mistake the fixtures catch)."""
        from .attention import RowwiseMVAttnProcessor

        if axis not in ("row", "column"):
            raise ValueError(f"axis must be 'row' or 'column', got {axis!r}")
        for m in self.modules():
            if isinstance(getattr(m, "processor", None), RowwiseMVAttnProcessor):
                m.processor.axis = axis

    @property
    def compute_dtype(self) -> torch.dtype:
        """dtype of the activations inside :meth:`forward` (:func:`mvboost_core.precision.compute_dtype`)."""
        return precision.compute_dtype(self)

    # ------------------------------------------------------------------ forward
    def _check_inputs(self, sample, encoder_hidden_states, class_labels):
        cfg = self.config
        if sample.ndim != 4 or sample.shape[1] != self.in_channels:
            raise ValueError(f"sample must be [B, {self.in_channels}, h, w] (noisy latents ⊕ condition latents), "
                             f"got {tuple(sample.shape)}")
        b = sample.shape[0]
        unit = self.num_views * (2 if cfg["mvcd_attention"] else 1)
        if b % unit:
            raise ValueError(f"batch {b} is not a multiple of {unit}: Era3D needs [normals ; colours] halves of "
                             f"groups of num_views={self.num_views} consecutive views")
        xdim = _per_block(cfg["cross_attention_dim"], 1)[0]
        if encoder_hidden_states is None or encoder_hidden_states.ndim != 3 or \
                encoder_hidden_states.shape[0] != b or encoder_hidden_states.shape[2] != xdim:
            got = None if encoder_hidden_states is None else tuple(encoder_hidden_states.shape)
            raise ValueError(f"encoder_hidden_states must be [B={b}, tokens, {xdim}] (per-view prompt embeddings), "
                             f"got {got}")
        pdim = cfg["projection_class_embeddings_input_dim"]
        if class_labels is None or class_labels.ndim != 2 or class_labels.shape != (b, pdim):
            got = None if class_labels is None else tuple(class_labels.shape)
            raise ValueError(f"class_labels must be [B={b}, {pdim}] (unCLIP image embedding ⊕ noise-level "
                             f"embedding), got {got}")
        h, w = sample.shape[-2:]
        if cfg["multiview_attention"] and h != w:
            raise ValueError(f"Era3D's row-wise multi-view attention was trained on square latents; got {h}x{w}")

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                class_labels: torch.Tensor, return_intermediates: bool = False):
        """See the class docstring. With ``return_intermediates=True`` a third element is returned:
        ``{"emb", "down_out", "mid_out", "emb_up"}`` (time+class embedding, down-path output, mid-block output,
        up-path embedding = emb + camera embedding of the predicted pose)."""
        self._check_inputs(sample, encoder_hidden_states, class_labels)
        cfg = self.config
        b = sample.shape[0]
        in_dtype = sample.dtype
        dtype = self.compute_dtype
        sample = sample.to(dtype)

        t = timestep
        if not torch.is_tensor(t):
            t = torch.tensor([t], dtype=torch.float64 if isinstance(t, float) else torch.int64, device=sample.device)
        elif t.ndim == 0:
            t = t[None].to(sample.device)
        else:
            t = t.to(sample.device)
        if t.ndim != 1 or t.shape[0] not in (1, b):
            raise ValueError(f"timestep must be a number, a 0-d tensor or a [B={b}] tensor, got shape {tuple(t.shape)}")
        t = t.expand(b)

        emb = self.time_embedding(self.time_proj(t).to(dtype))
        emb = emb + self.class_embedding(class_labels.to(dtype)).to(dtype)
        context = encoder_hidden_states.to(dtype)

        x = 2 * sample - 1.0 if cfg["center_input_sample"] else sample
        x = self.conv_in(x)
        skips: tuple = (x,)
        for blk in self.down_blocks:
            if isinstance(blk, CrossAttnDownBlockMV2D):
                x, res = blk(x, emb, context)
            else:
                x, res = blk(x, emb)
            skips += res
        down_out = x
        x = self.mid_block(x, emb, context)
        mid_out = x

        pose = None
        emb_up = emb
        if self.camera_embedding is not None:
            pooled = x.detach().mean(dim=(2, 3))  # [B, C]
            half = b // 2
            feats = torch.cat([pooled[:half], pooled[half:]], dim=-1)  # [B/2, 2C]: per view [normal ; colour]
            g = half // self.num_views
            preds = []
            for reg in (self.elevation_regressor, self.focal_regressor):
                if reg is not None:
                    preds.append(reg(feats).view(g, self.num_views, -1).mean(dim=1))
            pose = torch.cat(preds, dim=-1)  # [G, n_reg]: [elevation, focal]
            cam = self.camera_embedding(torch.cat([torch.sin(pose), torch.cos(pose)], dim=-1))
            cam = cam.repeat_interleave(self.num_views, dim=0)
            emb_up = emb + torch.cat([cam, cam], dim=0)

        fwd_size = any(s % (2 ** self.num_upsamplers) for s in x.shape[-2:])
        for i, blk in enumerate(self.up_blocks):
            k = len(blk.resnets)
            res, skips = skips[-k:], skips[:-k]
            up_size = skips[-1].shape[2:] if (fwd_size and i < len(self.up_blocks) - 1) else None
            if isinstance(blk, CrossAttnUpBlockMV2D):
                x = blk(x, res, emb_up, context, upsample_size=up_size)
            else:
                x = blk(x, res, emb_up, upsample_size=up_size)

        x = self.conv_out(self.conv_act(self.conv_norm_out(x))).to(in_dtype)
        if pose is not None:
            pose = pose.to(in_dtype)
        if return_intermediates:
            return x, pose, {"emb": emb, "down_out": down_out, "mid_out": mid_out, "emb_up": emb_up}
        return x, pose


def load_unet_weights(path: str | os.PathLike, model: nn.Module, device=None,
                      dtype: "torch.dtype | dict[str, torch.dtype] | None" = None) -> dict[str, torch.Tensor]:
    """Read a safetensors UNet checkpoint tensor by tensor (converted to ``dtype``, default float32, or per key when
    ``dtype`` is a ``{key: dtype}`` dict) and check it against ``model``'s state dict (keys and shapes). Raises
    ``ValueError`` listing missing / unexpected / mis-shaped keys. Peak memory ≈ the converted weights plus one
    tensor."""
    from safetensors import safe_open

    dtype = dtype or torch.float32
    device = torch.device(device) if device is not None else torch.device("cpu")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    try:
        f = safe_open(str(path), framework="pt", device="cpu")
    except Exception as e:  # safetensors raises its own error types
        raise ValueError(f"{path} is not a readable safetensors file: {e}") from e
    with f:
        keys = list(f.keys())
        missing = [k for k in expected if k not in set(keys)]
        unexpected = [k for k in keys if k not in expected]
        bad_shape = []
        for k in keys:
            if k not in expected:
                continue
            sl = f.get_slice(k)
            shape = tuple(sl.get_shape())
            if shape != expected[k]:
                bad_shape.append(f"{k}: file {list(shape)} vs model {list(expected[k])}")
        if missing or unexpected or bad_shape:
            msg = [f"{path} does not match this Era3D UNet config ({len(keys)} tensors in the file, "
                   f"{len(expected)} expected)."]
            if missing:
                msg.append(f"missing {len(missing)}: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
            if unexpected:
                msg.append(f"unexpected {len(unexpected)}: {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
            if bad_shape:
                msg.append(f"wrong shape {len(bad_shape)}: {bad_shape[:5]}{' ...' if len(bad_shape) > 5 else ''}")
            msg.append("Is config.json from the same checkpoint as the weights?")
            raise ValueError(" ".join(msg))
        for k in expected:
            t = f.get_tensor(k)
            dt = dtype.get(k, torch.float32) if isinstance(dtype, dict) else dtype
            out[k] = t.to(device=device, dtype=dt if t.is_floating_point() else t.dtype)
            del t
    return out
