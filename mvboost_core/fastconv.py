"""Faster 3×3 convolutions for CPU inference on AVX2-only machines (PyTorch's bundled NNPACK).

PyTorch runs float32 CPU convolutions through oneDNN. On CPUs whose best vector unit is AVX2 (no AVX-512), oneDNN
uses direct convolution, while NNPACK — also shipped inside PyTorch (``torch.backends.nnpack``) but only chosen by
PyTorch's dispatcher when oneDNN is off — computes 3×3 convolutions with Winograd transforms, which need ~2× fewer
multiplications. PyTorch's NNPACK wrapper has two paths: batch 1 runs ``nnp_convolution_inference`` (tiles blocked
through a small workspace), larger batches ``nnp_convolution_output`` (the whole batch transformed at once).
Measured on a 2-core AMD EPYC (AVX2), batch 12, warm, 2 threads, interleaved rounds (docs/benchmarks.md, Era3D):

=============  =====================  ==========================
map size       image by image (b=1)   whole batch (b=12)
=============  =====================  ==========================
64×64          0.40–0.43× oneDNN      0.60–0.65×
32×32          0.73–0.85×             0.65–0.70×
16×16          1.9–2.2× (slower)      0.61–0.75×
8×8            –                      1.2–1.3× (slower)
=============  =====================  ==========================

so maps of ≥ 64×64 go image by image, 16×16 to <64×64 as a batch, smaller ones stay on oneDNN. On an AVX-512 Xeon
the same shapes took 1.3–13× oneDNN's time with NNPACK, so the path is taken only on AVX2-only CPUs.

Memory: PyTorch keeps NNPACK's workspace for the life of the thread at the largest size ever requested. The batch
path's workspace is dominated by the transformed kernel, ``C_in·C_out·64`` floats (0.7 GB for Era3D's 2560→1280
convolutions), so batch calls are split along the output channels into slices of at most
:data:`WORKSPACE_BYTES` of transformed kernel (results written into one output tensor).

Numerics: float32 rounding only, a few times oneDNN's: against a float64 convolution the relative RMS error is
1–3e-6 (oneDNN: 0.1–2e-6) and the max error 2e-5–7e-5 on outputs of magnitude ~6 (oneDNN: 1e-6–4e-5). The Era3D
parity fixtures pass unchanged with it. ``torch.backends.nnpack.set_flags(False)`` restores oneDNN everywhere.

:func:`conv2d` is a drop-in for ``torch.nn.functional.conv2d`` that takes the NNPACK path only when all of these
hold, and otherwise calls ``F.conv2d`` unchanged:

* NNPACK is available in this PyTorch build and enabled (``torch.backends.nnpack.flags(enabled=False)`` /
  ``set_flags(False)`` turns this module's fast path off, as it does PyTorch's own NNPACK use);
* the CPU class (:func:`mvboost_core.precision.cpu_info`) is one where NNPACK was measured faster,
  :data:`NNPACK_CPU_CLASSES` (AVX2-only; on AVX-512 CPUs oneDNN is faster, see docs/benchmarks.md); tests force
  the class to run this path on any x86 host;
* float32 CPU tensors, NCHW-contiguous input, 4-D; no autograd needed (inference / ``no_grad``);
* a 3×3 kernel, stride 1, padding 1, dilation 1, groups 1 (what UNets and decoders use);
* a map of at least 16×16 pixels (the measured break-even).

:class:`FastConv2d` is an ``nn.Conv2d`` (same parameters and state-dict keys) whose forward goes through
:func:`conv2d`; :func:`use_fast_convs_` switches a model's ``nn.Conv2d`` modules to it in place.
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["conv2d", "nnpack_eligible", "FastConv2d", "use_fast_convs_", "fast_path_available", "nnpack_preferred",
           "NNPACK_CPU_CLASSES"]


#: CPU classes (:func:`mvboost_core.precision.cpu_info`) on which NNPACK's Winograd path was measured faster than
#: oneDNN for these shapes (docs/benchmarks.md): AVX2-only CPUs. On AVX-512 CPUs oneDNN's kernels win.
NNPACK_CPU_CLASSES = ("avx2",)


@functools.lru_cache(maxsize=1)
def _nnpack_built() -> bool:
    try:
        return bool(torch.backends.nnpack.is_available())  # also initialises NNPACK (required before first use)
    except Exception:  # noqa: BLE001 - any failure to query means: do not use NNPACK
        return False


def nnpack_preferred() -> bool:
    """Whether this CPU's class is one where NNPACK was measured faster (:data:`NNPACK_CPU_CLASSES`)."""
    from . import precision

    return precision.cpu_info().cpu_class in NNPACK_CPU_CLASSES


