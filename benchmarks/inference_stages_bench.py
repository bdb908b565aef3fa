"""Inference stages: pose recovery on the render fixture, Era3D-view rendering for Refine Views, and the selftest.

    .venv/bin/python benchmarks/inference_stages_bench.py [--skip-selftest] [--threads 2]

Prints a table; results go into docs/benchmarks.md ("Inference stages").
"""
from __future__ import annotations

import argparse
import math
import resource
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mvboost_core.cameras import Cameras  # noqa: E402
from mvboost_core.gaussians import Gaussians  # noqa: E402
from mvboost_core.pose import optimize_input_view  # noqa: E402
from mvboost_core.refine import render_era3d_views  # noqa: E402

FIX = ROOT.parent / "shared" / "fixtures" / "render" / "pose_recovery.safetensors"


def _angle(Ra, Rb) -> float:
    c = (float(torch.trace(Ra @ Rb.T)) - 1) / 2
    return math.degrees(math.acos(max(-1.0, min(1.0, c))))


def bench_pose(adam: int, lr: float, lm: int) -> dict:
    from safetensors.torch import load_file

    T = load_file(str(FIX))
    g = Gaussians(T["means"].float(), T["opacities"].float(), T["scales"].float(), T["quats"].float(),
                  T["colors"].float())
    K, V0, Vgt = T["K"], T["viewmat_start"], T["viewmat_gt"]
    cam0 = Cameras(torch.linalg.inv(V0)[None].float(), K[0, 0], K[1, 1], K[0, 2], K[1, 2], 128, 128)
    t = time.perf_counter()
    c0 = time.process_time()
    _, cam, rep = optimize_input_view(g, T["target_rgb"].float(), None, cam0, search=False, adjust=False,
                                      refine_focal=False, pose_iters=adam, pose_lr=lr, lm_iters=lm, resolution=128,
                                      center=(0.0, 0.0, 0.0), backend="torch")
    wall, cpu = time.perf_counter() - t, time.process_time() - c0
    Vf = cam.viewmats()[0].double()
    return {"wall": wall, "cpu": cpu, "angle": _angle(Vf[:3, :3], Vgt[:3, :3]),
            "dist": float((torch.linalg.inv(Vf)[:3, 3] - torch.linalg.inv(Vgt)[:3, 3]).norm()),
            "psnr": rep["psnr_after"]}


def bench_refine_render(n: int = 65536, size: int = 512) -> dict:
    g = torch.Generator().manual_seed(0)
    gs = Gaussians((torch.rand(n, 3, generator=g) - 0.5) * 0.8, torch.rand(n, generator=g) * 0.9 + 0.05,
                   torch.rand(n, 3, generator=g) * 0.01 + 0.002, torch.randn(n, 4, generator=g),
                   torch.rand(n, 3, generator=g))
    t = time.perf_counter()
    render_era3d_views(gs, size=size, crop_size=420 * size / 512, backend="torch")
    return {"wall": time.perf_counter() - t}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-selftest", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("\n| pose recovery (fixture §9) | wall s | CPU s | angle err ° | centre err | PSNR dB |")
    print("|---|---|---|---|---|---|")
    for adam, lr, lm in ((40, 1.5e-2, 4), (60, 1e-2, 3), (60, 1e-2, 0)):
        r = bench_pose(adam, lr, lm)
        print(f"| Adam {adam} (lr {lr}) + LM {lm} | {r['wall']:.1f} | {r['cpu']:.1f} | {r['angle']:.4f} | "
              f"{r['dist']:.5f} | {r['psnr']:.1f} |")
    r = bench_refine_render()
    print(f"\nRefine Views rendering (65,536 Gaussians, 6 colour + 6 normal views at 512²): {r['wall']:.1f} s")
    if not args.skip_selftest:
        from mvboost_core.selftest import run_selftest

        t = time.perf_counter()
        res = run_selftest(log=lambda s: None)
        print(f"\nselftest: {time.perf_counter() - t:.1f} s wall; stages "
              + ", ".join(f"{k} {v:.1f} s" for k, v in res["timings"].items()))
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
