"""antimatter15 ``.splat``: headerless 32-byte little-endian records (read + write)."""
from __future__ import annotations

import numpy as np

from ._common import (DEFAULT_PRUNE_OPACITY, atomic_write, existing_file, from_arrays, normalise_quats, numpy_params,
                      prune, resolve_axes, to_u8)

__all__ = ["save_splat", "load_splat", "SPLAT_DTYPE"]

SPLAT_DTYPE = np.dtype([("pos", "<f4", (3,)), ("scale", "<f4", (3,)), ("rgba", "u1", (4,)), ("rot", "u1", (4,))])


def save_splat(g, path, *, axes: str = "auto", prune_opacity: float = DEFAULT_PRUNE_OPACITY) -> int:
    """Write antimatter15 ``.splat``; returns the number of Gaussians written.

    Record: ``pos f32×3 | scale f32×3 (linear) | r g b a u8 | rot u8×4``, with ``rgb = rgb·255`` and
    ``a = opacity·255``, ``rot = q·128 + 128`` for the normalised quaternion in (w, x, y, z) order; decode as
    ``(b - 128) / 128``. Bytes are rounded half-to-even and clamped to 0..255 (what the viewer's in-browser
    PLY→splat converter does with ``Uint8ClampedArray``; antimatter15's ``convert.py`` truncates: ≤ 1 LSB apart).
    Records are sorted like both reference converters: descending ``sx·sy·sz·opacity`` (float32, stable for ties).
    Only the DC colour is stored; rotations are off by up to ≈1.7° after the byte rounding.
    ``axes``: ``"auto"`` = ``"y_down"`` (3DGS frame, like .ply). Pruning, validation and atomic writing as in
    :func:`~mvboost_core.splatio.ply.save_ply`.
    """
    axes = resolve_axes(axes, "splat", "save_splat")
    params = numpy_params(g, "save_splat", axes)
    means, opac, scales, quats, colors = prune(list(params), params[1], prune_opacity, "save_splat")
    importance = (scales.prod(axis=1) * opac).astype(np.float32)
    order = np.argsort(-importance, kind="stable")
    rec = np.zeros(means.shape[0], dtype=SPLAT_DTYPE)
    rec["pos"] = means[order]
    rec["scale"] = scales[order]
    rec["rgba"][:, :3] = to_u8(colors[order] * 255.0)
    rec["rgba"][:, 3] = to_u8(opac[order] * 255.0)
    rec["rot"] = to_u8(quats[order] * 128.0 + 128.0)
    atomic_write(path, rec.tobytes())
    return rec.shape[0]


def load_splat(path, *, axes: str = "auto"):
    """Read an antimatter15 ``.splat`` file (see :func:`save_splat`) into float32 CPU Gaussians in our world.

    Quantisation of the format: colours and opacity to 1/255, quaternion components to 1/128 before
    re-normalisation; positions and scales are exact float32. ``axes``: the file's frame (``"auto"`` = y_down).
    """
    path = existing_file(path, "load_splat")
    axes = resolve_axes(axes, "splat", "load_splat")
    raw = path.read_bytes()
    if len(raw) == 0 or len(raw) % SPLAT_DTYPE.itemsize:
        raise ValueError(
            f"load_splat: {path} has {len(raw)} bytes, not a positive multiple of the 32-byte .splat record "
            "(truncated or not a .splat file)."
        )
    rec = np.frombuffer(raw, dtype=SPLAT_DTYPE)
    if not (np.isfinite(rec["pos"]).all() and np.isfinite(rec["scale"]).all()):
        raise ValueError(f"load_splat: {path} contains NaN/inf positions or scales (not a valid .splat file).")
    q = normalise_quats((rec["rot"].astype(np.float64) - 128.0) / 128.0)
    rgba = rec["rgba"].astype(np.float64) / 255.0
    return from_arrays(rec["pos"].astype(np.float64), rgba[:, 3], rec["scale"].astype(np.float64), q, rgba[:, :3],
                       axes)
