"""``mvboost selftest``: prove the installation works, offline, on CPU, in well under a minute.

It writes tiny **random** checkpoints in the real on-disk formats to a temporary folder:

* an LGM checkpoint (``micro`` config, safetensors, the public key names) via :func:`lgm.save_lgm_checkpoint`;
* an Era3D diffusers folder built with diffusers / transformers ``save_pretrained`` (``vae``, ``image_encoder``,
  ``feature_extractor``, ``image_normalizer``, both schedulers) and our :class:`~mvboost_core.era3d.Era3DUNet`
  (``unet/config.json`` + ``diffusion_pytorch_model.safetensors``), plus ``model_index.json`` — the layout of
  ``pengHTYX/MacLab-Era3D-512-6view``, 64-px images. The text encoder is replaced by random prompt embeddings;

and runs the whole chain (Era3D -> view bridge -> LGM -> Optimize Input Pose -> .ply/.splat/turntable) through
the same loaders and code as ``mvboost generate``. **The output is meaningless noise**: the weights are random;
it only proves that every stage loads, runs and writes its files. Nothing depends on ``../shared``.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

__all__ = ["build_tiny_era3d", "build_tiny_lgm", "run_selftest", "example_image", "TINY_UNET_CONFIG"]

#: Era3D multi-view UNet config at toy size (same structure and field names as the released unet/config.json).
TINY_UNET_CONFIG = {
    "_class_name": "UNetMV2DConditionModel",
    "act_fn": "silu",
    "addition_channels": [1280, 1280, 1280],
    "addition_downsample": False,
    "addition_embed_type": None,
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": None,
    "attention_head_dim": [2, 2, 2, 2],
    "block_out_channels": [16, 16, 32, 32],
    "cd_attention_last": False,
    "cd_attention_mid": False,
    "center_input_sample": False,
    "class_embed_type": "projection",
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_dim": 16,
    "cross_attention_norm": None,
    "down_block_types": ["CrossAttnDownBlockMV2D", "CrossAttnDownBlockMV2D", "CrossAttnDownBlockMV2D",
                         "DownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 8,
    "layers_per_block": 1,
    "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlockMV2DCrossAttn",
    "multiview_attention": True,
    "mvcd_attention": True,
    "norm_eps": 1e-05,
    "norm_num_groups": 8,
    "num_attention_heads": None,
    "num_class_embeds": None,
    "num_regress_blocks": 3,
    "num_views": 6,
    "only_cross_attention": False,
    "out_channels": 4,
    "projection_camera_embeddings_input_dim": 4,
    "projection_class_embeddings_input_dim": 16,
    "regress_elevation": True,
    "regress_focal_length": True,
    "regress_hidden_dim": 16,
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default",
    "sample_size": 8,
    "selfattn_block": "self_rowwise",
    "sparse_mv_attention": True,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "transformer_layers_per_block": 1,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlockMV2D", "CrossAttnUpBlockMV2D", "CrossAttnUpBlockMV2D"],
    "upcast_attention": True,
    "use_dino": False,
    "use_linear_projection": True,
}

_MODEL_INDEX = {
    "_class_name": "StableUnCLIPImg2ImgPipeline",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
    "image_noising_scheduler": ["diffusers", "DDPMScheduler"],
    "image_normalizer": ["stable_diffusion", "StableUnCLIPImageNormalizer"],
    "scheduler": ["diffusers", "DDIMScheduler"],
    "unet": ["mvdiffusion.models.unet_mv2d_condition", "UNetMV2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def build_tiny_era3d(folder, seed: int = 0) -> tuple[Path, tuple[torch.Tensor, torch.Tensor]]:
    """Write a random toy Era3D diffusers folder (64-px images) and return it with random prompt embeddings
    ``(normal [6,77,16], color [6,77,16])`` to pass to ``load_era3d(prompt_embeds=...)``."""
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from .era3d.unet import Era3DUNet

    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    proj = int(TINY_UNET_CONFIG["projection_class_embeddings_input_dim"]) // 2
    unet = Era3DUNet.from_config(dict(TINY_UNET_CONFIG))
    (root / "unet").mkdir(exist_ok=True)
    (root / "unet" / "config.json").write_text(json.dumps(TINY_UNET_CONFIG, indent=2))
    save_file({k: v.detach().contiguous() for k, v in unet.state_dict().items()},
              str(root / "unet" / "diffusion_pytorch_model.safetensors"))
    AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=8, sample_size=64, scaling_factor=0.18215,
    ).save_pretrained(str(root / "vae"), safe_serialization=True)
    CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_attention_heads=2, num_hidden_layers=1, image_size=32,
        patch_size=8, projection_dim=proj,
    )).save_pretrained(str(root / "image_encoder"), safe_serialization=True)
    CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_center_crop=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711],
    ).save_pretrained(str(root / "feature_extractor"))
    StableUnCLIPImageNormalizer(embedding_dim=proj).save_pretrained(str(root / "image_normalizer"),
                                                                     safe_serialization=True)
    DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="epsilon", clip_sample=True,
                  variance_type="fixed_small").save_pretrained(str(root / "image_noising_scheduler"))
    DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", clip_sample=False,
                  prediction_type="v_prediction", set_alpha_to_one=False, steps_offset=1,
                  timestep_spacing="leading").save_pretrained(str(root / "scheduler"))
    (root / "model_index.json").write_text(json.dumps(_MODEL_INDEX, indent=2))
    g = torch.Generator().manual_seed(seed + 1)
    D = int(TINY_UNET_CONFIG["cross_attention_dim"])
    embeds = (torch.randn(6, 77, D, generator=g), torch.randn(6, 77, D, generator=g))
    # no text encoder: store the (random) prompt embeddings in the loader's own cache file, which is what a
    # slimmed released folder carries too, so load_era3d(folder) works without arguments
    from .era3d.pipeline import write_prompt_cache

    write_prompt_cache(root, embeds[0], embeds[1])
    embeds = (embeds[0].half().float(), embeds[1].half().float())
    return root, embeds


def build_tiny_lgm(path, config: str = "micro") -> Path:
    """Write a random LGM checkpoint (public key names, fp16 safetensors) of a small config."""
    from .lgm import LGM, get_config, init_lgm_weights_, save_lgm_checkpoint

    with torch.device("meta"):
        model = LGM(get_config(config))
    init_lgm_weights_(model)
    return save_lgm_checkpoint(model, path)


def example_image(size: int = 128) -> np.ndarray:
    """A procedurally drawn RGBA uint8 ``[size,size,4]`` object: an orange ball with a blue box on its right, a
    green stem on top (asymmetric, so the views are distinguishable), transparent background."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.zeros((size, size, 4), np.float32)
    ball = (xx - 0.45) ** 2 + (yy - 0.55) ** 2 < 0.28 ** 2
    shade = np.clip(1.0 - 1.6 * np.sqrt((xx - 0.38) ** 2 + (yy - 0.45) ** 2), 0.3, 1.0)
    img[ball, 0], img[ball, 1], img[ball, 2] = 0.95 * shade[ball], 0.5 * shade[ball], 0.1 * shade[ball]
    box = (np.abs(xx - 0.74) < 0.1) & (np.abs(yy - 0.62) < 0.14)
    img[box, :3] = (0.15, 0.3, 0.85)
    stem = (np.abs(xx - 0.45) < 0.035) & (yy > 0.14) & (yy < 0.3)
    img[stem, :3] = (0.2, 0.65, 0.2)
    img[..., 3] = (ball | box | stem).astype(np.float32)
    return (img * 255 + 0.5).astype(np.uint8)


