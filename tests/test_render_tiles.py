"""The tile size is an implementation detail: images, alpha, depth and every gradient must not depend on it."""
from __future__ import annotations

import pytest
import torch

import render_helpers as rh
from mvboost_core.cameras import Cameras
from mvboost_core.gaussians import Gaussians
from mvboost_core.render import RenderOptions, render

pytestmark = pytest.mark.usefixtures("one_thread")


def _grads(g: Gaussians, cams: Cameras, ts: int, W: torch.Tensor):
    leaves = [t.clone().requires_grad_(True) for t in (g.means, g.opacities, g.scales, g.quats, g.colors)]
    c2w = cams.c2w.clone().requires_grad_(True)
    out = render(Gaussians(*leaves), cams.with_c2w(c2w), backend="torch", options=RenderOptions(tile_size=ts))
    loss = (out.rgb * W).sum() + out.alpha.sum() + 0.1 * out.depth.sum()
    grads = torch.autograd.grad(loss, leaves + [c2w])
    return out, grads


@pytest.mark.parametrize("ts", [4, 16, 32])
def test_tile_size_does_not_change_images_or_gradients(fixtures_dir, ts):
    """Scene b (200 Gaussians, 2 views, 64×48: edge tiles are partial for 16 and 32) in float64, against tile 8."""
    meta, T = rh.scene(fixtures_dir, "b")
    d = torch.float64
    g = Gaussians(T["means"].to(d), T["opacities"].to(d), T["scales"].to(d), T["quats"].to(d), T["colors"].to(d))
    Ks = T["Ks"]
    cams = Cameras(torch.linalg.inv(T["viewmats"]), Ks[:, 0, 0], Ks[:, 1, 1], Ks[:, 0, 2], Ks[:, 1, 2],
                   meta["width"], meta["height"]).to(dtype=d)
    W = torch.randn(2, meta["height"], meta["width"], 3, generator=torch.Generator().manual_seed(1), dtype=d)
    ref, gref = _grads(g, cams, 8, W)
    out, gout = _grads(g, cams, ts, W)
    assert out.info["n_intersections"] != ref.info["n_intersections"]  # really a different tiling
    for a, b in ((out.rgb, ref.rgb), (out.alpha, ref.alpha), (out.depth, ref.depth)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    for a, b in zip(gout, gref):
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
