"""Tile intersection lists: which Gaussians can touch which tile, sorted front to back.

The culling rule is *exact* in the sense of ``fixtures/render/README.md`` §5 (the gsplat-style opacity-aware
per-axis rule, made tighter): a pair (pixel, Gaussian) can only have alpha = o·exp(-sigma) >= 1/255 if
``sigma <= t = ln(255·o)``. The ellipse {sigma <= t} lies inside the axis-aligned box
``|dx| <= sqrt(2·t·a)``, ``|dy| <= sqrt(2·t·c)`` (a, c = diagonal of Sigma'); the candidate tiles are those
holding a pixel *centre* inside that box, and a candidate is kept iff the minimum of sigma over the rectangle of
its pixel centres is <= t (both with a small safety margin). No pair with alpha >= 1/255 is ever lost, so the
images equal the dense reference to rounding (the float64 tests check every pixel).

Everything here runs under ``torch.no_grad`` (integer bookkeeping only).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["TileLists", "build_tile_lists"]

ALPHA_MIN = 1.0 / 255.0


@dataclass
class TileLists:
    """Per-tile Gaussian lists for ``V`` views.

    Tiles are numbered ``v·(ntx·nty) + ty·ntx + tx``. ``ids`` [M] holds flattened ``v·N + n`` indices, sorted by
    tile and, inside a tile, by ascending camera z (ties by index). Tile ``t`` owns ``ids[starts[t]:ends[t]]``.
    """

    tile_size: int
    ntx: int
    nty: int
    n_views: int
    n_gaussians: int
    ids: Tensor  # [M] int64
    starts: Tensor  # [V·ntx·nty] int64
    ends: Tensor  # [V·ntx·nty] int64

    @property
    def n_tiles(self) -> int:
        return self.n_views * self.ntx * self.nty

    @property
    def n_intersections(self) -> int:
        return int(self.ids.numel())


@torch.no_grad()
def build_tile_lists(
    means2d: Tensor,  # [V,N,2]
    cov2d: Tensor,  # [V,N,3] (a, b, c) including eps2d
    depth: Tensor,  # [V,N]
    valid: Tensor,  # [V,N] bool
    opacities: Tensor,  # [V,N]
    width: int,
    height: int,
    tile_size: int = 16,
    cull: bool = True,
) -> TileLists:
    """Build the sorted per-tile lists. ``cull=False`` lists every valid Gaussian in every tile of its view."""
    out_device = depth.device
    if out_device.type == "mps":  # no float64 on MPS: build the (cheap, O(V·N)) lists on the CPU
        lists = build_tile_lists(means2d.detach().cpu(), cov2d.detach().cpu(), depth.detach().cpu(),
                                 valid.cpu(), opacities.detach().cpu(), width, height, tile_size, cull)
        lists.ids, lists.starts, lists.ends = (t.to(out_device) for t in (lists.ids, lists.starts, lists.ends))
        return lists
    V, N = depth.shape
    device = depth.device
    ts = int(tile_size)
    ntx = (width + ts - 1) // ts
    nty = (height + ts - 1) // ts
    ntv = ntx * nty
    md = means2d.detach().double()
    cd = cov2d.detach().double()
    od = opacities.detach().double()
    if cull:
        t = torch.log(255.0 * od.clamp_min(1e-300))  # alpha >= 1/255  <=>  sigma <= t
        keep = valid & (t > -1e-9) & torch.isfinite(md).all(-1)
        t = t.clamp_min(0.0)
        rx = torch.sqrt(2.0 * t * cd[..., 0].clamp_min(0)) * (1 + 1e-6) + 1e-3
        ry = torch.sqrt(2.0 * t * cd[..., 2].clamp_min(0)) * (1 + 1e-6) + 1e-3
        u, v = md[..., 0], md[..., 1]
        # pixel j is touched iff its centre j + 0.5 lies in [u - rx, u + rx]
        jlo, jhi = torch.ceil(u - rx - 0.5), torch.floor(u + rx - 0.5)
        ilo, ihi = torch.ceil(v - ry - 0.5), torch.floor(v + ry - 0.5)
        keep &= (jhi >= 0) & (jlo <= width - 1) & (ihi >= 0) & (ilo <= height - 1) & (jlo <= jhi) & (ilo <= ihi)
        txlo = (jlo.clamp(0, width - 1) // ts).long()
        txhi = (jhi.clamp(0, width - 1) // ts).long()
        tylo = (ilo.clamp(0, height - 1) // ts).long()
        tyhi = (ihi.clamp(0, height - 1) // ts).long()
    else:
        keep = valid.clone()
        txlo = torch.zeros(V, N, dtype=torch.long, device=device)
        tylo = torch.zeros_like(txlo)
        txhi = torch.full_like(txlo, ntx - 1)
        tyhi = torch.full_like(txlo, nty - 1)
    vi, ni = torch.nonzero(keep, as_tuple=True)
    nx = (txhi - txlo + 1)[vi, ni]
    ny = (tyhi - tylo + 1)[vi, ni]
    counts = nx * ny
    M = int(counts.sum()) if counts.numel() else 0
    n_tiles = V * ntv
    if M == 0:
        z = torch.zeros(n_tiles, dtype=torch.long, device=device)
        return TileLists(ts, ntx, nty, V, N, torch.zeros(0, dtype=torch.long, device=device), z, z.clone())
    owner = torch.repeat_interleave(torch.arange(counts.numel(), device=device), counts)
    first = torch.cumsum(counts, 0) - counts
    local = torch.arange(M, device=device) - first[owner]
    nxo = nx[owner]
    tx = txlo[vi, ni][owner] + local % nxo
    ty = tylo[vi, ni][owner] + local // nxo
    del local, nxo, first
    if cull:
        # drop tiles the ellipse {sigma <= t} misses although its bounding box touches them
        a, b, c = cd[vi, ni].unbind(-1)
        det = (a * c - b * b).clamp_min(1e-300)
        A, B, C = c / det, -b / det, a / det  # conic, per kept Gaussian
        per_g = (md[vi, ni, 0], md[vi, ni, 1], A, B, C, -B / C, -B / A, t[vi, ni] * (1 + 1e-6) + 1e-6)
        hit = _ellipse_hits_tile([x[owner] for x in per_g], tx, ty, ts, width, height)
        owner, tx, ty = owner[hit], tx[hit], ty[hit]
        M = int(owner.numel())
    # depth rank of each Gaussian inside its view (stable: ties keep index order)
    order = torch.sort(depth.detach(), dim=1, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(N, device=device).expand(V, N).contiguous())
    vo = vi[owner]
    tile = vo * ntv + ty * ntx + tx
    key = tile * N + rank[vi, ni][owner]
    key, perm = torch.sort(key)
    ids = (vo * N + ni[owner])[perm]
    del owner, tx, ty, vo, perm
    tile_sorted = key // N
    cnt = torch.bincount(tile_sorted, minlength=n_tiles)
    ends = torch.cumsum(cnt, 0)
    starts = ends - cnt
    return TileLists(ts, ntx, nty, V, N, ids, starts, ends)



def _ellipse_hits_tile(g: list, tx: Tensor, ty: Tensor, ts: int, width: int, height: int) -> Tensor:
    """Whether min over the tile's pixel-centre rectangle of sigma = ½ dᵀ Q d (Q = conic) is <= t.

    ``g`` = per-candidate (u, v, A, B, C, -B/C, -B/A, t with margin). The minimum of a convex quadratic over a
    rectangle is 0 if the centre is inside, else it lies on an edge, where it is a clamped 1-D minimisation.
    Computed in float64 on the candidate (tile, Gaussian) pairs.
    """
    u, v, A, B, C, kx, ky, t = g
    dt = u.dtype
    x0 = (tx * ts).to(dt) + 0.5 - u
    x1 = (torch.clamp((tx + 1) * ts, max=width) - 1).to(dt) + 0.5 - u
    y0 = (ty * ts).to(dt) + 0.5 - v
    y1 = (torch.clamp((ty + 1) * ts, max=height) - 1).to(dt) + 0.5 - v
    inside = (x0 <= 0) & (x1 >= 0) & (y0 <= 0) & (y1 >= 0)
    hA, hC = 0.5 * A, 0.5 * C

    def sigma(x, y):
        return x * (hA * x + B * y) + hC * (y * y)

    best = sigma(x0, torch.minimum(torch.maximum(kx * x0, y0), y1))  # edge x = x0, best y on it
    best = torch.minimum(best, sigma(x1, torch.minimum(torch.maximum(kx * x1, y0), y1)))
    best = torch.minimum(best, sigma(torch.minimum(torch.maximum(ky * y0, x0), x1), y0))
    best = torch.minimum(best, sigma(torch.minimum(torch.maximum(ky * y1, x0), x1), y1))
    return inside | (best <= t)
