"""Issue 7: ComfyUI native splat interop (SPLAT <-> MVBOOST_GAUSSIANS, File3D output, .ply parsed like core).

The core objects are stand-ins built from the documented field list (comfy_harness.make_comfy_api_2026); the .ply
parser/writer in comfy_harness follow the rules of core's File3DToSplat / SplatToFile3D.
"""
from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from comfy_harness import (  # noqa: F401  (fixtures)
    SH_C0,
    SplatStandIn,
    comfy_env,
    comfy_env_2026,
    parse_gaussian_ply_like_core,
    write_gaussian_ply_like_core,
)

torch.set_num_threads(2)

# Documented tolerances: positions, scales, opacities and quaternions convert exactly (sign flips / permutations);
# colours go through (c - 0.5) / SH_C0 and back in float32, which costs at most a few ulps.
COLOR_TOL = 1e-6


def blob(core, n=200, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(n, 4, generator=gen)
    return core.gaussians.Gaussians(
        means=0.4 * torch.randn(n, 3, generator=gen).clamp(-2, 2),
        opacities=0.05 + 0.9 * torch.rand(n, generator=gen),
        scales=0.005 + 0.04 * torch.rand(n, 3, generator=gen),
        quats=q / q.norm(dim=1, keepdim=True),
        colors=torch.rand(n, 3, generator=gen),
    )


def splat_convert(core):
    return importlib.import_module(core.__name__ + ".splat_convert")


def quat_to_mat(q):
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1).reshape(-1, 3, 3)


def covariance(quats, scales):
    r = quat_to_mat(quats.double())
    return r @ torch.diag_embed(scales.double() ** 2) @ r.transpose(1, 2)


def assert_same_gaussians(a, b, color_tol=COLOR_TOL, atol=0.0):
    assert len(a) == len(b)
    torch.testing.assert_close(a.means, b.means, atol=atol, rtol=0)
    torch.testing.assert_close(a.scales, b.scales, atol=atol, rtol=1e-6 if atol else 0)
    torch.testing.assert_close(a.opacities, b.opacities, atol=max(atol, 1e-7), rtol=0)
    torch.testing.assert_close(covariance(a.quats, a.scales), covariance(b.quats, b.scales), atol=1e-9, rtol=1e-5)
    torch.testing.assert_close(a.colors, b.colors, atol=color_tol, rtol=0)


# ----------------------------------------------------------------------------------------------- 2026 host
def test_round_trip_gaussians_to_splat_to_gaussians_is_exact(comfy_env_2026):
    env = comfy_env_2026
    g = blob(env.core)
    (splat,) = env.run_node("MVBoostToComfySplat", gaussians=g)
    assert isinstance(splat, SplatStandIn)
    n = len(g)
    assert splat.positions.shape == (1, n, 3) and splat.scales.shape == (1, n, 3)
    assert splat.rotations.shape == (1, n, 4) and splat.opacities.shape == (1, n, 1)
    assert splat.sh.shape == (1, n, 1, 3) and splat.positions.dtype == torch.float32
    # conventions core expects: activated opacity / linear scale / SH DC / 3DGS frame (y down): (x, -y, -z)
    assert torch.equal(splat.positions[0], g.means * torch.tensor([1.0, -1.0, -1.0]))
    assert torch.equal(splat.scales[0], g.scales) and torch.equal(splat.opacities[0, :, 0], g.opacities)
    torch.testing.assert_close(splat.sh[0, :, 0], (g.colors - 0.5) / SH_C0)
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
    torch.testing.assert_close(covariance(splat.rotations[0], splat.scales[0]),
                               flip @ covariance(g.quats, g.scales) @ flip, atol=1e-9, rtol=1e-6)
    (back,) = env.run_node("MVBoostFromComfySplat", splat=splat)
    assert_same_gaussians(back, g)
    assert torch.equal(back.means, g.means) and torch.equal(back.scales, g.scales)
    assert torch.equal(back.opacities, g.opacities)
    # without the axis conversion the coordinates pass through unchanged
    (raw,) = env.run_node("MVBoostToComfySplat", gaussians=g, convert_axes=False)
    assert torch.equal(raw.positions[0], g.means)
    (raw_back,) = env.run_node("MVBoostFromComfySplat", splat=raw, convert_axes=False)
    assert_same_gaussians(raw_back, g)


