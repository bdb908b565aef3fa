"""PlayCanvas SOG (``.sog`` bundle or unbundled ``meta.json`` + WebP images): read (meta versions 1 and 2) + write
(version 2).

Written from the layout PlayCanvas splat-transform reads and writes (facts, no code): images are lossless RGBA WebP
(decoded / encoded with Pillow), pixel ``i`` (row-major) belongs to Gaussian ``i``; a ``.sog`` file is a zip of
``meta.json`` and the images.

* ``means_l.webp`` / ``means_u.webp``: low / high byte of a 16-bit value per axis (R, G, B) that lerps between
  ``means.mins`` and ``means.maxs`` of ``sign(x)·ln(|x| + 1)`` (a log transform that spends precision near 0).
* ``quats.webp``: "smallest three" in (w,x,y,z) = ``rot_0..3`` order: R, G, B = the three other components
  ``c·√2·0.5 + 0.5`` in 0..255 (largest made positive), A = 252 + index of the largest.
* ``scales.webp``: R, G, B index a 256-entry ``scales.codebook`` of log scales.
* ``sh0.webp``: R, G, B index a 256-entry ``sh0.codebook`` of DC coefficients (``f_dc``); A = opacity·255.
* optional ``shN`` (higher SH bands, palette + labels): ignored on read, never written (our colours are DC only).
* meta version 1 (no ``version`` key): per-channel ``mins``/``maxs`` instead of codebooks; ``sh0`` alpha is a
  logit lerped in ``mins[3]..maxs[3]``.

Our codebooks are 1-D k-means over all three channels, like splat-transform's. Quantisation (tests): positions
≈ range/65535 after the log transform; rotation ≤ 1° (8-bit smallest three); scales within ≈ 2% and colours
within ≈ 0.01 (nearest of 256 codebook entries); opacity 1/255.
"""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np

from ._common import (SH_C0, DEFAULT_PRUNE_OPACITY, atomic_write, existing_file, from_arrays, normalise_quats,
                      numpy_params, prune, resolve_axes, to_u8)

__all__ = ["save_sog", "load_sog"]

_QUAT_IDX = [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]]
_SQRT2 = np.sqrt(2.0)


