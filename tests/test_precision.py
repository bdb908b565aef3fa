"""mvboost_core.precision: the CPU probe, the auto table, dtype parsing, weights stored vs computed; the tactics
switch (mvboost_core.tactics)."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch
from torch import nn

from mvboost_core import precision
from mvboost_core.precision import Precision
from mvboost_core.tactics import cpu_inference_tactics_enabled, enable_cpu_inference_tactics

F16, BF16, F32 = torch.float16, torch.bfloat16, torch.float32


def test_probe_matches_pytorch_dispatch():
    info = precision.probe_cpu()
    assert info.cpu_class in ("avx512_bf16", "avx512", "avx2", "other")
    cap = torch.backends.cpu.get_cpu_capability()
    assert info.isa == {"AVX512": "avx512", "AVX2": "avx2"}.get(cap, "other")
    if info.isa != "avx512":
        assert not info.bf16 and not info.fp16 and not info.amx


def test_probe_reads_the_native_half_flags(monkeypatch):
    """avx512_bf16 or AMX-bf16 -> bf16; AMX-bf16 also -> amx (which picks the AMX time profile); none on AVX2."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")  # the flags are read on AVX-512
    for flags, want in [({"avx512f"}, (False, False, False)), ({"avx512_bf16"}, (True, False, False)),
                        ({"amx_bf16", "amx_tile"}, (True, False, True)),
                        ({"avx512_bf16", "avx512_fp16", "amx_bf16"}, (True, True, True))]:
        monkeypatch.setattr(precision, "_cpuinfo_flags", lambda f=flags: set(f))
        info = precision.probe_cpu()
        assert (info.bf16, info.fp16, info.amx) == want, flags
        assert info.cpu_class == ("avx512_bf16" if want[0] else "avx512")


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 dispatch levels")
def test_avx2_host_class_is_what_pytorch_dispatches_to_under_aten_avx2():
    """On any x86-64 host, ATEN_CPU_CAPABILITY=avx2 makes PyTorch (and so this probe) behave as on an AVX2-only
    CPU: the class the AVX-512 hosts otherwise never see."""
    code = "from mvboost_core import precision; print(precision.cpu_info().cpu_class, precision.device_class())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, ATEN_CPU_CAPABILITY="avx2")).stdout.split()
    assert out == ["avx2", "cpu-avx2"]


@pytest.mark.parametrize("cls, fast, lgm, era3d", [
    ("avx2", False, Precision(F16, F32), Precision(F16, F32)),
    ("avx2", True, Precision(F16, F32), Precision(F16, F32)),  # no native bf16: the probe cannot say faster
    ("avx512", False, Precision(F16, F32), Precision(F16, F32)),
    ("other", False, Precision(F16, F32), Precision(F16, F32)),
    # Intel Xeon without AMX: bf16 compute measured slower than fp32 (docs/benchmarks.md) -> float32
    ("avx512_bf16", False, Precision(F16, F32), Precision(F16, F32)),
    # AMD EPYC with avx512_bf16: Era3D's UNet 0.67x the fp32 time in bf16 -> Era3D computes in bf16, LGM stays fp32
    ("avx512_bf16", True, Precision(F16, F32), Precision(BF16, BF16)),
])
def test_auto_table_for_the_released_fp16_checkpoints(force_cpu_class, cls, fast, lgm, era3d):
    force_cpu_class(cls, bf16_fast=fast)
    assert precision.device_class("cpu") == f"cpu-{cls}"
    want_lgm = lgm
    assert precision.choose("lgm", "cpu", "auto", F16) == want_lgm
    assert precision.choose("era3d", "cpu", "auto", F16) == era3d
    # fp32 checkpoints: stored in the compute dtype
    assert precision.choose("lgm", "cpu", "auto", F32) == Precision(want_lgm.compute, want_lgm.compute)
    for dev in ("cuda", "mps"):
        assert precision.choose("lgm", dev, "auto", F16) == precision.choose("era3d", dev) == Precision(F16, F16)


@pytest.mark.parametrize("cls", ["avx2", "avx512_bf16"])
def test_explicit_half_dtypes_compute_natively_only_where_the_cpu_can(force_cpu_class, cls):
    force_cpu_class(cls)
    assert precision.choose("era3d", "cpu", "fp32") == Precision(F32, F32)
    assert precision.choose("era3d", "cpu", "bf16") == Precision(BF16, BF16 if cls == "avx512_bf16" else F32)
    assert precision.choose("lgm", "cpu", "fp16") == Precision(F16, F32)  # forced classes have no native fp16
    assert precision.choose("lgm", "cuda", "bf16") == Precision(BF16, BF16)
    assert precision.choose("lgm", "cpu", Precision(F16, F16)) == Precision(F16, F16)  # forced pairs as given


