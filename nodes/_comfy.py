"""Lazy ComfyUI services with fallbacks outside ComfyUI (the only place in nodes/ that touches comfy.*).

Every function imports ``comfy.*`` / ``folder_paths`` *inside* its body, so importing this module is free and
works in plain Python (tests, CLI). Inside ComfyUI the real services are used; outside it:

* devices are ``cpu`` (``get_torch_device`` picks cuda/mps when available), ``soft_empty_cache`` and
  ``check_interrupt`` do nothing, ``ProgressBar`` only counts;
* model folders ``lgm``, ``era3d``, ``lgm_loras`` live under ``<models dir>/<name>``, where the models dir is
  ``mvboost_core.weights.default_models_dir()`` when that exists, else ``$MVBOOST_MODELS_DIR``, else
  ``~/.cache/mvboost/models``;
* input / output / temp folders are ``$MVBOOST_INPUT_DIR`` / ``$MVBOOST_OUTPUT_DIR`` / ``$MVBOOST_TEMP_DIR``
  (defaults ``./input``, ``./output`` and a folder in the system temp dir).

Tensor conventions (ComfyUI): IMAGE is float32 ``[B,H,W,C]`` (C=3) in 0..1 on :func:`intermediate_device`;
MASK is float32 ``[B,H,W]`` in 0..1.

Constants: the custom type names (``MVBOOST_*``) and :data:`CATEGORY`. Nodes use ``DISPLAY_PREFIX`` for display
names and ids starting with ``NODE_PREFIX``.

Also here, once for all nodes:

* the ComfyUI mask convention (:data:`MASK_LOADIMAGE` = LoadImage's ``1 - alpha``, :data:`MASK_OBJECT`) and
  :func:`object_alpha` / :func:`one_image`, which turn ComfyUI's IMAGE/MASK into what ``mvboost_core`` takes;
* :class:`ManagedModel`: a ``mvboost_core`` model wrapped in ComfyUI's ``ModelPatcher`` so
  ``comfy.model_management`` accounts for its memory (and can unload it);
* :class:`NodeProgress`: ComfyUI's progress bar (each update is an interruption point) plus a text line with the
  stage, elapsed time and an ETA (``mvboost_core.progress.StageProgress``), shown on the node and logged.
"""
from __future__ import annotations

import importlib
import os
import sys
import tempfile
import time

__all__ = [
    "CATEGORY", "DISPLAY_PREFIX", "NODE_PREFIX",
    "MVBOOST_ERA3D", "MVBOOST_LGM", "MVBOOST_MULTIVIEW", "MVBOOST_GAUSSIANS", "MVBOOST_CAMERAS", "CUSTOM_TYPES",
    "MODEL_FOLDERS",
    "in_comfyui", "get_torch_device", "intermediate_device", "offload_device", "soft_empty_cache",
    "check_interrupt", "ProgressBar",
    "register_model_folders", "get_filename_list", "get_model_dir_list", "get_full_path", "get_folder_paths",
    "get_output_directory", "get_input_directory", "get_temp_directory", "get_save_image_path",
    "get_annotated_filepath",
    "to_comfy_image", "to_comfy_mask", "from_comfy_image", "preview_images_ui",
    "MASK_LOADIMAGE", "MASK_OBJECT", "MASK_CONVENTIONS", "object_alpha", "one_image",
    "ManagedModel", "NodeProgress", "lpips_weights_path",
]

# --------------------------------------------------------------------------------------------- constants
CATEGORY = "MVBoost"
DISPLAY_PREFIX = "MVBoost: "
NODE_PREFIX = "MVBoost"

MVBOOST_ERA3D = "MVBOOST_ERA3D"
MVBOOST_LGM = "MVBOOST_LGM"
MVBOOST_MULTIVIEW = "MVBOOST_MULTIVIEW"
MVBOOST_GAUSSIANS = "MVBOOST_GAUSSIANS"
MVBOOST_CAMERAS = "MVBOOST_CAMERAS"
CUSTOM_TYPES = (MVBOOST_ERA3D, MVBOOST_LGM, MVBOOST_MULTIVIEW, MVBOOST_GAUSSIANS, MVBOOST_CAMERAS)

#: folder name -> supported file extensions (empty set = folders, e.g. diffusers directories).
MODEL_FOLDERS = {
    "lgm": {".safetensors"},
    "era3d": set(),
    "lgm_loras": {".safetensors"},
    "lpips": {".safetensors", ".pth"},  # LPIPS-VGG's VGG16 trunk (vgg16.tv_in1k.safetensors), see lpips_weights_path
}


