"""ComfyUI entry point for MVBoost (Era3D + boosted LGM -> 3D Gaussians).

ComfyUI imports this file as a package under a path-derived name, so everything here uses relative imports.
Importing is cheap: no downloads, no model loads, no CUDA initialisation.
"""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = None
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
