"""End to end: one image -> Era3D six views -> view bridge -> (boosted) LGM -> Optimize Input Pose -> Gaussians.

Also the output helpers the CLI uses: a turntable render and atomic writers for ``.ply``, ``.splat``, PNG frames
and an animated GIF/WebP preview.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from .bridge import era3d_to_lgm
from .cameras import LGM_FOVY, LGM_RADIUS, Cameras
from .gaussians import Gaussians
from .multiview import MultiViewResult
from .pose import PoseOptions, optimize_input_view
from .progress import interrupt_hooks

__all__ = ["PipelineResult", "image_to_gaussians", "nominal_input_camera", "pose_stage_totals", "render_turntable",
           "write_outputs", "STAGE_LABELS"]

log = logging.getLogger("mvboost")

#: ``progress(stage, done, total)``; stages in run order: "era3d_encode", "era3d", "era3d_decode", "lgm", "search",
#: "pose", "adjust", "turntable", "save".
Progress = Callable[[str, int, int], None]

#: Human labels of the progress stages (CLI lines, ComfyUI node text).
STAGE_LABELS = {"era3d_encode": "Era3D conditioning", "era3d": "Era3D denoising", "era3d_decode": "Era3D VAE decode",
                "refine": "Refine Views denoising", "lgm": "LGM",
                "search": "pose search", "pose": "pose refinement", "adjust": "appearance adjustment",
                "turntable": "turntable", "save": "saving"}


@dataclass
class PipelineResult:
    """What :func:`image_to_gaussians` returns.

    gaussians: final Gaussians (LGM world; pose-adjusted if ``optimize_pose``); gaussians_lgm: LGM's raw output;
    multiview: Era3D's result (colours, normals, input_image); lgm_images ``[4,256,256,3]`` the bridged inputs;
    camera: the fitted input camera (or the nominal one); report: pose report (empty without pose optimisation).
    """

    gaussians: Gaussians
    gaussians_lgm: Gaussians
    multiview: MultiViewResult
    lgm_images: Tensor
    camera: Optional[Cameras]
    report: dict = field(default_factory=dict)


def nominal_input_camera(elevation: Optional[float], width: int, height: Optional[int] = None,
                         device=None) -> Cameras:
    """The camera the input photo is assumed to be taken from, before pose optimisation: LGM's front orbit camera
    (azimuth 0, radius ``LGM_RADIUS``, fovy ``LGM_FOVY``) at Era3D's predicted elevation, ``width`` x ``height`` px
    (``height`` defaults to ``width``).

    ``elevation`` is Era3D's prediction in degrees with Blender's sign (positive = camera above), turned into
    kiui's sign (negative = above); a missing, non-finite or implausible (|e| > 60°) prediction gives 0.
    """
    e = float(elevation) if elevation is not None else 0.0
    if not math.isfinite(e) or abs(e) > 60.0:
        e = 0.0
    return Cameras.orbit([-e], [0.0], LGM_RADIUS, LGM_FOVY, int(width), int(height or width), device=device)


def pose_stage_totals(options: Optional[PoseOptions] = None) -> dict[str, int]:
    """Expected progress units of :func:`~mvboost_core.pose.optimize_input_view` per stage, in run order
    (``search`` counts candidate poses, ``pose`` iterations + LM steps, ``adjust`` iterations). The pose code's own
    reports stay authoritative: :class:`~mvboost_core.progress.StageProgress` takes their totals when they differ."""
    o = options or PoseOptions()
    n_ea = len(o.search_elevations) * len(o.search_azimuths)
    n_rf = len(o.search_radius_scales) * len(o.search_fovy_offsets)
    # the nominal camera + the grid; separable: elevation x azimuth, then the other radius/fovy pairs at the best
    n_search = (1 + (n_ea + n_rf - 1 if o.search_separable else n_ea * n_rf)) if o.search else 0
    return {"search": n_search, "pose": (o.pose_iters + o.lm_iters) if o.refine_pose else 0,
            "adjust": o.adjust_iters if o.adjust else 0}


def image_to_gaussians(
    image,
    era3d,
    lgm,
    optimize_pose: bool = True,
    *,
    alpha=None,
    seed: int = 42,
    steps: int = 40,
    guidance: float = 3.0,
    crop_size: float = 420.0,
    pose_options: Optional[PoseOptions] = None,
    progress: Optional[Progress] = None,
    check_interrupt: Optional[Callable[[], None]] = None,
) -> PipelineResult:
    """Run MVBoost's inference chain on one image.

    Args:
        image: RGBA image (PIL / numpy / ``[H,W,4]`` tensor) or RGB + ``alpha`` (1 = object), as Era3D accepts.
        era3d: :class:`~mvboost_core.era3d.Era3DPipeline`; lgm: :class:`~mvboost_core.lgm.LGM` (a LoRA may be
            applied already: that is the "boosted" LGM).
        optimize_pose: run :func:`~mvboost_core.pose.optimize_input_view` against Era3D's condition image.
        seed, steps, guidance, crop_size: Era3D settings.
        pose_options: :class:`PoseOptions` (defaults otherwise).
        progress: ``progress(stage, done, total)``.
        check_interrupt: called after every denoising step, between the stages, before every block of the Era3D
            UNet / VAE / CLIP encoder and of LGM (:func:`~mvboost_core.progress.interrupt_hooks`) and in the pose
            loops; whatever it raises stops the run.

    The nominal input camera for the pose search is LGM's front orbit camera at Era3D's predicted elevation
    (Blender sign, positive = above, turned into kiui's sign), when the prediction is within ±60°; else 0.
    """
    from .lgm import reconstruct

    prog = progress or (lambda s, i, n: None)
    tick = check_interrupt or (lambda: None)

    def cb(done, total, _lat=None):
        tick()
        prog("era3d", done, total)
        if done == total:
            prog("era3d_decode", 0, 1)  # the VAE decode of the 12 views follows (minutes on a CPU)

    prog("era3d_encode", 0, 1)  # CLIP + VAE encoding of the condition image, before the first step

    # with a check_interrupt (ComfyUI's cancel), also check inside each long network forward (between blocks)
    with interrupt_hooks(None if check_interrupt is None else
                         [getattr(era3d, k, None) for k in ("unet", "vae", "image_encoder")], check_interrupt):
        mv = era3d(image, alpha=alpha, seed=seed, steps=steps, guidance=guidance, crop_size=crop_size, callback=cb)
    prog("era3d_decode", 1, 1)
    tick()
    images, _ = era3d_to_lgm(mv, size=256)
    prog("lgm", 0, 1)
    dev = next(lgm.parameters()).device
    with interrupt_hooks(lgm if check_interrupt is not None else None, check_interrupt):
        g_lgm = reconstruct(lgm, images[None].to(dev))[0].to(dtype=torch.float32)
    prog("lgm", 1, 1)
    tick()
    result = PipelineResult(gaussians=g_lgm, gaussians_lgm=g_lgm, multiview=mv, lgm_images=images, camera=None)
    if not optimize_pose:
        return result
    cond = mv.input_image.float().to(g_lgm.device)
    mask = mv.input_alpha  # the object's alpha framed exactly like the condition image (Era3D's preprocessing)
    cam0 = nominal_input_camera(mv.elevation, cond.shape[0], device=g_lgm.device)
    g_out, cam, report = optimize_input_view(g_lgm, cond, None if mask is None else mask.float().to(g_lgm.device),
                                             cam0, pose_options, progress=prog, check_interrupt=tick)
    report["era3d_elevation"] = mv.elevation
    result.gaussians, result.camera, result.report = g_out, cam, report
    return result


def render_turntable(gaussians: Gaussians, frames: int = 24, size: int = 256, elevation: float = -15.0,
                     radius: float = 2.0, fovy: float = LGM_FOVY, backend: str = "auto",
                     progress: Optional[Progress] = None, *, background=(1.0, 1.0, 1.0), start_azimuth: float = 0.0,
                     batch: int = 4, check_interrupt: Optional[Callable[[], None]] = None, with_alpha: bool = False):
    """``frames`` views evenly spaced in azimuth on LGM's orbit, all at one elevation, looking at the origin.

    Args:
        gaussians: rendered on their own device, float32.
        frames, size: number of views and their side in pixels.
        elevation: degrees, kiui sign (negative = camera above); radius: orbit radius; fovy: degrees (LGM 49.1).
        background: rgb in [0,1] the views are composited over (white by default).
        start_azimuth: azimuth of the first view in degrees (kiui: 0 looks from +z, 90 from +x).
        batch: views rendered per call (memory vs. how often progress / interruption are checked).
        progress: ``progress("turntable", done, frames)``; check_interrupt: called before each batch (raise to stop).
        with_alpha: also return the alpha.

    Returns:
        ``rgb [F,size,size,3]`` float32 in [0,1] on the CPU, or ``(rgb, alpha [F,size,size])`` with ``with_alpha``.
    """
    from .render import render

    frames, size = int(frames), int(size)
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    if not 0.0 < float(fovy) < 180.0:
        raise ValueError(f"fov must be in (0, 180) degrees, got {fovy}")
    if not float(radius) > 0.0:
        raise ValueError(f"radius must be > 0, got {radius}")
    prog = progress or (lambda s, i, n: None)
    tick = check_interrupt or (lambda: None)
    g = gaussians.to(dtype=torch.float32)
    rgbs, alphas = [], []
    az = [float(start_azimuth) + 360.0 * k / frames for k in range(frames)]
    step = max(1, int(batch))
    for s in range(0, frames, step):
        tick()
        cams = Cameras.orbit([float(elevation)] * len(az[s:s + step]), az[s:s + step], float(radius), float(fovy),
                             size, size, device=g.device)
        with torch.no_grad():
            out = render(g, cams, background=tuple(float(c) for c in background), backend=backend)
        rgbs.append(out.rgb.clamp(0, 1).float().cpu())
        alphas.append(out.alpha[..., 0].clamp(0, 1).float().cpu())
        prog("turntable", min(s + step, frames), frames)
    rgb = torch.cat(rgbs)
    return (rgb, torch.cat(alphas)) if with_alpha else rgb


def _atomic(path: Path, write: Callable[[Path], None]) -> Path:
    from .atomic import atomic_write

    return atomic_write(path, writer=write)


def _to_u8(img: Tensor) -> np.ndarray:
    return (img.detach().float().clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


def write_outputs(gaussians: Gaussians, out_dir, name: str, turntable: Optional[Tensor] = None,
                  animation: str = "gif", fps: int = 12, mesh: Sequence[str] = (),
                  progress: Optional[Progress] = None) -> dict:
    """Write ``<name>.ply`` (3DGS PLY, LGM layout), ``<name>.splat``, ``<name>_turntable/frame_XXX.png`` and
    ``<name>_turntable.gif`` (or ``.webp``) into ``out_dir``; every file atomically. Returns the paths.

    The splat files use each format's measured axes convention (:mod:`mvboost_core.splatio`: y-down 3DGS frame), so
    they open upright in SuperSplat, Spark and ComfyUI core's viewer. ``mesh`` (``"glb"`` and/or ``"obj"``) also
    writes ``<name>.glb`` / ``<name>.obj``: a vertex-coloured mesh from :func:`mvboost_core.mesh.gaussians_to_mesh`.
    ``progress("save", done, total)`` after every file (a Ctrl-C between files leaves only complete files)."""
    from PIL import Image

    from .splatio import save_ply, save_splat

    if animation not in ("gif", "webp"):
        raise ValueError(f"animation must be 'gif' or 'webp', got {animation!r}")
    from .mesh import MESH_FORMATS

    bad = [m for m in mesh if m not in MESH_FORMATS]
    if bad:
        raise ValueError(f"mesh formats must be among {list(MESH_FORMATS)}, got {bad}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    g = gaussians.detach().to(device="cpu", dtype=torch.float32)
    n_files = 2 + (0 if turntable is None else len(turntable) + 1) + len(dict.fromkeys(mesh))
    done = [0]

    def tick(p):
        done[0] += 1
        if progress is not None:
            progress("save", done[0], n_files)
        return p

    paths = {
        "ply": tick(_atomic(out / f"{name}.ply", lambda p: save_ply(g, p))),
        "splat": tick(_atomic(out / f"{name}.splat", lambda p: save_splat(g, p))),
    }
    if turntable is not None:
        fdir = out / f"{name}_turntable"
        frames = [Image.fromarray(_to_u8(f)) for f in turntable]
        paths["frames"] = [tick(_atomic(fdir / f"frame_{i:03d}.png", lambda p, im=im: im.save(p, format="PNG")))
                           for i, im in enumerate(frames)]

        def save_anim(p: Path) -> None:
            kw = {"loop": 0, "duration": int(round(1000 / fps))}
            fmt = "GIF" if animation == "gif" else "WEBP"
            frames[0].save(p, format=fmt, save_all=True, append_images=frames[1:], **kw)

        paths["animation"] = tick(_atomic(out / f"{name}_turntable.{animation}", save_anim))
    if mesh:
        from .mesh import gaussians_to_mesh, save_mesh

        m = gaussians_to_mesh(g)
        for fmt in dict.fromkeys(mesh):
            paths[fmt] = tick(save_mesh(m, out / f"{name}.{fmt}"))
    return paths
