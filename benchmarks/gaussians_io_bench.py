"""Gaussians file I/O and 3D-metric timings for one LGM-sized object (65,536 Gaussians). Prints a markdown table.

    python benchmarks/gaussians_io_bench.py [--n 65536] [--repeats 3]

Not a test: numbers depend on the machine and its load. Results go to docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mvboost_core.gaussians import Gaussians, load_ply, load_splat, load_spz, save_ply, save_splat, save_spz
from mvboost_core.metrics import chamfer_distance, sample_gaussian_points


def lgm_like(n: int, seed: int = 0) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    means = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=1) * 0.5
    means[: n // 5] *= torch.rand(n // 5, 1, generator=g)
    return Gaussians(
        means=means,
        opacities=torch.sigmoid(torch.randn(n, generator=g) * 2),
        scales=0.1 * torch.nn.functional.softplus(torch.randn(n, 3, generator=g) * 0.5 - 3),
        quats=torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=1),
        colors=torch.rand(n, 3, generator=g),
    )


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=65536)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(2)
    g = lgm_like(args.n)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        for name, save, load, kw in [
            ("ply (lgm, 14 props)", save_ply, load_ply, {"layout": "lgm"}),
            ("ply (full, 62 props)", save_ply, load_ply, {"layout": "full"}),
            ("splat", save_splat, load_splat, {}),
            ("spz v3", save_spz, load_spz, {}),
        ]:
            path = d / f"g.{name.split()[0]}"
            t_save = timed(lambda: save(g, path, **kw), args.repeats)
            t_load = timed(lambda: load(path), args.repeats)
            rows.append((name, os.path.getsize(path), t_save, t_load))
    pts = sample_gaussian_points(g, 16384, seed=0)
    gt = sample_gaussian_points(g, 16384, seed=1)
    t_kd = timed(lambda: chamfer_distance(pts, gt, backend="kdtree"), args.repeats)
    t_bf = timed(lambda: chamfer_distance(pts, gt, backend="torch"), 1)

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, 2 threads, "
          f"N = {args.n}, median of {args.repeats}")
    print("| format | file size | save | load |")
    print("|---|---|---|---|")
    for name, size, ts, tl in rows:
        print(f"| {name} | {size:,} B | {ts * 1000:.0f} ms | {tl * 1000:.0f} ms |")
    print(f"\nChamfer distance, 16,384 × 16,384 points (both directions, exact): scipy KD-tree {t_kd * 1000:.0f} ms, "
          f"torch chunked brute force {t_bf * 1000:.0f} ms")


if __name__ == "__main__":
    main()
