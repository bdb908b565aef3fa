"""Optimize Input Pose benchmark (not a test): the LGM-sized case of issue 14 on CPU, per stage.

Scene: ``make_scene`` of ``benchmarks/render_bench.py`` (65,536 Gaussians, LGM-like). Target: its render at 256²
from the nominal camera moved 4° in elevation, 3° in azimuth and 3 % farther (kiui orbit about the origin, radius
1.5·1.03, fovy 49.1°), with the render's alpha as the mask; the pose stage starts from the nominal camera
(elevation 0, azimuth 0, radius 1.5). LPIPS with a random VGG trunk (``lpips_pretrained=False``: no download; same
cost as the real trunk). Each schedule runs in a fresh subprocess (``--threads`` intra-op threads); peak memory is
that subprocess's VmHWM (peak RSS, torch included). Accuracy: rotation error between the found and the true
camera, camera-centre distance, input-view PSNR / LPIPS (the report's before/after: nominal pose + raw Gaussians vs
found pose + adjusted Gaussians). Prints a markdown table.

    flock /tmp/mvboost-cpu.lock .venv/bin/python benchmarks/pose_bench.py [--threads 2] [--schedules reference,fast]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRUE = {"elevation": 4.0, "azimuth": 3.0, "radius_scale": 1.03}


def _peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_case(schedule: str, threads: int, n: int, size: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from render_bench import make_scene

    from mvboost_core.cameras import Cameras
    from mvboost_core.pose import PoseOptions, optimize_input_view
    from mvboost_core.render import render

    g = make_scene(n)
    cam_true = Cameras.orbit([TRUE["elevation"]], [TRUE["azimuth"]], radius=1.5 * TRUE["radius_scale"],
                             fovy_deg=49.1, width=size, height=size)
    with torch.no_grad():
        out = render(g, cam_true, backend="torch")
    img, alpha = out.rgb[0].clamp(0, 1), out.alpha[0, ..., 0]
    opts = PoseOptions.preset(schedule, lpips_pretrained=False, backend="torch")
    t0 = time.perf_counter()
    _, cam, rep = optimize_input_view(g, img, alpha, None, opts)
    wall = time.perf_counter() - t0
    Vf, Vt = cam.viewmats()[0].double(), cam_true.viewmats()[0].double()
    c = (float(torch.trace(Vf[:3, :3] @ Vt[:3, :3].T)) - 1) / 2
    ang = math.degrees(math.acos(max(-1.0, min(1.0, c))))
    dist = float((torch.linalg.inv(Vf)[:3, 3] - torch.linalg.inv(Vt)[:3, 3]).norm())
    st = rep["stages"]
    return {"schedule": schedule, "wall": wall, "seconds": rep["seconds"], "rss_mib": _peak_rss_mib(),
            "angle_deg": ang, "centre_dist": dist, "psnr_before": rep["psnr_before"], "psnr_after": rep["psnr_after"],
            "lpips_before": rep.get("lpips_before"), "lpips_after": rep.get("lpips_after"), "loss": rep["loss"],
            "search_candidates": st.get("search", {}).get("candidates"),
            "adam": st.get("refine_pose", {}).get("adam_iters"), "lm": st.get("refine_pose", {}).get("lm_iters"),
            "adjust": st.get("adjust", {}).get("iters"), "other_psnr_min": rep["other_views"]["psnr_min"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--schedules", default="reference,fast")
    ap.add_argument("--n", type=int, default=65536)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--case", help=argparse.SUPPRESS)  # child process: one schedule, JSON on stdout
    args = ap.parse_args()
    if args.case:
        print("RESULT " + json.dumps(run_case(args.case, args.threads, args.n, args.size)))
        return
    import torch

    print(f"torch {torch.__version__}, {args.threads} threads, {args.n} Gaussians, {args.size}², "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {os.getloadavg()[0]:.1f}")
    rows = []
    for sch in args.schedules.split(","):
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        p = subprocess.run([sys.executable, __file__, "--case", sch, "--threads", str(args.threads), "--n",
                            str(args.n), "--size", str(args.size)], capture_output=True, text=True, env=env)
        line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
        if p.returncode or not line:
            sys.exit(f"schedule {sch} failed:\n{p.stderr[-3000:]}")
        rows.append(json.loads(line[0][7:]))
        r = rows[-1]
        print(f"  {sch}: {r['wall']:.1f} s, stages {json.dumps({k: round(v, 1) for k, v in r['seconds'].items()})}, "
              f"Adam/LM/adjust {r['adam']}/{r['lm']}/{r['adjust']}, {r['angle_deg']:.4f}°, "
              f"PSNR {r['psnr_after']:.1f} dB, LPIPS {r['lpips_after']:.4f}", flush=True)
    print("\n| schedule | search s | pose refine s | adjust s | total wall s | peak RSS GiB | Adam / LM / adjust "
          "iters | rotation err ° | centre err | PSNR before → after dB | LPIPS before → after | other views "
          "min PSNR dB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        s = r["seconds"]
        print(f"| {r['schedule']} | {s.get('search', 0):.1f} | {s.get('refine_pose', 0):.1f} | {s.get('adjust', 0):.1f} "
              f"| {r['wall']:.1f} | {r['rss_mib'] / 1024:.2f} | {r['adam']} / {r['lm']} / {r['adjust']} | "
              f"{r['angle_deg']:.4f} | {r['centre_dist']:.5f} | {r['psnr_before']:.1f} → {r['psnr_after']:.1f} | "
              f"{r['lpips_before']:.4f} → {r['lpips_after']:.4f} | {r['other_psnr_min']:.1f} |")


if __name__ == "__main__":
    main()
