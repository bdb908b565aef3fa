"""Refine Views: render Gaussians at Era3D's six orthographic cameras and refine the renders with Era3D (SDEdit).

MVBoost (arXiv 2411.17772) builds its boosting dataset by rendering the reconstruction at the multi-view model's
cameras and re-running the diffusion model from a partly noised version of those renders (strength 0.95), with the
original photo as the condition. Facts: ``notes/era3d.md`` §4.1 (where to inject), §4.4 (what the renders must
match), §1.8 (normal-map encoding).

Rendering (:func:`render_era3d_views`)
--------------------------------------
* **Cameras**: :meth:`Cameras.era3d` in the LGM world: orthographic, elevation 0, azimuths 0/45/90/180/270/315
  (front, front_right, right, back, left, front_left), image up = world up, all looking at the object's centre.
* **Centring in 3D**: the look-at point is the centre of the bounding box of the Gaussians that matter (opacity ≥
  ``min_opacity``, the 0.5-99.5 % quantiles of their centres per axis, robust to stray splats). The Gaussians are
  not moved per view and nothing is re-centred in 2D, so a 3D point lies on the same image row in all six views
  (the row-wise attention relies on it).
* **One shared scale**: the front view is rendered once at a provisional scale, its alpha bounding box (alpha ≥
  ``bbox_alpha``) measured, and the common ``ortho_scale`` chosen so that box's longest side is ``crop_size`` px of
  the output (420 of 512, like the condition image's crop). All six views use it.
* **Colours**: white background, clamped to [0,1].
* **Normals** (choice: each Gaussian's *shortest axis*, not rendered depth): a flat splat's normal is the
  rotation's column with the smallest scale; it is flipped to face the camera of the view being rendered, rotated
  into the **front camera's frame** (x right, y up, z towards the front camera — OpenCV frame with y, z negated),
  splatted with the rasterizer's alpha weights (background 0), normalised per pixel, encoded ``n·0.5+0.5`` and
  composited over white with the rendered alpha, as Era3D's training normals are (``dreamdata.py`` 177-204).
  Depth-derived normals need finite differences of a blurry splat depth map and are noisy at silhouettes; LGM's
  splats are thin discs on the surface, so their shortest axis is a clean surface normal.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Optional

import torch
from torch import Tensor

from .cameras import ERA3D_VIEWS, Cameras
from .gaussians import Gaussians
from .multiview import MultiView, MultiViewResult

__all__ = ["render_era3d_views", "refine_views", "gaussian_normals", "gaussians_center"]


def gaussians_center(gaussians: Gaussians, min_opacity: float = 0.05) -> Tensor:
    """Centre ``[3]`` (float64) of the robust bounding box of the Gaussians with opacity ≥ ``min_opacity``."""
    keep = gaussians.opacities.detach() >= min_opacity
    m = gaussians.means.detach().double()[keep] if bool(keep.any()) else gaussians.means.detach().double()
    if m.shape[0] >= 200:
        lo, hi = torch.quantile(m, 0.005, dim=0), torch.quantile(m, 0.995, dim=0)
    else:
        lo, hi = m.min(0).values, m.max(0).values
    return (lo + hi) / 2


def gaussian_normals(gaussians: Gaussians) -> Tensor:
    """Each Gaussian's shortest axis ``[N,3]`` (unit, world frame, sign arbitrary)."""
    from .render.projection import quat_to_rotmat

    R = quat_to_rotmat(gaussians.quats.detach())  # [N,3,3], columns = local axes
    k = gaussians.scales.detach().argmin(dim=1)  # [N]
    return R[torch.arange(R.shape[0], device=R.device), :, k]