def fast_path_available() -> bool:
    """True when eligible convolutions of a :class:`FastConv2d` take NNPACK here: NNPACK built into PyTorch and
    enabled (``torch.backends.nnpack.set_flags``), and this CPU class prefers it (:func:`nnpack_preferred`)."""
    return nnpack_preferred() and _nnpack_built() and bool(torch._C._get_nnpack_enabled())


#: smallest map (H·W) sent to NNPACK, and the size from which images go one at a time (see the module docstring)
_MIN_PIXELS = 16 * 16
_PER_IMAGE_PIXELS = 64 * 64
#: bound on the transformed-kernel part of NNPACK's (persistent) workspace on the batch path
WORKSPACE_BYTES = 64 * 2**20


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def nnpack_eligible(x: torch.Tensor, weight: torch.Tensor, stride=1, padding=0, dilation=1, groups: int = 1) -> bool:
    """Whether :func:`conv2d` would take the NNPACK path for these arguments (see the module docstring)."""
    if not fast_path_available():
        return False
    if x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32 or x.ndim != 4:
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return False
    if groups != 1 or _pair(stride) != (1, 1) or _pair(dilation) != (1, 1) or _pair(padding) != (1, 1):
        return False
    if tuple(weight.shape[-2:]) != (3, 3) or not x.is_contiguous():
        return False
    return x.shape[-2] * x.shape[-1] >= _MIN_PIXELS


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=1, padding=0,
           dilation=1, groups: int = 1) -> torch.Tensor:
    """``F.conv2d`` with NNPACK's Winograd path for eligible float32 CPU inference calls.

    x [N, C_in, H, W], weight [C_out, C_in/groups, kh, kw], bias [C_out] or None -> [N, C_out, H', W'].
    """
    if not nnpack_eligible(x, weight, stride, padding, dilation, groups):
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)
    pad = list(_pair(padding))
    weight = weight.contiguous()
    n, cin, h, w = x.shape
    cout = weight.shape[0]
    if n == 1 or h * w >= _PER_IMAGE_PIXELS:
        if n == 1:
            return torch._nnpack_spatial_convolution(x, weight, bias, pad)
        out = x.new_empty(n, cout, h, w)
        for i in range(n):  # batch-1 calls take NNPACK's blocked inference path (faster here, small workspace)
            out[i] = torch._nnpack_spatial_convolution(x[i:i + 1], weight, bias, pad)[0]
        return out
    step = max(32, WORKSPACE_BYTES // (cin * 64 * 4))
    if step >= cout:
        return torch._nnpack_spatial_convolution(x, weight, bias, pad)
    out = x.new_empty(n, cout, h, w)
    for j in range(0, cout, step):  # output-channel slices bound the transformed kernel held by NNPACK
        out[:, j:j + step] = torch._nnpack_spatial_convolution(x, weight[j:j + step],
                                                               None if bias is None else bias[j:j + step], pad)
    return out


class FastConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose zero-padded forward goes through :func:`conv2d` (same parameters, same state dict)."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.padding_mode != "zeros" or isinstance(self.padding, str):
            return super()._conv_forward(input, weight, bias)
        return conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


def use_fast_convs_(module: nn.Module) -> int:
    """Switch every module of exact type ``nn.Conv2d`` inside ``module`` to :class:`FastConv2d` in place.

    Parameters, buffers and state-dict keys are untouched. Returns how many modules were switched.
    """
    n = 0
    for m in module.modules():
        if type(m) is nn.Conv2d:
            m.__class__ = FastConv2d
            n += 1
    return n
