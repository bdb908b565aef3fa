"""LoRA adapters on LGM's cross-view attention: injection (peft), ``.safetensors`` I/O, apply / merge / remove.

Targets
    Exactly the ``nn.Linear`` layers of every ``MVAttention`` module: ``unet.<block>.attns.<k>.attn.qkv``
    (``C -> 3C``, no bias) and ``unet.<block>.attns.<k>.attn.proj`` (``C -> C``, with bias). They are the only
    Linear layers of LGM (32 in ``big``/``default``/``small``, 12 in ``tiny``, 10 in ``micro``), but the selection is
    done by full module name (:data:`TARGET_PATTERN`), so nothing else can ever be adapted.

Adapter file (``models/lgm_loras/<name>.safetensors``)
    Tensors, float32, peft's ``get_peft_model_state_dict`` naming (no adapter name):

    * ``<target>.lora_A.weight`` ``[r, in_features]``
    * ``<target>.lora_B.weight`` ``[out_features, r]``

    The adapted weight is ``W' = W + strength · (alpha / r) · B @ A`` (peft's ``lora_alpha / r`` scaling; no rsLoRA,
    no bias adaptation). String metadata (safetensors header ``__metadata__``):

    ==================  =====================================================================================
    key                 value
    ==================  =====================================================================================
    ``format``          ``mvboost-lgm-lora``
    ``format_version``  ``1``
    ``rank``            LoRA rank ``r`` (int as text)
    ``alpha``           ``lora_alpha`` (float as text)
    ``dropout``         training dropout (float as text; unused at inference)
    ``target_modules``  JSON list of the adapted module names
    ``base_config``     name of the base LGM config (``big``, ``default``, ``small``, ``tiny``, ``micro``, ...)
    ``base_architecture``  JSON of the architecture fields (``down_channels``, ``down_attention``,
                        ``mid_attention``, ``up_channels``, ``up_attention``, ``input_size``, ``splat_size``)
    ``base_checksum``   ``sha256:<hex>`` of the base weights (see :func:`base_weights_checksum`)
    ``training``        optional JSON of training settings (steps, lr, dataset, ...)
    ==================  =====================================================================================

Applying (:func:`apply_lora`)
    * ``strength == 0`` leaves the model untouched (outputs equal the base model bit for bit).
    * ``merge=True`` (default, fastest): ``W`` is replaced by ``W'`` computed in float32 and cast back to the
      weight's dtype; the original weights are kept (on CPU) so :func:`remove_lora` restores them bit for bit.
    * ``merge=False``: peft LoRA layers are injected (the forward computes ``base(x) + scale · B(A(x))``); used to
      check the merge and for training. :func:`remove_lora` swaps the original Linear layers back.
    * An adapter trained on another architecture is refused with :class:`LoRACompatibilityError`. A different base
      checksum (same architecture, other weights, or the same weights cast to another dtype) only logs a warning,
      unless ``checksum="error"``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

__all__ = [
    "TARGET_PATTERN",
    "FORMAT",
    "LoRAError",
    "LoRACompatibilityError",
    "AdapterInfo",
    "lora_target_names",
    "inject_lora",
    "lora_parameters",
    "adapter_state_dict",
    "base_weights_checksum",
    "model_config_info",
    "save_adapter",
    "load_adapter",
    "check_adapter_compatible",
    "apply_lora",
    "remove_lora",
    "unmerge_lora",
    "lora_applied",
]

FORMAT = "mvboost-lgm-lora"
FORMAT_VERSION = "1"
#: Full module names of the LoRA targets: the qkv / proj Linear of every MVAttention.
TARGET_PATTERN = re.compile(r"^unet\.(down_blocks\.\d+|mid_block|up_blocks\.\d+)\.attns\.\d+\.attn\.(qkv|proj)$")
_ARCH_FIELDS = ("input_size", "down_channels", "down_attention", "mid_attention", "up_channels", "up_attention",
                "splat_size")
_STATE_ATTR = "_mvboost_lora_state"


class LoRAError(ValueError):
    """A LoRA adapter file is malformed or cannot be used."""


class LoRACompatibilityError(LoRAError):
    """The adapter was trained on a different base LGM architecture."""


@dataclass
class AdapterInfo:
    """Metadata of an adapter file (see the module docstring)."""

    rank: int
    alpha: float
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=list)
    base_config: str | None = None
    base_architecture: dict | None = None
    base_checksum: str | None = None
    training: dict | None = None
    path: str | None = None

    @property
    def scaling(self) -> float:
        """``alpha / rank``: the factor of ``B @ A`` at strength 1."""
        return self.alpha / self.rank

    def to_metadata(self) -> dict[str, str]:
        md = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "rank": str(int(self.rank)),
            "alpha": repr(float(self.alpha)),
            "dropout": repr(float(self.dropout)),
            "target_modules": json.dumps(list(self.target_modules)),
        }
        if self.base_config is not None:
            md["base_config"] = str(self.base_config)
        if self.base_architecture is not None:
            md["base_architecture"] = json.dumps(self.base_architecture, sort_keys=True)
        if self.base_checksum is not None:
            md["base_checksum"] = self.base_checksum
        if self.training is not None:
            md["training"] = json.dumps(self.training, sort_keys=True, default=str)
        return md

    @classmethod
    def from_metadata(cls, md: dict[str, str] | None, path: str | None = None) -> "AdapterInfo":
        where = f" in {path}" if path else ""
        if not md or md.get("format") != FORMAT:
            raise LoRAError(
                f"Not an MVBoost LGM LoRA adapter{where}: the safetensors metadata lacks format={FORMAT!r} "
                f"(found {None if not md else md.get('format')!r}). Train adapters with `mvboost train-lora`, "
                "which writes the metadata (rank, alpha, target modules, base config, base checksum)."
            )
        if md.get("format_version") != FORMAT_VERSION:
            raise LoRAError(f"Unsupported adapter format_version {md.get('format_version')!r}{where}; "
                            f"this version reads {FORMAT_VERSION!r}. Update comfyui-mvboost.")
        try:
            return cls(
                rank=int(md["rank"]),
                alpha=float(md["alpha"]),
                dropout=float(md.get("dropout", "0")),
                target_modules=list(json.loads(md["target_modules"])),
                base_config=md.get("base_config"),
                base_architecture=json.loads(md["base_architecture"]) if "base_architecture" in md else None,
                base_checksum=md.get("base_checksum"),
                training=json.loads(md["training"]) if "training" in md else None,
                path=path,
            )
        except (KeyError, ValueError) as e:
            raise LoRAError(f"Corrupt adapter metadata{where}: {e!r}") from e


# --------------------------------------------------------------------------------------------- model helpers
def _unwrap(model: nn.Module) -> nn.Module:
    """Strip DDP / accelerate / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            model = inner
        else:
            return model


