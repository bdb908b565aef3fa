"""Optimize Input Pose: fixture pose recovery (< 1°, < 0.01), the three stages on a small synthetic object, and
bad input."""
from __future__ import annotations

import math

import pytest
import torch

from mvboost_core.cameras import Cameras
from mvboost_core.gaussians import Gaussians
from mvboost_core.pose import PoseOptions, optimize_input_view, orbit_params, so3_exp
from mvboost_core.render import render


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------ fixture recovery
def _angle_deg(Ra: torch.Tensor, Rb: torch.Tensor) -> float:
    c = (float(torch.trace(Ra @ Rb.T)) - 1.0) / 2.0
    return math.degrees(math.acos(max(-1.0, min(1.0, c))))


def test_recovers_fixture_pose(fixtures_dir):
    """fixtures/render/README.md §9: start 5° / 0.05 away; MSE-only refinement (Adam through the rasterizer +
    Levenberg-Marquardt polish) must land within 1° and 0.01 of the ground truth."""
    from safetensors.torch import load_file

    T = load_file(str(fixtures_dir / "render" / "pose_recovery.safetensors"))
    g = Gaussians(T["means"].float(), T["opacities"].float(), T["scales"].float(), T["quats"].float(),
                  T["colors"].float())
    K, V0, Vgt = T["K"], T["viewmat_start"], T["viewmat_gt"]
    cam0 = Cameras(torch.linalg.inv(V0)[None].float(), K[0, 0], K[1, 1], K[0, 2], K[1, 2], 128, 128)
    start_err = _angle_deg(V0[:3, :3], Vgt[:3, :3])
    assert abs(start_err - 5.0) < 1e-6
    _, cam, rep = optimize_input_view(
        g, T["target_rgb"].float(), None, cam0, search=False, adjust=False, refine_focal=False,
        pose_iters=40, pose_lr=1.5e-2, lm_iters=4, resolution=128, center=(0.0, 0.0, 0.0), backend="torch",
    )
    Vf = cam.viewmats()[0].double()
    ang = _angle_deg(Vf[:3, :3], Vgt[:3, :3])
    dist = float((torch.linalg.inv(Vf)[:3, 3] - torch.linalg.inv(Vgt)[:3, 3]).norm())
    assert ang < 1.0 and dist < 0.01, (ang, dist, rep["stages"])
    assert rep["psnr_after"] > rep["psnr_before"] + 15  # 14 dB at the start
    assert (cam.width, cam.height) == (128, 128)


# ------------------------------------------------------------------------------------- synthetic object
def _blobs(n_per=40) -> Gaussians:
    g = torch.Generator().manual_seed(3)
    spec = [((0.0, 0.0, 0.0), (0.6, 0.6, 0.6), 0.12), ((0.3, 0.0, 0.05), (1.0, 0.1, 0.1), 0.06),
            ((0.0, 0.28, 0.0), (0.1, 0.8, 0.1), 0.06), ((-0.15, -0.2, 0.2), (0.1, 0.1, 1.0), 0.06)]
    means, cols = [], []
    for c, col, s in spec:
        means.append(torch.tensor(c) + s * torch.randn(n_per, 3, generator=g))
        cols.append(torch.tensor(col).expand(n_per, 3))
    N = n_per * len(spec)
    return Gaussians(torch.cat(means), torch.full((N,), 0.9), torch.full((N, 3), 0.04),
                     torch.tensor([1.0, 0, 0, 0]).expand(N, 4).clone(), torch.cat(cols).clone())


SIZE = 48