def test_from_splat_handles_padded_batches_and_higher_sh(comfy_env_2026):
    env = comfy_env_2026
    gen = torch.Generator().manual_seed(3)
    b, n, k = 2, 7, 4
    q = torch.randn(b, n, 4, generator=gen)
    splat = SplatStandIn(torch.randn(b, n, 3, generator=gen), torch.rand(b, n, 3, generator=gen) * 0.1,
                         q, torch.rand(b, n, 1, generator=gen), torch.randn(b, n, k, 3, generator=gen),
                         counts=torch.tensor([7, 4]))
    (g,) = env.run_node("MVBoostFromComfySplat", splat=splat, index=1, convert_axes=False)
    assert len(g) == 4
    torch.testing.assert_close(g.means, splat.positions[1, :4])
    torch.testing.assert_close(g.colors, (0.5 + SH_C0 * splat.sh[1, :4, 0]).clamp(0, 1))  # DC only
    torch.testing.assert_close(g.quats, q[1, :4] / q[1, :4].norm(dim=-1, keepdim=True))
    with pytest.raises(ValueError, match="out of range"):
        env.run_node("MVBoostFromComfySplat", splat=splat, index=2)
    empty = SplatStandIn(*(getattr(splat, f) for f in ("positions", "scales", "rotations", "opacities", "sh")),
                         counts=torch.tensor([7, 0]))
    with pytest.raises(ValueError, match="empty"):
        env.run_node("MVBoostFromComfySplat", splat=empty, index=1)
    bad = SplatStandIn(splat.positions, splat.scales[:, :, :2], splat.rotations, splat.opacities, splat.sh)
    with pytest.raises(ValueError, match="scales"):
        env.run_node("MVBoostFromComfySplat", splat=bad)
    nan = splat.positions.clone()
    nan[0, 2, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        env.run_node("MVBoostFromComfySplat", splat=SplatStandIn(nan, splat.scales, splat.rotations,
                                                                 splat.opacities, splat.sh))
    with pytest.raises(TypeError, match="lacks"):
        env.run_node("MVBoostFromComfySplat", splat=torch.zeros(3))


def test_save_gaussians_offers_a_core_file3d_that_core_parses_back(comfy_env_2026):
    env = comfy_env_2026
    cls = env.nodes["MVBoostSaveGaussians"]
    assert tuple(cls.RETURN_TYPES) == ("STRING", "FILE_3D_SPLAT_ANY")
    assert not env.validate_node("MVBoostSaveGaussians")
    g = blob(env.core, n=120, seed=4)
    for axes, flip in (("y_down (3DGS / ComfyUI splat)", True), ("y_up (LGM)", False)):
        path, f3d = env.run_node("MVBoostSaveGaussians", gaussians=g, filename_prefix="interop/g", format="ply_full",
                                 preview=False, prune_opacity=0.0, axes=axes)
        assert f3d.format == "ply" and f3d.get_bytes() == (env.output_dir / path).read_bytes()
        (splat,) = env.run_node("File3DToSplat", model_3d=f3d)  # core's parsing rules
        (back,) = env.run_node("MVBoostFromComfySplat", splat=splat, convert_axes=flip)
        assert_same_gaussians(back, g, color_tol=1e-6, atol=2e-7)


def test_workflow_gaussians_through_core_splat_nodes_and_back(comfy_env_2026):
    env = comfy_env_2026
    g = blob(env.core, n=150, seed=5)
    env.core.splatio.save_ply(g, env.input_dir / "gaussians.ply", prune_opacity=0.0)
    wf = {
        "1": {"class_type": "MVBoostLoadGaussians", "inputs": {"file": "gaussians.ply"}},
        "2": {"class_type": "MVBoostToComfySplat", "inputs": {"gaussians": ["1", 0]}},
        "3": {"class_type": "SplatToFile3D", "inputs": {"splat": ["2", 0], "format": "ply"}},
        "4": {"class_type": "File3DToSplat", "inputs": {"model_3d": ["3", 0]}},
        "5": {"class_type": "MVBoostFromComfySplat", "inputs": {"splat": ["4", 0]}},
        "6": {"class_type": "MVBoostRenderGaussians", "inputs": {
            "gaussians": ["5", 0], "frames": 2, "elevation": 0.0, "radius": 1.5, "fov": 49.1, "resolution": 32,
            "background": "#FFFFFF"}},
        "7": {"class_type": "MVBoostRenderGaussians", "inputs": {
            "gaussians": ["1", 0], "frames": 2, "elevation": 0.0, "radius": 1.5, "fov": 49.1, "resolution": 32,
            "background": "#FFFFFF"}},
        "8": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["7", 0]}},
    }
    res = env.run_workflow(wf)
    assert_same_gaussians(res.output("5", 0), res.output("1", 0), color_tol=1e-6, atol=2e-7)
    # the round trip through core's file format renders the same images
    torch.testing.assert_close(res.output("6", 0), res.output("7", 0), atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------------- .ply like core
@pytest.mark.parametrize("layout", ["lgm", "full", "inria_sh3"])
def test_ply_written_by_us_parsed_with_core_rules_gives_the_same_gaussians(comfy_env, tmp_path, layout):
    core = comfy_env.core
    g = blob(core, n=300, seed=6)
    p = tmp_path / f"g_{layout}.ply"
    core.gaussians.save_ply(g, p, layout=layout, prune_opacity=0.0)
    xyz, scale, rot, opacity, sh = parse_gaussian_ply_like_core(p.read_bytes())
    assert sh.shape == ((300, 16, 3) if layout == "inria_sh3" else (300, 1, 3))  # "full": INRIA at SH degree 0
    if layout == "inria_sh3":
        assert np.all(sh[:, 1:] == 0)  # zero f_rest
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).float()  # noqa: E731
    back = splat_convert(core).from_splat_tensors(t(xyz)[None], t(scale)[None], t(rot)[None],
                                                 t(opacity).reshape(1, -1, 1), t(sh)[None], flip=False)
    # float32 storage of log-scale / logit-opacity is the only loss
    assert_same_gaussians(back, g, color_tol=1e-6, atol=2e-7)


