"""Era3D benchmark (not a test): the full-size multi-view UNet (released config, random weights) on CPU.

Cases (each in a fresh subprocess; peak memory = that process's VmHWM, i.e. peak RSS incl. torch itself):

* ``unet_fp32_b12`` / ``unet_bf16_b12``: one UNet forward at batch 12 (one object, no CFG: 6 normal + 6 colour
  views), 8×64×64 latents, t=976, 77 prompt tokens, 2048-d class labels.
* ``step_fp32_b24``: one full sampling step with CFG: UNet at batch 24 ``[n_u, n_c, c_u, c_c]`` + guidance +
  DDIM v-prediction update (diffusers ``DDIMScheduler`` from the released scheduler config).
* ``vae_decode12_fp32``: SD-2.1 VAE (``AutoencoderKL`` from ``fixtures/era3d/real_configs/vae/config.json``, random
  weights) decoding 12 latents 4×64×64 → 12×3×512×512, one image at a time (what a pipeline should do on CPU).
* ``probe_bf16``: real-size level-0 ops (3×3 conv 320→320 at 64×64, Linear 320→2560, joint SDPA) in bf16 vs fp32 —
  a quick way to see whether this CPU has usable native bf16 before running a full bf16 forward.

Weights are materialised cheaply: the model is built on the meta device, ``to_empty`` on CPU, then filled in place
(normal with std 1/√fan_in for matrices, 1 for norm scales, 0 for biases) so activations stay finite.

    python benchmarks/era3d_bench.py [--threads 2] [--cases unet_fp32_b12,unet_bf16_b12] [--fixtures DIR]

A full-size forward takes minutes of CPU: run this once, not in a loop. On CPUs without native bf16
(no avx512_bf16/AMX; ``probe_bf16`` shows bf16 convolutions 15-250× slower than fp32) ``unet_bf16_b12`` runs the way
``Era3DUNet.from_folder`` does there: bf16 weights, float32 compute; ``--force-bf16`` runs pure bf16 compute.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FIXTURES = Path(os.environ.get("MVBOOST_FIXTURES", REPO.parent / "shared" / "fixtures"))
ALL_CASES = ["probe_bf16", "unet_fp32_b12", "unet_bf16_b12", "step_fp32_b24", "vae_decode12_fp32"]


def _rss_mib(field: str = "VmHWM") -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _fill_random_(model, seed: int = 0) -> None:
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                fan_in = math.prod(p.shape[1:])
                # fill in float32 chunks to keep the generator's temporary small, then copy into p's dtype
                flat = p.view(-1)
                step = 1 << 22
                for i in range(0, flat.numel(), step):
                    n = min(step, flat.numel() - i)
                    flat[i:i + n].copy_(torch.randn(n, generator=g) / math.sqrt(fan_in))
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.fill_(1.0)


def _build_unet(fixtures: Path, dtype, pure_half: bool = False):
    import torch

    from mvboost_core.era3d import Era3DUNet, auto_dtype

    cfg = json.loads((fixtures / "era3d" / "unet_config_512_6view.json").read_text())
    unet = Era3DUNet.from_config(cfg, device="meta").to(dtype=dtype)
    unet = unet.to_empty(device="cpu")
    _fill_random_(unet)
    unet.eval().requires_grad_(False)
    if dtype != torch.float32 and not pure_half and auto_dtype("cpu") == torch.float32:
        unet.set_compute_dtype(torch.float32)  # what from_folder does on CPUs without native bf16
    return unet


def _unet_inputs(batch: int, dtype):
    import torch

    g = torch.Generator().manual_seed(1)
    sample = torch.randn(batch, 8, 64, 64, generator=g).to(dtype)
    ehs = torch.randn(batch, 77, 1024, generator=g).to(dtype)
    cls = torch.randn(batch, 2048, generator=g).to(dtype)
    return sample, ehs, cls


def run_case(case: str, fixtures: Path, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    res: dict = {"case": case}
    if case == "probe_bf16":
        import torch.nn.functional as F

        out = {}
        for dt in (torch.float32, torch.bfloat16):
            x = torch.randn(1, 320, 16, 16).to(dt)
            w = torch.randn(320, 320, 3, 3).to(dt) * 0.02
            a = torch.randn(4096, 320).to(dt)
            lw = torch.randn(2560, 320).to(dt) * 0.05
            q = torch.randn(1, 5, 2048, 64).to(dt)
            times = {}
            for name, fn in (("conv3x3_320_16x16", lambda: F.conv2d(x, w, padding=1)),
                             ("linear_4096x320x2560", lambda: F.linear(a, lw)),
                             ("sdpa_5h_2048", lambda: F.scaled_dot_product_attention(q, q, q))):
                fn()
                t = time.perf_counter()
                fn()
                times[name] = time.perf_counter() - t
            out[str(dt).replace("torch.", "")] = times
        res["probe"] = out
        res["conv_slowdown_bf16"] = out["bfloat16"]["conv3x3_320_16x16"] / out["float32"]["conv3x3_320_16x16"]
    elif case in ("unet_fp32_b12", "unet_bf16_b12", "step_fp32_b24"):
        dtype = torch.bfloat16 if "bf16" in case else torch.float32
        batch = 24 if "b24" in case else 12
        t0 = time.perf_counter()
        unet = _build_unet(fixtures, dtype, pure_half=os.environ.get("ERA3D_BENCH_PURE_HALF") == "1")
        res["build_s"] = time.perf_counter() - t0
        res["weights_dtype"], res["compute_dtype"] = str(unet.dtype), str(unet.compute_dtype)
        res["rss_after_build_mib"] = _rss_mib("VmRSS")
        sample, ehs, cls = _unet_inputs(batch, dtype)
        with torch.inference_mode():
            t0, c0 = time.perf_counter(), time.process_time()
            if case == "step_fp32_b24":
                from diffusers import DDIMScheduler

                sched = DDIMScheduler.from_config(
                    json.loads((fixtures / "era3d" / "scheduler_config.json").read_text()))
                sched.set_timesteps(40)
                t = sched.timesteps[0]
                latents = sample[:12, :4]
                xin = torch.cat([latents[:6], latents[:6], latents[6:], latents[6:]])
                v, pose = unet(torch.cat([xin, sample[:, 4:]], dim=1), t, ehs, cls)
                nu, nc, cu, cc = v.chunk(4)
                uncond, cond = torch.cat([nu, cu]), torch.cat([nc, cc])
                guided = uncond + 3.0 * (cond - uncond)
                latents = sched.step(guided, t, latents, eta=1.0, generator=torch.Generator().manual_seed(0)).prev_sample
                res["finite"] = bool(torch.isfinite(latents).all())
                res["timestep"] = int(t)
            else:
                out, pose = unet(sample, 976, ehs, cls)
                res["finite"] = bool(torch.isfinite(out).all())
            res["forward_s"] = time.perf_counter() - t0
            res["forward_cpu_s"] = time.process_time() - c0
        res["pose_shape"] = list(pose.shape)
    elif case == "vae_decode12_fp32":
        from diffusers import AutoencoderKL

        cfg = json.loads((fixtures / "era3d" / "real_configs" / "vae" / "config.json").read_text())
        t0 = time.perf_counter()
        with torch.device("meta"):
            vae = AutoencoderKL.from_config(cfg)
        vae = vae.to_empty(device="cpu")
        _fill_random_(vae)
        vae.eval().requires_grad_(False)
        res["build_s"] = time.perf_counter() - t0
        lat = torch.randn(12, 4, 64, 64, generator=torch.Generator().manual_seed(2))
        with torch.inference_mode():
            t0, c0 = time.perf_counter(), time.process_time()
            imgs = [vae.decode(lat[i:i + 1] / 0.18215).sample for i in range(12)]
            res["forward_s"] = time.perf_counter() - t0
            res["forward_cpu_s"] = time.process_time() - c0
        res["finite"] = all(bool(torch.isfinite(i).all()) for i in imgs)
        res["out_shape"] = [12] + list(imgs[0].shape[1:])
    else:
        raise SystemExit(f"unknown case {case!r}; choose from {ALL_CASES}")
    res["peak_rss_mib"] = _rss_mib("VmHWM")
    return res


def _load_avg() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cases", default="probe_bf16,unet_fp32_b12,unet_bf16_b12,step_fp32_b24,vae_decode12_fp32")
    ap.add_argument("--fixtures", type=Path, default=DEFAULT_FIXTURES)
    ap.add_argument("--force-bf16", action="store_true")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args._child:
        print(json.dumps(run_case(args._child, args.fixtures, args.threads)))
        return

    import torch

    print(f"# Era3D benchmark  torch {torch.__version__}  python {platform.python_version()}  "
          f"cpu {platform.processor() or platform.machine()} ({os.cpu_count()} cores)  threads {args.threads}  "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    rows = []
    bf16_ok = True
    for case in [c.strip() for c in args.cases.split(",") if c.strip()]:
        env = dict(os.environ)
        if case == "unet_bf16_b12" and args.force_bf16:
            if not bf16_ok:
                print("# warning: pure bf16 compute on a CPU without native bf16: expect hours", flush=True)
            env["ERA3D_BENCH_PURE_HALF"] = "1"
        load0 = _load_avg()
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, __file__, "--_child", case, "--threads", str(args.threads),
                            "--fixtures", str(args.fixtures)], capture_output=True, text=True, cwd=REPO, env=env)
        if p.returncode != 0:
            rows.append({"case": case, "note": f"failed (rc {p.returncode}): {p.stderr.strip()[-300:]}"})
        else:
            rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
        rows[-1]["wall_total_s"] = time.perf_counter() - t0
        rows[-1]["loadavg_before_after"] = f"{load0}/{_load_avg()}"
        if case == "probe_bf16" and "conv_slowdown_bf16" in rows[-1]:
            bf16_ok = rows[-1]["conv_slowdown_bf16"] < 5
        print(json.dumps(rows[-1]), flush=True)

    print("\n| case | build s | forward wall s | forward CPU s | peak RSS GiB | load avg (before/after) | note |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if r["case"] == "probe_bf16" and "probe" in r:
            pr = r["probe"]
            note = "; ".join(f"{k}: fp32 {pr['float32'][k]:.3f}s bf16 {pr['bfloat16'][k]:.3f}s" for k in pr["float32"])
            print(f"| probe_bf16 | – | – | – | {r['peak_rss_mib'] / 1024:.2f} | {r['loadavg_before_after']} | {note} |")
            continue
        b = f"{r['build_s']:.1f}" if "build_s" in r else "–"
        f = f"{r['forward_s']:.1f}" if "forward_s" in r else "–"
        c = f"{r['forward_cpu_s']:.1f}" if "forward_cpu_s" in r else "–"
        m = f"{r['peak_rss_mib'] / 1024:.2f}" if "peak_rss_mib" in r else "–"
        note = r.get("note", "finite" if r.get("finite") else ("NON-FINITE" if "finite" in r else ""))
        if "compute_dtype" in r and r["compute_dtype"] != r["weights_dtype"]:
            note += f"; weights {r['weights_dtype']}, compute {r['compute_dtype']}"
        print(f"| {r['case']} | {b} | {f} | {c} | {m} | {r.get('loadavg_before_after', '')} | {note} |")


if __name__ == "__main__":
    main()
