"""CPU inference tactics behind one switch: :func:`enable_cpu_inference_tactics`.

The networks (:mod:`mvboost_core.lgm.network`, :mod:`mvboost_core.era3d.unet`) are written like the published ones.
Speed and memory tricks for CPU inference live in subclasses of their modules that compute the same values
(bit for bit, or to float32 rounding where another convolution kernel is used) and fall back to the parent's
forward whenever autograd is on. The switch swaps those subclasses in or out (``module.__class__``; parameters,
buffers, hooks and state-dict keys are unchanged), so a model can be compared with itself, tactics on and off.

Tactics per model (each listed in its module's docstring with its measurement):

* LGM (:mod:`mvboost_core.lgm.tactics`): image-by-image high-resolution blocks, in-place residuals, unread skips
  dropped, small-map convolutions as GEMMs, heap trimming between blocks;
* Era3D UNet (:mod:`mvboost_core.era3d.tactics`): in-place resnet/transformer residuals, GEGLU feed-forward on token
  slices, heap trimming before each transformer, 3x3 convolutions through :mod:`mvboost_core.fastconv` (NNPACK's
  Winograd path where the CPU class prefers it: AVX2-only CPUs);
* anything else (e.g. the Era3D pipeline's VAE): 3x3 convolutions through :mod:`mvboost_core.fastconv`.

Default: the loaders switch the tactics on for CPU inference (:func:`mvboost_core.precision.cpu_tactics_default`);
``cpu_tactics=False`` in ``load_lgm`` / ``load_era3d`` / ``Era3DUNet.from_folder`` or calling this function with
``enabled=False`` turns them off. Tactic subclasses of layers that may carry precision hooks (Conv/Linear) only
override ``_conv_forward``, never ``forward`` (the hook wraps the forward it found when it was registered).
"""
from __future__ import annotations

import sys

from torch import nn

from .fastconv import FastConv2d

__all__ = ["enable_cpu_inference_tactics", "cpu_inference_tactics_enabled", "GENERIC_SWAPS"]

#: tactics for models without their own table
GENERIC_SWAPS: dict[type, type] = {nn.Conv2d: FastConv2d}

_ATTR = "_mvboost_cpu_tactics"


def _swaps_for(model: nn.Module) -> dict[type, type]:
    from .lgm.network import LGM, UNet

    if isinstance(model, (LGM, UNet)):
        from .lgm.tactics import SWAPS

        return SWAPS
    era = sys.modules.get(f"{__package__}.era3d.unet")  # never imports diffusers for other models
    if era is not None and isinstance(model, era.Era3DUNet):
        from .era3d.tactics import SWAPS

        return SWAPS
    return GENERIC_SWAPS


def enable_cpu_inference_tactics(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Switch the CPU inference tactics of ``model`` (an LGM, an Era3D UNet or any module) on or off, in place.

    Returns ``model``. Idempotent; :func:`cpu_inference_tactics_enabled` reports the state.
    """
    swaps = _swaps_for(model)
    back = {v: k for k, v in swaps.items()}
    for m in model.modules():
        t = type(m)
        if enabled and t in swaps:
            m.__class__ = swaps[t]
        elif not enabled and t in back:
            m.__class__ = back[t]
    setattr(model, _ATTR, bool(enabled))
    return model


def cpu_inference_tactics_enabled(model: nn.Module) -> bool:
    """Whether :func:`enable_cpu_inference_tactics` last switched ``model``'s tactics on."""
    return bool(getattr(model, _ATTR, False))