def test_ply_written_with_core_rules_loads_into_our_gaussians(comfy_env, tmp_path):
    """Theirs into ours: a core-written .ply (full SH degree 1) -> load_ply -> Gaussians with the DC colour."""
    core = comfy_env.core
    gen = torch.Generator().manual_seed(7)
    n = 50
    q = torch.randn(n, 4, generator=gen)
    q = q / q.norm(dim=1, keepdim=True)
    sh = torch.randn(n, 4, 3, generator=gen) * 0.5
    pos, scl, opa = torch.randn(n, 3, generator=gen), 0.01 + 0.05 * torch.rand(n, 3, generator=gen), \
        0.05 + 0.9 * torch.rand(n, 1, generator=gen)
    p = tmp_path / "core.ply"
    p.write_bytes(write_gaussian_ply_like_core(pos.numpy(), scl.numpy(), q.numpy(), opa.numpy(), sh.numpy()))
    g = core.gaussians.load_ply(p)
    expect = splat_convert(core).from_splat_tensors(pos[None], scl[None], q[None], opa[None], sh[None], flip=False)
    assert_same_gaussians(g, expect, color_tol=1e-6, atol=2e-7)


# ----------------------------------------------------------------------------------------------- old host
def test_on_comfyui_without_splat_types_every_node_loads_and_interop_explains(comfy_env):
    assert {"MVBoostToComfySplat", "MVBoostFromComfySplat", "MVBoostSaveGaussians",
            "MVBoostLoadGaussians", "MVBoostRenderGaussians"} <= set(comfy_env.nodes)
    assert tuple(comfy_env.nodes["MVBoostSaveGaussians"].RETURN_TYPES) == ("STRING",)
    g = blob(comfy_env.core, n=8)
    with pytest.raises(RuntimeError, match=r"PR #14190.*2026"):
        comfy_env.run_node("MVBoostToComfySplat", gaussians=g)
    with pytest.raises(RuntimeError, match="2026"):
        comfy_env.run_node("MVBoostFromComfySplat", splat="not a splat")
    (path,) = comfy_env.run_node("MVBoostSaveGaussians", gaussians=g, filename_prefix="x", format="spz",
                                 preview=False)
    assert (comfy_env.output_dir / path).exists()


