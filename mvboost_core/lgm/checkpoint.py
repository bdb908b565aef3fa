"""Loading (and writing) LGM checkpoints: strict, safetensors-first, config detected from keys and shapes.

Public checkpoints (Hugging Face ``ashawkey/LGM``): ``model_fp16_fixrot.safetensors`` (big config, 376 fp16
tensors, no metadata), ``model_fixrot.safetensors`` (the same in fp32) and ``model_fp16.safetensors`` (the
pre-"fixrot" big model, trained with a rotation normalisation bug; it loads, but this port always applies the
fixed per-Gaussian normalisation).

Config detection (:func:`detect_config`) reads only the safetensors header: the number of down/up blocks and
their widths come from ``unet.{down,up}_blocks.{i}.nets.0.conv1.weight``, attention flags from the presence of
``attns`` keys. A structure equal to a known config (big, default/small, tiny, micro) gets that config,
including its ``input_size`` (256 for every public config, 64 for the test-only ``micro``); any other structure
gets a custom config with ``input_size`` 256. Pass ``config=`` to override.
"""
from __future__ import annotations

import json
import logging
import os
import re
import struct
from pathlib import Path

import torch

from .. import precision
from .config import CONFIGS, LGMConfig, get_config
from .network import IN_CHANNELS, LGM, OUT_CHANNELS

log = logging.getLogger("mvboost.lgm")

__all__ = [
    "LGMCheckpointError",
    "load_lgm",
    "read_safetensors_header",
    "read_state_dict",
    "detect_config",
    "save_lgm_checkpoint",
    "init_lgm_weights_",
]

_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
_IGNORED_PREFIXES = ("lpips_loss.",)  # training-only submodule; the reference never saves it
_PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl")


class LGMCheckpointError(ValueError):
    """A file that cannot be loaded as an LGM checkpoint; the message names the problem and the fix."""


