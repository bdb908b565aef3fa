"""Where model weights live, and explicit downloads from the Hugging Face Hub.

Layout of a models directory (the same sub-folders as ComfyUI's ``models/``)::

    <models_dir>/lgm/model_fp16_fixrot.safetensors            LGM checkpoints (ashawkey/LGM)
    <models_dir>/lgm_loras/*.safetensors                      MVBoost LoRA adapters
    <models_dir>/era3d/MacLab-Era3D-512-6view/                Era3D diffusers folder (pengHTYX/MacLab-Era3D-512-6view)
    <models_dir>/lpips/vgg16.tv_in1k.safetensors              ImageNet VGG16 trunk of LPIPS (timm/vgg16.tv_in1k)

The models directory is, in order: an explicit ``models_dir`` argument (the CLI's ``--models-dir``), the
``MVBOOST_MODELS_DIR`` environment variable, else the user cache directory ``$XDG_CACHE_HOME/mvboost/models``
(``~/.cache/mvboost/models``; ``%LOCALAPPDATA%\\mvboost\\models`` on Windows).

Nothing here touches the network unless a ``download_*`` function is called; with ``HF_HUB_OFFLINE`` set, or
without network (a 5-second TCP probe of the Hub host runs first, so an offline machine fails at once instead of
after huggingface_hub's retries), they raise :class:`WeightsUnavailableError` naming the file, the repository and
the folder to put it in. Downloads go through ``huggingface_hub`` into a hidden temporary folder next to the
destination, which is renamed into place only when complete and removed on any failure (Ctrl-C included): a failed
download leaves nothing behind, and a download always restarts from the beginning.

LPIPS-VGG's trunk: ``timm/vgg16.tv_in1k``'s ``model.safetensors`` holds torchvision's ImageNet VGG16 weights
("original torchvision weights" in its model card; ``features.N.weight/bias`` exactly as torchvision's
``vgg16().features``, plus timm's ``pre_logits.*``/``head.*`` classifier, which LPIPS ignores). It is the
safetensors twin of torchvision's ``vgg16-397923af.pth``; we could not byte-compare the two here (no network), so
the torchvision file in torch.hub's cache is still accepted (see :mod:`mvboost_core.metrics`).
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse

__all__ = [
    "WeightsUnavailableError",
    "WeightsNotFoundError",
    "MODEL_KINDS",
    "SIZES",
    "LPIPS_REPO",
    "LPIPS_REPO_FILE",
    "LPIPS_FILE",
    "LPIPS_URL",
    "lpips_weights_file",
    "download_lpips",
    "download",
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
    "era3d_complete",
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
LPIPS_REPO = "timm/vgg16.tv_in1k"
LPIPS_REPO_FILE = "model.safetensors"
#: the local name of LPIPS-VGG's trunk in ``<models_dir>/lpips/`` (ComfyUI: ``models/lpips/``)
LPIPS_FILE = "vgg16.tv_in1k.safetensors"
LPIPS_URL = f"https://huggingface.co/{LPIPS_REPO}/resolve/main/{LPIPS_REPO_FILE}"
#: the sub-folders of a models directory (the same names as ComfyUI's model folders)
MODEL_KINDS = ("lgm", "lgm_loras", "era3d", "lpips")
#: download sizes, for messages
SIZES = {"lgm": "~830 MB", "era3d": "~6 GB", "lpips": "~553 MB"}

log = logging.getLogger(__name__)


class WeightsUnavailableError(RuntimeError):
    """Weights are not on disk and cannot be downloaded; the message says which file, from where, and where to."""


class WeightsNotFoundError(WeightsUnavailableError, FileNotFoundError):
    """A weights file is not on disk (a path the user named, or LPIPS-VGG's trunk); also a ``FileNotFoundError``."""


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
    """``<models_dir>/<kind>`` for ``kind`` in :data:`MODEL_KINDS` (not created)."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model folder {kind!r}; use one of {', '.join(MODEL_KINDS)}")
    return resolve_models_dir(models_dir) / kind


def lpips_weights_file(models_dir=None) -> Path:
    """``<models_dir>/lpips/vgg16.tv_in1k.safetensors``: where :func:`download_lpips` puts LPIPS-VGG's trunk."""
    return model_folder("lpips", models_dir) / LPIPS_FILE


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

    Raises :class:`WeightsUnavailableError` when an official checkpoint is not on disk (it can be downloaded), and
    :class:`WeightsNotFoundError` when ``name`` is some other file that does not exist (or is a directory).
    """
    if name and Path(name).expanduser().is_file():
        return Path(name).expanduser()
    official = not name or name in LGM_FILES or name in LGM_FILES.values()
    fname = lgm_filename(name or LGM_DEFAULT_VARIANT) if official else name
    path = model_folder("lgm", models_dir) / fname
    if path.is_file():
        return path
    if not official:
        given = Path(name).expanduser()
        if given.is_dir():
            raise WeightsNotFoundError(f"LGM checkpoint {given} is a directory, not a .safetensors file")
        where = f"{given.resolve()}" + ("" if given.is_absolute() else f" nor {path}")
        raise WeightsNotFoundError(f"LGM checkpoint {name!r} does not exist (not at {where})")
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


def _endpoint(endpoint: str | None) -> str:
    if endpoint:
        return endpoint
    try:
        from huggingface_hub import constants

        return constants.ENDPOINT
    except Exception:  # noqa: BLE001
        return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def _probe(endpoint: str | None, timeout: float = 5.0) -> str | None:
    """None when a TCP connection to the Hub host opens within ``timeout`` seconds, else the reason (one line).

    huggingface_hub retries a failing request five times with back-off (~30 s without network); this answers in
    milliseconds when DNS fails and in at most ``timeout`` seconds otherwise."""
    url = urlparse(_endpoint(endpoint))
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        return f"no network: cannot reach {host}:{port} ({e.strerror or type(e).__name__})"


@contextlib.contextmanager
def _quiet_hub():
    """huggingface_hub logs each retry as a warning; our error message says it once."""
    lg = logging.getLogger("huggingface_hub")
    old = lg.level
    lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        lg.setLevel(old)


def _created_dirs(folder: Path) -> list[Path]:
    """``folder`` and its missing parents, outermost first, creating them; the caller removes them on failure."""
    missing = []
    p = folder
    while not p.exists():
        missing.append(p)
        p = p.parent
    folder.mkdir(parents=True, exist_ok=True)
    return missing[::-1]


def _remove_empty(dirs: list[Path]) -> None:
    for d in reversed(dirs):
        try:
            d.rmdir()
        except OSError:
            break


def _prepare(what: str, repo: str, dest: Path, endpoint: str | None) -> None:
    if _offline():
        raise _unavailable(what, repo, dest, "HF_HUB_OFFLINE is set")
    try:
        import huggingface_hub  # noqa: F401
    except ImportError as e:
        raise _unavailable(what, repo, dest, f"huggingface_hub is not installed: {e}") from None
    reason = _probe(endpoint)
    if reason:
        raise _unavailable(what, repo, dest, reason)


def _download_file(repo: str, repo_file: str, path: Path, endpoint: str | None) -> Path:
    """``repo``'s ``repo_file`` -> ``path`` via a hidden staging folder next to it (renamed in when complete)."""
    from huggingface_hub import hf_hub_download

    from .atomic import file_mode, fsync_dir

    what = f"file {repo_file!r}"
    _prepare(what, repo, path.parent, endpoint)
    created = _created_dirs(path.parent)
    stage = Path(tempfile.mkdtemp(prefix=f".{path.name}.download-", dir=path.parent))
    with _staging(stage, created, what, repo, path.parent), _quiet_hub():
        got = Path(hf_hub_download(repo_id=repo, filename=repo_file, local_dir=str(stage), endpoint=endpoint))
        os.chmod(got, file_mode())
        os.replace(got, path)
        fsync_dir(path.parent)
    shutil.rmtree(stage, ignore_errors=True)
    return path


@contextlib.contextmanager
def _staging(stage: Path, created: list, what: str, repo: str, dest: Path):
    """Body of a download into the hidden ``stage`` folder: on any failure (Ctrl-C included) remove ``stage`` and the
    folders this download ``created``; an Exception becomes one :class:`WeightsUnavailableError`."""
    try:
        yield
    except BaseException as e:
        shutil.rmtree(stage, ignore_errors=True)
        _remove_empty(created)
        if isinstance(e, Exception):
            raise _unavailable(what, repo, dest, f"{type(e).__name__}: {e}") from None
        raise


def download_lgm(variant: str = LGM_DEFAULT_VARIANT, models_dir=None, endpoint: str | None = None) -> Path:
    """Download an LGM checkpoint from ``ashawkey/LGM`` into ``<models_dir>/lgm/`` (only when called).

    Returns the local path; a file already there is returned without any network access. ``endpoint``: a Hub
    mirror URL (default ``HF_ENDPOINT`` / huggingface.co).
    Raises :class:`WeightsUnavailableError` when offline (``HF_HUB_OFFLINE``) or the download fails.
    """
    fname = lgm_filename(variant)
    path = model_folder("lgm", models_dir) / fname
    if path.is_file():
        return path
    return _download_file(LGM_REPO, fname, path, endpoint)


def download_lpips(models_dir=None, endpoint: str | None = None) -> Path:
    """Download LPIPS-VGG's ImageNet VGG16 trunk (``timm/vgg16.tv_in1k``, ``model.safetensors``, ~553 MB) to
    :func:`lpips_weights_file` (``<models_dir>/lpips/vgg16.tv_in1k.safetensors``). A file already there is returned
    without network access. Raises :class:`WeightsUnavailableError` when offline or the download fails."""
    path = lpips_weights_file(models_dir)
    if path.is_file():
        return path
    return _download_file(LPIPS_REPO, LPIPS_REPO_FILE, path, endpoint)


def era3d_complete(folder) -> bool:
    """True when ``folder`` looks like a complete Era3D diffusers folder (``model_index.json``, no partial files)."""
    folder = Path(folder)
    return (folder / "model_index.json").is_file() and not any(folder.rglob("*.incomplete"))


def download_era3d(models_dir=None, endpoint: str | None = None) -> Path:
    """Download the Era3D diffusers folder ``pengHTYX/MacLab-Era3D-512-6view`` into
    ``<models_dir>/era3d/MacLab-Era3D-512-6view/`` (via a hidden staging folder renamed into place when complete).

    Returns the folder; a complete one is returned without network access. Raises :class:`WeightsUnavailableError`
    when offline or the download fails, and when a non-empty incomplete folder is in the way (it names it).
    """
    dest = model_folder("era3d", models_dir) / ERA3D_FOLDER
    what = f"the diffusers folder {ERA3D_FOLDER!r}"
    if era3d_complete(dest):
        return dest
    if dest.is_dir() and not any(dest.iterdir()):
        dest.rmdir()  # an empty leftover (older versions created the folder before downloading)
    if dest.exists():
        raise WeightsUnavailableError(
            f"{dest} exists but is not a complete Era3D folder (no model_index.json, or partial files). Remove it "
            "(or move it away) and download again.")
    _prepare(what, ERA3D_REPO, dest, endpoint)
    from huggingface_hub import snapshot_download

    from .atomic import fsync_dir

    created = _created_dirs(dest.parent)
    stage = Path(tempfile.mkdtemp(prefix=f".{ERA3D_FOLDER}.download-", dir=dest.parent))
    with _staging(stage, created, what, ERA3D_REPO, dest):
        with _quiet_hub():
            snapshot_download(repo_id=ERA3D_REPO, local_dir=str(stage), endpoint=endpoint)
        shutil.rmtree(stage / ".cache", ignore_errors=True)  # huggingface_hub's local-dir bookkeeping
        if not era3d_complete(stage):
            raise RuntimeError("the downloaded folder has no model_index.json")
        os.chmod(stage, 0o777 & ~_umask())  # mkdtemp makes it 0700
        os.replace(stage, dest)
        fsync_dir(dest.parent)
    return dest


def _umask() -> int:
    from .atomic import current_umask

    return current_umask()


def download(what: str, models_dir=None, variant: str = LGM_DEFAULT_VARIANT, endpoint: str | None = None) -> Path:
    """``download("lgm" | "era3d" | "lpips", ...)``: the matching ``download_*`` function."""
    if what == "lgm":
        return download_lgm(variant, models_dir, endpoint)
    if what == "era3d":
        return download_era3d(models_dir, endpoint)
    if what == "lpips":
        return download_lpips(models_dir, endpoint)
    raise ValueError(f"unknown model {what!r}; use lgm, era3d or lpips")
