"""render()/rasterize() API: Cameras integration, c2w gradients, empty renders, bad input, backend selection."""
from __future__ import annotations

import logging
import sys

import pytest
import torch

import render_helpers as rh
from mvboost_core.cameras import Cameras
from mvboost_core.gaussians import Gaussians
from mvboost_core.render import RenderOptions, RenderOutput, rasterize, render, select_backend


def _gaussians(T, dtype=torch.float32) -> Gaussians:
    return Gaussians(means=T["means"].to(dtype), opacities=T["opacities"].to(dtype), scales=T["scales"].to(dtype),
                     quats=T["quats"].to(dtype), colors=T["colors"].to(dtype))


def test_render_with_orbit_cameras_matches_scene_d(fixtures_dir):
    """Scene d's cameras are kiui orbit cameras: Cameras.orbit + render() must reproduce the reference."""
    meta, T = rh.scene(fixtures_dir, "d")
    ea = T["cam_elev_azim_deg"]
    cams = Cameras.orbit(ea[:, 0], ea[:, 1], radius=1.5, fovy_deg=49.1, width=128, height=128)
    torch.testing.assert_close(cams.viewmats().double(), T["viewmats"], rtol=0, atol=1e-6)
    out = render(_gaussians(T), cams, background=(1.0, 1.0, 1.0), backend="auto")
    assert isinstance(out, RenderOutput) and out.info["backend"] == "torch"
    assert rh.f1_failures(out, T) == []
    assert rh.f2_ok(rh.f2_errors(out, T), torch.float32)
    ed = out.expected_depth
    m = out.alpha > 0.5
    assert ((ed[m] > 0.5) & (ed[m] < 2.5)).all()  # camera at 1.5 from an object of radius < 0.5
    assert (ed[out.alpha == 0] == 0).all()


def test_c2w_gradient_flows_through_cameras(fixtures_dir):
    """d loss / d c2w through Cameras.viewmats() agrees with central finite differences (float64)."""
    meta, T = rh.scene(fixtures_dir, "b")
    g = _gaussians(T, torch.float64)
    c2w = torch.linalg.inv(T["viewmats"])
    Ks = T["Ks"]
    R = torch.Generator().manual_seed(0)
    W_img = torch.randn(2, 48, 64, 3, generator=R, dtype=torch.float64)

    def loss(c):
        cams = Cameras(c, Ks[:, 0, 0], Ks[:, 1, 1], Ks[:, 0, 2], Ks[:, 1, 2], meta["width"], meta["height"])
        out = render(g, cams, background=(1.0, 1.0, 1.0), backend="torch")
        return (out.rgb * W_img).sum() + out.alpha.sum() + 0.1 * out.depth.sum()

    c = c2w.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(c), c)
    assert grad[:, :3].abs().max() > 0
    d = torch.zeros_like(c2w)
    d[:, :3] = torch.randn(2, 3, 4, generator=R, dtype=torch.float64)
    h = 1e-6
    with torch.no_grad():
        fd = (loss(c2w + h * d) - loss(c2w - h * d)) / (2 * h)
    assert abs(float(fd) - float((grad * d).sum())) < 1e-5 * abs(float(fd)) + 1e-7


def test_all_behind_camera_gives_background():
    g = Gaussians(means=torch.tensor([[0.0, 0.0, 3.0], [0.1, 0.0, 2.0]]), opacities=torch.tensor([0.9, 0.8]),
                  scales=torch.full((2, 3), 0.1), quats=torch.tensor([[1.0, 0, 0, 0]] * 2),
                  colors=torch.rand(2, 3))
    g.means.requires_grad_(True)
    cams = Cameras.orbit([0.0], [0.0], radius=1.5, width=24, height=16)  # at +z looking at the origin
    out = render(g, cams, background=(0.2, 0.3, 0.4), backend="torch")
    assert out.rgb.shape == (1, 16, 24, 3)
    assert torch.equal(out.rgb, torch.tensor([0.2, 0.3, 0.4]).expand(1, 16, 24, 3))
    assert out.alpha.abs().max() == 0 and out.depth.abs().max() == 0
    out.rgb.sum().backward()
    assert g.means.grad is not None and g.means.grad.abs().max() == 0


