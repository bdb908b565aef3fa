"""ComfyUI contract harness (fast, in-process): load this repository the way ComfyUI does and run API workflows.

The real thing is tested by ``test_comfy_server.py`` / ``test_comfy_frontend.py`` (the vendored ComfyUI server and
its frontends in Chromium). This harness is for quick checks inside pytest and uses **ComfyUI's own modules** from the
vendored copy (``../shared/comfyui``, or ``$MVBOOST_COMFYUI``): ``comfy_api.latest`` (the V3 node API the pack is
written against), ``folder_paths``, ``comfy.utils`` (ProgressBar), ``comfy.model_management`` (interruption, devices,
``load_models_gpu``) and ``comfy.model_patcher``. The ComfyUI root is *appended* to ``sys.path`` (the repository's own
``nodes`` package keeps its name) and ``comfy.cli_args.args.cpu`` is set before ``comfy.model_management`` loads.

Per test (``comfy_env`` fixture), the real modules are re-pointed at ``tmp_path/comfy`` with ``monkeypatch``
(``folder_paths`` output / input / temp directories, ``models_dir`` and every model folder, the filename cache; the
progress-bar hook; the interrupt flag) and restored afterwards.

Stand-ins remain only for the core *nodes* our example workflows use (``LoadImage`` with IMAGE + MASK = 1 - alpha,
``PreviewImage``, ``SaveImage``, ``InvertMask``): importing ComfyUI's ``nodes.py`` in-process would shadow the
pack's ``nodes`` package. The real server test runs the real ones.

How to use it from a test (fixtures must be imported into the test module; conftest.py stays untouched)::

    from comfy_harness import comfy_env  # noqa: F401  (pytest fixture)

    def test_my_workflow(comfy_env):
        write_tiny_lgm(comfy_env.models_dir / "lgm" / "tiny.safetensors")      # your own helper
        shutil.copy(some_png, comfy_env.input_dir / "cat.png")
        res = comfy_env.run_workflow("workflows/api/image_to_gaussians.json",
                                     overrides={"3": {"model_name": "tiny.safetensors"}})
        gaussians = res.output("5", 0)        # first output of node "5"
        assert res.ui["7"]["images"]          # output nodes' ui dicts, merged per key

``comfy_env`` attributes: ``nodes`` (node id -> the pack's ``io.ComfyNode`` class, from ``comfy_entrypoint``),
``display_names``, ``all_nodes`` (pack + core stand-ins), ``package`` (the extension module, loaded under a
path-derived name like ComfyUI does), ``core`` (that package's own ``mvboost_core``: use
``comfy_env.core.gaussians.Gaussians`` etc. when building objects for nodes), ``base_dir``, ``models_dir``,
``input_dir``, ``output_dir``, ``temp_dir``, ``folder_paths`` / ``utils`` / ``model_management`` (the real modules),
``modules`` (the same by ``sys.modules`` name), ``progress`` (list of ``(value, total)`` updates), ``texts`` (progress
texts sent to the node, ``(node_id, text)``), ``interrupt()``, ``run_workflow(path_or_dict, overrides=None)``,
``run_node(class_type, **inputs)`` and ``validate_node(node_id)``.

``comfy_env_2026`` is the same on a host with ComfyUI 2026's native splat stack: the real ``comfy_api.latest``
extended with ``Types.SPLAT`` / ``Types.File3D`` / ``io.Splat`` / ``io.File3DSplatAny`` stand-ins (written from the
2026 source's documented behaviour) and the core nodes ``File3DToSplat`` / ``SplatToFile3D``.

``run_workflow`` validates like ComfyUI before running (unknown class, missing required input, link type
mismatch, combo value not in list, INT/FLOAT outside min/max, ``validate_inputs`` / ``VALIDATE_INPUTS``, no output
node) and raises ``WorkflowError`` listing every problem; then it executes the output nodes and their ancestors in
dependency order under ``torch.inference_mode()`` (as ComfyUI's executor does), V3 nodes through
``PREPARE_CLASS_CLONE`` + ``EXECUTE_NORMALIZED`` with their hidden inputs, checks the output arity, that ui dicts are
JSON-serialisable and that no node mutated a tensor it received. List semantics (``INPUT_IS_LIST`` /
``OUTPUT_IS_LIST``) follow ComfyUI's map-over-list rule.
"""
from __future__ import annotations

import asyncio
import copy
import importlib.util
import inspect
import json
import os
import sys
import threading
import types
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
COMFYUI_ROOT = Path(os.environ.get("MVBOOST_COMFYUI", REPO_ROOT.parent / "shared" / "comfyui"))

# Types produced/consumed by ComfyUI core that our nodes may use (everything else must be a MVBOOST_* type).
CORE_TYPES = {
    "IMAGE", "MASK", "STRING", "INT", "FLOAT", "BOOLEAN", "COMBO", "*",
    # ComfyUI 2026 native splat stack (issue 7 interop)
    "SPLAT", "GAUSSIAN", "FILE_3D", "FILE_3D_PLY", "FILE_3D_SPLAT", "FILE_3D_SPZ", "FILE_3D_KSPLAT",
    "FILE_3D_SPLAT_ANY", "FILE_3D_ANY", "LOAD3D_CAMERA",
}
MVBOOST_TYPES = {"MVBOOST_ERA3D", "MVBOOST_LGM", "MVBOOST_MULTIVIEW", "MVBOOST_GAUSSIANS", "MVBOOST_CAMERAS"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_ONLY_NODES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}


class WorkflowError(Exception):
    """A workflow failed ComfyUI-style validation; ``.errors`` lists every problem."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("workflow validation failed:\n  " + "\n  ".join(errors))


# ============================================================================ ComfyUI's own modules
_COMFY_LOCK = threading.Lock()


def comfyui_modules() -> dict[str, types.ModuleType]:
    """Import ComfyUI's real service modules from :data:`COMFYUI_ROOT` once (CPU mode) and return them by name.

    Skips the calling test with a clear message when the vendored ComfyUI is absent (CI always has it).
    """
    with _COMFY_LOCK:
        if not (COMFYUI_ROOT / "comfy_api" / "latest" / "__init__.py").is_file():
            pytest.skip(f"the vendored ComfyUI is not at {COMFYUI_ROOT} (set MVBOOST_COMFYUI); CI always has it")
        root = str(COMFYUI_ROOT)
        if root not in sys.path:
            sys.path.append(root)  # appended: the repository's own top-level names (nodes/) keep precedence
        import comfy.cli_args

        comfy.cli_args.args.cpu = True  # read by comfy.model_management at import
        import comfy.model_management
        import comfy.model_patcher
        import comfy.utils
        import comfy_api.latest
        import folder_paths

        return {"folder_paths": folder_paths, "comfy.utils": comfy.utils,
                "comfy.model_management": comfy.model_management, "comfy.model_patcher": comfy.model_patcher,
                "comfy_api.latest": comfy_api.latest}


def _point_folder_paths(fp, base: Path, monkeypatch) -> None:
    """Re-root ComfyUI's real ``folder_paths`` at ``base`` (models, input, output, temp, user) for one test."""
    old_models = fp.models_dir
    new_models = str(base / "models")
    remapped = {}
    for name, (paths, exts) in fp.folder_names_and_paths.items():
        new_paths = [p.replace(old_models, new_models, 1) if p.startswith(old_models) else p for p in paths]
        if name == "custom_nodes":
            new_paths = [str(base / "custom_nodes")]
        remapped[name] = (new_paths, type(exts)(exts))
    monkeypatch.setattr(fp, "folder_names_and_paths", remapped)
    monkeypatch.setattr(fp, "models_dir", new_models)
    monkeypatch.setattr(fp, "base_path", str(base))
    monkeypatch.setattr(fp, "filename_list_cache", {})
    for attr, sub in (("output_directory", "output"), ("input_directory", "input"), ("temp_directory", "temp"),
                      ("user_directory", "user")):
        monkeypatch.setattr(fp, attr, str(base / sub))
        (base / sub).mkdir(parents=True, exist_ok=True)