def _module(name: str):
    """The module if importable (ComfyUI present), else None. Never raises."""
    mod = sys.modules.get(name)
    if mod is not None:
        return mod
    try:
        return importlib.import_module(name)
    except Exception:
        return None


def _folder_paths():
    return _module("folder_paths")


def _mm():
    return _module("comfy.model_management")


def in_comfyui() -> bool:
    """True when ComfyUI's ``folder_paths`` and ``comfy.model_management`` are importable."""
    return _folder_paths() is not None and _mm() is not None


# ---------------------------------------------------------------------------------------------- devices
def get_torch_device():
    """The compute device: ComfyUI's choice, else cuda > mps > cpu."""
    import torch

    mm = _mm()
    if mm is not None:
        return mm.get_torch_device()
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def intermediate_device():
    """Where IMAGE / MASK outputs live (ComfyUI: cpu unless --gpu-only)."""
    import torch

    mm = _mm()
    if mm is not None and hasattr(mm, "intermediate_device"):
        return mm.intermediate_device()
    return torch.device("cpu")


def offload_device():
    """Where models rest between runs (ComfyUI's ``unet_offload_device``, else cpu)."""
    import torch

    mm = _mm()
    if mm is not None and hasattr(mm, "unet_offload_device"):
        return mm.unet_offload_device()
    return torch.device("cpu")


def soft_empty_cache() -> None:
    """Release cached accelerator memory (ComfyUI's ``soft_empty_cache``; no-op outside ComfyUI on CPU)."""
    mm = _mm()
    if mm is not None and hasattr(mm, "soft_empty_cache"):
        mm.soft_empty_cache()
        return
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def check_interrupt() -> None:
    """Raise ComfyUI's ``InterruptProcessingException`` if the user pressed cancel (no-op outside ComfyUI)."""
    mm = _mm()
    if mm is not None and hasattr(mm, "throw_exception_if_processing_interrupted"):
        mm.throw_exception_if_processing_interrupted()


class ProgressBar:
    """``comfy.utils.ProgressBar`` when available, else a counter. Every update is an interruption point.

    ``update(n)`` advances by ``n``; ``update_absolute(value, total=None, preview=None)`` sets the position.
    """

    def __init__(self, total: int):
        self.total = int(total)
        self.current = 0
        utils = _module("comfy.utils")
        self._bar = None
        if utils is not None and hasattr(utils, "ProgressBar"):
            try:
                self._bar = utils.ProgressBar(self.total)
            except Exception:  # pragma: no cover - a broken host hook must not break the node
                self._bar = None

    def update_absolute(self, value: int, total: int | None = None, preview=None) -> None:
        if total is not None:
            self.total = int(total)
        self.current = min(int(value), self.total) if self.total > 0 else int(value)
        if self._bar is not None:
            self._bar.update_absolute(self.current, total, preview)
        check_interrupt()

    def update(self, n: int = 1) -> None:
        self.update_absolute(self.current + int(n))


# ------------------------------------------------------------------------------------------ model folders
_REGISTERED = False


def _fallback_models_dir() -> str:
    try:
        from ..mvboost_core import weights  # type: ignore[attr-defined]

        d = weights.default_models_dir()
        if d:
            return os.fspath(d)
    except Exception:
        pass
    env = os.environ.get("MVBOOST_MODELS_DIR")
    if env:
        return env
    return os.path.join(os.path.expanduser("~"), ".cache", "mvboost", "models")


def register_model_folders() -> None:
    """Register ``lgm`` / ``era3d`` / ``lgm_loras`` / ``lpips`` with ComfyUI's folder_paths (idempotent, cheap).

    Uses ``add_model_folder_path`` so ``extra_model_paths.yaml`` entries are kept; the default path
    ``<models_dir>/<name>`` is appended. Call it lazily (the loaders' ``INPUT_TYPES`` do).
    """
    global _REGISTERED
    fp = _folder_paths()
    if fp is None:
        return  # outside ComfyUI the folders are derived on each call (see _fallback_folders)
    for name, exts in MODEL_FOLDERS.items():
        fnp = getattr(fp, "folder_names_and_paths", {})
        entry = fnp.get(name)
        default = os.path.join(fp.models_dir, name)
        if entry is None or default not in entry[0]:
            fp.add_model_folder_path(name, default)
            entry = fnp.get(name)
        if entry is not None and exts:
            known = entry[1]  # update in place: folder_paths keeps a reference (a set, or a list for some keys)
            if isinstance(known, set):
                known.update(exts)
            elif isinstance(known, list):
                known.extend(e for e in sorted(exts) if e not in known)
    _REGISTERED = True


