"""Where model weights live, and explicit downloads from the Hugging Face Hub.

Layout of a models directory (the same sub-folders as ComfyUI's ``models/``)::

    <models_dir>/lgm/model_fp16_fixrot.safetensors            LGM checkpoints (ashawkey/LGM)
    <models_dir>/lgm_loras/*.safetensors                      MVBoost LoRA adapters
    <models_dir>/era3d/MacLab-Era3D-512-6view/                Era3D diffusers folder (pengHTYX/MacLab-Era3D-512-6view)

The models directory is, in order: an explicit ``models_dir`` argument (the CLI's ``--models-dir``), the
``MVBOOST_MODELS_DIR`` environment variable, else the user cache directory ``$XDG_CACHE_HOME/mvboost/models``
(``~/.cache/mvboost/models``; ``%LOCALAPPDATA%\\mvboost\\models`` on Windows).

Nothing here touches the network unless :func:`download_lgm` / :func:`download_era3d` is called; with
``HF_HUB_OFFLINE`` set, or without network, they raise :class:`WeightsUnavailableError` naming the file, the
repository and the folder to put it in.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = [
    "WeightsUnavailableError",
    "default_models_dir",
    "resolve_models_dir",
    "model_folder",
    "LGM_REPO",
    "LGM_FILES",
    "ERA3D_REPO",
    "ERA3D_FOLDER",
    "lgm_filename",
    "find_lgm_checkpoint",
    "download_lgm",
    "download_era3d",
]

LGM_REPO = "ashawkey/LGM"
#: variant -> file in ``ashawkey/LGM``. "fp16_fixrot" is the recommended one (big config, fp16, 830 MB).
LGM_FILES = {
    "fp16_fixrot": "model_fp16_fixrot.safetensors",
    "fixrot": "model_fixrot.safetensors",  # the same weights in fp32 (1.66 GB)
    "fp16": "model_fp16.safetensors",  # pre-fixrot big model (trained with the rotation-normalisation bug)
}
LGM_DEFAULT_VARIANT = "fp16_fixrot"
ERA3D_REPO = "pengHTYX/MacLab-Era3D-512-6view"
ERA3D_FOLDER = "MacLab-Era3D-512-6view"


class WeightsUnavailableError(RuntimeError):
    """Weights are not on disk and cannot be downloaded; the message says which file, from where, and where to."""


def default_models_dir() -> Path:
    """``$MVBOOST_MODELS_DIR`` if set, else the per-user cache directory (``~/.cache/mvboost/models``)."""
    env = os.environ.get("MVBOOST_MODELS_DIR")
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        base = Path(os.environ["LOCALAPPDATA"])
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "mvboost" / "models"


def resolve_models_dir(models_dir: str | os.PathLike | None = None) -> Path:
    """An explicit ``models_dir`` (e.g. ``--models-dir``) wins over :func:`default_models_dir`."""
    return Path(models_dir).expanduser() if models_dir else default_models_dir()


def model_folder(kind: str, models_dir=None) -> Path:
    """``<models_dir>/<kind>`` for ``kind`` in ``lgm``, ``lgm_loras``, ``era3d`` (not created)."""
    if kind not in ("lgm", "lgm_loras", "era3d"):
        raise ValueError(f"unknown model folder {kind!r}; use 'lgm', 'lgm_loras' or 'era3d'")
    return resolve_models_dir(models_dir) / kind


def lgm_filename(variant: str = LGM_DEFAULT_VARIANT) -> str:
    """File name of an LGM ``variant`` (a key of :data:`LGM_FILES`, or one of the file names itself)."""
    if variant in LGM_FILES:
        return LGM_FILES[variant]
    if variant in LGM_FILES.values():
        return variant
    raise ValueError(f"Unknown LGM variant {variant!r}; choose one of {sorted(LGM_FILES)} "
                     f"(files {sorted(LGM_FILES.values())})")


def find_lgm_checkpoint(name: str | None = None, models_dir=None) -> Path:
    """Path of an LGM checkpoint: ``name`` may be a path, a variant, or a file name in ``<models_dir>/lgm``.

    Raises :class:`WeightsUnavailableError` (with the download command) when it is not on disk.
    """
    if name and Path(name).expanduser().is_file():
        return Path(name).expanduser()
    fname = name if name and name not in LGM_FILES else lgm_filename(name or LGM_DEFAULT_VARIANT)
    path = model_folder("lgm", models_dir) / fname
    if path.is_file():
        return path
    raise WeightsUnavailableError(
        f"LGM checkpoint {fname!r} not found in {path.parent}. Download it from https://huggingface.co/{LGM_REPO} "
        f"(file {fname}) into that folder, or call mvboost_core.weights.download_lgm()."
    )


def _offline() -> bool:
    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    if env in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import constants

        return bool(getattr(constants, "HF_HUB_OFFLINE", False))
    except Exception:  # noqa: BLE001
        return False


def _unavailable(what: str, repo: str, dest: Path, reason: str) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"Cannot download {what} from the Hugging Face repo {repo!r} ({reason}). "
        f"Download it manually from https://huggingface.co/{repo} and put it in {dest}."
    )


def download_lgm(variant: str = LGM_DEFAULT_VARIANT, models_dir=None, endpoint: str | None = None) -> Path:
    """Download an LGM checkpoint from ``ashawkey/LGM`` into ``<models_dir>/lgm/`` (only when called).

    Returns the local path; a file already there is returned without any network access. ``endpoint``: a Hub
    mirror URL (default ``HF_ENDPOINT`` / huggingface.co).
    Raises :class:`WeightsUnavailableError` when offline (``HF_HUB_OFFLINE``) or the download fails.
    """
    fname = lgm_filename(variant)
    dest = model_folder("lgm", models_dir)
    path = dest / fname
    if path.is_file():
        return path
    if _offline():
        raise _unavailable(f"file {fname!r}", LGM_REPO, dest, "HF_HUB_OFFLINE is set")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as e:
        raise _unavailable(f"file {fname!r}", LGM_REPO, dest, f"huggingface_hub is not installed: {e}") from None
    dest.mkdir(parents=True, exist_ok=True)
    try:
        got = hf_hub_download(repo_id=LGM_REPO, filename=fname, local_dir=str(dest), endpoint=endpoint)
    except Exception as e:  # noqa: BLE001 - network, auth and offline errors all end the same way
        raise _unavailable(f"file {fname!r}", LGM_REPO, dest, f"{type(e).__name__}: {e}") from None
    return Path(got)


def download_era3d(models_dir=None, endpoint: str | None = None) -> Path:
    """Download the Era3D diffusers folder ``pengHTYX/MacLab-Era3D-512-6view`` into
    ``<models_dir>/era3d/MacLab-Era3D-512-6view/`` (resumable; files already complete are skipped).

    Returns the folder. Raises :class:`WeightsUnavailableError` when offline or the download fails (a
    complete folder, i.e. one with ``model_index.json``, is returned as is when offline).
    """
    dest = model_folder("era3d", models_dir) / ERA3D_FOLDER
    if _offline():
        if (dest / "model_index.json").is_file():
            return dest
        raise _unavailable(f"the diffusers folder {ERA3D_FOLDER!r}", ERA3D_REPO, dest, "HF_HUB_OFFLINE is set")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise _unavailable(f"the diffusers folder {ERA3D_FOLDER!r}", ERA3D_REPO, dest,
                           f"huggingface_hub is not installed: {e}") from None
    dest.mkdir(parents=True, exist_ok=True)
    try:
        got = snapshot_download(repo_id=ERA3D_REPO, local_dir=str(dest), endpoint=endpoint)
    except Exception as e:  # noqa: BLE001
        if (dest / "model_index.json").is_file() and not any(dest.rglob("*.incomplete")):
            return dest
        raise _unavailable(f"the diffusers folder {ERA3D_FOLDER!r}", ERA3D_REPO, dest,
                           f"{type(e).__name__}: {e}") from None
    return Path(got)
