"""Renderer benchmark (not a test): LGM-like 65,536 Gaussians on CPU, torch backend.

Scene (issue 2 §4): the surface of a wobbly sphere of radius ~0.5 plus 20 % interior points, scales
0.1·softplus(N(-3, 0.5)) per axis, random rotations, sigmoid(N(0,1)) opacities, random colours; kiui orbit cameras at
radius 1.5, fovy 49.1°, white background. Cases: 512² × 1 view and 256² × 4 views, forward and forward+backward
(loss = rgb.mean() + alpha.mean() + depth.mean(), gradients w.r.t. every Gaussian parameter and c2w).

Each case runs in a fresh subprocess (1 warm-up + ``--repeats`` timed runs; median wall time, best wall time and
median CPU time summed over threads); peak memory is that subprocess's VmHWM (peak RSS, includes the ~0.3 GB of
torch itself). "pairs evaluated" counts every (pixel, Gaussian) pair the forward pass computed alpha for, chunk
padding included. Prints a markdown table.

    python benchmarks/render_bench.py [--threads 2] [--repeats 3] [--n 65536]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time


def make_scene(n: int = 65536, seed: int = 0):
    import torch
    import torch.nn.functional as F

    from mvboost_core.gaussians import Gaussians

    g = torch.Generator().manual_seed(seed)
    n_in = n // 5
    n_surf = n - n_in
    d = torch.randn(n_surf, 3, generator=g)
    d = d / d.norm(dim=-1, keepdim=True)
    theta = torch.atan2(d[:, 1], d[:, 0])
    phi = torch.acos(d[:, 2].clamp(-1, 1))
    r = 0.5 * (1 + 0.08 * torch.sin(3 * theta) * torch.sin(2 * phi) + 0.05 * torch.cos(5 * phi))
    surf = d * r[:, None]
    inner = torch.randn(n_in, 3, generator=g)
    inner = inner / inner.norm(dim=-1, keepdim=True) * 0.45 * torch.rand(n_in, 1, generator=g) ** (1 / 3)
    means = torch.cat([surf, inner])
    scales = 0.1 * F.softplus(-3 + 0.5 * torch.randn(n, 3, generator=g))
    quats = torch.randn(n, 4, generator=g)
    quats = quats / quats.norm(dim=-1, keepdim=True)
    opac = torch.sigmoid(torch.randn(n, generator=g))
    colors = torch.rand(n, 3, generator=g)
    return Gaussians(means=means, opacities=opac, scales=scales, quats=quats, colors=colors)


def _peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(res: int, views: int, backward: bool, n: int, repeats: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from mvboost_core.cameras import Cameras
    from mvboost_core.render import render

    gs = make_scene(n)
    azims = [0.0, 90.0, 180.0, 270.0][:views] if views <= 4 else [360.0 * i / views for i in range(views)]
    cams = Cameras.orbit([0.0] * views, azims, radius=1.5, fovy_deg=49.1, width=res, height=res)
    times, cpu, info = [], [], {}
    for i in range(repeats + 1):
        if backward:
            g = gs.clone()
            for t in (g.means, g.opacities, g.scales, g.quats, g.colors):
                t.requires_grad_(True)
            c2w = cams.c2w.clone().requires_grad_(True)
            cam = cams.with_c2w(c2w)
        else:
            g, cam = gs, cams
        t0 = time.perf_counter()
        c0 = time.process_time()
        if backward:
            out = render(g, cam, backend="torch")
            loss = out.rgb.mean() + out.alpha.mean() + out.depth.mean()
            loss.backward()
        else:
            with torch.no_grad():
                out = render(g, cam, backend="torch")
        dt = time.perf_counter() - t0
        dc = time.process_time() - c0
        if i > 0:
            times.append(dt)
            cpu.append(dc)
        info = dict(out.info)
        cover = float((out.alpha > 0.5).float().mean())
    return {
        "res": res, "views": views, "backward": backward, "median_s": statistics.median(times),
        "min_s": min(times), "cpu_s": statistics.median(cpu), "peak_rss_mib": _peak_rss_mib(), "pairs": info.get("n_pairs", 0),
        "intersections": info.get("n_intersections", 0), "coverage": cover,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n", type=int, default=65536)
    ap.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    ap.add_argument("--only", help="comma list of cases, e.g. 512x1:f,512x1:fb")
    args = ap.parse_args()
    if args.case:
        res, views, mode = args.case.replace("x", ":").split(":")
        r = run_case(int(res), int(views), mode == "fb", args.n, args.repeats, args.threads)
        print("RESULT " + json.dumps(r))
        return
    cases = ["512x1:f", "512x1:fb", "256x4:f", "256x4:fb"]
    if args.only:
        cases = args.only.split(",")
    rows = []
    for c in cases:
        cmd = [sys.executable, os.path.abspath(__file__), "--case", c, "--n", str(args.n),
               "--repeats", str(args.repeats), "--threads", str(args.threads)]
        p = subprocess.run(cmd, capture_output=True, text=True)
        line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
        if p.returncode != 0 or not line:
            print(f"case {c} failed:\n{p.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(line[0][7:]))
    import torch

    print(f"torch {torch.__version__}, {args.threads} threads, N = {args.n}, load avg {os.getloadavg()[0]:.1f}")
    print()
    print("| case | pass | median wall (s) | best wall (s) | CPU time (s, all threads) | peak RSS (MiB) "
          "| (pixel, Gaussian) pairs evaluated | tile intersections |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        mode = "forward+backward" if r["backward"] else "forward"
        print(f"| {r['res']}² × {r['views']} view{'s' if r['views'] > 1 else ''} | {mode} | {r['median_s']:.2f} | "
              f"{r['min_s']:.2f} | {r['cpu_s']:.2f} | {r['peak_rss_mib']:.0f} | {r['pairs'] / 1e6:.1f} M | {r['intersections']:,} |")


if __name__ == "__main__":
    main()
