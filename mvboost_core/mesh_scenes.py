"""Synthetic Gaussian scenes with a known surface, for the mesh benchmark and tests (not used by the pipeline).

``surface_scene(kind, n)`` samples ``n`` flat Gaussians on the surface of a trimesh primitive (a torus or a box,
object size ≈ 1, inside [-0.6, 0.6]³), oriented along the surface (half as thick along the normal), opacity 0.9, coloured by
position (``rgb = 0.5 + 0.8·p`` clamped), and returns ``(gaussians, trimesh ground-truth surface)``.
``lgm_like_sphere(n)`` is the 65,536-Gaussian LGM-like scene of the render benchmark (wobbly sphere + 20 % interior
points); its "surface" is the set of shell centres.
"""
from __future__ import annotations

import numpy as np
import torch

from .gaussians import Gaussians

__all__ = ["surface_scene", "lgm_like_sphere"]


def _quats_from_normals(nrm: np.ndarray) -> np.ndarray:
    """(w,x,y,z) rotations taking local +z to each normal."""
    z = np.array([0.0, 0.0, 1.0])
    axis = np.cross(np.broadcast_to(z, nrm.shape), nrm)
    s = np.linalg.norm(axis, axis=1)
    c = nrm @ z
    ang = np.arctan2(s, c)
    axis = np.where(s[:, None] > 1e-9, axis / np.maximum(s[:, None], 1e-12), np.array([1.0, 0.0, 0.0]))
    return np.concatenate([np.cos(ang / 2)[:, None], axis * np.sin(ang / 2)[:, None]], 1)


def surface_scene(kind: str = "torus", n: int = 20000, seed: int = 0):
    import trimesh

    if kind == "torus":
        mesh = trimesh.creation.torus(major_radius=0.35, minor_radius=0.15, major_sections=96, minor_sections=48)
        mesh.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))  # ring lies in the x-z plane, axis up
    elif kind == "box":
        mesh = trimesh.creation.box(extents=(0.8, 0.6, 0.4))
    else:
        raise ValueError(f"unknown scene {kind!r}")
    rng = np.random.default_rng(seed)
    pts, fidx = trimesh.sample.sample_surface(mesh, n, seed=int(rng.integers(1 << 31)))
    nrm = mesh.face_normals[fidx]
    spacing = np.sqrt(mesh.area / n)
    scales = np.stack([np.full(n, 0.9 * spacing), np.full(n, 0.9 * spacing), np.full(n, 0.5 * spacing)], 1)
    cols = np.clip(0.5 + 0.8 * pts, 0.0, 1.0)
    t = lambda a: torch.tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    g = Gaussians(means=t(pts), opacities=torch.full((n,), 0.9), scales=t(scales), quats=t(_quats_from_normals(nrm)),
                  colors=t(cols))
    return g, mesh


def lgm_like_sphere(n: int = 65536, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen), dim=1)
    r = 0.5 * (1 + 0.15 * torch.sin(3 * d[:, 0]) * torch.cos(2 * d[:, 1]))
    inner = torch.rand(n, generator=gen) < 0.2
    r = torch.where(inner, r * torch.rand(n, generator=gen), r)
    means = d * r[:, None]
    scales = 0.1 * torch.nn.functional.softplus(torch.randn(n, 3, generator=gen) * 0.5 - 3)
    op = torch.sigmoid(torch.randn(n, generator=gen) * 1.5 + 1)
    q = torch.nn.functional.normalize(torch.randn(n, 4, generator=gen), dim=1)
    g = Gaussians(means=means, opacities=op, scales=scales, quats=q, colors=(means + 0.5).clamp(0, 1))
    return g, means[~inner].numpy()
