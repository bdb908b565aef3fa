"""Optimize Input Pose node: fit the input photo's camera to the Gaussians, then adjust their appearance.

No maths here: ``mvboost_core.pose.optimize_input_view`` does the work; the nominal camera and the progress totals
come from ``mvboost_core.pipeline`` (the same ones the CLI uses).
"""
from __future__ import annotations

from comfy_api.latest import io

from . import _comfy as C
from .era3d import MultiViewType

GaussiansType = io.Custom(C.MVBOOST_GAUSSIANS)
CamerasType = io.Custom(C.MVBOOST_CAMERAS)
MASK_LOADIMAGE, MASK_OBJECT = C.MASK_LOADIMAGE, C.MASK_OBJECT


def _grid(rng: float, steps: int) -> tuple:
    n = max(1, int(steps))
    return (0.0,) if n == 1 else tuple(-float(rng) + 2.0 * float(rng) * i / (n - 1) for i in range(n))


class MVBoostOptimizeInputPose(io.ComfyNode):
    """Gaussians + input view -> pose-fitted camera and appearance-adjusted Gaussians + before/after/target."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MVBoostOptimizeInputPose",
            display_name=f"{C.DISPLAY_PREFIX}Optimize Input Pose",
            category=f"{C.CATEGORY}/Gaussians",
            description=(
                "MVBoost input-view optimisation: (1) grid search of elevation/azimuth/radius around the nominal input "
                "camera scored by masked LPIPS, (2) gradient refinement of the pose through the rasterizer (Adam, then "
                "a Levenberg-Marquardt polish), (3) per-Gaussian colour and opacity adjustments on LPIPS + MSE of the "
                "input view, regularised so the other views stay close. Connect Era3D's 'multiview' (its condition "
                "image and the object's alpha are the target, framed exactly as LGM saw them) or an image (+ mask) "
                "framed like Era3D's input."),
            inputs=[
                GaussiansType.Input("gaussians"),
                io.Boolean.Input("pose_search", default=True),
                io.Boolean.Input("pose_refine", default=True),
                io.Boolean.Input("adjust_gaussians", default=True),
                io.Int.Input("pose_iterations", default=20, min=0, max=5000, step=1),
                io.Int.Input("lm_iterations", default=4, min=0, max=100, step=1),
                io.Int.Input("adjust_iterations", default=12, min=0, max=5000, step=1),
                io.Float.Input("pose_lr", default=0.015, min=1e-5, max=1.0, step=1e-4),
                io.Float.Input("color_lr", default=0.01, min=1e-5, max=1.0, step=1e-4),
                io.Float.Input("opacity_lr", default=0.05, min=1e-5, max=1.0, step=1e-4),
                io.Int.Input("resolution", default=256, min=32, max=1024, step=8),
                io.Float.Input("search_range", default=10.0, min=0.0, max=90.0, step=0.5,
                               tooltip="± degrees of elevation and azimuth searched around the nominal view"),
                io.Int.Input("search_steps", default=5, min=1, max=21, step=1,
                             tooltip="grid points per angle (radius: ×0.9, ×1, ×1.1)"),
                MultiViewType.Input("multiview", optional=True,
                                    tooltip="Era3D MultiView output: its condition image, the object's alpha and the "
                                            "predicted elevation are used"),
                io.Image.Input("image", optional=True, tooltip="input view (used instead of multiview's condition "
                                                               "image)"),
                io.Mask.Input("mask", optional=True, tooltip="mask of 'image' (see mask_convention)"),
                io.Combo.Input("mask_convention", options=C.MASK_CONVENTIONS, default=C.MASK_LOADIMAGE,
                               optional=True),
                io.Boolean.Input("lpips_pretrained", default=True, optional=True,
                                 tooltip="off = random VGG (testing only)"),
            ],
            outputs=[GaussiansType.Output("gaussians_out", display_name="gaussians"),
                     CamerasType.Output("camera", display_name="camera"),
                     io.Image.Output("before", display_name="before"),
                     io.Image.Output("after", display_name="after"),
                     io.Image.Output("target", display_name="target")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, gaussians, pose_search=True, pose_refine=True, adjust_gaussians=True, pose_iterations=20,
                lm_iterations=4, adjust_iterations=12, pose_lr=0.015, color_lr=0.01, opacity_lr=0.05,
                resolution=256, search_range=10.0, search_steps=5, multiview=None, image=None, mask=None,
                mask_convention=C.MASK_LOADIMAGE, lpips_pretrained=True) -> io.NodeOutput:
        import torch

        from ..mvboost_core.metrics import lpips_weights
        from ..mvboost_core.pipeline import nominal_input_camera, pose_stage_totals
        from ..mvboost_core.pose import PoseOptions, optimize_input_view

        elevation = None
        if image is not None:
            img = C.one_image(image, "Optimize Input Pose")
            alpha = C.object_alpha(mask, mask_convention)
            if alpha is None and img.shape[-1] == 4:  # an RGBA image carries its own alpha
                alpha = img[..., 3]
            img = img[..., :3]
        elif multiview is not None and getattr(multiview, "input_image", None) is not None:
            img = multiview.input_image
            alpha = getattr(multiview, "input_alpha", None)  # the mask the CLI uses, framed like the image
            elevation = multiview.elevation
        else:
            raise ValueError("Optimize Input Pose needs the input view: connect Era3D's 'multiview' or an 'image'")
        opts = PoseOptions(search=bool(pose_search), refine_pose=bool(pose_refine), adjust=bool(adjust_gaussians),
                           pose_iters=int(pose_iterations), lm_iters=int(lm_iterations),
                           adjust_iters=int(adjust_iterations), pose_lr=float(pose_lr), color_lr=float(color_lr),
                           opacity_lr=float(opacity_lr), resolution=int(resolution),
                           lpips_pretrained=bool(lpips_pretrained),
                           search_elevations=_grid(search_range, search_steps),
                           search_azimuths=_grid(search_range, search_steps))
        progress = C.NodeProgress(pose_stage_totals(opts), node_id=cls.hidden.unique_id, title="Optimize Input Pose")
        device = C.get_torch_device()
        # ComfyUI runs every prompt under torch.inference_mode(): leave it (like core's nodes_train.py) and clone the
        # inputs there, since inference tensors cannot take part in backward.
        # LPIPS-VGG's trunk from models/lpips/ (none there: core's own places, else the pose step's fallback loss)
        with torch.inference_mode(False), torch.enable_grad(), lpips_weights(C.lpips_weights_path()):
            g = gaussians.to(device=device).clone()
            img = img.to(device=device, dtype=torch.float32).clone()
            m = None if alpha is None else alpha.to(device=device, dtype=torch.float32).clone()
            if m is not None and tuple(m.shape) != tuple(img.shape[:2]):
                raise ValueError(f"mask is {list(m.shape)} but the image is {list(img.shape[:2])}; give the mask of "
                                 "this image (e.g. LoadImage's MASK of the same file)")
            cam0 = nominal_input_camera(elevation, img.shape[1], img.shape[0], device=device)
            # a missing VGG16 trunk is not an error: the core falls back to L1+SSIM and says so in the warnings
            g_out, cam, report = optimize_input_view(g, img, m, cam0, opts, progress=progress.update,
                                                     check_interrupt=C.check_interrupt)
        for w in report.get("warnings", []):
            progress.show(f"warning: {w}")  # on the node and in the server log
        C.soft_empty_cache()
        r = report["renders"]
        return io.NodeOutput(g_out.to(device=C.intermediate_device()), cam.to(device=C.intermediate_device()),
                             C.to_comfy_image(r["before"]), C.to_comfy_image(r["after"]),
                             C.to_comfy_image(r["target"]))


NODES = [MVBoostOptimizeInputPose]