def render_era3d_views(
    gaussians: Gaussians,
    size: int = 512,
    crop_size: float = 420.0,
    *,
    min_opacity: float = 0.05,
    bbox_alpha: float = 0.1,
    normals: bool = True,
    backend: str = "auto",
) -> dict:
    """Render colour (and normal) images at Era3D's six orthographic cameras, framed like Era3D's outputs.

    Args:
        gaussians: the object (LGM world).
        size: output side (Era3D: 512; the pipeline's ``resolution``).
        crop_size: longest side of the front view's object box in output pixels (Era3D: 420 at 512).
        min_opacity: Gaussians below it are ignored when finding the centre.
        bbox_alpha: alpha threshold of the front view's object box.
        normals: also render normal maps.
        backend: renderer backend.

    Returns:
        dict with ``colors [6,size,size,3]``, ``normals [6,size,size,3]`` (or None), ``alpha [6,size,size]``,
        ``cameras`` (:class:`Cameras`, LGM world, Era3D order), ``ortho_scale`` (world units across the image),
        ``center`` ``[3]``.
    """
    from .render import rasterize, render

    if not 0 < crop_size <= size:
        raise ValueError(f"crop_size must be in (0, size={size}], got {crop_size}")
    g = gaussians.detach()
    g.validate("refine: Gaussians")
    dev, dt = g.device, g.dtype
    center = gaussians_center(g, min_opacity)
    ctr = [float(c) for c in center]
    keep = g.opacities >= min_opacity
    m = g.means.double()[keep] if bool(keep.any()) else g.means.double()
    extent = float((m - center.to(m.device)).abs().max()) * 2.0 + 1e-3
    probe_scale = 1.6 * extent
    probe = Cameras.era3d(size=size, ortho_scale=probe_scale, center=ctr, device=dev, dtype=dt)[0]
    with torch.no_grad():
        a = render(g, probe, backend=backend).alpha[0, ..., 0]
    ys, xs = torch.nonzero(a >= bbox_alpha, as_tuple=True)
    if ys.numel() == 0:
        raise ValueError(
            "refine: the Gaussians are invisible from Era3D's front camera (no pixel reaches alpha "
            f"{bbox_alpha}); check that they are an object in the LGM world"
        )
    longest = float(max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1))
    ortho_scale = probe_scale * longest / float(crop_size)
    cams = Cameras.era3d(size=size, ortho_scale=ortho_scale, center=ctr, device=dev, dtype=dt)
    with torch.no_grad():
        out = render(g, cams, background=(1.0, 1.0, 1.0), backend=backend)
    colors = out.rgb.clamp(0, 1)
    alpha = out.alpha[..., 0].clamp(0, 1)
    nrm = None
    if normals:
        n_world = gaussian_normals(g).to(dt)  # [N,3]
        viewmats, Ks = cams.viewmats(), cams.Ks()
        R_front = viewmats[0, :3, :3]  # world -> front camera (OpenCV)
        gl = torch.tensor([1.0, -1.0, -1.0], dtype=dt, device=dev)
        maps = []
        for v in range(len(cams)):
            to_cam = -cams.c2w[v, :3, 2]  # direction from the object towards camera v (ortho: minus its z axis)
            sign = torch.where((n_world @ to_cam) < 0, -1.0, 1.0).to(dt)
            n_front = (n_world * sign[:, None]) @ R_front.T * gl  # [N,3] in the front camera's GL frame
            with torch.no_grad():
                o = rasterize(g.means, g.quats, g.scales, g.opacities, n_front, viewmats[v:v + 1], Ks[v:v + 1],
                              size, size, "orthographic", background=(0.0, 0.0, 0.0), backend=backend)
            s = o.rgb[0]
            n_pix = s / s.norm(dim=-1, keepdim=True).clamp_min(1e-8)
            av = o.alpha[0]
            maps.append(((n_pix * 0.5 + 0.5) * av + (1.0 - av)).clamp(0, 1))
        nrm = torch.stack(maps)
    return {"colors": colors, "normals": nrm, "alpha": alpha, "cameras": cams, "ortho_scale": ortho_scale,
            "center": center}


def _condition_image(era3d, input_image: Tensor, mask: Optional[Tensor], crop_size: float) -> Tensor:
    res = era3d.resolution
    img = torch.as_tensor(input_image)
    if img.ndim == 4 and img.shape[0] == 1:
        img = img[0]
    if mask is None and img.ndim == 3 and tuple(img.shape) == (res, res, 3):
        return img.float()  # already preprocessed (e.g. MultiViewResult.input_image)
    return era3d.preprocess(img, alpha=mask, crop_size=crop_size)


def refine_views(
    era3d,
    gaussians: Gaussians,
    input_image: Tensor,
    strength: float = 0.95,
    steps: int = 40,
    guidance: float = 3.0,
    seed: int = 0,
    *,
    mask: Optional[Tensor] = None,
    crop_size: float = 420.0,
    eta: float = 1.0,
    use_normals: bool = True,
    callback: Optional[Callable] = None,
    backend: str = "auto",
) -> MultiViewResult:
    """SDEdit-refine the Gaussians' renders at Era3D's six views with the Era3D pipeline (MVBoost, strength 0.95).

    Args:
        era3d: an :class:`~mvboost_core.era3d.Era3DPipeline` (``load_era3d``).
        gaussians: the object (LGM world).
        input_image: the original photo: either the preprocessed condition image ``[R,R,3]`` (``R`` =
            ``era3d.resolution``; e.g. ``MultiViewResult.input_image``) used as is, or any RGBA / RGB image (+
            ``mask`` = object alpha, 1 = object) which is preprocessed with Era3D's crop rule.
        strength: fraction of the 40-step schedule re-run (0 = VAE round trip of the renders; 1 = renders ignored).
        steps, guidance, seed, eta: Era3D sampling settings.
        crop_size: on the 512-px scale (scaled to ``era3d.resolution``), for both the renders and the condition.
        use_normals: feed rendered normals as the init of the normal half (else zero latents).
        callback: ``callback(done, total, latents)`` per denoising step (raise to abort).

    Returns:
        :class:`MultiViewResult` with the refined colours/normals; their ``cameras`` are the orthographic render
        cameras (LGM world, with the shared ``ortho_scale``), ``info`` adds ``ortho_scale``, ``center`` and the
        unrefined renders ``renders_colors`` / ``renders_normals`` ``[6,R,R,3]``.
    """
    res = int(era3d.resolution)
    crop_px = float(crop_size) * res / 512.0
    cond = _condition_image(era3d, input_image, mask, crop_size)
    dev = era3d.device
    r = render_era3d_views(gaussians, size=res, crop_size=crop_px, normals=use_normals, backend=backend)
    colors, normals = r["colors"].float().cpu(), None if r["normals"] is None else r["normals"].float().cpu()
    out = era3d.denoise_from_images(normals, colors, cond, strength=strength, steps=steps, guidance=guidance,
                                    seed=seed, eta=eta, callback=callback)
    cams = r["cameras"].to(device=out.colors.images.device, dtype=torch.float32)
    info = {**out.info, "ortho_scale": r["ortho_scale"], "center": [float(c) for c in r["center"]],
            "crop_size": crop_size, "renders_colors": colors, "renders_normals": normals}
    _ = dev
    return replace(
        out,
        colors=replace(out.colors, cameras=cams, names=tuple(ERA3D_VIEWS)),
        normals=replace(out.normals, cameras=cams, names=tuple(ERA3D_VIEWS)),
        info=info,
    )