def test_background_tensor_is_differentiable():
    g = Gaussians(means=torch.tensor([[0.0, 0.0, 0.0]]), opacities=torch.tensor([0.5]),
                  scales=torch.full((1, 3), 0.05), quats=torch.tensor([[1.0, 0, 0, 0]]), colors=torch.rand(1, 3))
    cams = Cameras.orbit([0.0, 0.0], [0.0, 90.0], width=16, height=16)
    bg = torch.tensor([0.5, 0.5, 0.5], requires_grad=True)
    out = render(g, cams, background=bg, backend="torch")
    out.rgb.sum().backward()
    T_sum = (1 - out.alpha).sum().detach()
    torch.testing.assert_close(bg.grad, T_sum.expand(3), rtol=1e-5, atol=1e-4)


def _tiny(n=4):
    return dict(means=torch.zeros(n, 3), quats=torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
                scales=torch.full((n, 3), 0.1), opacities=torch.full((n,), 0.5), colors=torch.rand(n, 3))


def _vm_K():
    cams = Cameras.orbit([0.0], [0.0], width=8, height=8)
    return cams.viewmats(), cams.Ks()


@pytest.mark.parametrize("field", ["means", "quats", "scales", "opacities", "colors"])
def test_nan_gaussians_raise(field):
    kw = _tiny()
    kw[field] = kw[field].clone()
    kw[field].view(-1)[0] = float("nan")
    vm, K = _vm_K()
    with pytest.raises(ValueError, match=field):
        rasterize(kw["means"], kw["quats"], kw["scales"], kw["opacities"], kw["colors"], vm, K, 8, 8)
    with pytest.raises(ValueError, match="NaN"):
        render(Gaussians(means=kw["means"], opacities=kw["opacities"], scales=kw["scales"], quats=kw["quats"],
                         colors=kw["colors"]), Cameras.orbit([0.0], [0.0], width=8, height=8))


@pytest.mark.parametrize("wh", [(0, 8), (8, 0), (-4, 8)])
def test_bad_resolution_raises(wh):
    kw = _tiny()
    vm, K = _vm_K()
    with pytest.raises(ValueError, match="positive"):
        rasterize(*kw.values(), vm, K, *wh)


@pytest.mark.parametrize("shape", [(1, 3, 4), (1, 4, 3), (4, 4, 4, 1), (16,)])
def test_bad_camera_matrix_raises(shape):
    kw = _tiny()
    _, K = _vm_K()
    with pytest.raises(ValueError, match="viewmats"):
        rasterize(*kw.values(), torch.zeros(shape), K, 8, 8)


def test_bad_shapes_and_empty_raise():
    kw = _tiny()
    vm, K = _vm_K()
    with pytest.raises(ValueError, match="scales"):
        rasterize(kw["means"], kw["quats"], kw["scales"][:, :2], kw["opacities"], kw["colors"], vm, K, 8, 8)
    with pytest.raises(ValueError, match="Ks"):
        rasterize(*kw.values(), vm, K.repeat(2, 1, 1), 8, 8)
    with pytest.raises(ValueError, match="zero quaternion"):
        rasterize(kw["means"], torch.zeros(4, 4), kw["scales"], kw["opacities"], kw["colors"], vm, K, 8, 8)
    empty = Gaussians(means=torch.zeros(0, 3), opacities=torch.zeros(0), scales=torch.zeros(0, 3),
                      quats=torch.zeros(0, 4), colors=torch.zeros(0, 3))
    with pytest.raises(ValueError, match="empty"):
        render(empty, Cameras.orbit([0.0], [0.0], width=8, height=8))
    with pytest.raises(ValueError, match="backend"):
        rasterize(*kw.values(), vm, K, 8, 8, backend="cuda-magic")


