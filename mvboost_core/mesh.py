"""Gaussians -> a coloured triangle mesh (``.glb`` with vertex colours, ``.obj``), on CPU.

Pipeline (:func:`gaussians_to_mesh`):

1. **Density grid.** ``D(x) = Σ_i o_i · exp(-½ (x-μ_i)ᵀ Σ_i⁻¹ (x-μ_i))`` (the opacity-weighted, unnormalised
   Gaussians a splat renderer composites) on a regular grid of ``resolution`` cells along the longest side of the
   Gaussians' bounding box (+ a margin), each Gaussian evaluated within 2.5σ. The same weights
   accumulate an RGB grid, ``C(x) = Σ w_i rgb_i / Σ w_i``.
2. **Marching cubes** (PyMCubes) on ``D`` at ``level`` (default 0.5: a surface where the summed opacity reaches
   one half; measured choice, docs/benchmarks.md).
3. Components with less than ``min_component`` of the faces are dropped (floaters), then **decimation**
   (fast-simplification, quadric) to at most ``max_faces``.
4. **Vertex colours**: ``C`` trilinearly interpolated at each final vertex.

Output frame: our world (LGM: y up, front towards +z) = glTF's and ComfyUI's 3D viewer's, so meshes are upright
and face the default camera there. ``Mesh`` holds float32 ``vertices [V,3]``, int64 ``faces [F,3]`` (counter-
clockwise seen from outside) and float32 ``colors [V,3]`` in 0..1 (sRGB display values, like the Gaussians').
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .gaussians import Gaussians

__all__ = ["Mesh", "MeshOptions", "gaussians_to_mesh", "save_mesh", "density_grid", "MESH_FORMATS"]

MESH_FORMATS = ("glb", "obj")
#: Gaussians are evaluated out to 2.5 σ (their value there is exp(-3.1) = 4 % of the peak; beyond it the summed
#: density changes by < 0.01 at the default level, measured).
_CUTOFF = 2.5


@dataclass
class Mesh:
    vertices: np.ndarray  # [V,3] float32, our world
    faces: np.ndarray  # [F,3] int64
    colors: np.ndarray  # [V,3] float32 in 0..1

    def to_trimesh(self):
        import trimesh

        rgba = np.concatenate([np.clip(self.colors, 0, 1), np.ones((len(self.colors), 1), np.float32)], 1)
        return trimesh.Trimesh(self.vertices, self.faces, vertex_colors=np.round(rgba * 255).astype(np.uint8),
                               process=False)


@dataclass(frozen=True)
class MeshOptions:
    """``resolution``: grid cells along the longest side (memory and time grow with its cube; 192 ≈ 0.6 %
    of the object per cell). ``level``: density iso-level. ``max_faces``: decimation target (0 = none).
    ``min_component``: fraction of faces below which a connected piece is dropped. ``chunk``: Gaussians per
    evaluation batch (bounds memory)."""

    resolution: int = 192
    level: float = 0.5
    max_faces: int = 100_000
    min_component: float = 0.01
    chunk: int = 4096


def density_grid(g: Gaussians, resolution: int, chunk: int = 4096, margin: float = 0.05):
    """Opacity-weighted density and colour grids: ``(density D [R0,R1,R2] float32, weighted colour Σ w·rgb
    [R0,R1,R2,3] float32, origin [3], cell size)``; grid point ``(i,j,k)`` sits at ``origin + cell·(i,j,k)``.
    The colour at a point is ``interp(Σ w·rgb) / interp(D)`` (dividing after interpolating keeps empty cells,
    whose colour is undefined, from pulling surface colours towards black)."""
    g = g.detach().to("cpu", torch.float32)
    means, scales, op, cols = g.means, g.scales.clamp_min(1e-6), g.opacities, g.colors
    q = torch.nn.functional.normalize(g.quats, dim=1)
    w, x, y, z = q.unbind(1)
    rot = torch.stack([
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1)], 1)
    # Σ⁻¹ = Aᵀ A with A = S⁻¹ Rᵀ, so the squared Mahalanobis distance is |A d|² (one batched matmul)
    a_t = (rot / scales[:, None, :])  # = Aᵀ  [N,3,3]
    radius = _CUTOFF * scales.max(1).values
    lo = means.min(0).values
    hi = means.max(0).values
    ext = float((hi - lo).max())
    cell = ext * (1 + 2 * margin) / (resolution - 1)
    kr = torch.clamp(torch.ceil(radius / cell), min=1).long()
    pad = int(kr.max()) + 1 + int(math.ceil(margin * ext / cell))  # every neighbourhood stays inside the grid
    lo = lo - pad * cell
    dims = [int(math.ceil(float(hi[i] - lo[i]) / cell)) + pad + 1 for i in range(3)]
    dens = torch.zeros(dims[0] * dims[1] * dims[2])
    rgbw = torch.zeros(dims[0] * dims[1] * dims[2], 3)
    strides = torch.tensor([dims[1] * dims[2], dims[2], 1])
    order = torch.argsort(kr)
    start, n = 0, len(order)
    while start < n:  # Gaussians sorted by footprint: each batch uses the neighbourhood of its largest member
        k = int(kr[order[min(start + chunk, n) - 1]])
        side = 2 * k + 1
        size = max(1, min(chunk, 4_000_000 // side ** 3))  # bounds a batch to ~4M evaluations
        idx = order[start:start + size]
        start += size
        offs = torch.stack(torch.meshgrid(*[torch.arange(-k, k + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
        base = torch.round((means[idx] - lo) / cell).long()  # nearest grid point
        d = (lo + base.float() * cell - means[idx])[:, None, :] + (offs.float() * cell)[None]  # [B,K,3]
        m = torch.bmm(d, a_t[idx]).square_().sum(-1)  # [B,K] squared Mahalanobis distance
        ok = m < _CUTOFF ** 2
        bidx, kidx = torch.nonzero(ok, as_tuple=True)
        val = op[idx][bidx] * torch.exp(-0.5 * m[bidx, kidx])
        lin = (base * strides).sum(-1)[bidx] + (offs * strides).sum(-1)[kidx]
        dens.index_add_(0, lin, val)
        rgbw.index_add_(0, lin, val[:, None] * cols[idx][bidx])
    return dens.reshape(dims).numpy(), rgbw.reshape(*dims, 3).numpy(), lo.numpy(), cell


def _sample_grid(grid: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Trilinear interpolation of ``grid [R0,R1,R2,C]`` at fractional indices ``pts [N,3]``."""
    hi = np.array(grid.shape[:3]) - 1
    p = np.clip(pts, 0, hi - 1e-6)
    i0 = np.floor(p).astype(np.int64)
    f = p - i0
    out = np.zeros((len(p), grid.shape[3]), np.float64)
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                wgt = (f[:, 0] if dx else 1 - f[:, 0]) * (f[:, 1] if dy else 1 - f[:, 1]) * (f[:, 2] if dz else 1 - f[:, 2])
                out += wgt[:, None] * grid[i0[:, 0] + dx, i0[:, 1] + dy, i0[:, 2] + dz]
    return out


