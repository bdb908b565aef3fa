"""End to end: one image -> Era3D six views -> view bridge -> (boosted) LGM -> Optimize Input Pose -> Gaussians.

Also the output helpers the CLI uses: a turntable render and atomic writers for ``.ply``, ``.splat``, PNG frames
and an animated GIF/WebP preview.
"""
from __future__ import annotations

import logging
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor

from .bridge import era3d_to_lgm
from .cameras import LGM_FOVY, LGM_RADIUS, Cameras
from .gaussians import Gaussians
from .multiview import MultiViewResult
from .pose import PoseOptions, optimize_input_view

__all__ = ["PipelineResult", "image_to_gaussians", "input_mask", "render_turntable", "write_outputs"]

log = logging.getLogger("mvboost")

#: ``progress(stage, done, total)``; stages: "era3d", "lgm", "search", "pose", "adjust".
Progress = Callable[[str, int, int], None]


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


def input_mask(era3d, image, alpha=None, crop_size: float = 420.0) -> Optional[Tensor]:
    """The object's alpha framed exactly like Era3D's condition image, ``[R,R]`` float in [0,1] (or None if the
    input carries no alpha). Computed by running the same preprocessing on a white image with the input's alpha
    composited over black, so crop, scale and padding agree pixel for pixel."""
    from .era3d.preprocess import to_rgba_uint8

    try:
        rgba = to_rgba_uint8(image, alpha)
    except Exception:  # noqa: BLE001 - no usable alpha: the caller falls back
        return None
    if rgba.shape[-1] != 4 or int(rgba[..., 3].min()) == 255:
        return None
    white = rgba.copy()
    white[..., :3] = 255
    from .era3d.preprocess import preprocess_image

    out = preprocess_image(white, crop_size=crop_size, size=era3d.resolution, bg=0.0)
    return out[..., 0].clamp(0, 1)


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

    The nominal input camera for the pose search is LGM's front orbit camera at Era3D's predicted elevation
    (Blender sign, positive = above, turned into kiui's sign), when the prediction is within ±60°; else 0.
    """
    from .lgm import reconstruct

    prog = progress or (lambda s, i, n: None)
    tick = check_interrupt or (lambda: None)

    def cb(done, total, _lat=None):
        tick()
        prog("era3d", done, total)

    mv = era3d(image, alpha=alpha, seed=seed, steps=steps, guidance=guidance, crop_size=crop_size, callback=cb)
    images, _ = era3d_to_lgm(mv, size=256)
    prog("lgm", 0, 1)
    dev = next(lgm.parameters()).device
    g_lgm = reconstruct(lgm, images[None].to(dev))[0].to(dtype=torch.float32)
    prog("lgm", 1, 1)
    result = PipelineResult(gaussians=g_lgm, gaussians_lgm=g_lgm, multiview=mv, lgm_images=images, camera=None)
    if not optimize_pose:
        return result
    cond = mv.input_image.float().to(g_lgm.device)
    mask = input_mask(era3d, image, alpha, crop_size)
    elev = mv.elevation if (mv.elevation is not None and math.isfinite(mv.elevation)
                            and abs(mv.elevation) <= 60.0) else 0.0
    R = cond.shape[0]
    cam0 = Cameras.orbit([-elev], [0.0], LGM_RADIUS, LGM_FOVY, R, R, device=g_lgm.device)
    g_out, cam, report = optimize_input_view(g_lgm, cond, None if mask is None else mask.to(g_lgm.device), cam0,
                                             pose_options, progress=prog, check_interrupt=tick)
    report["era3d_elevation"] = mv.elevation
    result.gaussians, result.camera, result.report = g_out, cam, report
    return result


def render_turntable(gaussians: Gaussians, frames: int = 24, size: int = 256, elevation: float = -15.0,
                     radius: float = 2.0, fovy: float = LGM_FOVY, backend: str = "auto",
                     progress: Optional[Progress] = None) -> Tensor:
    """``frames`` views evenly spaced in azimuth on LGM's orbit (kiui elevation, negative = above), white
    background -> ``[F,size,size,3]`` float in [0,1] (CPU)."""
    from .render import render

    prog = progress or (lambda s, i, n: None)
    out = []
    az = [360.0 * k / frames for k in range(frames)]
    batch = 4
    for s in range(0, frames, batch):
        cams = Cameras.orbit([elevation] * len(az[s:s + batch]), az[s:s + batch], radius, fovy, size, size,
                             device=gaussians.device)
        with torch.no_grad():
            out.append(render(gaussians, cams, background=(1.0, 1.0, 1.0), backend=backend).rgb.clamp(0, 1).cpu())
        prog("turntable", min(s + batch, frames), frames)
    return torch.cat(out)


def _atomic(path: Path, write: Callable[[Path], None]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _to_u8(img: Tensor) -> np.ndarray:
    return (img.detach().float().clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


def write_outputs(gaussians: Gaussians, out_dir, name: str, turntable: Optional[Tensor] = None,
                  animation: str = "gif", fps: int = 12) -> dict:
    """Write ``<name>.ply`` (3DGS PLY, LGM layout), ``<name>.splat``, ``<name>_turntable/frame_XXX.png`` and
    ``<name>_turntable.gif`` (or ``.webp``) into ``out_dir``; every file atomically. Returns the paths."""
    from PIL import Image

    from .gaussians import save_ply, save_splat

    if animation not in ("gif", "webp"):
        raise ValueError(f"animation must be 'gif' or 'webp', got {animation!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    g = gaussians.detach().to(device="cpu", dtype=torch.float32)
    paths = {
        "ply": _atomic(out / f"{name}.ply", lambda p: save_ply(g, p)),
        "splat": _atomic(out / f"{name}.splat", lambda p: save_splat(g, p)),
    }
    if turntable is not None:
        fdir = out / f"{name}_turntable"
        frames = [Image.fromarray(_to_u8(f)) for f in turntable]
        paths["frames"] = [_atomic(fdir / f"frame_{i:03d}.png", lambda p, im=im: im.save(p, format="PNG"))
                           for i, im in enumerate(frames)]

        def save_anim(p: Path) -> None:
            kw = {"loop": 0, "duration": int(round(1000 / fps))}
            fmt = "GIF" if animation == "gif" else "WEBP"
            frames[0].save(p, format=fmt, save_all=True, append_images=frames[1:], **kw)

        paths["animation"] = _atomic(out / f"{name}_turntable.{animation}", save_anim)
    return paths
