"""Regressions for problems found by running the pack inside a real ComfyUI server (v0.3.64, CPU).

The contract harness (comfy_harness.py) runs nodes in plain grad mode. Real ComfyUI does not:
``execution.py`` (``PromptExecutor.execute_async``, v0.3.64 line 662) runs the whole prompt inside
``torch.inference_mode()``. So

* every tensor a node receives from an upstream node (LoadImage's IMAGE, LGM Reconstruct's Gaussians) is an
  *inference tensor*, and every tensor or module a node creates is one too;
* ``loss.backward()`` inside a node fails with "element 0 of tensors does not require grad" unless the node leaves
  inference mode (``torch.inference_mode(False)``, like core's ``comfy_extras/nodes_train.py``) and clones its
  inputs there (inference tensors cannot be saved for backward).

These tests run the nodes the way the server does: the whole graph inside ``torch.inference_mode()``.
"""
from __future__ import annotations

import math

import pytest
import torch

from comfy_harness import comfy_env  # noqa: F401  (pytest fixture)


def _ball_gaussians(core, n: int = 600, seed: int = 0):
    """A small coloured ball of Gaussians inside the LGM world's [-1, 1]^3, visible from the LGM front camera."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n, 3, generator=g)
    means = dirs / dirs.norm(dim=1, keepdim=True) * 0.3 * torch.rand(n, 1, generator=g).pow(1 / 3)
    quats = torch.randn(n, 4, generator=g)
    return core.gaussians.Gaussians(
        means=means,
        opacities=torch.full((n,), 0.8),
        scales=torch.full((n, 3), 0.04),
        quats=quats / quats.norm(dim=1, keepdim=True),
        colors=(means + 0.5).clamp(0, 1),
    )


def _input_view(size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """IMAGE [1,H,W,3] of a grey disc on white + LoadImage-style MASK [1,H,W] (1 = background)."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    inside = (xx**2 + yy**2 < 0.35**2).float()
    img = inside[..., None] * 0.4 + (1 - inside[..., None])
    return img[None].expand(1, size, size, 3).contiguous(), (1.0 - inside)[None]


def test_inference_mode_is_what_comfyui_uses():
    """The premise: ops on inference tensors cannot take part in backward, the way the pose node needs."""
    with torch.inference_mode():
        x = torch.ones(3)
        p = torch.zeros(3, requires_grad=True)
        assert x.is_inference() and not torch.is_grad_enabled()
        assert not (x * p).sum().requires_grad  # so .backward() raises inside a ComfyUI node
        with torch.inference_mode(False), torch.enable_grad():
            loss = (x.clone() * p).sum()  # the documented way out: leave inference mode, clone the input
            loss.backward()
    assert torch.equal(p.grad, torch.ones(3))


def test_optimize_input_pose_runs_inside_comfyui_inference_mode(comfy_env):
    """Found on ComfyUI v0.3.64: workflows/api/mvboost_image_to_3d.json, node 6 (MVBoostOptimizeInputPose) failed
    with 'RuntimeError: element 0 of tensors does not require grad and does not have a grad_fn' from
    mvboost_core/pose.py _refine_pose, because ComfyUI runs nodes under torch.inference_mode()."""
    if "MVBoostOptimizeInputPose" not in comfy_env.nodes:
        pytest.skip("the Optimize Input Pose node is not in this checkout")
    core = comfy_env.core
    with torch.inference_mode():
        gaussians = _ball_gaussians(core)  # inference tensors, like LGM Reconstruct's output in ComfyUI
        image, mask = _input_view()
        # called directly (as ComfyUI's executor does: a class clone with the hidden inputs, then execute)
        node = comfy_env.nodes["MVBoostOptimizeInputPose"].PREPARE_CLASS_CLONE({})
        out = node.execute(
            gaussians=gaussians, image=image, mask=mask,
            pose_search=False, pose_refine=True, adjust_gaussians=True, pose_iterations=2, lm_iterations=1,
            adjust_iterations=2, pose_lr=0.01, color_lr=0.01, opacity_lr=0.05, resolution=32, search_range=10.0,
            search_steps=1, lpips_pretrained=False,
        )
    g_out, camera, before, after, target = out.args
    assert type(g_out).__name__ == "Gaussians" and len(g_out) == len(gaussians)
    for t in (g_out.means, g_out.colors, g_out.opacities):
        assert torch.isfinite(t).all()
    assert camera.c2w.shape == (1, 4, 4) and torch.isfinite(camera.c2w).all()
    for im in (before, after, target):
        assert im.ndim == 4 and im.shape[0] == 1 and im.shape[-1] == 3
    # the node's inputs are untouched (ComfyUI caches them)
    assert torch.equal(gaussians.colors, _ball_gaussians(core).colors)
    # something was optimised: the adjusted colours or the camera moved
    assert (not torch.equal(g_out.colors, gaussians.colors)) or not math.isclose(
        float((camera.c2w[0] - torch.eye(4)).abs().sum()), 0.0)


def test_workflows_is_the_only_template_folder_comfyui_would_serve():
    """Found on ComfyUI v0.3.64: ``app/custom_node_manager.py`` lists templates by globbing every folder named
    example_workflows / example / examples / workflow / workflows, but serves
    ``/api/workflow_templates/<pack>/<file>`` with one static route per *existing* folder of those names, all under
    the same URL prefix, registered in that order. With an ``examples/`` folder next to ``workflows/`` (it held the
    example photo) the first route won: the Templates browser listed our workflows and every one of them 404'd."""
    from comfy_harness import REPO_ROOT

    names = ["example_workflows", "example", "examples", "workflow", "workflows"]  # ComfyUI's order
    present = [n for n in names if (REPO_ROOT / n).is_dir()]
    assert present == ["workflows"], (
        f"template folders {present}: ComfyUI serves templates only from the first of them; keep example assets "
        "inside workflows/ (only its top-level *.json are listed as templates)"
    )
