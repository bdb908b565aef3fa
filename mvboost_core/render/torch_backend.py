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

Two implementations of the same forward:

* :func:`composite` (default): per chunk, log(alpha) = log o - sigma is one batched matmul of tile-local pixel
  monomials (x², xy, y², x, y, 1) with per-(tile, Gaussian) coefficients, followed by a handful of fused passes
  (exp, thresholds, cumprod). It is a ``torch.autograd.Function`` whose backward re-runs the same chunk schedule and
  evaluates the analytic derivatives of the composited sums: nothing per pair is kept between forward and backward,
  only per-pixel totals, so memory does not grow with the number of pairs. With the discrete decisions frozen
  (order, 1/255 skips, alpha clamp branch, termination) this is the exact derivative, the function the fixture's
  gradient reference differentiates. The only deviation from the literal spec: the "sigma < 0" skip is not tested
  (it cannot happen for a positive-definite conic; rounding can make sigma = -1e-7 at a Gaussian's centre, and
  skipping there would be wrong).
* :func:`composite_autograd`: the direct transcription (dx, dy, sigma, alpha per pair) differentiated by plain
  autograd. Slower and memory-hungry; it is the readable twin and the test oracle for the hand-written backward.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .tiles import ALPHA_MIN, TileLists

__all__ = ["CompositeConfig", "composite", "composite_autograd", "T_MIN"]

T_MIN = 1e-4


@dataclass(frozen=True)
class CompositeConfig:
    """alpha clamp, Gaussians per tile per step, bound on (tile, pixel, Gaussian) triples per step."""

    alpha_max: float = 0.99
    chunk: int = 32
    max_step_elems: int = 1 << 22


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


# ------------------------------------------------------------------------------------------ fast path
# In tile-local pixel coordinates (x, y) (origin at the tile centre) the log-alpha of a pair is a quadratic
#   s = log o - sigma = phi(x, y) . W,   phi = (x², xy, y², x, y, 1),
#   W = (-A/2, -B, -C/2, A u' + B v', B u' + C v', log o - (A u'²/2 + B u' v' + C v'²/2)),
# with (u', v') the mean relative to the tile centre. One batched matmul [P,6] x [6,B] per tile therefore
# evaluates a whole chunk, and the backward gets dL/dW from another matmul. Tile-local coordinates keep every
# term of the expansion of the order of sigma itself, so float32 stays accurate (the F2 tests check it).

_FU, _FV, _FA, _FB, _FC, _FLO, _FR, _FZ = 0, 1, 2, 3, 4, 5, 6, 9
_LOG_ALPHA_MIN = float(torch.log(torch.tensor(ALPHA_MIN, dtype=torch.float64)))


def _pack_fast(means2d: Tensor, conic: Tensor, opac: Tensor, colors: Tensor, depth: Tensor) -> Tensor:
    """[V,N,·] -> [V·N + 1, 10] table (u, v, A, B, C, log o, r, g, b, z); last row = padding (log o = -1e4)."""
    V, N = depth.shape
    logo = torch.log(opac.clamp_min(1e-30))
    feat = torch.cat([means2d, conic, logo[..., None], colors, depth[..., None]], dim=-1).reshape(V * N, _NF)
    pad = torch.zeros(1, _NF, dtype=feat.dtype, device=feat.device)
    pad[0, _FLO] = -1e4
    return torch.cat([feat, pad], 0)


