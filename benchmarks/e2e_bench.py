"""End-to-end time of ``mvboost generate`` on this CPU, per stage, extrapolated to the defaults.

    python benchmarks/e2e_bench.py --threads 2                 # full-size random weights (Era3D 512, LGM big)
    python benchmarks/e2e_bench.py --small --steps 2           # tiny configs: a smoke run of this script

Runs :func:`mvboost_core.pipeline.image_to_gaussians` (then the turntable and the file writes, as the CLI does) on
**full-size random weights in the real formats** (the released Era3D diffusers layout written by
``benchmarks/gpu_check.py``'s ``_full_size_era3d``, fp16 like the release; an LGM ``big`` checkpoint, fp16 like
``model_fp16_fixrot``, with LGM-like splat sizes: :func:`write_lgm_like_big`), loaded with ``dtype="auto"`` on the CPU (fp16 storage, fp32 compute) — the path a user of
``mvboost generate --device cpu`` gets. Random weights cost the same arithmetic as the real ones.

A full run would take hours on a CPU, so each repeated stage runs a reduced number of units and is extrapolated
linearly to the CLI's defaults (:data:`TARGET`): Era3D ``--steps`` denoising steps (default 1, target 40 with CFG),
the pose search / refinement / appearance iterations (target: the CLI's CPU settings) and the turntable frames
(target 36 at 384²). Stages that run once (load, Era3D condition encoding, VAE decode, bridge + LGM, save) are
measured as they are. The table gives, per stage: measured seconds, units measured, seconds per unit, target units
and the extrapolated seconds; the JSON line (``--json``) feeds the constants of :mod:`mvboost_core.estimate`.

Stage boundaries come from the library's own progress callbacks plus timers around ``encode_condition`` and
``decode_latents`` (instance attributes wrapped here; the library is not modified).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))
DEFAULT_FIXTURES = Path(os.environ.get("MVBOOST_FIXTURES", REPO.parent / "shared" / "fixtures"))

#: What ``mvboost generate --device cpu`` runs with its defaults (cli.py: 40 steps, guidance 3, 36 frames at 384²,
#: the default PoseOptions: search 1 + 5 x 5 + 2 candidates, 20 Adam + 4 LM steps, 12 adjustment steps).
TARGET = {"era3d_step": 40, "search": 28, "pose": 24, "adjust": 12, "turntable": 36}

#: Stages in run order with their human labels.
STAGES = [("load", "load Era3D + LGM"), ("era3d_encode", "Era3D condition (CLIP + VAE encode)"),
          ("era3d_step", "Era3D CFG step (UNet batch 24 + DDIM)"), ("era3d_decode", "Era3D VAE decode (12 views)"),
          ("lgm", "bridge + LGM"), ("search", "pose search (candidates)"), ("pose", "pose refinement (iterations)"),
          ("adjust", "appearance adjustment (iterations)"), ("turntable", "turntable (frames)"),
          ("save", "save .ply/.splat/frames/GIF")]


def cpu_pose_options(pose_iters: int = 20, lm_iters: int = 4, adjust_iters: int = 12, **kw):
    """The CLI's pose options (the PoseOptions defaults) with the iteration counts given."""
    from mvboost_core.pose import PoseOptions

    return PoseOptions(**{**PoseOptions().__dict__, "pose_iters": pose_iters, "lm_iters": lm_iters,
                          "adjust_iters": adjust_iters, **kw})


