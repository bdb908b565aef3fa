"""ComfyUI entry point for MVBoost (Era3D + boosted LGM -> 3D Gaussians): V3 nodes through ``comfy_entrypoint``.

ComfyUI imports this file as a package under a path-derived name, so everything here uses relative imports.
Importing is cheap: no downloads, no model loads, no CUDA initialisation. The node classes are gathered from the
``NODES`` lists of ``nodes/*.py`` (see ``nodes/__init__.py``). This module deliberately defines no
``NODE_CLASS_MAPPINGS``: ComfyUI would then take the V1 path and ignore ``comfy_entrypoint``.

``WEB_DIRECTORY`` holds the small frontend extension that adds Load Gaussians' upload button.
"""
WEB_DIRECTORY = "./web"

if __package__:  # imported as a package (ComfyUI, the test harness); a plain import (e.g. by pytest) gets nothing
    from .nodes import IMPORT_ERRORS, NODES

    try:
        from comfy_api.latest import ComfyExtension
    except Exception:  # not inside ComfyUI >= 0.3.64: nothing to register (nodes/__init__ logged why)
        ComfyExtension = object

    class MVBoostExtension(ComfyExtension):
        """The pack's node list for ComfyUI's V3 loader."""

        async def get_node_list(self) -> list:
            return list(NODES)

    async def comfy_entrypoint() -> MVBoostExtension:
        return MVBoostExtension()

    __all__ = ["comfy_entrypoint", "NODES", "IMPORT_ERRORS", "WEB_DIRECTORY"]
