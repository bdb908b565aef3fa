"""Helpers shared by the Gaussian file formats: validation, pruning, atomic writes, byte quantisation, axes.

Axes (``axes=`` of every reader and writer, see :data:`AXES`):

* ``"y_up"``   — the file holds our world as it is: LGM's frame, x right, y up, +z towards the front camera
  (RUB in Niantic's naming; glTF's frame).
* ``"y_down"`` — the file holds our world turned 180° about x: ``(x, y, z) -> (x, -y, -z)``, quaternions
  ``q -> q_x180 ⊗ q`` (RDF: the INRIA 3DGS / COLMAP / OpenCV frame that SuperSplat, ComfyUI core's splat viewer and
  the Spark examples assume).
* ``"auto"``   — the format's own convention (:data:`FORMAT_AXES`): y_down for .ply/.splat/.spz/.sog/.compressed.ply,
  y_up for .glb.

Writers turn world -> file frame, readers file frame -> world, so ``load(save(g)) == g`` for every ``axes``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..gaussians import DEFAULT_PRUNE_OPACITY, SH_C0, Gaussians  # noqa: F401  (re-exported)

AXES = ("auto", "y_up", "y_down")
#: The frame each format's files are written in by default (``axes="auto"``), decided by measurement in real viewers
#: (docs/formats.md): every splat viewer tested treats .ply/.splat/.spz/.sog data as 3DGS y-down data; glTF is y up.
FORMAT_AXES = {"ply": "y_down", "splat": "y_down", "spz": "y_down", "sog": "y_down", "compressed_ply": "y_down",
               "glb": "y_up"}


def resolve_axes(axes: str, fmt: str, what: str) -> str:
    """``"auto"`` -> the format's convention; validates the value (one clear ``ValueError``)."""
    if axes not in AXES:
        raise ValueError(f"{what}: axes must be one of {list(AXES)}, got {axes!r}")
    return FORMAT_AXES[fmt] if axes == "auto" else axes


def world_to_file(g: Gaussians, axes: str) -> Gaussians:
    """Our world -> the file frame (``axes`` already resolved)."""
    if axes == "y_down":
        from ..splat_convert import rotate_x180

        return rotate_x180(g)
    return g


file_to_world = world_to_file  # the 180° turn about x is its own inverse


from ..atomic import atomic_write, current_umask  # noqa: E402,F401  (re-exported: the one atomic writer)


def numpy_params(g: Gaussians, what: str, axes: str = "y_up"):
    """Validated float64 numpy copies in the file frame: (means, opacities, scales, normalised wxyz quats, colors)."""
    if not isinstance(g, Gaussians):
        raise TypeError(f"{what}: expected a Gaussians object, got {type(g).__name__}")
    g.validate(what)
    g = world_to_file(g.detach().to("cpu", torch.float64), axes)
    means, opac, scales, quats, colors = (t.numpy() for t in (g.means, g.opacities, g.scales, g.quats, g.colors))
    norm = np.linalg.norm(quats, axis=1, keepdims=True)
    if (norm <= 1e-12).any():
        raise ValueError(f"{what}: {int((norm <= 1e-12).sum())} Gaussian(s) have an all-zero rotation quaternion.")
    return means, opac, scales, quats / norm, colors


def prune(arrays, opac: np.ndarray, prune_opacity: float, what: str):
    """Keep the Gaussians with opacity >= ``prune_opacity`` (LGM's 0.005 by default; 0 keeps all)."""
    keep = opac >= prune_opacity
    if not keep.any():
        raise ValueError(
            f"{what}: all {opac.shape[0]} Gaussians have opacity < prune_opacity={prune_opacity}; nothing to save. "
            "Lower prune_opacity (0 keeps everything)."
        )
    return [a[keep] for a in arrays]


def to_u8(x: np.ndarray) -> np.ndarray:
    """Round half to even and clamp to 0..255, as a JavaScript ``Uint8ClampedArray`` store does."""
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def normalise_quats(q: np.ndarray) -> np.ndarray:
    """Normalise (w,x,y,z) rows; all-zero rows become the identity."""
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    zero = norm[:, 0] <= 1e-12
    q = q / np.where(zero[:, None], 1.0, norm)
    q[zero] = (1.0, 0.0, 0.0, 0.0)
    return q


def check_finite(what: str, path, **arrays) -> None:
    for name, arr in arrays.items():
        bad = ~np.isfinite(arr)
        if bad.any():
            rows = int(bad.reshape(arr.shape[0], -1).any(axis=1).sum())
            raise ValueError(f"{what}: {path}: {rows} Gaussian(s) have NaN/inf '{name}' values.")


def from_arrays(means, opac, scales, quats, colors, axes: str) -> Gaussians:
    """float32 CPU Gaussians from file-frame float64 arrays, turned into our world."""
    def t(a):
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    g = Gaussians(means=t(means), opacities=t(np.clip(opac, 0.0, 1.0)), scales=t(scales), quats=t(quats),
                  colors=t(np.clip(colors, 0.0, 1.0)))
    return file_to_world(g, axes)


def existing_file(path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no such file: {path}")
    return path
