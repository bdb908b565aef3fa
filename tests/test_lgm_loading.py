"""Strict LGM checkpoint loading on tiny checkpoints written at test time in the public on-disk format
(safetensors, reference key names, fp16, no metadata)."""
from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mvboost_core.lgm import (
    LGM,
    LGMCheckpointError,
    init_lgm_weights_,
    load_lgm,
    read_state_dict,
    save_lgm_checkpoint,
)
from mvboost_core import precision


@pytest.fixture(scope="module")
def micro_fp16(tmp_path_factory):
    """The micro config with the fixtures' deterministic random weights, saved like model_fp16_fixrot."""
    with torch.device("meta"):
        m = LGM("micro")
    init_lgm_weights_(m)
    path = save_lgm_checkpoint(m, tmp_path_factory.mktemp("lgm") / "micro_fp16.safetensors", dtype=torch.float16)
    return path, m


def test_written_checkpoint_has_public_format(micro_fp16):
    path, m = micro_fp16
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() is None  # the public files carry no metadata
        keys = set(f.keys())
        assert keys == set(m.state_dict())
        assert all(f.get_slice(k).get_dtype() == "F16" for k in keys)
    n = struct.unpack("<Q", path.read_bytes()[:8])[0]
    header = json.loads(path.read_bytes()[8:8 + n])
    assert "__metadata__" not in header


@pytest.mark.parametrize("cpu_class", ["avx2", "avx512_bf16"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fp16_checkpoint_loads_into_compute_dtype(micro_fp16, dtype, cpu_class, force_cpu_class):
    path, ref = micro_fp16
    force_cpu_class(cpu_class)
    m = load_lgm(path, dtype=dtype)
    assert m.config.name == "micro" and m.dtype == dtype and not m.training
    assert all(not p.requires_grad for p in m.parameters())
    sd = m.state_dict()
    for k, v in ref.state_dict().items():
        want = v.half().to(dtype if "norm" not in k else m.compute_dtype)  # norms are kept in the compute dtype
        assert torch.equal(sd[k], want), k  # fp16 values, exactly, in the new dtype
    # explicit bf16/fp16 on a CPU without native kernels for them: stored so, computed in float32
    native = dtype == torch.float32 or (dtype == torch.bfloat16 and cpu_class == "avx512_bf16")
    assert m.compute_dtype == (dtype if native else torch.float32)
    x = torch.rand(1, 4, 9, 64, 64)
    with torch.inference_mode():
        g = m.forward_gaussians(x)
    assert g.shape == (1, 4096, 14) and g.dtype == torch.float32 and torch.isfinite(g).all()


def test_reader_matches_safetensors(micro_fp16):
    from safetensors.torch import load_file

    path, _ = micro_fp16
    a, b = read_state_dict(path), load_file(str(path))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)


def test_config_detected_from_shapes_of_public_configs():
    # Only keys and shapes matter for detection, so the big/tiny/default layouts are checked on the meta device.
    from mvboost_core.lgm import detect_config

    with torch.device("meta"):
        for name in ("big", "tiny", "default"):
            shapes = {k: tuple(v.shape) for k, v in LGM(name).state_dict().items()}
            cfg = detect_config(shapes)
            assert cfg.architecture() == LGM(name).config.architecture()
            assert cfg.input_size == 256


def test_missing_unexpected_and_wrong_shape_listed(micro_fp16, tmp_path):
    path, m = micro_fp16
    sd = {k: v.half() for k, v in m.state_dict().items()}
    sd.pop("unet.mid_block.attns.0.attn.qkv.weight")
    sd.pop("conv.bias")
    sd["unet.extra.weight"] = torch.zeros(3)
    sd["unet.up_blocks.0.attns.0.attn.proj.weight"] = torch.zeros(64, 32, dtype=torch.float16)
    bad = tmp_path / "bad.safetensors"
    save_file(sd, str(bad))
    with pytest.raises(LGMCheckpointError) as e:
        load_lgm(bad, config="micro")
    msg = str(e.value)
    assert "2 missing keys" in msg and "unet.mid_block.attns.0.attn.qkv.weight" in msg and "conv.bias" in msg
    assert "1 unexpected keys: unet.extra.weight" in msg
    assert "wrong shape for unet.up_blocks.0.attns.0.attn.proj.weight: checkpoint [64, 32], model [64, 64]" in msg


def test_wrong_config_is_named(micro_fp16):
    path, _ = micro_fp16
    with pytest.raises(LGMCheckpointError, match="does not match the LGM 'tiny' architecture"):
        load_lgm(path, config="tiny")


def test_truncated_file(micro_fp16, tmp_path):
    path, _ = micro_fp16
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(LGMCheckpointError, match="truncated.*download the file again"):
        load_lgm(cut)
    tiny = tmp_path / "tiny.safetensors"
    tiny.write_bytes(path.read_bytes()[:100])
    with pytest.raises(LGMCheckpointError, match="truncated"):
        load_lgm(tiny)


def test_sd_unet_checkpoint_is_rejected(tmp_path):
    sd = {
        "conv_in.weight": torch.zeros(320, 4, 3, 3, dtype=torch.float16),
        "time_embedding.linear_1.weight": torch.zeros(1280, 320, dtype=torch.float16),
        "down_blocks.0.attentions.0.proj_in.weight": torch.zeros(320, 320, dtype=torch.float16),
    }
    p = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file(sd, str(p))
    with pytest.raises(LGMCheckpointError) as e:
        load_lgm(p)
    msg = str(e.value)
    assert "Not an LGM checkpoint" in msg and "diffusers UNet" in msg and "'conv_in.weight'" in msg


def test_pickles_refused_unless_weights_only(micro_fp16, tmp_path):
    _, m = micro_fp16

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "model.pt"
    torch.save({"state_dict": m.state_dict(), "x": Evil()}, evil)
    with pytest.raises(LGMCheckpointError, match="cannot be loaded safely"):
        load_lgm(evil)
    plain = tmp_path / "plain.pth"
    torch.save({k: v.half() for k, v in m.state_dict().items()}, plain)
    loaded = load_lgm(plain)
    assert loaded.config.name == "micro"
    # a pickle renamed to .safetensors is detected by its content
    renamed = tmp_path / "renamed.safetensors"
    renamed.write_bytes(plain.read_bytes())
    with pytest.raises(LGMCheckpointError, match="pickled"):
        load_lgm(renamed)


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="LGM checkpoint not found"):
        load_lgm("/nonexistent/model_fp16_fixrot.safetensors")