def test_bad_dtype_names_the_accepted_values():
    with pytest.raises(ValueError, match=r"Unknown dtype 'fp8'; use one of auto, fp32, fp16, bf16"):
        precision.parse_dtype("fp8")
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        precision.parse_dtype(torch.float64)
    assert precision.parse_dtype("AUTO") is None and precision.parse_dtype("bfloat16") == BF16


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.SiLU(), nn.Flatten(),
                         nn.Linear(8 * 6 * 6, 5)).eval()


def test_storage_and_compute_dtypes_with_layerwise_casting():
    ref = _net()
    net = _net()
    precision.apply_precision(net, Precision(F16, F32))
    assert net[0].weight.dtype == F16 and net[4].weight.dtype == F16 and net[1].weight.dtype == F32  # norms: compute
    assert precision.compute_dtype(net) == F32
    stored = net[0].weight.data_ptr()
    x = torch.randn(2, 3, 6, 6)
    with torch.inference_mode():
        y = net(x)
    # exactly the fp32 network with fp16-rounded conv/linear weights
    for i in (0, 4):
        ref[i].weight.data = ref[i].weight.data.half().float()
        ref[i].bias.data = ref[i].bias.data.half().float()
    with torch.inference_mode():
        assert torch.equal(y, ref(x)) and y.dtype == F32
    # the stored tensors are kept (no down-cast, no re-allocation), and are not turned into inference tensors
    assert net[0].weight.dtype == F16 and net[0].weight.data_ptr() == stored and not net[0].weight.is_inference()
    # storage == compute: the hooks go, values stay
    precision.apply_precision(net, Precision(F16, F16))
    assert precision.compute_dtype(net) == F16 and all(p.dtype == F16 for p in net.parameters())
    assert getattr(net[0], "_diffusers_hook", None) is None or net[0]._diffusers_hook.get_hook(
        "layerwise_casting") is None


def test_tactics_switch_is_reversible_and_keeps_the_state_dict():
    from mvboost_core.fastconv import FastConv2d

    net = _net()
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    assert enable_cpu_inference_tactics(net) is net and cpu_inference_tactics_enabled(net)
    assert type(net[0]) is FastConv2d
    enable_cpu_inference_tactics(net, False)
    assert type(net[0]) is nn.Conv2d and not cpu_inference_tactics_enabled(net)
    assert all(torch.equal(sd[k], v) for k, v in net.state_dict().items())
    assert precision.cpu_tactics_default("cpu") and not precision.cpu_tactics_default("cuda")


def test_bf16_probe_is_a_real_measurement_and_skipped_without_native_bf16(force_cpu_class, monkeypatch):
    """The op probe times real bf16 and fp32 kernels (positive ratios, one per op); the cached decision is only
    measured on CPUs with native bf16 and follows MVBOOST_CPU_BF16 when set."""
    ratios = precision.measure_bf16_speedup(repeats=1)
    assert set(ratios) == {"conv3x3_320", "linear_320x2560"} and all(r > 0 for r in ratios.values())
    info = precision.CpuInfo("avx2")
    monkeypatch.setattr(precision, "cpu_info", lambda: info)
    monkeypatch.setattr(precision, "measure_bf16_speedup", lambda repeats=3: pytest.fail("timed without bf16"))
    monkeypatch.delenv("MVBOOST_CPU_BF16", raising=False)
    precision._cached_bf16_faster.cache_clear()
    try:
        assert precision._cached_bf16_faster() is False
        precision._cached_bf16_faster.cache_clear()
        info_bf16 = precision.CpuInfo("avx512", bf16=True)
        monkeypatch.setattr(precision, "cpu_info", lambda: info_bf16)
        monkeypatch.setattr(precision, "measure_bf16_speedup", lambda repeats=3: {"a": 0.5, "b": 0.81})
        assert precision._cached_bf16_faster() is False  # one op above the 0.8 bound: not faster
        precision._cached_bf16_faster.cache_clear()
        monkeypatch.setattr(precision, "measure_bf16_speedup", lambda repeats=3: {"a": 0.5, "b": 0.4})
        assert precision._cached_bf16_faster() is True
        precision._cached_bf16_faster.cache_clear()
        monkeypatch.setenv("MVBOOST_CPU_BF16", "0")
        assert precision._cached_bf16_faster() is False
    finally:
        precision._cached_bf16_faster.cache_clear()