class _Fast:
    """Shared per-chunk evaluation for the fast forward and backward."""

    def __init__(self, sched: _Schedule, feat: Tensor, cfg: CompositeConfig) -> None:
        self.sched, self.feat, self.cfg = sched, feat, cfg
        lists = sched.lists
        ts = lists.tile_size
        dt, dev = feat.dtype, feat.device
        loc = torch.arange(ts, device=dev, dtype=dt) + 0.5 - ts / 2.0
        x = loc.repeat(ts)  # pixel p = ly * ts + lx
        y = loc.repeat_interleave(ts)
        self.phi = torch.stack([x * x, x * y, y * y, x, y, torch.ones_like(x)], dim=1)  # [P,6]
        tv = torch.arange(lists.ntx * lists.nty, device=dev)
        self.tcx = ((tv % lists.ntx) * ts + ts / 2.0).to(dt)  # tile centres
        self.tcy = ((tv // lists.ntx) * ts + ts / 2.0).to(dt)
        self.ntv = lists.ntx * lists.nty
        # F.threshold keeps x > th: use the largest value below the limit so that x >= limit is kept
        self.th_alpha = _below(ALPHA_MIN, dt)
        self.th_T = _below(T_MIN, dt)

    def chunk(self, tb: Tensor, start: Tensor):
        """Evaluate the next chunk of tiles ``tb``: returns gid, f, (u', v'), s, raw alpha, alpha."""
        gid, f = self.sched.gather(self.feat, tb, start, self.cfg.chunk)
        tv = tb % self.ntv
        up = f[:, :, _FU] - self.tcx[tv][:, None]  # [Tb,B]
        vp = f[:, :, _FV] - self.tcy[tv][:, None]
        A, Bc, Cc = f[:, :, _FA], f[:, :, _FB], f[:, :, _FC]
        Au_Bv = A * up + Bc * vp
        Bu_Cv = Bc * up + Cc * vp
        const = f[:, :, _FLO] - 0.5 * (up * Au_Bv + vp * Bu_Cv)
        W = torch.stack([-0.5 * A, -Bc, -0.5 * Cc, Au_Bv, Bu_Cv, const], dim=1)  # [Tb,6,B]
        s = torch.bmm(self.phi.expand(tb.numel(), -1, -1), W)  # [Tb,P,B] log(o·exp(-sigma))
        raw = torch.exp_(s)
        # alpha < 1/255 -> 0 (skipped), then the alpha_max clamp; one fused pass each
        a = F.threshold(raw, self.th_alpha, 0.0).clamp_max_(self.cfg.alpha_max)
        return gid, f, up, vp, raw, a


def _below(x: float, dtype) -> float:
    """The largest ``dtype`` number strictly below ``dtype(x)`` (as a Python float)."""
    t = torch.tensor(x, dtype=dtype)
    return float(torch.nextafter(t, torch.tensor(-float("inf"), dtype=dtype)))


_BIG = 1e30


def _fast_step(fast: "_Fast", a: Tensor, T0: Tensor):
    """Transmittance bookkeeping of one chunk (T0 = 0 for finished pixels).

    Returns one_m = 1 - alpha, Tin (inclusive T after each pair), TinK (Tin where the pair is composited, else 0),
    w = alpha·T_before for composited pairs, T_new (T after the chunk) and ``ended`` (pixel terminated here).
    """
    one_m = torch.rsub(a, 1.0)
    Tin = torch.cumprod(one_m, dim=2).mul_(T0[:, :, None])
    TinK = F.threshold(Tin, fast.th_T, 0.0)  # composited <=> T' >= 1e-4 (T only decreases: a prefix)
    w = TinK * a / one_m  # alpha·T_before = alpha·T'/(1-alpha)
    T_new = torch.minimum(F.threshold(Tin, fast.th_T, _BIG).amin(dim=2), T0)
    ended = Tin[:, :, -1] < T_MIN
    return one_m, Tin, TinK, w, T_new, ended


def _forward_impl(feat: Tensor, sched: _Schedule, bg: Tensor, cfg: CompositeConfig):
    """No-grad forward. Returns tile-layout CD [n,P,4] (rgb sum, depth sum), T [n,P], pairs evaluated."""
    lists = sched.lists
    n, P = lists.n_tiles, sched.P
    dt, dev = feat.dtype, feat.device
    fast = _Fast(sched, feat, cfg)
    T = torch.ones(n, P, dtype=dt, device=dev)
    CD = torch.zeros(n, P, 4, dtype=dt, device=dev)
    done = sched.outside.clone()
    pairs = 0
    for tb, start in sched.steps(cfg.chunk, cfg.max_step_elems, done):
        gid, f, _, _, raw, a = fast.chunk(tb, start)
        dn = done[tb]
        T_old = T[tb]
        T0 = T_old.masked_fill(dn, 0.0)  # finished pixels: T0 = 0 -> nothing kept
        one_m, Tin, TinK, w, T_new, ended = _fast_step(fast, a, T0)
        CD[tb] += torch.bmm(w, f[:, :, _FR:_FR + 4])  # (r, g, b, z)
        T[tb] = torch.where(dn, T_old, T_new)
        done[tb] = dn | ended
        pairs += a.numel()
        sched.stats["n_steps"] += 1
    sched.stats["n_pairs"] += pairs
    return CD, T, pairs


class _Composite(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conic, opac, colors, depth, bg, sched, cfg):
        feat = _pack_fast(means2d, conic, opac, colors, depth)
        CD, T, pairs = _forward_impl(feat, sched, bg, cfg)
        ntv = sched.lists.ntx * sched.lists.nty
        bg_t = bg.repeat_interleave(ntv, dim=0)[:, None, :]  # [n,1,3]
        rgb = sched.to_image(CD[:, :, :3] + T[:, :, None] * bg_t)
        alpha = sched.to_image((1.0 - T)[:, :, None])
        dep = sched.to_image(CD[:, :, 3:4])
        ctx.save_for_backward(feat, CD, T, bg, opac)
        ctx.sched, ctx.cfg, ctx.shape = sched, cfg, tuple(depth.shape)
        return rgb, alpha, dep

    @staticmethod
    def backward(ctx, g_rgb, g_alpha, g_depth):
        feat, CDtot, Tf, bg, opac = ctx.saved_tensors
        sched, cfg = ctx.sched, ctx.cfg
        V, N = ctx.shape
        lists = sched.lists
        ntv = lists.ntx * lists.nty
        dt, dev = feat.dtype, feat.device
        n, P = lists.n_tiles, sched.P
        H, W = sched.height, sched.width
        z3 = feat.new_zeros(V, H, W, 3)
        z1 = feat.new_zeros(V, H, W, 1)
        gCD = torch.cat([sched.to_tiles(g_rgb if g_rgb is not None else z3),
                         sched.to_tiles(g_depth if g_depth is not None else z1)], dim=-1)  # [n,P,4]
        gA = sched.to_tiles(g_alpha if g_alpha is not None else z1)[..., 0]
        bg_t = bg.repeat_interleave(ntv, dim=0)[:, None, :]
        grad_bg = (gCD[:, :, :3] * Tf[:, :, None]).reshape(V, ntv * P, 3).sum(1)
        S_tot = (gCD * CDtot).sum(-1)  # [n,P] Σ_k w_k q_k
        R_f = S_tot + Tf * ((gCD[:, :, :3] * bg_t).sum(-1) - gA)  # everything behind (and through) T_final
        fast = _Fast(sched, feat, cfg)
        phiT = fast.phi.t().contiguous()  # [6,P]
        gfeat = torch.zeros(V * N + 1, _NF, dtype=dt, device=dev)
        T = torch.ones(n, P, dtype=dt, device=dev)
        S = torch.zeros(n, P, dtype=dt, device=dev)
        done = sched.outside.clone()
        for tb, start in sched.steps(cfg.chunk, cfg.max_step_elems, done):
            gid, f, up, vp, raw, a = fast.chunk(tb, start)
            dn = done[tb]
            T_old = T[tb]
            T0 = T_old.masked_fill(dn, 0.0)
            one_m, Tin, TinK, w, T_new, ended = _fast_step(fast, a, T0)
            colz = f[:, :, _FR:_FR + 4]  # [Tb,B,4] (r, g, b, z)
            gb = gCD[tb]  # [Tb,P,4]
            q = torch.bmm(gb, colz.transpose(1, 2))  # [Tb,P,B] dL/d(w)
            Sin = torch.cumsum(w * q, dim=2).add_(S[tb][:, :, None])
            rest = R_f[tb][:, :, None] - Sin  # Σ_{j>k} w_j q_j + T_f (gC·bg - gA)
            ga = (TinK * q - rest).div_(one_m)  # dL/d alpha_k (= T_before q - rest/(1-alpha)) where composited
            # alpha = exp(s) where composited and not clamped: dL/ds = ga·alpha; else no dependence on s
            gs = torch.where((TinK > 0) & (a == raw), ga.mul_(a), torch.zeros_like(a))
            G = torch.bmm(phiT.expand(tb.numel(), -1, -1), gs)  # [Tb,6,B] dL/dW
            g_colz = torch.bmm(w.transpose(1, 2), gb)  # [Tb,B,4]
            A, Bc, Cc = f[:, :, _FA], f[:, :, _FB], f[:, :, _FC]
            G0, G1, G2, G3, G4, G5 = G.unbind(1)
            g_A = -0.5 * G0 + up * G3 - 0.5 * up * up * G5
            g_B = -G1 + vp * G3 + up * G4 - up * vp * G5
            g_C = -0.5 * G2 + vp * G4 - 0.5 * vp * vp * G5
            g_u = A * G3 + Bc * G4 - (A * up + Bc * vp) * G5
            g_v = Bc * G3 + Cc * G4 - (Bc * up + Cc * vp) * G5
            gpair = torch.cat([torch.stack([g_u, g_v, g_A, g_B, g_C, G5], dim=-1), g_colz], dim=-1)  # feat order
            gfeat.index_add_(0, gid.reshape(-1), gpair.reshape(-1, _NF))
            S[tb] = torch.where(dn, S[tb], Sin[:, :, -1])
            T[tb] = torch.where(dn, T_old, T_new)
            done[tb] = dn | ended
        g = gfeat[:-1].reshape(V, N, _NF)
        g_opac = torch.where(opac > 0, g[..., _FLO] / opac.clamp_min(1e-30), torch.zeros_like(opac))
        return g[..., 0:2], g[..., _FA:_FC + 1], g_opac, g[..., _FR:_FR + 3], g[..., _FZ], grad_bg, None, None


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
