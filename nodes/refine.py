"""Refine Views node: render Gaussians at Era3D's six cameras and SDEdit them with Era3D (MVBoost, strength 0.95).

No maths here: ``mvboost_core.refine.refine_views`` does the work.
"""
from __future__ import annotations

from . import _comfy as C
from .era3d import MASK_LOADIMAGE, MASK_OBJECT, one_image_and_alpha


class MVBoostRefineViews:
    """Gaussians + the original photo -> refined Era3D six-view colours/normals (MVBOOST_MULTIVIEW) + previews."""

    CATEGORY = f"{C.CATEGORY}/Boost"
    RETURN_TYPES = (C.MVBOOST_MULTIVIEW, "IMAGE", "IMAGE", "IMAGE")
    RETURN_NAMES = ("multiview", "before", "after", "normals_after")
    FUNCTION = "refine"
    DESCRIPTION = (
        "MVBoost Refine Views: renders the Gaussians at Era3D's six orthographic views (object centred, front view "
        "framed at crop_size of 512 px, colour + normal maps), noises them to the step 'strength' selects and lets "
        "Era3D denoise the rest with the original photo as condition. strength 0 = the renders (VAE round trip), "
        "1 = ignore the renders. Connect the same cut-out image (and LoadImage MASK) you gave Era3D MultiView."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "era3d": (C.MVBOOST_ERA3D,),
                "gaussians": (C.MVBOOST_GAUSSIANS,),
                "image": ("IMAGE", {"tooltip": "the original cut-out photo (RGBA, or RGB + mask)"}),
                "strength": ("FLOAT", {"default": 0.95, "min": 0.0, "max": 1.0, "step": 0.01}),
                "steps": ("INT", {"default": 40, "min": 1, "max": 200, "step": 1}),
                "guidance": ("FLOAT", {"default": 3.0, "min": 1.0, "max": 20.0, "step": 0.1}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "step": 1,
                                 "control_after_generate": True}),
            },
            "optional": {
                "mask": ("MASK", {"tooltip": "LoadImage's MASK (1 - alpha) or an object mask, see mask_convention"}),
                "mask_convention": ([MASK_LOADIMAGE, MASK_OBJECT], {"default": MASK_LOADIMAGE}),
                "crop_size": ("INT", {"default": 420, "min": 64, "max": 512, "step": 1}),
            },
        }

    def refine(self, era3d, gaussians, image, strength=0.95, steps=40, guidance=3.0, seed=0, mask=None,
               mask_convention=MASK_LOADIMAGE, crop_size=420):
        from ..mvboost_core.refine import refine_views

        img, alpha = one_image_and_alpha(image, mask, mask_convention, "Refine Views")
        C.check_interrupt()
        bar = C.ProgressBar(max(1, int(steps)))

        def on_step(done, total, _latents=None):
            bar.update_absolute(done, total)  # also an interruption point

        device = C.get_torch_device()
        era3d.to(device)
        try:
            out = refine_views(era3d, gaussians.to(device=device), img[0].cpu(), strength=float(strength),
                               steps=int(steps), guidance=float(guidance), seed=int(seed), mask=alpha,
                               crop_size=float(crop_size), callback=on_step)
        finally:
            era3d.to(C.offload_device())
            C.soft_empty_cache()
        return (out, C.to_comfy_image(out.info["renders_colors"]), C.to_comfy_image(out.colors.images),
                C.to_comfy_image(out.normals.images))


NODE_CLASS_MAPPINGS = {"MVBoostRefineViews": MVBoostRefineViews}
NODE_DISPLAY_NAME_MAPPINGS = {"MVBoostRefineViews": f"{C.DISPLAY_PREFIX}Refine Views"}
