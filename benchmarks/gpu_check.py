"""GPU acceptance check (not a test): the CUDA paths most users run, on random full-size weights, as one table.

    python benchmarks/gpu_check.py                 # on a machine with an NVIDIA GPU (gsplat 1.5.3 installed)
    python benchmarks/gpu_check.py --steps 10      # shorter Era3D run in the end-to-end row

Rows (each with wall time, peak VRAM = ``torch.cuda.max_memory_allocated`` of that row, and a verdict):

1. ``render parity``: fixtures/render scenes a-f through ``render(backend="gsplat")`` (gsplat's CUDA kernels)
   against our torch backend with gsplat's 0.999 alpha clamp, on every pixel that is not threshold-sensitive:
   max |Δ| ≤ 1e-4 (rgb, alpha), 5e-4 (depth); and F1 against the float64 reference (fixtures/render/README.md §6).
2. ``render speed``: 65,536 LGM-like Gaussians (``render_bench.make_scene``) at 512², forward and forward+backward,
   gsplat vs torch backend.
3. ``LGM big fp16 vs fp32``: random weights (the fixtures' rule, fp16-rounded like the public checkpoint), one
   sample; fp16 storage+compute (the CUDA ``auto``) against fp32 of the same values: render PSNR of the Gaussians
   ≥ 40 dB, forward times.
4. ``Era3D UNet CFG step fp16 vs fp32``: the released UNet config, random weights, one sampling step with CFG
   (batch 24 + guidance 3 + DDIM): relative L2 of the guided v-prediction ≤ 2e-2 (the micro config, fp16 on CPU:
   3.2e-3), times.
5. ``image_to_gaussians``: a full-size random Era3D folder (released configs) and a random LGM big checkpoint,
   loaded with ``dtype="auto"`` (fp16 on CUDA), one run with pose optimisation (LPIPS with a random trunk: the
   real VGG weights need a download): finite Gaussians, time per stage.

Without CUDA the script refuses in one line (exit status 2). ``--device cpu --small`` runs the same code on the
micro/tiny configs on CPU, which is how its logic is tested (``tests/test_gpu_check.py``): there the gsplat rows
report that gsplat needs CUDA.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
DEFAULT_FIXTURES = Path(os.environ.get("MVBOOST_FIXTURES", REPO.parent / "shared" / "fixtures"))


class Row(dict):
    pass


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device, fn, repeats: int = 1):
    """(best wall seconds, last result), CUDA-synchronised."""
    best, out = math.inf, None
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        out = fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best, out


def _reset_peak(device):
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device) -> float:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def _psnr(a, b) -> float:
    mse = float(((a.clamp(0, 1) - b.clamp(0, 1)) ** 2).mean())
    return math.inf if mse == 0 else -10 * math.log10(mse)


def _gsplat_ok(device) -> tuple[bool, str]:
    from mvboost_core.render.gsplat_backend import gsplat_available

    return gsplat_available(device)


# ------------------------------------------------------------------------------------------------ rows
def check_render_parity(device, fixtures: Path) -> Row:
    import torch

    import render_helpers as rh  # tests/render_helpers.py
    from mvboost_core.render import RenderOptions

    ok, why = _gsplat_ok(device)
    if not ok:
        return Row(check="render parity (gsplat vs torch, scenes a-f)", verdict="skipped", note=why)
    _reset_peak(device)
    worst = [0.0, 0.0, 0.0]
    f1 = []
    t0 = time.perf_counter()
    for name in "abcdef":
        meta, T = rh.scene(fixtures, name)
        T = {k: v.to(device) for k, v in T.items()}
        g = rh.render_scene(meta, T, torch.float32, backend="gsplat")
        r = rh.render_scene(meta, T, torch.float32, options=RenderOptions(alpha_max=0.999))
        ok_px = ~T["threshold_sensitive"].bool()
        for i, k in enumerate(("rgb", "alpha", "depth")):
            d = (getattr(g, k) - getattr(r, k)).abs()
            worst[i] = max(worst[i], float(torch.where(ok_px.expand_as(d), d, torch.zeros_like(d)).max()))
        f1 += [f"{name}: {x}" for x in rh.f1_failures(g, T)]
    good = worst[0] <= 1e-4 and worst[1] <= 1e-4 and worst[2] <= 5e-4 and not f1
    return Row(check="render parity (gsplat vs torch, scenes a-f)", seconds=time.perf_counter() - t0,
               vram=_peak_gib(device), verdict="pass" if good else "FAIL",
               note=f"max |Δ| rgb {worst[0]:.1e} alpha {worst[1]:.1e} depth {worst[2]:.1e}; F1 failures: {f1 or 0}")


def check_render_speed(device, small: bool) -> list[Row]:
    import torch

    from mvboost_core.cameras import Cameras
    from mvboost_core.render import render
    from render_bench import make_scene

    n, size = (4096, 128) if small else (65536, 512)
    g = make_scene(n).to(device=device)
    cams = Cameras.orbit([-15.0], [30.0], radius=1.5, width=size, height=size).to(device=device)
    rows = []
    for backend in ("gsplat", "torch"):
        if backend == "gsplat" and not _gsplat_ok(device)[0]:
            rows.append(Row(check=f"render speed {backend}", verdict="skipped", note=_gsplat_ok(device)[1]))
            continue
        _reset_peak(device)
        tf, out = _timed(device, lambda: render(g, cams, backend=backend), repeats=3)

        def fwd_bwd():
            from mvboost_core.gaussians import Gaussians

            gg = Gaussians(means=g.means.detach().requires_grad_(True), opacities=g.opacities, scales=g.scales,
                           quats=g.quats, colors=g.colors.detach().requires_grad_(True))
            o = render(gg, cams, backend=backend)
            (o.rgb.mean() + o.alpha.mean()).backward()

        try:
            tb, _ = _timed(device, fwd_bwd, repeats=3)
            bw = f"fwd+bwd {tb:.3f} s"
        except Exception as e:  # noqa: BLE001 - reported in the table
            bw = f"fwd+bwd failed: {type(e).__name__}"
        rows.append(Row(check=f"render speed {backend} ({n} Gaussians, {size}²)", seconds=tf, vram=_peak_gib(device),
                        verdict="pass" if bool(torch.isfinite(out.rgb).all()) else "FAIL",
                        note=f"forward {tf:.3f} s; {bw}"))
    return rows


def check_lgm(device, small: bool) -> Row:
    import torch

    from mvboost_core import precision
    from mvboost_core.cameras import Cameras
    from mvboost_core.gaussians import Gaussians
    from mvboost_core.lgm import LGM, init_lgm_weights_, prepare_lgm_input
    from mvboost_core.render import render
    from lgm_bench import _views

    name = "micro" if small else "big"
    outs, times, vram = {}, {}, {}
    for label, prec in (("fp32", precision.Precision(torch.float32, torch.float32)),
                        ("fp16", precision.Precision(torch.float16, torch.float16))):  # = choose("lgm", "cuda")
        _reset_peak(device)
        with torch.device("meta"):
            m = LGM(name)
        precision.apply_precision(m, prec)
        init_lgm_weights_(m, round_to=torch.float16)
        m = m.to(device).eval().requires_grad_(False)
        x = prepare_lgm_input(_views(m.config.input_size), size=m.config.input_size).to(device)
        with torch.inference_mode():
            times[label], g = _timed(device, lambda: m.forward_gaussians(x), repeats=2)
        outs[label], vram[label] = g[0].float(), _peak_gib(device)
        m = None
    cams = Cameras.orbit([-15.0] * 4, [45.0 + 90 * i for i in range(4)], radius=3.0, width=256, height=256)
    imgs = {k: render(Gaussians.from_lgm(v), cams.to(device=device), backend="auto").rgb for k, v in outs.items()}
    psnr = _psnr(imgs["fp16"], imgs["fp32"])
    good = bool(torch.isfinite(outs["fp16"]).all()) and psnr >= 40
    return Row(check=f"LGM {name} fp16 vs fp32", seconds=times["fp16"], vram=vram["fp16"],
               verdict="pass" if good else "FAIL",
               note=f"forward fp16 {times['fp16']:.3f} s ({vram['fp16']:.2f} GiB), fp32 {times['fp32']:.3f} s "
                    f"({vram['fp32']:.2f} GiB); render PSNR fp16 vs fp32 {psnr:.1f} dB (≥ 40)")


def check_era3d_step(device, fixtures: Path, small: bool) -> Row:
    import torch
    from diffusers import DDIMScheduler

    from era3d_bench import _fill_random_, _unet_inputs
    from mvboost_core import precision
    from mvboost_core.era3d import Era3DUNet

    cfg_file = "unet_micro_config.json" if small else "unet_config_512_6view.json"
    cfg = json.loads((fixtures / "era3d" / cfg_file).read_text())
    sched = DDIMScheduler.from_config(json.loads((fixtures / "era3d" / "scheduler_config.json").read_text()))
    sched.set_timesteps(40)
    t = sched.timesteps[0]
    sample, ehs, cls = _unet_inputs(24, torch.float32, cfg)
    res, times, vram = {}, {}, {}
    for label, prec in (("fp32", precision.Precision(torch.float32, torch.float32)),
                        ("fp16", precision.Precision(torch.float16, torch.float16))):  # = choose("era3d", "cuda")
        _reset_peak(device)
        unet = Era3DUNet.from_config(cfg, device="meta")
        precision.apply_precision(unet, prec)
        unet = unet.to_empty(device="cpu")
        _fill_random_(unet)
        unet = unet.to(device).eval().requires_grad_(False)

        def step():
            lat = sample[:12, :4].to(device)
            xin = torch.cat([lat[:6], lat[:6], lat[6:], lat[6:]])
            v, _ = unet(torch.cat([xin, sample[:, 4:].to(device)], 1), t, ehs.to(device), cls.to(device))
            nu, nc, cu, cc = v.float().chunk(4)
            unc, con = torch.cat([nu, cu]), torch.cat([nc, cc])
            return unc + 3.0 * (con - unc)

        with torch.inference_mode():
            times[label], res[label] = _timed(device, step)
        vram[label] = _peak_gib(device)
        unet = None
    rel = float((res["fp16"] - res["fp32"]).norm() / res["fp32"].norm())
    good = bool(torch.isfinite(res["fp16"]).all()) and rel <= 2e-2
    return Row(check=f"Era3D UNet CFG step ({'micro' if small else 'released config'}) fp16 vs fp32",
               seconds=times["fp16"], vram=vram["fp16"], verdict="pass" if good else "FAIL",
               note=f"step fp16 {times['fp16']:.3f} s ({vram['fp16']:.2f} GiB), fp32 {times['fp32']:.3f} s "
                    f"({vram['fp32']:.2f} GiB); guided v relative L2 {rel:.2e} (≤ 2e-2)")


def _full_size_era3d(root: Path, fixtures: Path) -> Path:
    """A diffusers folder in the released layout with random weights (configs from fixtures/era3d)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    from era3d_bench import _fill_random_
    from mvboost_core.era3d import Era3DUNet
    from mvboost_core.era3d.pipeline import write_prompt_cache
    from mvboost_core.selftest import _MODEL_INDEX

    fx, rc = fixtures / "era3d", fixtures / "era3d" / "real_configs"
    cfg = json.loads((fx / "unet_config_512_6view.json").read_text())
    unet = Era3DUNet.from_config(cfg, device="meta").to(torch.float16).to_empty(device="cpu")
    _fill_random_(unet)
    (root / "unet").mkdir(parents=True)
    (root / "unet" / "config.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()},
              str(root / "unet" / "diffusion_pytorch_model.safetensors"))
    del unet
    AutoencoderKL.from_config(json.loads((rc / "vae" / "config.json").read_text())).to(torch.float16) \
        .save_pretrained(str(root / "vae"))
    CLIPVisionModelWithProjection(CLIPVisionConfig.from_pretrained(str(rc / "image_encoder"))).to(torch.float16) \
        .save_pretrained(str(root / "image_encoder"))
    CLIPImageProcessor.from_pretrained(str(rc / "feature_extractor")).save_pretrained(str(root / "feature_extractor"))
    StableUnCLIPImageNormalizer.from_config(json.loads((rc / "image_normalizer" / "config.json").read_text())) \
        .save_pretrained(str(root / "image_normalizer"))
    DDPMScheduler.from_config(json.loads((fx / "image_noising_scheduler_config.json").read_text())) \
        .save_pretrained(str(root / "image_noising_scheduler"))
    DDIMScheduler.from_config(json.loads((fx / "scheduler_config.json").read_text())) \
        .save_pretrained(str(root / "scheduler"))
    (root / "model_index.json").write_text(json.dumps(_MODEL_INDEX))
    g = torch.Generator().manual_seed(3)
    write_prompt_cache(root, torch.randn(6, 77, 1024, generator=g), torch.randn(6, 77, 1024, generator=g))
    return root


