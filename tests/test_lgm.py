"""LGM port: state-dict layout vs the reference manifests, and numerical parity with the reference fixtures.

Parity runs with the CPU inference tactics on (the loader's default on CPU) and off (the published network as
written in ``lgm/network.py``, what CUDA runs)."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from mvboost_core.cameras import Cameras
from mvboost_core.gaussians import Gaussians
from mvboost_core.lgm import CONFIGS, LGM, LGMConfig, load_lgm, prepare_lgm_input, reconstruct
from mvboost_core.precision import Precision
from mvboost_core.tactics import cpu_inference_tactics_enabled


@pytest.fixture(scope="module")
def lgm_fixtures(fixtures_dir):
    return fixtures_dir / "lgm"


@pytest.fixture(scope="module", params=["tactics_on", "tactics_off"])
def micro(lgm_fixtures, request):
    m = load_lgm(lgm_fixtures / "weights_micro.safetensors", cpu_tactics=request.param == "tactics_on")
    assert cpu_inference_tactics_enabled(m) == (request.param == "tactics_on")
    assert (type(m.unet).__name__ == "InferenceUNet") == (request.param == "tactics_on")
    return m


@pytest.mark.parametrize("name", ["big", "small", "tiny", "default", "micro"])
def test_state_dict_matches_manifest(lgm_fixtures, name):
    manifest = json.loads((lgm_fixtures / f"manifest_{name}.json").read_text())
    with torch.device("meta"):  # no allocation, even for big
        net = LGM(name)
    ours = {k: list(v.shape) for k, v in net.state_dict().items()}
    assert sorted(ours) == sorted(manifest)
    assert ours == manifest
    assert all(v.device.type == "meta" for v in net.state_dict().values())


@pytest.mark.parametrize("name", ["big", "small", "tiny", "default", "micro"])
def test_configs_match_reference_options(lgm_fixtures, name):
    opts = json.loads((lgm_fixtures / f"options_{name}.json").read_text())
    cfg = CONFIGS[name]
    from_opts = LGMConfig.from_options(opts, name=name)
    assert from_opts.architecture() == cfg.architecture()
    for f in ("input_size", "splat_size", "output_size", "fovy", "znear", "zfar", "num_views", "cam_radius"):
        assert getattr(cfg, f) == opts[f], f


def test_big_counts():
    with torch.device("meta"):
        net = LGM("big")
    assert sum(p.numel() for p in net.parameters()) == 415_042_848
    assert len(net.state_dict()) == 376
    assert CONFIGS["big"].num_gaussians == 65_536
    linears = [n for n, m in net.named_modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 32 and all(n.endswith(("attn.qkv", "attn.proj")) for n in linears)


def test_micro_loads_through_load_lgm_with_detected_config(micro, lgm_fixtures):
    assert micro.config.name == "micro" and micro.config.input_size == 64
    ref = load_file(lgm_fixtures / "weights_micro.safetensors")
    sd = micro.state_dict()
    assert all(torch.equal(sd[k], ref[k]) for k in ref)


@pytest.mark.parametrize("fixture", ["io_micro", "io_micro_b2"])
def test_input_and_rays_built_from_images(lgm_fixtures, fixture):
    io = load_file(lgm_fixtures / f"{fixture}.safetensors")
    images = io["images"].permute(0, 1, 3, 4, 2)  # [B,4,3,S,S] -> [B,4,S,S,3]
    x = prepare_lgm_input(images, size=64)
    assert x.shape == io["input"].shape and x.dtype == torch.float32
    assert (x[:, :, 3:] - io["rays_plucker"]).abs().max() <= 1e-6
    assert (x - io["input"]).abs().max() <= 1e-6
    cams = Cameras.lgm_input(64, dtype=torch.float64)
    assert (cams.to_opengl() - io["cam_c2w"].double()).abs().max() <= 1e-6


@pytest.mark.parametrize("fixture", ["io_micro", "io_micro_b2"])
def test_gaussians_parity(micro, lgm_fixtures, fixture):
    io = load_file(lgm_fixtures / f"{fixture}.safetensors")
    B = io["input"].shape[0]
    feats = {}
    hook = micro.unet.mid_block.register_forward_hook(lambda m, i, o: feats.__setitem__("mid", o.clone()))
    try:
        with torch.inference_mode():
            raw = micro.forward_raw(io["input"])
            g = micro.forward_gaussians(io["input"])
    finally:
        hook.remove()
    assert g.shape == io["gaussians"].shape == (B, 4096, 14) and g.dtype == torch.float32
    for ref in (io["gaussians"], io["gaussians_fp64"]):
        d = (g.double() - ref.double()).abs()
        assert d.max() <= 2e-4 and d.mean() <= 1e-5, (d.max().item(), d.mean().item())
    assert (raw - io["gaussians_raw"]).abs().max() <= 2e-4
    assert (feats["mid"].reshape(io["feat_mid"].shape) - io["feat_mid"]).abs().max() <= 1e-4


def test_reconstruct_from_images_matches_reference(micro, lgm_fixtures):
    io = load_file(lgm_fixtures / "io_micro_b2.safetensors")
    out = reconstruct(micro, io["images"].permute(0, 1, 3, 4, 2))
    assert len(out) == 2 and all(isinstance(g, Gaussians) for g in out)
    for b, g in enumerate(out):
        d = (g.to_lgm() - io["gaussians"][b]).abs()
        assert d.max() <= 2e-4 and d.mean() <= 1e-5
        q = g.quats.norm(dim=-1)
        assert torch.allclose(q, torch.ones_like(q), atol=1e-5)  # per-gaussian "fixrot" normalisation


def test_batch_equals_single(micro, lgm_fixtures):
    io = load_file(lgm_fixtures / "io_micro_b2.safetensors")
    with torch.inference_mode():
        both = micro.forward_gaussians(io["input"])
        one = micro.forward_gaussians(io["input"][1:2])
    assert (both[1:2] - one).abs().max() <= 2e-5


#: stated tolerances of the half-precision paths on the micro fixture (mean |Δ| of xyz / of rgb against the fp32
#: reference; measured values in the comments, 2-4x headroom). bf16 keeps 8 mantissa bits, fp16 11, and this random
#: network amplifies input noise ~100x: merely rounding the input to bf16 moves xyz by 0.008 on average.
HALF_PATHS = {
    # weights rounded, float32 compute: the CPU auto mode for half checkpoints (fp16) and explicit bf16 on CPUs
    # without native bf16
    "bf16 weights, fp32 compute": (Precision(torch.bfloat16, torch.float32), 0.015, 0.007),  # 0.0074 / 0.0033
    "fp16 weights, fp32 compute": (Precision(torch.float16, torch.float32), 0.003, 0.0015),  # 0.0010 / 0.0005
    # real half-precision compute: bf16 on avx512_bf16 CPUs, fp16 = the CUDA default
    "bf16 compute": (Precision(torch.bfloat16, torch.bfloat16), 0.05, 0.03),  # 0.024 / 0.0105
    "fp16 compute": (Precision(torch.float16, torch.float16), 0.012, 0.006),  # 0.0036 / 0.0016
}


@pytest.mark.parametrize("tactics", [True, False], ids=["tactics_on", "tactics_off"])
@pytest.mark.parametrize("path", list(HALF_PATHS))
def test_half_precision_paths_close_to_fp32(lgm_fixtures, path, tactics):
    """Every storage/compute pair runs on every host (forced, not chosen by the CPU), with its own tolerance."""
    prec, tol_xyz, tol_rgb = HALF_PATHS[path]
    io = load_file(lgm_fixtures / "io_micro.safetensors")
    m = load_lgm(lgm_fixtures / "weights_micro.safetensors", dtype=prec, cpu_tactics=tactics)
    assert m.dtype == prec.storage and m.compute_dtype == prec.compute
    seen = []
    hook = m.unet.conv_in.register_forward_hook(lambda mod, i, o: seen.append((i[0].dtype, o.dtype)))
    try:
        with torch.inference_mode():
            g = m.forward_gaussians(io["input"])
    finally:
        hook.remove()
    assert set(seen) == {(prec.compute, prec.compute)}  # really computed in that dtype
    assert all(p.dtype == prec.storage for n, p in m.named_parameters() if "norm" not in n)  # storage kept
    assert g.dtype == torch.float32 and torch.isfinite(g).all()
    d = (g - io["gaussians"]).abs()
    assert d[..., :3].mean() < tol_xyz and d[..., 11:].mean() < tol_rgb, (d[..., :3].mean(), d[..., 11:].mean())
    other = (io["gaussians"][0, :, :3] - io["gaussians"][0, :, :3].roll(1000, 0)).abs().mean()
    assert d[..., :3].mean() < 0.2 * other  # far closer than an unrelated output


def test_big_config_fp16_compute_runs_on_cpu():
    """The CUDA default (fp16 weights and compute, tactics off) on the big architecture with random weights, on a
    32x32 input (every layer and attention level of 'big' runs, down to 1x1; 1/64 of the 256² pixels): finite and
    within fp16 rounding of the fp32 forward of the same weights. Catches dtype mismatches in the big config."""
    import math

    from mvboost_core import precision

    with torch.device("meta"):
        m = LGM("big")
    precision.apply_precision(m, Precision(torch.float16, torch.float16))
    m = m.to_empty(device="cpu").eval().requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    for name, p in m.named_parameters():  # uniform with the variance of the fixtures' rule (randn / sqrt(fan_in))
        if p.ndim > 1:
            b = math.sqrt(3.0 / math.prod(p.shape[1:]))
            p.uniform_(-b, b, generator=g)
        else:
            p.uniform_(0.9, 1.1, generator=g) if name.endswith("weight") else p.uniform_(-0.02, 0.02, generator=g)
    x = torch.randn(4, 9, 32, 32, generator=g)
    with torch.inference_mode():
        y16 = m.conv(m.unet(x.half()))
        precision.apply_precision(m, Precision(torch.float16, torch.float32))  # same fp16 values, fp32 compute
        y32 = m.conv(m.unet(x))
    assert y16.dtype == torch.float16 and y32.dtype == torch.float32 and y16.shape == (4, 14, 16, 16)
    assert torch.isfinite(y16).all()
    rel = ((y16.float() - y32).norm() / y32.norm()).item()
    assert rel < 0.01, rel  # fp16 activations: relative L2 error measured 1.8e-3


def test_prepare_input_validation_and_rgba():
    rgb = torch.rand(1, 4, 32, 32, 3)
    alpha = (torch.rand(1, 4, 32, 32, 1) > 0.5).float()
    on_white = rgb * alpha + (1 - alpha)
    x_rgba = prepare_lgm_input(torch.cat([rgb, alpha], -1), size=32)
    assert torch.equal(x_rgba, prepare_lgm_input(on_white, size=32))
    with pytest.raises(ValueError, match="exactly 4 views"):
        prepare_lgm_input(torch.rand(1, 3, 32, 32, 3))
    with pytest.raises(ValueError, match="3 RGB channels"):
        prepare_lgm_input(torch.rand(1, 4, 3, 32, 32))  # channels-first by mistake
    x = prepare_lgm_input(torch.rand(4, 48, 48, 3), size=32)  # unbatched, resized
    assert x.shape == (1, 4, 9, 32, 32)
    with pytest.raises(ValueError, match="expects 64x64"):
        LGM("micro").forward_gaussians(x)


def test_views_from_images_pads_and_resizes():
    from mvboost_core.lgm import views_from_images

    wide = torch.zeros(20, 40, 3)  # black, non-square
    out = views_from_images([wide, torch.zeros(64, 64, 3), torch.zeros(16, 16, 4), torch.zeros(1, 64, 64, 3)], 64)
    assert out.shape == (4, 64, 64, 3)
    assert torch.all(out[0, :8] == 1.0) and torch.all(out[0, -8:] == 1.0)  # white padding above/below
    assert torch.all(out[0, 24:40] == 0.0)
    assert torch.all(out[2] == 1.0)  # fully transparent RGBA -> white
    with pytest.raises(ValueError, match="exactly 4 views"):
        views_from_images([wide] * 3, 64)


def test_image_by_image_inference_equals_batched_autograd_path(micro, lgm_fixtures):
    io = load_file(lgm_fixtures / "io_micro.safetensors")
    with torch.no_grad():
        chunked = micro.forward_gaussians(io["input"])  # resnets at 64x64 run one view at a time
    with torch.enable_grad():
        batched = micro.forward_gaussians(io["input"])  # the autograd path keeps the whole batch
    assert (chunked - batched.detach()).abs().max() <= 2e-5


def test_stem_and_head_image_by_image_equal_batched(lgm_fixtures, monkeypatch):
    """With the threshold lowered to 32x32 the micro net's stem (conv_in + down block 0, 64x64) and head (last up
    block + conv_out, 32x32) run one image at a time under no_grad; the result must equal the batched path."""
    from mvboost_core.lgm import tactics

    micro = load_lgm(lgm_fixtures / "weights_micro.safetensors", cpu_tactics=True)  # a CPU inference tactic
    io = load_file(lgm_fixtures / "io_micro_b2.safetensors")
    monkeypatch.setattr(tactics, "CHUNK_PIXELS", 32 * 32)
    batches = {"conv_in": [], "conv_out": []}
    hooks = [getattr(micro.unet, k).register_forward_hook(lambda m, i, o, k=k: batches[k].append(o.shape[0]))
             for k in batches]
    try:
        with torch.no_grad():
            by_image = micro.forward_gaussians(io["input"])
        assert batches == {"conv_in": [1] * 8, "conv_out": [1] * 8}  # 2 samples x 4 views, one at a time
        for v in batches.values():
            v.clear()
        with torch.enable_grad():
            batched = micro.forward_gaussians(io["input"]).detach()
        assert batches == {"conv_in": [8], "conv_out": [8]}
    finally:
        for h in hooks:
            h.remove()
    assert (by_image - batched).abs().max() <= 2e-5
    d = (by_image - io["gaussians"]).abs()
    assert d.max() <= 2e-4 and d.mean() <= 1e-5


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_low_resolution_conv_as_matmul(bias, channels_last):
    """Inference 3x3 convs on maps with fewer pixels than output channels take the im2col + GEMM path; it must
    equal the float64 conv to float32 accuracy (and match oneDNN's result within its rounding)."""
    from mvboost_core.lgm import tactics as network

    torch.manual_seed(0)
    conv = network.InferenceConv2d(96, 128, 3, 1, 1, bias=bias).eval().requires_grad_(False)
    x = torch.randn(3, 96, 6, 5)  # 30 pixels < 128 output channels
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)  # like the attention blocks' outputs
    calls = []
    orig = network.conv3x3_as_matmul
    network.conv3x3_as_matmul = lambda *a: calls.append(1) or orig(*a)
    try:
        with torch.inference_mode():
            y = conv(x)
        assert len(calls) == 1
        with torch.enable_grad():
            y_onednn = conv(x)  # the autograd path always uses F.conv2d
        assert len(calls) == 1
    finally:
        network.conv3x3_as_matmul = orig
    ref = torch.nn.functional.conv2d(x.double(), conv.weight.double(),
                                     conv.bias.double() if bias else None, padding=1)
    assert y.shape == ref.shape and y.dtype == torch.float32 and y.is_contiguous()
    assert (y.double() - ref).abs().max() <= 2e-5 and (y_onednn.double() - ref).abs().max() <= 2e-4


def test_freed_heap_released_between_blocks_only_in_cpu_inference(micro, lgm_fixtures, monkeypatch):
    from mvboost_core import heap

    calls = []
    monkeypatch.setattr(heap, "_malloc_trim", lambda: (lambda n: calls.append(n)))
    x = load_file(lgm_fixtures / "io_micro.safetensors")["input"]
    with torch.inference_mode():
        micro.forward_gaussians(x)
    n_blocks = len(micro.unet.down_blocks) - 1 + 1 + len(micro.unet.up_blocks) + 1  # down 1.., mid, up.., end
    assert calls == ([0] * n_blocks if cpu_inference_tactics_enabled(micro) else [])  # the tactics switch decides
    calls.clear()
    with torch.enable_grad():
        micro.forward_gaussians(x)  # training / autograd: never
    assert calls == []
