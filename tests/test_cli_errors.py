"""The ``mvboost`` command as a person meets it, through the real console entry (``python -m mvboost_core`` in a
subprocess): every user error is one ``error: <problem>. <fix>`` line, status 2, no traceback, and found before any
model loads (no "Loading" line, quick exit); the commands it names work as printed."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mvboost_core.selftest import build_tiny_lgm, example_image

REPO = Path(__file__).resolve().parents[1]


def run(*args, env=None, stdin=subprocess.DEVNULL, cwd=None, timeout=120):
    e = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", **(env or {})}
    e.pop("MVBOOST_LAUNCHER", None) if "MVBOOST_LAUNCHER" not in (env or {}) else None
    t = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "mvboost_core", *map(str, args)], capture_output=True, text=True,
                       env=e, stdin=stdin, cwd=cwd or REPO, timeout=timeout)
    return p.returncode, p.stdout, p.stderr, time.monotonic() - t


def one_error(rc, out, err, secs, *, want):
    assert rc == 2, (rc, out, err)
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err + out and "Loading" not in out, (out, err)
    assert want in lines[0], (want, lines[0])
    assert secs < 60, secs  # validation only (a model load plus Era3D would be minutes to hours)
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    Image.fromarray(example_image(96)).save(d / "thing.png")
    Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(d / "empty.png")
    speck = np.zeros((64, 64, 4), np.uint8)
    speck[30, 30] = 255
    Image.fromarray(speck).save(d / "speck.png")
    Image.new("RGB", (32, 32)).save(d / "rgb.jpg")
    (d / "notimage.png").write_text("hello")
    lgm = build_tiny_lgm(d / "lgm" / "tiny.safetensors")
    (d / "bad.safetensors").write_bytes(b"\x80\x02garbage")
    return d, lgm


@pytest.mark.parametrize("extra,want", [
    (["--steps", "-1"], "argument --steps: must be an integer between 1 and 1000, got -1"),
    (["--steps", "0"], "argument --steps"),
    (["--frames", "0"], "argument --frames: must be an integer between 1 and 720"),
    (["--guidance", "nan"], "argument --guidance"),
    (["--device", "tpu"], "argument --device: invalid choice"),
])
def test_argument_ranges(files, tmp_path, extra, want):
    d, _ = files
    line = one_error(*run("generate", d / "thing.png", "-o", tmp_path / "o", *extra), want=want)
    assert "generate --help" in line


@pytest.mark.parametrize("image,want", [
    ("missing.png", "does not exist"),
    (".", "is a directory, not a file"),
    ("rgb.jpg", "has no alpha channel"),
    ("empty.png", "is fully transparent"),
    ("speck.png", "is only 1x1 pixels"),
    ("notimage.png", "cannot read"),
])
def test_bad_images_are_refused_first(files, tmp_path, image, want):
    d, _ = files
    one_error(*run("generate", d / image, "-o", tmp_path / "o", "--models-dir", tmp_path / "m"), want=want)
    assert not (tmp_path / "o").exists() and not (tmp_path / "m").exists()


def test_output_and_weight_files(files, tmp_path):
    d, lgm = files
    img = d / "thing.png"
    (tmp_path / "afile").write_text("x")
    one_error(*run("generate", img, "-o", tmp_path / "afile"), want="is a file, not a folder")
    one_error(*run("generate", img, "-o", tmp_path / "o", "--lora", tmp_path / "none.safetensors"),
              want="LoRA")
    one_error(*run("generate", img, "-o", tmp_path / "o", "--lgm", "typo.safetensors", "--models-dir", tmp_path),
              want="'typo.safetensors' does not exist")
    one_error(*run("generate", img, "-o", tmp_path / "o", "--lgm", d / "bad.safetensors", "--era3d", tmp_path),
              want="not an Era3D diffusers folder")
    assert not (tmp_path / "o").exists()  # the output folder made for the probe is removed again
    if os.geteuid() != 0:  # root can write anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        one_error(*run("generate", img, "-o", ro / "o"), want="cannot write to output folder")


def test_missing_weights_without_terminal_names_working_commands(files, tmp_path):
    d, _ = files
    m = tmp_path / "models"
    line = one_error(*run("generate", d / "thing.png", "-o", tmp_path / "o", "--models-dir", m),
                     want="the official weights for LGM (~830 MB) and Era3D (~6 GB) are not in")
    prog = f"{os.path.relpath(sys.executable, REPO) if sys.executable.startswith(str(REPO)) else sys.executable}" \
        " -m mvboost_core"
    assert f"`{prog} download lgm --models-dir {m} && {prog} download era3d --models-dir {m}`" in line
    assert "re-run this command with --yes" in line
    # launched from scripts/main.sh (which exports MVBOOST_LAUNCHER): the fix names that script
    line = one_error(*run("generate", d / "thing.png", "-o", tmp_path / "o", "--models-dir", m,
                          env={"MVBOOST_LAUNCHER": "bash scripts/main.sh"}), want="run `bash scripts/main.sh --yes`")
    # the printed command runs as printed (here offline: its own one-line error, fast, nothing left behind)
    t = time.monotonic()
    rc, out, err, _ = run(*f"download lgm --models-dir {m}".split())
    assert rc == 2 and err.count("\n") == 1 and "HF_HUB_OFFLINE" in err and time.monotonic() - t < 30
    assert not m.exists()


def test_lora_checked_against_the_lgm_header_before_era3d(files, tmp_path):
    import torch

    from mvboost_core.boost import lora as L
    from mvboost_core.lgm import LGM, get_config

    d, lgm = files
    era = tmp_path / "era3d"  # a folder that passes the Era3D pre-check: the LoRA check comes next, before loading
    era.mkdir()
    (era / "model_index.json").write_text("{}")
    other = LGM(get_config("tiny"))
    L.inject_lora(other, rank=2)
    L.save_adapter(other, tmp_path / "tiny_lora.safetensors", base_checksum="x")
    one_error(*run("generate", d / "thing.png", "-o", tmp_path / "o", "--lgm", lgm, "--lora",
                   tmp_path / "tiny_lora.safetensors", "--no-pose", "--era3d", era), want="was trained on LGM config 'tiny'")
    (tmp_path / "plain.safetensors").write_bytes((d / "lgm" / "tiny.safetensors").read_bytes())
    one_error(*run("generate", d / "thing.png", "-o", tmp_path / "o", "--lgm", lgm, "--lora",
                   tmp_path / "plain.safetensors", "--no-pose", "--era3d", era), want="Not an MVBoost LGM LoRA adapter")
    del torch


def test_boost_commands_and_download(files, tmp_path):
    d, lgm = files
    one_error(*run("train-lora", "--data", tmp_path / "nope", "--lgm", lgm, "--out", tmp_path / "a.safetensors"),
              want="does not exist")
    (tmp_path / "ds").mkdir()
    one_error(*run("train-lora", "--data", tmp_path / "ds", "--lgm", lgm, "--out", tmp_path / "a.safetensors"),
              want="holds no complete samples")
    one_error(*run("train-lora", "--data", tmp_path / "ds", "--lgm", lgm, "--out", "a.safetensors", "--rank", "0"),
              want="argument --rank")
    one_error(*run("boost-data", "--synthetic", "0", "--out", tmp_path / "x"), want="argument --synthetic")
    one_error(*run("boost-data", "--images", tmp_path / "ds", "--out", tmp_path / "x"), want="No images")
    one_error(*run("download", "vgg"), want="invalid choice: 'vgg'")


def test_train_lora_without_lpips_weights_names_the_options(tmp_path):
    """A real (synthetic) dataset: train-lora stops in one line before loading LGM when the LPIPS trunk is absent."""
    lgm = build_tiny_lgm(tmp_path / "lgm.safetensors")
    rc, out, err, _ = run("boost-data", "--synthetic", "1", "--size", "32", "--views", "2", "--out", tmp_path / "ds",
                          "--device", "cpu")
    assert rc == 0, err
    line = one_error(*run("train-lora", "--data", tmp_path / "ds", "--lgm", lgm, "--out", tmp_path / "a.safetensors",
                          "--models-dir", tmp_path / "models", env={"TORCH_HOME": str(tmp_path / "th")}),
                     want="train-lora's LPIPS loss needs the VGG16 weights")
    assert "download lpips --models-dir" in line and "--lpips-weights FILE" in line and "--lpips-random" in line


def test_debug_shows_the_traceback(files, tmp_path):
    d, _ = files
    rc, out, err, _ = run("generate", d / "empty.png", "-o", tmp_path / "o", "--debug")
    assert rc != 0 and "Traceback" in err and "UserError" in err
