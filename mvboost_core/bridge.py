"""View bridge: Era3D's six orthographic views -> LGM's four input views.

Handedness derivation (facts: ``notes/era3d.md`` §4.2-4.3, ``notes/lgm.md`` §4.1; upstream code cited there)
-------------------------------------------------------------------------------------------------------------
**Era3D** renders its training targets in Blender's world (z up) with ``set_camera_mvdream(az, el, d)``, i.e. a
camera at ``d·(cos az·cos el, sin az·cos el, sin el)`` looking at the origin with image-up = world +z
(Era3D ``blender/blender_render_script.py`` 267-281). The condition ("front") view is azimuth slot 12 = Blender
azimuth 270°, a camera on **-y**, and the six targets sit at slot offsets ``[0, 2, 4, 8, 12, 14]`` x 22.5° =
**0, 45, 90, 180, 270, 315°** (``mvdiffusion/data/dreamdata.py`` 217-262, train yaml ``predict_relative_views``).
Blender azimuth ``270° + 90° = 360°`` puts the "right" camera on **+x** (instant-nsr-pl's ``000_right_RT.txt``
has its centre at (1.3, 0, 0)). Seen from the front camera (at -y, up +z) the image's right-hand direction is
``up x back = z x (-y) = +x``: the offsets therefore grow towards **the viewer's right**, and the "right" view
shows what lies on the right-hand side of the input image.

**LGM** uses kiui's ``orbit_camera``: y up, ``campos = r·(cos e·sin a, -sin e, cos e·cos a)``: azimuth 0 on
**+z**, 90 on **+x** (kiui ``cam.py``; LGM ``core/models.py`` 61-85 uses azimuths 0/90/180/270). From the
azimuth-0 camera (at +z, up +y) the image's right-hand direction is ``y x z = +x``: the azimuth-90 camera sits on
the viewer's right.

**Mapping.** LGM's own Objaverse loader converts Blender poses with ``(x, y, z)_blender -> (x, z, -y)_lgm``
(:func:`~mvboost_core.cameras.blender_to_lgm`, a proper rotation). It sends the Era3D front camera (0, -d, 0) to
(0, 0, d) = kiui azimuth 0, the right camera (d, 0, 0) to (d, 0, 0) = kiui azimuth 90, and world-up +z to +y.
Hence **Era3D offset θ = kiui azimuth θ at elevation 0** (same sense of rotation, no mirror):

=============  =========================  ===========================
Era3D view      Blender camera centre      LGM view (kiui azimuth)
=============  =========================  ===========================
front           (0, -d, 0)                 view 0 (az 0, camera on +z)
right           (+d, 0, 0)                 view 1 (az 90, camera on +x)
back            (0, +d, 0)                 view 2 (az 180, camera on -z)
left            (-d, 0, 0)                 view 3 (az 270, camera on -x)
=============  =========================  ===========================

``tests/test_bridge.py`` proves it numerically: an asymmetric object rendered with Era3D's own Blender cameras
(object mapped into the Blender world) equals, view for view, the same object rendered in the LGM world with the
bridged cameras' poses, and the mirrored assignment does not.

Framing. Era3D's views are orthographic (ortho_scale 1 at 512 px); LGM's are perspective (radius 1.5, fovy
49.1°). The bridge does not re-project: like every published Era3D/ImageDream -> LGM pipeline it hands the
images over as they are (resized to 256², composited on white), and LGM interprets them with its own cameras.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .cameras import ERA3D_VIEWS, Cameras
from .multiview import MultiView, MultiViewResult

__all__ = ["ERA3D_TO_LGM_VIEWS", "era3d_to_lgm", "resize_images"]

#: Era3D view names in LGM input order (LGM view k has kiui azimuth 90·k).
ERA3D_TO_LGM_VIEWS: tuple[str, ...] = ("front", "right", "back", "left")


def resize_images(images: Tensor, size: int) -> Tensor:
    """``[V,H,W,C]`` float -> ``[V,size,size,C]`` (bilinear, antialiased when shrinking; square inputs only)."""
    if images.shape[1] == size and images.shape[2] == size:
        return images
    x = images.permute(0, 3, 1, 2)
    shrink = images.shape[1] > size or images.shape[2] > size
    x = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
    return x.permute(0, 2, 3, 1).to(images.dtype)


def era3d_to_lgm(
    multiview: MultiViewResult | MultiView,
    size: int = 256,
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> tuple[Tensor, Cameras]:
    """Pick Era3D's front, right, back, left colour views and return LGM's four inputs.

    Args:
        multiview: an Era3D :class:`MultiViewResult` (its colour views are used) or a colour :class:`MultiView`
            holding at least the views named front/right/back/left (names taken from ``.names``; a 6-view set
            without names is assumed to be in Era3D order ``ERA3D_VIEWS``).
        size: output side in pixels (LGM: 256).
        background: colour composited behind the object where masks are given (LGM trains on white).

    Returns:
        ``images [4,size,size,3]`` float32 in [0,1] in LGM order (azimuth 0, 90, 180, 270) and the matching
        ``Cameras.lgm_input(size)`` (LGM world, perspective, radius 1.5, fovy 49.1°), on the images' device.
    """
    mv = multiview.colors if isinstance(multiview, MultiViewResult) else multiview
    if not isinstance(mv, MultiView):
        raise TypeError(f"era3d_to_lgm needs a MultiViewResult or MultiView, got {type(multiview).__name__}")
    if mv.kind != "color":
        raise ValueError("era3d_to_lgm needs colour views (got a normal-map MultiView); pass result.colors")
    names = tuple(mv.names) if mv.names else (ERA3D_VIEWS if len(mv) == len(ERA3D_VIEWS) else ())
    missing = [n for n in ERA3D_TO_LGM_VIEWS if n not in names]
    if missing:
        raise ValueError(
            f"era3d_to_lgm needs the views {list(ERA3D_TO_LGM_VIEWS)}; missing {missing} "
            f"(the MultiView has {len(mv)} views named {list(names)})"
        )
    idx = torch.tensor([names.index(n) for n in ERA3D_TO_LGM_VIEWS], device=mv.images.device)
    images = mv.images[idx].float()
    if images.shape[1] != images.shape[2]:
        raise ValueError(f"Era3D views must be square, got {images.shape[2]}x{images.shape[1]}")
    if mv.masks is not None:
        m = mv.masks[idx].float().unsqueeze(-1)
        bg = torch.tensor(background, dtype=images.dtype, device=images.device)
        images = images * m + bg * (1.0 - m)
    images = resize_images(images, size).clamp(0.0, 1.0).contiguous()
    cams = Cameras.lgm_input(size, device=images.device)
    return images, cams