def _target(g: Gaussians, azim: float = 0.0, elev: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    cam = Cameras.orbit([elev], [azim], 1.5, 49.1, SIZE, SIZE)
    out = render(g, cam, backend="torch")
    return out.rgb[0].clamp(0, 1), out.alpha[0, ..., 0]


def _opts(**kw) -> PoseOptions:
    base = dict(resolution=SIZE, search_resolution=SIZE, search_elevations=(0.0,), search_azimuths=(-8.0, 0.0, 8.0),
                search_radius_scales=(1.0,), pose_iters=0, lm_iters=0, adjust_iters=0, reg_resolution=24,
                lpips_pretrained=False, backend="torch", center=(0.0, 0.0, 0.0))
    base.update(kw)
    return PoseOptions(**base)


def test_search_finds_the_azimuth_and_report_is_complete():
    g = _blobs()
    img, alpha = _target(g, azim=8.0)
    g_out, cam, rep = optimize_input_view(g, img, alpha, None, _opts(adjust=False, refine_pose=False))
    assert rep["stages"]["search"]["best_offset"]["azimuth"] == 8.0
    assert abs(rep["pose"]["azimuth"] - 8.0) < 1e-3 and abs(rep["pose"]["radius"] - 1.5) < 1e-4
    assert abs(rep["pose"]["fovy"] - 49.1) < 1e-3
    assert rep["psnr_after"] > rep["psnr_before"] + 10
    for k in ("lpips_before", "lpips_after", "psnr_before", "psnr_after", "pose", "other_views", "warnings"):
        assert k in rep
    assert torch.equal(g_out.colors, g.colors)  # no adjustment requested: Gaussians unchanged
    assert rep["renders"]["after"].shape == (SIZE, SIZE, 3)


def test_pose_refinement_recovers_a_small_offset():
    g = _blobs()
    img, alpha = _target(g, azim=3.0, elev=-2.0)
    opts = _opts(search=False, adjust=False, pose_iters=12, pose_lr=2e-2, lm_iters=2, lm_max_step_deg=2.0)
    _, cam, rep = optimize_input_view(g, img, alpha, None, opts)
    p = orbit_params(cam)
    assert abs(p["azimuth"] - 3.0) < 0.6 and abs(p["elevation"] + 2.0) < 0.6, p
    assert rep["psnr_after"] > rep["psnr_before"] + 10, (rep["psnr_before"], rep["psnr_after"])
    assert rep["stages"]["refine_pose"]["adam_iters"] == 12


def test_adjustments_fit_the_photo_and_keep_other_views_close():
    g = _blobs()
    # the photo's colours differ from the reconstruction: the red blob is magenta in the photo
    g_photo = g.replace(colors=torch.where((g.colors[:, 0] > 0.9)[:, None], torch.tensor([0.9, 0.1, 0.9]),
                                           g.colors))
    img_photo, alpha = _target(g_photo)
    opts = _opts(search=False, refine_pose=False, adjust_iters=12, color_lr=8e-2, lpips_weight=0.0,
                 reg_views_weight=1.0, reg_azimuths=(90.0, 180.0, 270.0))
    g_out, cam, rep = optimize_input_view(g, img_photo, alpha, None, opts)
    assert rep["psnr_after"] > rep["psnr_before"] + 3, (rep["psnr_before"], rep["psnr_after"])
    # appearance only: geometry untouched, colours moved towards magenta where red was
    assert torch.equal(g_out.means, g.means) and torch.equal(g_out.scales, g.scales)
    red = g.colors[:, 0] > 0.9
    assert float(g_out.colors[red, 2].mean()) > float(g.colors[red, 2].mean()) + 0.1
    assert len(rep["other_views"]["per_view_psnr"]) == 3
    assert rep["other_views"]["psnr_min"] > 20  # the regulariser keeps the other views close
    assert g_out.opacities.min() > 0 and g_out.opacities.max() < 1


# --------------------------------------------------------------------------------------------- bad input
def test_bad_inputs_and_fallbacks():
    g = _blobs()
    img, alpha = _target(g)
    with pytest.raises(ValueError, match="does not match the image size"):
        optimize_input_view(g, img, alpha[:-1], None, _opts())
    with pytest.raises(ValueError, match="empty"):
        optimize_input_view(g, img, torch.zeros_like(alpha), None, _opts())
    far = g.replace(means=g.means + torch.tensor([0.0, 0.0, 5.0]))  # all behind the nominal camera
    with pytest.raises(ValueError, match="no Gaussian is visible"):
        optimize_input_view(far, img, alpha, None, _opts(center=None))
    # a mask in a corner no candidate pose can cover: the search range excludes every valid pose
    corner = torch.zeros_like(alpha)
    corner[2:8, 2:8] = 1.0
    with pytest.raises(ValueError, match="excludes every valid pose"):
        optimize_input_view(g, img, corner, None, _opts(min_iou=0.2))
    # object touching the border: documented fallback = pad, warn, and return a camera for the original image
    big = g.replace(means=g.means * 2.5)
    img_b, alpha_b = _target(big)
    assert float(alpha_b[:, 0].max()) > 0.5
    _, cam, rep = optimize_input_view(big, img_b, alpha_b, None, _opts(search=False, adjust=False))
    assert any("touches the image border" in w for w in rep["warnings"])
    assert (cam.width, cam.height) == (SIZE, SIZE) and abs(float(cam.cx[0]) - SIZE / 2) < 1e-4
    with pytest.raises(ValueError, match="touches the image border"):
        optimize_input_view(big, img_b, alpha_b, None, _opts(border="error"))


def test_so3_exp_matches_rodrigues():
    w = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    th = float(w.norm())
    k = w / th
    K = torch.tensor([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]], dtype=torch.float64)
    R = torch.eye(3, dtype=torch.float64) + math.sin(th) * K + (1 - math.cos(th)) * K @ K
    assert torch.allclose(so3_exp(w), R, atol=1e-12)