def check_image_to_gaussians(device, fixtures: Path, small: bool, steps: int, tmp: Path) -> Row:
    import torch

    from mvboost_core import selftest
    from mvboost_core.era3d import load_era3d
    from mvboost_core.lgm import load_lgm
    from mvboost_core.pipeline import image_to_gaussians

    if small:
        era3d_dir, _ = selftest.build_tiny_era3d(tmp / "era3d")
        lgm_path = selftest.build_tiny_lgm(tmp / "lgm.safetensors")
    else:
        era3d_dir = _full_size_era3d(tmp / "era3d", fixtures)
        lgm_path = selftest.build_tiny_lgm(tmp / "lgm.safetensors", config="big")
    _reset_peak(device)
    era3d = load_era3d(era3d_dir, device=device, dtype="auto")
    lgm = load_lgm(lgm_path, device=device, dtype="auto")
    stages: dict = {}
    t_last = [time.perf_counter()]

    def progress(stage, done, total):
        if done == total:
            now = time.perf_counter()
            stages[stage] = stages.get(stage, 0.0) + now - t_last[0]
            t_last[0] = now

    from mvboost_core.pose import PoseOptions

    image = selftest.example_image(128 if small else 512)
    opts = PoseOptions(lpips_pretrained=False)
    t, res = _timed(device, lambda: image_to_gaussians(image, era3d, lgm, steps=steps, progress=progress,
                                                       pose_options=opts))
    g = res.gaussians
    good = bool(torch.isfinite(g.means).all()) and len(g) > 0
    per = ", ".join(f"{k} {v:.1f} s" for k, v in stages.items())
    return Row(check=f"image_to_gaussians ({'tiny' if small else 'full-size'} random weights, {steps} steps)",
               seconds=t, vram=_peak_gib(device), verdict="pass" if good else "FAIL",
               note=f"Era3D {era3d.unet.dtype}/{era3d.dtype}, LGM {lgm.dtype}/{lgm.compute_dtype}; {len(g)} Gaussians; "
                    f"stages: {per or 'n/a'}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=40, help="Era3D steps of the end-to-end row")
    ap.add_argument("--small", action="store_true", help="micro/tiny configs (a quick smoke run of this script)")
    ap.add_argument("--fixtures", type=Path, default=DEFAULT_FIXTURES)
    ap.add_argument("--only", default="", help="comma-separated row numbers (1-5) to run")
    args = ap.parse_args(argv)

    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: needs a CUDA device and torch.cuda.is_available() is False here; run it on a machine with "
              "an NVIDIA GPU (or --device cpu --small for a smoke run of the script itself)", file=sys.stderr)
        return 2
    if not (args.fixtures / "render").is_dir():
        print(f"gpu_check: fixtures not found at {args.fixtures}; pass --fixtures DIR", file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO / "tests"))  # render_helpers
    only = {int(x) for x in args.only.split(",") if x.strip()} or {1, 2, 3, 4, 5}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"# MVBoost GPU check  {name}  torch {torch.__version__}  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
          flush=True)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="mvboost_gpu_check_") as tmp:
        jobs = [(1, lambda: [check_render_parity(device, args.fixtures)]),
                (2, lambda: check_render_speed(device, args.small)),
                (3, lambda: [check_lgm(device, args.small)]),
                (4, lambda: [check_era3d_step(device, args.fixtures, args.small)]),
                (5, lambda: [check_image_to_gaussians(device, args.fixtures, args.small, args.steps, Path(tmp))])]
        for i, job in jobs:
            if i not in only:
                continue
            try:
                new = job()
            except Exception as e:  # noqa: BLE001 - one failing row must not hide the others
                new = [Row(check=f"row {i}", verdict="ERROR", note=f"{type(e).__name__}: {e}"[:300])]
            for r in new:
                print(json.dumps(r), flush=True)
            rows += new
    print("\n| check | seconds | peak VRAM GiB | verdict | note |\n|---|---|---|---|---|")
    for r in rows:
        s = f"{r['seconds']:.2f}" if "seconds" in r else "–"
        v = f"{r['vram']:.2f}" if "vram" in r and not math.isnan(r["vram"]) else "–"
        print(f"| {r['check']} | {s} | {v} | {r['verdict']} | {r.get('note', '')} |")
    return 1 if any(r["verdict"] in ("FAIL", "ERROR") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