# ----------------------------------------------------------------------------- core node stand-ins
def _core_nodes(fp_getter) -> dict:
    """LoadImage / PreviewImage / SaveImage / InvertMask with core's inputs, outputs and tensor conventions."""

    class LoadImage:
        CATEGORY = "image"
        RETURN_TYPES = ("IMAGE", "MASK")
        FUNCTION = "load_image"

        @classmethod
        def INPUT_TYPES(cls):
            fp = fp_getter()
            d = fp.get_input_directory()
            files = [f for f in os.listdir(d) if os.path.isfile(os.path.join(d, f))]
            return {"required": {"image": (sorted(fp.filter_files_content_types(files, ["image"])),
                                           {"image_upload": True})}}

        def load_image(self, image):
            import numpy as np
            import torch
            from PIL import Image, ImageOps

            img = Image.open(fp_getter().get_annotated_filepath(image))
            img = ImageOps.exif_transpose(img)
            rgb = torch.from_numpy(np.array(img.convert("RGB")).astype(np.float32) / 255.0)[None]
            if "A" in img.getbands():
                mask = 1.0 - torch.from_numpy(np.array(img.getchannel("A")).astype(np.float32) / 255.0)
            elif img.mode == "P" and "transparency" in img.info:
                mask = 1.0 - torch.from_numpy(
                    np.array(img.convert("RGBA").getchannel("A")).astype(np.float32) / 255.0)
            else:
                mask = torch.zeros((64, 64), dtype=torch.float32)
            return rgb, mask.unsqueeze(0)

    class SaveImage:
        CATEGORY = "image"
        RETURN_TYPES = ()
        FUNCTION = "save_images"
        OUTPUT_NODE = True
        _type = "output"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "ComfyUI"})},
                    "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

        def _dir(self):
            return fp_getter().get_output_directory()

        def save_images(self, images, filename_prefix="ComfyUI", prompt=None, extra_pnginfo=None):
            import numpy as np
            from PIL import Image

            fp = fp_getter()
            folder, filename, counter, sub, _ = fp.get_save_image_path(
                filename_prefix, self._dir(), images[0].shape[1], images[0].shape[0])
            results = []
            for b, image in enumerate(images):
                arr = np.clip(255.0 * image.cpu().numpy(), 0, 255).astype(np.uint8)
                file = f"{filename.replace('%batch_num%', str(b))}_{counter:05}_.png"
                Image.fromarray(arr).save(os.path.join(folder, file), compress_level=1)
                results.append({"filename": file, "subfolder": sub, "type": self._type})
                counter += 1
            return {"ui": {"images": results}}

    class PreviewImage(SaveImage):
        _type = "temp"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"images": ("IMAGE",)},
                    "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

        def _dir(self):
            return fp_getter().get_temp_directory()

        def save_images(self, images, filename_prefix="ComfyUI_temp_abcde", prompt=None, extra_pnginfo=None):
            return super().save_images(images, "ComfyUI_temp_abcde", prompt, extra_pnginfo)

    class InvertMask:
        CATEGORY = "mask"
        RETURN_TYPES = ("MASK",)
        FUNCTION = "invert"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"mask": ("MASK",)}}

        def invert(self, mask):
            return (1.0 - mask,)

    return {"LoadImage": LoadImage, "SaveImage": SaveImage, "PreviewImage": PreviewImage,
            "InvertMask": InvertMask}


# ============================================================================ loading the extension
_LOADED: dict[str, types.ModuleType] = {}


def comfy_module_name(root: Path) -> str:
    """The sys.modules key ComfyUI uses for a custom-node directory (``nodes.load_custom_node``)."""
    return str(root).replace(".", "_x_")


