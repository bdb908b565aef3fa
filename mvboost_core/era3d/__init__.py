"""Era3D (pengHTYX/Era3D) multi-view diffusion on current diffusers: UNet, pipeline, loader.

Importing this package imports diffusers (the UNet is built from diffusers parts).
"""
from .unet import Era3DConfigError, Era3DUNet, normalize_unet_config

__all__ = ["Era3DUNet", "Era3DConfigError", "normalize_unet_config"]
from .pipeline import (
    Era3DCondition,
    Era3DLoadError,
    Era3DPipeline,
    compute_prompt_embeds,
    era3d_prompts,
    load_era3d,
    load_upstream_prompt_embeds,
)
from .preprocess import Era3DInputError, alpha_from_comfy_mask, preprocess_image

__all__ += [
    "Era3DPipeline", "Era3DCondition", "Era3DLoadError", "load_era3d", "era3d_prompts", "compute_prompt_embeds",
    "load_upstream_prompt_embeds", "Era3DInputError", "alpha_from_comfy_mask", "preprocess_image",
]