class _NoPeftLayer:  # stands for "no peft layer can exist": peft was never imported in this process
    pass


def _lora_layer_cls():
    """peft's ``LoraLayer`` if peft is already imported, else a class nothing is an instance of (so merged
    application, removal and checksums never pay peft's multi-second import)."""
    import sys

    if "peft" not in sys.modules:
        return _NoPeftLayer
    from peft.tuners.lora import LoraLayer

    return LoraLayer


def lora_target_names(model: nn.Module) -> list[str]:
    """Names of the LoRA target modules (qkv/proj of every MVAttention), in ``named_modules`` order.

    Works before and after peft injection (an injected target is a peft ``LoraLayer`` at the same name).
    """
    model = _unwrap(model)
    LoraLayer = _lora_layer_cls()
    out = [n for n, m in model.named_modules()
           if TARGET_PATTERN.match(n) and isinstance(m, (nn.Linear, LoraLayer))]
    if not out:
        raise LoRAError(
            f"{type(model).__name__} has no LGM cross-view attention Linear layers "
            "(expected modules named unet.<block>.attns.<k>.attn.qkv / .proj); pass an LGM network."
        )
    return out


def model_config_info(model: nn.Module) -> tuple[str | None, dict | None]:
    """``(config name, architecture dict)`` of an LGM model (``model.config`` or ``model.opt``), or ``(None, None)``."""
    model = _unwrap(model)
    cfg = getattr(model, "config", None) or getattr(model, "opt", None)
    if cfg is None:
        return None, None
    get = (lambda k: cfg.get(k)) if isinstance(cfg, dict) else (lambda k: getattr(cfg, k, None))
    arch = {}
    for k in _ARCH_FIELDS:
        v = get(k)
        if v is None:
            continue
        arch[k] = list(v) if isinstance(v, (tuple, list)) else v
    if "up_attention" in arch and "up_channels" in arch:  # only the used entries (reference tiny has a spare one)
        arch["up_attention"] = arch["up_attention"][: len(arch["up_channels"])]
    return get("name"), (arch or None)


