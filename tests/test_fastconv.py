"""mvboost_core.fastconv: NNPACK 3x3 path equals F.conv2d to float32 rounding, and is only taken when eligible."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mvboost_core.fastconv import FastConv2d, conv2d, fast_path_available, nnpack_eligible, use_fast_convs_

needs_fast = pytest.mark.skipif(not fast_path_available(),
                                reason="NNPACK fast path is only used on AVX2-only CPUs with NNPACK built in")


def _ref64(x, w, b, padding=1, stride=1):
    return F.conv2d(x.double(), w.double(), None if b is None else b.double(), stride, padding).float()


@needs_fast
@pytest.mark.parametrize("shape", [(3, 40, 32, 32, 24), (2, 16, 16, 16, 8), (1, 8, 40, 24, 5), (2, 12, 64, 72, 6)])
def test_nnpack_path_matches_float64(shape):
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


@needs_fast
def test_ineligible_calls_are_plain_conv2d():
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
