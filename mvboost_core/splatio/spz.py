"""Niantic ``.spz``, versions 2, 3 (gzip) and 4 (zstd container with extensions): read + write.

Written with numpy + gzip / ``zstandard`` from the format description (nianticlabs/spz README, ``load-spz.cc``,
``extensions/README.md``); Niantic publishes no PyPI package.

Common payload (per attribute, not per splat): positions (3 × 24-bit signed fixed point, ``fractionalBits`` = 12),
alphas (u8 = opacity·255), colours (u8 = f_dc·0.15·255 + 127.5), scales (u8 = (log s + 10)·16), rotations
(v2: x,y,z as u8 = q·127.5 + 127.5 with w ≥ 0; v3/v4: "smallest three": 2-bit index of the largest component +
3 × (sign bit + 9-bit magnitude·√2) in x,y,z,w order), spherical harmonics (none here: our colours are DC only).

* v2/v3: the whole file is one gzip stream; 16-byte header ``<IIIBBBB`` = magic ``NGSP``, version, numPoints,
  shDegree, fractionalBits, flags, reserved.
* v4: a 32-byte plaintext header (magic, version, numPoints, shDegree, fractionalBits, flags, numStreams,
  tocByteOffset, 12 reserved bytes), extension records ``[u32 type][u32 byteLength][payload]`` when
  ``flags & 0x2``, a table of contents (numStreams × [u64 compressed, u64 uncompressed]) and one zstd stream per
  non-empty attribute (positions, alphas, colours, scales, rotations[, sh]).

Coordinate frames. Niantic's README defines RUB as the internal frame, but its own ``ply_to_spz`` and every other
writer measured (splat-transform, gsply) store PLY data unconverted, and every reader measured (splat-transform,
Spark, SuperSplat, ComfyUI core's viewer) draws spz data exactly like ply data. So ``axes="auto"`` writes the 3DGS
y-down frame (RDF), like our .ply. Version 4 files also record the frame they hold in the
``SPZ_ADOBE_coordinate_system`` extension (type ``0xADBE0003``, payload u32: RUB = 4, RDF = 6, …) unless
``coordinate_system=False``; Niantic's loader (built with extensions) converts from it, the others ignore it.
:func:`load_spz` honours the extension when present (any of the 16 named frames) and otherwise uses ``axes``.

Quantisation (what :func:`load_spz` returns vs. the input; measured in tests/test_splatio.py):
  positions  ±2^-13 ≈ 1.2e-4 absolute (range ±2048);
  opacity    ±0.5/255 ≈ 0.002 absolute;
  colour     ±0.5·SH_C0/(0.15·255) ≈ 0.0037 absolute (rgb in [0,1] fits; the byte range is rgb 0.5 ± 0.94);
  scales     log step 1/16: relative error ≤ exp(1/32) - 1 ≈ 3.2% (4.5e-5 … 380, clamped outside);
  rotation   v3/v4: ≤ 0.23° (three 9-bit magnitudes); **v2: up to 11.15°** (median 0.52°; 924 of 19,600 LGM-like
             Gaussians over 2°) because w is rebuilt from three 8-bit components — Niantic's decoder agrees.

Which version to write: v2 is the only one every reader measured opens (mkkellogg GaussianSplats3D 0.4.7 and
spz-js 1.2.5 reject 3 and 4; ComfyUI core's Python reader and older Spark builds reject 4), so it is the default;
v3 / v4 trade that reach for 50× better rotations (docs/formats.md has the reader matrix).
"""
from __future__ import annotations

import gzip
import struct

import numpy as np

from ._common import (SH_C0, DEFAULT_PRUNE_OPACITY, atomic_write, existing_file, from_arrays, numpy_params, prune,
                      resolve_axes, to_u8)

__all__ = ["save_spz", "load_spz", "read_spz_header", "SPZ_VERSIONS", "DEFAULT_SPZ_VERSION", "COORDINATE_SYSTEMS"]