def _base_named_tensors(model: nn.Module):
    """``(name, tensor)`` of the base weights, with peft's ``.base_layer`` removed and LoRA tensors skipped.

    Weights merged by :func:`apply_lora` are reported with their saved originals.
    """
    model = _unwrap(model)
    state = getattr(model, _STATE_ATTR, None)
    originals = state["originals"] if state and state.get("merged") else {}
    for name, t in model.state_dict().items():
        if ".lora_" in name or "lpips" in name:
            continue
        name = name.replace(".base_layer.", ".")
        mod = name.rsplit(".", 1)[0]
        if mod in originals and name.endswith(".weight"):
            t = originals[mod]
        yield name, t


def base_weights_checksum(model: nn.Module) -> str:
    """``sha256:<hex>`` over the base weights: for each state-dict key in sorted order, the key, the shape and the
    float32 little-endian bytes. Independent of the storage dtype as long as the values are the same (an fp16
    checkpoint loaded in fp16 or fp32 gives the same checksum; bf16 rounding changes it)."""
    h = hashlib.sha256()
    for name, t in sorted(_base_named_tensors(model), key=lambda kv: kv[0]):
        h.update(name.encode())
        h.update(json.dumps(list(t.shape)).encode())
        h.update(memoryview(t.detach().to("cpu", torch.float32).reshape(-1).contiguous().numpy()).cast("B"))
    return "sha256:" + h.hexdigest()