def test_lpips_keys_are_ignored(micro_fp16, tmp_path):
    _, m = micro_fp16
    sd = {k: v.half() for k, v in m.state_dict().items()}
    sd["lpips_loss.scaling_layer.shift"] = torch.zeros(1, 3, 1, 1)
    p = tmp_path / "with_lpips.safetensors"
    save_file(sd, str(p))
    assert load_lgm(p).config.name == "micro"


@pytest.mark.parametrize("cpu_class", ["avx2", "avx512", "avx512_bf16"])
def test_auto_dtype_on_cpu_keeps_fp16_weights_and_computes_fp32(micro_fp16, cpu_class, force_cpu_class):
    path, _ = micro_fp16
    force_cpu_class(cpu_class)
    auto = load_lgm(path)  # "auto": the precision table's CPU rows for LGM
    assert auto.dtype == torch.float16 and auto.compute_dtype == torch.float32
    assert precision.choose("lgm", "cpu", "auto", path) == precision.Precision(torch.float16, torch.float32)
    full = load_lgm(path, dtype="fp32")
    x = torch.rand(1, 4, 9, 64, 64)
    with torch.inference_mode():
        a, b = auto.forward_gaussians(x), full.forward_gaussians(x)
    assert a.dtype == torch.float32 and torch.equal(a, b)  # fp16 values upcast per layer = the fp32 model exactly


def test_init_weights_reproduce_fixture_and_round_in_place(fixtures_dir):
    from safetensors.torch import load_file

    ref = load_file(str(fixtures_dir / "lgm" / "weights_micro.safetensors"))
    with torch.device("meta"):
        m = LGM("micro")
    sd = init_lgm_weights_(m).state_dict()
    assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in sd)  # bit for bit
    for dtype in (torch.float32, torch.bfloat16):
        with torch.device("meta"):
            r = LGM("micro").to(dtype)
        rounded = init_lgm_weights_(r, round_to=torch.float16).state_dict()
        assert all(rounded[k].dtype == dtype and torch.equal(rounded[k], ref[k].half().to(dtype)) for k in sd)
