"""LGM forward benchmark: big config, random weights, one sample (4 views x 9 x 256 x 256), CPU.

Each measurement runs in its own subprocess so that peak RSS (``ru_maxrss``) belongs to that configuration only.
Prints a table: dtype (storage -> compute), forward wall seconds (best of ``--repeats``, and the first run), CPU
seconds, RSS after building the model and peak RSS; then the PSNR of renders of the bf16 Gaussians against the
fp32 ones (``mvboost_core.render.render``, 4 orbit views between the input views, elevation -15°, radius 3).

    python benchmarks/lgm_bench.py                       # ours: fp32 and bf16, 2 threads
    python benchmarks/lgm_bench.py --reference ~/LGM     # + an upstream 3DTopia/LGM checkout, same weights, same run

Weights come from the fixtures' deterministic per-key rule (``init_lgm_weights_``) rounded to fp16 (the public
checkpoint is fp16), so every subprocess (and the reference) uses identical weights without reading a 1.6 GB file;
"fp16"/"bf16" rows store the weights in that dtype (on CPUs without native fp16/bf16 kernels they compute in fp32). The reference is run with its pure-PyTorch
attention (``XFORMERS_DISABLED=1``) and with stand-ins for the modules it imports but does not need for
``forward_gaussians`` (diff_gaussian_rasterization, kiui's LPIPS, tyro), like the notes' CPU measurement.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _rss_gib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _views(size=256):
    """Deterministic object-on-white views [1,4,size,size,3] (a coloured ellipsoid per view)."""
    import torch

    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    out = []
    for v in range(4):
        inside = (((xx - 0.05 * v) / 0.55) ** 2 + (yy / 0.7) ** 2 < 1).float()[..., None]
        col = torch.tensor([0.8 - 0.15 * v, 0.3 + 0.1 * v, 0.2 + 0.05 * v])
        shade = 0.6 + 0.4 * (1 - (xx**2 + yy**2).clamp(max=1))[..., None]
        out.append(inside * col * shade + (1 - inside))
    return torch.stack(out)[None]


def _our_model(dtype_name: str):
    """LGM big as ``load_lgm(dtype=...)`` gives it on this CPU for an fp16 checkpoint: ``"auto"``, ``"fp32"``,
    ``"fp16"``, ``"bf16"`` through :func:`mvboost_core.precision.choose`, or ``"<storage>:<compute>"`` (e.g.
    ``bf16:bf16``) to force a pair; CPU inference tactics on unless ``LGM_BENCH_TACTICS=0``."""
    import torch

    from mvboost_core import precision
    from mvboost_core.lgm import LGM, init_lgm_weights_
    from mvboost_core.tactics import enable_cpu_inference_tactics

    if ":" in dtype_name:
        s, c = (precision.parse_dtype(n) for n in dtype_name.split(":"))
        prec = precision.Precision(s, c)
    else:
        prec = precision.choose("lgm", "cpu", dtype_name, torch.float16)
    with torch.device("meta"):
        m = LGM("big")
    precision.apply_precision(m, prec)  # still meta: no allocation
    # fp16 values like the public checkpoint, stored directly in each tensor's dtype one tensor at a time (no
    # transient fp16 copy of the model, no freed holes left in the heap)
    init_lgm_weights_(m, round_to=torch.float16)
    m.eval().requires_grad_(False)
    if os.environ.get("LGM_BENCH_TACTICS", "1") != "0":
        enable_cpu_inference_tactics(m)
    return m


def _reference_model(ref_dir: str, dtype_name: str):
    """Build upstream LGM('big') from a checkout with the same weights as ours."""
    import torch

    os.environ["XFORMERS_DISABLED"] = "1"
    sys.path.insert(0, ref_dir)
    stub = types.ModuleType("diff_gaussian_rasterization")
    stub.GaussianRasterizationSettings = stub.GaussianRasterizer = object
    sys.modules.setdefault("diff_gaussian_rasterization", stub)
    try:
        import kiui  # noqa: F401
    except ImportError:
        kiui = types.ModuleType("kiui")
        lp = types.ModuleType("kiui.lpips")
        lp.LPIPS = object
        kiui.lpips = lp
        sys.modules["kiui"], sys.modules["kiui.lpips"] = kiui, lp
    try:
        import tyro  # noqa: F401
    except ImportError:
        tyro = types.ModuleType("tyro")
        tyro.conf = types.SimpleNamespace(subcommand=lambda *a, **k: None, FlagConversionOff=None)
        tyro.extras = types.SimpleNamespace(subcommand_type_from_defaults=lambda *a, **k: None)
        sys.modules["tyro"] = tyro
    real_tensor = torch.tensor

    def cpu_tensor(*a, **k):  # GaussianRenderer.__init__ makes a device="cuda" tensor
        if str(k.get("device", "")).startswith("cuda"):
            k["device"] = "cpu"
        return real_tensor(*a, **k)

    torch.tensor = cpu_tensor
    try:
        from core.models import LGM as RefLGM  # type: ignore
        from core.options import config_defaults  # type: ignore

        opt = config_defaults["big"]
        opt.lambda_lpips = 0.0
        ref = RefLGM(opt)
    finally:
        torch.tensor = real_tensor
    ours = _our_model("fp32")
    missing, unexpected = ref.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected and all("lpips" in k for k in missing), (missing, unexpected)
    del ours
    if dtype_name == "bf16":
        ref = ref.to(torch.bfloat16)
    return ref.eval().requires_grad_(False)


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from mvboost_core.lgm import prepare_lgm_input

    rss_import = _rss_gib()  # torch alone: ~0.5 GiB with the CUDA wheel, ~0.15 GiB with a CPU-only wheel
    t0 = time.perf_counter()
    if args.impl == "ours":
        model = _our_model(args.dtype)
        cdt = model.compute_dtype
    else:
        model = _reference_model(args.reference, args.dtype)
        cdt = next(model.parameters()).dtype
    build_s = time.perf_counter() - t0
    rss_built = _rss_gib()
    x = prepare_lgm_input(_views(), size=256).to(cdt)
    walls, cpus = [], []
    for _ in range(args.repeats):
        w, c = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            g = model.forward_gaussians(x)
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    torch.save(g.float().clone(), args.out)
    print(json.dumps({
        "impl": args.impl, "dtype": args.dtype, "compute": str(cdt).replace("torch.", ""),
        "build_s": build_s, "rss_import_gib": rss_import, "wall": walls, "cpu": cpus, "rss_built_gib": rss_built, "peak_gib": _peak_gib(),
        "finite": bool(torch.isfinite(g).all()),
    }))


def _psnr(a, b) -> float:
    import torch

    mse = torch.mean((a.clamp(0, 1) - b.clamp(0, 1)) ** 2).item()
    return float("inf") if mse == 0 else -10.0 * __import__("math").log10(mse)


def compare(ref_path: Path, test_path: Path, size: int) -> tuple[str, float]:
    import torch

    from mvboost_core.cameras import Cameras
    from mvboost_core.gaussians import Gaussians

    ga = Gaussians.from_lgm(torch.load(ref_path)[0])
    gb = Gaussians.from_lgm(torch.load(test_path)[0])
    try:
        from mvboost_core.render import render
    except ImportError:
        d = (ga.to_lgm() - gb.to_lgm()).abs()
        return "max |Δgaussians| (renderer unavailable)", float(d.max())
    # radius 3 rather than LGM's 1.5: the random network clamps ~9% of its Gaussians onto the [-1,1]^3 boundary,
    # whose corners (1.73 from the centre) would otherwise sit at or behind a radius-1.5 camera
    cams = Cameras.orbit([-15.0] * 4, [45.0 + 90.0 * i for i in range(4)], radius=3.0, width=size, height=size)
    ra, rb = render(ga, cams).rgb, render(gb, cams).rgb
    return f"render PSNR ({len(cams)} views, {size}px, radius 3)", _psnr(ra, rb)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtypes", default="fp32,fp16,bf16")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--render-size", type=int, default=256)
    ap.add_argument("--reference", default=None, help="path of an upstream 3DTopia/LGM checkout to time as well")
    ap.add_argument("--reference-dtypes", default="fp32",
                    help="dtypes for the reference (its bf16 is pure bf16 compute: very slow without avx512_bf16)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--impl", default="ours", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="fp32", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    import torch

    tmp = Path(tempfile.mkdtemp(prefix="lgm_bench_"))
    runs = [("ours", d) for d in args.dtypes.split(",")]
    if args.reference:
        runs = [("reference", d) for d in args.reference_dtypes.split(",")] + runs
    results = []
    for impl, dt in runs:
        out = tmp / f"{impl}_{dt}.pt"
        cmd = [sys.executable, __file__, "--worker", "--impl", impl, "--dtype", dt, "--out", str(out),
               "--threads", str(args.threads), "--repeats", str(args.repeats)]
        if args.reference:
            cmd += ["--reference", str(Path(args.reference).resolve())]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(REPO))
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if p.returncode != 0:
            print(f"{impl} {dt} failed:\n{p.stderr[-3000:]}", file=sys.stderr)
            continue
        r = json.loads(p.stdout.strip().splitlines()[-1])
        r["out"] = str(out)
        results.append(r)
        print(f"done: {impl} {dt} best {min(r['wall']):.1f}s", file=sys.stderr, flush=True)

    load = os.getloadavg()
    from mvboost_core import precision

    print(f"\nLGM big forward, 1 sample, {args.threads} threads, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, CPU class {precision.cpu_info().cpu_class}, "
          f"tactics {'off' if os.environ.get('LGM_BENCH_TACTICS') == '0' else 'on'}, "
          f"load average {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}")
    print("| impl | weights -> compute | forward wall s (best / first) | forward CPU s (best) | RSS after import "
          "torch GiB | RSS after build GiB | peak RSS GiB | peak above import GiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        base = r.get("rss_import_gib", float("nan"))
        print(f"| {r['impl']} | {r['dtype']} -> {r['compute']} | {min(r['wall']):.1f} / {r['wall'][0]:.1f} "
              f"| {min(r['cpu']):.1f} | {base:.2f} | {r['rss_built_gib']:.2f} | {r['peak_gib']:.2f} "
              f"| {r['peak_gib'] - base:.2f} |")
    by = {(r["impl"], r["dtype"]): r for r in results}
    for impl in ("ours", "reference"):
        if (impl, "fp32") in by:
            for dt in sorted({*args.dtypes.split(","), *args.reference_dtypes.split(",")}):
                if dt != "fp32" and (impl, dt) in by:
                    what, val = compare(Path(by[(impl, "fp32")]["out"]), Path(by[(impl, dt)]["out"]), args.render_size)
                    print(f"{impl}: {dt} vs fp32 {what}: {val:.2f}")
    if ("ours", "fp32") in by and ("reference", "fp32") in by:
        a, b = by[("reference", "fp32")], by[("ours", "fp32")]
        d = (torch.load(a["out"]) - torch.load(b["out"])).abs().max().item()
        print(f"ours vs reference fp32: max |Δgaussians| {d:.2e}; "
              f"wall ratio {min(a['wall']) / min(b['wall']):.2f}x, peak RSS ratio {a['peak_gib'] / b['peak_gib']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