def load_extension(root: Path | str = REPO_ROOT, name: str | None = None, fresh: bool = False) -> types.ModuleType:
    """Import ``<root>/__init__.py`` like ComfyUI: spec_from_file_location under a path-derived name.

    Cached per name; ``fresh=True`` drops a cached copy (and its submodules) and imports again.
    """
    root = Path(root).resolve()
    name = name or comfy_module_name(root)
    if not fresh and name in _LOADED:
        return _LOADED[name]
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[key]
    spec = importlib.util.spec_from_file_location(name, root / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    _LOADED[name] = module
    return module


# ============================================================================ node contract checks
def _input_spec(spec) -> tuple[Any, dict]:
    if not isinstance(spec, (tuple, list)) or len(spec) == 0:
        raise AssertionError(f"input spec must be a tuple (TYPE, {{options}}), got {spec!r}")
    typ = spec[0]
    opts = spec[1] if len(spec) > 1 else {}
    if not isinstance(opts, dict):
        raise AssertionError(f"input options must be a dict, got {opts!r}")
    if isinstance(typ, tuple):
        typ = list(typ)
    if typ == "COMBO":
        typ = list(opts.get("options", []))
    return typ, opts


def check_node_contract(node_id: str, cls, display_name: str | None, pack_node: bool = True) -> list[str]:
    """Return every contract violation of one node class, V3 (``io.ComfyNode``) or V1 (empty list = OK)."""
    errs: list[str] = []
    where = f"{node_id}:"
    if pack_node:
        if not node_id.startswith("MVBoost"):
            errs.append(f"{where} node id must start with 'MVBoost'")
        if not (display_name or "").startswith("MVBoost: "):
            errs.append(f"{where} display name {display_name!r} must start with 'MVBoost: '")
        if not str(getattr(cls, "CATEGORY", "")).startswith("MVBoost"):
            errs.append(f"{where} CATEGORY {getattr(cls, 'CATEGORY', None)!r} must start with 'MVBoost'")
    try:
        it = cls.INPUT_TYPES()
    except Exception as exc:  # never allowed: the node would vanish from the UI
        return errs + [f"{where} INPUT_TYPES() raised {type(exc).__name__}: {exc}"]
    if not isinstance(it, dict) or not set(it) <= {"required", "optional", "hidden"}:
        errs.append(f"{where} INPUT_TYPES() must return a dict with keys required/optional/hidden, got {it!r}")
        return errs
    for section in ("required", "optional"):
        for iname, spec in (it.get(section) or {}).items():
            try:
                typ, opts = _input_spec(spec)
            except AssertionError as exc:
                errs.append(f"{where} input {iname!r}: {exc}")
                continue
            if isinstance(typ, list):
                if not all(isinstance(v, (str, int, float)) for v in typ):
                    errs.append(f"{where} combo {iname!r} options must be scalars")
                if "default" in opts and typ and opts["default"] not in typ:
                    errs.append(f"{where} combo {iname!r} default {opts['default']!r} not among its options")
                continue
            if not isinstance(typ, str):
                errs.append(f"{where} input {iname!r} type must be a string or a list, got {typ!r}")
                continue
            if pack_node:
                for t in typ.split(","):
                    if t.strip() not in CORE_TYPES | MVBOOST_TYPES:
                        errs.append(f"{where} input {iname!r} uses unknown type {t!r} (custom types must be one of "
                                    f"{sorted(MVBOOST_TYPES)})")
            if typ in ("INT", "FLOAT"):
                for k in ("default", "min", "max", "step"):
                    if k not in opts:
                        errs.append(f"{where} {typ} input {iname!r} must set {k!r} (frontend defaults are 0..2048, "
                                    "step 0.5)")
                if all(k in opts for k in ("default", "min", "max")) and not (
                        opts["min"] <= opts["default"] <= opts["max"]):
                    errs.append(f"{where} {iname!r} default {opts['default']} outside [{opts['min']}, {opts['max']}]")
    v3 = is_v3(cls)
    if v3:
        try:
            schema = cls.GET_SCHEMA()  # validates ids (unique across inputs and outputs) like ComfyUI's loader
        except Exception as exc:
            return errs + [f"{where} define_schema()/validate raised {type(exc).__name__}: {exc}"]
        if schema.node_id != node_id:
            errs.append(f"{where} schema.node_id is {schema.node_id!r}")
    rt = getattr(cls, "RETURN_TYPES", None)
    if v3 and isinstance(rt, list):  # V3 classes expose lists
        rt = tuple(rt)
    if not isinstance(rt, tuple):
        errs.append(f"{where} RETURN_TYPES must be a tuple, got {rt!r}")
        rt = ()
    for t in rt:
        if not isinstance(t, str):
            errs.append(f"{where} RETURN_TYPES entries must be strings, got {t!r}")
        elif pack_node and t not in CORE_TYPES | MVBOOST_TYPES:
            errs.append(f"{where} output type {t!r} is unknown (custom types must be one of {sorted(MVBOOST_TYPES)})")
    for attr in ("RETURN_NAMES", "OUTPUT_IS_LIST", "OUTPUT_TOOLTIPS"):
        v = getattr(cls, attr, None)
        if v3 and isinstance(v, list):
            v = tuple(v)
        if v is not None and (not isinstance(v, tuple) or len(v) != len(rt)):
            errs.append(f"{where} {attr} must be a tuple of len(RETURN_TYPES)={len(rt)}, got {v!r}")
    fn = getattr(cls, "FUNCTION", None)
    if not isinstance(fn, str) or not callable(getattr(cls, fn, None)):
        errs.append(f"{where} FUNCTION {fn!r} must name a method of the class")
    if not rt and not getattr(cls, "OUTPUT_NODE", False):
        errs.append(f"{where} a node without outputs must be an OUTPUT_NODE")
    return errs


# ============================================================================ workflow execution
def _is_link(v) -> bool:
    return isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], int)


def _types_match(received: str, expected) -> bool:
    if isinstance(expected, list):  # combo fed by a link: anything goes in ComfyUI's validator too
        return True
    if received == expected or received == "*" or expected == "*":
        return True
    return bool({t.strip() for t in received.split(",")} & {t.strip() for t in expected.split(",")})


def _tensor_versions(value, depth: int = 0) -> list:
    """(object, attribute ids, tensor, _version) snapshots used to detect in-place mutation of node inputs."""
    import torch

    out = []
    if isinstance(value, torch.Tensor):
        # ComfyUI runs nodes under torch.inference_mode(), so inputs made by earlier nodes are inference tensors,
        # whose _version cannot be read: keep a copy of those instead and compare values afterwards.
        out.append((value, value.clone() if value.is_inference() else value._version))
    elif is_dataclass(value) and not isinstance(value, type) and depth < 3:
        for f in fields(value):
            out.extend(_tensor_versions(getattr(value, f.name), depth + 1))
    elif isinstance(value, (list, tuple)) and depth < 3:
        for v in value[:64]:
            out.extend(_tensor_versions(v, depth + 1))
    elif isinstance(value, dict) and depth < 3:
        for v in list(value.values())[:64]:
            out.extend(_tensor_versions(v, depth + 1))
    return out


def _same_values(a, b) -> bool:
    """Equal shapes and values, NaNs in the same places counting as equal."""
    import torch

    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point() or a.is_complex():
        na, nb = torch.isnan(a), torch.isnan(b)
        return bool(torch.equal(na, nb) and torch.equal(a[~na], b[~nb]))
    return bool(torch.equal(a, b))


def _dataclass_ids(value) -> list:
    if is_dataclass(value) and not isinstance(value, type):
        return [(value, {f.name: id(getattr(value, f.name)) for f in fields(value)})]
    return []


def _validate_fn(cls):
    """The node's input validator: V3 ``validate_inputs`` when overridden, V1 ``VALIDATE_INPUTS``."""
    if is_v3(cls):
        from comfy_api.internal import first_real_override

        return first_real_override(cls, "validate_inputs")
    return getattr(cls, "VALIDATE_INPUTS", None)


def _normalize_output(r):
    """A V3 ``NodeOutput`` -> the V1 form ``{"ui": dict|None, "result": tuple}`` (ui objects via ``as_dict()``)."""
    from comfy_api.latest import io as _io

    if isinstance(r, _io.NodeOutput):
        ui = r.ui
        if ui is not None and not isinstance(ui, dict):
            ui = ui.as_dict()
        if r.expand is not None:
            raise NotImplementedError("node expansion is not supported by the harness")
        return {"ui": ui, "result": tuple(r.args)}
    return r


class WorkflowResult:
    """Outputs of one run: ``outputs[node_id]`` = tuple of lists (one list per output); ``ui[node_id]``."""

    def __init__(self):
        self.outputs: dict[str, tuple] = {}
        self.ui: dict[str, dict] = {}
        self.order: list[str] = []

    def output(self, node_id: str, index: int = 0):
        """One output of a node: the value itself (or the list when the node produced several)."""
        vals = self.outputs[str(node_id)][index]
        return vals[0] if len(vals) == 1 else vals


