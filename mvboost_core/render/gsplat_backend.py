"""Optional CUDA fast path through gsplat's ``rasterization()`` (gsplat 1.5.3 API). Imported lazily.

Mapping (gsplat's documented conventions are the same as ours): quats wxyz (gsplat normalises), linear scales,
opacities in [0,1], ``viewmats`` world-to-camera in OpenCV axes, ``Ks`` in pixels, ``sh_degree=None`` with RGB
colours, ``backgrounds`` [V,3], ``render_mode="RGB+D"`` (the depth channel is Σ w z; gsplat pads the background of
that channel with 0), ``rasterize_mode="classic"``, ``eps2d=0.3``, ``packed=False``, ``near_plane=0.01``,
``camera_model="pinhole"|"ortho"``.

Known, documented difference from the spec (``fixtures/render/README.md`` §2.7): gsplat clamps alpha at 0.999
instead of 0.99 (and stops at T' <= 1e-4), so its images differ from the torch backend only at pixels where some
Gaussian has o·exp(-sigma) > 0.99 (``alpha_clamp_active``). It passes F1 and, off that mask, F2.

This module cannot run without CUDA; :func:`gsplat_available` answers whether it can.
"""
from __future__ import annotations

import functools
import importlib

import torch
from torch import Tensor

__all__ = ["gsplat_available", "rasterize_gsplat"]


@functools.lru_cache(maxsize=None)
def _probe() -> tuple[bool, str]:
    """(usable, reason). Never raises; never touches CUDA unless torch reports it available."""
    if not torch.cuda.is_available():
        return False, "CUDA is not available"
    try:
        gsplat = importlib.import_module("gsplat")
    except Exception as exc:  # ImportError, or gsplat 1.6 failing at import time without CUDA libraries
        return False, f"gsplat is not importable ({type(exc).__name__}: {exc})"
    try:
        # gsplat binds its CUDA extension lazily; loading it here surfaces JIT/compile failures once.
        backend = importlib.import_module("gsplat.cuda._backend")
        if getattr(backend, "_C", None) is None:
            return False, "gsplat's CUDA kernels did not load (gsplat._C is None)"
    except Exception as exc:
        return False, f"gsplat's CUDA kernels failed to load ({type(exc).__name__}: {exc})"
    if not hasattr(gsplat, "rasterization"):
        return False, "this gsplat version has no rasterization()"
    return True, f"gsplat {getattr(gsplat, '__version__', '?')}"


def gsplat_available(device: torch.device | str | None = None) -> tuple[bool, str]:
    """Whether the gsplat backend can render on ``device`` (must be CUDA), and why not."""
    if device is not None and torch.device(device).type != "cuda":
        return False, f"gsplat needs CUDA tensors, got device {torch.device(device)}"
    return _probe()


def rasterize_gsplat(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    projection: str,
    background: Tensor,  # [V,3]
    near: float,
    eps2d: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Render with ``gsplat.rasterization``; returns rgb [V,H,W,3], alpha [V,H,W,1], depth [V,H,W,1]."""
    ok, why = _probe()
    if not ok:
        raise RuntimeError(f"backend='gsplat' is not usable here: {why}. Use backend='torch' or 'auto'.")
    import gsplat

    camera_model = {"perspective": "pinhole", "orthographic": "ortho"}[projection]
    dtype = means.dtype
    f32 = [t.float() for t in (means, quats, scales, opacities, colors, viewmats, Ks, background)]
    means, quats, scales, opacities, colors, viewmats, Ks, background = f32  # gsplat's kernels are float32
    colors_out, alphas, _meta = gsplat.rasterization(
        means=means,
        quats=quats,
        scales=scales,
        opacities=opacities,
        colors=colors,
        viewmats=viewmats,
        Ks=Ks,
        width=int(width),
        height=int(height),
        near_plane=float(near),
        eps2d=float(eps2d),
        sh_degree=None,
        packed=False,
        backgrounds=background,
        render_mode="RGB+D",
        rasterize_mode="classic",
        camera_model=camera_model,
    )
    colors_out, alphas = colors_out.to(dtype), alphas.to(dtype)
    return colors_out[..., :3], alphas, colors_out[..., 3:4]
