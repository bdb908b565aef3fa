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