SPZ_MAGIC = 0x5053474E  # "NGSP" in file order
SPZ_VERSIONS = (2, 3, 4)
DEFAULT_SPZ_VERSION = 2
_COLOR_SCALE = 0.15  # spz's colorScale: byte = f_dc * (0.15*255) + 0.5*255
_FRACTIONAL_BITS = 12  # what Niantic's packer uses (~0.25 mm at metre scale)
_SQRT1_2 = 0.7071067811865476
_FLAG_EXTENSIONS = 0x2
_EXT_COORDINATE_SYSTEM = 0xADBE0003  # SPZ_ADOBE_coordinate_system
_ZSTD_LEVEL = 12  # Niantic's default
#: Niantic's CoordinateSystem enum (splat-types.h): value -> axis letters (x, y, z directions).
COORDINATE_SYSTEMS = {1: "LDB", 2: "RDB", 3: "LUB", 4: "RUB", 5: "LDF", 6: "RDF", 7: "LUF", 8: "RUF",
                      9: "LFD", 10: "RFD", 11: "LFU", 12: "RFU", 13: "LBD", 14: "RBD", 15: "LBU", 16: "RBU"}
_AXES_TO_CS = {"y_up": 4, "y_down": 6}
_LETTER = {"R": (1, 0, 0), "L": (-1, 0, 0), "U": (0, 1, 0), "D": (0, -1, 0), "B": (0, 0, 1), "F": (0, 0, -1)}


def _stored_to_world_matrix(cs: int) -> np.ndarray:
    """3×3 matrix taking coordinates stored in Niantic frame ``cs`` to our world (RUB)."""
    return np.array([_LETTER[c] for c in COORDINATE_SYSTEMS[cs]], dtype=np.float64).T


def _quat_to_mat(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q.T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1)], -2)


def _mat_to_quat(m: np.ndarray) -> np.ndarray:
    """Rotation matrices [N,3,3] -> unit (w,x,y,z) quaternions (Shepperd's method, numerically safe branch)."""
    n = m.shape[0]
    q = np.empty((n, 4))
    tr = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    cand = np.stack([tr, m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]], 1)
    k = cand.argmax(1)
    for i in range(4):
        s = k == i
        if not s.any():
            continue
        a = m[s]
        if i == 0:
            r = np.sqrt(1 + tr[s]) * 2
            q[s] = np.stack([r / 4, (a[:, 2, 1] - a[:, 1, 2]) / r, (a[:, 0, 2] - a[:, 2, 0]) / r,
                             (a[:, 1, 0] - a[:, 0, 1]) / r], 1)
        elif i == 1:
            r = np.sqrt(1 + a[:, 0, 0] - a[:, 1, 1] - a[:, 2, 2]) * 2
            q[s] = np.stack([(a[:, 2, 1] - a[:, 1, 2]) / r, r / 4, (a[:, 0, 1] + a[:, 1, 0]) / r,
                             (a[:, 0, 2] + a[:, 2, 0]) / r], 1)
        elif i == 2:
            r = np.sqrt(1 + a[:, 1, 1] - a[:, 0, 0] - a[:, 2, 2]) * 2
            q[s] = np.stack([(a[:, 0, 2] - a[:, 2, 0]) / r, (a[:, 0, 1] + a[:, 1, 0]) / r, r / 4,
                             (a[:, 1, 2] + a[:, 2, 1]) / r], 1)
        else:
            r = np.sqrt(1 + a[:, 2, 2] - a[:, 0, 0] - a[:, 1, 1]) * 2
            q[s] = np.stack([(a[:, 1, 0] - a[:, 0, 1]) / r, (a[:, 0, 2] + a[:, 2, 0]) / r,
                             (a[:, 1, 2] + a[:, 2, 1]) / r, r / 4], 1)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def _convert_frame(means, quats, m: np.ndarray):
    """Apply the linear frame change ``m`` (orthogonal, det ±1) to centres and covariances ``R S Sᵀ Rᵀ``."""
    means = means @ m.T
    r = m[None] @ _quat_to_mat(quats)
    if np.linalg.det(m) < 0:  # improper: flip one local axis (the scale matrix is diagonal, Σ is unchanged)
        r = r * np.array([1.0, 1.0, -1.0])[None, None, :]
    return means, _mat_to_quat(r)


