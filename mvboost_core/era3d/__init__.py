"""Era3D (pengHTYX/Era3D) multi-view diffusion on current diffusers: UNet, pipeline, loader.

Importing this package imports diffusers (the UNet is built from diffusers parts).
"""
from .unet import Era3DConfigError, Era3DUNet, auto_dtype, normalize_unet_config

__all__ = ["Era3DUNet", "Era3DConfigError", "auto_dtype", "normalize_unet_config"]