# ---------------------------------------------------------------------------------------------------- helpers
def _codebook(values: np.ndarray, k: int = 256, iters: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """1-D k-means -> (sorted codebook [k] float32, labels uint8).

    Start: half the centres at quantiles, half evenly over [min, max] (pure quantiles leave the tails with one
    centre each: max scale error 65-88% measured, vs 2% with this start), then Lloyd iterations.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    half = k // 2
    centers = np.unique(np.concatenate([np.quantile(v, (np.arange(half) + 0.5) / half),
                                        np.linspace(v.min(), v.max(), k - half)]))
    for _ in range(iters):
        edges = (centers[1:] + centers[:-1]) / 2
        lab = np.searchsorted(edges, v)
        sums = np.bincount(lab, weights=v, minlength=len(centers))
        cnt = np.bincount(lab, minlength=len(centers))
        centers = np.unique(np.where(cnt > 0, sums / np.maximum(cnt, 1), centers))
    centers = centers.astype(np.float32)
    if len(centers) < k:  # fewer distinct values than entries: pad (unused entries)
        centers = np.concatenate([centers, np.full(k - len(centers), centers[-1], np.float32)])
    edges = (centers[1:].astype(np.float64) + centers[:-1]) / 2
    lab = np.clip(np.searchsorted(edges, v), 0, k - 1)
    return centers, lab.astype(np.uint8)


def _log_t(x):
    return np.sign(x) * np.log1p(np.abs(x))


def _inv_log_t(v):
    return np.sign(v) * np.expm1(np.abs(v))


def _webp_bytes(rgba: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="WEBP", lossless=True, quality=100, method=4, exact=True)
    return buf.getvalue()


def _decode_webp(data: bytes, count: int, name: str, path) -> np.ndarray:
    from PIL import Image

    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except Exception as e:  # noqa: BLE001 - Pillow raises several types for broken images
        raise ValueError(f"load_sog: {path}: image {name} is not a readable WebP: {e}") from e
    rgba = np.asarray(im.convert("RGBA")).reshape(-1, 4)
    if rgba.shape[0] < count:
        raise ValueError(f"load_sog: {path}: image {name} has {rgba.shape[0]} pixels for {count} Gaussians.")
    return rgba[:count].astype(np.int64)


# ----------------------------------------------------------------------------------------------------- write
def save_sog(g, path, *, axes: str = "auto", prune_opacity: float = DEFAULT_PRUNE_OPACITY) -> int:
    """Write a PlayCanvas ``.sog`` bundle (meta version 2, DC colour only); returns the number written.

    ``axes``: ``"auto"`` = ``"y_down"`` (SOG holds ply-frame data; SuperSplat turns it upright). Validation, pruning
    and atomic writing as in ``save_ply``. Images are ``ceil(√n / 4)·4`` wide, rows padded to a multiple of 4.
    """
    axes = resolve_axes(axes, "sog", "save_sog")
    params = numpy_params(g, "save_sog", axes)
    means, opac, scales, quats, colors = prune(list(params), params[1], prune_opacity, "save_sog")
    n = means.shape[0]
    width = int(np.ceil(np.sqrt(n) / 4) * 4)
    height = int(np.ceil(n / width / 4) * 4)

    def image(channels) -> bytes:
        img = np.zeros((width * height, 4), np.uint8)
        img[:, 3] = 255
        for c, data in enumerate(channels):
            img[:n, c] = data
        return _webp_bytes(img.reshape(height, width, 4))

    lm = _log_t(means)
    mins, maxs = lm.min(0), lm.max(0)
    span = np.where(maxs > mins, maxs - mins, 1.0)
    q16 = np.clip(np.rint((lm - mins) / span * 65535), 0, 65535).astype(np.uint32)
    files = {"means_l.webp": image([q16[:, i] & 255 for i in range(3)]),
             "means_u.webp": image([q16[:, i] >> 8 for i in range(3)])}

    largest = np.argmax(np.abs(quats), axis=1)
    q = quats * np.where(quats[np.arange(n), largest] < 0, -1.0, 1.0)[:, None] * _SQRT2
    qb = np.zeros((n, 4), np.uint8)
    for k in range(4):
        sel = largest == k
        for j, i in enumerate(_QUAT_IDX[k]):
            qb[sel, j] = to_u8(255.0 * (q[sel, i] * 0.5 + 0.5))
        qb[sel, 3] = 252 + k
    files["quats.webp"] = image([qb[:, c] for c in range(4)])

    s_code, s_lab = _codebook(np.log(np.maximum(scales, 1e-30)))
    files["scales.webp"] = image([s_lab.reshape(n, 3)[:, i] for i in range(3)])
    c_code, c_lab = _codebook((colors - 0.5) / SH_C0)
    files["sh0.webp"] = image([c_lab.reshape(n, 3)[:, i] for i in range(3)] + [to_u8(opac * 255.0)])

    meta = {"version": 2, "asset": {"generator": "mvboost_core.splatio"}, "count": int(n),
            "means": {"mins": mins.tolist(), "maxs": maxs.tolist(), "files": ["means_l.webp", "means_u.webp"]},
            "scales": {"codebook": s_code.tolist(), "files": ["scales.webp"]},
            "quats": {"files": ["quats.webp"]},
            "sh0": {"codebook": c_code.tolist(), "files": ["sh0.webp"]}}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:  # WebP is already compressed
        z.writestr("meta.json", json.dumps(meta))
        for name, data in files.items():
            z.writestr(name, data)
    atomic_write(path, buf.getvalue())
    return int(n)


# ------------------------------------------------------------------------------------------------------ read
def load_sog(path, *, axes: str = "auto"):
    """Read a ``.sog`` bundle (zip) or an unbundled ``meta.json`` (+ its images next to it) into float32 CPU
    Gaussians in our world. Meta versions 1 and 2; higher SH bands are ignored. ``axes``: the file's frame
    (``"auto"`` = y_down). Raises ``ValueError`` naming the problem for foreign, truncated or inconsistent files.
    """
    path = existing_file(path, "load_sog")
    axes = resolve_axes(axes, "sog", "load_sog")
    if zipfile.is_zipfile(path):
        try:
            z = zipfile.ZipFile(path)
            names = set(z.namelist())
            prefix = ""
            if "meta.json" not in names:  # some bundles keep everything in one folder
                metas = [m for m in names if m.endswith("/meta.json")]
                if len(metas) != 1:
                    raise ValueError(f"load_sog: {path} is a zip without a meta.json: not a SOG bundle.")
                prefix = metas[0][: -len("meta.json")]
            meta_bytes = z.read(prefix + "meta.json")

            def read(name):
                if prefix + name not in names:
                    raise ValueError(f"load_sog: {path} lacks the image {name} listed in meta.json.")
                return z.read(prefix + name)
        except zipfile.BadZipFile as e:
            raise ValueError(f"load_sog: {path} is a corrupt zip: {e}") from e
    else:
        meta_bytes = path.read_bytes()
        base = Path(path).parent

        def read(name):
            p = base / name
            if not p.is_file():
                raise ValueError(f"load_sog: {path} refers to {name}, which is not next to it.")
            return p.read_bytes()
    try:
        meta = json.loads(meta_bytes)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"load_sog: {path}: meta.json is not JSON ({e}); not a SOG file.") from e
    if not isinstance(meta, dict) or "means" not in meta or "quats" not in meta:
        raise ValueError(f"load_sog: {path}: meta.json has no means/quats entries; not a SOG file.")
    version = meta.get("version", 1)
    if version not in (1, 2):
        raise ValueError(f"load_sog: {path} has SOG meta version {version}; this reader knows 1 and 2.")
    try:
        n = int(meta["count"]) if version == 2 else int(meta["means"]["shape"][0])
        mfiles, mins, maxs = meta["means"]["files"], np.asarray(meta["means"]["mins"]), np.asarray(meta["means"]["maxs"])
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise ValueError(f"load_sog: {path}: meta.json lacks {e} for version {version}.") from e
    if n <= 0:
        raise ValueError(f"load_sog: {path} contains 0 Gaussians.")
    lo = _decode_webp(read(mfiles[0]), n, mfiles[0], path)
    hi = _decode_webp(read(mfiles[1]), n, mfiles[1], path)
    v16 = (lo[:, :3] | (hi[:, :3] << 8)).astype(np.float64) / 65535.0
    means = _inv_log_t(mins + (maxs - mins) * v16)

    qb = _decode_webp(read(meta["quats"]["files"][0]), n, "quats", path)
    tag = qb[:, 3]
    q = np.zeros((n, 4))
    comps = (qb[:, :3].astype(np.float64) / 255.0 * 2.0 - 1.0) / _SQRT2
    for k in range(4):
        sel = tag == 252 + k
        for j, i in enumerate(_QUAT_IDX[k]):
            q[sel, i] = comps[sel, j]
        q[sel, k] = np.sqrt(np.maximum(0.0, 1.0 - (comps[sel] ** 2).sum(1)))
    q[(tag < 252)] = (1.0, 0.0, 0.0, 0.0)

    sb = _decode_webp(read(meta["scales"]["files"][0]), n, "scales", path)
    cb = _decode_webp(read(meta["sh0"]["files"][0]), n, "sh0", path)
    if version == 2:
        s_code = np.asarray(meta["scales"]["codebook"], np.float64)
        c_code = np.asarray(meta["sh0"]["codebook"], np.float64)
        log_s = s_code[sb[:, :3]]
        f_dc = c_code[cb[:, :3]]
        opac = cb[:, 3] / 255.0
    else:
        smin, smax = np.asarray(meta["scales"]["mins"]), np.asarray(meta["scales"]["maxs"])
        cmin, cmax = np.asarray(meta["sh0"]["mins"]), np.asarray(meta["sh0"]["maxs"])
        log_s = smin + (smax - smin) * (sb[:, :3] / 255.0)
        f = cmin + (cmax - cmin) * (cb[:, :4] / 255.0)
        f_dc, opac = f[:, :3], 1.0 / (1.0 + np.exp(-f[:, 3]))
    return from_arrays(means, opac, np.exp(log_s), normalise_quats(q), 0.5 + SH_C0 * f_dc, axes)