# ------------------------------------------------------------------------------------ example workflow (UI)
def test_native_splat_example_workflow_matches_the_pack(comfy_env_2026):
    """workflows/native_splat_interop.json needs core nodes of a 2026 ComfyUI, so it has no API twin; check that
    its MVBoost nodes exist, their widget counts match INPUT_TYPES and every link touching them has their types."""
    import json

    from comfy_harness import REPO_ROOT, WIDGET_TYPES, _input_spec

    env = comfy_env_2026
    ui = json.loads((REPO_ROOT / "workflows" / "comfyui_2026" / "native_splat_interop.json").read_text())
    assert ui["version"] == 0.4 and "2026" in ui["extra"]["mvboost"]["requires_comfyui"]
    assert (REPO_ROOT / "workflows" / "comfyui_2026" / "native_splat_interop.jpg").exists()
    nodes = {n["id"]: n for n in ui["nodes"]}
    ours = {i: n for i, n in nodes.items() if n["type"].startswith("MVBoost")}
    assert {"MVBoostLGMReconstruct", "MVBoostToComfySplat", "MVBoostFromComfySplat",
            "MVBoostSaveGaussians"} <= {n["type"] for n in ours.values()}
    core_types = {n["type"] for n in nodes.values()} - {n["type"] for n in ours.values()}
    assert {"PreviewGaussianSplat", "SplatToMesh", "SaveGLB", "SplatToFile3D", "File3DToSplat"} <= core_types
    for i, n in ours.items():
        cls = env.nodes[n["type"]]
        it = cls.INPUT_TYPES()
        spec = {**it["required"], **it.get("optional", {})}
        n_widgets = 0
        for name, s in spec.items():
            typ, opts = _input_spec(s)
            if isinstance(typ, list) or typ in WIDGET_TYPES:
                n_widgets += 1 + (typ == "INT" and (name in ("seed", "noise_seed") or
                                                    bool(opts.get("control_after_generate"))))
        assert len(n["widgets_values"]) == n_widgets, n["type"]
        assert [o["type"] for o in n["outputs"]] == list(cls.RETURN_TYPES), n["type"]
        sockets = {k: _input_spec(v)[0] for k, v in spec.items()}
        for inp in n["inputs"]:
            assert inp["type"] == sockets[inp["name"]], (n["type"], inp["name"])
    for lid, src, sslot, dst, dslot, typ in ui["links"]:
        assert nodes[src]["outputs"][sslot]["type"] == typ
        if dst in ours:
            assert nodes[dst]["inputs"][dslot]["type"] == typ


@pytest.mark.parametrize("fmt,pos_tol,col_tol,op_tol,scale_rtol,cov_tol", [
    ("ply_full", 2e-7, 1e-6, 1e-6, 1e-6, 1e-6),
    ("splat", 0.0, 2.5e-3, 2.5e-3, 1e-6, 5e-3),
    ("spz", 2e-4, 5e-3, 2.5e-3, 3.5e-2, 5e-3),
])
def test_every_saved_format_parsed_by_core_rules_matches(comfy_env_2026, fmt, pos_tol, col_tol, op_tol, scale_rtol,
                                                         cov_tol):
    """Save Gaussians (axes y_down) -> model_3d -> core Get Splat rules -> From ComfyUI Splat == the input, within
    each format's quantisation (.splat: u8 colour/opacity/rotation; .spz: 12-bit fixed point, u8 everything)."""
    env = comfy_env_2026
    g = blob(env.core, n=80, seed=9)
    g = g.replace(colors=g.colors.clamp(0.1, 0.9))  # spz colour bytes saturate near 0 / 1
    _, f3d = env.run_node("MVBoostSaveGaussians", gaussians=g, filename_prefix="fmt/g", format=fmt, preview=False,
                          prune_opacity=0.0, axes="y_down (3DGS / ComfyUI splat)")
    (splat,) = env.run_node("File3DToSplat", model_3d=f3d)
    (back,) = env.run_node("MVBoostFromComfySplat", splat=splat)
    assert len(back) == len(g)
    g = g[torch.cdist(back.means, g.means).argmin(dim=1)]  # .splat sorts its records
    torch.testing.assert_close(back.means, g.means, atol=pos_tol, rtol=0)
    torch.testing.assert_close(back.colors, g.colors, atol=col_tol, rtol=0)
    torch.testing.assert_close(back.opacities, g.opacities, atol=op_tol, rtol=0)
    torch.testing.assert_close(back.scales, g.scales, rtol=scale_rtol, atol=2e-8)  # ply: log(s + 1e-8)
    dots = (back.quats * g.quats).sum(-1).abs()
    assert float(dots.min()) > 1 - cov_tol, float(dots.min())