# --------------------------------------------------------------------------------------------- injection
def inject_lora(model: nn.Module, rank: int = 32, alpha: float | None = None, dropout: float = 0.0,
                adapter_name: str = "default", freeze_base: bool = True) -> nn.Module:
    """Inject trainable peft LoRA layers into exactly the MVAttention qkv/proj Linear layers (in place).

    Args:
        rank: LoRA rank ``r`` (default 32, as MVBoost).
        alpha: ``lora_alpha``; default ``rank`` (scaling 1).
        dropout: dropout on the LoRA branch input during training.
        freeze_base: set ``requires_grad=False`` on every non-LoRA parameter.

    ``lora_A`` gets peft's Kaiming-uniform init, ``lora_B`` zeros, so the injected model starts equal to the base.
    Returns the same (mutated) model.
    """
    from peft import LoraConfig, inject_adapter_in_model

    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
    inner = _unwrap(model)
    if getattr(inner, _STATE_ATTR, None) is not None:
        raise LoRAError("A LoRA is already applied to this model; call remove_lora(model) first.")
    targets = lora_target_names(inner)
    cfg = LoraConfig(r=int(rank), lora_alpha=float(rank if alpha is None else alpha), lora_dropout=float(dropout),
                     target_modules=targets, bias="none")
    inject_adapter_in_model(cfg, inner, adapter_name=adapter_name)
    injected = [n for n, m in inner.named_modules() if isinstance(m, _lora_layer_cls())]
    if sorted(injected) != sorted(targets):  # peft matched something else: never silently adapt other layers
        raise LoRAError(f"peft injected {sorted(set(injected) ^ set(targets))} unexpectedly")
    if freeze_base:
        for n, p in inner.named_parameters():
            p.requires_grad_(".lora_" in n)
    return model


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The LoRA parameters (``lora_A`` / ``lora_B``) of an injected model."""
    return [p for n, p in _unwrap(model).named_parameters() if ".lora_" in n]


def adapter_state_dict(model: nn.Module, adapter_name: str = "default") -> dict[str, Tensor]:
    """``{<target>.lora_A.weight: [r,in], <target>.lora_B.weight: [out,r]}`` (detached CPU float32 copies)."""
    LoraLayer = _lora_layer_cls()
    out: dict[str, Tensor] = {}
    for name, m in _unwrap(model).named_modules():
        if isinstance(m, LoraLayer) and adapter_name in m.lora_A:
            out[f"{name}.lora_A.weight"] = m.lora_A[adapter_name].weight.detach().to("cpu", torch.float32).clone()
            out[f"{name}.lora_B.weight"] = m.lora_B[adapter_name].weight.detach().to("cpu", torch.float32).clone()
    if not out:
        raise LoRAError("The model has no injected LoRA layers; call inject_lora(model) first.")
    return out


def _lora_hparams(model: nn.Module, adapter_name: str = "default") -> tuple[int, float, float]:
    LoraLayer = _lora_layer_cls()
    for m in _unwrap(model).modules():
        if isinstance(m, LoraLayer) and adapter_name in m.lora_A:
            drop = m.lora_dropout[adapter_name]
            return int(m.r[adapter_name]), float(m.lora_alpha[adapter_name]), float(getattr(drop, "p", 0.0))
    raise LoRAError("The model has no injected LoRA layers; call inject_lora(model) first.")


# --------------------------------------------------------------------------------------------- file I/O
def _atomic_save_safetensors(tensors: dict[str, Tensor], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    from ..atomic import atomic_write

    atomic_write(path, writer=lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
                                                    metadata=metadata))


def save_adapter(model: nn.Module, path: str | os.PathLike, *, base_checksum: str | None = None,
                 training: dict | None = None, adapter_name: str = "default") -> AdapterInfo:
    """Write the injected LoRA of ``model`` to ``path`` (atomic temp file + rename) with full metadata.

    ``base_checksum`` defaults to :func:`base_weights_checksum` of the model (pass a precomputed one to save
    time on big models). Returns the written :class:`AdapterInfo`.
    """
    inner = _unwrap(model)
    sd = adapter_state_dict(inner, adapter_name)
    rank, alpha, dropout = _lora_hparams(inner, adapter_name)
    name, arch = model_config_info(inner)
    info = AdapterInfo(
        rank=rank, alpha=alpha, dropout=dropout,
        target_modules=sorted({k.rsplit(".lora_", 1)[0] for k in sd}),
        base_config=name, base_architecture=arch,
        base_checksum=base_checksum or base_weights_checksum(inner),
        training=training, path=str(path),
    )
    _atomic_save_safetensors(sd, Path(path), info.to_metadata())
    return info


def load_adapter(path: str | os.PathLike) -> tuple[dict[str, Tensor], AdapterInfo]:
    """Read and validate an adapter file: ``(state dict of float32 tensors, AdapterInfo)``."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA adapter not found: {path}")
    if path.suffix != ".safetensors":
        raise LoRAError(f"LoRA adapters must be .safetensors files, got {path.name}")
    try:
        with safe_open(str(path), framework="pt") as f:
            md = f.metadata()
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - any parse failure is a corrupt file
        raise LoRAError(f"Cannot read LoRA adapter {path}: {e}") from e
    info = AdapterInfo.from_metadata(md, str(path))
    problems = []
    for t in info.target_modules:
        if not TARGET_PATTERN.match(t):
            problems.append(f"target {t!r} is not an MVAttention qkv/proj layer")
        for part, dim in (("lora_A", 0), ("lora_B", 1)):
            k = f"{t}.{part}.weight"
            if k not in sd:
                problems.append(f"missing tensor {k}")
            elif sd[k].ndim != 2 or sd[k].shape[dim] != info.rank:
                problems.append(f"{k} has shape {list(sd[k].shape)}, expected rank {info.rank} on dim {dim}")
    extra = set(sd) - {f"{t}.{p}.weight" for t in info.target_modules for p in ("lora_A", "lora_B")}
    if extra:
        problems.append(f"unexpected tensors {sorted(extra)[:5]}")
    if problems:
        raise LoRAError(f"Corrupt LoRA adapter {path}: " + "; ".join(problems[:8]))
    return {k: v.float() for k, v in sd.items()}, info


