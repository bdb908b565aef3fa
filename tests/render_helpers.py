"""Shared helpers for renderer tests: load a fixture scene and apply the README's F1/F2/G1 checks."""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors import safe_open

INPUTS = ("means", "quats", "scales", "opacities", "colors", "viewmats", "Ks")


def load(path: Path) -> tuple[dict, dict]:
    """(metadata dict, {key: tensor}) of one fixture safetensors file."""
    with safe_open(str(path), "pt") as f:
        meta = json.loads((f.metadata() or {}).get("json", "{}"))
        return meta, {k: f.get_tensor(k) for k in f.keys()}


def scene(fixtures_dir: Path, name: str) -> tuple[dict, dict]:
    return load(fixtures_dir / "render" / f"scene_{name}.safetensors")


def render_scene(meta: dict, T: dict, dtype=torch.float32, **kw):
    from mvboost_core.render import rasterize

    args = [T[k].to(dtype) for k in INPUTS]
    return rasterize(*args, meta["width"], meta["height"], meta["projection"],
                     background=T["background"].to(dtype), **kw)


def f1_failures(out, T) -> list[str]:
    """README §6 F1 (all pixels). Returns the list of violated conditions (empty = pass)."""
    d_rgb = (out.rgb.double() - T["rgb"]).abs()
    d_a = (out.alpha.double() - T["alpha"]).abs()
    d_d = (out.depth.double() - T["depth"]).abs()
    mse = float((d_rgb ** 2).mean())
    psnr = math.inf if mse == 0 else -10 * math.log10(mse)
    share = float((d_rgb.amax(-1) > 0.01).double().mean())
    bad = []
    if psnr < 50:
        bad.append(f"PSNR {psnr:.1f} dB < 50")
    if share > 0.01:
        bad.append(f"{share:.2%} px with |drgb| > 0.01")
    if d_rgb.max() > 0.15:
        bad.append(f"max|drgb| {float(d_rgb.max()):.3g} > 0.15")
    if d_a.max() > 0.15:
        bad.append(f"max|dalpha| {float(d_a.max()):.3g} > 0.15")
    if d_d.max() > 0.5:
        bad.append(f"max|ddepth| {float(d_d.max()):.3g} > 0.5")
    return bad


def f2_errors(out, T, mask=None) -> tuple[float, float, float]:
    """README §6 F2: max |difference| of (rgb, alpha, depth) on ``mask`` (default ``stable_mask``)."""
    m = (T["stable_mask"] if mask is None else mask).bool()
    errs = []
    for k in ("rgb", "alpha", "depth"):
        d = (getattr(out, k).double() - T[k]).abs()
        errs.append(float(torch.where(m, d, torch.zeros_like(d)).max()))
    return tuple(errs)


def f2_ok(errs, dtype) -> bool:
    tol = (1e-4, 1e-4, 5e-4) if dtype == torch.float32 else (1e-9, 1e-9, 1e-9)
    return all(e <= t for e, t in zip(errs, tol))


def sequential_reference(proj, opacities, colors, background, width, height, alpha_max=0.99):
    """Independent oracle: the spec's per-pixel loop (README §2.3-2.5) written literally, vectorised over pixels
    only (a Python loop over Gaussians in depth order). float64; for small scenes. ``proj`` from ``project()``."""
    V, N = proj.depth.shape
    jj, ii = torch.meshgrid(torch.arange(width, dtype=torch.float64), torch.arange(height, dtype=torch.float64),
                            indexing="xy")
    px, py = jj.reshape(-1) + 0.5, ii.reshape(-1) + 0.5
    rgb, alpha, depth = [], [], []
    for v in range(V):
        T = torch.ones_like(px)
        C = torch.zeros(px.numel(), 3, dtype=torch.float64)
        D = torch.zeros_like(px)
        live = torch.ones_like(px, dtype=torch.bool)
        order = torch.sort(proj.depth[v], stable=True).indices
        for n in order.tolist():
            if not bool(proj.valid[v, n]):
                continue
            u, w_ = proj.means2d[v, n].double()
            A, B, Cc = proj.conic[v, n].double()
            dx, dy = px - u, py - w_
            sig = 0.5 * (A * dx * dx + Cc * dy * dy) + B * dx * dy
            a = torch.clamp(float(opacities[n]) * torch.exp(-sig), max=alpha_max)
            use = live & (a >= 1 / 255) & (sig >= 0)
            Tn = T * (1 - a)
            stop = use & (Tn < 1e-4)
            live = live & ~stop
            use = use & ~stop
            wgt = torch.where(use, a * T, torch.zeros_like(a))
            C += wgt[:, None] * colors[n].double()
            D += wgt * proj.depth[v, n].double()
            T = torch.where(use, Tn, T)
        rgb.append((C + T[:, None] * background.double()).reshape(height, width, 3))
        alpha.append((1 - T).reshape(height, width, 1))
        depth.append(D.reshape(height, width, 1))
    return torch.stack(rgb), torch.stack(alpha), torch.stack(depth)
