"""LGM nodes through the ComfyUI contract harness: the example API workflow with a tiny checkpoint written in the
public format into models/lgm, input validation, loader errors, LoRA slot, NaN guard."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from comfy_harness import combo_options, comfy_env  # noqa: F401  (pytest fixture)
from mvboost_core.lgm import LGM, init_lgm_weights_, load_lgm, reconstruct, save_lgm_checkpoint

VIEWS = ("front", "right", "back", "left")
CKPT = "model_fp16_fixrot.safetensors"  # the workflow's default name; here it holds the micro config


def _write_micro(path, nan=False):
    with torch.device("meta"):
        m = LGM("micro")
    init_lgm_weights_(m)
    if nan:
        with torch.no_grad():
            m.conv.bias[0] = float("nan")
    return save_lgm_checkpoint(m, path, dtype=torch.float16)


def _views(size=64, seed=0):
    """Four synthetic object-on-white views, uint8-exact floats ``[4,size,size,3]``."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    out = []
    for v in range(4):
        col = torch.rand(3, generator=g) * 0.8
        r = 0.5 + 0.1 * v
        inside = ((xx - 0.1 * v) ** 2 + yy**2 < r**2).float()[..., None]
        img = inside * col + (1 - inside) * 1.0
        out.append((img * 255).round() / 255)
    return torch.stack(out)


def _setup(env, nan=False):
    (env.models_dir / "lgm").mkdir(parents=True, exist_ok=True)
    ckpt = _write_micro(env.models_dir / "lgm" / CKPT, nan=nan)
    env.input_dir.mkdir(parents=True, exist_ok=True)
    views = _views()
    for name, v in zip(VIEWS, views):
        Image.fromarray((v.numpy() * 255).round().astype(np.uint8)).save(env.input_dir / f"{name}.png")
    return ckpt, views


def test_example_workflow_runs_with_tiny_checkpoint(comfy_env):
    ckpt, views = _setup(comfy_env)
    res = comfy_env.run_workflow("workflows/api/lgm_reconstruct.json",
                                 overrides={"6": {"preview_frames": 2, "preview_size": 64}, "7": {"preview_size": 64}})
    g = res.output("6", 0)
    preview = res.output("6", 1)
    assert type(g).__name__ == "Gaussians" and len(g) == 4096 and g.means.dtype == torch.float32
    ref = reconstruct(load_lgm(ckpt), views[None])[0]  # same checkpoint, same views, straight through the library
    assert (g.to_lgm() - ref.to_lgm()).abs().max() <= 1e-4
    assert preview.shape == (2, 64, 64, 3) and preview.dtype == torch.float32
    assert 0.0 <= preview.min() and preview.max() <= 1.0 and preview.std() > 0.01  # something was rendered
    saved = list(comfy_env.output_dir.rglob("*.ply"))
    assert len(saved) == 1 and saved[0].stat().st_size > 1000


def _nodes(env):
    return env.nodes["MVBoostLGMLoader"], env.nodes["MVBoostLGMReconstruct"]


def test_loader_lists_models_and_offers_download(comfy_env):
    loader, _ = _nodes(comfy_env)
    assert any(n.startswith("download:") for n in combo_options(loader, "ckpt_name"))  # empty: the download entry
    assert combo_options(loader, "lora_name") == ["none"]
    _setup(comfy_env)
    assert CKPT in combo_options(loader, "ckpt_name")


def test_loader_errors_are_readable(comfy_env):
    from safetensors.torch import save_file

    (comfy_env.models_dir / "lgm").mkdir(parents=True)
    save_file({"conv_in.weight": torch.zeros(320, 4, 3, 3), "time_embedding.linear_1.weight": torch.zeros(8, 8)},
              str(comfy_env.models_dir / "lgm" / "sd_unet.safetensors"))
    with pytest.raises(ValueError, match="Not an LGM checkpoint.*diffusers UNet"):
        comfy_env.run_node("MVBoostLGMLoader", ckpt_name="sd_unet.safetensors", dtype="auto", lora_name="none",
                           lora_strength=1.0)


