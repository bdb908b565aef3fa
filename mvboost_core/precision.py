"""Precision policy of the networks: the CPU probe, the ``auto`` rule per device, weights stored vs computed.

Every loader (LGM, Era3D), node and CLI command asks this module which dtypes to use; nothing else probes the CPU.

**The ``auto`` rule** (``choose(model, device, "auto", checkpoint)``), the same for LGM and Era3D. "storage" is the
dtype the weights are kept in, "compute" the dtype of the activations and of each layer's weights while it runs. A
half-precision compute dtype is picked for a device class only where it was measured faster than float32 and
within the quality bounds (Era3D micro pipeline ≥ 35 dB vs fp32 for bf16; tests/test_era3d_pipeline.py):

=========================  ====================================  ========  =============================================
device class               storage                               compute   measurement behind it
(:func:`device_class`)
=========================  ====================================  ========  =============================================
``cpu-avx2`` (no AVX-512)  the checkpoint's fp16/bf16 as is      float32   AMD EPYC, AVX2 only, 2 threads: bf16/fp16
                           (the released LGM and Era3D: fp16;              convolutions 9-250x slower than fp32; fp16
                           exact values, half the memory);                 storage + fp32 compute = the fp32 result bit
                           float32 for fp32 checkpoints                    for bit, LGM big 13.4 s / 1.66 GiB vs fp32
                                                                           12.8-14.4 s / 2.39 GiB (docs/benchmarks.md)
``cpu-avx512_bf16``        LGM: as above; Era3D where            float32   Intel Xeon VM with avx512_bf16 (no AMX
(avx512_bf16 or AMX)       :func:`bf16_compute_faster`:          (Era3D    exposed), 2 threads: Era3D UNet batch 12
                           bfloat16                              bf16 if   bf16 compute 188.5 CPU-s vs fp32 149.2
                                                                 faster)   (1.26x slower; bf16 3x3 conv 2.3x, Linear
                                                                           2.0x slower). AMD EPYC with avx512_bf16,
                                                                           2 threads (2026-12-03): UNet batch 12 bf16
                                                                           47.0 s vs fp32 70.3 s (0.67x; conv 0.43x,
                                                                           Linear 0.34x). Intel Xeon with AMX-bf16,
                                                                           2 threads (2026-12-03): 13.6 s vs 48.9 s
                                                                           (0.28x; conv 0.20x, Linear 0.05x). The
                                                                           hosts disagree, so a 0.3 s op probe
                                                                           decides per machine; Era3D micro pipeline
                                                                           bf16 compute 36.3 dB vs fp32 (bound 35).
                                                                           LGM keeps float32 (bf16 quality not
                                                                           shown: 34-38 dB renders with random
                                                                           weights; AMX: 2.8 s vs 6.6 s fp32)
``cpu-avx512``,            as ``cpu-avx2``                       float32   not measured; same rule (no native bf16)
``cpu-other``
``cuda``                   float16                               float16   upstream LGM and Era3D were released and run
                                                                           in fp16 on CUDA (Era3D: attention scores
                                                                           and softmax in fp32 inside the fused
                                                                           kernel, as xformers; VAE fp32 when its
                                                                           config says force_upcast); not run here
                                                                           (no GPU):
                                                                           ``benchmarks/gpu_check.py`` checks it
``mps``                    float16                               float16   not measured (no Apple machine); as CUDA
=========================  ====================================  ========  =============================================

:data:`AUTO` holds this table as data; the measured numbers are in ``docs/benchmarks.md``.

**Explicit requests**: ``"fp32"`` = float32 storage and compute; ``"bf16"``/``"fp16"`` store in that dtype and
compute in it where the device has native kernels for it (CUDA/MPS; a CPU with avx512_bf16/AMX for bf16, with
avx512_fp16/AMX-fp16 for fp16), else compute in float32 (half-precision CPU kernels without native instructions are
9-250x slower). A :class:`Precision` given as the dtype is taken as is (tests force any pair with it).

**Weights stored in one dtype, computed in another** (:func:`apply_precision`): diffusers' layerwise-casting hooks
(``diffusers.hooks``: a ``HookRegistry`` on every Conv/Linear/Embedding leaf module, the layer types diffusers'
``apply_layerwise_casting`` supports), with one difference: diffusers' ``LayerwiseCastingHook`` casts the weights up
before each call and back down after it; :class:`KeepStorageCastingHook` keeps the stored tensor and drops the
up-cast copy after the call. Same values (a half -> float32 -> half round trip is exact), no down-cast (0.7 s per LGM
big forward at 2 threads), and the stored tensors are never re-allocated (no heap churn, never turned into
inference tensors). Norm layers and free parameters stay in the compute dtype (small; what diffusers skips too).
The models' ``forward`` casts its input to :func:`compute_dtype` of the model. Layerwise casting is for inference;
training loads float32 weights (storage = compute, no hooks).

**The CPU probe** (:func:`cpu_info`): one cached call. ``isa`` is PyTorch's dispatch level
(``torch.backends.cpu.get_cpu_capability()``, which honours ``ATEN_CPU_CAPABILITY``), ``bf16`` / ``fp16`` whether
the CPU has native bf16 (avx512_bf16 or AMX) / fp16 (avx512_fp16 or AMX-fp16) matrix instructions. Tests force the
other host class by monkeypatching ``precision.cpu_info`` (every caller goes through the module attribute).
"""
from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "CpuInfo", "cpu_info", "probe_cpu", "device_class", "Precision", "AUTO", "parse_dtype", "choose",
    "apply_precision", "compute_dtype", "storage_dtypes", "KeepStorageCastingHook", "cpu_tactics_default",
    "DTYPE_CHOICES", "describe", "checkpoint_dtype_of", "bf16_compute_faster", "measure_bf16_speedup",
    "AUTO_BF16_IF_FASTER",
]

