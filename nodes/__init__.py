"""ComfyUI node adapters. One module per stage; each defines NODE_CLASS_MAPPINGS / NODE_DISPLAY_NAME_MAPPINGS.

Modules are discovered automatically. A module that fails to import is logged and skipped, so one broken
optional dependency never hides the other nodes.
"""
from __future__ import annotations

import importlib
import logging
import pkgutil

log = logging.getLogger("mvboost")

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
IMPORT_ERRORS: dict = {}

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name.startswith("_"):
        continue
    try:
        _mod = importlib.import_module(f".{_info.name}", __name__)
    except Exception as exc:  # pragma: no cover - exercised by the harness test with a broken module
        IMPORT_ERRORS[_info.name] = exc
        log.warning("[MVBoost] nodes.%s could not be imported (its nodes are unavailable): %s", _info.name, exc)
        continue
    NODE_CLASS_MAPPINGS.update(getattr(_mod, "NODE_CLASS_MAPPINGS", {}))
    NODE_DISPLAY_NAME_MAPPINGS.update(getattr(_mod, "NODE_DISPLAY_NAME_MAPPINGS", {}))