def node_classes(package: types.ModuleType) -> dict:
    """``{node_id: io.ComfyNode class}`` the way ComfyUI's V3 loader gets them: ``await comfy_entrypoint()`` ->
    ``await extension.get_node_list()``, keyed by ``schema.node_id``."""
    async def _get():
        ext = package.comfy_entrypoint()
        ext = await ext if inspect.isawaitable(ext) else ext
        return await ext.get_node_list()

    out = {}
    for cls in _run_coroutine(_get()):
        out[cls.GET_SCHEMA().node_id] = cls
    return out


def _run_coroutine(coro):
    """``asyncio.run`` — in a worker thread when this thread already runs an event loop (Playwright's sync API, used
    by the session-wide ``chromium_browser`` fixture, keeps one running in the main thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def combo_options(cls, name: str) -> list:
    """The options of combo input ``name`` of a node class (V3 ``("COMBO", {"options": [...]})`` or V1 list)."""
    it = cls.INPUT_TYPES()
    spec = {**(it.get("required") or {}), **(it.get("optional") or {})}[name]
    typ, _opts = _input_spec(spec)
    return list(typ)


def is_v3(cls) -> bool:
    return hasattr(cls, "define_schema") and hasattr(cls, "PREPARE_CLASS_CLONE")


class ComfyEnv:
    """A throwaway ComfyUI 'installation' rooted in a tmp dir, with the pack loaded. See module docstring."""

    def __init__(self, base_dir: Path, package: types.ModuleType, monkeypatch):
        self.base_dir = Path(base_dir)
        self.models_dir = self.base_dir / "models"
        self.input_dir = self.base_dir / "input"
        self.output_dir = self.base_dir / "output"
        self.temp_dir = self.base_dir / "temp"
        self.package = package
        self.core = sys.modules.get(package.__name__ + ".mvboost_core")
        if self.core is None:
            self.core = importlib.import_module(package.__name__ + ".mvboost_core")
        self.modules = comfyui_modules()
        self.folder_paths = self.modules["folder_paths"]
        self.utils = self.modules["comfy.utils"]
        self.model_management = mm = self.modules["comfy.model_management"]
        self.InterruptProcessingException = mm.InterruptProcessingException
        _point_folder_paths(self.folder_paths, self.base_dir, monkeypatch)
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.progress: list[tuple[int, int]] = []
        self.texts: list[tuple[str, str]] = []

        def hook(value, total, preview, prompt_id=None, node_id=None):
            # like main.hijack_progress: every update is an interruption point
            mm.throw_exception_if_processing_interrupted()
            self.progress.append((value, total))

        monkeypatch.setattr(self.utils, "PROGRESS_BAR_HOOK", hook)
        monkeypatch.setattr(mm, "interrupt_processing", False)
        # progress texts: the pack sends them through server.PromptServer.instance.send_progress_text
        server = types.ModuleType("server")
        server.PromptServer = type("PromptServer", (), {})
        server.PromptServer.instance = types.SimpleNamespace(
            send_progress_text=lambda text, node_id, sid=None: self.texts.append((str(node_id), text)))
        monkeypatch.setitem(sys.modules, "server", server)
        self.nodes: dict = node_classes(package)
        self.display_names: dict = {k: v.GET_SCHEMA().display_name for k, v in self.nodes.items()}
        self.core_nodes = _core_nodes(lambda: self.folder_paths)
        self.all_nodes = {**self.core_nodes, **self.nodes}
        self._instances: dict[str, Any] = {}

    # ---------------------------------------------------------------- helpers
    def interrupt(self) -> None:
        """Like pressing cancel: the next interruption check raises InterruptProcessingException."""
        self.model_management.interrupt_current_processing(True)

    def validate_node(self, node_id: str) -> list[str]:
        cls = self.all_nodes[node_id]
        return check_node_contract(node_id, cls, self.display_names.get(node_id), pack_node=node_id in self.nodes)

    def run_node(self, class_type: str, **inputs):
        """Run one node with literal inputs (objects allowed) through the same checks; returns its output tuple."""
        wf = {"1": {"class_type": class_type, "inputs": {}}}
        res = self._execute(wf, literal_inputs={"1": inputs}, require_output_node=False)
        return tuple(v[0] if len(v) == 1 else v for v in res.outputs["1"])

    def run_workflow(self, workflow, overrides: dict | None = None) -> WorkflowResult:
        """Validate and execute an API-format workflow (path relative to the repo root, Path or dict).

        ``overrides`` = ``{node_id: {input_name: value}}`` replaces widget values (not links) before validation.
        """
        if isinstance(workflow, (str, Path)):
            p = Path(workflow)
            if not p.is_absolute():
                p = REPO_ROOT / p
            workflow = json.loads(p.read_text())
        wf = copy.deepcopy(workflow)
        for nid, vals in (overrides or {}).items():
            if str(nid) not in wf:
                raise KeyError(f"override for unknown node {nid!r}")
            wf[str(nid)]["inputs"].update(vals)
        return self._execute(wf)

    # ---------------------------------------------------------------- validation + execution
    def _validate(self, wf: dict, literal_inputs: dict, require_output_node: bool) -> tuple[list[str], dict]:
        errors: list[str] = []
        coerced: dict[str, dict] = {}
        for nid, node in wf.items():
            ct = node.get("class_type")
            cls = self.all_nodes.get(ct)
            if cls is None:
                errors.append(f"node {nid}: unknown class_type {ct!r}")
                continue
            try:
                it = cls.INPUT_TYPES()
            except Exception as exc:
                errors.append(f"node {nid} ({ct}): INPUT_TYPES raised {exc!r}")
                continue
            spec_all = {**(it.get("required") or {}), **(it.get("optional") or {})}
            inputs = dict(node.get("inputs", {}))
            lits = literal_inputs.get(nid, {})
            vfn = _validate_fn(cls)
            vparams = set(inspect.signature(vfn).parameters) if vfn else set()
            v_kwargs = any(p.kind == p.VAR_KEYWORD for p in inspect.signature(vfn).parameters.values()) if vfn else False
            out: dict[str, Any] = {}
            for iname, spec in spec_all.items():
                typ, opts = _input_spec(spec)
                if iname in lits:
                    out[iname] = lits[iname]
                    continue
                if iname not in inputs:
                    if iname in (it.get("required") or {}):
                        errors.append(f"node {nid} ({ct}): required input {iname!r} missing")
                    continue
                val = inputs[iname]
                if _is_link(val):
                    src = wf.get(val[0])
                    if src is None:
                        errors.append(f"node {nid} ({ct}): input {iname!r} links to missing node {val[0]!r}")
                        continue
                    scls = self.all_nodes.get(src.get("class_type"))
                    if scls is None:
                        continue
                    rts = scls.RETURN_TYPES
                    if not 0 <= val[1] < len(rts):
                        errors.append(f"node {nid} ({ct}): input {iname!r} links to output {val[1]} of node {val[0]} "
                                      f"which has {len(rts)} outputs")
                        continue
                    if "input_types" not in vparams and not _types_match(rts[val[1]], typ):
                        errors.append(f"node {nid} ({ct}): return_type_mismatch on {iname!r}: received "
                                      f"{rts[val[1]]}, expected {typ}")
                    out[iname] = val
                    continue
                if isinstance(val, dict) and "__value__" in val:
                    val = val["__value__"]
                try:
                    if typ == "INT":
                        val = int(val)
                    elif typ == "FLOAT":
                        val = float(val)
                    elif typ == "STRING":
                        val = str(val)
                    elif typ == "BOOLEAN":
                        val = bool(val)
                except Exception as exc:
                    errors.append(f"node {nid} ({ct}): input {iname!r} value {val!r} is not a {typ}: {exc}")
                    continue
                if iname not in vparams and not v_kwargs:
                    if "min" in opts and val < opts["min"]:
                        errors.append(f"node {nid} ({ct}): value_smaller_than_min {iname}={val} < {opts['min']}")
                    if "max" in opts and val > opts["max"]:
                        errors.append(f"node {nid} ({ct}): value_bigger_than_max {iname}={val} > {opts['max']}")
                    if isinstance(typ, list) and val not in typ:
                        errors.append(f"node {nid} ({ct}): value_not_in_list {iname}={val!r} not in {typ}")
                out[iname] = val
            extra = set(inputs) - set(spec_all)
            if extra:
                errors.append(f"node {nid} ({ct}): unknown inputs {sorted(extra)}")
            if vfn:
                args = {k: v for k, v in out.items() if not _is_link(v) and (k in vparams or v_kwargs)}
                if "input_types" in vparams:  # ComfyUI passes the received types of linked inputs
                    args["input_types"] = {
                        k: self.all_nodes[wf[v[0]]["class_type"]].RETURN_TYPES[v[1]]
                        for k, v in out.items() if _is_link(v) and wf.get(v[0], {}).get("class_type") in self.all_nodes}
                try:
                    r = vfn(**args)
                except Exception as exc:
                    r = f"validate_inputs raised {exc!r}"
                if r is not True:
                    errors.append(f"node {nid} ({ct}): {r}")
            coerced[nid] = out
        if require_output_node and not any(
                getattr(self.all_nodes.get(n.get("class_type")), "OUTPUT_NODE", False) for n in wf.values()):
            errors.append("prompt_no_outputs: the workflow has no output node")
        return errors, coerced

    def _execute(self, wf: dict, literal_inputs: dict | None = None, require_output_node: bool = True):
        wf = {str(k): v for k, v in wf.items()}
        literal_inputs = literal_inputs or {}
        errors, coerced = self._validate(wf, literal_inputs, require_output_node)
        if errors:
            raise WorkflowError(errors)
        # the output nodes and their ancestors, in dependency order
        targets = [n for n, v in wf.items() if getattr(self.all_nodes[v["class_type"]], "OUTPUT_NODE", False)]
        if not require_output_node:
            targets = list(wf)
        order: list[str] = []
        state: dict[str, int] = {}

        def visit(n, stack):
            if state.get(n) == 2:
                return
            if state.get(n) == 1:
                raise WorkflowError([f"dependency cycle through nodes {stack + [n]}"])
            state[n] = 1
            for v in coerced[n].values():
                if _is_link(v):
                    visit(v[0], stack + [n])
            state[n] = 2
            order.append(n)

        for t in targets:
            visit(t, [])
        result = WorkflowResult()
        result.order = order
        for nid in order:
            self.model_management.throw_exception_if_processing_interrupted()  # like nodes.before_node_execution
            ct = wf[nid]["class_type"]
            cls = self.all_nodes[ct]
            it = cls.INPUT_TYPES()
            inputs: dict[str, list] = {}
            for k, v in coerced[nid].items():
                inputs[k] = list(result.outputs[v[0]][v[1]]) if _is_link(v) else [v]
            hidden_values = {"UNIQUE_ID": nid, "PROMPT": wf, "EXTRA_PNGINFO": {}, "DYNPROMPT": None}
            if is_v3(cls):  # like execution.py: a class clone carrying the hidden inputs, the locked classmethod
                from comfy_api.internal import make_locked_method_func
                from comfy_api.latest import io as _io

                hidden = {}
                cls.VALIDATE_CLASS()
                clone = cls.PREPARE_CLASS_CLONE({h: hidden_values.get(h.value) for h in _io.Hidden})
                fn = make_locked_method_func(cls, cls.FUNCTION, clone)
            else:
                hidden = {}
                for k, kind in (it.get("hidden") or {}).items():
                    hidden[k] = hidden_values.get(kind)
                obj = self._instances.get(nid)
                if obj is None or type(obj) is not cls:
                    obj = cls()
                    self._instances[nid] = obj
                fn = getattr(obj, cls.FUNCTION)
            in_list = getattr(cls, "INPUT_IS_LIST", False)
            calls = []
            if in_list:
                calls.append({**inputs, **{k: [v] for k, v in hidden.items()}})
            else:
                n_calls = max([len(v) for v in inputs.values()] or [1])
                if any(len(v) == 0 for v in inputs.values()):
                    n_calls = 0
                for i in range(n_calls):
                    calls.append({**{k: v[min(i, len(v) - 1)] for k, v in inputs.items()}, **hidden})
            n_out = len(cls.RETURN_TYPES)
            out_is_list = getattr(cls, "OUTPUT_IS_LIST", None) or (False,) * n_out
            merged: list[list] = [[] for _ in range(n_out)]
            ui: dict[str, list] = {}
            for kw in calls:
                snaps = [s for v in kw.values() for s in _tensor_versions(v)]
                ids = [s for v in kw.values() for s in _dataclass_ids(v)]
                import torch

                with torch.inference_mode():  # like ComfyUI's executor (execution.py): nodes needing autograd leave it
                    r = fn(**kw)
                r = _normalize_output(r)
                for t, ver in snaps:
                    if (not _same_values(t, ver)) if isinstance(ver, torch.Tensor) else t._version != ver:
                        raise AssertionError(f"node {nid} ({ct}) modified an input tensor in place "
                                             "(ComfyUI caches outputs: nodes must not mutate their inputs)")
                for o, before in ids:
                    if {f.name: id(getattr(o, f.name)) for f in fields(o)} != before:
                        raise AssertionError(f"node {nid} ({ct}) reassigned a field of an input "
                                             f"{type(o).__name__} (nodes must not mutate their inputs)")
                if isinstance(r, dict):
                    if "expand" in r:
                        raise NotImplementedError("node expansion is not supported by the harness")
                    if "ui" in r and r["ui"] is not None:
                        for key, val in r["ui"].items():
                            ui.setdefault(key, []).extend(val if isinstance(val, (list, tuple)) else [val])
                    r = r.get("result", ())
                if r is None:
                    r = ()
                if not isinstance(r, tuple):
                    raise AssertionError(f"node {nid} ({ct}) must return a tuple, got {type(r).__name__}")
                if len(r) != n_out:
                    raise AssertionError(f"node {nid} ({ct}) returned {len(r)} values but RETURN_TYPES has {n_out}")
                for i, v in enumerate(r):
                    if out_is_list[i]:
                        merged[i].extend(v)
                    else:
                        merged[i].append(v)
            result.outputs[nid] = tuple(merged)
            if ui:
                try:  # ComfyUI sends ui dicts to the browser and stores them in /history as JSON
                    json.dumps(ui)
                except TypeError as exc:
                    raise AssertionError(f"node {nid} ({ct}) returned a ui dict that is not JSON-serialisable: "
                                         f"{exc}") from exc
                result.ui[nid] = ui
        return result


# ============================================================================ ComfyUI 2026 splat stack stand-in
# Facts from the public 2026 ComfyUI source (comfy_api/latest, comfy_extras/nodes_gaussian.py); our own code.
SH_C0 = 0.28209479177387814


class SplatStandIn:
    """Stand-in for core ``Types.SPLAT``: batched fields, 3DGS splat frame (y down), see splat_convert's table."""

    def __init__(self, positions, scales, rotations, opacities, sh, counts=None):
        self.positions = positions  # [B,N,3]
        self.scales = scales  # [B,N,3] linear
        self.rotations = rotations  # [B,N,4] wxyz
        self.opacities = opacities  # [B,N,1] in [0,1]
        self.sh = sh  # [B,N,K,3]
        self.counts = counts  # [B] or None


