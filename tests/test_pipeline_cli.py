"""End to end and the ``mvboost`` CLI: selftest (whole chain on tiny real-format checkpoints), generate with tiny
checkpoints, missing weights without a terminal, images without alpha, the optional boost sub-commands."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from mvboost_core import cli
from mvboost_core.selftest import build_tiny_era3d, build_tiny_lgm, example_image


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    era3d_dir, _ = build_tiny_era3d(root / "era3d" / "tiny")
    lgm = build_tiny_lgm(root / "lgm" / "tiny.safetensors")
    return root, era3d_dir, lgm


@pytest.fixture()
def example_png(tmp_path) -> Path:
    p = tmp_path / "thing.png"
    Image.fromarray(example_image(96)).save(p)
    return p


def test_selftest_runs_the_whole_chain_and_says_it_is_meaningless(tmp_path, capsys):
    assert cli.main(["selftest", "--keep", str(tmp_path / "st")]) == 0
    out = capsys.readouterr().out
    assert "meaningless" in out and "selftest OK" in out
    o = tmp_path / "st" / "output"
    from mvboost_core.gaussians import load_ply

    g = load_ply(o / "selftest.ply")
    assert 0 < len(g) <= 4096 and torch.isfinite(g.means).all()
    assert (o / "selftest.splat").stat().st_size == 32 * len(g)
    gif = Image.open(o / "selftest_turntable.gif")
    assert getattr(gif, "n_frames", 1) == 8
    assert len(list((o / "selftest_turntable").glob("frame_*.png"))) == 8
    # the checkpoints are in the real formats: the public loaders read them back
    from mvboost_core.lgm import load_lgm

    assert load_lgm(tmp_path / "st" / "models" / "lgm" / "tiny_lgm_micro.safetensors").config.name == "micro"
    assert (tmp_path / "st" / "models" / "era3d" / "tiny-era3d" / "unet" / "diffusion_pytorch_model.safetensors"
            ).is_file()
    assert not list(tmp_path.rglob("*.tmp*"))  # atomic writes leave no temp files


def test_generate_with_tiny_checkpoints(tiny_models, example_png, tmp_path, capsys):
    root, era3d_dir, lgm = tiny_models
    out = tmp_path / "out"
    rc = cli.main(["generate", str(example_png), "-o", str(out), "--device", "cpu", "--lgm", str(lgm), "--era3d",
                   str(era3d_dir), "--steps", "1", "--no-pose", "--frames", "3", "--turntable-size", "24",
                   "--models-dir", str(root)])
    assert rc == 0
    for name in ("thing.ply", "thing.splat", "thing_turntable.gif", "thing_turntable/frame_002.png"):
        assert (out / name).is_file(), name
    assert "Wrote" in capsys.readouterr().out


def test_generate_without_weights_and_without_a_terminal_names_the_download_command(example_png, tmp_path,
                                                                                     monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", open("/dev/null"))
    assert cli.main(["generate", str(example_png), "-o", str(tmp_path / "o"), "--models-dir", str(tmp_path / "none"),
                     "--device", "cpu"]) == 2
    msg = capsys.readouterr().err
    assert "download lgm" in msg and "download era3d" in msg and msg.count("\n") == 1
    assert not (tmp_path / "o").exists() and not (tmp_path / "none").exists()


def test_generate_refuses_images_without_alpha(tmp_path, capsys):
    p = tmp_path / "rgb.jpg"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(p)
    assert cli.main(["generate", str(p), "-o", str(tmp_path / "o"), "--device", "cpu"]) == 2
    assert "no alpha channel" in capsys.readouterr().err


def test_download_offline_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cli.main(["download", "lgm", "--models-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "huggingface.co/ashawkey/LGM" in err and str(tmp_path / "lgm") in err


def test_optional_boost_commands_never_break_the_cli(monkeypatch):
    names = cli.build_parser()._subparsers._group_actions[0].choices
    assert {"download", "generate", "selftest"} <= set(names)
    real = importlib.import_module

    def missing(name, package=None):
        if name == ".boost.cli":
            raise ModuleNotFoundError("No module named 'mvboost_core.boost.cli'", name="mvboost_core.boost.cli")
        return real(name, package)

    monkeypatch.setattr(cli.importlib, "import_module", missing)
    names = cli.build_parser()._subparsers._group_actions[0].choices
    assert "boost-data" not in names and "generate" in names

    def broken(name, package=None):
        if name == ".boost.cli":
            raise RuntimeError("boom")
        return real(name, package)

    monkeypatch.setattr(cli.importlib, "import_module", broken)
    assert "selftest" in cli.build_parser()._subparsers._group_actions[0].choices


def test_device_resolution():
    assert cli.resolve_device("cpu").type == "cpu"
    assert cli.resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(cli.UserError, match="unknown device"):
        cli.resolve_device("tpu")


# ------------------------------------------------------------------------------ ComfyUI nodes and workflows
from comfy_harness import comfy_env  # noqa: E402,F401  (pytest fixture)

REPO = Path(__file__).resolve().parents[1]


def _install_tiny(env):
    import shutil

    build_tiny_era3d(env.models_dir / "era3d" / "tiny-era3d")
    build_tiny_lgm(env.models_dir / "lgm" / "tiny.safetensors")
    shutil.copy(REPO / "workflows" / "mvboost_example.png", env.input_dir / "mvboost_example.png")


FAST = {
    "2": {"model": "tiny-era3d", "dtype": "fp32"},
    "3": {"steps": 1},
    "4": {"ckpt_name": "tiny.safetensors", "dtype": "fp32"},
    "5": {"preview_frames": 1, "preview_size": 64},
    "6": {"pose_iterations": 2, "lm_iterations": 1, "adjust_iterations": 1, "resolution": 32,
          "lpips_pretrained": False, "search_steps": 1},
    "7": {"preview_size": 64},
    "8": {"frames": 2, "resolution": 32},
}


def test_refine_views_workflow_runs_with_tiny_checkpoints(comfy_env):
    """workflows/api/mvboost_refine_views.json = the image-to-3D workflow (a) plus Refine Views previews."""
    _install_tiny(comfy_env)
    res = comfy_env.run_workflow("workflows/api/mvboost_refine_views.json",
                                 overrides={**FAST, "11": {"steps": 2, "strength": 0.5}})
    g, cam = res.output("6", 0), res.output("6", 1)
    assert len(g) > 0 and len(cam) == 1 and cam.projection == "perspective"
    before, after, target = res.output("6", 2), res.output("6", 3), res.output("6", 4)
    assert before.shape == after.shape == target.shape and before.shape[-1] == 3
    assert (comfy_env.output_dir / res.output("7", 0)).is_file()  # the .ply
    mv = res.output("11", 0)
    assert mv.colors.images.shape == (6, 64, 64, 3) and mv.info["denoise_steps"] == 1
    assert res.output("11", 1).shape == (6, 64, 64, 3)  # renders before refinement
    assert res.ui["12"]["images"] and res.ui["13"]["images"] and res.ui["9"]["images"]
    assert any(t > 0 for _, t in comfy_env.progress)


def test_image_to_3d_workflow_runs_and_ui_twins_match(comfy_env):
    import json

    _install_tiny(comfy_env)
    res = comfy_env.run_workflow("workflows/api/mvboost_image_to_3d.json", overrides=FAST)
    assert (comfy_env.output_dir / res.output("7", 0)).is_file()
    assert res.ui["9"]["images"] and res.ui["10"]["images"]
    for name in ("mvboost_image_to_3d", "mvboost_refine_views"):
        ui = json.loads((REPO / "workflows" / f"{name}.json").read_text())
        twin = json.loads((REPO / "workflows" / "api" / f"{name}.json").read_text())
        assert {str(n["id"]) for n in ui["nodes"]} == set(twin)
        assert {n["type"] for n in ui["nodes"]} <= set(comfy_env.nodes) | {"LoadImage", "PreviewImage", "SaveImage"}
        assert (REPO / "workflows" / f"{name}.jpg").is_file()
        models = [m for n in ui["nodes"] for m in n["properties"].get("models", [])] + ui.get("models", [])
        assert {m["directory"] for m in models} == {"lgm", "era3d", "lpips"}
        (lp,) = [m for m in ui["models"] if m["directory"] == "lpips"]  # the pose step's VGG16, a .safetensors
        assert lp == {"name": "vgg16.tv_in1k.safetensors", "directory": "lpips",
                      "url": "https://huggingface.co/timm/vgg16.tv_in1k/resolve/main/model.safetensors"}
        assert all(m["url"].startswith("https://huggingface.co/") and m["name"] for m in models)


def test_pose_node_interrupts_and_refuses_missing_input(comfy_env):
    core = comfy_env.core
    g = core.gaussians.Gaussians(torch.rand(50, 3) - 0.5, torch.full((50,), 0.8), torch.full((50, 3), 0.05),
                                 torch.tensor([1.0, 0, 0, 0]).expand(50, 4).clone(), torch.rand(50, 3))
    w = dict(pose_search=True, pose_refine=True, adjust_gaussians=True, pose_iterations=2, lm_iterations=0,
             adjust_iterations=1, pose_lr=0.01, color_lr=0.01, opacity_lr=0.05, resolution=32, search_range=5.0,
             search_steps=1)
    with pytest.raises(ValueError, match="needs the input view"):
        comfy_env.run_node("MVBoostOptimizeInputPose", gaussians=g, **w)
    img = torch.ones(1, 32, 32, 3)
    img[:, 8:24, 8:24] = 0.3
    out = comfy_env.run_node("MVBoostOptimizeInputPose", gaussians=g, image=img, lpips_pretrained=False, **w)
    assert len(out) == 5 and out[2].shape == (1, 32, 32, 3)
    n_updates = len(comfy_env.progress)
    assert n_updates >= 1 + 2 + 1  # search batch, pose steps, adjust step
    assert comfy_env.progress[-1][0] == comfy_env.progress[-1][1]  # ends at 100 %
    comfy_env.interrupt()
    with pytest.raises(comfy_env.InterruptProcessingException):
        comfy_env.run_node("MVBoostOptimizeInputPose", gaussians=g, image=img, lpips_pretrained=False, **w)


@pytest.mark.slow
def test_generate_with_pose_uses_the_lpips_file_of_its_models_dir(tiny_models, example_png, tmp_path, capsys,
                                                                   monkeypatch):
    """--models-dir's lpips/vgg16.tv_in1k.safetensors reaches the pose step (real-format file, random values)."""
    from lpips_helpers import write_vgg16_safetensors

    from mvboost_core import metrics

    root, era3d_dir, lgm = tiny_models
    models = tmp_path / "models"
    f = models / "lpips" / "vgg16.tv_in1k.safetensors"
    write_vgg16_safetensors(f)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    seen = []
    real = metrics.LPIPSLoss._backbone_path
    monkeypatch.setattr(metrics.LPIPSLoss, "_backbone_path",
                        staticmethod(lambda *a: seen.append(real(*a)) or seen[-1]))
    rc = cli.main(["generate", str(example_png), "-o", str(tmp_path / "out"), "--device", "cpu", "--lgm", str(lgm),
                   "--era3d", str(era3d_dir), "--steps", "1", "--frames", "2", "--turntable-size", "24",
                   "--models-dir", str(models)])
    assert rc == 0
    out = capsys.readouterr()
    assert seen and set(seen) == {f}
    assert "LPIPS" in out.out and "fallback" not in out.err


@pytest.mark.slow
def test_generate_without_lpips_weights_says_the_pose_step_falls_back(tiny_models, example_png, tmp_path, capsys,
                                                                      monkeypatch):
    from mvboost_core.pose import PoseOptions

    root, era3d_dir, lgm = tiny_models
    monkeypatch.setattr(sys, "stdin", open("/dev/null"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    rc = cli.main(["generate", str(example_png), "-o", str(tmp_path / "out"), "--device", "cpu", "--lgm", str(lgm),
                   "--era3d", str(era3d_dir), "--steps", "1", "--frames", "2", "--turntable-size", "24",
                   "--models-dir", str(tmp_path / "models")])
    assert rc == 0
    err = capsys.readouterr().err
    notes = [x for x in err.splitlines() if "LPIPS VGG16" in x]
    assert len(notes) == 1 and "fallback loss" in notes[0] and "download lpips --models-dir" in notes[0]