# ---------------------------------------------------------------------------------------------- file reading
def read_safetensors_header(path: str | os.PathLike) -> tuple[dict, int]:
    """Parse and validate a safetensors header without reading tensor data.

    Returns ``({name: {"dtype", "shape", "data_offsets"}}, data_start)``; raises :class:`LGMCheckpointError`
    for non-safetensors files and for truncated files (tensor data extending past the end of the file).
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise LGMCheckpointError(f"{path} is not a safetensors file: only {size} bytes long.")
        (n,) = struct.unpack("<Q", head)
        if head[:2] == b"PK" or head[:1] == b"\x80" or n > 100_000_000:
            raise LGMCheckpointError(
                f"{path} is not a safetensors file (it looks like a pickled PyTorch checkpoint). "
                "Use the .safetensors checkpoint from huggingface.co/ashawkey/LGM."
            )
        if 8 + n > size:
            raise LGMCheckpointError(
                f"{path} is truncated: its safetensors header says {n} header bytes but the file has only {size} "
                "bytes. The download was probably interrupted; download the file again."
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LGMCheckpointError(f"{path} is not a valid safetensors file (unreadable header: {e}).") from None
    header.pop("__metadata__", None)
    data_start = 8 + n
    need = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
    if data_start + need > size:
        raise LGMCheckpointError(
            f"{path} is truncated: its tensors need {data_start + need:,} bytes but the file has {size:,} bytes. "
            "The download was probably interrupted; download the file again."
        )
    for k, v in header.items():
        if v.get("dtype") not in _ST_DTYPES:
            raise LGMCheckpointError(f"{path}: tensor {k!r} has unsupported dtype {v.get('dtype')!r}.")
    return header, data_start


def read_state_dict(path, dtype=None, device=None, keys=None) -> dict[str, torch.Tensor]:
    """Read a safetensors file tensor by tensor with plain file reads (no mmap, so the file's pages never count
    towards this process's memory), converting each tensor to ``dtype`` (one dtype, or ``{key: dtype}``) and
    ``device`` as it is read.
    Only floating-point tensors are converted. When a CPU tensor is converted, its destination is allocated
    before the read buffer, which is freed right after the copy: freeing in reverse order of allocation leaves
    no holes in the C heap (glibc would otherwise keep up to ~0.2 GiB of freed read buffers resident)."""
    header, start = read_safetensors_header(path)
    on_cpu = device is None or torch.device(device).type == "cpu"
    out: dict[str, torch.Tensor] = {}
    per_key = dtype if isinstance(dtype, dict) else None
    with open(path, "rb", buffering=0) as f:
        for k in sorted(header) if keys is None else keys:
            info = header[k]
            if per_key is not None:
                dtype = per_key.get(k)
            src_dtype = _ST_DTYPES[info["dtype"]]
            dst = None
            if src_dtype.is_floating_point and dtype not in (None, src_dtype) and on_cpu:
                dst = torch.empty(info["shape"], dtype=dtype)
            t = torch.empty(info["shape"], dtype=src_dtype)
            a, b = info["data_offsets"]
            if t.numel() * t.element_size() != b - a:
                raise LGMCheckpointError(f"{path}: tensor {k!r} has {b - a} bytes for shape {info['shape']}.")
            if b > a:
                f.seek(start + a)
                view = memoryview(t.view(torch.uint8).reshape(-1).numpy())
                got = 0
                while got < b - a:
                    r = f.readinto(view[got:])
                    if not r:
                        raise LGMCheckpointError(f"{path} is truncated while reading {k!r}; download it again.")
                    got += r
                del view  # holds t's buffer
            if dst is not None:
                t = dst.copy_(t)
            elif t.is_floating_point() and (dtype is not None or device is not None):
                t = t.to(device=device, dtype=dtype or t.dtype)
            elif device is not None:
                t = t.to(device)
            out[k] = t
    return out


def _read_any(path: Path) -> tuple[dict, str]:
    """Keys -> shapes of a checkpoint, and its kind ('safetensors' or 'pickle')."""
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        return {}, "pickle"
    header, _ = read_safetensors_header(path)
    return {k: tuple(v["shape"]) for k, v in header.items()}, "safetensors"


def _load_pickle_weights_only(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means we refuse the file
        raise LGMCheckpointError(
            f"{path} is a pickled checkpoint that cannot be loaded safely (weights_only=True failed: "
            f"{type(e).__name__}). Pickles can run arbitrary code; use a .safetensors checkpoint instead."
        ) from None
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise LGMCheckpointError(f"{path} does not contain a flat state dict of tensors.")
    return obj


# -------------------------------------------------------------------------------------------- detection
def _describe_foreign(shapes: dict) -> str:
    keys = list(shapes)
    hint = ""
    joined = " ".join(keys[:2000])
    if "model.diffusion_model." in joined or "first_stage_model." in joined:
        hint = " It looks like a Stable Diffusion (original/LDM format) checkpoint."
    elif "time_embedding" in joined or re.search(r"down_blocks\.\d+\.attentions\.", joined):
        hint = " It looks like a diffusers UNet (e.g. Stable Diffusion or Era3D), not LGM."
    elif "lora_" in joined:
        hint = " It looks like a LoRA adapter; select it in the LoRA input, not as the base checkpoint."
    elif "encoder.down" in joined or "decoder.up" in joined:
        hint = " It looks like a VAE."
    sample = ", ".join(repr(k) for k in keys[:5])
    return f"found {len(keys)} tensors such as {sample}.{hint}"


def detect_config(shapes: dict) -> LGMConfig:
    """Infer the :class:`LGMConfig` from checkpoint keys -> shapes (see the module docstring)."""
    w = shapes.get("unet.conv_in.weight")
    if w is None or "conv.weight" not in shapes:
        raise LGMCheckpointError(
            "Not an LGM checkpoint: expected keys 'unet.conv_in.weight' and 'conv.weight'; " + _describe_foreign(shapes)
        )
    if len(w) != 4 or w[1] != IN_CHANNELS or tuple(shapes["conv.weight"]) != (OUT_CHANNELS, OUT_CHANNELS, 1, 1):
        raise LGMCheckpointError(
            f"Not an LGM checkpoint: unet.conv_in.weight has shape {list(w)} (LGM: [C,9,3,3]) and conv.weight "
            f"{list(shapes['conv.weight'])} (LGM: [14,14,1,1])."
        )

    def blocks(kind):
        idx = sorted({int(m.group(1)) for k in shapes if (m := re.match(rf"unet\.{kind}\.(\d+)\.", k))})
        chans, attn = [], []
        for i in idx:
            s = shapes.get(f"unet.{kind}.{i}.nets.0.conv1.weight")
            if s is None:
                raise LGMCheckpointError(f"Incomplete LGM checkpoint: no 'unet.{kind}.{i}.nets.0.conv1.weight'.")
            chans.append(int(s[0]))
            attn.append(any(k.startswith(f"unet.{kind}.{i}.attns.") for k in shapes))
        return tuple(chans), tuple(attn)

    down, down_attn = blocks("down_blocks")
    up, up_attn = blocks("up_blocks")
    mid_attn = any(k.startswith("unet.mid_block.attns.") for k in shapes)
    arch = (down, down_attn, mid_attn, up, up_attn)
    for name in ("big", "default", "tiny", "micro"):
        if CONFIGS[name].architecture() == arch:
            return CONFIGS[name]
    try:
        splat = 256 * 2 ** (len(up) - 1) // 2 ** (len(down) - 1)
        cfg = LGMConfig(input_size=256, down_channels=down, down_attention=down_attn, mid_attention=mid_attn,
                        up_channels=up, up_attention=up_attn, splat_size=splat, name="custom")
    except ValueError as e:
        raise LGMCheckpointError(f"Checkpoint has an LGM-like structure that is not a valid LGM network: {e}") from None
    log.warning("LGM checkpoint has a non-standard architecture %s; assuming input_size 256", arch)
    return cfg


# ---------------------------------------------------------------------------------------------- loading
def load_lgm(path, config: "str | LGMConfig | None" = None, device=None, dtype="auto",
             cpu_tactics: bool | None = None) -> LGM:
    """Load an LGM checkpoint strictly and return the model in eval mode on ``device``.

    Args:
        path: a ``.safetensors`` file (public ``model_fp16_fixrot.safetensors`` or our own). Pickled files
            (``.pt``/``.pth``/``.ckpt``/``.bin``) are refused unless they load with ``torch.load(weights_only=True)``.
        config: config name / :class:`LGMConfig`; ``None`` detects it from the keys and shapes.
        device: target device (default CPU). Weights are read tensor by tensor and moved there directly.
        dtype: ``"auto"``/``None``, ``"fp32"``/``"fp16"``/``"bf16"``, a ``torch.dtype`` or a
            :class:`~mvboost_core.precision.Precision`, resolved by :func:`mvboost_core.precision.choose` into the
            weights' storage and compute dtypes (``auto`` on CPU: the public fp16 checkpoint stays fp16 and computes
            in fp32 -- exactly what the reference computes after loading it into its fp32 model -- at half the
            memory; see the table there). Each tensor is read straight into its storage dtype.
        cpu_tactics: switch the CPU inference tactics on (:func:`mvboost_core.tactics.enable_cpu_inference_tactics`;
            default :func:`mvboost_core.precision.cpu_tactics_default`: on for CPU).

    Raises:
        FileNotFoundError, LGMCheckpointError: with every missing and unexpected key listed and every shape
            mismatch named. ValueError for an unknown dtype.
    """
    path = Path(path)
    precision.parse_dtype(dtype)  # a bad dtype fails before the file is touched
    if not path.is_file():
        raise FileNotFoundError(f"LGM checkpoint not found: {path}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    shapes, kind = _read_any(path)
    state = None
    ckpt_dtype = precision.checkpoint_dtype_of(path) if kind == "safetensors" else None
    if kind == "pickle":
        state = _load_pickle_weights_only(path)
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        floats = {v.dtype for v in state.values() if v.is_floating_point()}
        ckpt_dtype = floats.pop() if len(floats) == 1 else None
    ignored = [k for k in shapes if k.startswith(_IGNORED_PREFIXES)]
    for k in ignored:
        shapes.pop(k)
    if config is None:
        cfg = detect_config(shapes)
    else:
        cfg = get_config(config)
        if "unet.conv_in.weight" not in shapes:
            raise LGMCheckpointError(f"{path} is not an LGM checkpoint: " + _describe_foreign(shapes))

    prec = precision.choose("lgm", device, dtype, ckpt_dtype)
    with torch.device("meta"):
        model = LGM(cfg)
    precision.apply_precision(model, prec)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = sorted(k for k in set(expected) & set(shapes) if tuple(shapes[k]) != expected[k])
    if missing or unexpected or wrong:
        lines = [f"{path.name} does not match the LGM '{cfg.name}' architecture:"]
        if missing:
            lines.append(f"  {len(missing)} missing keys: " + ", ".join(missing))
        if unexpected:
            lines.append(f"  {len(unexpected)} unexpected keys: " + ", ".join(unexpected))
        for k in wrong:
            lines.append(f"  wrong shape for {k}: checkpoint {list(shapes[k])}, model {list(expected[k])}")
        raise LGMCheckpointError("\n".join(lines))

    want = precision.storage_dtypes(model)
    if state is None:
        state = read_state_dict(path, dtype=want, device=device, keys=sorted(expected))
    else:
        state = {k: state[k].to(device=device, dtype=want[k]) for k in expected}
    model.load_state_dict(state, strict=True, assign=True)
    del state
    model.eval().requires_grad_(False)
    if precision.cpu_tactics_default(device) if cpu_tactics is None else cpu_tactics:
        from ..tactics import enable_cpu_inference_tactics

        enable_cpu_inference_tactics(model)
    log.info("Loaded LGM '%s' from %s (%s, %s)", cfg.name, path.name, device, prec)
    return model


# ---------------------------------------------------------------------------------------------- writing
def save_lgm_checkpoint(model_or_state, path, dtype: torch.dtype | None = torch.float16) -> Path:
    """Write a checkpoint in the public on-disk format (safetensors, reference key names, no metadata),
    atomically (temp file + rename). ``dtype=None`` keeps the tensors' dtype."""
    from safetensors.torch import save_file

    state = model_or_state.state_dict() if isinstance(model_or_state, torch.nn.Module) else dict(model_or_state)
    state = {k: (v.detach().to("cpu", dtype) if dtype is not None else v.detach().cpu()).contiguous()
             for k, v in state.items() if not k.startswith(_IGNORED_PREFIXES)}
    from ..atomic import atomic_write

    return atomic_write(Path(path), writer=lambda tmp: save_file(state, str(tmp)))