def gaussians_to_mesh(g: Gaussians, options: MeshOptions | None = None, **overrides) -> Mesh:
    """Extract a vertex-coloured surface from Gaussians (see the module docstring). Keyword arguments override
    :class:`MeshOptions` fields. Raises ``ValueError`` for invalid Gaussians or when no surface reaches ``level``."""
    import mcubes

    opt = options or MeshOptions()
    if overrides:
        opt = MeshOptions(**{**opt.__dict__, **overrides})
    if not 16 <= opt.resolution <= 1024:
        raise ValueError(f"mesh resolution must be in 16..1024 cells, got {opt.resolution}")
    if not opt.level > 0:
        raise ValueError(f"mesh level must be > 0 (a density), got {opt.level}")
    g.validate("Export Mesh")
    dens, rgb, origin, cell = density_grid(g, opt.resolution, opt.chunk)
    if float(dens.max()) <= opt.level:
        raise ValueError(f"Export Mesh: the Gaussians' density never reaches level={opt.level} (max "
                         f"{float(dens.max()):.3g}); lower the level.")
    verts, faces = mcubes.marching_cubes(dens, opt.level)  # grid index space; faces wound outwards (tested)
    faces = faces.astype(np.int64)
    verts, faces = _drop_small_components(verts, faces, opt.min_component)
    if opt.max_faces and len(faces) > opt.max_faces:
        import fast_simplification

        verts, faces = fast_simplification.simplify(verts.astype(np.float64), faces, target_count=opt.max_faces)
    colors = _sample_grid(rgb, verts) / np.maximum(_sample_grid(dens[..., None], verts), 1e-12)
    return Mesh(vertices=(origin + verts * cell).astype(np.float32), faces=np.ascontiguousarray(faces, np.int64),
                colors=np.clip(colors, 0, 1).astype(np.float32))


def _drop_small_components(verts, faces, min_fraction):
    if min_fraction <= 0 or len(faces) == 0:
        return verts, faces
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    nv = len(verts)
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]]])
    adj = sp.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(nv, nv))
    _, lab = connected_components(adj, directed=False)
    face_lab = lab[faces[:, 0]]
    counts = np.bincount(face_lab)
    keep = counts[face_lab] >= min_fraction * len(faces)
    faces = faces[keep]
    used = np.unique(faces)
    remap = np.full(nv, -1, np.int64)
    remap[used] = np.arange(len(used))
    return verts[used], remap[faces]


def save_mesh(mesh: Mesh, path, format: str | None = None) -> Path:
    """Write ``.glb`` (vertex colours as ``COLOR_0``, vertex normals, y up) or ``.obj`` (``v x y z r g b`` vertex colours, which
    Blender's and three.js' OBJ importers read) atomically; ``format`` defaults to the file extension."""
    from .splatio import atomic_write

    path = Path(path)
    fmt = (format or path.suffix.lstrip(".")).lower()
    if fmt not in MESH_FORMATS:
        raise ValueError(f"mesh format must be one of {list(MESH_FORMATS)}, got {fmt!r}")
    if len(mesh.faces) == 0:
        raise ValueError("the mesh has no faces; nothing to save")
    tm = mesh.to_trimesh()
    if fmt == "glb":
        data = tm.export(file_type="glb", include_normals=True)  # smooth shading in three.js / Blender
    else:
        data = tm.export(file_type="obj", include_color=True, include_normals=False, include_texture=False)
        data = data.encode() if isinstance(data, str) else data
    atomic_write(path, data)
    return path