# ------------------------------------------------------------------------------------------------ writing
def save_spz(g, path, *, version: int = DEFAULT_SPZ_VERSION, axes: str = "auto", coordinate_system: bool = True,
             prune_opacity: float = DEFAULT_PRUNE_OPACITY) -> int:
    """Write Niantic ``.spz`` (version 2, 3 or 4; SH degree 0); returns the number of Gaussians written.

    ``version`` 2 (default: the version every reader measured opens; rotations up to 11.15° off), 3 (gzip,
    rotations ≤ 0.23°) or 4 (zstd container, Niantic's current default; same precision as 3). ``axes``: ``"auto"``
    = ``"y_down"`` (see the module docstring). ``coordinate_system`` (v4 only): record the stored frame in the
    ``SPZ_ADOBE_coordinate_system`` extension. Pruning, validation and atomic writing as in ``save_ply``.
    """
    if version not in SPZ_VERSIONS:
        raise ValueError(f"save_spz: version must be one of {list(SPZ_VERSIONS)}, got {version!r}")
    axes = resolve_axes(axes, "spz", "save_spz")
    params = numpy_params(g, "save_spz", axes)
    means, opac, scales, quats, colors = prune(list(params), params[1], prune_opacity, "save_spz")
    n = means.shape[0]
    fixed = np.rint(means * (1 << _FRACTIONAL_BITS)).astype(np.int64)
    lim = 1 << 23
    if (fixed < -lim).any() or (fixed >= lim).any():
        raise ValueError(
            f"save_spz: positions must lie within ±{lim / (1 << _FRACTIONAL_BITS):.0f} units for .spz's 24-bit "
            f"fixed point (max |x| = {np.abs(means).max():.3g})."
        )
    u = (fixed & 0xFFFFFF).astype(np.uint32)  # two's complement, 24 bits
    pos = np.stack([u & 0xFF, (u >> 8) & 0xFF, (u >> 16) & 0xFF], axis=-1).astype(np.uint8)  # [n,3,3]
    alphas = to_u8(opac * 255.0)
    cols = to_u8((colors - 0.5) / SH_C0 * (_COLOR_SCALE * 255.0) + 0.5 * 255.0)
    sc = to_u8((np.log(np.maximum(scales, 1e-30)) + 10.0) * 16.0)
    rot = _pack_rotations(quats, version)
    streams = [pos.tobytes(), alphas.tobytes(), cols.tobytes(), sc.tobytes(), rot.tobytes()]
    if version < 4:
        header = struct.pack("<IIIBBBB", SPZ_MAGIC, version, n, 0, _FRACTIONAL_BITS, 0, 0)
        atomic_write(path, gzip.compress(header + b"".join(streams), compresslevel=6, mtime=0))
        return n
    import zstandard

    ext = b""
    if coordinate_system:
        ext = struct.pack("<III", _EXT_COORDINATE_SYSTEM, 4, _AXES_TO_CS[axes])
    cctx = zstandard.ZstdCompressor(level=_ZSTD_LEVEL)
    chunks = [cctx.compress(s) for s in streams]
    toc_offset = 32 + len(ext)
    flags = _FLAG_EXTENSIONS if ext else 0
    header = struct.pack("<IIIBBBBI12x", SPZ_MAGIC, 4, n, 0, _FRACTIONAL_BITS, flags, len(chunks), toc_offset)
    toc = b"".join(struct.pack("<QQ", len(c), len(s)) for c, s in zip(chunks, streams))
    atomic_write(path, header + ext + toc + b"".join(chunks))
    return n