def init_lgm_weights_(model: LGM, round_to: torch.dtype | None = None) -> LGM:
    """Deterministic, well-scaled random weights (the fixtures' rule), in place, per key independent of order:
    generator seeded with ``crc32(key) & 0x7fffffff``; ``r = randn(shape)`` in float32; ``*.bias`` -> 0.02·r;
    1-D ``*.weight`` (GroupNorm) -> 1 + 0.1·r; other weights -> r / sqrt(fan_in). Reproduces
    ``weights_micro.safetensors`` bit for bit. Works on meta-device models (parameters are materialised on CPU
    in the model's dtype).

    ``round_to`` (e.g. ``torch.float16``, like the public checkpoint) rounds every value through that dtype before
    storing it in the model's dtype: an fp32 model gets exactly the values of an fp16 init converted to fp32,
    without a second copy of the weights. Each parameter is allocated before its float32 temporaries, which are
    freed in reverse order, so building a large model leaves no freed holes in the C heap (glibc keeps such
    holes, i.e. resident memory, for the life of the process)."""
    import zlib

    new = {}
    for k, p in model.state_dict().items():
        g = torch.Generator().manual_seed(zlib.crc32(k.encode("utf-8")) & 0x7FFFFFFF)
        dev = p.device if p.device.type != "meta" else torch.device("cpu")
        shape = tuple(p.shape)
        out = torch.empty(shape, dtype=p.dtype, device=dev)
        r = out if out.dtype == torch.float32 and dev.type == "cpu" else torch.empty(shape, dtype=torch.float32)
        torch.randn(shape, generator=g, dtype=torch.float32, out=r)
        if k.endswith(".bias"):
            r.mul_(0.02)
        elif p.ndim == 1:
            r.mul_(0.1).add_(1.0)
        else:
            fan_in = 1
            for s in p.shape[1:]:
                fan_in *= s
            r.mul_(1.0 / fan_in**0.5)
        if round_to is not None:
            r.copy_(r.to(round_to))
        if r is not out:
            out.copy_(r)
        new[k] = out
        del r
    model.load_state_dict(new, strict=True, assign=True)
    return model
