"""Era3D pipeline benchmark (not a test): the sampling pipeline around the UNet; prints a Markdown table.

Cases (each in a fresh subprocess, so peak RSS = that process's VmHWM incl. torch itself):

* ``micro_fp32`` / ``micro_bf16``: the fixture's micro pipeline (``fixtures/era3d/micro_pipeline``) end to end as the
  reference ran it (``input_rgba`` -> preprocess -> CLIP/VAE conditioning -> 3 CFG DDIM steps from ``init_latents``,
  eta 0 -> decode 12 images): wall time, max |images - reference|, and for bf16 the PSNR of the decoded images
  against the fp32 run.
* ``real_clip1`` / ``real_clip12``: the real-size CLIP ViT-H/14 image encoder (``real_configs/image_encoder``, random
  weights, fp32) on 1 image (what this pipeline runs) vs 12 copies (what the reference pipeline runs).
* ``real_vae_decode12_b1`` / ``_b2`` / ``_b12``: the SD-2.1 VAE (``real_configs/vae``, random weights, fp32) decoding
  12 latents 4x64x64 in chunks of 1, 2 (``Era3DPipeline.decode_latents`` default) or all 12 at once.

The real-size cases take minutes of CPU each; run them on an idle machine.

    .venv/bin/python benchmarks/era3d_pipeline_bench.py [--threads 2] [--cases micro_fp32,micro_bf16]
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
FIXTURES = Path(os.environ.get("MVBOOST_FIXTURES", REPO.parent / "shared" / "fixtures")) / "era3d"
ALL_CASES = ["micro_fp32", "micro_bf16", "real_clip1", "real_clip12",
             "real_vae_decode12_b1", "real_vae_decode12_b2", "real_vae_decode12_b12"]


def _peak_rss_gib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024**2
    return float("nan")


def _run_case(case: str) -> dict:
    import torch
    from safetensors.torch import load_file

    out: dict = {"case": case}
    if case.startswith("micro"):
        from mvboost_core.era3d.pipeline import load_era3d

        io = load_file(str(FIXTURES / "micro_pipeline_io.safetensors"))
        pe = (io["normal_prompt_embeds"], io["color_prompt_embeds"])
        dtype = "bf16" if case == "micro_bf16" else "fp32"
        t0 = time.perf_counter()
        pipe = load_era3d(FIXTURES / "micro_pipeline", dtype=dtype, prompt_embeds=pe)
        out["load_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = pipe(io["input_rgba"], seed=42, steps=3, guidance=3.0, eta=0.0, latents=io["init_latents"])
        out["run_s"] = time.perf_counter() - t0
        imgs = torch.cat([res.normals.images, res.colors.images]).permute(0, 3, 1, 2)
        out["max_err_vs_reference"] = float((imgs - io["images"]).abs().max())
        if case == "micro_bf16":
            ref = load_era3d(FIXTURES / "micro_pipeline", dtype="fp32", prompt_embeds=pe)
            r32 = ref(io["input_rgba"], seed=42, steps=3, guidance=3.0, eta=0.0, latents=io["init_latents"])
            i32 = torch.cat([r32.normals.images, r32.colors.images]).permute(0, 3, 1, 2)
            mse = float(((imgs - i32) ** 2).mean())
            out["psnr_vs_fp32_db"] = 10 * math.log10(1.0 / max(mse, 1e-20))
    elif case.startswith("real_clip"):
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        cfg = CLIPVisionConfig.from_json_file(str(FIXTURES / "real_configs" / "image_encoder" / "config.json"))
        t0 = time.perf_counter()
        model = CLIPVisionModelWithProjection(cfg).float().eval()  # the config says torch_dtype float16
        out["build_s"] = time.perf_counter() - t0
        n = 1 if case == "real_clip1" else 12
        x = torch.randn(n, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            t0 = time.perf_counter()
            model(x)
            out["run_s"] = time.perf_counter() - t0
    elif case.startswith("real_vae_decode12"):
        from diffusers import AutoencoderKL

        cfg = json.loads((FIXTURES / "real_configs" / "vae" / "config.json").read_text())
        vae = AutoencoderKL.from_config(cfg).eval()
        chunk = int(case.rsplit("_b", 1)[1])
        z = torch.randn(12, 4, 64, 64, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            t0 = time.perf_counter()
            for part in z.split(chunk):
                vae.decode(part / 0.18215)
            out["run_s"] = time.perf_counter() - t0
    else:
        raise SystemExit(f"unknown case {case}")
    out["peak_rss_gib"] = _peak_rss_gib()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cases", default="micro_fp32,micro_bf16")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._child:
        import torch

        torch.set_num_threads(a.threads)
        print("RESULT " + json.dumps(_run_case(a._child)))
        return
    cases = ALL_CASES if a.cases == "all" else a.cases.split(",")
    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"threads {a.threads}, load average {os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| case | time (s) | peak RSS (GiB) | notes |")
    print("|---|---|---|---|")
    for case in cases:
        p = subprocess.run([sys.executable, __file__, "--threads", str(a.threads), "--_child", case],
                           capture_output=True, text=True, cwd=str(REPO))
        line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
        if p.returncode != 0 or not line:
            print(f"| {case} | failed | | {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else p.returncode} |")
            continue
        r = json.loads(line[0][7:])
        notes = ", ".join(f"{k} {v:.3g}" for k, v in r.items() if k not in ("case", "run_s", "peak_rss_gib"))
        print(f"| {case} | {r['run_s']:.2f} | {r['peak_rss_gib']:.2f} | {notes} |")


if __name__ == "__main__":
    main()
