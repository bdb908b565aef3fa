"""One code path for the CLI and the nodes (issue 11 item 4) and the node-side services (progress with elapsed time
and ETA, ComfyUI memory management): fast checks through the in-process harness and the library."""
from __future__ import annotations

import shutil

import numpy as np
import torch

from comfy_harness import REPO_ROOT, comfy_env  # noqa: F401  (pytest fixture)
from mvboost_core.progress import StageProgress, format_duration
from mvboost_core.selftest import build_tiny_era3d, build_tiny_lgm


class _Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_stage_progress_folds_stages_into_one_bar_with_elapsed_and_eta():
    clock = _Clock()
    p = StageProgress({"search": 10, "pose": 20, "adjust": 0}, labels={"pose": "pose refinement"}, clock=clock)
    assert (p.value, p.maximum, p.eta) == (0, 30, None)
    clock.t += 5
    p.update("search", 5, 10)  # 1 unit/s
    assert (p.value, p.maximum) == (5, 30)
    assert abs(p.eta - 25.0) < 1e-6  # 5 left here + 20 later at the overall rate
    clock.t += 5
    p.update("pose", 0, 40)  # the library's own total wins; the earlier stage is complete
    assert (p.done["search"], p.maximum) == (10, 50)
    clock.t += 2
    p.update("pose", 4)  # 2 units/s in this stage
    assert abs(p.eta - 18.0) < 1e-6
    line = p.describe()
    assert line.startswith("pose refinement 4/40 · 0:12 elapsed · ETA 0:18"), line
    p.update("pose", 40)
    assert p.describe().endswith("done") and p.value == p.maximum
    assert (format_duration(75.2), format_duration(3725), format_duration(None)) == ("1:15", "1:02:05", "?")


def _tiny(env):
    build_tiny_era3d(env.models_dir / "era3d" / "tiny-era3d")
    build_tiny_lgm(env.models_dir / "lgm" / "tiny.safetensors")
    shutil.copy(REPO_ROOT / "workflows" / "mvboost_example.png", env.input_dir / "mvboost_example.png")


def test_the_pose_node_gets_the_mask_and_camera_the_cli_gets(comfy_env, monkeypatch):
    """Era3D MultiView -> Optimize Input Pose in ComfyUI passes Era3D's framed input alpha (the one
    image_to_gaussians uses) and the nominal camera from mvboost_core.pipeline; the progress totals come from core."""
    import importlib

    _tiny(comfy_env)
    core = comfy_env.core
    for mod in ("pose", "pipeline", "era3d.preprocess"):
        importlib.import_module(f"{core.__name__}.{mod}")
    seen = {}
    real = core.pose.optimize_input_view

    def spy(g, image, mask, cam0, opts, progress=None, check_interrupt=None, **kw):
        seen.update(image=image.detach().cpu().clone(), mask=None if mask is None else mask.detach().cpu().clone(),
                    c2w=cam0.c2w.detach().cpu().clone(), size=(cam0.width, cam0.height))
        return real(g, image, mask, cam0, opts, progress=progress, check_interrupt=check_interrupt, **kw)

    monkeypatch.setattr(core.pose, "optimize_input_view", spy)
    res = comfy_env.run_workflow("workflows/api/mvboost_image_to_3d.json", overrides={
        "2": {"model": "tiny-era3d", "dtype": "fp32"}, "3": {"steps": 1},
        "4": {"ckpt_name": "tiny.safetensors", "dtype": "fp32"}, "5": {"preview_frames": 1, "preview_size": 64},
        "6": {"pose_iterations": 1, "lm_iterations": 0, "adjust_iterations": 1, "resolution": 32,
              "lpips_pretrained": False, "search_steps": 1},
        "7": {"preview_size": 64}, "8": {"frames": 1, "resolution": 32}})
    mv = res.output("3", 0)
    # the alpha Era3D's preprocessing framed with the condition image (what the CLI's image_to_gaussians uses)
    from PIL import Image

    rgba = np.array(Image.open(comfy_env.input_dir / "mvboost_example.png").convert("RGBA"))
    _cond, alpha = core.era3d.preprocess.preprocess_image_and_alpha(rgba, crop_size=420, size=mv.input_image.shape[0])
    assert mv.input_alpha is not None and torch.equal(mv.input_alpha, alpha)
    assert torch.equal(seen["mask"], alpha) and torch.equal(seen["image"], mv.input_image.float())
    cam = core.pipeline.nominal_input_camera(mv.elevation, alpha.shape[1], alpha.shape[0])
    assert torch.equal(seen["c2w"], cam.c2w.cpu()) and seen["size"] == (alpha.shape[1], alpha.shape[0])
    # the node's progress ends at its total and shows elapsed time and ETA on the node
    texts = [t for nid, t in comfy_env.texts if nid == "6"]
    assert texts and all("elapsed" in t for t in texts) and texts[-1].endswith("done")
    assert any(nid == "3" and "Era3D denoising 1/1" in t for nid, t in comfy_env.texts)


def test_models_are_under_comfyui_memory_management(comfy_env):
    _tiny(comfy_env)
    mm = comfy_env.model_management
    (lgm,) = comfy_env.run_node("MVBoostLGMLoader", ckpt_name="tiny.safetensors", dtype="fp32", lora_name="none",
                                lora_strength=1.0)
    (era3d,) = comfy_env.run_node("MVBoostLoadEra3D", model="tiny-era3d", dtype="fp32")
    for handle in (lgm, era3d):
        assert handle.patcher is not None and handle.patcher.model_size() > 0
    views = torch.ones(4, 32, 32, 3)
    views[:, 8:24, 8:24] = 0.3
    comfy_env.run_node("MVBoostLGMReconstruct", lgm=lgm, images=views, elevation=0.0, preview_frames=1,
                       preview_size=64, preview_elevation=-15.0)
    loaded = [m.model for m in mm.current_loaded_models]
    assert lgm.patcher in loaded  # ComfyUI's loader counted it (and can unload it)
    mm.unload_all_models()
    assert lgm.patcher not in [m.model for m in mm.current_loaded_models]


def test_one_turntable_serves_cli_and_nodes(comfy_env):
    core = comfy_env.core
    n = 50
    g = core.gaussians.Gaussians(torch.rand(n, 3) * 0.4 - 0.2, torch.full((n,), 0.8), torch.full((n, 3), 0.05),
                                 torch.tensor([1.0, 0, 0, 0]).expand(n, 4).clone(), torch.rand(n, 3))
    images, alpha = comfy_env.run_node("MVBoostRenderGaussians", gaussians=g, frames=3, elevation=-10.0, radius=2.0,
                                       fov=40.0, resolution=24, background="#000000", start_azimuth=30.0)
    rgb, a = core.pipeline.render_turntable(g, frames=3, size=24, elevation=-10.0, radius=2.0, fovy=40.0,
                                            background=(0.0, 0.0, 0.0), start_azimuth=30.0, with_alpha=True)
    assert torch.allclose(images, rgb, atol=1e-6) and torch.allclose(alpha, a, atol=1e-6)
    # the CLI's call (defaults, white background) is the same function
    tt = core.pipeline.render_turntable(g, frames=2, size=16)
    assert tt.shape == (2, 16, 16, 3) and torch.allclose(tt[:, 0, 0], torch.ones(2, 3))