def run_selftest(workdir=None, log: Callable[[str], None] = print, frames: int = 8) -> dict:
    """Build the toy checkpoints, run image -> Gaussians on CPU and write the outputs. Returns a dict with the
    output paths, stage timings and the number of Gaussians. Raises on any failure."""
    from .era3d import load_era3d
    from .lgm import load_lgm
    from .pipeline import image_to_gaussians, render_turntable, write_outputs
    from .pose import PoseOptions

    t_all = time.perf_counter()
    timings: dict = {}
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="mvboost-selftest-")
        workdir = tmp.name
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        t = time.perf_counter()
        era3d_dir, embeds = build_tiny_era3d(work / "models" / "era3d" / "tiny-era3d")
        lgm_path = build_tiny_lgm(work / "models" / "lgm" / "tiny_lgm_micro.safetensors")
        timings["write_checkpoints"] = time.perf_counter() - t
        log(f"[selftest] wrote random checkpoints in the real formats to {work / 'models'}")
        t = time.perf_counter()
        era3d = load_era3d(era3d_dir, device="cpu", dtype="fp32")
        lgm = load_lgm(lgm_path, device="cpu", dtype="fp32")
        timings["load"] = time.perf_counter() - t
        t = time.perf_counter()
        opts = PoseOptions(search_elevations=(-5.0, 5.0), search_azimuths=(-5.0, 5.0), search_radius_scales=(1.0,),
                           search_resolution=32, resolution=48, pose_iters=3, lm_iters=1, adjust_iters=2,
                           reg_resolution=24, reg_azimuths=(90.0, 180.0), min_iou=0.0,
                           lpips_pretrained=False, backend="torch")
        res = image_to_gaussians(example_image(96), era3d, lgm, optimize_pose=True, seed=0, steps=1,
                                 pose_options=opts)
        timings["image_to_gaussians"] = time.perf_counter() - t
        t = time.perf_counter()
        tt = render_turntable(res.gaussians, frames=frames, size=48, backend="torch")
        paths = write_outputs(res.gaussians, work / "output", "selftest", tt)
        timings["save"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t_all
        for p in (paths["ply"], paths["splat"], paths["animation"]):
            if not Path(p).is_file() or Path(p).stat().st_size == 0:
                raise RuntimeError(f"selftest: {p} was not written")
        return {"paths": {k: (str(v) if not isinstance(v, list) else [str(x) for x in v]) for k, v in paths.items()},
                "timings": timings, "n_gaussians": len(res.gaussians), "workdir": str(work),
                "pose_report": {k: v for k, v in res.report.items() if k != "renders"}}
    finally:
        if tmp is not None:
            tmp.cleanup()