# ------------------------------------------------------------------------------------------------ backends
def test_auto_backend_is_torch_on_cpu_with_one_log_line(caplog):
    import mvboost_core.render.api as api

    api._logged.clear()
    with caplog.at_level(logging.INFO, logger="mvboost.render"):
        assert select_backend("auto", "cpu") == "torch"
        assert select_backend("auto", "cpu") == "torch"
    lines = [r for r in caplog.records if r.name == "mvboost.render"]
    assert len(lines) == 1 and "pure-PyTorch" in lines[0].getMessage()
    assert select_backend("torch", "cpu") == "torch"


def test_gsplat_backend_refused_without_cuda():
    from mvboost_core.render.gsplat_backend import gsplat_available

    ok, why = gsplat_available("cpu")
    assert not ok and "CUDA" in why
    with pytest.raises(RuntimeError, match="gsplat"):
        select_backend("gsplat", "cpu")
    kw = _tiny()
    vm, K = _vm_K()
    with pytest.raises(RuntimeError, match="backend='torch'"):
        rasterize(*kw.values(), vm, K, 8, 8, backend="gsplat")


def test_gsplat_probe_reports_missing_cuda(monkeypatch):
    """Even if torch claimed CUDA, a missing/broken gsplat import must give a reason, not an exception."""
    import importlib

    import mvboost_core.render.gsplat_backend as gb

    gb._probe.cache_clear()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real_import = importlib.import_module

    def fake_import(name, *a, **k):
        if name.startswith("gsplat"):
            raise ImportError("No module named 'gsplat'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(gb.importlib, "import_module", fake_import)
    try:
        ok, why = gb._probe()
        assert not ok and "not importable" in why
    finally:
        gb._probe.cache_clear()


def test_cpu_render_never_imports_gsplat(monkeypatch):
    """Rendering on CPU (auto backend) must not even try to import gsplat (it can be slow or broken)."""
    import importlib.abc

    import mvboost_core.render.gsplat_backend as gb

    attempts = []

    class Spy(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "gsplat":
                attempts.append(name)
            return None

    monkeypatch.setattr(sys, "meta_path", [Spy()] + sys.meta_path)
    monkeypatch.delitem(sys.modules, "gsplat", raising=False)
    gb._probe.cache_clear()
    kw = _tiny()
    vm, K = _vm_K()
    out = rasterize(*kw.values(), vm, K, 8, 8, backend="auto")
    assert out.info["backend"] == "torch"
    assert attempts == []
    src = open(gb.__file__).read().split("def _probe", 1)[0]
    assert "import gsplat" not in src  # no module-level import


def test_options_are_a_dataclass():
    o = RenderOptions()
    assert (o.near_plane, o.eps2d, o.alpha_max) == (0.01, 0.3, 0.99)
    with pytest.raises(ValueError, match="backward"):
        kw = _tiny()
        vm, K = _vm_K()
        rasterize(*kw.values(), vm, K, 8, 8, options=RenderOptions(backward="magic"))


def test_era3d_orthographic_views_place_points_correctly():
    """Orthographic render through Cameras.era3d: a small Gaussian at world +y (LGM up) appears above the image
    centre in all six views, and one at the origin at the centre, with expected depth = camera distance."""
    cams = Cameras.era3d(size=32, ortho_scale=1.0, distance=3.0)
    g = Gaussians(means=torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.3, 0.0]]), opacities=torch.tensor([0.95, 0.95]),
                  scales=torch.full((2, 3), 0.01), quats=torch.tensor([[1.0, 0, 0, 0]] * 2),
                  colors=torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    out = render(g, cams, background=(1.0, 1.0, 1.0), backend="torch")
    assert out.rgb.shape == (6, 32, 32, 3)
    for v in range(6):
        # origin -> pixel centre (16, 16) touches pixels 15 and 16; 0.3 world up -> 0.3 * 32 = 9.6 px up
        red = out.rgb[v, 15:17, 15:17]
        assert float(red[..., 1].max()) < 0.5 and float(red[..., 0].min()) > 0.9
        blue = out.rgb[v, 6, 15:17]
        assert float(blue[..., 2].min()) > 0.9 and float(blue[..., 0].max()) < 0.7
        assert abs(float(out.expected_depth[v, 15, 15, 0]) - 3.0) < 1e-4
