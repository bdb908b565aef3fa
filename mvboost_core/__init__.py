"""mvboost_core: the MVBoost library (Era3D multi-view diffusion -> boosted LGM -> 3D Gaussians).

Never imports ComfyUI. Importing this package is cheap: heavy submodules (diffusers, transformers, peft, lpips)
are imported only by the modules that need them.
"""
from .cameras import Cameras
from .gaussians import Gaussians

__version__ = "0.1.0"
__all__ = ["Cameras", "Gaussians", "__version__"]
