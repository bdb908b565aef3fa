"""Proof that the boosting machinery learns (CPU, minutes): synthetic objects, base LGM trained from scratch, LoRA boost.

This checks the training machinery end to end (dataset writer -> LoRA trainer -> adapter file -> apply_lora), not
MVBoost's claim about real images. Setting:

1. Objects: procedural Gaussian-blob objects (:func:`mvboost_core.boost.dataset.random_blob_object`), rendered by
   our rasterizer, so every view has an exact ground truth.
2. Base LGM (a small custom config, default input 16 px, 256 Gaussians) trained briefly **from scratch** on clean
   inputs (the four LGM orbit views of the object), full-parameter, with LGM's loss (MSE rgb + MSE alpha +
   LPIPS-VGG) against ground-truth renders at ``--views`` other views.
3. Boost data: *new* objects whose four input views are degraded like generated multi-view images
   (:func:`~mvboost_core.boost.dataset.degrade_views`: blur + per-view colour shift), written with
   ``generate_dataset`` (the ``boost-data`` writer); the pseudo-ground-truth targets ("refined views") are the exact
   renders.
4. LoRA (rank ``--rank``) trained with ``train_lora`` (the ``train-lora`` trainer) on the boost data; the adapter
   file is applied to the base with ``apply_lora`` (merged).
5. Held-out objects (degraded inputs, like at inference): PSNR / LPIPS of base vs boosted renders against the
   ground truth, at the supervised views.

LPIPS uses the VGG16 trunk from torchvision's cache when present; offline without it, a random trunk (reported as
such: its values are only comparable within one run).

    python benchmarks/boost_experiment.py                       # the docs/benchmarks.md numbers
    python benchmarks/boost_experiment.py --quick               # a ~1-minute smoke version
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mvboost_core.boost import dataset as D  # noqa: E402
from mvboost_core.boost import lora as L  # noqa: E402
from mvboost_core.boost.train import TrainConfig, boost_loss, train_lora  # noqa: E402
from mvboost_core.lgm import LGM, LGMConfig, init_lgm_weights_, prepare_lgm_input, save_lgm_checkpoint  # noqa: E402


def exp_config(size: int) -> LGMConfig:
    """Small LGM with cross-view attention in down, mid and up blocks; ``splat = size / 2``."""
    return LGMConfig(name=f"exp{size}", input_size=size, down_channels=(32, 32, 64), down_attention=(False, True, True),
                     mid_attention=True, up_channels=(64, 32), up_attention=(True, False), splat_size=size // 2,
                     output_size=size)


def make_lpips(device="cpu"):
    from mvboost_core.metrics import LPIPSLoss, lpips_backbone_file

    real = lpips_backbone_file("vgg").is_file()
    return LPIPSLoss(net="vgg", pnet_rand=not real).to(device), ("VGG16 (ImageNet)" if real else "random trunk")


def _batch(items: list[dict]) -> dict:
    return {k: torch.stack([it[k] for it in items]) for k in items[0] if isinstance(items[0][k], torch.Tensor)}


def _sample_to_train(s: dict) -> dict:
    return {"lgm_input": s["lgm_input"].float(), "target_rgb": s["refined_color"].float(),
            "target_alpha": s["target_mask"].float(), "c2w": s["c2w"], "intrinsics": s["intrinsics"]}


def train_base(cfg: LGMConfig, gen: D.SyntheticGenerator, n_objects: int, steps: int, lr: float, lpips_fn,
               batch_size: int = 2, seed: int = 0, log=print) -> LGM:
    """Full-parameter training from scratch (LGM's loss and AdamW betas, grad clip 1.0)."""
    torch.manual_seed(seed)
    model = LGM(cfg)
    init_lgm_weights_(model)
    with torch.no_grad():  # start with small splats (scale channels) so early renders are not a blur
        model.conv.bias[4:7] -= 3.0
    model.train()
    samples = [_sample_to_train(gen(f"base_{i}", D.derive_seed(seed, f"base_{i}"))) for i in range(n_objects)]
    meta = {"width": gen.render_size, "height": gen.render_size, "projection": "perspective"}
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for step in range(steps):
        idx = torch.randint(0, n_objects, (batch_size,), generator=g).tolist()
        b = _batch([samples[i] for i in idx])
        x = prepare_lgm_input(b["lgm_input"], size=cfg.input_size)
        loss, parts = boost_loss(model(x), b, meta, lpips_fn, 1.0, 256)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if (step + 1) % max(1, steps // 10) == 0:
            log(f"  base step {step + 1}/{steps}: loss {parts['mse_rgb'] + parts['mse_alpha'] + parts['lpips']:.4f} "
                f"psnr {parts['psnr']:.2f} ({time.time() - t0:.0f}s)")
    return model.eval().requires_grad_(False)


@torch.no_grad()
def evaluate(model: LGM, samples: list[dict], meta: dict, lpips_fn) -> dict:
    from mvboost_core.metrics import psnr

    ps, lp = [], []
    for s in samples:
        b = _batch([s])
        x = prepare_lgm_input(b["lgm_input"], size=model.config.input_size)
        from mvboost_core.gaussians import Gaussians
        from mvboost_core.render import render

        g = Gaussians.from_lgm(model(x)[0])
        cams = D._cams(s["c2w"], s["intrinsics"], meta["width"], meta["height"], meta["projection"])
        rgb = render(g, cams).rgb.clamp(0, 1)
        ps.append(float(psnr(rgb, s["target_rgb"]).mean()))
        lp.append(float(lpips_fn(rgb, s["target_rgb"]).mean()))
    return {"psnr": sum(ps) / len(ps), "lpips": sum(lp) / len(lp)}


def run(args, log=print) -> dict:
    torch.set_num_threads(args.threads)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="boost_exp_"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = exp_config(args.size)
    lpips_fn, lpips_kind = make_lpips()
    t0 = time.time()
    clean = D.SyntheticGenerator(input_size=args.size, render_size=args.size, n_views=args.views, degrade=False)
    reuse = getattr(args, "reuse_base", False) and (work / "base.safetensors").is_file()
    if reuse:
        from mvboost_core.lgm import load_lgm

        log(f"[1/4] base LGM reused from {work / 'base.safetensors'}")
        base = load_lgm(work / "base.safetensors", config=cfg)
    else:
        log(f"[1/4] base LGM '{cfg.name}' from scratch: {args.n_base} objects, {args.base_steps} steps")
        base = train_base(cfg, clean, args.n_base, args.base_steps, args.base_lr, lpips_fn, seed=args.seed, log=log)
    t_base = time.time() - t0
    ck = work / "base.safetensors"
    if not reuse:
        save_lgm_checkpoint(base, ck, dtype=torch.float32)
    opts = work / "base.json"
    opts.write_text(json.dumps({k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.to_dict().items()}))

    log(f"[2/4] boost dataset: {args.n_boost} new objects with degraded inputs (boost-data writer)")
    degraded = D.SyntheticGenerator(input_size=args.size, render_size=args.size, n_views=args.views, degrade=True,
                                    base_lgm=base)
    t1 = time.time()
    import shutil

    shutil.rmtree(work / "boost_ds", ignore_errors=True)
    for old in work.glob("boost_lora.*"):
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
    D.generate_dataset(work / "boost_ds", [f"boost_{i:04d}" for i in range(args.n_boost)], degraded,
                       seed=args.seed + 1, rank=0, world_size=1, progress=False)
    t_data = time.time() - t1

    log(f"[3/4] LoRA rank {args.rank}: {args.lora_steps} steps (train-lora trainer)")
    t2 = time.time()
    adapter = work / "boost_lora.safetensors"
    res = train_lora(TrainConfig(data=str(work / "boost_ds"), lgm=str(ck), lgm_config=str(opts), out=str(adapter),
                                 rank=args.rank, steps=args.lora_steps, lr=args.lora_lr, batch_size=2,
                                 lpips_random=lpips_kind != "VGG16 (ImageNet)", lpips_size=256, cpu=True,
                                 seed=args.seed, warmup_steps=max(1, args.lora_steps // 20)))
    t_lora = time.time() - t2

    log(f"[4/4] held-out evaluation: {args.n_test} objects, degraded inputs, {args.views} views each")
    test = [_sample_to_train(degraded(f"test_{i}", D.derive_seed(args.seed + 2, f"test_{i}")))
            for i in range(args.n_test)]
    meta = {"width": args.size, "height": args.size, "projection": "perspective"}
    fit = [_sample_to_train(D.load_sample(f)) for f in D.list_samples(work / "boost_ds")]
    before = evaluate(base, test, meta, lpips_fn)
    fit_before = evaluate(base, fit, meta, lpips_fn)
    L.apply_lora(base, adapter, 1.0)
    after = evaluate(base, test, meta, lpips_fn)
    fit_after = evaluate(base, fit, meta, lpips_fn)
    L.remove_lora(base)
    again = evaluate(base, test, meta, lpips_fn)
    n_lora = sum(v.numel() for v in L.load_adapter(adapter)[0].values())
    out = {
        "config": cfg.name, "input_size": args.size, "gaussians": cfg.num_gaussians,
        "params_base": sum(p.numel() for p in base.parameters()), "params_lora": n_lora, "rank": args.rank,
        "n_base": args.n_base, "base_steps": args.base_steps, "n_boost": args.n_boost, "lora_steps": args.lora_steps,
        "n_test": args.n_test, "views": args.views, "lpips_trunk": lpips_kind,
        "base": before, "boosted": after, "base_after_remove": again,
        "boost_set_base": fit_before, "boost_set_boosted": fit_after,
        "lora_first_loss": res.losses[0]["loss"], "lora_last_loss": res.losses[-1]["loss"],
        "base_reused": reuse, "seconds": {"base_train": round(t_base, 1), "boost_data": round(t_data, 1), "lora_train": round(t_lora, 1)},
        "torch": torch.__version__, "threads": args.threads, "workdir": str(work),
    }
    return out


def apply_bench(config: str = "big", rank: int = 32, threads: int = 2) -> dict:
    """Time ``base_weights_checksum``, ``save_adapter``, ``apply_lora`` (merge) and ``remove_lora`` on a randomly
    initialised LGM of ``config`` (fp32, CPU); peak RSS from ``ru_maxrss``."""
    import resource

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as d:
        t = time.time()
        m = LGM(config).eval().requires_grad_(False)
        t_build = time.time() - t
        t = time.time()
        ck = L.base_weights_checksum(m)
        t_ck = time.time() - t
        L.inject_lora(m, rank=rank)
        with torch.no_grad():
            for p_ in L.lora_parameters(m):
                p_.normal_(0, 0.01)
        t = time.time()
        L.save_adapter(m, Path(d) / "a.safetensors", base_checksum=ck)
        t_save = time.time() - t
        size = (Path(d) / "a.safetensors").stat().st_size
        L.remove_lora(m)
        t = time.time()
        L.apply_lora(m, Path(d) / "a.safetensors", 1.0)
        t_apply = time.time() - t
        t = time.time()
        L.remove_lora(m)
        t_remove = time.time() - t
        t = time.time()
        L.apply_lora(m, Path(d) / "a.safetensors", 1.0, checksum="ignore")
        t_apply_nock = time.time() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    return {"config": config, "rank": rank, "targets": len(L.lora_target_names(m)), "adapter_MB": size / 1e6,
            "build_s": t_build, "checksum_s": t_ck, "save_s": t_save, "apply_merge_with_checksum_s": t_apply,
            "apply_merge_no_checksum_s": t_apply_nock, "remove_s": t_remove, "peak_rss_GB": rss}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--n-base", type=int, default=48)
    p.add_argument("--base-steps", type=int, default=300)
    p.add_argument("--base-lr", type=float, default=2e-3)
    p.add_argument("--n-boost", type=int, default=32)
    p.add_argument("--lora-steps", type=int, default=150)
    p.add_argument("--lora-lr", type=float, default=2e-3)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--n-test", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workdir", default=None)
    p.add_argument("--reuse-base", action="store_true", help="reuse WORKDIR/base.safetensors (skip step 1)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke run)")
    p.add_argument("--json", default=None, help="also write the result here")
    p.add_argument("--apply-bench", default=None, metavar="CONFIG",
                   help="instead: time checksum / save / apply (merge) / remove of a rank-32 LoRA on CONFIG (e.g. big)")
    args = p.parse_args(argv)
    if args.apply_bench:
        r = apply_bench(args.apply_bench, threads=args.threads)
        print("| " + " | ".join(r) + " |")
        print("|" + "---|" * len(r))
        print("| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
        return 0
    if args.quick:
        args.size, args.n_base, args.base_steps, args.n_boost, args.lora_steps, args.n_test = 16, 8, 30, 6, 30, 4
    r = run(args)
    print()
    print(f"| model | held-out PSNR (dB) | held-out LPIPS ({r['lpips_trunk']}) |")
    print("|---|---|---|")
    print(f"| base ({r['config']}, {r['params_base']:,} params, {r['base_steps']} steps from scratch) | "
          f"{r['base']['psnr']:.2f} | {r['base']['lpips']:.4f} |")
    print(f"| boosted (+ LoRA rank {r['rank']}, {r['params_lora']:,} params, {r['lora_steps']} steps) | "
          f"{r['boosted']['psnr']:.2f} | {r['boosted']['lpips']:.4f} |")
    print(f"| (boost training objects) base -> boosted | {r['boost_set_base']['psnr']:.2f} -> "
          f"{r['boost_set_boosted']['psnr']:.2f} | {r['boost_set_base']['lpips']:.4f} -> "
          f"{r['boost_set_boosted']['lpips']:.4f} |")
    print(f"| base again after remove_lora | {r['base_after_remove']['psnr']:.2f} | "
          f"{r['base_after_remove']['lpips']:.4f} |")
    print()
    print(json.dumps(r, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
