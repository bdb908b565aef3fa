"""Optimize Input Pose node: fit the input photo's camera to the Gaussians, then adjust their appearance.

No maths here: ``mvboost_core.pose.optimize_input_view`` does the work.
"""
from __future__ import annotations

from . import _comfy as C

MASK_LOADIMAGE = "LoadImage mask (1 = background)"
MASK_OBJECT = "object mask (1 = object)"


def _grid(rng: float, steps: int) -> tuple:
    n = max(1, int(steps))
    return (0.0,) if n == 1 else tuple(-float(rng) + 2.0 * float(rng) * i / (n - 1) for i in range(n))


class MVBoostOptimizeInputPose:
    """Gaussians + input view -> pose-fitted camera and appearance-adjusted Gaussians + before/after/target."""

    CATEGORY = f"{C.CATEGORY}/Gaussians"
    RETURN_TYPES = (C.MVBOOST_GAUSSIANS, C.MVBOOST_CAMERAS, "IMAGE", "IMAGE", "IMAGE")
    RETURN_NAMES = ("gaussians", "camera", "before", "after", "target")
    FUNCTION = "optimize"
    DESCRIPTION = (
        "MVBoost input-view optimisation: (1) grid search of elevation/azimuth/radius around the nominal input "
        "camera scored by masked LPIPS, (2) gradient refinement of the pose through the rasterizer (Adam, then a "
        "Levenberg-Marquardt polish), (3) per-Gaussian colour and opacity adjustments on LPIPS + MSE of the input "
        "view, regularised so the other views stay close. Connect Era3D's 'multiview' (its condition image is the "
        "target, framed exactly as LGM saw it) or an image (+ mask) framed like Era3D's input."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "gaussians": (C.MVBOOST_GAUSSIANS,),
                "pose_search": ("BOOLEAN", {"default": True}),
                "pose_refine": ("BOOLEAN", {"default": True}),
                "adjust_gaussians": ("BOOLEAN", {"default": True}),
                "pose_iterations": ("INT", {"default": 100, "min": 0, "max": 5000, "step": 1}),
                "lm_iterations": ("INT", {"default": 4, "min": 0, "max": 100, "step": 1}),
                "adjust_iterations": ("INT", {"default": 100, "min": 0, "max": 5000, "step": 1}),
                "pose_lr": ("FLOAT", {"default": 0.01, "min": 1e-5, "max": 1.0, "step": 1e-4}),
                "color_lr": ("FLOAT", {"default": 0.01, "min": 1e-5, "max": 1.0, "step": 1e-4}),
                "opacity_lr": ("FLOAT", {"default": 0.05, "min": 1e-5, "max": 1.0, "step": 1e-4}),
                "resolution": ("INT", {"default": 256, "min": 32, "max": 1024, "step": 8}),
                "search_range": ("FLOAT", {"default": 10.0, "min": 0.0, "max": 90.0, "step": 0.5, "tooltip":
                                           "± degrees of elevation and azimuth searched around the nominal view"}),
                "search_steps": ("INT", {"default": 5, "min": 1, "max": 21, "step": 1, "tooltip":
                                         "grid points per angle (radius: ×0.9, ×1, ×1.1)"}),
            },
            "optional": {
                "multiview": (C.MVBOOST_MULTIVIEW, {"tooltip": "Era3D MultiView output: its condition image and "
                                                               "predicted elevation are used"}),
                "image": ("IMAGE", {"tooltip": "input view (used instead of multiview's condition image)"}),
                "mask": ("MASK",),
                "mask_convention": ([MASK_LOADIMAGE, MASK_OBJECT], {"default": MASK_LOADIMAGE}),
                "lpips_pretrained": ("BOOLEAN", {"default": True, "tooltip": "off = random VGG (testing only)"}),
            },
        }

    def optimize(self, gaussians, pose_search=True, pose_refine=True, adjust_gaussians=True, pose_iterations=100,
                 lm_iterations=4, adjust_iterations=100, pose_lr=0.01, color_lr=0.01, opacity_lr=0.05,
                 resolution=256, search_range=10.0, search_steps=5, multiview=None, image=None, mask=None, mask_convention=MASK_LOADIMAGE,
                 lpips_pretrained=True):
        from ..mvboost_core.cameras import LGM_FOVY, LGM_RADIUS, Cameras
        from ..mvboost_core.pose import PoseOptions, optimize_input_view

        elev = 0.0
        if image is not None:
            img = C.from_comfy_image(image)
            if img.shape[0] != 1:
                raise ValueError(f"Optimize Input Pose got {img.shape[0]} images; connect the one input view")
            img = img[0]
        elif multiview is not None and getattr(multiview, "input_image", None) is not None:
            img = multiview.input_image
            if multiview.elevation is not None and abs(float(multiview.elevation)) <= 60.0:
                elev = float(multiview.elevation)
        else:
            raise ValueError("Optimize Input Pose needs the input view: connect Era3D's 'multiview' or an 'image'")
        m = None
        if mask is not None:
            mm = mask if mask.ndim == 3 else mask[None]
            if mm.shape[0] != 1:
                raise ValueError(f"mask batch has {mm.shape[0]} masks; give exactly one")
            m = (1.0 - mm[0]) if mask_convention == MASK_LOADIMAGE else mm[0]
        opts = PoseOptions(search=bool(pose_search), refine_pose=bool(pose_refine), adjust=bool(adjust_gaussians),
                           pose_iters=int(pose_iterations), lm_iters=int(lm_iterations),
                           adjust_iters=int(adjust_iterations), pose_lr=float(pose_lr), color_lr=float(color_lr),
                           opacity_lr=float(opacity_lr), resolution=int(resolution),
                           lpips_pretrained=bool(lpips_pretrained),
                           search_elevations=_grid(search_range, search_steps),
                           search_azimuths=_grid(search_range, search_steps))
        n_search = (len(opts.search_elevations) * len(opts.search_azimuths) * len(opts.search_radius_scales)
                    * len(opts.search_fovy_offsets) + 1) if opts.search else 0
        total = {"search": n_search, "pose": (opts.pose_iters + opts.lm_iters) if opts.refine_pose else 0,
                 "adjust": opts.adjust_iters if opts.adjust else 0}
        bar = C.ProgressBar(max(1, sum(total.values())))
        offset = {"search": 0, "pose": total["search"], "adjust": total["search"] + total["pose"]}

        def progress(stage, done, _n):
            if stage in offset:
                bar.update_absolute(offset[stage] + done)  # also an interruption point

        import torch

        device = C.get_torch_device()
        C.check_interrupt()
        # ComfyUI runs every prompt under torch.inference_mode(): leave it (like core's nodes_train.py) and clone the
        # inputs there, since inference tensors cannot take part in backward.
        with torch.inference_mode(False), torch.enable_grad():
            g = gaussians.to(device=device).clone()
            img = img.to(device).clone()
            m = None if m is None else m.to(device).clone()
            H, W = int(img.shape[0]), int(img.shape[1])
            cam0 = Cameras.orbit([-elev], [0.0], LGM_RADIUS, LGM_FOVY, W, H, device=device)
            try:
                g_out, cam, report = optimize_input_view(g, img, m, cam0, opts,
                                                         progress=progress, check_interrupt=C.check_interrupt)
            except FileNotFoundError as e:
                if "LPIPS" not in str(e):
                    raise
                raise FileNotFoundError(
                    f"Optimize Input Pose scores poses with LPIPS-VGG and could not find its backbone weights. {e} "
                    "In ComfyUI: place that file there and run again, or switch 'lpips_pretrained' off "
                    "(random VGG features: only for testing)."
                ) from e
        C.soft_empty_cache()
        r = report["renders"]
        return (g_out.to(device=C.intermediate_device()), cam.to(device=C.intermediate_device()),
                C.to_comfy_image(r["before"]), C.to_comfy_image(r["after"]), C.to_comfy_image(r["target"]))


NODE_CLASS_MAPPINGS = {"MVBoostOptimizeInputPose": MVBoostOptimizeInputPose}
NODE_DISPLAY_NAME_MAPPINGS = {"MVBoostOptimizeInputPose": f"{C.DISPLAY_PREFIX}Optimize Input Pose"}
