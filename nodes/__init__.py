"""ComfyUI node adapters (V3 schema, ``comfy_api.latest``). One module per stage.

Convention: every ``nodes/<module>.py`` defines a module-level list ``NODES = [...]`` of its ``io.ComfyNode``
classes. Modules are discovered automatically (any non-underscore module in this folder, e.g. a new
``nodes/mesh.py``); :data:`NODES` gathers them in module order. A module that fails to import is logged by name
(``[MVBoost] nodes.<module> could not be imported ...``) and skipped, so one broken optional dependency never hides
the other nodes; :data:`IMPORT_ERRORS` keeps the exceptions.
"""
from __future__ import annotations

import importlib
import logging
import pkgutil

log = logging.getLogger("mvboost")

NODES: list = []
IMPORT_ERRORS: dict = {}


def _discover() -> None:
    try:
        import comfy_api.latest  # noqa: F401  (ComfyUI's V3 node API, v0.3.64 and newer)
    except Exception as exc:
        IMPORT_ERRORS["comfy_api"] = exc
        log.warning("[MVBoost] ComfyUI's node API (comfy_api.latest) is not importable (%s): the MVBoost nodes need "
                    "ComfyUI v0.3.64 or newer; no nodes registered", exc)
        return
    try:  # model folders (lgm, era3d, lgm_loras) known to ComfyUI from the start (cheap, never raises)
        from ._comfy import register_model_folders

        register_model_folders()
    except Exception as exc:  # pragma: no cover
        log.warning("[MVBoost] could not register the model folders: %s", exc)
    seen: set = set()
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        try:
            mod = importlib.import_module(f".{info.name}", __name__)
        except Exception as exc:
            IMPORT_ERRORS[info.name] = exc
            log.warning("[MVBoost] nodes.%s could not be imported (its nodes are unavailable): %s: %s", info.name,
                        type(exc).__name__, exc)
            continue
        for cls in getattr(mod, "NODES", ()):
            if cls not in seen:
                seen.add(cls)
                NODES.append(cls)


_discover()