def check_adapter_compatible(model: nn.Module, sd: dict[str, Tensor], info: AdapterInfo,
                             checksum: str = "warn") -> None:
    """Raise :class:`LoRACompatibilityError` if the adapter does not fit ``model``'s architecture.

    ``checksum``: ``"warn"`` (default) logs a warning if the base weights differ from the training base,
    ``"error"`` raises, ``"ignore"`` skips the (relatively costly) checksum.
    """
    inner = _unwrap(model)
    name, arch = model_config_info(inner)
    src = info.path or "the adapter"
    if info.base_architecture is not None and arch is not None:
        diff = {k: (info.base_architecture.get(k), arch.get(k)) for k in set(info.base_architecture) | set(arch)
                if info.base_architecture.get(k) != arch.get(k)}
        if diff:
            detail = "; ".join(f"{k}: adapter {a} vs model {b}" for k, (a, b) in sorted(diff.items()))
            raise LoRACompatibilityError(
                f"LoRA {src} was trained on LGM config {info.base_config!r} but the loaded base model is "
                f"{name!r} ({detail}). Load the base checkpoint the adapter was trained on, or pick an adapter "
                f"trained for {name!r}."
            )
    mods = dict(inner.named_modules())
    missing = [t for t in info.target_modules if t not in mods]
    if missing:
        raise LoRACompatibilityError(
            f"LoRA {src} (base config {info.base_config!r}) adapts {len(missing)} layers the loaded model "
            f"({name!r}) does not have, e.g. {missing[:3]}. It was trained on another base config."
        )
    for t in info.target_modules:
        lin = mods[t]
        lin = getattr(lin, "base_layer", lin)
        a, b = sd[f"{t}.lora_A.weight"], sd[f"{t}.lora_B.weight"]
        if a.shape[1] != lin.in_features or b.shape[0] != lin.out_features:
            raise LoRACompatibilityError(
                f"LoRA {src} layer {t} is {a.shape[1]}->{b.shape[0]} but the model's is "
                f"{lin.in_features}->{lin.out_features}: the adapter was trained on another base config "
                f"({info.base_config!r}, model {name!r})."
            )
    if checksum != "ignore" and info.base_checksum:
        have = base_weights_checksum(inner)
        if have != info.base_checksum:
            msg = (f"LoRA {src} was trained on base weights {info.base_checksum[:19]}... but the loaded base "
                   f"weights are {have[:19]}... (same architecture {name!r}; different checkpoint or dtype). "
                   "The result may be degraded.")
            if checksum == "error":
                raise LoRACompatibilityError(msg)
            log.warning(msg)
            warnings.warn(msg, stacklevel=3)


def check_adapter_file(path: str | os.PathLike, lgm_checkpoint: str | os.PathLike) -> AdapterInfo:
    """Check an adapter file against an LGM checkpoint *file* without building either network: the adapter's
    metadata and tensors (:func:`load_adapter`) and the checkpoint's safetensors header (keys and shapes) only.
    Lets a command refuse an incompatible ``--lora`` before hours of Era3D sampling. Raises
    :class:`LoRAError` / :class:`LoRACompatibilityError` (or ``FileNotFoundError``); returns the adapter's info.
    The base-weights checksum is not compared here (that needs the loaded weights; :func:`apply_lora` warns)."""
    from types import SimpleNamespace

    from ..lgm.checkpoint import _read_any, detect_config

    sd, info = load_adapter(path)
    shapes, kind = _read_any(Path(lgm_checkpoint))
    if kind != "safetensors":
        return info  # pickled checkpoints are only checked after loading
    cfg = detect_config(shapes)
    name, arch = model_config_info(SimpleNamespace(config=cfg))
    src = info.path or "the adapter"
    if info.base_architecture is not None and arch is not None and info.base_architecture != arch:
        raise LoRACompatibilityError(
            f"LoRA {src} was trained on LGM config {info.base_config!r} but {lgm_checkpoint} is {name!r}. Use the "
            "base checkpoint the adapter was trained on, or an adapter trained for this one.")
    for t in info.target_modules:
        w = shapes.get(f"{t}.weight")
        a, b = sd[f"{t}.lora_A.weight"], sd[f"{t}.lora_B.weight"]
        if w is None or tuple(w) != (b.shape[0], a.shape[1]):
            raise LoRACompatibilityError(
                f"LoRA {src} adapts layer {t} ({a.shape[1]}->{b.shape[0]}) which {lgm_checkpoint} "
                f"{'does not have' if w is None else f'has as {w[1]}->{w[0]}'}: it was trained on another base "
                f"config ({info.base_config!r}, checkpoint {name!r}).")
    return info


# --------------------------------------------------------------------------------------------- apply / remove
def lora_applied(model: nn.Module) -> dict | None:
    """``{"path", "strength", "merged", "info"}`` of the LoRA applied by :func:`apply_lora`, or None."""
    st = getattr(_unwrap(model), _STATE_ATTR, None)
    return None if st is None else {k: st[k] for k in ("path", "strength", "merged", "info")}