class StageTimer:
    """Turns ``progress(stage, done, total)`` reports and explicit marks into seconds and units per stage.

    A stage's time runs from the end of the previous stage (its last report or mark) to its own last report;
    ``units`` is the largest ``done`` reported."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.seconds: dict[str, float] = {}
        self.units: dict[str, int] = {}
        self._last = clock()
        self._stage: Optional[str] = None
        self._stage_start = self._last

    def mark(self) -> None:
        """Start timing from now (before a stage that reports)."""
        self._last = self.clock()

    def progress(self, stage: str, done: int, total: int) -> None:
        now = self.clock()
        if stage != self._stage:
            self._stage, self._stage_start = stage, self._last
        self.seconds[stage] = now - self._stage_start
        self.units[stage] = max(self.units.get(stage, 0), int(done))
        self._last = now

    def add(self, stage: str, seconds: float, units: int = 1) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + float(seconds)
        self.units[stage] = self.units.get(stage, 0) + int(units)
        self._last = self.clock()


def extrapolate(seconds: dict[str, float], units: dict[str, int], target: dict[str, int] | None = None) -> list[dict]:
    """Rows ``{stage, label, seconds, units, per_unit, target_units, extrapolated}`` in run order.

    Stages listed in ``target`` scale linearly: ``extrapolated = seconds / units * target_units``; the others are
    taken as measured. A last row ``total`` sums both columns."""
    target = TARGET if target is None else target
    rows = []
    for key, label in STAGES:
        if key not in seconds:
            continue
        s, n = float(seconds[key]), max(1, int(units.get(key, 1)))
        per = s / n
        tn = int(target.get(key, n))
        rows.append({"stage": key, "label": label, "seconds": s, "units": n, "per_unit": per, "target_units": tn,
                     "extrapolated": per * tn if key in target else s})
    rows.append({"stage": "total", "label": "total", "seconds": sum(r["seconds"] for r in rows), "units": None,
                 "per_unit": None, "target_units": None, "extrapolated": sum(r["extrapolated"] for r in rows)})
    return rows


def format_table(rows: list[dict]) -> str:
    from mvboost_core.progress import format_duration

    out = ["| stage | measured (s) | units | s / unit | target units | extrapolated |", "|---|---|---|---|---|---|"]
    for r in rows:
        if r["stage"] == "total":
            out.append(f"| **total** | {r['seconds']:.1f} | | | | **{format_duration(r['extrapolated'])}** "
                       f"({r['extrapolated']:.0f} s) |")
        else:
            out.append(f"| {r['label']} | {r['seconds']:.1f} | {r['units']} | {r['per_unit']:.2f} | "
                       f"{r['target_units']} | {format_duration(r['extrapolated'])} ({r['extrapolated']:.0f} s) |")
    return "\n".join(out)


def build_models(work: Path, fixtures: Path, small: bool) -> tuple[Path, Path]:
    """Random checkpoints in the real formats (reused when already in ``work``)."""
    from mvboost_core import selftest

    if small:
        era3d_dir = work / "era3d_tiny"
        if not (era3d_dir / "model_index.json").is_file():
            selftest.build_tiny_era3d(era3d_dir)
        lgm = work / "lgm_micro.safetensors"
        if not lgm.is_file():
            selftest.build_tiny_lgm(lgm, "micro")
        return era3d_dir, lgm
    from gpu_check import _full_size_era3d

    era3d_dir = work / "era3d_512"
    if not (era3d_dir / "model_index.json").is_file():
        tmp = work / ".era3d_512.tmp"
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        _full_size_era3d(tmp, fixtures)
        os.replace(tmp, era3d_dir)
    lgm = work / "lgm_big_fp16_lgmlike.safetensors"
    if not lgm.is_file():
        write_lgm_like_big(work / "lgm_big_fp16.tmp.safetensors")
        os.replace(work / "lgm_big_fp16.tmp.safetensors", lgm)
    return era3d_dir, lgm


def write_lgm_like_big(path: Path, scale_bias: float = -3.0) -> Path:
    """LGM ``big`` with the fixtures' random weights (fp16, public key names), the scale channels of the last conv's
    bias shifted by ``scale_bias``: splat sizes ``0.1·softplus(N(-3, ~1))`` like a trained LGM's (and like the
    renderer benchmark's LGM-like scene). Unshifted random weights give splats ~10x larger than real ones, which
    makes every rendering stage (pose, turntable) several times slower than with the released weights."""
    import torch

    from mvboost_core.lgm import LGM, get_config, init_lgm_weights_, save_lgm_checkpoint

    with torch.device("meta"):
        model = LGM(get_config("big"))
    init_lgm_weights_(model)
    with torch.no_grad():
        model.conv.bias[4:7] += scale_bias
    return save_lgm_checkpoint(model, path)


def run(work: Path, fixtures: Path, small: bool, steps: int, pose_iters: int, adjust_iters: int, frames: int,
        size: int, lm_iters: int = 1) -> dict:
    """Build/load the models, run every stage once with the reduced counts; returns seconds/units per stage."""
    import torch

    from mvboost_core import selftest
    from mvboost_core.era3d import load_era3d
    from mvboost_core.lgm import load_lgm
    from mvboost_core.pipeline import image_to_gaussians, render_turntable, write_outputs

    t = time.perf_counter()
    era3d_dir, lgm_path = build_models(work, fixtures, small)
    build_s = time.perf_counter() - t
    timer = StageTimer()
    t = time.perf_counter()
    era3d = load_era3d(era3d_dir, device="cpu", dtype="auto")
    lgm = load_lgm(lgm_path, device="cpu", dtype="auto")
    timer.add("load", time.perf_counter() - t)

    def timed(name: str, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            out = fn(*a, **k)
            timer.add(name, time.perf_counter() - t0)
            return out
        return wrapper

    era3d.encode_condition = timed("era3d_encode", era3d.encode_condition)
    era3d.decode_latents = timed("era3d_decode", era3d.decode_latents)

    def progress(stage: str, done: int, total: int) -> None:
        if stage in ("era3d_encode", "era3d_decode", "save"):
            return  # timed by the wrappers above / around write_outputs
        if stage == "lgm" and done == 0:
            timer.mark()  # bridge + LGM start after the decode
            return
        timer.progress("era3d_step" if stage == "era3d" else stage, done, total)

    opts = cpu_pose_options(pose_iters=pose_iters, lm_iters=lm_iters, adjust_iters=adjust_iters,
                            lpips_pretrained=False)  # random VGG trunk: same cost as the real one, no download
    if small:
        opts = cpu_pose_options(pose_iters=pose_iters, lm_iters=lm_iters, adjust_iters=adjust_iters,
                                lpips_pretrained=False, resolution=48, search_resolution=32, reg_resolution=24,
                                search_elevations=(-5.0, 5.0), search_azimuths=(-5.0, 5.0), min_iou=0.0)
    image = selftest.example_image(128 if small else 512)
    timer.mark()
    with torch.inference_mode(False):
        res = image_to_gaussians(image, era3d, lgm, optimize_pose=True, seed=0, steps=steps, guidance=3.0,
                                 pose_options=opts, progress=progress)
    # the report renders after the last appearance iteration belong to the pose stage
    last = "adjust" if "adjust" in timer.seconds else "lgm"
    timer.add(last, time.perf_counter() - timer._last, units=0)
    del era3d
    timer.mark()
    tt = render_turntable(res.gaussians, frames=frames, size=size, progress=progress)
    t = time.perf_counter()
    write_outputs(res.gaussians, work / "out", "e2e", tt)
    timer.add("save", time.perf_counter() - t)
    return {"seconds": timer.seconds, "units": timer.units, "build_s": build_s, "n_gaussians": len(res.gaussians)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=1, help="Era3D steps actually run (extrapolated to 40)")
    ap.add_argument("--pose-iters", type=int, default=4, help="pose refinement Adam steps run (+1 LM step)")
    ap.add_argument("--adjust-iters", type=int, default=3, help="appearance iterations run")
    ap.add_argument("--frames", type=int, default=8, help="turntable frames run (extrapolated to 36)")
    ap.add_argument("--size", type=int, default=384, help="turntable frame size")
    ap.add_argument("--small", action="store_true", help="tiny random configs (smoke run of the script)")
    ap.add_argument("--workdir", type=Path, default=None, help="keep checkpoints/outputs here (reused next time)")
    ap.add_argument("--fixtures", type=Path, default=DEFAULT_FIXTURES)
    ap.add_argument("--json", type=Path, default=None, help="also write the measurements and rows as JSON")
    args = ap.parse_args(argv)

    import torch

    from mvboost_core import precision

    torch.set_num_threads(args.threads)
    info = precision.cpu_info()
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="mvboost_e2e_")
        work = Path(tmp.name)
    else:
        work = args.workdir
        work.mkdir(parents=True, exist_ok=True)
    try:
        m = run(work, args.fixtures, args.small, args.steps, args.pose_iters, args.adjust_iters, args.frames,
                args.size)
    finally:
        if tmp is not None:
            tmp.cleanup()
    rows = extrapolate(m["seconds"], m["units"])
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# e2e_bench {'tiny' if args.small else 'full-size'} random weights, CPU class {info.cpu_class}, "
          f"{args.threads} threads, torch {torch.__version__}, {when}, load average {load:.2f}; checkpoints built "
          f"in {m['build_s']:.0f} s; {m['n_gaussians']} Gaussians")
    print(format_table(rows), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"cpu_class": info.cpu_class, "threads": args.threads,
                                         "torch": torch.__version__, "when": when, "small": args.small,
                                         "measured": m, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
