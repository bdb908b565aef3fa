"""Public rendering API: :func:`render` (Gaussians + Cameras) and :func:`rasterize` (raw tensors).

Semantics: ``fixtures/render/README.md`` (3DGS 'classic' rules LGM was trained with): normalised wxyz quaternions,
near culling z <= 0.01 only, perspective Jacobian with gsplat's FOV clamp limits, orthographic projection,
+0.3 px² blur without compensation, pixel centres at (j+0.5, i+0.5), alpha = min(0.99, o·exp(-sigma)), pairs with
alpha < 1/255 skipped, ascending camera z, a pixel stops before the Gaussian that would bring T below 1e-4;
rgb = Σ w c + T·bg, alpha = 1 - T, depth = Σ w z (unnormalised).

Backends: ``"torch"`` (pure PyTorch tile rasterizer, any device), ``"gsplat"`` (CUDA only, optional dependency;
see :mod:`.gsplat_backend` for its 0.999 alpha clamp), ``"auto"`` (gsplat if usable, else torch; one log line).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from .projection import project
from .tiles import build_tile_lists
from .torch_backend import CompositeConfig, _Schedule, composite, composite_autograd

__all__ = ["RenderOutput", "RenderOptions", "render", "rasterize", "select_backend", "BACKENDS"]

log = logging.getLogger("mvboost.render")

BACKENDS = ("auto", "torch", "gsplat")


@dataclass
class RenderOutput:
    """Rendered images, all ``[V,H,W,C]`` in the Gaussians' dtype, row 0 at the top.

    rgb ``[V,H,W,3]`` = Σ w c + T·background (not clamped); alpha ``[V,H,W,1]`` = 1 - T;
    depth ``[V,H,W,1]`` = Σ w z_cam (unnormalised; see :attr:`expected_depth`).
    ``info``: backend name and work counters (torch backend: ``n_intersections``, ``n_pairs``).
    """

    rgb: Tensor
    alpha: Tensor
    depth: Tensor
    info: dict = field(default_factory=dict)

    @property
    def expected_depth(self) -> Tensor:
        """``depth / alpha`` where alpha > 0, else 0 (gsplat's "ED"), ``[V,H,W,1]``."""
        safe = torch.where(self.alpha > 0, self.alpha, torch.ones_like(self.alpha))
        return torch.where(self.alpha > 0, self.depth / safe, torch.zeros_like(self.depth))


@dataclass(frozen=True)
class RenderOptions:
    """Rarely changed knobs. The defaults are the spec; changing the first three breaks parity on purpose.

    near_plane: cull iff z_cam <= near_plane (0.01).
    eps2d: blur added to the 2D covariance (0.3 px²).
    alpha_max: alpha clamp (0.99 = 3DGS/LGM; gsplat uses 0.999).
    tile_size: pixels per tile side (torch backend).
    chunk: Gaussians per tile per step (torch backend).
    max_step_elems: bound on (tile, pixel, Gaussian) triples evaluated per step: the memory knob.
    cull: exact opacity-aware box culling (True) or every Gaussian on every tile (False; slow, for tests).
    backward: ``"custom"`` (hand-written backward, low memory) or ``"autograd"`` (reference; stores every chunk).
    """

    near_plane: float = 0.01
    eps2d: float = 0.3
    alpha_max: float = 0.99
    tile_size: int = 8
    chunk: int = 32
    max_step_elems: int = 1 << 22
    cull: bool = True
    backward: str = "custom"


_logged: set = set()


def select_backend(backend: str, device: torch.device | str) -> str:
    """Resolve ``"auto"|"torch"|"gsplat"`` to the backend that will run on ``device``.

    ``"auto"`` logs one line (once per process and outcome) saying which backend was chosen and why.
    ``"gsplat"`` raises ``RuntimeError`` if gsplat cannot run here (no CUDA, not installed, kernels fail).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return "torch"
    from .gsplat_backend import gsplat_available  # light: imports gsplat only if CUDA is available

    ok, why = gsplat_available(device)
    if backend == "gsplat":
        if not ok:
            raise RuntimeError(f"backend='gsplat' is not usable: {why}. Use backend='torch' or 'auto'.")
        return "gsplat"
    choice = "gsplat" if ok else "torch"
    key = (choice, why)
    if key not in _logged:
        _logged.add(key)
        if ok:
            log.info("mvboost render: using the gsplat CUDA backend (%s)", why)
        else:
            log.info("mvboost render: using the pure-PyTorch backend (gsplat not used: %s)", why)
    return choice


def _background(background, V: int, dtype, device) -> Tensor:
    bg = background if isinstance(background, Tensor) else torch.tensor(background, dtype=torch.float64)
    bg = bg.to(device=device, dtype=dtype)
    if bg.shape == (3,):
        bg = bg.expand(V, 3)
    if bg.shape != (V, 3):
        raise ValueError(f"background must be 3 numbers or a [V,3] tensor (V={V}), got shape {tuple(bg.shape)}")
    if not torch.isfinite(bg.detach()).all():
        raise ValueError("background contains NaN/inf")
    return bg


def _check(name: str, t, shape: tuple) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.ndim != len(shape) or any(s != -1 and d != s for d, s in zip(t.shape, shape)):
        want = "[" + ",".join("N" if s == -1 else str(s) for s in shape) + "]"
        raise ValueError(f"{name} must have shape {want}, got {list(t.shape)}")


def rasterize(
    means: Tensor,  # [N,3]
    quats: Tensor,  # [N,4] wxyz, any non-zero norm
    scales: Tensor,  # [N,3] linear
    opacities: Tensor,  # [N] in [0,1]
    colors: Tensor,  # [N,3]
    viewmats: Tensor,  # [V,4,4] world-to-camera, OpenCV axes
    Ks: Tensor,  # [V,3,3] pixels
    width: int,
    height: int,
    projection: str = "perspective",
    background: Sequence[float] | Tensor = (1.0, 1.0, 1.0),
    near: float | None = None,
    backend: str = "torch",
    options: RenderOptions | None = None,
) -> RenderOutput:
    """Render ``N`` Gaussians into ``V`` cameras; differentiable w.r.t. every float input (Ks excepted).

    All computation happens in ``means.dtype`` on ``means.device``. ``near`` overrides ``options.near_plane``.
    Raises ``ValueError`` with the reason for bad shapes, NaN/inf values or a non-positive resolution.
    """
    opts = options or RenderOptions()
    near = opts.near_plane if near is None else float(near)
    if opts.backward not in ("custom", "autograd"):
        raise ValueError(f"options.backward must be 'custom' or 'autograd', got {opts.backward!r}")
    if int(opts.tile_size) < 1 or int(opts.chunk) < 1 or int(opts.max_step_elems) < 1:
        raise ValueError(f"options.tile_size, chunk and max_step_elems must be >= 1, got {opts}")
    if isinstance(width, bool) or isinstance(height, bool) or int(width) != width or int(height) != height:
        raise ValueError(f"width and height must be integers, got {width!r} x {height!r}")
    width, height = int(width), int(height)
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got width={width}, height={height}")
    if projection not in ("perspective", "orthographic"):
        raise ValueError(f"projection must be 'perspective' or 'orthographic', got {projection!r}")
    if isinstance(viewmats, Tensor) and viewmats.ndim == 2:
        viewmats = viewmats[None]
    if isinstance(Ks, Tensor) and Ks.ndim == 2:
        Ks = Ks[None]
    _check("viewmats", viewmats, (-1, 4, 4))
    V = viewmats.shape[0]
    _check("Ks", Ks, (V, 3, 3))
    _check("means", means, (-1, 3))
    N = means.shape[0]
    _check("quats", quats, (N, 4))
    _check("scales", scales, (N, 3))
    _check("opacities", opacities, (N,))
    _check("colors", colors, (N, 3))
    if not means.is_floating_point():
        raise ValueError(f"means must be a floating-point tensor, got {means.dtype}")
    dtype, device = means.dtype, means.device
    for name, t in (("means", means), ("quats", quats), ("scales", scales), ("opacities", opacities),
                    ("colors", colors), ("viewmats", viewmats), ("Ks", Ks)):
        if not torch.isfinite(t.detach()).all():
            raise ValueError(f"{name} contains NaN/inf values; fix the upstream tensors before rendering")
    if N and (quats.detach().norm(dim=-1) == 0).any():
        raise ValueError("quats contains zero quaternions; every Gaussian needs a non-zero (w,x,y,z) rotation")
    quats, scales, opacities, colors, viewmats, Ks = (
        t.to(device=device, dtype=dtype) for t in (quats, scales, opacities, colors, viewmats, Ks)
    )
    bg = _background(background, V, dtype, device)
    which = select_backend(backend, device)
    if which == "gsplat":
        from .gsplat_backend import rasterize_gsplat

        rgb, alpha, depth = rasterize_gsplat(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                                             projection, bg, near, opts.eps2d)
        return RenderOutput(rgb, alpha, depth, {"backend": "gsplat"})

    proj = project(means, quats, scales, viewmats, Ks, width, height, projection, near, opts.eps2d)
    opac_v = opacities[None, :].expand(V, N)
    lists = build_tile_lists(proj.means2d, proj.cov2d, proj.depth, proj.valid, opac_v, width, height,
                             tile_size=opts.tile_size, cull=opts.cull)
    sched = _Schedule(lists, width, height, dtype, device)
    cfg = CompositeConfig(alpha_max=opts.alpha_max, chunk=opts.chunk, max_step_elems=opts.max_step_elems)
    colors_v = colors[None].expand(V, N, 3)
    fn = composite if opts.backward == "custom" else composite_autograd
    rgb, alpha, depth = fn(proj.means2d, proj.conic, opac_v, colors_v, proj.depth, bg, sched, cfg)
    info = {"backend": "torch", "n_intersections": lists.n_intersections, **sched.stats}
    return RenderOutput(rgb, alpha, depth, info)


def render(
    gaussians,
    cameras,
    background: Sequence[float] | Tensor = (1.0, 1.0, 1.0),
    backend: str = "auto",
    options: RenderOptions | None = None,
) -> RenderOutput:
    """Render :class:`~mvboost_core.gaussians.Gaussians` from every camera of a :class:`~mvboost_core.cameras.Cameras`.

    Differentiable w.r.t. every Gaussian parameter, ``cameras.c2w`` (through ``cameras.viewmats()``) and a tensor
    ``background``. Output dtype/device = the Gaussians'; cameras are moved there. Empty scenes raise ValueError;
    Gaussians that are all behind the camera give the background image.
    """
    from ..cameras import Cameras
    from ..gaussians import Gaussians

    if not isinstance(gaussians, Gaussians):
        raise TypeError(f"render() needs a Gaussians object, got {type(gaussians).__name__}")
    if not isinstance(cameras, Cameras):
        raise TypeError(f"render() needs a Cameras object, got {type(cameras).__name__}")
    gaussians.validate("render(): Gaussians")
    cams = cameras.to(device=gaussians.device, dtype=gaussians.dtype)
    return rasterize(
        gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities, gaussians.colors,
        cams.viewmats(), cams.Ks(), cams.width, cams.height, cams.projection,
        background=background, backend=backend, options=options,
    )