class File3DStandIn:
    """Stand-in for core ``Types.File3D``: a path on disk or a binary stream plus a format string."""

    def __init__(self, source, file_format: str = ""):
        self._source = source
        self.format = (file_format or (Path(source).suffix if isinstance(source, str) else "")).lstrip(".").lower()

    def get_bytes(self) -> bytes:
        if isinstance(self._source, str):
            return Path(self._source).read_bytes()
        self._source.seek(0)
        return self._source.read()


def make_comfy_api_2026() -> dict[str, types.ModuleType]:
    """ComfyUI's real ``comfy_api.latest`` extended with the 2026 splat types: ``io.Splat`` ("SPLAT"),
    ``io.File3D*`` ("FILE_3D*") and ``Types.SPLAT`` / ``Types.File3D`` (the stand-in classes above). Returns
    ``{"comfy_api.latest": module}`` to put into ``sys.modules``."""
    real = comfyui_modules()["comfy_api.latest"]
    io26 = types.ModuleType(real.io.__name__)
    io26.__dict__.update({k: v for k, v in real.io.__dict__.items() if k != "__name__"})
    for attr, io_type in (("Splat", "SPLAT"), ("File3D", "FILE_3D"), ("File3DAny", "FILE_3D"),
                          ("File3DPLY", "FILE_3D_PLY"), ("File3DSPLAT", "FILE_3D_SPLAT"),
                          ("File3DSPZ", "FILE_3D_SPZ"), ("File3DKSPLAT", "FILE_3D_KSPLAT"),
                          ("File3DSplatAny", "FILE_3D_SPLAT_ANY")):
        setattr(io26, attr, real.io.Custom(io_type))
    latest = types.ModuleType("comfy_api.latest")
    latest.__dict__.update({k: v for k, v in real.__dict__.items() if k != "__name__"})
    latest.io = latest.IO = latest.comfy_io = io26
    latest.Types = type("Types", (real.Types,), {"SPLAT": SplatStandIn, "File3D": File3DStandIn})
    return {"comfy_api.latest": latest}