def _pack_rotations(quats: np.ndarray, version: int) -> np.ndarray:
    n = quats.shape[0]
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
        return comp.astype("<u4").view(np.uint8).reshape(n, 4)
    sgn = np.where(xyzw[:, 3:4] < 0, -1.0, 1.0)
    return to_u8(xyzw[:, :3] * sgn * 127.5 + 127.5)


# ------------------------------------------------------------------------------------------------ reading
def _sh_dim(degree: int) -> int:
    return (degree + 1) ** 2 - 1


def _parse_extensions(blob: bytes, path, what: str) -> dict:
    """ILV records -> {type: payload}; unknown types are kept (and ignored by the caller)."""
    out, off = {}, 0
    while off + 8 <= len(blob):
        typ, length = struct.unpack_from("<II", blob, off)
        off += 8
        if off + length > len(blob):
            raise ValueError(f"{what}: {path} has a truncated extension record (type {typ:#x}).")
        out[typ] = blob[off:off + length]
        off += length
    return out


def read_spz_header(path) -> dict:
    """Version, point count, SH degree, flags and (if recorded) coordinate system of an ``.spz`` file."""
    return _read(existing_file(path, "read_spz_header"), header_only=True)


def _read(path, header_only: bool = False):
    what = "load_spz"
    raw = path.read_bytes()
    if raw[:4] == b"NGSP":  # v4+: plaintext header, TOC, zstd streams
        if len(raw) < 32:
            raise ValueError(f"{what}: {path} is too short for the 32-byte .spz v4 header.")
        _, version, n, sh_degree, frac, flags, n_streams, toc = struct.unpack_from("<IIIBBBBI", raw, 0)
        if version != 4:
            raise ValueError(f"{what}: {path} has .spz container version {version}; this reader knows 2, 3 and 4.")
        if toc < 32 or toc + 16 * n_streams > len(raw):
            raise ValueError(f"{what}: {path} has a table of contents outside the file: truncated or corrupt.")
        ext = _parse_extensions(raw[32:toc], path, what) if flags & _FLAG_EXTENSIONS else {}
        info = dict(version=version, n=n, sh_degree=sh_degree, frac=frac, flags=flags, extensions=ext)
        if header_only:
            return _public_header(info)
        import zstandard

        dctx = zstandard.ZstdDecompressor()
        streams, off = [], toc + 16 * n_streams
        for i in range(n_streams):
            csize, usize = struct.unpack_from("<QQ", raw, toc + 16 * i)
            if off + csize > len(raw):
                raise ValueError(f"{what}: {path} is truncated (stream {i} ends past the end of the file).")
            try:
                data = dctx.decompress(raw[off:off + csize], max_output_size=usize)
            except zstandard.ZstdError as e:
                raise ValueError(f"{what}: {path}: corrupt zstd stream {i}: {e}") from e
            if len(data) != usize:
                raise ValueError(f"{what}: {path}: stream {i} has {len(data)} bytes, the TOC says {usize}.")
            streams.append(data)
            off += csize
        body = b"".join(streams)
    elif raw[:2] == b"\x1f\x8b":  # v1-v3: one gzip stream
        try:
            data = gzip.decompress(raw)
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise ValueError(f"{what}: {path} is a truncated or corrupt gzip stream: {e}") from e
        if len(data) < 16:
            raise ValueError(f"{what}: {path} is too short for the 16-byte .spz header.")
        magic, version, n, sh_degree, frac, flags, _ = struct.unpack_from("<IIIBBBB", data, 0)
        if magic != SPZ_MAGIC:
            raise ValueError(f"{what}: {path} has magic {magic:#x}, expected {SPZ_MAGIC:#x} ('NGSP').")
        if version not in (2, 3):
            raise ValueError(f"{what}: {path} has .spz version {version}; this reader knows 2, 3 and 4 "
                             "(version 1, float16 positions, was never released).")
        body = data[16:]
        info = dict(version=version, n=n, sh_degree=sh_degree, frac=frac, flags=flags, extensions={})
        if flags & _FLAG_EXTENSIONS and sh_degree <= 4:  # legacy files keep extension records after the payload
            size = n * (9 + 1 + 3 + 3 + (4 if version >= 3 else 3) + 3 * _sh_dim(sh_degree))
            info["extensions"] = _parse_extensions(body[size:], path, what)
        if header_only:
            return _public_header(info)
    else:
        raise ValueError(f"{what}: {path} is not an .spz file (neither a gzip stream nor an 'NGSP' header).")
    info["body"] = body
    return info