# --------------------------------------------------------------------------------- loss without the VGG trunk
def _tiny_vgg16_checkpoint(path) -> None:
    """A torchvision-format ``vgg16`` state dict (``features.N.weight/bias`` with the real shapes) that takes a few
    kB on disk: every tensor is a small random one broadcast to its shape (``expand`` keeps the small storage)."""
    import torchvision

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in torchvision.models.vgg16().state_dict().items() if k.startswith("features.")}
    gen = torch.Generator().manual_seed(0)
    sd = {}
    for k, s in shapes.items():
        if k.endswith("weight"):  # [out, in, 3, 3]: per-output-channel scale of the local sum, ~1/sqrt(fan_in)
            sd[k] = (torch.randn(s[0], 1, 1, 1, generator=gen) / math.sqrt(s[1] * 9)).expand(s)
        else:
            sd[k] = 0.01 * torch.randn(s, generator=gen)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, path)


@pytest.fixture
def no_lpips_trunk(tmp_path, monkeypatch):
    """Every place the pretrained LPIPS trunk is looked up is empty: $TORCH_HOME and the models folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("MVBOOST_MODELS_DIR", str(tmp_path / "models"))
    return tmp_path / "torch_home" / "hub" / "checkpoints" / "vgg16-397923af.pth"


def test_missing_lpips_trunk_falls_back_to_l1_ssim(no_lpips_trunk):
    g = _blobs()
    img, alpha = _target(g, azim=8.0)
    opts = _opts(lpips_pretrained=True, adjust_iters=3)
    g_out, cam, rep = optimize_input_view(g, img, alpha, None, opts)
    assert rep["loss"].startswith("l1+ssim (VGG16 trunk missing"), rep["loss"]
    assert any("fallback loss 0.8·L1 + 0.2·(1 − SSIM)" in w for w in rep["warnings"]), rep["warnings"]
    # the stage did its job with the fallback: the search found the azimuth, the input view improved
    assert rep["stages"]["search"]["best_offset"]["azimuth"] == 8.0
    assert rep["psnr_after"] > rep["psnr_before"] + 10
    assert 0.0 <= rep["lpips_after"] < rep["lpips_before"]
    with pytest.raises(FileNotFoundError):
        optimize_input_view(g, img, alpha, None, _opts(lpips_pretrained=True, lpips_fallback=False))


def test_pretrained_lpips_trunk_is_used_when_present(no_lpips_trunk):
    _tiny_vgg16_checkpoint(no_lpips_trunk)
    assert no_lpips_trunk.stat().st_size < 100_000
    g = _blobs()
    img, alpha = _target(g, azim=8.0)
    _, _, rep = optimize_input_view(g, img, alpha, None, _opts(lpips_pretrained=True, adjust_iters=2))
    assert rep["loss"] == "lpips-vgg" and not any("trunk" in w for w in rep["warnings"]), rep
    assert math.isfinite(rep["lpips_before"]) and math.isfinite(rep["lpips_after"])
    _, _, rep_rand = optimize_input_view(g, img, alpha, None, _opts(adjust_iters=2))
    assert rep_rand["loss"] == "lpips-vgg (random trunk)"
    assert rep_rand["lpips_before"] != pytest.approx(rep["lpips_before"], rel=1e-3)  # the file's trunk was used


# ------------------------------------------------------------------------------------------------- schedules
def test_schedules_and_early_stopping():
    ref = PoseOptions.preset("reference")
    assert (ref.pose_iters, ref.adjust_iters, ref.search_resolution, ref.pose_patience, ref.adjust_patience,
            ref.reg_views_per_iter, ref.pyramid) == (100, 100, 128, 0, 0, 0, False)
    assert PoseOptions.preset("fast") == PoseOptions()
    assert PoseOptions.preset("reference", adjust_iters=7).adjust_iters == 7
    with pytest.raises(ValueError, match="unknown pose schedule"):
        PoseOptions.preset("turbo")
    g = _blobs()
    img, alpha = _target(g)  # the target is the nominal view of these Gaussians: nothing to adjust
    opts = _opts(search=False, refine_pose=False, adjust_iters=60, adjust_patience=4)
    g_out, _, rep = optimize_input_view(g, img, alpha, None, opts)
    assert rep["stages"]["adjust"]["iters"] <= 10  # stopped on the converged loss, long before 60
    assert rep["psnr_after"] >= rep["psnr_before"] - 1e-6  # the best (= unadjusted) state was kept
    # the reference keeps going for every iteration and returns the last iterate
    _, _, rep_ref = optimize_input_view(g, img, alpha, None, _opts(search=False, refine_pose=False, adjust_iters=12,
                                                                 adjust_patience=0, reg_views_per_iter=0))
    assert rep_ref["stages"]["adjust"]["iters"] == 12


def test_separable_search_finds_azimuth_and_radius():
    """Fast schedule's search: elevation × azimuth first, then the radius scales at the best; 1 + 3 + 2 renders."""
    g = _blobs()
    cam = Cameras.orbit([0.0], [8.0], 1.5 * 1.1, 49.1, SIZE, SIZE)
    out = render(g, cam, backend="torch")
    opts = _opts(adjust=False, refine_pose=False, search_radius_scales=(0.9, 1.0, 1.1))
    _, cam_f, rep = optimize_input_view(g, out.rgb[0].clamp(0, 1), out.alpha[0, ..., 0], None, opts)
    s = rep["stages"]["search"]
    assert s["candidates"] == 1 + 3 + 2
    assert s["best_offset"]["azimuth"] == 8.0 and s["best_offset"]["radius_scale"] == 1.1
    assert abs(rep["pose"]["radius"] - 1.65) < 1e-4
    _, _, rep_full = optimize_input_view(g, out.rgb[0].clamp(0, 1), out.alpha[0, ..., 0], None,
                                         _opts(adjust=False, refine_pose=False, search_radius_scales=(0.9, 1.0, 1.1),
                                               search_separable=False))
    assert rep_full["stages"]["search"]["candidates"] == 1 + 9
    assert rep_full["stages"]["search"]["best_offset"] == s["best_offset"]