log = logging.getLogger("mvboost.precision")

#: what the CLI and the nodes offer
DTYPE_CHOICES = ("auto", "fp32", "fp16", "bf16")

_NAMES = {"fp32": torch.float32, "float32": torch.float32, "float": torch.float32, "fp16": torch.float16,
          "float16": torch.float16, "half": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
_HALF = (torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------------------------- the CPU probe
@dataclass(frozen=True)
class CpuInfo:
    """``isa``: ``"avx512"`` | ``"avx2"`` | ``"other"`` (PyTorch's CPU dispatch level); ``bf16`` / ``fp16``: native
    bf16 / fp16 matrix instructions (avx512_bf16 or AMX-bf16 / avx512_fp16 or AMX-fp16); ``amx``: AMX-bf16 tiles
    (oneDNN's fastest bf16 path; only the time estimate tells it apart, the precision rule goes by the op probe)."""

    isa: str
    bf16: bool = False
    fp16: bool = False
    amx: bool = False

    @property
    def cpu_class(self) -> str:
        """``"avx512_bf16"`` | ``"avx512"`` | ``"avx2"`` | ``"other"``."""
        if self.isa == "avx512":
            return "avx512_bf16" if self.bf16 else "avx512"
        return self.isa


def _cpuinfo_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def probe_cpu() -> CpuInfo:
    """Ask PyTorch (and, for the native half-precision instructions, ``/proc/cpuinfo``) what this CPU offers."""
    try:
        cap = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001 - an unknown build: assume the plainest
        cap = "DEFAULT"
    isa = {"AVX512": "avx512", "AVX2": "avx2"}.get(cap, "other")
    if isa != "avx512":  # bf16/fp16 native kernels are AVX-512/AMX instructions; PyTorch dispatches below them
        return CpuInfo(isa)
    flags = _cpuinfo_flags()
    bf16 = bool({"avx512_bf16", "amx_bf16"} & flags)
    fp16 = bool({"avx512_fp16", "amx_fp16"} & flags)
    amx = "amx_bf16" in flags
    if not flags:  # no /proc/cpuinfo: PyTorch's own (private) cpuinfo queries
        bf16 = bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())
        fp16 = bool(getattr(torch.cpu, "_is_amx_fp16_supported", lambda: False)())
        amx = bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
        bf16 = bf16 or amx
    return CpuInfo(isa, bf16, fp16, amx)


@functools.lru_cache(maxsize=1)
def _cached_probe() -> CpuInfo:
    info = probe_cpu()
    log.info("mvboost precision: CPU class %s (PyTorch dispatch %s)", info.cpu_class, info.isa)
    return info


def cpu_info() -> CpuInfo:
    """This CPU (probed once per process). Monkeypatch this attribute to test another host class."""
    return _cached_probe()


#: the op probe's shapes: Era3D's level-0 work (3×3 convolution 320→320, Linear 320→2560 on 4,096 tokens)
_PROBE_SHAPES = {"conv3x3_320": ((1, 320, 32, 32), (320, 320, 3, 3)), "linear_320x2560": ((4096, 320), (2560, 320))}
#: bf16 compute counts as faster when every probe op takes at most this fraction of its float32 time
BF16_FASTER_RATIO = 0.8


def measure_bf16_speedup(repeats: int = 3) -> dict[str, float]:
    """``{op: bf16 seconds / float32 seconds}`` for the probe ops at the current thread count (best of ``repeats``
    after one warm-up each; ~0.3 s on 2 threads). Runs the real kernels on any CPU (emulated without native bf16)."""
    import time

    import torch.nn.functional as F

    g = torch.Generator().manual_seed(0)
    out = {}
    for name, (xs, ws) in _PROBE_SHAPES.items():
        x32, w32 = torch.randn(xs, generator=g), torch.randn(ws, generator=g) / ws[1] ** 0.5
        best = {}
        for dt in (torch.float32, torch.bfloat16):
            x, w = x32.to(dt), w32.to(dt)
            op = (lambda: F.conv2d(x, w, padding=1)) if name.startswith("conv") else (lambda: F.linear(x, w))
            with torch.no_grad():
                op()
                times = []
                for _ in range(max(1, repeats)):
                    t0 = time.perf_counter()
                    op()
                    times.append(time.perf_counter() - t0)
            best[dt] = min(times)
        out[name] = best[torch.bfloat16] / max(best[torch.float32], 1e-9)
    return out


@functools.lru_cache(maxsize=1)
def _cached_bf16_faster() -> bool:
    env = os.environ.get("MVBOOST_CPU_BF16", "").strip().lower()
    if env in ("0", "1", "false", "true", "no", "yes"):
        return env in ("1", "true", "yes")
    if not cpu_info().bf16:
        return False
    ratios = measure_bf16_speedup()
    fast = max(ratios.values()) <= BF16_FASTER_RATIO
    log.info("mvboost precision: bf16/fp32 time per probe op %s -> bf16 compute %s",
             {k: round(v, 2) for k, v in ratios.items()}, "faster" if fast else "not faster")
    return fast


def bf16_compute_faster() -> bool:
    """Whether this CPU computes Era3D-sized bf16 convolutions and matrix products faster than float32: measured
    once per process by :func:`measure_bf16_speedup` (every op ≤ :data:`BF16_FASTER_RATIO` of its fp32 time), and
    only on CPUs with native bf16 (False elsewhere, without timing). ``MVBOOST_CPU_BF16=1|0`` overrides the
    measurement. The two avx512_bf16 hosts measured so far disagree (docs/benchmarks.md), hence a measurement and
    not a CPU flag. Monkeypatch this attribute to test either answer."""
    return _cached_bf16_faster()


def device_class(device: torch.device | str | None = None) -> str:
    """``"cuda"`` | ``"mps"`` | ``"cpu-avx512_bf16"`` | ``"cpu-avx512"`` | ``"cpu-avx2"`` | ``"cpu-other"``."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type in ("cuda", "mps"):
        return dev.type
    if dev.type == "cpu":
        return "cpu-" + cpu_info().cpu_class
    return dev.type  # meta, xpu, ...: treated like a device with native half kernels, see choose()


# ---------------------------------------------------------------------------------------------- the rule
@dataclass(frozen=True)
class Precision:
    """Weights kept in ``storage``, activations (and each layer's weights while it runs) in ``compute``."""

    storage: torch.dtype
    compute: torch.dtype

    def __str__(self) -> str:
        s, c = (str(d).replace("torch.", "") for d in (self.storage, self.compute))
        return s if s == c else f"{s} weights, {c} compute"


#: the ``auto`` table of the module docstring: ``AUTO[(model, device class)] = compute dtype``; storage is the
#: compute dtype, except on CPUs computing in float32, where a half-precision checkpoint stays in its dtype.
AUTO: dict[tuple[str, str], torch.dtype] = {
    **{(m, "cuda"): torch.float16 for m in ("lgm", "era3d")},
    **{(m, "mps"): torch.float16 for m in ("lgm", "era3d")},
    **{(m, f"cpu-{c}"): torch.float32 for m in ("lgm", "era3d") for c in ("avx2", "avx512", "avx512_bf16", "other")},
}
#: (model, device class) pairs whose ``auto`` compute dtype is bfloat16 where :func:`bf16_compute_faster` (storage
#: bfloat16 too), and :data:`AUTO`'s entry elsewhere
AUTO_BF16_IF_FASTER = {("era3d", "cpu-avx512_bf16")}


def parse_dtype(dtype) -> "torch.dtype | Precision | None":
    """``None``/``"auto"`` -> None; ``"fp32"|"fp16"|"bf16"`` (and long names) or a float ``torch.dtype`` -> that
    dtype; a :class:`Precision` as is. Raises ``ValueError`` naming the accepted values."""
    if dtype is None or isinstance(dtype, Precision):
        return dtype
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, *_HALF):
            raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
        return dtype
    name = str(dtype).strip().lower()
    if name == "auto":
        return None
    if name not in _NAMES:
        raise ValueError(f"Unknown dtype {dtype!r}; use one of {', '.join(DTYPE_CHOICES)}")
    return _NAMES[name]


def _native(dt: torch.dtype, dev_class: str) -> bool:
    """Whether the device class has fast kernels for ``dt``."""
    if dt == torch.float32 or not dev_class.startswith("cpu"):
        return True
    info = cpu_info()
    return info.bf16 if dt == torch.bfloat16 else info.fp16


def checkpoint_dtype_of(path) -> torch.dtype | None:
    """The floating dtype shared by all floating tensors of a safetensors file (header only); for a folder, of its
    ``unet/diffusion_pytorch_model.safetensors`` (an Era3D diffusers folder). None if mixed, absent or unreadable."""
    p = Path(os.fspath(path))
    if p.is_dir():
        p = p / "unet" / "diffusion_pytorch_model.safetensors"
    if not p.is_file() or p.suffix != ".safetensors":
        return None
    names = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
    try:
        from safetensors import safe_open

        with safe_open(str(p), framework="pt", device="cpu") as f:
            found = {names[d] for d in (f.get_slice(k).get_dtype() for k in f.keys()) if d in names}
    except Exception:  # noqa: BLE001 - the loader reports unreadable files
        return None
    return found.pop() if len(found) == 1 else None


def choose(model: str, device=None, dtype="auto", checkpoint=None) -> Precision:
    """The storage and compute dtypes for ``model`` (``"lgm"`` | ``"era3d"``) on ``device`` (default CPU).

    ``dtype``: ``"auto"``/None (the table of the module docstring), ``"fp32"|"fp16"|"bf16"``, a ``torch.dtype`` or a
    :class:`Precision` (returned unchanged). ``checkpoint``: the floating dtype the weights have on disk, or the
    checkpoint file / Era3D folder to read it from (:func:`checkpoint_dtype_of`); None = unknown. Used by ``auto`` on
    CPUs that compute in float32 (a half-precision checkpoint is then kept in its dtype).
    """
    if model not in ("lgm", "era3d"):
        raise ValueError(f"model must be 'lgm' or 'era3d', got {model!r}")
    want = parse_dtype(dtype)
    if isinstance(want, Precision):
        return want
    checkpoint_dtype = checkpoint if checkpoint is None or isinstance(checkpoint, torch.dtype) else None
    dc = device_class(device)
    if want is None and dc.startswith("cpu") and checkpoint is not None and checkpoint_dtype is None:
        checkpoint_dtype = checkpoint_dtype_of(checkpoint)
    if want is None:
        compute = AUTO.get((model, dc), torch.float32 if dc.startswith("cpu") else torch.float16)
        if (model, dc) in AUTO_BF16_IF_FASTER and bf16_compute_faster():
            compute = torch.bfloat16
        if compute == torch.float32 and checkpoint_dtype in _HALF:
            return Precision(checkpoint_dtype, torch.float32)  # exact values, half the memory
        return Precision(compute, compute)
    return Precision(want, want if _native(want, dc) else torch.float32)


def describe(model: str, device=None, dtype="auto", checkpoint=None) -> str:
    """One line for logs and UIs: ``"era3d on cpu-avx512_bf16: bfloat16"``."""
    return f"{model} on {device_class(device)}: {choose(model, device, dtype, checkpoint)}"


def cpu_tactics_default(device=None) -> bool:
    """Whether the loaders switch the CPU inference tactics on (:mod:`mvboost_core.tactics`): on for CPU inference
    on every host class (they lower peak memory everywhere; the NNPACK convolutions inside them follow their own
    per-ISA rule, :func:`mvboost_core.fastconv.nnpack_preferred`), off on CUDA/MPS (the tactics are CPU-specific)."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    return dev.type == "cpu"


# ------------------------------------------------------------------------- storage vs compute: layerwise casting
def _hook_base():
    from diffusers.hooks.layerwise_casting import LayerwiseCastingHook

    return LayerwiseCastingHook


@functools.lru_cache(maxsize=1)
def _hook_cls():
    class KeepStorageCastingHook(_hook_base()):
        """diffusers' ``LayerwiseCastingHook`` that keeps the stored weights: ``pre_forward`` swaps each parameter's
        data for a ``compute_dtype`` copy, ``post_forward`` puts the stored tensor back (no down-cast)."""

        def pre_forward(self, module, *args, **kwargs):
            kept = {}
            for name, p in module._parameters.items():
                if p is not None and p.dtype != self.compute_dtype and p.is_floating_point():
                    kept[name] = p.data
                    p.data = p.data.to(self.compute_dtype, non_blocking=self.non_blocking)
            self._kept = kept
            return args, kwargs

        def post_forward(self, module, output):
            for name, data in getattr(self, "_kept", {}).items():
                module._parameters[name].data = data
            self._kept = {}
            return output

        def deinitalize_hook(self, module):  # (diffusers' spelling) removal keeps the weights as they are
            return module

    return KeepStorageCastingHook


def __getattr__(name):  # KeepStorageCastingHook without importing diffusers at module import
    if name == "KeepStorageCastingHook":
        return _hook_cls()
    raise AttributeError(name)


_ATTR = "_mvboost_precision"


def apply_precision(module: nn.Module, precision: Precision) -> nn.Module:
    """Give ``module`` this precision, in place; returns it.

    Every parameter and buffer is converted to ``precision.compute``, except the weights of the Conv/Linear/Embedding
    layers, which are converted to ``precision.storage`` and cast to the compute dtype for the duration of each call
    (:class:`KeepStorageCastingHook`, registered once per layer; calling this again only converts). Works on meta
    models (nothing is allocated): loaders apply it before reading weights and read each tensor straight into
    :func:`storage_dtypes`. :func:`compute_dtype` reads the result.
    """
    split = precision.storage != precision.compute
    from diffusers.hooks._common import _GO_LC_SUPPORTED_PYTORCH_LAYERS

    def to_dtype(dt):
        return lambda t: t.to(dtype=dt) if t.is_floating_point() and t.dtype != dt else t

    for m in module.modules():  # each tensor converted once, straight to its final dtype
        hooked = split and isinstance(m, _GO_LC_SUPPORTED_PYTORCH_LAYERS)
        m._apply(to_dtype(precision.storage if hooked else precision.compute), recurse=False)
    if split:
        from diffusers.hooks import HookRegistry
        from diffusers.hooks.layerwise_casting import _LAYERWISE_CASTING_HOOK

        for m in module.modules():
            if isinstance(m, _GO_LC_SUPPORTED_PYTORCH_LAYERS):
                registry = HookRegistry.check_if_exists_or_initialize(m)
                hook = registry.get_hook(_LAYERWISE_CASTING_HOOK)
                if hook is None:
                    registry.register_hook(_hook_cls()(precision.storage, precision.compute, False),
                                           _LAYERWISE_CASTING_HOOK)
                else:
                    hook.storage_dtype, hook.compute_dtype = precision.storage, precision.compute
    else:
        _remove_hooks(module)
    setattr(module, _ATTR, precision)
    return module


def _remove_hooks(module: nn.Module) -> None:
    from diffusers.hooks.layerwise_casting import _LAYERWISE_CASTING_HOOK

    for m in module.modules():
        reg = getattr(m, "_diffusers_hook", None)
        if reg is not None and reg.get_hook(_LAYERWISE_CASTING_HOOK) is not None:
            reg.remove_hook(_LAYERWISE_CASTING_HOOK, recurse=False)


def compute_dtype(module: nn.Module) -> torch.dtype:
    """The activation dtype of ``module``: the one :func:`apply_precision` set, else its first floating parameter's."""
    p = getattr(module, _ATTR, None)
    if p is not None:
        return p.compute
    for t in module.parameters():
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def storage_dtypes(module: nn.Module) -> dict[str, torch.dtype]:
    """``{state-dict key: dtype}`` as :func:`apply_precision` left them (what a loader should read each tensor into)."""
    return {k: v.dtype for k, v in module.state_dict().items()}