def apply_lora(model: nn.Module, path: str | os.PathLike, strength: float = 1.0, *, merge: bool = True,
               checksum: str = "warn") -> nn.Module:
    """Apply the adapter at ``path`` to an LGM ``model`` in place and return the model.

    Args:
        strength: multiplies ``alpha / r``; 0 leaves the weights untouched (bit-exact base outputs), 1 is the
            trained adapter, other values scale it (negative values are allowed).
        merge: add ``strength·(alpha/r)·B@A`` into the Linear weights (no runtime cost) and keep the originals for
            :func:`remove_lora`; ``False`` injects peft LoRA layers instead (exact unmerged forward).
        checksum: base-weights check, see :func:`check_adapter_compatible`.

    A LoRA applied earlier is removed first (base weights restored bit for bit) once the new one is accepted. Raises
    :class:`LoRACompatibilityError` for an adapter trained on another base config, :class:`LoRAError` for a
    malformed file, ``FileNotFoundError`` if ``path`` does not exist.
    """
    strength = float(strength)
    if not math.isfinite(strength):
        raise ValueError(f"LoRA strength must be finite, got {strength}")
    inner = _unwrap(model)
    sd, info = load_adapter(path)
    check_adapter_compatible(inner, sd, info, checksum=checksum)  # a refused adapter leaves the model as it was
    if getattr(inner, _STATE_ATTR, None) is not None:
        remove_lora(inner)
    state: dict[str, Any] = {"path": str(path), "strength": strength, "merged": merge, "info": info,
                             "originals": {}}
    if strength == 0.0:
        state["merged"] = True  # nothing to merge, nothing to restore
        setattr(inner, _STATE_ATTR, state)
        return model
    mods = dict(inner.named_modules())
    scale = strength * info.scaling
    if merge:
        with torch.no_grad():
            for t in info.target_modules:
                lin = mods[t]
                w = lin.weight
                state["originals"][t] = w.detach().to("cpu", copy=True)
                a = sd[f"{t}.lora_A.weight"].to(w.device)
                b = sd[f"{t}.lora_B.weight"].to(w.device)
                w.copy_((w.float() + scale * (b @ a)).to(w.dtype))
    else:
        from peft import LoraConfig, inject_adapter_in_model

        cfg = LoraConfig(r=info.rank, lora_alpha=info.alpha, lora_dropout=0.0,
                         target_modules=list(info.target_modules), bias="none")
        inject_adapter_in_model(cfg, inner, adapter_name="default")
        mods = dict(inner.named_modules())
        with torch.no_grad():
            for t in info.target_modules:
                layer = mods[t]
                base = layer.base_layer
                for part in ("lora_A", "lora_B"):
                    p = getattr(layer, part)["default"].weight
                    p.copy_(sd[f"{t}.{part}.weight"].to(p))
                    p.data = p.data.to(device=base.weight.device, dtype=base.weight.dtype)
                    p.requires_grad_(False)
                layer.scaling["default"] = scale
    setattr(inner, _STATE_ATTR, state)
    return model


def remove_lora(model: nn.Module) -> nn.Module:
    """Undo :func:`apply_lora` (or :func:`inject_lora`): restore the exact base weights / Linear modules.

    Merged weights are restored from the saved originals (bit for bit); injected peft layers are replaced by their
    untouched ``base_layer``. A model without LoRA is returned unchanged.
    """
    inner = _unwrap(model)
    state = getattr(inner, _STATE_ATTR, None)
    if state is not None and state["merged"]:
        mods = dict(inner.named_modules())
        with torch.no_grad():
            for t, w0 in state["originals"].items():
                mods[t].weight.copy_(w0.to(mods[t].weight.device))
    LoraLayer = _lora_layer_cls()
    for name, m in list(inner.named_modules()):
        if isinstance(m, LoraLayer) and TARGET_PATTERN.match(name):
            parent_name, child = name.rsplit(".", 1)
            setattr(inner.get_submodule(parent_name), child, m.base_layer)
    if hasattr(inner, "peft_config"):
        try:
            delattr(inner, "peft_config")
        except AttributeError:
            pass
    if state is not None:
        delattr(inner, _STATE_ATTR)
    return model


#: ``unmerge_lora`` is the name the loader uses for going back to the base weights.
unmerge_lora = remove_lora
