"""Refine Views node: render Gaussians at Era3D's six cameras and SDEdit them with Era3D (MVBoost, strength 0.95).

No maths here: ``mvboost_core.refine.refine_views`` does the work.
"""
from __future__ import annotations

from comfy_api.latest import io

from . import _comfy as C
from ..mvboost_core.progress import interrupt_hooks
from .era3d import Era3DType, MultiViewType, mask_inputs, seed_input

GaussiansType = io.Custom(C.MVBOOST_GAUSSIANS)


class MVBoostRefineViews(io.ComfyNode):
    """Gaussians + the original photo -> refined Era3D six-view colours/normals (MVBOOST_MULTIVIEW) + previews."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MVBoostRefineViews",
            display_name=f"{C.DISPLAY_PREFIX}Refine Views",
            category=f"{C.CATEGORY}/Boost",
            description=(
                "MVBoost Refine Views: renders the Gaussians at Era3D's six orthographic views (object centred, front "
                "view framed at crop_size of 512 px, colour + normal maps), noises them to the step 'strength' selects "
                "and lets Era3D denoise the rest with the original photo as condition. strength 0 = the renders (VAE "
                "round trip), 1 = ignore the renders. Connect the same cut-out image (and LoadImage MASK) you gave "
                "Era3D MultiView."),
            inputs=[
                Era3DType.Input("era3d"),
                GaussiansType.Input("gaussians"),
                io.Image.Input("image", tooltip="the original cut-out photo (RGBA, or RGB + mask)"),
                io.Float.Input("strength", default=0.95, min=0.0, max=1.0, step=0.01),
                io.Int.Input("steps", default=40, min=1, max=200, step=1),
                io.Float.Input("guidance", default=3.0, min=1.0, max=20.0, step=0.1),
                seed_input(0),
                *mask_inputs("the image"),
                io.Int.Input("crop_size", default=420, min=64, max=512, step=1, optional=True),
            ],
            outputs=[MultiViewType.Output(display_name="multiview"),
                     io.Image.Output("before", display_name="before"),
                     io.Image.Output("after", display_name="after"),
                     io.Image.Output("normals_after", display_name="normals_after")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, era3d, gaussians, image, strength=0.95, steps=40, guidance=3.0, seed=0, mask=None,
                mask_convention=C.MASK_LOADIMAGE, crop_size=420) -> io.NodeOutput:
        from ..mvboost_core.refine import refine_views

        img = C.one_image(image, "Refine Views")
        alpha = C.object_alpha(mask, mask_convention)
        expected = max(1, min(int(int(steps) * float(strength)), int(steps)))
        progress = C.NodeProgress({"refine": expected}, node_id=cls.hidden.unique_id, title="Refine Views")
        pipe = C.unwrap_model(era3d)
        try:
            with interrupt_hooks([pipe.unet, pipe.vae, pipe.image_encoder], C.check_interrupt):  # cancel in a step
                out = refine_views(pipe, gaussians.to(device=pipe.device), img.cpu(), strength=float(strength),
                                   steps=int(steps), guidance=float(guidance), seed=int(seed), mask=alpha,
                                   crop_size=float(crop_size), callback=progress.callback("refine"))
        finally:
            C.soft_empty_cache()
        progress.update("refine", expected, expected)
        return io.NodeOutput(out, C.to_comfy_image(out.info["renders_colors"]), C.to_comfy_image(out.colors.images),
                             C.to_comfy_image(out.normals.images))


NODES = [MVBoostRefineViews]
