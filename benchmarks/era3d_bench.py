"""Era3D benchmark (not a test): the full-size multi-view UNet (released config, random weights) on CPU.

Cases (each in a fresh subprocess; peak memory = that process's VmHWM, i.e. peak RSS incl. torch itself):

* ``unet_fp32_b12`` / ``unet_bf16_b12``: one UNet forward at batch 12 (one object, no CFG: 6 normal + 6 colour
  views), 8×64×64 latents, t=976, 77 prompt tokens, 2048-d class labels.
* ``step_fp32_b24``: one full sampling step with CFG: UNet at batch 24 ``[n_u, n_c, c_u, c_c]`` + guidance +
  DDIM v-prediction update (diffusers ``DDIMScheduler`` from the released scheduler config).
* ``vae_decode12_fp32``: SD-2.1 VAE (``AutoencoderKL`` from ``fixtures/era3d/real_configs/vae/config.json``, random
  weights) decoding 12 latents 4×64×64 → 12×3×512×512, one image at a time (what a pipeline should do on CPU), with
  the pipeline's ``fastconv`` convolutions (``ERA3D_BENCH_ONEDNN_VAE=1``: plain oneDNN convolutions, for comparison).
* ``probe_bf16``: real-size level-0 ops (3×3 conv 320→320 at 64×64, Linear 320→2560, joint SDPA) in bf16 vs fp32 —
  a quick way to see whether this CPU has usable native bf16 before running a full bf16 forward.

Weights are materialised cheaply: the model is built on the meta device, ``to_empty`` on CPU, then filled in place
(normal with std 1/√fan_in for matrices, 1 for norm scales, 0 for biases) so activations stay finite.

    python benchmarks/era3d_bench.py [--threads 2] [--cases unet_fp32_b12,unet_bf16_b12] [--fixtures DIR]
    python benchmarks/era3d_bench.py --cases unet_fp32_b12 --reference ~/Era3D --reference-python ~/refvenv/bin/python

``--reference DIR`` (case ``unet_fp32_b12`` only) also times the upstream ``UNetMV2DConditionModel`` from an
Era3D checkout (github pengHTYX/Era3D, ``mvdiffusion/models/unet_mv2d_condition.py``) side by side with ours, like
``lgm_bench.py --reference``: our child saves its random weights (838 tensors) to a temp safetensors file *after*
its timed forward; a second child, run by ``--reference-python`` (default: this interpreter; the upstream code needs
its own environment with diffusers 0.26.0, e.g. ``diffusers==0.26.0 huggingface_hub==0.20.3 accelerate==0.21.0
"numpy<2" einops safetensors`` and the same torch; several comma-separated interpreters run the reference once each), builds upstream's UNet from the same config on the meta device,
loads those weights by name (``strict=True``), runs the same inputs and saves its outputs; the parent prints both
rows and max |out_ours − out_ref|, max |pose_ours − pose_ref|. The upstream code runs unmodified with the
processors the released model always ran with: ``enable_xformers_memory_efficient_attention()`` (upstream's
``XFormersJointAttnProcessor`` / ``XFormersMVAttnProcessor`` and diffusers' ``XFormersAttnProcessor``). xformers
has no CPU build here, so the reference child puts a stand-in ``xformers`` package on ``sys.path`` (temp dir, with
dist-info so diffusers' ``is_xformers_available()`` is true) whose ``ops.memory_efficient_attention`` is torch's
``scaled_dot_product_attention`` on ``[N, 1, L, d]`` (3-D ``[N, L, d]`` input would select CPU SDPA's math kernel
and materialise 8 GiB score matrices); diffusers' CUDA probe inside ``enable_xformers_...`` is satisfied by making
``torch.cuda.is_available`` true and ``torch.randn(device="cuda")`` a CPU tensor for the duration of that one call.
In this mode both children reset their peak-RSS counter after building/loading (``/proc/self/clear_refs``), so
"peak RSS" is the peak of the forward phase (weights resident + activations); the build/load peak is in the JSON.
``--unet-config FILE`` replaces the released config (inputs follow its ``in_channels``, ``sample_size``,
``cross_attention_dim``, ``projection_class_embeddings_input_dim``): a small config makes a seconds-long smoke
test of the whole reference plumbing. Upstream hard-codes the regressors' hidden width 1280, so such a config must
not set ``regress_hidden_dim``.

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
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FIXTURES = Path(os.environ.get("MVBOOST_FIXTURES", REPO.parent / "shared" / "fixtures"))
ALL_CASES = ["probe_bf16", "unet_fp32_b12", "unet_bf16_b12", "step_fp32_b24", "step_bf16_b24", "vae_decode12_fp32"]


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


def _unet_config(fixtures: Path, unet_config: Path | None = None) -> dict:
    return json.loads((unet_config or fixtures / "era3d" / "unet_config_512_6view.json").read_text())


def _build_unet(fixtures: Path, dtype, pure_half: bool = False, unet_config: Path | None = None):
    """The UNet as ``load_era3d(dtype=...)`` would give it on this CPU: :func:`mvboost_core.precision.choose` for
    the requested dtype (``pure_half``: store and compute in it whatever the CPU), CPU inference tactics on unless
    ``ERA3D_BENCH_TACTICS=0``."""
    from mvboost_core import precision
    from mvboost_core.era3d import Era3DUNet
    from mvboost_core.tactics import enable_cpu_inference_tactics

    cfg = _unet_config(fixtures, unet_config)
    prec = precision.Precision(dtype, dtype) if pure_half else precision.choose("era3d", "cpu", dtype)
    unet = Era3DUNet.from_config(cfg, device="meta")
    precision.apply_precision(unet, prec)
    unet = unet.to_empty(device="cpu")
    _fill_random_(unet)
    unet.eval().requires_grad_(False)
    if os.environ.get("ERA3D_BENCH_TACTICS", "1") != "0":
        enable_cpu_inference_tactics(unet)
    return unet


def _unet_inputs(batch: int, dtype, cfg: dict | None = None):
    """Seeded inputs: sample [batch, in_ch, s, s], prompt embeds [batch, 77, cross_dim], class labels [batch, cls_dim].

    Sizes come from ``cfg`` (a UNet config dict); without it the released config's 8, 64, 1024, 2048.
    """
    import torch

    cfg = cfg or {}
    c, s = cfg.get("in_channels", 8), cfg.get("sample_size", 64)
    xd, cd = cfg.get("cross_attention_dim", 1024), cfg.get("projection_class_embeddings_input_dim", 2048)
    g = torch.Generator().manual_seed(1)
    sample = torch.randn(batch, c, s, s, generator=g).to(dtype)
    ehs = torch.randn(batch, 77, xd, generator=g).to(dtype)
    cls = torch.randn(batch, cd, generator=g).to(dtype)
    return sample, ehs, cls


def _reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


_XFORMERS_STANDIN = '''"""Stand-in for xformers (written by benchmarks/era3d_bench.py): memory_efficient_attention on torch SDPA."""
import torch
import torch.nn.functional as F


def memory_efficient_attention(query, key, value, attn_bias=None, p=0.0, scale=None, *, op=None, output_dtype=None):
    """xformers semantics: [B, M, K] or [B, M, H, K] inputs, softmax(q k^T * scale + bias) v, scale 1/sqrt(K) by default."""
    if p:
        raise NotImplementedError("dropout")
    if attn_bias is not None and not isinstance(attn_bias, torch.Tensor):
        raise NotImplementedError(f"attn_bias of type {type(attn_bias).__name__}")
    if query.ndim == 3:  # [B, M, K] -> [B, 1, M, K]: 4-D keeps CPU SDPA on its fused (flash) kernel
        mask = attn_bias.unsqueeze(1) if attn_bias is not None else None
        out = F.scaled_dot_product_attention(query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1),
                                             attn_mask=mask, scale=scale)
        out = out.squeeze(1)
    elif query.ndim == 4:  # [B, M, H, K] -> [B, H, M, K]
        out = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                                             attn_mask=attn_bias, scale=scale).transpose(1, 2)
    else:
        raise ValueError(f"query must be 3-D or 4-D, got {tuple(query.shape)}")
    return out if output_dtype is None else out.to(output_dtype)
'''


def _install_xformers_standin(root: Path) -> None:
    """Write the stand-in ``xformers`` package (+ dist-info for importlib.metadata) under ``root``; prepend to sys.path."""
    (root / "xformers" / "ops").mkdir(parents=True, exist_ok=True)
    (root / "xformers" / "__init__.py").write_text('__version__ = "0.0.23.post1"  # stand-in: torch SDPA\n')
    (root / "xformers" / "ops" / "__init__.py").write_text(_XFORMERS_STANDIN)
    dist = root / "xformers-0.0.23.post1.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: xformers\nVersion: 0.0.23.post1\n")
    sys.path.insert(0, str(root))


def run_reference_unet(ref_dir: Path, fixtures: Path, threads: int, tmp: Path, unet_config: Path | None) -> dict:
    """The upstream Era3D UNet (checkout ``ref_dir``), weights/inputs from our child's files in ``tmp``; batch 12 fp32.

    Runs in the reference environment (old diffusers), so it imports nothing from mvboost_core.
    """
    _install_xformers_standin(tmp / "standin")  # before diffusers is imported: it probes xformers at import time
    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(ref_dir))
    import diffusers
    from diffusers.utils.import_utils import is_xformers_available
    from mvdiffusion.models.unet_mv2d_condition import UNetMV2DConditionModel  # type: ignore
    from safetensors import safe_open

    assert is_xformers_available(), "the xformers stand-in is not visible to diffusers"
    res: dict = {"case": "unet_fp32_b12 (reference)", "torch": torch.__version__, "diffusers": diffusers.__version__}
    cfg = _unet_config(fixtures, unet_config)
    t0 = time.perf_counter()
    with torch.device("meta"):
        unet = UNetMV2DConditionModel.from_config(cfg)
    sd = {}
    with safe_open(str(tmp / "weights.safetensors"), framework="pt") as f:
        for k in f.keys():  # own copies (get_tensor may be a view of the mmap, paged in lazily during the forward)
            t = f.get_tensor(k)
            sd[k] = t.clone()
            del t
    unet.load_state_dict(sd, strict=True, assign=True)
    del sd
    left = [n for n, t in [*unet.named_parameters(), *unet.named_buffers()] if t.is_meta]
    assert not left, f"tensors not loaded: {left[:5]}"
    unet.eval().requires_grad_(False)
    # what the released model ran with (test_mvdiffusion_unclip.py): enable_xformers_memory_efficient_attention().
    # diffusers' Attention checks torch.cuda.is_available() and runs a tiny op on device="cuda" first: satisfy both
    # for the duration of this one call (the op then runs on CPU through the stand-in).
    real_avail, real_randn = torch.cuda.is_available, torch.randn

    def cpu_randn(*a, **k):
        if str(k.get("device", "")).startswith("cuda"):
            k["device"] = "cpu"
        return real_randn(*a, **k)

    torch.cuda.is_available, torch.randn = (lambda: True), cpu_randn
    try:
        unet.enable_xformers_memory_efficient_attention()
    finally:
        torch.cuda.is_available, torch.randn = real_avail, real_randn
    procs: dict = {}
    for p in unet.attn_processors.values():
        procs[type(p).__name__] = procs.get(type(p).__name__, 0) + 1
    assert all(n.startswith("XFormers") for n in procs), procs
    res["processors"] = procs
    res["build_s"] = time.perf_counter() - t0
    res["weights_dtype"] = res["compute_dtype"] = str(unet.dtype)
    res["rss_after_build_mib"] = _rss_mib("VmRSS")
    res["peak_rss_build_mib"] = _rss_mib("VmHWM")
    res["peak_reset"] = _reset_peak_rss()
    sample, ehs, cls = _unet_inputs(12, torch.float32, cfg)
    with torch.inference_mode():
        t0, c0 = time.perf_counter(), time.process_time()
        out, pose = unet(sample, 976, encoder_hidden_states=ehs, class_labels=cls, return_dict=False)
        res["forward_s"] = time.perf_counter() - t0
        res["forward_cpu_s"] = time.process_time() - c0
    res["peak_rss_mib"] = _rss_mib("VmHWM")
    res["finite"] = bool(torch.isfinite(out).all())
    res["pose_shape"] = list(pose.shape)
    torch.save({"out": out, "pose": pose}, tmp / "out_reference.pt")
    return res


def run_case(case: str, fixtures: Path, threads: int, tmp: Path | None = None,
             unet_config: Path | None = None) -> dict:
    """One case in this process. With ``tmp`` (``--reference`` mode, unet cases): reset the peak-RSS counter after
    building, and after the timed forward save the weights and outputs there for the reference child."""
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
    elif case in ("unet_fp32_b12", "unet_bf16_b12", "step_fp32_b24", "step_bf16_b24"):
        dtype = torch.bfloat16 if "bf16" in case else torch.float32
        batch = 24 if "b24" in case else 12
        t0 = time.perf_counter()
        unet = _build_unet(fixtures, dtype, pure_half=os.environ.get("ERA3D_BENCH_PURE_HALF") == "1",
                           unet_config=unet_config)
        res["build_s"] = time.perf_counter() - t0
        res["weights_dtype"], res["compute_dtype"] = str(unet.dtype), str(unet.compute_dtype)
        res["cpu_tactics"] = os.environ.get("ERA3D_BENCH_TACTICS", "1") != "0"
        res["rss_after_build_mib"] = _rss_mib("VmRSS")
        if tmp is not None:
            res["peak_rss_build_mib"] = _rss_mib("VmHWM")
            res["peak_reset"] = _reset_peak_rss()
        # inputs in float32 as the pipeline passes them (the UNet casts to its compute dtype)
        sample, ehs, cls = _unet_inputs(batch, torch.float32, _unet_config(fixtures, unet_config))
        with torch.inference_mode():
            t0, c0 = time.perf_counter(), time.process_time()
            if case.startswith("step_"):
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
                latents = sched.step(guided.float(), t, latents.float(), eta=1.0,
                                     generator=torch.Generator().manual_seed(0)).prev_sample
                res["finite"] = bool(torch.isfinite(latents).all())
                res["timestep"] = int(t)
            else:
                out, pose = unet(sample, 976, ehs, cls)
                res["finite"] = bool(torch.isfinite(out).all())
                if os.environ.get("ERA3D_BENCH_OUT_DIR"):
                    torch.save(out.float(), Path(os.environ["ERA3D_BENCH_OUT_DIR"]) / f"{case}.pt")
            res["forward_s"] = time.perf_counter() - t0
            res["forward_cpu_s"] = time.process_time() - c0
        res["pose_shape"] = list(pose.shape)
        if tmp is not None and case == "unet_fp32_b12":  # after the timed forward, and after reading the peak: serialising costs a weights copy
            from safetensors.torch import save_file

            res["peak_rss_mib"] = _rss_mib("VmHWM")
            res["torch"] = torch.__version__
            torch.save({"out": out, "pose": pose}, tmp / "out_ours.pt")
            save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, str(tmp / "weights.safetensors"))
            return res
    elif case == "vae_decode12_fp32":
        from diffusers import AutoencoderKL

        cfg = json.loads((fixtures / "era3d" / "real_configs" / "vae" / "config.json").read_text())
        t0 = time.perf_counter()
        with torch.device("meta"):
            vae = AutoencoderKL.from_config(cfg)
        vae = vae.to_empty(device="cpu")
        _fill_random_(vae)
        if os.environ.get("ERA3D_BENCH_ONEDNN_VAE") != "1":
            from mvboost_core.tactics import enable_cpu_inference_tactics

            enable_cpu_inference_tactics(vae)  # what load_era3d does with its VAE (fastconv where the CPU prefers it)
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
    ap.add_argument("--reference", type=Path, default=None,
                    help="an upstream pengHTYX/Era3D checkout: time its UNet beside ours (case unet_fp32_b12)")
    ap.add_argument("--reference-python", default=sys.executable,
                    help="interpreter of the reference environment (diffusers 0.26.0); default: this one. "
                         "Several, comma-separated, run the reference once in each (e.g. two torch builds)")
    ap.add_argument("--unet-config", type=Path, default=None,
                    help="UNet config json instead of the released one (e.g. a small one for a smoke test)")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_impl", default="ours", help=argparse.SUPPRESS)
    ap.add_argument("--_tmp", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args._child:
        if args._impl == "reference":
            print(json.dumps(run_reference_unet(args.reference, args.fixtures, args.threads, args._tmp,
                                                args.unet_config)))
        else:
            print(json.dumps(run_case(args._child, args.fixtures, args.threads, args._tmp, args.unet_config)))
        return

    import torch

    from mvboost_core import precision

    print(f"# Era3D benchmark  torch {torch.__version__}  python {platform.python_version()}  "
          f"cpu {platform.processor() or platform.machine()} ({os.cpu_count()} cores)  threads {args.threads}  "
          f"CPU class {precision.cpu_info().cpu_class}  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    if args.unet_config is not None:
        print(f"# UNet config: {args.unet_config}")
    rows = []
    diffs = []
    bf16_ok = True
    tmp_root = Path(tempfile.mkdtemp(prefix="era3d_bench_")) if args.reference else None
    out_dir = Path(tempfile.mkdtemp(prefix="era3d_bench_out_"))
    os.environ["ERA3D_BENCH_OUT_DIR"] = str(out_dir)

    def child(case: str, python: str, env: dict, extra: list[str]) -> dict:
        load0 = _load_avg()
        t0 = time.perf_counter()
        cmd = [python, __file__, "--_child", case, "--threads", str(args.threads), "--fixtures", str(args.fixtures)]
        if args.unet_config is not None:
            cmd += ["--unet-config", str(args.unet_config.resolve())]
        p = subprocess.run(cmd + extra, capture_output=True, text=True, cwd=REPO, env=env)
        if p.returncode != 0:
            row = {"case": case, "note": f"failed (rc {p.returncode}): {p.stderr.strip()[-300:]}"}
        else:
            row = json.loads(p.stdout.strip().splitlines()[-1])
        row["wall_total_s"] = time.perf_counter() - t0
        row["loadavg_before_after"] = f"{load0}/{_load_avg()}"
        print(json.dumps(row), flush=True)
        return row

    for case in [c.strip() for c in args.cases.split(",") if c.strip()]:
        env = dict(os.environ)
        if "bf16" in case and args.force_bf16:
            if not bf16_ok:
                print("# warning: pure bf16 compute on a CPU without native bf16: expect hours", flush=True)
            env["ERA3D_BENCH_PURE_HALF"] = "1"
        with_ref = args.reference is not None and case == "unet_fp32_b12"
        extra = ["--_tmp", str(tmp_root)] if with_ref else []
        rows.append(child(case, sys.executable, env, extra))
        if case == "probe_bf16" and "conv_slowdown_bf16" in rows[-1]:
            bf16_ok = rows[-1]["conv_slowdown_bf16"] < 5
        if with_ref and (tmp_root / "weights.safetensors").exists():
            rows[-1]["case"] += " (ours)"
            ours_row = rows[-1]
            for py in [x for x in args.reference_python.split(",") if x]:
                (tmp_root / "out_reference.pt").unlink(missing_ok=True)
                rows.append(child(case, py, dict(os.environ),
                                  extra + ["--_impl", "reference", "--reference", str(args.reference.resolve())]))
                if (tmp_root / "out_reference.pt").exists():
                    a, b = torch.load(tmp_root / "out_ours.pt"), torch.load(tmp_root / "out_reference.pt")
                    d_out = (a["out"] - b["out"]).abs().max().item()
                    d_pose = (a["pose"] - b["pose"]).abs().max().item()
                    diffs.append(f"{case}: ours vs reference (torch {rows[-1].get('torch')}): max |Δout| {d_out:.3e} "
                                 f"(max |out_ref| {b['out'].abs().max().item():.3g}), max |Δpose| {d_pose:.3e} "
                                 f"(pose_ref {[round(v, 5) for v in b['pose'].flatten().tolist()]}); "
                                 f"wall ratio ours/reference {ours_row['forward_s'] / rows[-1]['forward_s']:.3f}")
    if tmp_root is not None:
        shutil.rmtree(tmp_root, ignore_errors=True)
    if (out_dir / "unet_fp32_b12.pt").exists() and (out_dir / "unet_bf16_b12.pt").exists():
        a, b = torch.load(out_dir / "unet_fp32_b12.pt"), torch.load(out_dir / "unet_bf16_b12.pt")
        diffs.append(f"unet_bf16_b12 vs unet_fp32_b12 (same random weights, bf16-rounded): relative L2 "
                     f"{((b - a).norm() / a.norm()).item():.3e}, max |Δ| {(b - a).abs().max().item():.3e}")
    shutil.rmtree(out_dir, ignore_errors=True)

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
        if "torch" in r:
            note += f"; torch {r['torch']}" + (f", diffusers {r['diffusers']}" if "diffusers" in r else "")
        if r.get("forward_s") and r.get("forward_cpu_s"):
            note += f"; CPU use {100 * r['forward_cpu_s'] / r['forward_s']:.0f} %"
        if r.get("peak_reset"):
            note += f"; peak RSS of the forward phase (build/load peak {r['peak_rss_build_mib'] / 1024:.2f} GiB)"
        print(f"| {r['case']} | {b} | {f} | {c} | {m} | {r.get('loadavg_before_after', '')} | {note} |")
    for d in diffs:
        print(d)


if __name__ == "__main__":
    main()