def test_bad_view_inputs(comfy_env):
    ckpt, views = _setup(comfy_env)
    (lgm,) = comfy_env.run_node("MVBoostLGMLoader", ckpt_name=CKPT, dtype="fp32", lora_name="none", lora_strength=1.0)
    common = dict(lgm=lgm, elevation=0.0, preview_frames=1, preview_size=64, preview_elevation=-15.0)
    with pytest.raises(ValueError, match="holds 3 image.*exactly 4 views"):
        comfy_env.run_node("MVBoostLGMReconstruct", images=views[:3], **common)
    with pytest.raises(ValueError, match="exactly one view source"):
        comfy_env.run_node("MVBoostLGMReconstruct", **common)
    with pytest.raises(ValueError, match=r"views \['left'\] are not connected"):
        comfy_env.run_node("MVBoostLGMReconstruct", front=views[:1], right=views[1:2], back=views[2:3], **common)
    with pytest.raises(ValueError, match="IMAGE"):
        comfy_env.run_node("MVBoostLGMReconstruct", images=views[..., :2], **common)
    # different sizes and a non-square view are accepted (resized / padded with white)
    big_front = torch.nn.functional.interpolate(views[:1].permute(0, 3, 1, 2), size=(96, 96)).permute(0, 2, 3, 1)
    wide_left = torch.cat([torch.ones(1, 64, 8, 3), views[3:4], torch.ones(1, 64, 8, 3)], dim=2)
    g, prev = comfy_env.run_node("MVBoostLGMReconstruct", front=big_front, right=views[1:2], back=views[2:3],
                                 left=wide_left, **common)
    assert len(g) == 4096 and prev.shape == (1, 64, 64, 3)
    # a batch of 4 gives the same result as the library call
    g4, _ = comfy_env.run_node("MVBoostLGMReconstruct", images=views, **common)
    ref = reconstruct(load_lgm(ckpt), views[None])[0]
    assert (g4.to_lgm() - ref.to_lgm()).abs().max() <= 1e-4


def test_nan_output_is_an_error_and_nothing_is_saved(comfy_env):
    _setup(comfy_env, nan=True)
    with pytest.raises(FloatingPointError, match="non-finite"):
        comfy_env.run_workflow("workflows/api/lgm_reconstruct.json",
                               overrides={"6": {"preview_frames": 1, "preview_size": 64}})
    assert not list(comfy_env.output_dir.rglob("*.ply"))


def test_lora_slot_applies_adapter(comfy_env):
    lora = pytest.importorskip("mvboost_core.boost.lora")
    ckpt, views = _setup(comfy_env)
    base = load_lgm(ckpt)
    lora.inject_lora(base, rank=4)
    with torch.no_grad():
        for n, p in base.named_parameters():
            if ".lora_B" in n:
                p.normal_(0, 0.05)
    (comfy_env.models_dir / "lgm_loras").mkdir(parents=True)
    lora.save_adapter(base, comfy_env.models_dir / "lgm_loras" / "boost.safetensors")
    loader, _ = _nodes(comfy_env)
    assert "boost.safetensors" in combo_options(loader, "lora_name")
    common = dict(elevation=0.0, preview_frames=1, preview_size=64, preview_elevation=-15.0, images=views)
    outs = {}
    for strength in (0.0, 1.0):
        (lgm,) = comfy_env.run_node("MVBoostLGMLoader", ckpt_name=CKPT, dtype="fp32", lora_name="boost.safetensors",
                                 lora_strength=strength)
        outs[strength] = comfy_env.run_node("MVBoostLGMReconstruct", lgm=lgm, **common)[0].to_lgm()
    plain = reconstruct(load_lgm(ckpt), views[None])[0].to_lgm()
    assert torch.equal(outs[0.0], plain)
    assert (outs[1.0] - plain).abs().max() > 1e-3