def parse_gaussian_ply_like_core(data: bytes):
    """Parse a 3DGS .ply with the rules ComfyUI core's File3DToSplat uses -> numpy (xyz, scale, rot, opacity, sh).

    binary_little_endian only; vertex properties by name; scale = exp(scale_i) (else 0.01); rot = normalised
    rot_0..3 (wxyz, else identity); opacity = sigmoid (else 1); sh = [f_dc | f_rest reshaped channel-major (N,3,K-1)
    -> (N,K-1,3)]; no axis change.
    """
    import numpy as np

    dtypes = {"char": "i1", "uchar": "u1", "short": "i2", "ushort": "u2", "int": "i4", "uint": "u4",
              "float": "f4", "double": "f8", "float32": "f4", "float64": "f8", "uint8": "u1", "int32": "i4"}
    end = data.find(b"end_header")
    if end < 0:
        raise ValueError("not a PLY")
    body = end + len(b"end_header") + (2 if data[end + 10:end + 12] == b"\r\n" else 1)
    props, count, in_vertex = [], 0, False
    for line in data[:end].decode("ascii").splitlines():
        p = line.split()
        if not p:
            continue
        if p[0] == "format" and p[1] != "binary_little_endian":
            raise ValueError("need binary_little_endian")
        if p[0] == "element":
            in_vertex = p[1] == "vertex"
            if in_vertex:
                count = int(p[2])
        elif p[0] == "property" and in_vertex:
            props.append((p[2], "<" + dtypes[p[1]]))
    arr = np.frombuffer(data, np.dtype(props), count=count, offset=body)
    names = arr.dtype.names
    c = lambda k: arr[k].astype(np.float32)  # noqa: E731
    xyz = np.stack([c("x"), c("y"), c("z")], 1)
    scale = np.exp(np.stack([c(f"scale_{i}") for i in range(3)], 1)) if "scale_0" in names \
        else np.full((count, 3), 0.01, np.float32)
    if "rot_0" in names:
        rot = np.stack([c(f"rot_{i}") for i in range(4)], 1)
        rot = rot / np.clip(np.linalg.norm(rot, axis=1, keepdims=True), 1e-12, None)
    else:
        rot = np.tile(np.array([1, 0, 0, 0], np.float32), (count, 1))
    opacity = 1.0 / (1.0 + np.exp(-c("opacity"))) if "opacity" in names else np.ones(count, np.float32)
    dc = np.stack([c("f_dc_0"), c("f_dc_1"), c("f_dc_2")], 1)
    rest = sorted((k for k in names if k.startswith("f_rest_")), key=lambda k: int(k.split("_")[-1]))
    if rest:
        r = np.stack([c(k) for k in rest], 1)
        k1 = r.shape[1] // 3
        sh = np.concatenate([dc[:, None, :], r.reshape(count, 3, k1).transpose(0, 2, 1)], 1)
    else:
        sh = dc[:, None, :]
    return xyz, scale, rot, opacity, sh


