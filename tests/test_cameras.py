"""Cameras: kiui orbit conventions, OpenCV/OpenGL conversions and LGM's Plücker rays against the fixture."""
import math

import pytest
import torch
from safetensors.torch import load_file

from mvboost_core.cameras import Cameras, blender_to_lgm, orbit_c2w_opengl


def test_orbit_matches_kiui_conventions():
    c2w = orbit_c2w_opengl([0, 0, 0, 0], [0, 90, 180, 270], 1.5)
    assert torch.allclose(c2w[0], torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 1.5], [0, 0, 0, 1.0]],
                                                 dtype=torch.float64))
    centres = c2w[:, :3, 3]
    expect = torch.tensor([[0, 0, 1.5], [1.5, 0, 0], [0, 0, -1.5], [-1.5, 0, 0]], dtype=torch.float64)
    assert torch.allclose(centres, expect, atol=1e-12)
    # negative elevation puts the camera above (kiui sign)
    above = orbit_c2w_opengl(-30, 0, 1.5)[0, :3, 3]
    assert torch.allclose(above, torch.tensor([0, 0.75, 1.5 * math.cos(math.radians(30))], dtype=torch.float64))


def test_lgm_cameras_and_rays_match_fixture(fixtures_dir):
    io = load_file(str(fixtures_dir / "lgm" / "io_micro.safetensors"))
    cams = Cameras.lgm_input(size=64)
    assert torch.allclose(cams.to_opengl(), io["cam_c2w"], atol=1e-6)
    rays = cams.plucker_rays()
    assert rays.shape == (4, 6, 64, 64)
    assert (rays - io["rays_plucker"][0]).abs().max() <= 1e-6
    # documented example values
    assert torch.allclose(rays[0, :, 0, 0], torch.tensor([-0.569142, -0.569142, 0, -0.379428, 0.379428, -0.843842]),
                          atol=1e-5)


def test_viewmats_is_rigid_inverse_and_differentiable():
    cams = Cameras.orbit([-20, 10], [30, 200], 1.7, width=32, height=24)
    c2w = cams.c2w.clone().requires_grad_(True)
    w2c = cams.with_c2w(c2w).viewmats()
    eye = torch.eye(4).expand(2, 4, 4)
    assert torch.allclose(w2c @ c2w, eye, atol=1e-6)
    w2c.sum().backward()
    assert c2w.grad is not None and torch.isfinite(c2w.grad).all()
    assert torch.allclose(cams.Ks()[0], torch.tensor([[cams.fx[0], 0, 16], [0, cams.fy[0], 12], [0, 0, 1.0]]))


def test_opencv_opengl_roundtrip():
    cams = Cameras.orbit([5.0], [33.0])
    back = Cameras.from_opengl(cams.to_opengl(), width=256, height=256, fovy_deg=49.1)
    assert torch.equal(back.c2w, cams.c2w)
    # OpenCV z axis (forward) points at the target
    fwd = cams.c2w[0, :3, 2]
    to_target = -cams.c2w[0, :3, 3] / cams.c2w[0, :3, 3].norm()
    assert torch.allclose(fwd, to_target, atol=1e-6)


def test_era3d_views_agree_between_blender_and_lgm_worlds():
    lgm = Cameras.era3d(convention="lgm", dtype=torch.float64)
    bl = Cameras.era3d(convention="blender", dtype=torch.float64)
    assert lgm.projection == "orthographic" and lgm.fx[0] == 512
    # mapping the Blender cameras into the LGM world gives the LGM-convention set, view for view
    assert torch.allclose(blender_to_lgm(bl.c2w), lgm.c2w, atol=1e-12)
    # front camera on +z (LGM) / -y (Blender); right on +x in both
    assert torch.allclose(lgm.centers()[0], torch.tensor([0, 0, 3.0], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(bl.centers()[0], torch.tensor([0, -3.0, 0], dtype=torch.float64), atol=1e-12)
    assert torch.allclose(bl.centers()[2], torch.tensor([3.0, 0, 0], dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("bad", [torch.zeros(3, 3), torch.zeros(2, 4, 3)])
def test_bad_camera_matrices_rejected(bad):
    with pytest.raises(ValueError, match="4,4"):
        Cameras(bad, 1.0, 1.0, 0.5, 0.5, 1, 1)


def test_bad_resolution_rejected():
    with pytest.raises(ValueError, match="positive"):
        Cameras(torch.eye(4), 1.0, 1.0, 0.5, 0.5, 0, 10)
