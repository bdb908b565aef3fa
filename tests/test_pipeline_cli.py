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
                                                                                     monkeypatch):
    monkeypatch.setattr(sys, "stdin", open("/dev/null"))
    with pytest.raises(SystemExit) as e:
        cli.main(["generate", str(example_png), "-o", str(tmp_path / "o"), "--models-dir", str(tmp_path / "none"),
                  "--device", "cpu"])
    msg = str(e.value)
    assert "mvboost download lgm" in msg and "mvboost download era3d" in msg
    assert not (tmp_path / "o").exists()


def test_generate_refuses_images_without_alpha(tmp_path):
    p = tmp_path / "rgb.jpg"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(p)
    with pytest.raises(SystemExit, match="no alpha channel"):
        cli.main(["generate", str(p), "-o", str(tmp_path / "o"), "--device", "cpu"])


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
    with pytest.raises(SystemExit):
        cli.resolve_device("tpu")
