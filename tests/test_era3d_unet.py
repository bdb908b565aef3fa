"""Era3D multi-view UNet: state-dict layout of the released model, micro-fixture parity, loading, bad input.

Fixtures: ../shared/fixtures/era3d (README there = the spec). The real-size model is only built on the meta
device (no allocation).
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from mvboost_core import precision
from mvboost_core.era3d import Era3DConfigError, Era3DUNet, normalize_unet_config
from mvboost_core.fastconv import FastConv2d
from mvboost_core.precision import Precision
from mvboost_core.tactics import enable_cpu_inference_tactics

TOL = dict(atol=1e-4, rtol=1e-4)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def era3d_dir(fixtures_dir):
    d = fixtures_dir / "era3d"
    if not d.is_dir():
        pytest.skip(f"Era3D fixtures not found at {d}")
    return d


@pytest.fixture(scope="module")
def micro_config(era3d_dir):
    return json.loads((era3d_dir / "unet_micro_config.json").read_text())


@pytest.fixture(scope="module")
def micro_unet(era3d_dir, micro_config):
    m = Era3DUNet.from_config(micro_config)
    m.load_state_dict(load_file(era3d_dir / "unet_micro.safetensors"), strict=True)
    return m.eval()


@pytest.fixture(scope="module")
def micro_io(era3d_dir):
    return load_file(era3d_dir / "unet_micro_io.safetensors")


def _run(unet, io, **kw):
    with torch.no_grad():
        return unet(io["sample"], kw.pop("timestep", io["timestep"]), kw.pop("ehs", io["encoder_hidden_states"]),
                    io["class_labels"], **kw)


# ---------------------------------------------------------------- state dict of the released model (meta device)
def test_real_config_state_dict_matches_released_manifest(era3d_dir):
    manifest = json.loads((era3d_dir / "manifest_unet.json").read_text())
    config = json.loads((era3d_dir / "unet_config_512_6view.json").read_text())
    assert config["_class_name"] == "UNetMV2DConditionModel" and "decay" in config  # upstream name + EMA keys
    unet = Era3DUNet.from_config(config, device="meta")
    sd = unet.state_dict()
    assert list(sd) == list(manifest)  # same keys, same order
    assert {k: list(v.shape) for k, v in sd.items()} == manifest
    assert len(sd) == 838
    assert sum(v.numel() for v in sd.values()) == 947_664_646
    assert unet.config["regress_hidden_dim"] == 1280  # absent in the released config -> upstream's hard-coded width
    assert unet.config.num_views == 6 and unet.in_channels == 8
    assert "decay" not in unet.config and "_class_name" not in unet.config


def test_regress_hidden_dim_read_from_config_with_default(micro_config):
    sd = Era3DUNet.from_config(micro_config, device="meta").state_dict()
    assert sd["elevation_regressor.linear_in.0.weight"].shape == (80, 96)
    assert sd["focal_regressor.blocks.2.linear2.weight"].shape == (80, 80)
    assert sd["camera_embedding.linear_1.weight"].shape == (64, 4)
    cfg = {k: v for k, v in micro_config.items() if k != "regress_hidden_dim"}
    sd = Era3DUNet.from_config(cfg, device="meta").state_dict()
    assert sd["elevation_regressor.linear_in.0.weight"].shape == (1280, 96)
    assert sd["elevation_regressor.linear_out.weight"].shape == (1, 1280)


# ---------------------------------------------------------------- parity with the reference (micro UNet)
def test_micro_unet_parity_with_reference(micro_unet, micro_io):
    sample, pose, dbg = _run(micro_unet, micro_io, return_intermediates=True)
    torch.testing.assert_close(sample, micro_io["out_sample"], **TOL)
    assert pose.shape == (2, 2)  # rows [uncond, cond] of the normal half, columns [elevation, focal]
    torch.testing.assert_close(pose, micro_io["out_pose"], **TOL)
    for k in ("emb", "down_out", "mid_out", "emb_up"):
        torch.testing.assert_close(dbg[k], micro_io["dbg_" + k], **TOL, msg=lambda m: f"dbg_{k}: {m}")


def test_timestep_forms_agree(micro_unet, micro_io):
    ref = _run(micro_unet, micro_io)[0]
    b = micro_io["sample"].shape[0]
    for t in (676, torch.full((b,), 676)):  # the fixture's own form (0-d tensor) is the parity test
        torch.testing.assert_close(_run(micro_unet, micro_io, timestep=t)[0], ref, atol=0, rtol=0)
    # another timestep really changes the output
    assert (_run(micro_unet, micro_io, timestep=100)[0] - ref).abs().max() > 1e-2


def test_fixture_catches_column_instead_of_row_attention(micro_unet, micro_io):
    micro_unet._set_mv_axis("column")
    try:
        sample, pose = _run(micro_unet, micro_io)
    finally:
        micro_unet._set_mv_axis("row")
    assert (sample - micro_io["out_sample"]).abs().max() > 0.1  # README: 1.3
    assert (pose - micro_io["out_pose"]).abs().max() > 0.01  # README: 0.31
    torch.testing.assert_close(_run(micro_unet, micro_io)[0], micro_io["out_sample"], **TOL)  # switch restored


def test_view_order_matters_only_through_prompts(micro_unet, micro_io):
    """Reversing the per-view prompts is a large error; permuting all inputs of every view group consistently is
    (by design, no view positional encoding) equivariant: a good check that groups are formed as in the reference."""
    b = micro_io["sample"].shape[0]
    idx = torch.arange(b).view(-1, 6)
    rev = idx.flip(1).reshape(-1)
    out = _run(micro_unet, micro_io, ehs=micro_io["encoder_hidden_states"][rev])[0]
    assert (out - micro_io["out_sample"]).abs().max() > 0.1  # README: 1.07

    perm = idx[:, torch.tensor([3, 0, 5, 1, 4, 2])].reshape(-1)
    io_p = {k: micro_io[k][perm] for k in ("sample", "encoder_hidden_states", "class_labels")}
    io_p["timestep"] = micro_io["timestep"]
    out_p, pose_p = _run(micro_unet, io_p)
    torch.testing.assert_close(out_p, micro_io["out_sample"][perm], **TOL)
    torch.testing.assert_close(pose_p, micro_io["out_pose"], **TOL)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_attention_core_accumulates_in_float32(dtype):
    """The attention core gets q, k, v in the half dtype (as upstream's xformers kernel did) and the fused SDPA kernel
    keeps scores and softmax in float32: its error vs the float32 attention of the same half values stays near the
    output's own rounding (measured 1.26x for bf16, 1.28x for fp16 at 2,048 tokens), well below attention computed
    with half-precision scores (4.7x / 4.8x). Fails if the kernel path ever rounds the scores to the half dtype."""
    import math
    import types

    from mvboost_core.era3d.attention import attention_core

    g = torch.Generator().manual_seed(0)
    attn = types.SimpleNamespace(heads=5)
    n, length, d = 2, 2048, 64  # the joint attention of a 32x32 latent: 2 x 32^2 tokens, head dim 64
    q, k, v = (torch.randn(n, length, 5 * d, generator=g).to(dtype) * s for s in (1.5, 1.0, 1.0))
    ref = attention_core(attn, q.float(), k.float(), v.float())
    out = attention_core(attn, q, k, v)
    assert out.dtype == dtype

    def rel(x):
        return ((x.float() - ref).norm() / ref.norm()).item()

    def heads(x):
        return x.view(n, length, 5, d).transpose(1, 2)

    half_scores = torch.softmax(heads(q) @ heads(k).transpose(-1, -2) / math.sqrt(d), -1) @ heads(v)
    floor = rel(ref.to(dtype))
    assert rel(out) < 1.6 * floor, (rel(out), floor)
    assert rel(half_scores.transpose(1, 2).reshape(n, length, 5 * d)) > 3 * floor  # the check can tell the two apart


def test_bfloat16_close_to_float32(micro_unet, micro_io):
    """bf16 weights and activations (attention core as upstream's xformers kernel) stay close to fp32 on the micro
    fixture."""
    m16 = Era3DUNet.from_config(micro_unet.config)
    m16.load_state_dict(micro_unet.state_dict())
    m16 = m16.to(torch.bfloat16).eval()
    with torch.no_grad():
        s, p = m16(micro_io["sample"].bfloat16(), micro_io["timestep"],
                   micro_io["encoder_hidden_states"].bfloat16(), micro_io["class_labels"].bfloat16())
    assert s.dtype == torch.bfloat16 and m16.dtype == torch.bfloat16
    ref = micro_io["out_sample"]
    rel = (s.float() - ref).norm() / ref.norm()
    assert rel < 0.05, rel
    assert (p.float() - micro_io["out_pose"]).abs().max() < 0.1


# ---------------------------------------------------------------- loading diffusers folders
def test_from_folder_micro_pipeline_unet(era3d_dir):
    unet = Era3DUNet.from_folder(era3d_dir / "micro_pipeline" / "unet")
    ref = load_file(era3d_dir / "unet_micro.safetensors")
    sd = unet.state_dict()
    assert list(sd) == list(ref) or set(sd) == set(ref)
    for k, v in ref.items():
        assert torch.equal(sd[k], v), k
    assert unet.dtype == torch.float32 and unet.device.type == "cpu" and not unet.training
    assert not any(p.requires_grad for p in unet.parameters())
    assert not any(p.is_meta for p in unet.parameters())


def test_from_folder_released_layout_fp16(tmp_path, era3d_dir, micro_config):
    """Released layout: upstream class name, EMA keys, fp16 weights on disk -> the chosen dtype."""
    d = tmp_path / "unet"
    d.mkdir()
    cfg = dict(micro_config, decay=0.9999, optimization_step=40000, power=2 / 3, inv_gamma=1.0, min_decay=0.0,
               update_after_step=0, use_ema_warmup=False, _name_or_path="x/unet_ema")
    (d / "config.json").write_text(json.dumps(cfg))
    ref = load_file(era3d_dir / "unet_micro.safetensors")
    save_file({k: v.half() for k, v in ref.items()}, str(d / "diffusion_pytorch_model.safetensors"))
    sd32 = Era3DUNet.from_folder(d).state_dict()
    for k, v in ref.items():
        assert sd32[k].dtype == torch.float32 and torch.equal(sd32[k], v.half().float()), k
    ubf = Era3DUNet.from_folder(d, dtype=torch.bfloat16)
    assert ubf.dtype == torch.bfloat16
    # convolutions/linears stored in bf16; norms kept in the compute dtype (bf16 where the CPU computes in bf16,
    # float32 elsewhere: mvboost_core.precision)
    assert all(p.dtype == (ubf.compute_dtype if "norm" in n else torch.bfloat16) for n, p in ubf.named_parameters())


# ---------------------------------------------------------------- bad input
SD21_UNET_CONFIG = {
    "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.8.0", "act_fn": "silu",
    "attention_head_dim": [5, 10, 20, 20], "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False,
    "cross_attention_dim": 1024, "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                                       "CrossAttnDownBlock2D", "DownBlock2D"],
    "in_channels": 4, "out_channels": 4, "layers_per_block": 2, "sample_size": 96, "use_linear_projection": True,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}


def test_config_of_another_model_is_rejected():
    with pytest.raises(Era3DConfigError, match="UNet2DConditionModel") as e:
        Era3DUNet.from_config(SD21_UNET_CONFIG, device="meta")
    assert "UNetMV2DConditionModel" in str(e.value) and "num_views" in str(e.value)
    anon = {k: v for k, v in SD21_UNET_CONFIG.items() if k != "_class_name"}
    with pytest.raises(Era3DConfigError, match="lacks the Era3D keys.*CrossAttnDownBlock2D"):
        Era3DUNet.from_config(anon, device="meta")


def test_unsupported_era3d_variant_is_rejected(micro_config):
    with pytest.raises(Era3DConfigError, match="cd_attention_mid"):
        normalize_unet_config(dict(micro_config, cd_attention_mid=True))
    with pytest.raises(Era3DConfigError, match="selfattn_block"):
        normalize_unet_config(dict(micro_config, selfattn_block="custom"))
    with pytest.raises(Era3DConfigError, match="projection_camera_embeddings_input_dim"):
        normalize_unet_config(dict(micro_config, projection_camera_embeddings_input_dim=2))


def test_folder_errors(tmp_path, era3d_dir, micro_config):
    with pytest.raises(FileNotFoundError, match="not found"):
        Era3DUNet.from_folder(tmp_path / "nope")
    d = tmp_path / "unet"
    d.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        Era3DUNet.from_folder(d)
    (d / "config.json").write_text(json.dumps(micro_config))
    (d / "diffusion_pytorch_model.bin").write_bytes(b"\0")
    with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model.safetensors.*diffusion_pytorch_model.bin"):
        Era3DUNet.from_folder(d)
    # weights of another size: shapes named in the error
    shutil.copy(era3d_dir / "unet_micro.safetensors", d / "diffusion_pytorch_model.safetensors")
    (d / "config.json").write_text(json.dumps(dict(micro_config, cross_attention_dim=24)))
    with pytest.raises(ValueError, match=r"wrong shape.*attn2\.to_k\.weight"):
        Era3DUNet.from_folder(d)
    # a missing tensor
    sd = load_file(era3d_dir / "unet_micro.safetensors")
    sd.pop("conv_out.bias")
    save_file(sd, str(d / "diffusion_pytorch_model.safetensors"))
    (d / "config.json").write_text(json.dumps(micro_config))
    with pytest.raises(ValueError, match=r"missing 1: \['conv_out.bias'\]"):
        Era3DUNet.from_folder(d)
    # another model's config next to Era3D weights
    (d / "config.json").write_text(json.dumps(SD21_UNET_CONFIG))
    with pytest.raises(Era3DConfigError, match="another model"):
        Era3DUNet.from_folder(d)


def test_bad_forward_inputs(micro_unet, micro_io):
    s, e, c = micro_io["sample"], micro_io["encoder_hidden_states"], micro_io["class_labels"]
    with torch.no_grad():
        with pytest.raises(ValueError, match="multiple of 12"):
            micro_unet(s[:18], 1, e[:18], c[:18])
        with pytest.raises(ValueError, match=r"\[B, 8, h, w\]"):
            micro_unet(s[:, :4], 1, e, c)
        with pytest.raises(ValueError, match="encoder_hidden_states"):
            micro_unet(s, 1, e[..., :16], c)
        with pytest.raises(ValueError, match="class_labels"):
            micro_unet(s, 1, e, c[:, :16])
        with pytest.raises(ValueError, match="timestep"):
            micro_unet(s, torch.ones(5), e, c)
        with pytest.raises(ValueError, match="square"):
            micro_unet(s[..., :8], 1, e, c)


@pytest.mark.parametrize("cpu_class, fast, want", [("avx2", False, Precision(torch.float16, torch.float32)),
                                                   ("avx512", False, Precision(torch.float16, torch.float32)),
                                                   ("avx512_bf16", False, Precision(torch.float16, torch.float32)),
                                                   ("avx512_bf16", True, Precision(torch.bfloat16, torch.bfloat16))])
def test_auto_rule_per_cpu_class(force_cpu_class, cpu_class, fast, want):
    """The table of mvboost_core.precision for the released (fp16) checkpoint, forced per host class (and, on
    avx512_bf16 CPUs, per answer of the bf16 speed probe)."""
    force_cpu_class(cpu_class, bf16_fast=fast)
    assert precision.choose("era3d", "cpu", "auto", torch.float16) == want
    assert precision.choose("era3d", "cpu", "auto", torch.float32).compute == want.compute
    assert precision.choose("era3d", "cuda", "auto", torch.float16) == Precision(torch.float16, torch.float16)


def test_half_weights_with_float32_compute(micro_unet, micro_io):
    """bf16 weights, fp32 compute (layerwise casting): close to fp32, keys unchanged, weights stay bf16 in memory,
    outputs in the input dtype; switching to pure bf16 compute removes the casting hooks."""
    m = Era3DUNet.from_config(micro_unet.config)
    m.load_state_dict(micro_unet.state_dict())
    precision.apply_precision(m.eval(), Precision(torch.bfloat16, torch.float32))
    assert m.compute_dtype == torch.float32 and m.dtype == torch.bfloat16
    assert list(m.state_dict()) == list(micro_unet.state_dict())
    lin = [p.dtype for n, p in m.named_parameters() if "norm" not in n]
    assert set(lin) == {torch.bfloat16}
    s32, p32 = _run(m, micro_io)
    assert s32.dtype == torch.float32
    assert {p.dtype for n, p in m.named_parameters() if "norm" not in n} == {torch.bfloat16}  # storage kept
    ref = micro_io["out_sample"]
    assert (s32 - ref).norm() / ref.norm() < 0.02  # only the weights are rounded
    precision.apply_precision(m, Precision(torch.bfloat16, torch.bfloat16))
    assert m.compute_dtype == torch.bfloat16 and all(p.dtype == torch.bfloat16 for p in m.parameters())
    with torch.no_grad():
        s16, _ = m(micro_io["sample"], micro_io["timestep"], micro_io["encoder_hidden_states"],
                   micro_io["class_labels"])
    assert s16.dtype == torch.float32  # returned in the input's dtype
    rel16 = ((s16 - ref).norm() / ref.norm()).item()
    assert rel16 < 0.05, rel16  # pure bf16 compute: activations rounded too (measured 0.017)


@pytest.mark.parametrize("cpu_class", ["avx2", "avx512_bf16"])
def test_from_folder_half_on_cpu_picks_compute_dtype(era3d_dir, force_cpu_class, cpu_class):
    force_cpu_class(cpu_class)
    u = Era3DUNet.from_folder(era3d_dir / "micro_pipeline" / "unet", dtype=torch.bfloat16)
    assert u.dtype == torch.bfloat16
    assert u.compute_dtype == (torch.bfloat16 if cpu_class == "avx512_bf16" else torch.float32)


@pytest.mark.parametrize("fast", [False, True])
def test_from_folder_auto_follows_the_bf16_probe(era3d_dir, micro_io, force_cpu_class, fast):
    """dtype auto on an avx512_bf16 CPU: bf16 weights and compute where the probe found bf16 faster (the forward
    stays within the pure-bf16 bound of the test above), float32 compute otherwise."""
    force_cpu_class("avx512_bf16", bf16_fast=fast)
    u = Era3DUNet.from_folder(era3d_dir / "micro_pipeline" / "unet", dtype="auto")
    want = torch.bfloat16 if fast else torch.float32
    assert u.compute_dtype == want and (u.dtype == torch.bfloat16) == fast
    io = load_file(era3d_dir / "micro_pipeline_io.safetensors")
    with torch.no_grad():
        out, _ = u(io["unet_sample"][0], io["timesteps"][0], io["prompt_embeds_cfg"], io["class_labels_cfg"])
    ref = io["unet_out_sample"][0]
    rel = float((out.float() - ref).norm() / ref.norm())
    assert out.dtype == io["unet_sample"].dtype and rel < (0.05 if fast else 1e-4), rel


@pytest.mark.parametrize("tactics", [True, False], ids=["tactics_on", "tactics_off"])
@pytest.mark.parametrize("cpu_class", ["avx2", "avx512_bf16"])
def test_from_folder_fp32_parity_tactics_on_and_off(era3d_dir, micro_io, force_cpu_class, cpu_class, tactics):
    """The released-layout folder loads with the CPU tactics on (NNPACK convolutions where forced to AVX2) or off
    (the published blocks) and matches the fixture's fp32 outputs at the README tolerance."""
    force_cpu_class(cpu_class)
    u = Era3DUNet.from_folder(era3d_dir / "micro_pipeline" / "unet", dtype="fp32", cpu_tactics=tactics)
    convs = {type(m).__name__ for m in u.modules() if isinstance(m, torch.nn.Conv2d)}
    assert convs == ({"FastConv2d"} if tactics else {"Conv2d"})
    io = load_file(era3d_dir / "micro_pipeline_io.safetensors")
    cls, pe = io["class_labels_cfg"], io["prompt_embeds_cfg"]
    with torch.no_grad():
        out, pose = u(io["unet_sample"][0], io["timesteps"][0], pe, cls)
    torch.testing.assert_close(out, io["unet_out_sample"][0], **TOL)
    torch.testing.assert_close(pose, io["unet_out_pose"][0], **TOL)


def test_chunked_feed_forward_is_identical(micro_unet, micro_io, monkeypatch):
    """The memory-saving batch slicing of the feed-forward (on at the 64×64 level of the real model) keeps parity."""
    from mvboost_core.era3d import tactics

    monkeypatch.setattr(tactics, "FF_CHUNK_TOKENS", 512)  # forces 2-sample slices at 16×16 in the micro model
    m = enable_cpu_inference_tactics(Era3DUNet.from_config(micro_unet.config))
    m.load_state_dict(micro_unet.state_dict())
    sample, pose = _run(m.eval(), micro_io)
    torch.testing.assert_close(sample, micro_io["out_sample"], **TOL)
    torch.testing.assert_close(pose, micro_io["out_pose"], **TOL)


def test_attention_modules_carry_era3d_processors(era3d_dir):
    from mvboost_core.era3d.attention import JointAttnProcessor, RowwiseMVAttnProcessor, SDPAAttnProcessor

    cfg = json.loads((era3d_dir / "unet_config_512_6view.json").read_text())
    unet = Era3DUNet.from_config(cfg, device="meta")
    kinds = {}
    for name, m in unet.named_modules():
        if hasattr(m, "processor") and hasattr(m, "to_q"):
            kinds.setdefault(name.rsplit(".", 1)[-1], set()).add(type(m.processor))
    assert kinds == {"attn1": {JointAttnProcessor}, "attn_mv": {RowwiseMVAttnProcessor},
                     "attn2": {SDPAAttnProcessor}}
    assert sum(isinstance(m.processor, RowwiseMVAttnProcessor) and m.processor.num_views == 6
               for m in unet.modules() if hasattr(m, "processor")) == 16  # down 6 + mid 1 + up 9


def test_inference_blocks_equal_the_autograd_forward():
    """The in-place no-grad forwards of the resnet and transformer blocks compute exactly diffusers' values."""
    from diffusers.models.resnet import ResnetBlock2D

    from mvboost_core.era3d.blocks import MVTransformerBlock
    from mvboost_core.era3d.tactics import InferenceResnetBlock2D

    torch.manual_seed(0)
    for cin, cout, scale in ((16, 16, 1.0), (16, 24, 2.0)):
        res = ResnetBlock2D(in_channels=cin, out_channels=cout, temb_channels=32, groups=8, eps=1e-5,
                            output_scale_factor=scale).eval()
        x, temb = torch.randn(2, cin, 8, 8), torch.randn(2, 32)
        with torch.no_grad():
            ref = res(x, temb)
        res.__class__ = InferenceResnetBlock2D  # what enable_cpu_inference_tactics does inside an Era3D UNet
        with torch.no_grad():
            fast = res(x, temb)
        slow = res(x, temb)  # autograd on: diffusers' own forward
        assert torch.equal(fast, ref) and torch.equal(slow.detach(), ref)

    from mvboost_core.era3d import tactics

    blk = MVTransformerBlock(32, 2, 16, 24, num_views=2, multiview_attention=True, mvcd_attention=True,
                             upcast_attention=False).eval()
    x, ctx = torch.randn(4, 16, 32), torch.randn(4, 5, 24)
    with torch.no_grad():
        plain = blk(x, ctx, 4, 4)
    blk.__class__ = tactics.InferenceMVTransformerBlock
    with torch.no_grad():
        fast = blk(x, ctx, 4, 4)
    slow = blk(x, ctx, 4, 4)  # autograd on: the published forward
    assert torch.equal(fast, plain) and torch.equal(slow.detach(), plain)
