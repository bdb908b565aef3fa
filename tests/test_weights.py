"""Models-dir resolution and explicit downloads (offline / unreachable hub -> clear errors; no real network)."""
from __future__ import annotations

import pytest

from mvboost_core import weights
from mvboost_core.weights import WeightsUnavailableError


def test_models_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("MVBOOST_MODELS_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    if weights.sys.platform.startswith("linux"):
        assert weights.default_models_dir() == tmp_path / "cache" / "mvboost" / "models"
    monkeypatch.setenv("MVBOOST_MODELS_DIR", str(tmp_path / "env"))
    assert weights.default_models_dir() == tmp_path / "env"
    assert weights.resolve_models_dir() == tmp_path / "env"
    assert weights.resolve_models_dir(tmp_path / "cli") == tmp_path / "cli"  # --models-dir wins
    assert weights.model_folder("lgm", tmp_path / "cli") == tmp_path / "cli" / "lgm"
    with pytest.raises(ValueError, match="unknown model folder"):
        weights.model_folder("vae")


def test_lgm_variants():
    assert weights.lgm_filename() == "model_fp16_fixrot.safetensors"
    assert weights.lgm_filename("fixrot") == "model_fixrot.safetensors"
    assert weights.lgm_filename("model_fp16.safetensors") == "model_fp16.safetensors"
    with pytest.raises(ValueError, match="Unknown LGM variant"):
        weights.lgm_filename("huge")


def test_download_lgm_offline_names_file_repo_and_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError) as e:
        weights.download_lgm("fp16_fixrot", tmp_path)
    msg = str(e.value)
    assert "model_fp16_fixrot.safetensors" in msg and "ashawkey/LGM" in msg and str(tmp_path / "lgm") in msg
    # a file already in place is returned without touching the network
    (tmp_path / "lgm").mkdir()
    f = tmp_path / "lgm" / "model_fp16_fixrot.safetensors"
    f.write_bytes(b"x")
    assert weights.download_lgm("fp16_fixrot", tmp_path) == f
    assert weights.find_lgm_checkpoint(None, tmp_path) == f
    assert weights.find_lgm_checkpoint(str(f)) == f


def test_find_missing_checkpoint_says_where(tmp_path):
    with pytest.raises(WeightsUnavailableError, match=r"model_fixrot.safetensors.*not found in .*lgm.*ashawkey/LGM"):
        weights.find_lgm_checkpoint("fixrot", tmp_path)


def test_download_era3d_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dest = tmp_path / "era3d" / "MacLab-Era3D-512-6view"
    with pytest.raises(WeightsUnavailableError) as e:
        weights.download_era3d(tmp_path)
    assert "pengHTYX/MacLab-Era3D-512-6view" in str(e.value) and str(dest) in str(e.value)
    dest.mkdir(parents=True)
    (dest / "model_index.json").write_text("{}")
    assert weights.download_era3d(tmp_path) == dest


# ------------------------------------------------------------------ downloads through a loopback stand-in of the Hub
import os  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402

from hub_server import HubServer  # noqa: E402

ERA3D_FILES = {"model_index.json": b'{"_class_name": "MVDiffusionImagePipeline"}',
               "unet/diffusion_pytorch_model.safetensors": os.urandom(200_000), "vae/config.json": b"{}"}
LGM_BYTES = os.urandom(50_000)
LPIPS_BYTES = os.urandom(60_000)
REPOS = {weights.ERA3D_REPO: ERA3D_FILES, weights.LGM_REPO: {"model_fp16_fixrot.safetensors": LGM_BYTES},
         weights.LPIPS_REPO: {"model.safetensors": LPIPS_BYTES}}


@pytest.fixture()
def online(monkeypatch):
    """The suite runs with HF_HUB_OFFLINE=1 (conftest); these tests talk to a loopback Hub only."""
    import huggingface_hub.constants as hc

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_downloads_land_complete_and_readable(tmp_path, online):
    models = tmp_path / "models"
    with HubServer(REPOS) as hub:
        lgm = weights.download_lgm(models_dir=models, endpoint=hub.url)
        lp = weights.download("lpips", models, endpoint=hub.url)
        era = weights.download_era3d(models_dir=models, endpoint=hub.url)
    assert lgm.read_bytes() == LGM_BYTES and lp.read_bytes() == LPIPS_BYTES
    assert lp == models / "lpips" / "vgg16.tv_in1k.safetensors" == weights.lpips_weights_file(models)
    assert era == models / "era3d" / weights.ERA3D_FOLDER and weights.era3d_complete(era)
    assert {f: (era / f).read_bytes() for f in ERA3D_FILES} == ERA3D_FILES
    # no staging folder, no huggingface_hub bookkeeping (.cache/huggingface/*.lock) anywhere
    assert _tree(models) == sorted(["lgm", "lgm/model_fp16_fixrot.safetensors", "lpips",
                                    "lpips/vgg16.tv_in1k.safetensors", "era3d", "era3d/MacLab-Era3D-512-6view",
                                    "era3d/MacLab-Era3D-512-6view/model_index.json",
                                    "era3d/MacLab-Era3D-512-6view/unet",
                                    "era3d/MacLab-Era3D-512-6view/unet/diffusion_pytorch_model.safetensors",
                                    "era3d/MacLab-Era3D-512-6view/vae", "era3d/MacLab-Era3D-512-6view/vae/config.json"])
    assert all(os.stat(p).st_mode & 0o044 == 0o044 for p in models.rglob("*"))  # group/other can read
    assert weights.find_lgm_checkpoint(None, models) == lgm


def test_a_download_failing_midway_leaves_nothing_behind(tmp_path, online):
    models = tmp_path / "models"
    broken = {"model_fp16_fixrot.safetensors", "unet/diffusion_pytorch_model.safetensors", "model.safetensors"}
    with HubServer(REPOS, broken=broken) as hub:
        for what in ("lgm", "era3d", "lpips"):
            with pytest.raises(WeightsUnavailableError, match="peer closed connection|incomplete|Remote"):
                weights.download(what, models, endpoint=hub.url)
    assert not models.exists(), _tree(models)
    # an empty Era3D folder left by an older version is not mistaken for the model and does not block the download
    era = models / "era3d" / weights.ERA3D_FOLDER
    era.mkdir(parents=True)
    with HubServer(REPOS) as hub:
        assert weights.download_era3d(models, endpoint=hub.url) == era and weights.era3d_complete(era)


def test_no_network_fails_fast_in_one_message(tmp_path, online):
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match=r"no network: cannot reach 127\.0\.0\.1") as e:
        weights.download_lgm(models_dir=tmp_path / "m", endpoint=f"http://127.0.0.1:{port}")
    assert time.monotonic() - t < 5 and "\n" not in str(e.value)
    assert not (tmp_path / "m").exists()


def test_named_lgm_file_that_does_not_exist_is_not_offered_for_download(tmp_path):
    with pytest.raises(weights.WeightsNotFoundError, match="typo.safetensors' does not exist") as e:
        weights.find_lgm_checkpoint("typo.safetensors", tmp_path)
    assert isinstance(e.value, FileNotFoundError)
    with pytest.raises(weights.WeightsNotFoundError, match="is a directory"):
        weights.find_lgm_checkpoint(str(tmp_path), tmp_path)
