"""Era3D nodes: Load Era3D (diffusers folder -> MVBOOST_ERA3D) and Era3D MultiView (image -> 6 colour + 6 normals).

No maths here: widgets are parsed, ``mvboost_core.era3d`` does the work. diffusers/transformers are imported only
when a node runs, so loading the pack stays cheap.

Masks: ComfyUI's LoadImage outputs ``MASK = 1 - alpha`` (1 = transparent background). Era3D MultiView's ``mask``
input follows that convention by default (connect LoadImage's MASK directly); set ``mask_convention`` to
"object (1 = object)" for masks from segmentation / background-removal nodes that mark the object with 1. An RGBA
IMAGE (4 channels) needs no mask. An RGB image without a mask is refused with a message saying what to connect.
"""
from __future__ import annotations

import os

from . import _comfy as C

RELEASED_NAME = "MacLab-Era3D-512-6view"
DOWNLOAD_CHOICE = f"download: pengHTYX/{RELEASED_NAME}"
DTYPES = ["auto", "fp32", "bf16", "fp16"]
MASK_LOADIMAGE = "LoadImage mask (1 = background)"
MASK_OBJECT = "object mask (1 = object)"


def one_image_and_alpha(image, mask, mask_convention: str, node: str):
    """ComfyUI IMAGE [1,H,W,C] (+ optional MASK [H,W] or [1,H,W]) -> (image [1,H,W,C], alpha [H,W] or None).

    ``mask_convention`` MASK_LOADIMAGE means 1 = background (LoadImage's 1 - alpha); MASK_OBJECT means 1 = object.
    A batch of several images or masks is refused (Era3DInputError, a ValueError) with the fix in the message.
    """
    from ..mvboost_core.era3d.preprocess import Era3DInputError, alpha_from_comfy_mask

    img = C.from_comfy_image(image)
    if img.shape[0] != 1:
        raise Era3DInputError(
            f"{node} got a batch of {img.shape[0]} images; it makes one object per run. Pick one image "
            "(e.g. with 'ImageFromBatch') or queue one run per image"
        )
    if mask is None:
        return img, None
    m = mask if mask.ndim == 3 else mask[None]
    if m.shape[0] != 1:
        raise Era3DInputError(f"mask batch has {m.shape[0]} masks; give exactly one mask for the one image")
    return img, (alpha_from_comfy_mask(m[0]) if mask_convention == MASK_LOADIMAGE else m[0])


def _era3d_folders() -> list[str]:
    return C.get_model_dir_list("era3d", marker="model_index.json")


def _download(name: str) -> str:
    """Explicit download (the user picked the download entry); returns the local folder."""
    from ..mvboost_core import weights

    roots = C.get_folder_paths("era3d")
    if not roots:
        raise FileNotFoundError("no 'era3d' model folder is registered; cannot choose where to download Era3D")
    models_dir = os.path.dirname(os.path.normpath(roots[0]))
    out = weights.download_era3d(models_dir)
    return os.fspath(out) if out else os.path.join(roots[0], RELEASED_NAME)


class MVBoostLoadEra3D:
    """Load an Era3D diffusers folder from ``models/era3d/<name>/`` (the released pengHTYX/MacLab-Era3D-512-6view)."""

    CATEGORY = f"{C.CATEGORY}/Era3D"
    RETURN_TYPES = (C.MVBOOST_ERA3D,)
    RETURN_NAMES = ("era3d",)
    FUNCTION = "load"
    DESCRIPTION = (
        "Loads an Era3D multi-view diffusion model (a diffusers folder in models/era3d). Pick the 'download:' entry "
        "to fetch pengHTYX/MacLab-Era3D-512-6view from Hugging Face explicitly (about 4 GB). dtype auto = fp16 on "
        "CUDA, fp32 on CPU; bf16 is a faster CPU option."
    )

    @classmethod
    def INPUT_TYPES(cls):
        names = _era3d_folders()
        if RELEASED_NAME not in names:
            names = names + [DOWNLOAD_CHOICE]
        return {
            "required": {
                "model": (names, {"tooltip": "a sub-folder of models/era3d containing model_index.json"}),
                "dtype": (DTYPES, {"default": "auto"}),
            }
        }

    def load(self, model: str, dtype: str = "auto"):
        from ..mvboost_core.era3d.pipeline import load_era3d, resolve_dtype

        path = _download(model) if model == DOWNLOAD_CHOICE else C.get_full_path("era3d", model)
        dt = resolve_dtype(dtype, C.get_torch_device())
        pipe = load_era3d(path, device=C.offload_device(), dtype=dt)
        return (pipe,)


class MVBoostEra3DMultiView:
    """One cut-out object image -> Era3D's six orthographic colour views and normal maps."""

    CATEGORY = f"{C.CATEGORY}/Era3D"
    RETURN_TYPES = (C.MVBOOST_MULTIVIEW, "IMAGE", "IMAGE")
    RETURN_NAMES = ("multiview", "colors", "normals")
    FUNCTION = "generate"
    DESCRIPTION = (
        "Era3D multi-view diffusion: six views (front, front_right, right, back, left, front_left) as colour images "
        "and normal maps. The object must be cut out: use an RGBA image or connect LoadImage's MASK (ComfyUI masks "
        "are 1 - alpha). crop_size = the object's longest side in pixels of the 512 canvas (Era3D default 420)."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "era3d": (C.MVBOOST_ERA3D,),
                "image": ("IMAGE",),
                "seed": ("INT", {"default": 42, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "step": 1,
                                 "control_after_generate": True}),
                "steps": ("INT", {"default": 40, "min": 1, "max": 200, "step": 1}),
                "guidance": ("FLOAT", {"default": 3.0, "min": 1.0, "max": 20.0, "step": 0.1}),
                "crop_size": ("INT", {"default": 420, "min": 64, "max": 512, "step": 1,
                                      "tooltip": "object's longest side on the 512-px canvas"}),
            },
            "optional": {
                "mask": ("MASK", {"tooltip": "LoadImage's MASK (1 - alpha) or an object mask, see mask_convention"}),
                "mask_convention": ([MASK_LOADIMAGE, MASK_OBJECT], {"default": MASK_LOADIMAGE}),
            },
        }

    def generate(self, era3d, image, seed=42, steps=40, guidance=3.0, crop_size=420, mask=None,
                 mask_convention=MASK_LOADIMAGE):
        img, alpha = one_image_and_alpha(image, mask, mask_convention, "Era3D MultiView")
        C.check_interrupt()
        bar = C.ProgressBar(int(steps))

        def on_step(done, total, _latents):
            bar.update_absolute(done, total)  # also an interruption point

        device = C.get_torch_device()
        era3d.to(device)
        try:
            result = era3d(img[0], alpha=alpha, seed=int(seed), steps=int(steps), guidance=float(guidance),
                           crop_size=int(crop_size), callback=on_step)
        finally:
            era3d.to(C.offload_device())
            C.soft_empty_cache()
        return (result, C.to_comfy_image(result.colors.images), C.to_comfy_image(result.normals.images))


NODE_CLASS_MAPPINGS = {
    "MVBoostLoadEra3D": MVBoostLoadEra3D,
    "MVBoostEra3DMultiView": MVBoostEra3DMultiView,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "MVBoostLoadEra3D": f"{C.DISPLAY_PREFIX}Load Era3D",
    "MVBoostEra3DMultiView": f"{C.DISPLAY_PREFIX}Era3D MultiView",
}
