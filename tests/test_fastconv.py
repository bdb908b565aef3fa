"""mvboost_core.fastconv: NNPACK 3x3 path equals F.conv2d to float32 rounding, and is only taken when eligible.

The NNPACK path is chosen by CPU class (AVX2-only CPUs); these tests force the class (``force_cpu_class``), so the
real NNPACK kernels run and are checked on every x86-64 host, AVX-512 ones included.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mvboost_core import fastconv
from mvboost_core.fastconv import FastConv2d, conv2d, fast_path_available, nnpack_eligible, use_fast_convs_

if not fastconv._nnpack_built():
    pytest.skip("this PyTorch build has no NNPACK (the fast path can never be taken)", allow_module_level=True)


@pytest.fixture
def avx2(force_cpu_class):
    force_cpu_class("avx2")
    assert fast_path_available()


def _ref64(x, w, b, padding=1, stride=1):
    return F.conv2d(x.double(), w.double(), None if b is None else b.double(), stride, padding).float()


@pytest.mark.parametrize("shape", [(3, 40, 32, 32, 24), (2, 16, 16, 16, 8), (1, 8, 40, 24, 5), (2, 12, 64, 72, 6)])
def test_nnpack_path_matches_float64(avx2, shape):
    n, cin, h, w_, cout = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, cin, h, w_, generator=g)
    w = torch.randn(cout, cin, 3, 3, generator=g) / (9 * cin) ** 0.5
    b = torch.randn(cout, generator=g)
    with torch.no_grad():
        assert nnpack_eligible(x, w, 1, 1)
        y = conv2d(x, w, b, 1, 1)
        y_dnn = F.conv2d(x, w, b, 1, 1)
    ref = _ref64(x, w, b)
    assert y.shape == ref.shape and y.dtype == torch.float32
    # float32 rounding only (Winograd's is a few times oneDNN's: relative RMS 1-3e-6 vs 0.1-2e-6 measured)
    rel = ((y - ref).norm() / ref.norm()).item()
    assert rel < 1e-5, rel
    assert (y - ref).abs().max().item() < 2e-5 * ref.abs().max().item()
    # and it is really another kernel (otherwise this test proves nothing about the NNPACK path)
    assert not torch.equal(y, y_dnn)


def test_ineligible_calls_are_plain_conv2d(avx2):
    x = torch.randn(2, 8, 32, 32)
    w = torch.randn(4, 8, 3, 3)
    with torch.no_grad():
        assert not nnpack_eligible(x, w, stride=2, padding=1)  # strided (downsamplers)
        assert not nnpack_eligible(x, torch.randn(4, 8, 1, 1), padding=0)  # 1x1 shortcut
        assert not nnpack_eligible(x[:, :, :8, :8].contiguous(), w, padding=1)  # 8x8 map: oneDNN is faster
        assert not nnpack_eligible(x.double(), w.double(), padding=1)
        assert not nnpack_eligible(x.to(memory_format=torch.channels_last), w, padding=1)
        assert torch.equal(conv2d(x, w, None, 2, 1), F.conv2d(x, w, None, 2, 1))
    xg = x.clone().requires_grad_(True)
    assert not nnpack_eligible(xg, w, padding=1)  # autograd needed: stay on the differentiable default path
    conv2d(xg, w, None, 1, 1).sum().backward()
    assert xg.grad is not None
    with torch.backends.nnpack.flags(enabled=False), torch.no_grad():
        assert not nnpack_eligible(x, w, padding=1)


def test_fast_conv_module_keeps_state_dict_and_output():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(6, 12, 3, padding=1), nn.SiLU(), nn.Conv2d(12, 12, 3, stride=2, padding=1),
                        nn.Conv2d(12, 5, 1))
    x = torch.randn(2, 6, 32, 32)
    with torch.no_grad():
        before = net(x)
        keys = list(net.state_dict())
        assert use_fast_convs_(net) == 3
        assert all(type(m) is FastConv2d for m in net if isinstance(m, nn.Conv2d))
        assert list(net.state_dict()) == keys
        after = net(x)
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("cls", ["avx512_bf16", "avx512", "other"])
def test_other_cpu_classes_keep_onednn(force_cpu_class, cls):
    """Where NNPACK was not measured faster the FastConv2d forward is exactly F.conv2d."""
    force_cpu_class(cls)
    assert not fast_path_available()
    conv = FastConv2d(8, 6, 3, padding=1).eval()
    x = torch.randn(2, 8, 32, 32)
    with torch.no_grad():
        assert not nnpack_eligible(x, conv.weight, 1, 1)
        assert torch.equal(conv(x), F.conv2d(x, conv.weight, conv.bias, 1, 1))


def test_slicing_of_large_batch_convs_matches(avx2, monkeypatch):
    """Output-channel slices (bounding NNPACK's workspace) give the unsliced result."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 24, 16, 16, generator=g)
    w = torch.randn(40, 24, 3, 3, generator=g) / 15
    b = torch.randn(40, generator=g)
    with torch.no_grad():
        whole = conv2d(x, w, b, 1, 1)
        monkeypatch.setattr(fastconv, "WORKSPACE_BYTES", 24 * 64 * 4 * 32)  # slices of 32 output channels
        sliced = conv2d(x, w, b, 1, 1)
    assert (whole - sliced).abs().max() < 1e-5
    ref = _ref64(x, w, b)
    assert (sliced - ref).abs().max() < 2e-5 * ref.abs().max()  # Winograd float32 rounding, as above
