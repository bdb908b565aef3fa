"""Optimize Input Pose: fit the camera of the input photo to the reconstructed Gaussians, then adjust the
Gaussians' appearance so the input view matches the photo (MVBoost, arXiv 2411.17772, "input view optimisation").

Three stages, each optional (:class:`PoseOptions` toggles):

1. **Pose search.** A coarse grid over elevation / azimuth / radius / fovy around the nominal input camera (an
   orbit about the object centre; LGM world, kiui signs: negative elevation = above), every candidate rendered at
   ``search_resolution`` and scored by *masked LPIPS*: the render (on white) against the input composited on white
   with its mask, plus ``search_silhouette_weight·(1 − IoU(render alpha, mask))`` so that the object's outline
   counts even where LPIPS is indifferent. A candidate is *valid* when that IoU reaches ``min_iou``; if no candidate
   is valid the search range excludes every plausible pose and a ``ValueError`` says so.
2. **Pose refinement.** Adam on an object-centred SE(3) update plus a log-focal factor, through the differentiable
   rasterizer: ``V = [[R, τ + p0 − R p0],[0,1]] · V_start`` with ``R = Exp(ω)`` and ``p0`` the object centre in the
   start camera's frame (rotating about the object rather than the camera centre removes the rotation/translation
   ambiguity valley; ``fixtures/render/README.md`` §9). Loss: MSE of the rgb render against the target, plus
   ``silhouette_weight·MSE(alpha, mask)`` when a mask is known, optionally plus ``pose_lpips_weight·LPIPS``
   (off by default: a VGG backward per step is slow on CPU). A coarse-to-fine pyramid (half resolution first) makes
   the early steps cheap.
3. **Learnable adjustments.** A per-Gaussian colour residual (added, then clamped to [0,1]) and opacity delta
   (added in logit space), optimised on ``LPIPS + MSE`` of the input view. Regularised by (a) MSE between renders at
   ``reg_azimuths`` (offsets from the found azimuth, same elevation/radius/fov) and the same renders of the
   unadjusted Gaussians, and (b) a small L2 penalty on the residuals. Geometry (means, scales, rotations) is
   deliberately *not* adjusted: one view cannot tell a shifted splat from a recoloured one, and moving splats to
   fit one photo distorts every other view; appearance residuals are the part a single view constrains.

Everything is in the LGM world, images ``[H,W,3]`` float in [0,1] with row 0 at the top, masks ``[H,W]`` in [0,1].
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .cameras import LGM_FOVY, LGM_RADIUS, Cameras, orbit_c2w_opengl, opengl_to_opencv
from .gaussians import Gaussians

__all__ = ["PoseOptions", "optimize_input_view", "object_center", "orbit_params", "so3_exp"]

log = logging.getLogger("mvboost")


@dataclass
class PoseOptions:
    """Settings of :func:`optimize_input_view`.

    **Schedules.** The defaults are the ``"fast"`` schedule, sized for the CPU rasterizer (LGM's 65,536 Gaussians,
    256² target: about a minute on 2 CPU cores; see ``docs/benchmarks.md``, "Optimize Input Pose"):

    * search at 64² (``search_resolution``) in batches of 26 candidates, separably (``search_separable``: elevation
      × azimuth first, then radius × fovy at the best);
    * pose refinement: at most 20 Adam steps, the first 60 % at half resolution (``pyramid``), stopped early when the
      loss has stayed within ``pose_rel_tol`` (relative) for ``pose_patience`` steps, then ``lm_iters``
      Levenberg-Marquardt steps at full resolution, which do the final accuracy;
    * adjustment: at most 12 Adam steps with LPIPS on 128² copies (``adjust_lpips_resolution``), stopped after
      ``adjust_patience`` steps without a ``stop_rel_tol`` gain; the regularisation views are visited
      ``reg_views_per_iter`` at a time in turn (an unbiased estimate of the same mean, 5× cheaper); the lowest-loss
      adjustment seen is returned, so the input view never gets worse than after the pose stage.

    ``PoseOptions.preset("reference")`` is the earlier schedule (search at 128² in batches of 8, 100 Adam pose steps
    at full resolution, 100 adjustment steps with every regularisation view each step, no early stopping, the last
    iterate kept, LPIPS at the working resolution): the baseline of the benchmark and for anyone reproducing earlier
    numbers. Both schedules share every other field; keyword overrides apply on top (``PoseOptions.preset("reference", adjust_iters=50)``).

    **Loss when the LPIPS trunk is missing.** The search and the adjustment score images with LPIPS-VGG
    (``lpips_net``), which needs the ImageNet VGG16 trunk file. When that file cannot be found (constructing the
    pretrained LPIPS raises ``FileNotFoundError``) and ``lpips_fallback`` is on (default), the pose stage does not
    fail: it uses ``0.8·L1 + 0.2·(1 − SSIM)`` (SSIM of :func:`mvboost_core.metrics.ssim`) in LPIPS's place, records
    ``report["loss"] = "l1+ssim (VGG16 trunk missing: …)"`` and adds a warning to ``report["warnings"]``; the
    ``lpips_before/after`` entries then hold that loss. With ``lpips_fallback=False`` the ``FileNotFoundError`` is
    raised. ``report["loss"]`` is ``"lpips-vgg"`` with the pretrained trunk, ``"lpips-vgg (random trunk)"`` with
    ``lpips_pretrained=False`` and ``"custom"`` for a caller's ``lpips_fn``.
    """

    # stage toggles
    search: bool = True
    refine_pose: bool = True
    adjust: bool = True
    # working resolution (the longer image side is resized to this)
    resolution: int = 256
    # 1. pose search: offsets around the nominal orbit pose
    search_elevations: Sequence[float] = (-10.0, -5.0, 0.0, 5.0, 10.0)  # degrees, kiui sign
    search_azimuths: Sequence[float] = (-10.0, -5.0, 0.0, 5.0, 10.0)  # degrees
    search_radius_scales: Sequence[float] = (0.9, 1.0, 1.1)
    search_fovy_offsets: Sequence[float] = (0.0,)  # degrees
    search_resolution: int = 64
    search_silhouette_weight: float = 1.0
    search_batch: int = 26
    search_separable: bool = True  # elevation × azimuth first, then radius × fovy at the best (False: full grid)
    min_iou: float = 0.05
    # 2. pose refinement
    pose_iters: int = 20  # at most this many Adam steps (gradients through the rasterizer)
    pose_lr: float = 1.5e-2
    lm_iters: int = 4  # Levenberg-Marquardt polish iterations after Adam (0 = off)
    lm_max_step_deg: float = 0.5  # LM trust region per iteration
    refine_focal: bool = True
    silhouette_weight: float = 0.5
    pose_lpips_weight: float = 0.0
    pyramid: bool = True  # half resolution for the first 60 % of the Adam steps (working resolution >= 256 only)
    pose_patience: int = 5  # stop Adam once the loss stayed within pose_rel_tol for this many steps (0 = never)
    pose_rel_tol: float = 1e-2
    # 3. learnable adjustments
    adjust_iters: int = 12  # at most
    color_lr: float = 1e-2
    opacity_lr: float = 5e-2
    lpips_weight: float = 1.0
    mse_weight: float = 1.0
    reg_views_weight: float = 1.0
    reg_l2_weight: float = 1e-3
    reg_azimuths: Sequence[float] = (45.0, 90.0, 180.0, 270.0, 315.0)
    reg_resolution: int = 128
    adjust_lpips_resolution: int = 128  # LPIPS of the adjustment on images resized to this (0 = working res.)
    reg_views_per_iter: int = 1  # regularisation views rendered per step, in turn (0 = all of them every step)
    adjust_patience: int = 5  # stop after this many steps without improvement; keep the best (0 = run all, keep last)
    stop_rel_tol: float = 1e-3  # relative loss improvement that counts for adjust_patience
    # misc
    center: Sequence[float] | None = None  # object centre (LGM world); None = opacity-weighted mean
    border: str = "pad"  # object touching the image border: "pad" (documented fallback) or "error"
    backend: str = "auto"
    lpips_net: str = "vgg"
    lpips_pretrained: bool = True  # False -> random VGG trunk (tests; nothing is downloaded)
    lpips_download: bool = False  # let the LPIPS loader fetch the ImageNet trunk when it is not found
    lpips_fallback: bool = True  # trunk file missing -> 0.8·L1 + 0.2·(1 − SSIM) with a warning (False: raise)
    extra: dict = field(default_factory=dict)

    #: Field values of the named schedules (everything not listed is shared).
    SCHEDULES = {
        "fast": {},
        "reference": dict(search_resolution=128, search_batch=8, search_separable=False, adjust_lpips_resolution=0, pose_iters=100, pose_lr=1e-2, pyramid=False,
                          pose_patience=0, adjust_iters=100, reg_views_per_iter=0, adjust_patience=0),
    }

    @classmethod
    def preset(cls, schedule: str = "fast", **overrides) -> "PoseOptions":
        """Options of a named schedule (``"fast"`` = the defaults, ``"reference"`` = the earlier, slower one),
        with keyword ``overrides`` of single fields on top."""
        if schedule not in cls.SCHEDULES:
            raise ValueError(f"unknown pose schedule {schedule!r}; choose one of {sorted(cls.SCHEDULES)}")
        return cls(**{**cls.SCHEDULES[schedule], **overrides})


# ----------------------------------------------------------------------------------------------- geometry utils
def so3_exp(omega: Tensor) -> Tensor:
    """Rodrigues: axis-angle ``[3]`` (radians) -> rotation ``[3,3]`` (differentiable, also at 0)."""
    zero = omega.new_zeros(())
    K = torch.stack([
        torch.stack([zero, -omega[2], omega[1]]),
        torch.stack([omega[2], zero, -omega[0]]),
        torch.stack([-omega[1], omega[0], zero]),
    ])
    return torch.linalg.matrix_exp(K)


def object_center(gaussians: Gaussians) -> Tensor:
    """Opacity-weighted mean of the Gaussian centres ``[3]`` (float64)."""
    w = gaussians.opacities.detach().double().clamp_min(0)
    m = gaussians.means.detach().double()
    if float(w.sum()) <= 0:
        return m.mean(0)
    return (m * w[:, None]).sum(0) / w.sum()


def orbit_params(cameras: Cameras, center: Sequence[float] | Tensor = (0.0, 0.0, 0.0)) -> dict:
    """Describe camera 0 as a kiui orbit about ``center``: elevation (kiui sign, negative = above), azimuth,
    radius, fovy (perspective; degrees), plus the Blender/Era3D-sign elevation and the OpenCV ``c2w`` list."""
    c2w = cameras.c2w[0].detach().double().cpu()
    ctr = torch.as_tensor(center, dtype=torch.float64).cpu()
    d = c2w[:3, 3] - ctr
    r = float(d.norm())
    elev = -math.degrees(math.asin(max(-1.0, min(1.0, float(d[1]) / max(r, 1e-12)))))
    azim = math.degrees(math.atan2(float(d[0]), float(d[2]))) % 360.0
    out = {"elevation": elev, "elevation_blender": -elev, "azimuth": azim, "radius": r,
           "c2w": c2w.tolist()}
    if cameras.projection == "perspective":
        out["fovy"] = math.degrees(2 * math.atan(0.5 * cameras.height / float(cameras.fy[0])))
    return out


def _orbit_cameras(elev, azim, radius, fovy, width, height, center, device) -> Cameras:
    c2w_gl = orbit_c2w_opengl(elev, azim, radius, target=[float(c) for c in center])
    f = 0.5 * height / torch.tan(0.5 * torch.deg2rad(torch.as_tensor(fovy, dtype=torch.float64))).reshape(-1)
    f = f.expand(c2w_gl.shape[0])
    return Cameras(opengl_to_opencv(c2w_gl), f, f, width / 2.0, height / 2.0, width, height,
                   "perspective").to(device=device, dtype=torch.float32)


# ------------------------------------------------------------------------------------------------ image helpers
def _prepare_target(image: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, bool]:
    """-> (rgb [H,W,3] on white, mask [H,W], mask_known)."""
    if not isinstance(image, Tensor):
        raise TypeError(f"image must be a torch.Tensor [H,W,3|4], got {type(image).__name__}")
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"image must be [H,W,3] or [H,W,4] (RGBA) float in [0,1], got {list(image.shape)}")
    image = image.float()
    H, W = image.shape[:2]
    if mask is not None:
        if mask.ndim == 3 and mask.shape[0] == 1:
            mask = mask[0]
        if mask.ndim == 3 and mask.shape[-1] == 1:
            mask = mask[..., 0]
        if tuple(mask.shape) != (H, W):
            raise ValueError(
                f"mask size {list(mask.shape)} does not match the image size [{H}, {W}]; "
                "pass the mask that belongs to this image (same height and width)"
            )
        mask = mask.float().clamp(0, 1).to(image.device)
    elif image.shape[-1] == 4:
        mask = image[..., 3].clamp(0, 1)
    known = mask is not None
    rgb = image[..., :3].clamp(0, 1)
    if mask is None:
        # documented fallback: the image is taken to be on white; anything visibly different from white is object
        mask = ((1.0 - rgb).amax(-1) > 0.02).float()
    else:
        # Composite onto white only when the background is not white already: re-compositing an image that is
        # already "colour·alpha + white·(1-alpha)" with a soft mask would darken its edges.
        outside = mask < 0.01
        if bool(outside.any()) and float((1.0 - rgb[outside]).abs().mean()) > 0.02:
            rgb = rgb * mask[..., None] + (1.0 - mask[..., None])
    return rgb, mask, known


def _resize(img: Tensor, h: int, w: int) -> Tensor:
    """[...,H,W,C] -> [...,h,w,C] (antialiased bilinear)."""
    if img.shape[-3] == h and img.shape[-2] == w:
        return img
    lead = img.shape[:-3]
    x = img.reshape(-1, *img.shape[-3:]).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return x.permute(0, 2, 3, 1).reshape(*lead, h, w, img.shape[-1])


def _psnr(a: Tensor, b: Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse <= 0 else -10.0 * math.log10(mse)


def _iou(alpha: Tensor, mask: Tensor) -> Tensor:
    """Soft IoU per view: alpha [V,H,W], mask [H,W] -> [V]."""
    inter = (alpha * mask).flatten(1).sum(1)
    union = (alpha + mask - alpha * mask).flatten(1).sum(1)
    return inter / union.clamp_min(1e-8)


def _l1_ssim(x: Tensor, y: Tensor) -> Tensor:
    """The fallback image distance ``0.8·L1 + 0.2·(1 − SSIM)`` per view: ``[V,H,W,3]`` pairs -> ``[V]``."""
    from .metrics import ssim

    return 0.8 * (x - y).abs().flatten(1).mean(1) + 0.2 * (1.0 - ssim(x, y, reduction="none"))


def _image_loss(opt: "PoseOptions", device, report: dict):
    """LPIPS (``opt.lpips_net``) or, when its pretrained trunk file is missing and ``opt.lpips_fallback`` is on, the
    documented ``0.8·L1 + 0.2·(1 − SSIM)`` with a warning. Returns ``(callable, name for report["loss"])``."""
    name = f"lpips-{opt.lpips_net}" + ("" if opt.lpips_pretrained else " (random trunk)")
    try:
        return _Lpips(opt.lpips_net, opt.lpips_pretrained, device, opt.lpips_download), name
    except FileNotFoundError as e:
        if not (opt.lpips_fallback and opt.lpips_pretrained):
            raise
        where = getattr(e, "filename", None) or str(e)
        report["warnings"].append(
            f"LPIPS-{opt.lpips_net}'s ImageNet trunk is missing ({where}); the pose search and the adjustment use "
            "the fallback loss 0.8·L1 + 0.2·(1 − SSIM) instead (install the trunk for LPIPS; see the README's "
            "pose section)"
        )
        log.warning("[MVBoost] %s", report["warnings"][-1])
        trunk = "VGG16" if opt.lpips_net == "vgg" else opt.lpips_net
        return _l1_ssim, f"l1+ssim ({trunk} trunk missing: {where})"


class _Lpips:
    """LPIPS on ``[V,H,W,3]`` images in [0,1] (lazy; uses ``mvboost_core.metrics.LPIPSLoss``)."""

    def __init__(self, net: str, pretrained: bool, device, download: bool = False):
        from .metrics import LPIPSLoss

        self.module = LPIPSLoss(net=net, pnet_rand=not pretrained, download=download).to(device).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        """-> per-view distances ``[V]``."""
        return self.module(x, y).reshape(x.shape[0], -1).mean(1)


# ------------------------------------------------------------------------------------------------- main entry
def optimize_input_view(
    gaussians: Gaussians,
    image: Tensor,
    mask: Tensor | None = None,
    camera_init: Cameras | None = None,
    options: PoseOptions | None = None,
    *,
    progress: Callable[[str, int, int], None] | None = None,
    check_interrupt: Callable[[], None] | None = None,
    lpips_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    **overrides,
) -> tuple[Gaussians, Cameras, dict]:
    """Fit the input view's camera and adjust the Gaussians' appearance to the input image.

    Args:
        gaussians: the object's Gaussians (LGM world). Not modified.
        image: ``[H,W,3]`` (on white, or any background if ``mask`` is given: an image whose background (mask <
            0.01) is not white is composited onto white with the mask) or ``[H,W,4]`` RGBA, float in [0,1].
        mask: ``[H,W]`` object mask in [0,1]; default: the alpha channel of an RGBA image, else "not white".
        camera_init: one perspective camera (OpenCV ``c2w``) at the nominal input view; default: LGM's front view
            (elevation 0, azimuth 0, radius 1.5, fovy 49.1°) at the image's size.
        options: :class:`PoseOptions`; keyword ``overrides`` replace single fields.
        progress: ``progress(stage, step, total)`` called after every search batch / iteration.
        check_interrupt: called once per iteration; raise from it to abort (nothing is returned half-done).
        lpips_fn: optional LPIPS callable ``(x [V,H,W,3], y [V,H,W,3]) -> [V]``; default ``metrics.LPIPSLoss``.

    Returns:
        ``(gaussians_out, camera, report)``: adjusted Gaussians (a copy; equal to the input if ``adjust`` is off),
        the found camera at the original image size, and a report dict with ``lpips_before/after``,
        ``psnr_before/after`` (input view, nominal pose + raw Gaussians vs found pose + adjusted Gaussians),
        ``pose`` (:func:`orbit_params`), ``other_views`` (PSNR / max abs change of renders at ``reg_azimuths``),
        per-stage numbers and ``warnings``.

    Raises:
        ValueError: mask/image size mismatch, empty mask, no Gaussian visible at the input view, a search range
            with no valid pose, object touching the border with ``border="error"``.
    """
    from .render import render

    t_start = time.perf_counter()
    opt = options or PoseOptions()
    if overrides:
        unknown = [k for k in overrides if not hasattr(opt, k)]
        if unknown:
            raise TypeError(f"unknown PoseOptions fields: {unknown}")
        opt = PoseOptions(**{**opt.__dict__, **overrides})
    gaussians = gaussians.detach()
    if len(gaussians) == 0:
        raise ValueError("optimize_input_view got 0 Gaussians: nothing to fit")
    device = gaussians.device
    tick = check_interrupt or (lambda: None)
    prog = progress or (lambda stage, i, n: None)
    report: dict = {"warnings": [], "stages": {}}

    rgb_full, mask_full, mask_known = _prepare_target(image.to(device), mask)
    H0, W0 = rgb_full.shape[:2]
    if float(mask_full.max()) < 0.5:
        raise ValueError("the input mask is empty (no object pixel): give the object's mask or an RGBA image")

    # ---- nominal camera at the original size
    if camera_init is None:
        cam0 = _orbit_cameras([0.0], [0.0], LGM_RADIUS, LGM_FOVY, W0, H0, (0, 0, 0), device)
    else:
        if len(camera_init) != 1:
            raise ValueError(f"camera_init must hold exactly one camera, got {len(camera_init)}")
        if camera_init.projection != "perspective":
            raise ValueError("camera_init must be a perspective camera (the input photo's camera)")
        cam0 = camera_init.to(device=device, dtype=torch.float32)
        if (cam0.width, cam0.height) != (W0, H0):
            cam0 = cam0.resized(W0, H0)

    # ---- object touching the border -> pad (documented fallback) or error
    pad = 0
    border_px = torch.cat([mask_full[0], mask_full[-1], mask_full[:, 0], mask_full[:, -1]])
    if float(border_px.max()) > 0.5:
        if opt.border == "error":
            raise ValueError(
                "the object touches the image border, so its outline is unknown; crop the photo with a margin "
                "(Era3D's preprocessing does this) or use border='pad'"
            )
        pad = int(round(0.125 * max(H0, W0)))
        rgb_full = F.pad(rgb_full.permute(2, 0, 1), (pad, pad, pad, pad), value=1.0).permute(1, 2, 0)
        mask_full = F.pad(mask_full, (pad, pad, pad, pad), value=0.0)
        cam0 = Cameras(cam0.c2w, cam0.fx, cam0.fy, cam0.cx + pad, cam0.cy + pad, W0 + 2 * pad, H0 + 2 * pad,
                       cam0.projection)
        report["warnings"].append(
            f"the object touches the image border; padded the image by {pad} px of background on every side so the "
            "render may extend beyond the photo (the silhouette there is unknown)"
        )
        log.warning("[MVBoost] %s", report["warnings"][-1])

    Hp, Wp = rgb_full.shape[:2]
    s = opt.resolution / max(Hp, Wp)
    Hw, Ww = max(8, round(Hp * s)), max(8, round(Wp * s))
    target = _resize(rgb_full, Hw, Ww)
    tmask = _resize(mask_full[..., None], Hw, Ww)[..., 0]
    cam_w = cam0.resized(Ww, Hw)

    center = torch.as_tensor(opt.center, dtype=torch.float64) if opt.center is not None else object_center(gaussians)
    report["center"] = center.tolist()

    lp = lpips_fn
    need_lpips = opt.search or opt.adjust or opt.pose_lpips_weight > 0
    report["loss"] = "custom" if lp is not None else "none (no stage uses LPIPS)"
    if lp is None and need_lpips:
        lp, report["loss"] = _image_loss(opt, device, report)

    def rend(g: Gaussians, cams: Cameras):
        return render(g, cams, background=(1.0, 1.0, 1.0), backend=opt.backend)

    # ---- visibility at the nominal view
    with torch.no_grad():
        out0 = rend(gaussians, cam_w)
    if float(out0.alpha.max()) < 1.0 / 255.0:
        raise ValueError(
            "no Gaussian is visible at the input view (rendered alpha is 0 everywhere): the Gaussians are outside "
            "the camera's view or behind it; check that they are in the LGM world (objects inside [-1,1]^3) and "
            "that camera_init looks at them"
        )
    rgb_before = out0.rgb[0].clamp(0, 1)
    report["psnr_before"] = _psnr(rgb_before, target)
    if lp is not None:
        with torch.no_grad():
            report["lpips_before"] = float(lp(rgb_before[None], target[None])[0])
    report["nominal_pose"] = orbit_params(cam0, center)

    cam_best = cam_w
    seconds = report["seconds"] = {"setup": time.perf_counter() - t_start}
    # ---------------------------------------------------------------- 1. pose search
    if opt.search:
        t0 = time.perf_counter()
        cam_best = _pose_search(gaussians, target, tmask, cam_w, center, opt, rend, lp, prog, tick, report)
        seconds["search"] = time.perf_counter() - t0

    # ---------------------------------------------------------------- 2. pose refinement
    if opt.refine_pose and (opt.pose_iters > 0 or opt.lm_iters > 0):
        t0 = time.perf_counter()
        cam_best = _refine_pose(gaussians, target, tmask if mask_known else None, cam_best, center, opt, rend,
                                lp, prog, tick, report)
        seconds["refine_pose"] = time.perf_counter() - t0

    # ---------------------------------------------------------------- 3. learnable adjustments
    g_out = gaussians.clone()
    if opt.adjust and opt.adjust_iters > 0:
        t0 = time.perf_counter()
        g_out = _adjust(gaussians, target, cam_best, center, opt, rend, lp, prog, tick, report)
        seconds["adjust"] = time.perf_counter() - t0
    else:
        report["other_views"] = {"psnr_min": float("inf"), "max_abs": 0.0, "per_view_psnr": []}

    with torch.no_grad():
        final = rend(g_out, cam_best).rgb[0].clamp(0, 1)
    report["psnr_after"] = _psnr(final, target)
    if lp is not None:
        with torch.no_grad():
            report["lpips_after"] = float(lp(final[None], target[None])[0])

    # camera back at the original image size (drop the border padding)
    cam_out = cam_best.resized(Wp, Hp)
    if pad:
        cam_out = Cameras(cam_out.c2w, cam_out.fx, cam_out.fy, cam_out.cx - pad, cam_out.cy - pad, W0, H0,
                          cam_out.projection)
    cam_out = cam_out.to(dtype=torch.float32)
    cam_out = Cameras(cam_out.c2w.detach(), cam_out.fx.detach(), cam_out.fy.detach(), cam_out.cx.detach(),
                      cam_out.cy.detach(), cam_out.width, cam_out.height, cam_out.projection)
    report["pose"] = orbit_params(cam_out, center)
    report["renders"] = {"before": rgb_before.detach(), "after": final.detach(), "target": target.detach()}
    seconds["total"] = time.perf_counter() - t_start
    return g_out.detach(), cam_out, report


# ------------------------------------------------------------------------------------------------- stage 1
def _pose_search(g, target, tmask, cam_w, center, opt, rend, lp, prog, tick, report) -> Cameras:
    """Stage 1. ``search_separable=False``: every (elevation, azimuth, radius scale, fovy offset) of the grid.
    ``True`` (fast schedule): first the elevation × azimuth grid at the radius scale nearest 1 and the fovy offset
    nearest 0, then the radius scales × fovy offsets at the best of those (25 + 2 instead of 75 renders for the
    default grid). The nominal camera is always candidate 0."""
    nominal = orbit_params(cam_w, center)
    Hs = max(8, round(cam_w.height * opt.search_resolution / max(cam_w.height, cam_w.width)))
    Ws = max(8, round(cam_w.width * opt.search_resolution / max(cam_w.height, cam_w.width)))
    full = [(de, da, sr, df) for de in opt.search_elevations for da in opt.search_azimuths
            for sr in opt.search_radius_scales for df in opt.search_fovy_offsets]
    e = torch.tensor([nominal["elevation"] + c[0] for c in full], dtype=torch.float64)
    r = torch.tensor([nominal["radius"] * c[2] for c in full], dtype=torch.float64)
    fv = torch.tensor([nominal["fovy"] + c[3] for c in full], dtype=torch.float64)
    if (fv <= 1.0).any() or (fv >= 170.0).any() or (r <= 0).any():
        raise ValueError("the pose search range gives a fovy outside (1°, 170°) or a non-positive radius; "
                         "narrow search_fovy_offsets / search_radius_scales")
    tgt = _resize(target, Hs, Ws)
    msk = _resize(tmask[..., None], Hs, Ws)[..., 0]
    sr0 = min(opt.search_radius_scales, key=lambda x: abs(x - 1.0))
    df0 = min(opt.search_fovy_offsets, key=abs)
    if opt.search_separable:
        phase_a = [(de, da, sr0, df0) for de in opt.search_elevations for da in opt.search_azimuths]
        n_b = len(opt.search_radius_scales) * len(opt.search_fovy_offsets) - 1
    else:
        phase_a, n_b = full, 0
    n_total = 1 + len(phase_a) + n_b
    cands: list = [None]  # None = the nominal camera (keeps any roll / off-centre aim of camera_init)
    cams_all: list = [cam_w]
    scores, ious = [], []

    def score(new: list) -> None:
        grid = _orbit_cameras([nominal["elevation"] + c[0] for c in new], [nominal["azimuth"] + c[1] for c in new],
                              [nominal["radius"] * c[2] for c in new], [nominal["fovy"] + c[3] for c in new],
                              cam_w.width, cam_w.height, center, g.device)
        todo = grid if scores else Cameras.cat([cam_w, grid])
        cands.extend(new)
        cams_all.append(grid)
        small = todo.resized(Ws, Hs)
        for start in range(0, len(small), opt.search_batch):
            tick()
            cams = small[start:start + opt.search_batch]
            with torch.no_grad():
                out = rend(g, cams)
                rgb = out.rgb.clamp(0, 1)
                iou = _iou(out.alpha[..., 0], msk)
                d = lp(rgb, tgt.expand_as(rgb)) if lp is not None else ((rgb - tgt) ** 2).flatten(1).mean(1)
            scores.extend((d + opt.search_silhouette_weight * (1.0 - iou)).tolist())
            ious.extend(iou.tolist())
            prog("search", len(scores), n_total)

    def best_valid() -> int:
        ok = [k for k in range(len(scores)) if ious[k] >= opt.min_iou]
        return min(ok, key=lambda k: scores[k]) if ok else -1

    score(phase_a)
    if n_b > 0:
        k = best_valid()
        de, da = (0.0, 0.0) if k <= 0 else cands[k][:2]
        score([(de, da, sr, df) for sr in opt.search_radius_scales for df in opt.search_fovy_offsets
               if (sr, df) != (sr0, df0)])
    best = best_valid()
    n = len(scores)
    if best < 0:
        raise ValueError(
            f"the pose search range excludes every valid pose: at none of the {n} candidate cameras does the render "
            f"overlap the input mask (best IoU {max(ious):.3f} < min_iou {opt.min_iou}); widen "
            "search_elevations / search_azimuths / search_radius_scales or give a camera_init near the input view"
        )
    report["stages"]["search"] = {
        "candidates": n, "valid": sum(1 for x in ious if x >= opt.min_iou), "best_index": best,
        "best_score": scores[best], "nominal_score": scores[0], "best_iou": ious[best],
        "best_offset": None if best == 0 else dict(zip(("elevation", "azimuth", "radius_scale", "fovy"),
                                                       cands[best])),
    }
    return Cameras.cat(cams_all)[best]


# ------------------------------------------------------------------------------------------------- stage 2
class _Plateau:
    """Early stopping on a converged loss: :meth:`update` returns True once ``patience`` consecutive values failed to
    improve the best one by more than ``rel_tol`` (relative), but not before ``warmup`` values were seen (Adam's
    first steps may raise the loss). ``flat=True``: stop once the last ``patience + 1`` values all lie within
    ``rel_tol`` (relative) of their minimum, i.e. the loss has flattened (for a stage that keeps its last iterate).
    ``patience <= 0`` never stops."""

    def __init__(self, patience: int, rel_tol: float, warmup: int = 0, flat: bool = False) -> None:
        self.patience, self.rel_tol, self.warmup, self.flat = int(patience), float(rel_tol), int(warmup), flat
        self.best, self.since, self.count, self.window = float("inf"), 0, 0, []

    def update(self, loss: float) -> bool:
        self.count += 1
        if self.flat:  # "flattened": the last patience+1 values lie within rel_tol of their minimum
            self.window = (self.window + [loss])[-(self.patience + 1):]
            lo, hi = min(self.window), max(self.window)
            return (self.patience > 0 and len(self.window) > self.patience and self.count >= self.warmup
                    and hi - lo <= self.rel_tol * abs(lo))
        if loss < self.best - self.rel_tol * abs(self.best) or self.best == float("inf"):
            self.best, self.since = loss, 0
        else:
            self.since += 1
        return self.patience > 0 and self.since >= self.patience and self.count >= self.warmup


def _pose_to_camera(theta: Tensor, V0: Tensor, p0: Tensor, cam_start: Cameras) -> Cameras:
    """theta = (ω[3], τ[3], log focal scale[1]) float64 -> Cameras (differentiable).

    ``V = [[Exp(ω), τ + p0 − Exp(ω) p0],[0,1]] · V0``: a rotation about the object centre ``p0`` (start-camera frame)
    followed by a translation.
    """
    omega, tau, logf = theta[0:3], theta[3:6], theta[6]
    R = so3_exp(omega)
    bottom = torch.zeros(1, 4, dtype=theta.dtype, device=theta.device)
    bottom[0, 3] = 1.0
    V = torch.cat([torch.cat([R, (tau + p0 - R @ p0)[:, None]], 1), bottom], 0) @ V0
    Rv, tv = V[:3, :3], V[:3, 3:]
    c2w = torch.cat([torch.cat([Rv.T, -Rv.T @ tv], 1), bottom], 0)
    k = torch.exp(logf)
    return Cameras(c2w[None].float(), (cam_start.fx.double() * k).float(), (cam_start.fy.double() * k).float(),
                   cam_start.cx, cam_start.cy, cam_start.width, cam_start.height, "perspective")


def _batch_cameras(thetas: Tensor, V0, p0, cam_start: Cameras) -> Cameras:
    return Cameras.cat([_pose_to_camera(t, V0, p0, cam_start) for t in thetas])


def _refine_pose(g, target, tmask, cam_start, center, opt, rend, lp, prog, tick, report) -> Cameras:
    """Stage 2: (a) Adam with cosine decay on ``θ = (ω, τ, log f)`` (see :func:`_pose_to_camera`), gradients from
    the rasterizer's backward, loss = MSE(rgb) [+ silhouette MSE] [+ LPIPS]; optionally coarse-to-fine (the first
    60 % of the steps at half resolution). (b) ``lm_iters`` Levenberg-Marquardt iterations on the least-squares part,
    with a forward-difference Jacobian from one batched (1+7)-view render per iteration and a trust region of
    ``lm_max_step_deg``: once Adam is in the basin, Gauss-Newton converges quadratically along the
    rotation/translation valley where first-order steps crawl. (From far away GN's model is poor, which is why it
    only polishes.) The pose with the lowest cost seen is returned; the pose never gets worse than the start."""
    dev = g.device
    V0 = cam_start.viewmats()[0].detach().double()
    c_h = torch.cat([center.to(dev, torch.float64), torch.ones(1, dtype=torch.float64, device=dev)])
    p0 = (V0 @ c_h)[:3]
    npar = 7 if opt.refine_focal else 6
    sil_w = opt.silhouette_weight if tmask is not None else 0.0
    Hc, Wc = cam_start.height // 2, cam_start.width // 2
    use_pyr = opt.pyramid and min(cam_start.height, cam_start.width) >= 256  # coarse level >= 128 px
    tgt_c = _resize(target, Hc, Wc) if use_pyr else target
    msk_c = None if (tmask is None or not use_pyr) else _resize(tmask[..., None], Hc, Wc)[..., 0]

    def residuals(out, tgt, msk) -> Tensor:
        """[B, M] residual vectors (rgb, then sqrt(w)-weighted alpha - mask)."""
        r = (out.rgb - tgt).flatten(1)
        if sil_w > 0:
            r = torch.cat([r, math.sqrt(sil_w) * (out.alpha[..., 0] - msk).flatten(1)], 1)
        return r.double()

    total = opt.pose_iters + opt.lm_iters
    history: list[float] = []
    adam_done = 0
    theta = torch.zeros(7, dtype=torch.float64, device=dev)
    # ---- (a) Adam through the rasterizer
    n = opt.pose_iters
    if n > 0:
        n_coarse = int(0.6 * n) if use_pyr else 0
        param = torch.zeros(npar, dtype=torch.float64, device=dev, requires_grad=True)
        adam = torch.optim.Adam([param], lr=opt.pose_lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(adam, T_max=n, eta_min=opt.pose_lr * 0.01)
        level = None
        for it in range(n):
            tick()
            coarse = it < n_coarse
            if coarse != level:  # a new pyramid level: its losses are not comparable with the previous level's;
                # stopping is considered from half of the level's steps on (cosine decay well under way)
                n_level = n_coarse if coarse else n - it
                plateau, level = _Plateau(opt.pose_patience, opt.pose_rel_tol, n_level // 2, flat=True), coarse
            tgt, msk = (tgt_c, msk_c) if coarse else (target, tmask)
            cam = _pose_to_camera(torch.cat([param, param.new_zeros(7 - npar)]), V0, p0, cam_start)
            if coarse:
                cam = cam.resized(Wc, Hc)
            out = rend(g, cam)
            loss = (residuals(out, tgt, msk)[0] ** 2).mean()
            if opt.pose_lpips_weight > 0 and lp is not None:
                loss = loss + opt.pose_lpips_weight * lp(out.rgb.clamp(0, 1), tgt[None])[0]
            adam.zero_grad(set_to_none=True)
            loss.backward()
            adam.step()
            sched.step()
            history.append(float(loss.detach()))
            adam_done = it + 1
            prog("pose", it + 1, total)
            if plateau.update(history[-1]):
                if coarse:  # converged at half resolution: go on at full resolution
                    n_coarse = it + 1
                    continue
                break
        theta = torch.cat([param.detach(), param.new_zeros(7 - npar)])

    # ---- (b) Levenberg-Marquardt polish at full resolution
    lm_done = 0
    if opt.lm_iters > 0:
        steps = torch.full((npar,), 1e-4, dtype=torch.float64, device=dev)
        lam = 1e-2
        theta_acc, cost_acc, normal_eq = theta.clone(), None, None
        trial = theta.clone()
        lim_r = math.radians(opt.lm_max_step_deg)
        lim_t = lim_r * max(float(p0.norm()), 1e-3)
        for it in range(opt.lm_iters):
            tick()
            thetas = trial[None].repeat(1 + npar, 1)
            thetas[1:, :npar] += torch.diag(steps)
            with torch.no_grad():
                r = residuals(rend(g, _batch_cameras(thetas, V0, p0, cam_start)), target, tmask)
            c = float((r[0] ** 2).mean())
            if cost_acc is None or c < cost_acc:
                theta_acc, cost_acc = trial, c
                J = ((r[1:] - r[0]) / steps[:, None]).T  # [M, npar] forward differences
                normal_eq = (J.T @ J, J.T @ r[0])
                lam = max(lam / 3.0, 1e-7)
            else:
                lam = min(lam * 10.0, 1e8)  # rejected: damp more, keep the accepted pose and its Jacobian
            JtJ, Jtr = normal_eq
            A = JtJ + lam * torch.diag(torch.diag(JtJ).clamp_min(1e-12))
            delta = -torch.linalg.solve(A, Jtr)
            sc = min(1.0, lim_r / max(float(delta[:3].norm()), 1e-30), lim_t / max(float(delta[3:6].norm()), 1e-30))
            trial = theta_acc.clone()
            trial[:npar] += delta * sc
            history.append(cost_acc)
            lm_done = it + 1
            prog("pose", adam_done + it + 1, adam_done + opt.lm_iters)
            if float(delta[:6].abs().max()) < 1e-8:
                break
        theta = theta_acc
    cam = _pose_to_camera(theta, V0, p0, cam_start)
    report["stages"]["refine_pose"] = {
        "adam_iters": adam_done, "lm_iters": lm_done, "loss_first": history[0] if history else None,
        "loss_last": history[-1] if history else None,
        "rotation_deg": math.degrees(float(theta[:3].norm())), "translation": float(theta[3:6].norm()),
        "focal_scale": float(torch.exp(theta[6])),
    }
    return Cameras(cam.c2w.detach(), cam.fx.detach(), cam.fy.detach(), cam.cx, cam.cy, cam.width, cam.height,
                   cam.projection)


# ------------------------------------------------------------------------------------------------- stage 3
def _adjust(g, target, cam, center, opt, rend, lp, prog, tick, report) -> Gaussians:
    dev = g.device
    pose = orbit_params(cam, center)
    reg_cams = None
    if opt.reg_views_weight > 0 and len(opt.reg_azimuths) > 0:
        az = [pose["azimuth"] + a for a in opt.reg_azimuths]
        reg_cams = _orbit_cameras([pose["elevation"]] * len(az), az, pose["radius"], pose.get("fovy", LGM_FOVY),
                                  opt.reg_resolution, opt.reg_resolution, center, dev)
        with torch.no_grad():
            reg_ref = rend(g, reg_cams).rgb
    dcol = torch.zeros_like(g.colors, requires_grad=True)
    dopa = torch.zeros_like(g.opacities, requires_grad=True)
    base_logit = torch.logit(g.opacities.clamp(1e-6, 1 - 1e-6))
    adam = torch.optim.Adam([{"params": [dcol], "lr": opt.color_lr}, {"params": [dopa], "lr": opt.opacity_lr}])

    def adjusted() -> Gaussians:
        return g.replace(colors=(g.colors + dcol).clamp(0, 1), opacities=torch.sigmoid(base_logit + dopa))

    n = opt.adjust_iters
    H, W = target.shape[:2]
    sl = 1.0 if opt.adjust_lpips_resolution <= 0 else min(1.0, opt.adjust_lpips_resolution / max(H, W))
    Hl, Wl = max(16, round(H * sl)), max(16, round(W * sl))
    tgt_l = _resize(target[None], Hl, Wl)
    n_reg = 0 if reg_cams is None else len(reg_cams)
    per_it = n_reg if opt.reg_views_per_iter <= 0 else min(n_reg, int(opt.reg_views_per_iter))
    keep_best = opt.adjust_patience > 0
    plateau = _Plateau(opt.adjust_patience, opt.stop_rel_tol)
    best = (float("inf"), None, None)
    losses = []
    for it in range(n):
        tick()
        ga = adjusted()
        rgb = rend(ga, cam).rgb[0]
        loss = opt.mse_weight * ((rgb - target) ** 2).mean()
        if opt.lpips_weight > 0 and lp is not None:
            loss = loss + opt.lpips_weight * lp(_resize(rgb.clamp(0, 1)[None], Hl, Wl), tgt_l)[0]
        if per_it > 0:
            # views it·per_it … (it+1)·per_it − 1 (mod n_reg): every view equally often, the same expected loss
            idx = [(it * per_it + k) % n_reg for k in range(per_it)]
            sel = reg_cams if per_it == n_reg else Cameras.cat([reg_cams[i] for i in idx])
            ref = reg_ref if per_it == n_reg else reg_ref[idx]
            loss = loss + opt.reg_views_weight * ((rend(ga, sel).rgb - ref) ** 2).mean()
        loss = loss + opt.reg_l2_weight * ((dcol ** 2).mean() + (dopa ** 2).mean())
        losses.append(float(loss.detach()))
        if keep_best and losses[-1] < best[0]:
            best = (losses[-1], dcol.detach().clone(), dopa.detach().clone())
        if plateau.update(losses[-1]):
            prog("adjust", n, n)
            break
        adam.zero_grad(set_to_none=True)
        loss.backward()
        adam.step()
        prog("adjust", it + 1, n)
    if keep_best and best[1] is not None:
        with torch.no_grad():
            dcol.copy_(best[1])
            dopa.copy_(best[2])
    g_out = adjusted().detach()
    other = {"per_view_psnr": [], "psnr_min": float("inf"), "max_abs": 0.0, "azimuths": []}
    if reg_cams is not None:
        with torch.no_grad():
            after = rend(g_out, reg_cams).rgb
        other["azimuths"] = [pose["azimuth"] + a for a in opt.reg_azimuths]
        other["per_view_psnr"] = [_psnr(after[i], reg_ref[i]) for i in range(len(reg_cams))]
        other["psnr_min"] = min(other["per_view_psnr"])
        other["max_abs"] = float((after - reg_ref).abs().max())
    report["other_views"] = other
    report["stages"]["adjust"] = {"iters": len(losses), "loss_first": losses[0], "loss_last": losses[-1],
                                  "loss_kept": best[0] if keep_best else losses[-1],
                                  "color_residual_max": float(dcol.detach().abs().max()),
                                  "opacity_delta_max": float(dopa.detach().abs().max())}
    return g_out