def _public_header(info: dict) -> dict:
    cs = info["extensions"].get(_EXT_COORDINATE_SYSTEM)
    cs_val = struct.unpack("<I", cs[:4])[0] if cs and len(cs) >= 4 else None
    return {"version": info["version"], "num_points": info["n"], "sh_degree": info["sh_degree"],
            "fractional_bits": info["frac"], "flags": info["flags"],
            "coordinate_system": COORDINATE_SYSTEMS.get(cs_val) if cs_val else None,
            "extension_types": sorted(info["extensions"])}


def load_spz(path, *, axes: str = "auto"):
    """Read an ``.spz`` file (version 2, 3 or 4; any SH degree, only the DC colour is kept) into float32 CPU
    Gaussians in our world, inverting :func:`save_spz` (quantisation in the module docstring).

    The stored frame is taken from the ``SPZ_ADOBE_coordinate_system`` extension when the file has one (any of
    Niantic's 16 frames, converted exactly, reflections included); otherwise from ``axes`` (``"auto"`` = y_down,
    what every current writer stores). Raises ``ValueError`` naming the problem for truncated / corrupt / foreign
    files, unknown versions and 0 points.
    """
    path = existing_file(path, "load_spz")
    axes = resolve_axes(axes, "spz", "load_spz")
    info = _read(path)
    version, n, sh_degree, frac, body = info["version"], info["n"], info["sh_degree"], info["frac"], info["body"]
    if n == 0:
        raise ValueError(f"load_spz: {path} contains 0 Gaussians.")
    if sh_degree > 4:
        raise ValueError(f"load_spz: {path} has SH degree {sh_degree} (> 4): corrupt header.")
    rot_bytes = 4 if version >= 3 else 3
    sizes = [9 * n, n, 3 * n, 3 * n, rot_bytes * n, 3 * _sh_dim(sh_degree) * n]
    if len(body) < sum(sizes):
        raise ValueError(f"load_spz: {path} is truncated: {len(body)} data bytes for {n} Gaussians, "
                         f"need {sum(sizes)}.")
    chunks, off = [], 0
    for s in sizes:
        chunks.append(np.frombuffer(body, dtype=np.uint8, count=s, offset=off))
        off += s
    pos_b, alpha_b, col_b, scale_b, rot_b, _sh = chunks
    p = pos_b.reshape(n, 3, 3).astype(np.int32)
    fixed = p[..., 0] | (p[..., 1] << 8) | (p[..., 2] << 16)
    fixed = np.where(fixed & 0x800000, fixed - (1 << 24), fixed)
    means = fixed.astype(np.float64) / (1 << frac)
    opac = alpha_b.astype(np.float64) / 255.0
    f_dc = (col_b.reshape(n, 3).astype(np.float64) / 255.0 - 0.5) / _COLOR_SCALE
    scales = np.exp(scale_b.reshape(n, 3).astype(np.float64) / 16.0 - 10.0)
    q = _unpack_rotations(rot_b, n, version)
    cs = _public_header(info)["coordinate_system"]
    if cs is not None:  # the file says what it holds: convert to our world (RUB) exactly, ignore ``axes``
        value = {v: k for k, v in COORDINATE_SYSTEMS.items()}[cs]
        means, q = _convert_frame(means, q, _stored_to_world_matrix(value))
        axes = "y_up"
    return from_arrays(means, opac, scales, q, 0.5 + SH_C0 * f_dc, axes)


def _unpack_rotations(rot_b: np.ndarray, n: int, version: int) -> np.ndarray:
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
    return q / np.linalg.norm(q, axis=1, keepdims=True)