def parse_gaussian_splat_like_core(data: bytes):
    """antimatter15 .splat with core's rules: 32-byte records (f32 xyz, f32 linear scale, u8 rgba, u8 quat wxyz as
    (b - 128) / 128, normalised); opacity = a / 255, base colour = rgb / 255 (as SH DC)."""
    import numpy as np

    if len(data) % 32:
        raise ValueError(".splat size is not a multiple of 32 bytes")
    rec = np.frombuffer(data, np.dtype([("xyz", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("q", "u1", 4)]))
    rgba = rec["rgba"].astype(np.float32) / 255.0
    q = (rec["q"].astype(np.float32) - 128.0) / 128.0
    q = q / np.clip(np.linalg.norm(q, axis=1, keepdims=True), 1e-12, None)
    sh = ((rgba[:, :3] - 0.5) / SH_C0)[:, None, :]
    return rec["xyz"].astype(np.float32), rec["scale"].astype(np.float32), q, rgba[:, 3].copy(), sh


def parse_gaussian_spz_like_core(data: bytes):
    """Niantic .spz (gzip, versions 2/3) with core's rules: 24-bit fixed-point positions (header fractional bits),
    alpha = b / 255, rgb = (b / 255 - 0.5) * (SH_C0 / 0.15) + 0.5, scale = exp(b / 16 - 10), rotation v3 =
    smallest-three (2 bits index + 3 x (sign + 9 bits)), v2 = 3 bytes xyz (b / 127.5 - 1) with w >= 0."""
    import gzip
    import math
    import struct

    import numpy as np

    raw = gzip.decompress(data)
    magic, version, n = struct.unpack_from("<III", raw, 0)
    if magic != 0x5053474E or version not in (2, 3):
        raise ValueError("unsupported .spz")
    frac = raw[13]
    off = 16
    b = np.frombuffer(raw, np.uint8, count=n * 9, offset=off).reshape(n, 3, 3).astype(np.int64)
    v = (b[..., 2] << 16) | (b[..., 1] << 8) | b[..., 0]
    xyz = (np.where(v & 0x800000, v - 0x1000000, v) / float(1 << frac)).astype(np.float32)
    off += n * 9
    alpha = np.frombuffer(raw, np.uint8, count=n, offset=off).astype(np.float32) / 255.0
    off += n
    cb = np.frombuffer(raw, np.uint8, count=n * 3, offset=off).reshape(n, 3).astype(np.float32)
    off += n * 3
    rgb = (cb / 255.0 - 0.5) * (SH_C0 / 0.15) + 0.5
    sb = np.frombuffer(raw, np.uint8, count=n * 3, offset=off).reshape(n, 3).astype(np.float32)
    off += n * 3
    scale = np.exp(sb / 16.0 - 10.0)
    if version == 3:
        qb = np.frombuffer(raw, np.uint8, count=n * 4, offset=off).reshape(n, 4).astype(np.int64)
        word = qb[:, 0] | (qb[:, 1] << 8) | (qb[:, 2] << 16) | (qb[:, 3] << 24)
        largest = (word >> 30) & 3
        q = np.zeros((n, 4), np.float64)  # x, y, z, w
        rest, sumsq = word.copy(), np.zeros(n)
        for comp in (3, 2, 1, 0):
            active = comp != largest
            val = (1.0 / math.sqrt(2)) * ((rest & 0x1FF) / 511.0)
            val = np.where(((rest >> 9) & 1) == 1, -val, val)
            rest = np.where(active, rest >> 10, rest)
            q[active, comp] = val[active]
            sumsq += np.where(active, val * val, 0.0)
        q[np.arange(n), largest] = np.sqrt(np.clip(1.0 - sumsq, 0, None))
        q = np.stack([q[:, 3], q[:, 0], q[:, 1], q[:, 2]], 1)
    else:
        xq = np.frombuffer(raw, np.uint8, count=n * 3, offset=off).reshape(n, 3).astype(np.float64) / 127.5 - 1.0
        q = np.concatenate([np.sqrt(np.clip(1.0 - (xq ** 2).sum(1), 0, None))[:, None], xq], 1)
    q = (q / np.clip(np.linalg.norm(q, axis=1, keepdims=True), 1e-12, None)).astype(np.float32)
    return xyz, scale.astype(np.float32), q, alpha, ((rgb - 0.5) / SH_C0)[:, None, :].astype(np.float32)


CORE_PARSERS = {"ply": "parse_gaussian_ply_like_core", "splat": "parse_gaussian_splat_like_core",
                "spz": "parse_gaussian_spz_like_core"}


def write_gaussian_ply_like_core(positions, scales, rotations, opacities, sh) -> bytes:
    """Serialise one splat item the way core's Create 3D File (from Splat) writes .ply (full 3DGS layout).

    x y z, nx ny nz (zeros), f_dc_0..2, f_rest_* channel-major, opacity = logit(clip(o, 1e-6, 1-1e-6)),
    scale_i = log(clip(s, 1e-8)), rot_0..3 as given (wxyz). All float32, binary little endian.
    """
    import numpy as np

    xyz = np.asarray(positions, np.float32)
    n = xyz.shape[0]
    f = np.asarray(sh, np.float32)
    f_rest = f[:, 1:, :].transpose(0, 2, 1).reshape(n, -1)
    op = np.clip(np.asarray(opacities, np.float32).reshape(n, 1), 1e-6, 1 - 1e-6)
    cols = [xyz, np.zeros_like(xyz), f[:, 0, :], f_rest, np.log(op / (1 - op)),
            np.log(np.clip(np.asarray(scales, np.float32), 1e-8, None)), np.asarray(rotations, np.float32)]
    attrs = (["x", "y", "z", "nx", "ny", "nz"] + [f"f_dc_{i}" for i in range(3)]
             + [f"f_rest_{i}" for i in range(f_rest.shape[1])] + ["opacity"]
             + [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)])
    body = np.concatenate(cols, axis=1).astype("<f4")
    header = ("ply\nformat binary_little_endian 1.0\n" + f"element vertex {n}\n"
              + "".join(f"property float {a}\n" for a in attrs) + "end_header\n")
    return header.encode("ascii") + body.tobytes()


def _core_splat_nodes() -> dict:
    """Stand-ins for core File3DToSplat ('Get Splat') and SplatToFile3D (.ply only), V1-style for the harness."""

    class File3DToSplat:
        CATEGORY = "3d/splat"
        RETURN_TYPES = ("SPLAT",)
        FUNCTION = "execute"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"model_3d": ("FILE_3D,FILE_3D_SPLAT_ANY,FILE_3D_PLY,FILE_3D_SPLAT,FILE_3D_KSPLAT,"
                                              "FILE_3D_SPZ",)}}

        def execute(self, model_3d):
            import numpy as np
            import torch

            fmt = model_3d.format or "ply"
            if fmt not in CORE_PARSERS:
                raise NotImplementedError(f"the harness stand-in parses {sorted(CORE_PARSERS)} only, not {fmt!r}")
            xyz, scale, rot, opacity, sh = globals()[CORE_PARSERS[fmt]](model_3d.get_bytes())
            t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).float()  # noqa: E731
            return (SplatStandIn(t(xyz)[None], t(scale)[None], t(rot)[None], t(opacity).reshape(1, -1, 1),
                                 t(sh)[None]),)

    class SplatToFile3D:
        CATEGORY = "3d/splat"
        RETURN_TYPES = ("FILE_3D_SPLAT_ANY",)
        FUNCTION = "execute"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"splat": ("SPLAT",), "format": (["ply", "ksplat", "spz"],)}}

        def execute(self, splat, format="ply"):
            import io as _io

            if format != "ply":
                raise NotImplementedError("the harness stand-in writes .ply only")
            end = int(splat.counts[0]) if splat.counts is not None else splat.positions.shape[1]
            data = write_gaussian_ply_like_core(*(getattr(splat, k)[0, :end].cpu().numpy() for k in
                                                  ("positions", "scales", "rotations", "opacities", "sh")))
            return (File3DStandIn(_io.BytesIO(data), file_format="ply"),)

    return {"File3DToSplat": File3DToSplat, "SplatToFile3D": SplatToFile3D}


