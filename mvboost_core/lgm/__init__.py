"""LGM (Large Multi-View Gaussian Model, 3DTopia/LGM): checkpoint-compatible network, loader and inference.

    from mvboost_core.lgm import load_lgm, reconstruct
    lgm = load_lgm("models/lgm/model_fp16_fixrot.safetensors", dtype="bf16")
    gaussians = reconstruct(lgm, images)          # images [B,4,H,W,3], views front/right/back/left

Lower level: ``prepare_lgm_input(images) -> [B,4,9,S,S]`` and ``LGM.forward_gaussians(x) -> [B,N,14]``.
The LoRA targets are the ``unet.*.attns.*.attn.qkv`` / ``.attn.proj`` Linear layers (the only Linears).
"""
from .checkpoint import (
    LGMCheckpointError,
    detect_config,
    init_lgm_weights_,
    load_lgm,
    read_safetensors_header,
    read_state_dict,
    save_lgm_checkpoint,
)
from .config import CONFIGS, LGMConfig, get_config
from .inference import IMAGENET_MEAN, IMAGENET_STD, prepare_lgm_input, reconstruct, views_from_images
from .network import LGM, MVAttention, gaussians_from_raw

__all__ = [
    "LGM", "LGMConfig", "CONFIGS", "get_config", "MVAttention", "gaussians_from_raw",
    "load_lgm", "LGMCheckpointError", "detect_config", "read_safetensors_header",
    "read_state_dict", "save_lgm_checkpoint", "init_lgm_weights_",
    "prepare_lgm_input", "reconstruct", "views_from_images", "IMAGENET_MEAN", "IMAGENET_STD",
]