def _fallback_folders(folder: str) -> list[str]:
    return [os.path.join(_fallback_models_dir(), folder)] if folder in MODEL_FOLDERS else []


def get_folder_paths(folder: str) -> list[str]:
    """All directories searched for model folder ``folder`` (ComfyUI order)."""
    register_model_folders()
    fp = _folder_paths()
    if fp is not None:
        try:
            return list(fp.get_folder_paths(folder))
        except KeyError:
            return []
    return _fallback_folders(folder)


def get_filename_list(folder: str) -> list[str]:
    """Model files in ``folder`` (relative names, sorted). Never raises: missing folders give ``[]``."""
    register_model_folders()
    fp = _folder_paths()
    if fp is not None:
        try:
            return list(fp.get_filename_list(folder))
        except Exception:
            return []
    exts = MODEL_FOLDERS.get(folder, set())
    out: set[str] = set()
    for root in _fallback_folders(folder):
        if not os.path.isdir(root):
            continue
        for dirpath, _dirs, files in os.walk(root, followlinks=True):
            for f in files:
                if not exts or os.path.splitext(f)[1].lower() in exts:
                    out.add(os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/"))
    return sorted(out)


def get_model_dir_list(folder: str, marker: str | None = None) -> list[str]:
    """Immediate sub-directories of every path of ``folder`` (e.g. diffusers folders under ``era3d``).

    With ``marker`` (e.g. ``"model_index.json"``) only directories containing that file are listed. Never raises.
    """
    out: set[str] = set()
    for root in get_folder_paths(folder):
        try:
            names = os.listdir(root)
        except OSError:
            continue
        for n in names:
            p = os.path.join(root, n)
            if os.path.isdir(p) and (marker is None or os.path.exists(os.path.join(p, marker))):
                out.add(n)
    return sorted(out)


def lpips_weights_path() -> str | None:
    """The LPIPS VGG16 trunk in ComfyUI's ``models/lpips/`` (``vgg16.tv_in1k.safetensors`` preferred, else any
    ``.safetensors``/``.pth`` there), or None: core then searches its own places and, when nothing is found, the
    pose step uses its fallback loss."""
    from ..mvboost_core.weights import LPIPS_FILE  # type: ignore[attr-defined]

    names = get_filename_list("lpips")
    for name in sorted(names, key=lambda n: (os.path.basename(n) != LPIPS_FILE, n)):
        try:
            return get_full_path("lpips", name)
        except FileNotFoundError:
            continue
    return None


def get_full_path(folder: str, name: str) -> str:
    """Absolute path of ``name`` (file or sub-directory) in model folder ``folder``.

    Raises ``FileNotFoundError`` naming the directories searched and what to put there.
    """
    if not name:
        raise FileNotFoundError(
            f"No {folder!r} model selected: put a model into one of {get_folder_paths(folder) or ['models/' + folder]} "
            "and refresh the node (press R in ComfyUI)."
        )
    fp = _folder_paths()
    if fp is not None:
        register_model_folders()
        try:
            p = fp.get_full_path(folder, name)
        except KeyError:
            p = None
        if p is not None:
            return p
    norm = os.path.normpath("/" + name).lstrip("/\\")  # like ComfyUI: no escaping with '..'
    roots = get_folder_paths(folder)
    for root in roots:
        p = os.path.join(root, norm)
        if os.path.exists(p):
            return p
    raise FileNotFoundError(
        f"Model {name!r} not found in model folder {folder!r}; searched: {roots or ['(no folder registered)']}. "
        f"Put the file/folder there (or add a '{folder}:' entry to extra_model_paths.yaml) and refresh."
    )


# ----------------------------------------------------------------------------------- input / output dirs
def _env_dir(var: str, default: str) -> str:
    return os.path.abspath(os.environ.get(var) or default)


def get_output_directory() -> str:
    fp = _folder_paths()
    return fp.get_output_directory() if fp is not None else _env_dir("MVBOOST_OUTPUT_DIR", "output")


def get_input_directory() -> str:
    fp = _folder_paths()
    return fp.get_input_directory() if fp is not None else _env_dir("MVBOOST_INPUT_DIR", "input")


def get_temp_directory() -> str:
    fp = _folder_paths()
    if fp is not None:
        return fp.get_temp_directory()
    return _env_dir("MVBOOST_TEMP_DIR", os.path.join(tempfile.gettempdir(), "mvboost_temp"))


def get_annotated_filepath(name: str) -> str:
    """Path of an input file name, honouring ComfyUI's ``"name [output]"`` / ``[input]`` / ``[temp]`` suffixes."""
    fp = _folder_paths()
    if fp is not None:
        return fp.get_annotated_filepath(name)
    for tag, fn in (("[output]", get_output_directory), ("[input]", get_input_directory),
                    ("[temp]", get_temp_directory)):
        if name.endswith(tag):
            return os.path.join(fn(), name[: -len(tag)].strip())
    return os.path.join(get_input_directory(), name)


def _compute_vars(prefix: str, width: int, height: int) -> str:
    now = time.localtime()
    subs = {
        "%width%": str(width), "%height%": str(height), "%year%": str(now.tm_year),
        "%month%": f"{now.tm_mon:02d}", "%day%": f"{now.tm_mday:02d}", "%hour%": f"{now.tm_hour:02d}",
        "%minute%": f"{now.tm_min:02d}", "%second%": f"{now.tm_sec:02d}",
    }
    for k, v in subs.items():
        prefix = prefix.replace(k, v)
    return prefix


def get_save_image_path(prefix: str, output_dir: str, width: int = 0, height: int = 0):
    """``(full_folder, filename, counter, subfolder, prefix)`` like ComfyUI's ``folder_paths.get_save_image_path``.

    Files are then named ``f"{filename}_{counter:05}_.{ext}"`` in ``full_folder``. Prefixes that leave
    ``output_dir`` (``../x``, absolute paths) raise ``ValueError`` before anything is written.
    """
    if not isinstance(prefix, str) or not prefix.strip():
        raise ValueError("filename_prefix is empty: give a name such as 'mvboost/gaussians'.")
    out_abs = os.path.abspath(output_dir)
    # Check ourselves first so the message is clear even when ComfyUI's own check would catch it.
    expanded = _compute_vars(prefix, width, height) if "%" in prefix else prefix
    sub = os.path.dirname(os.path.normpath(expanded))
    target = os.path.abspath(os.path.join(out_abs, sub))
    if os.path.isabs(expanded) or os.path.commonpath((out_abs, target)) != out_abs:
        raise ValueError(
            f"filename_prefix {prefix!r} would save outside the output folder {out_abs}; "
            "use a relative prefix such as 'mvboost/gaussians' (sub-folders are fine, '..' and absolute paths are not)."
        )
    fp = _folder_paths()
    if fp is not None:
        return fp.get_save_image_path(prefix, output_dir, width, height)
    name = os.path.basename(os.path.normpath(expanded))
    os.makedirs(target, exist_ok=True)
    counter = 1
    lname = name.lower()
    for f in os.listdir(target):
        if f.lower().startswith(lname + "_"):
            digits = f[len(name) + 1:].split("_")[0]
            if digits.isdigit():
                counter = max(counter, int(digits) + 1)
    return target, name, counter, sub, expanded


# ------------------------------------------------------------------------------------- IMAGE / MASK
def to_comfy_image(images):
    """Tensor ``[B,H,W,3]`` or ``[H,W,3]`` (any float dtype, values 0..1) -> ComfyUI IMAGE ``[B,H,W,3]``.

    Detached, float32, clamped to 0..1, contiguous, on :func:`intermediate_device`.
    """
    import torch

    t = torch.as_tensor(images)
    if t.ndim == 3:
        t = t.unsqueeze(0)
    if t.ndim != 4 or t.shape[-1] not in (3, 4):
        raise ValueError(f"expected an image tensor [B,H,W,3], got shape {list(t.shape)}")
    return t.detach().to(device=intermediate_device(), dtype=torch.float32).clamp(0, 1).contiguous()


def to_comfy_mask(masks):
    """Tensor ``[B,H,W]``, ``[B,H,W,1]`` or ``[H,W]`` -> ComfyUI MASK ``[B,H,W]`` float32 0..1."""
    import torch

    t = torch.as_tensor(masks)
    if t.ndim == 4 and t.shape[-1] == 1:
        t = t[..., 0]
    if t.ndim == 2:
        t = t.unsqueeze(0)
    if t.ndim != 3:
        raise ValueError(f"expected a mask tensor [B,H,W], got shape {list(t.shape)}")
    return t.detach().to(device=intermediate_device(), dtype=torch.float32).clamp(0, 1).contiguous()


def from_comfy_image(image, name: str = "image"):
    """Validate a ComfyUI IMAGE ``[B,H,W,C]`` (C = 3 or 4) and return it as float32 (same device)."""
    import torch

    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] not in (3, 4):
        shape = list(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{name} must be a ComfyUI IMAGE [B,H,W,3] in 0..1, got {shape}")
    if image.shape[0] == 0 or image.shape[1] == 0 or image.shape[2] == 0:
        raise ValueError(f"{name} is empty: shape {list(image.shape)}")
    return image.to(torch.float32)


def preview_images_ui(images, prefix: str = "MVBoost_preview") -> dict:
    """Write IMAGE ``[B,H,W,3]`` as PNGs into the temp folder; return ComfyUI's ``{"images": [...]}`` ui dict."""
    import numpy as np
    from PIL import Image

    t = to_comfy_image(images).cpu()
    temp = get_temp_directory()
    os.makedirs(temp, exist_ok=True)
    folder, name, counter, sub, _ = get_save_image_path(prefix, temp, t.shape[2], t.shape[1])
    results = []
    for i in range(t.shape[0]):
        arr = (t[i, :, :, :3].numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
        fname = f"{name}_{counter + i:05}_.png"
        Image.fromarray(arr).save(os.path.join(folder, fname), compress_level=1)
        results.append({"filename": fname, "subfolder": sub, "type": "temp"})
    return {"images": results}


# ------------------------------------------------------------------------------------ mask convention
#: ComfyUI's LoadImage outputs MASK = 1 - alpha (1 = transparent background): the default for every mask input.
MASK_LOADIMAGE = "LoadImage mask (1 = background)"
#: Masks from segmentation / background-removal nodes that mark the object with 1.
MASK_OBJECT = "object mask (1 = object)"
MASK_CONVENTIONS = [MASK_LOADIMAGE, MASK_OBJECT]


def one_image(image, node: str):
    """ComfyUI IMAGE ``[1,H,W,C]`` (C = 3 or 4) -> ``[H,W,C]`` float32; a batch of several is refused."""
    img = from_comfy_image(image)
    if img.shape[0] != 1:
        raise ValueError(
            f"{node} got a batch of {img.shape[0]} images; it makes one object per run. Pick one image "
            "(e.g. with 'ImageFromBatch') or queue one run per image"
        )
    return img[0]


def object_alpha(mask, convention: str = MASK_LOADIMAGE):
    """ComfyUI MASK ``[H,W]`` or ``[1,H,W]`` -> the object's alpha ``[H,W]`` float32 in [0,1] (1 = object), or None.

    ``convention`` :data:`MASK_LOADIMAGE` means 1 = background (LoadImage's ``1 - alpha``), :data:`MASK_OBJECT` means
    1 = object. A batch of several masks is refused.
    """
    import torch

    if mask is None:
        return None
    if convention not in MASK_CONVENTIONS:
        raise ValueError(f"mask_convention {convention!r} is not one of {MASK_CONVENTIONS}")
    m = torch.as_tensor(mask)
    m = m if m.ndim == 3 else m[None]
    if m.ndim != 3:
        raise ValueError(f"mask must be a ComfyUI MASK [1,H,W], got shape {list(torch.as_tensor(mask).shape)}")
    if m.shape[0] != 1:
        raise ValueError(f"mask batch has {m.shape[0]} masks; give exactly one mask for the one image")
    m = m[0].to(torch.float32).clamp(0, 1)
    return 1.0 - m if convention == MASK_LOADIMAGE else m


# ------------------------------------------------------------------------------------ model management
class ManagedModel:
    """A ``mvboost_core`` model (LGM, an Era3D pipeline) registered with ComfyUI's memory manager.

    ``modules`` is an ``nn.Module`` holding every weight (default: the model itself, inside a ``ModuleDict`` so that
    ComfyUI can set its ``device`` attribute; an Era3D pipeline passes a ModuleDict of its networks). Inside ComfyUI it is wrapped in ``comfy.model_patcher.ModelPatcher`` (load device
    ``get_torch_device()``, offload device ``unet_offload_device()``), so ``load_models_gpu`` frees memory for it,
    counts it, and "Unload models" / ``POST /free`` can offload it. Outside ComfyUI :meth:`load` moves it by hand.

    Attributes: ``model`` (the mvboost_core object the nodes call), ``patcher`` (None outside ComfyUI).
    """

    def __init__(self, model, modules=None):
        import torch

        self.model = model
        self.modules = modules if modules is not None else torch.nn.ModuleDict({"model": model})
        self.patcher = None
        mm = _mm()
        mp = _module("comfy.model_patcher")
        if mm is not None and mp is not None and hasattr(mp, "ModelPatcher"):
            self.patcher = mp.ModelPatcher(self.modules, load_device=get_torch_device(),
                                           offload_device=offload_device())

    def load(self):
        """Put the weights on the compute device (ComfyUI's ``load_models_gpu``) and return :attr:`model`."""
        mm = _mm()
        if self.patcher is not None and mm is not None and hasattr(mm, "load_models_gpu"):
            mm.load_models_gpu([self.patcher], force_full_load=True)
        else:
            self.modules.to(get_torch_device())
        return self.model

    def __getattr__(self, name):  # convenience: config, resolution, ... of the wrapped model
        if name in ("model", "modules", "patcher"):
            raise AttributeError(name)
        return getattr(self.model, name)


def unwrap_model(obj):
    """:class:`ManagedModel` -> (its model on the compute device); a bare model is moved there and returned."""
    if isinstance(obj, ManagedModel):
        return obj.load()
    return ManagedModel(obj).load() if hasattr(obj, "to") else obj


# ------------------------------------------------------------------------------------ progress
class NodeProgress:
    """Progress of one node run: ComfyUI's bar, a text line on the node, and a log line now and then.

    ``expected`` = ``{stage: units}`` in run order (see :class:`mvboost_core.progress.StageProgress`). Call
    :meth:`update` as ``progress(stage, done, total)`` callbacks arrive: the bar moves (also an interruption point,
    like every ComfyUI progress update), the node shows e.g. ``"Era3D denoising 12/40 · 0:45 elapsed · ETA 1:45"``
    (sent at most twice a second and at the end), and the server log gets the same line every ~10 %.
    """

    def __init__(self, expected: dict, node_id=None, title: str = "MVBoost", labels: dict | None = None):
        import logging

        from ..mvboost_core.pipeline import STAGE_LABELS
        from ..mvboost_core.progress import StageProgress

        self.tracker = StageProgress(expected, labels={**STAGE_LABELS, **(labels or {})})
        self.node_id = None if node_id is None else str(node_id)
        self.title = title
        self.bar = ProgressBar(self.tracker.maximum)
        self._log = logging.getLogger("mvboost")
        self._last_text = -1e9
        self._last_log_fraction = 0.0
        self.lines: list[str] = []  # every text sent (tests read it)
        check_interrupt()

    def update(self, stage: str, done: int, total: int | None = None) -> None:
        t = self.tracker
        t.update(stage, done, total)
        self.bar.update_absolute(t.value, t.maximum)  # raises InterruptProcessingException on cancel
        now = time.monotonic()
        finished = t.value >= t.maximum
        if finished or now - self._last_text >= 0.5:
            self._last_text = now
            self._send(f"{self.title}: {t.describe()}")
        frac = t.value / t.maximum
        if finished or frac - self._last_log_fraction >= 0.1:
            self._last_log_fraction = frac
            self._log.info("[MVBoost] %s: %s", self.title, t.describe())

    def show(self, text: str) -> None:
        """Show a line on the node now (e.g. the saved path) and log it."""
        self._send(f"{self.title}: {text}")
        self._log.info("[MVBoost] %s: %s", self.title, text)

    def callback(self, stage: str):
        """A ``callback(done, total, *_)`` for loops that report one stage (Era3D's step callback)."""
        return lambda done, total, *_: self.update(stage, done, total)

    def _send(self, text: str) -> None:
        self.lines.append(text)
        if self.node_id is None:
            return
        server = sys.modules.get("server")  # ComfyUI's PromptServer module, only when running inside the server
        inst = getattr(getattr(server, "PromptServer", None), "instance", None)
        if inst is not None and hasattr(inst, "send_progress_text"):
            try:
                inst.send_progress_text(text, self.node_id)
            except Exception:  # pragma: no cover - a UI message must never fail the node
                pass