# ============================================================================ pytest fixtures
@pytest.fixture
def comfy_env(tmp_path, monkeypatch) -> ComfyEnv:
    """The pack loaded like ComfyUI does, with ComfyUI's real service modules rooted in ``tmp_path/comfy``."""
    comfyui_modules()
    package = load_extension()
    env = ComfyEnv(tmp_path / "comfy", package, monkeypatch)
    # outside-ComfyUI fallbacks must never be used inside the harness
    monkeypatch.setenv("MVBOOST_MODELS_DIR", str(tmp_path / "not_comfy_models"))
    return env


@pytest.fixture
def comfy_env_2026(tmp_path, monkeypatch) -> ComfyEnv:
    """Like ``comfy_env`` but the host also has ComfyUI 2026's splat stack: ``comfy_api.latest`` is the real module
    extended with ``Types.SPLAT`` / ``Types.File3D`` / ``io.Splat`` / ``io.File3DSplatAny`` (see
    :func:`make_comfy_api_2026`), plus core ``File3DToSplat`` and ``SplatToFile3D`` nodes. The pack is imported again
    under another name, because it detects the host's types at import time, the way it would inside a 2026 ComfyUI."""
    comfyui_modules()
    for name, mod in make_comfy_api_2026().items():
        monkeypatch.setitem(sys.modules, name, mod)
    package = load_extension(name=comfy_module_name(REPO_ROOT) + "_host2026", fresh=True)
    env = ComfyEnv(tmp_path / "comfy", package, monkeypatch)
    env.modules["comfy_api.latest"] = sys.modules["comfy_api.latest"]
    env.core_nodes.update(_core_splat_nodes())
    env.all_nodes = {**env.core_nodes, **env.nodes}
    monkeypatch.setenv("MVBOOST_MODELS_DIR", str(tmp_path / "not_comfy_models"))
    return env


# ============================================================================ UI <-> API format
def ui_to_api_graph(ui: dict, node_classes: dict) -> dict:
    """Convert a UI-format (LiteGraph 0.4) workflow into API format using the node classes' INPUT_TYPES.

    Widget values are matched positionally to the required+optional inputs that are widgets (INT, FLOAT, STRING,
    BOOLEAN, combo); INT inputs with ``control_after_generate`` (or named seed/noise_seed) consume one extra value.
    Frontend-only, muted (mode 2) and bypassed (mode 4) nodes are dropped.
    """
    links = {l[0]: l for l in ui.get("links", [])}
    out: dict[str, dict] = {}
    for node in ui["nodes"]:
        if node["type"] in FRONTEND_ONLY_NODES or node.get("mode", 0) in (2, 4):
            continue
        cls = node_classes.get(node["type"])
        if cls is None:
            raise KeyError(f"UI workflow uses unknown node type {node['type']!r}")
        it = cls.INPUT_TYPES()
        spec_all = {**(it.get("required") or {}), **(it.get("optional") or {})}
        linked = {}
        for inp in node.get("inputs", []) or []:
            if inp.get("link") is not None:
                l = links[inp["link"]]
                linked[inp["name"]] = [str(l[1]), int(l[2])]
        inputs: dict[str, Any] = {}
        wv = list(node.get("widgets_values") or [])
        if isinstance(node.get("widgets_values"), dict):
            raise ValueError("dict widgets_values (V3 dynamic widgets) are not supported")
        pos = 0
        for iname, spec in spec_all.items():
            typ, opts = _input_spec(spec)
            is_widget = isinstance(typ, list) or typ in WIDGET_TYPES
            if is_widget and not opts.get("forceInput"):
                val = wv[pos] if pos < len(wv) else None
                pos += 1
                if typ == "INT" and (opts.get("control_after_generate") or iname in ("seed", "noise_seed")):
                    pos += 1
                if iname in linked:
                    inputs[iname] = linked[iname]
                elif pos - 1 < len(wv):
                    inputs[iname] = val
            elif iname in linked:
                inputs[iname] = linked[iname]
        out[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return out


# ============================================================================ command line
def main(argv=None) -> int:
    """Run an API-format workflow in-process with the vendored ComfyUI's service modules (no server).

    python tests/comfy_harness.py workflows/api/render_turntable.json --base /tmp/run \\
        --input my.ply:gaussians.ply --set 2.frames=8 --set 2.resolution=128
    Files are copied into <base>/input (``src[:name]``); outputs land in <base>/output, previews in <base>/temp.
    """
    import argparse

    ap = argparse.ArgumentParser(description="Run an API-format workflow in-process (ComfyUI's modules, no server).")
    ap.add_argument("workflow")
    ap.add_argument("--base", required=True, help="throwaway ComfyUI base dir (models/, input/, output/, temp/)")
    ap.add_argument("--input", action="append", default=[], help="file to copy into input/, as SRC[:NAME]")
    ap.add_argument("--set", action="append", default=[], help="override NODE.INPUT=JSON_VALUE")
    args = ap.parse_args(argv)
    comfyui_modules()
    with pytest.MonkeyPatch.context() as mp:
        env = ComfyEnv(Path(args.base), load_extension(), mp)
        return _run_cli(env, args)


def _run_cli(env: "ComfyEnv", args) -> int:
    import shutil

    for spec in args.input:
        src, _, name = spec.partition(":")
        shutil.copy(src, env.input_dir / (name or Path(src).name))
    overrides: dict[str, dict] = {}
    for spec in args.set:
        key, _, value = spec.partition("=")
        nid, _, iname = key.partition(".")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        overrides.setdefault(nid, {})[iname] = parsed
    res = env.run_workflow(args.workflow, overrides=overrides)
    for nid in res.order:
        shapes = [getattr(v[0], "shape", type(v[0]).__name__) if len(v) == 1 else f"list[{len(v)}]"
                  for v in res.outputs[nid]]
        print(f"node {nid}: outputs {shapes}" + (f" ui {json.dumps(res.ui[nid])}" if nid in res.ui else ""))
    print(f"outputs in {env.output_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
