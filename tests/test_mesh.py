"""Export Mesh: mvboost_core.mesh (surface accuracy, colours, files), the CLI/pipeline option, the ComfyUI node, and
the .glb checked by the Khronos validator and drawn by three.js' GLTFLoader (what ComfyUI's Preview3D uses)."""
from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import torch

from comfy_harness import comfy_env  # noqa: F401  (pytest fixture)
from mvboost_core.mesh import MeshOptions, gaussians_to_mesh, save_mesh
from mvboost_core.mesh_scenes import surface_scene


@pytest.fixture(scope="module")
def torus():
    g, gt = surface_scene("torus", 5000, seed=1)
    return g, gt, gaussians_to_mesh(g, resolution=72, max_faces=20_000)


def test_mesh_follows_the_surface_with_its_colours(torus):
    import trimesh
    from scipy.spatial import cKDTree

    g, gt, m = torus
    assert m.vertices.dtype == np.float32 and m.faces.dtype == np.int64 and m.colors.shape == m.vertices.shape
    assert 1000 < len(m.faces) <= 20_000
    pts = trimesh.sample.sample_surface(m.to_trimesh(), 10000, seed=0)[0]
    gts = trimesh.sample.sample_surface(gt, 10000, seed=1)[0]
    d1, d2 = cKDTree(gts).query(pts)[0], cKDTree(pts).query(gts)[0]
    assert 0.5 * (d1.mean() + d2.mean()) < 0.03  # object size ≈ 1
    assert (d1 < 0.05).mean() > 0.97 and (d2 < 0.05).mean() > 0.97
    # vertex colours = the Gaussians' colours there (the scene colours by position: 0.5 + 0.8 p)
    expect = np.clip(0.5 + 0.8 * m.vertices, 0, 1)
    assert float(np.abs(m.colors - expect).mean()) < 0.03
    # faces are wound to face away from the dense material (normals point out of the slab of Gaussians)
    tm = m.to_trimesh()
    c = tm.triangles_center
    dense = trimesh.sample.sample_surface(gt, 100000, seed=2)[0]
    _, i = cKDTree(dense).query(c)
    assert float((((c - dense[i]) * tm.face_normals).sum(1) > 0).mean()) > 0.95


def test_mesh_files_and_bad_input(tmp_path, torus):
    import trimesh

    _, _, m = torus
    save_mesh(m, tmp_path / "m.glb")
    save_mesh(m, tmp_path / "m.obj")
    glb = trimesh.load(tmp_path / "m.glb", force="mesh")
    assert len(glb.faces) == len(m.faces) and glb.visual.kind == "vertex"
    obj = trimesh.load(tmp_path / "m.obj", force="mesh", process=False)
    assert len(obj.faces) == len(m.faces)
    np.testing.assert_allclose(obj.visual.vertex_colors[:, :3] / 255.0, m.colors, atol=1 / 255 + 1e-6)
    with pytest.raises(ValueError, match="mesh format"):
        save_mesh(m, tmp_path / "m.stl")
    g, _, _ = torus
    with pytest.raises(ValueError, match="never reaches level"):
        gaussians_to_mesh(g, resolution=32, level=50.0)
    with pytest.raises(ValueError, match="resolution"):
        gaussians_to_mesh(g, MeshOptions(resolution=4))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.glb", "m.obj"]  # nothing half-written


def test_write_outputs_and_cli_flag(tmp_path, torus):
    from mvboost_core.cli import build_parser
    from mvboost_core.pipeline import write_outputs

    g, _, _ = torus
    paths = write_outputs(g, tmp_path, "thing", mesh=("glb", "obj"))
    assert paths["glb"].is_file() and paths["obj"].is_file() and paths["ply"].is_file()
    args = build_parser().parse_args(["generate", "x.png", "-o", "out", "--mesh", "glb", "--mesh", "obj"])
    assert args.mesh == ["glb", "obj"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["generate", "x.png", "-o", "out", "--mesh", "stl"])


def test_export_mesh_node_saves_into_output(comfy_env):
    import importlib

    scenes = importlib.import_module(comfy_env.core.__name__ + ".mesh_scenes")  # the pack's own Gaussians class
    g, _ = scenes.surface_scene("box", 3000)
    cls = comfy_env.nodes["MVBoostExportMesh"]
    assert not comfy_env.validate_node("MVBoostExportMesh")
    (rel,) = comfy_env.run_node("MVBoostExportMesh", gaussians=g, filename_prefix="mesh/box", format="glb",
                                resolution=48, max_faces=5000)
    assert rel == "mesh/box_00001_.glb" and (comfy_env.output_dir / rel).is_file()
    assert any(t.startswith("Export Mesh: saved mesh/box_00001_.glb") for _, t in comfy_env.texts), comfy_env.texts
    (rel2,) = comfy_env.run_node("MVBoostExportMesh", gaussians=g, filename_prefix="mesh/box", format="obj",
                                 resolution=48)
    assert rel2.endswith(".obj") and (comfy_env.output_dir / rel2).read_text().startswith("#")
    with pytest.raises(Exception, match="outside"):
        comfy_env.run_node("MVBoostExportMesh", gaussians=g, filename_prefix="../escape", format="glb")
    assert cls.define_schema().display_name == "MVBoost: Export Mesh"


def test_mesh_glb_is_validator_clean_and_upright_in_threejs(tmp_path, chromium_browser):
    """Khronos validator: no errors or warnings (Blender's importer follows glTF), COLOR_0 present; three.js'
    GLTFLoader (ComfyUI's Preview3D/Load3D) draws it with its colours, upright, matching our splat render."""
    from viewer_helpers import JS_DIR, best_orientation, npm_packages_missing, render_in_viewer, serve

    from mvboost_core.cameras import Cameras
    from mvboost_core.render import render
    from test_formats_viewers import letter_f

    missing = npm_packages_missing()
    node = shutil.which("node")
    if missing or node is None:
        pytest.fail(missing or "node not found: apt-get install nodejs npm (scripts/test.sh does)")
    g = letter_f()
    g = g.replace(scales=g.scales * torch.tensor([1.0, 1.0, 2.0]))  # a little depth for the iso-surface
    m = gaussians_to_mesh(g, resolution=96, level=0.5)
    save_mesh(m, tmp_path / "f.glb")
    r = subprocess.run([node, str(JS_DIR / "validate_gltf.mjs"), str(tmp_path / "f.glb")], capture_output=True,
                       text=True, timeout=60)
    report = json.loads(r.stdout)
    assert report["issues"]["numErrors"] == 0 and report["issues"]["numWarnings"] == 0, report["issues"]
    size = 160
    with serve(tmp_path) as url:
        shot = render_in_viewer(chromium_browser, url, "f.glb", "three_gltf", (0, 0, 1.5), size=size)
    cams = Cameras.orbit([0.0], [0.0], radius=1.5, fovy_deg=49.1, width=size, height=size)
    with torch.no_grad():
        ours = render(g, cams, background=(1.0, 1.0, 1.0)).rgb[0].clamp(0, 1).double().numpy()
    best, scores = best_orientation(shot, ours)
    assert best == "identity" and scores["identity"] > 18.0 and scores["identity"] - max(
        v for k, v in scores.items() if k != "identity") > 5.0, scores
