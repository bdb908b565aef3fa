"""Node-level timings for the Gaussians I/O and splat-interop nodes (not a test; prints a Markdown table).

65,536 LGM-like Gaussians (the render benchmark's scene: a wobbly sphere surface of radius ~0.5 plus 20% interior
points, scales 0.1*softplus(N(-3, 0.5)), sigmoid opacities, random colours), run through the ComfyUI node classes
loaded the way ComfyUI loads the pack (tests/comfy_harness.load_extension), CPU, 2 threads.

    .venv/bin/python benchmarks/comfy_nodes_bench.py [--frames 1] [--resolution 256]
"""
from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def scene(core, n: int = 65536, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    d = torch.randn(n, 3, generator=gen)
    d = d / d.norm(dim=1, keepdim=True)
    r = 0.5 + 0.03 * torch.randn(n, 1, generator=gen)
    inner = torch.rand(n, generator=gen) < 0.2
    r = torch.where(inner[:, None], r * torch.rand(n, 1, generator=gen), r)
    q = torch.randn(n, 4, generator=gen)
    return core.gaussians.Gaussians(
        means=d * r, opacities=torch.sigmoid(torch.randn(n, generator=gen)),
        scales=0.1 * torch.nn.functional.softplus(-3 + 0.5 * torch.randn(n, 3, generator=gen)),
        quats=q / q.norm(dim=1, keepdim=True), colors=torch.rand(n, 3, generator=gen))


def timed(fn, repeat: int = 1):
    best = float("inf")
    out = None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=1)
    ap.add_argument("--resolution", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(2)
    work = Path(tempfile.mkdtemp(prefix="mvboost_nodes_bench_"))
    for k in ("OUTPUT", "INPUT", "TEMP"):
        os.environ[f"MVBOOST_{k}_DIR"] = str(work / k.lower())
        (work / k.lower()).mkdir()
    sys.path.insert(0, str(ROOT / "tests"))
    import comfy_harness

    pkg = comfy_harness.load_extension()
    core = importlib.import_module(pkg.__name__ + ".mvboost_core")
    importlib.import_module(pkg.__name__ + ".mvboost_core.splat_convert")
    nodes = pkg.NODE_CLASS_MAPPINGS
    g = scene(core)
    rows = []
    save, load = nodes["MVBoostSaveGaussians"](), nodes["MVBoostLoadGaussians"]()
    for fmt in ("ply", "ply_full", "splat", "spz"):
        dt, out = timed(lambda: save.save(g, f"bench/{fmt}", fmt, preview=False))
        path = work / "output" / out["result"][0]
        rows.append((f"Save Gaussians ({fmt})", dt, f"{path.stat().st_size / 1e6:.2f} MB"))
        dst = work / "input" / path.name
        os.replace(path, dst)
        dt, _ = timed(lambda: load.load(dst.name))
        rows.append((f"Load Gaussians ({fmt})", dt, ""))
    sc = core.splat_convert
    dt, t = timed(lambda: sc.to_splat_tensors(g), repeat=3)
    rows.append(("to_splat_tensors (To ComfyUI Splat math)", dt, ""))
    dt, _ = timed(lambda: sc.from_splat_tensors(t.positions, t.scales, t.rotations, t.opacities, t.sh), repeat=3)
    rows.append(("from_splat_tensors (From ComfyUI Splat math)", dt, ""))
    render = nodes["MVBoostRenderGaussians"]()
    dt, _ = timed(lambda: render.render(g, args.frames, 0.0, 1.5, 49.1, args.resolution, "#FFFFFF"))
    rows.append((f"Render Gaussians ({args.frames} frame(s) @ {args.resolution}²)", dt,
                 f"{dt / args.frames:.2f} s/frame"))
    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs (shared with other jobs), torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d')}, 65,536 Gaussians, 2 threads\n")
    print("| step | seconds | note |\n|---|---|---|")
    for name, dt, note in rows:
        print(f"| {name} | {dt:.3f} | {note} |")


if __name__ == "__main__":
    main()
