"""Pure-PyTorch tile compositor (CPU, MPS, CUDA; no compiled code).

Front-to-back alpha compositing with the 3DGS 'classic' rules of ``fixtures/render/README.md`` §2.3-2.5:

* pixel centres at (j + 0.5, i + 0.5); sigma = ½(A dx² + C dy²) + B dx dy;
* alpha = min(alpha_max = 0.99, o·exp(-sigma)); the pair is skipped when alpha < 1/255 or sigma < 0;
* ascending camera z (ties by index); a pixel stops at the first Gaussian whose T' = T(1-alpha) < 1e-4, *before*
  adding it;
* rgb = Σ w c + T·bg, alpha = 1 - T, depth = Σ w z with w = alpha·T.

Work is organised per tile (``tile_size``² pixels) in depth-ordered chunks of ``chunk`` Gaussians. All active
tiles advance one chunk per step (in batches bounded by ``max_step_elems`` (tile, pixel, Gaussian) triples); a
tile is retired as soon as every one of its pixels has terminated or its list is exhausted. Inside a chunk the
transmittance is a cumulative product, and because T only decreases, "T' >= 1e-4" is exactly the set of pairs the
sequential loop composites.

Gradients: :class:`_Composite` is a ``torch.autograd.Function`` whose backward re-runs the same chunk schedule and
evaluates the analytic derivatives of the composited sums (nothing per pair is stored between forward and backward;
only per-pixel totals). With the discrete decisions frozen (order, 1/255 skips, alpha clamp branch, termination)
this is the exact derivative, the same function the fixture's gradient reference differentiates.
:func:`composite_autograd` is the same forward written for plain autograd (the test oracle for the backward).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .tiles import ALPHA_MIN, TileLists

__all__ = ["CompositeConfig", "composite", "composite_autograd", "T_MIN"]

T_MIN = 1e-4


@dataclass(frozen=True)
class CompositeConfig:
    alpha_max: float = 0.99
    chunk: int = 32
    max_step_elems: int = 1 << 22
    background_per_view: bool = True


# feature columns of the packed per-(view, Gaussian) table
_U, _V, _HA, _B, _HC, _O, _Z, _R = 0, 1, 2, 3, 4, 5, 6, 7
_NF = 10


def _pack(means2d: Tensor, conic: Tensor, opac: Tensor, colors: Tensor, depth: Tensor) -> Tensor:
    """[V,N,·] -> [V·N + 1, 10] table (u, v, A/2, B, C/2, o, z, r, g, b); last row = padding (o = 0)."""
    V, N = depth.shape
    feat = torch.cat(
        [
            means2d,
            0.5 * conic[..., 0:1],
            conic[..., 1:2],
            0.5 * conic[..., 2:3],
            opac[..., None],
            depth[..., None],
            colors,
        ],
        dim=-1,
    ).reshape(V * N, _NF)
    pad = torch.zeros(1, _NF, dtype=feat.dtype, device=feat.device)
    return torch.cat([feat, pad], 0)


class _Schedule:
    """Pixel coordinates and the chunk schedule shared by forward and backward."""

    def __init__(self, lists: TileLists, width: int, height: int, dtype, device) -> None:
        self.lists = lists
        ts = lists.tile_size
        self.P = ts * ts
        lx = torch.arange(self.P, device=device) % ts
        ly = torch.arange(self.P, device=device) // ts
        tv = torch.arange(lists.ntx * lists.nty, device=device)
        tx, ty = tv % lists.ntx, tv // lists.ntx
        colx = tx[:, None] * ts + lx[None, :]
        rowy = ty[:, None] * ts + ly[None, :]
        self.px = (colx + 0.5).to(dtype)  # [ntv, P]
        self.py = (rowy + 0.5).to(dtype)
        outside = (colx >= width) | (rowy >= height)  # padding pixels of edge tiles
        self.outside = outside.repeat(lists.n_views, 1)  # [n_tiles, P]
        self.width, self.height = width, height
        self.dummy = lists.n_views * lists.n_gaussians
        self.stats = {"n_pairs": 0, "n_steps": 0}

    def steps(self, chunk: int, max_step_elems: int, done: Tensor):
        """Yield (tile_ids, chunk_offset) batches; ``done`` [n_tiles, P] is read after each yield (mutable)."""
        lists = self.lists
        ptr = lists.starts.clone()
        ends = lists.ends
        per_step = max(1, max_step_elems // (self.P * chunk))
        while True:
            active = (ptr < ends) & ~done.all(dim=1)
            tiles = torch.nonzero(active).squeeze(1)
            if tiles.numel() == 0:
                return
            for tb in torch.split(tiles, per_step):
                yield tb, ptr[tb]
            ptr[tiles] += chunk

    def gather(self, feat: Tensor, tb: Tensor, start: Tensor, chunk: int) -> Tensor:
        """Features of the next ``chunk`` Gaussians of each tile in ``tb``: [Tb, chunk, 10] (padding: o = 0)."""
        lists = self.lists
        idx = start[:, None] + torch.arange(chunk, device=start.device)[None, :]
        inside = idx < lists.ends[tb][:, None]
        gid = lists.ids[idx.clamp_max(lists.ids.numel() - 1)]
        gid = torch.where(inside, gid, torch.full_like(gid, self.dummy))
        return gid, feat[gid]

    def pixels(self, tb: Tensor) -> tuple[Tensor, Tensor]:
        tv = tb % (self.lists.ntx * self.lists.nty)
        return self.px[tv], self.py[tv]

    def to_image(self, x: Tensor) -> Tensor:
        """[n_tiles, P, C] tile layout -> [V, H, W, C] image."""
        lists = self.lists
        ts = lists.tile_size
        C = x.shape[-1]
        img = x.reshape(lists.n_views, lists.nty, lists.ntx, ts, ts, C).permute(0, 1, 3, 2, 4, 5)
        img = img.reshape(lists.n_views, lists.nty * ts, lists.ntx * ts, C)
        return img[:, : self.height, : self.width]

    def to_tiles(self, img: Tensor) -> Tensor:
        """[V, H, W, C] image -> [n_tiles, P, C] tile layout (zero padded)."""
        lists = self.lists
        ts = lists.tile_size
        V, H, W, C = img.shape
        full = img.new_zeros(V, lists.nty * ts, lists.ntx * ts, C)
        full[:, :H, :W] = img
        t = full.reshape(V, lists.nty, ts, lists.ntx, ts, C).permute(0, 1, 3, 2, 4, 5)
        return t.reshape(V * lists.nty * lists.ntx, ts * ts, C)


def _alpha(f: Tensor, px: Tensor, py: Tensor, alpha_max: float):
    """Recompute one chunk: returns dx, dy, e = exp(-sigma), raw = o·e, alpha (0 where skipped)."""
    dx = px[:, :, None] - f[:, None, :, _U]  # [Tb,P,B]
    dy = py[:, :, None] - f[:, None, :, _V]
    sig = dx * (f[:, None, :, _HA] * dx + f[:, None, :, _B] * dy) + f[:, None, :, _HC] * (dy * dy)
    e = torch.exp(-sig)
    raw = f[:, None, :, _O] * e
    a = raw.clamp_max(alpha_max)
    a = torch.where((a >= ALPHA_MIN) & (sig >= 0), a, torch.zeros_like(a))
    return dx, dy, e, raw, a


def _transmittance(a: Tensor, T0: Tensor):
    """Inclusive/exclusive transmittance inside a chunk and the set of composited pairs."""
    one_m = 1.0 - a
    Tin = T0[:, :, None] * torch.cumprod(one_m, dim=2)
    keep = Tin >= T_MIN
    Tex = torch.cat([T0[:, :, None], Tin[:, :, :-1]], dim=2)
    return one_m, Tin, keep, Tex


def _forward_impl(feat: Tensor, sched: _Schedule, bg: Tensor, cfg: CompositeConfig):
    """No-grad forward. Returns tile-layout C [n,P,3], D [n,P], T [n,P] and the number of pairs evaluated."""
    lists = sched.lists
    n, P = lists.n_tiles, sched.P
    dt, dev = feat.dtype, feat.device
    T = torch.ones(n, P, dtype=dt, device=dev)
    C = torch.zeros(n, P, 3, dtype=dt, device=dev)
    D = torch.zeros(n, P, dtype=dt, device=dev)
    done = sched.outside.clone()
    pairs = 0
    for tb, start in sched.steps(cfg.chunk, cfg.max_step_elems, done):
        _, f = sched.gather(feat, tb, start, cfg.chunk)
        px, py = sched.pixels(tb)
        _, _, _, _, a = _alpha(f, px, py, cfg.alpha_max)
        dn = done[tb]
        a = a.masked_fill(dn[:, :, None], 0.0)
        T0 = T[tb]
        one_m, Tin, keep, Tex = _transmittance(a, T0)
        w = torch.where(keep, a * Tex, torch.zeros_like(a))
        C[tb] += torch.bmm(w, f[:, :, _R:_R + 3])
        D[tb] += torch.bmm(w, f[:, :, _Z:_Z + 1]).squeeze(-1)
        T[tb] = torch.where(keep, Tin, T0[:, :, None]).amin(dim=2)
        done[tb] = dn | ~keep[:, :, -1]
        pairs += a.numel()
        sched.stats["n_steps"] += 1
    sched.stats["n_pairs"] += pairs
    return C, D, T, pairs


class _Composite(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conic, opac, colors, depth, bg, sched, cfg):
        feat = _pack(means2d, conic, opac, colors, depth)
        C, D, T, pairs = _forward_impl(feat, sched, bg, cfg)
        V = depth.shape[0]
        ntv = sched.lists.ntx * sched.lists.nty
        bg_t = bg.repeat_interleave(ntv, dim=0)[:, None, :]  # [n,1,3]
        rgb = sched.to_image(C + T[:, :, None] * bg_t)
        alpha = sched.to_image((1.0 - T)[:, :, None])
        dep = sched.to_image(D[:, :, None])
        ctx.save_for_backward(feat, C, D, T, bg)
        ctx.sched, ctx.cfg, ctx.shape = sched, cfg, tuple(depth.shape)
        ctx.pairs = pairs
        return rgb, alpha, dep

    @staticmethod
    def backward(ctx, g_rgb, g_alpha, g_depth):
        feat, Ctot, Dtot, Tf, bg = ctx.saved_tensors
        sched, cfg = ctx.sched, ctx.cfg
        V, N = ctx.shape
        lists = sched.lists
        ntv = lists.ntx * lists.nty
        dt, dev = feat.dtype, feat.device
        n, P = lists.n_tiles, sched.P
        gC = sched.to_tiles(g_rgb if g_rgb is not None else feat.new_zeros(V, sched.height, sched.width, 3))
        gA = sched.to_tiles(g_alpha if g_alpha is not None else feat.new_zeros(V, sched.height, sched.width, 1))[..., 0]
        gD = sched.to_tiles(g_depth if g_depth is not None else feat.new_zeros(V, sched.height, sched.width, 1))[..., 0]
        bg_t = bg.repeat_interleave(ntv, dim=0)[:, None, :]
        grad_bg = (gC * Tf[:, :, None]).reshape(V, ntv * P, 3).sum(1)
        S_tot = (gC * Ctot).sum(-1) + gD * Dtot  # [n,P]
        R_f = Tf * ((gC * bg_t).sum(-1) - gA)  # terms through the final transmittance
        gfeat = torch.zeros(V * N + 1, _NF, dtype=dt, device=dev)
        T = torch.ones(n, P, dtype=dt, device=dev)
        S = torch.zeros(n, P, dtype=dt, device=dev)
        done = sched.outside.clone()
        for tb, start in sched.steps(cfg.chunk, cfg.max_step_elems, done):
            gid, f = sched.gather(feat, tb, start, cfg.chunk)
            px, py = sched.pixels(tb)
            dx, dy, e, raw, a = _alpha(f, px, py, cfg.alpha_max)
            dn = done[tb]
            a = a.masked_fill(dn[:, :, None], 0.0)
            T0 = T[tb]
            one_m, Tin, keep, Tex = _transmittance(a, T0)
            live = keep & (a > 0)
            w = torch.where(live, a * Tex, torch.zeros_like(a))
            gCb = gC[tb]  # [Tb,P,3]
            gDb = gD[tb]
            col = f[:, :, _R:_R + 3]
            z = f[:, :, _Z]
            q = torch.bmm(gCb, col.transpose(1, 2)) + gDb[:, :, None] * z[:, None, :]  # [Tb,P,B]
            Sin = S[tb][:, :, None] + torch.cumsum(w * q, dim=2)
            rest = S_tot[tb][:, :, None] - Sin + R_f[tb][:, :, None]
            ga = Tex * q - rest / one_m
            # d alpha / d(o, sigma) only where the 0.99 clamp is inactive
            unclamped = live & (raw <= cfg.alpha_max)
            ga = torch.where(unclamped, ga, torch.zeros_like(ga))
            g_o = (ga * e).sum(1)  # [Tb,B]
            gs = ga * a  # = -dL/dsigma
            gsdx, gsdy = gs * dx, gs * dy
            sdx, sdy = gsdx.sum(1), gsdy.sum(1)
            g_u = 2 * f[:, :, _HA] * sdx + f[:, :, _B] * sdy
            g_v = f[:, :, _B] * sdx + 2 * f[:, :, _HC] * sdy
            g_hA = -(gsdx * dx).sum(1)  # d sigma / d(A/2) = dx²
            g_B = -(gsdx * dy).sum(1)
            g_hC = -(gsdy * dy).sum(1)
            g_col = torch.bmm(w.transpose(1, 2), gCb)  # [Tb,B,3]
            g_z = (w * gDb[:, :, None]).sum(1)
            gpair = torch.stack([g_u, g_v, g_hA, g_B, g_hC, g_o, g_z], dim=-1)
            gpair = torch.cat([gpair, g_col], dim=-1)  # [Tb,B,10]
            gfeat.index_add_(0, gid.reshape(-1), gpair.reshape(-1, _NF))
            S[tb] = Sin[:, :, -1]
            T[tb] = torch.where(keep, Tin, T0[:, :, None]).amin(dim=2)
            done[tb] = dn | ~keep[:, :, -1]
        g = gfeat[:-1].reshape(V, N, _NF)
        g_means2d = g[..., 0:2]
        g_conic = torch.stack([0.5 * g[..., _HA], g[..., _B], 0.5 * g[..., _HC]], dim=-1)
        g_opac = g[..., _O]
        g_depth_in = g[..., _Z]
        g_colors = g[..., _R:_R + 3]
        return g_means2d, g_conic, g_opac, g_colors, g_depth_in, grad_bg, None, None


def composite(means2d, conic, opac, colors, depth, bg, sched: _Schedule, cfg: CompositeConfig):
    """Differentiable compositing with the hand-written backward. Inputs [V,N,·]; bg [V,3]. Returns images."""
    return _Composite.apply(means2d, conic, opac, colors, depth, bg, sched, cfg)


def composite_autograd(means2d, conic, opac, colors, depth, bg, sched: _Schedule, cfg: CompositeConfig):
    """The same forward written out-of-place for plain autograd (reference for the custom backward)."""
    feat = _pack(means2d, conic, opac, colors, depth)
    lists = sched.lists
    n, P = lists.n_tiles, sched.P
    dt, dev = feat.dtype, feat.device
    T = torch.ones(n, P, dtype=dt, device=dev)
    C = torch.zeros(n, P, 3, dtype=dt, device=dev)
    D = torch.zeros(n, P, dtype=dt, device=dev)
    done = sched.outside.clone()
    for tb, start in sched.steps(cfg.chunk, cfg.max_step_elems, done):
        _, f = sched.gather(feat, tb, start, cfg.chunk)
        px, py = sched.pixels(tb)
        _, _, _, _, a = _alpha(f, px, py, cfg.alpha_max)
        dn = done[tb]
        a = a.masked_fill(dn[:, :, None], 0.0)
        T0 = T[tb]
        one_m, Tin, keep, Tex = _transmittance(a, T0)
        w = torch.where(keep, a * Tex, torch.zeros_like(a))
        C = C.index_add(0, tb, torch.bmm(w, f[:, :, _R:_R + 3]))
        D = D.index_add(0, tb, torch.bmm(w, f[:, :, _Z:_Z + 1]).squeeze(-1))
        T = T.index_copy(0, tb, torch.where(keep, Tin, T0[:, :, None]).amin(dim=2))
        done[tb] = dn | ~keep[:, :, -1].detach()
        sched.stats["n_pairs"] += a.numel()
        sched.stats["n_steps"] += 1
    ntv = lists.ntx * lists.nty
    bg_t = bg.repeat_interleave(ntv, dim=0)[:, None, :]
    rgb = sched.to_image(C + T[:, :, None] * bg_t)
    alpha = sched.to_image((1.0 - T)[:, :, None])
    dep = sched.to_image(D[:, :, None])
    return rgb, alpha, dep
