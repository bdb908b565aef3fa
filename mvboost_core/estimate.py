"""How long will ``mvboost generate`` take here? A per-stage cost model, measured on CPUs, said before a long run.

The constants come from ``benchmarks/e2e_bench.py`` (full-size random weights in the real formats, ``dtype="auto"``,
a reduced number of steps / iterations / frames extrapolated per stage); each :class:`HostProfile` names the host,
the date and the thread count it was measured with. The model scales them by:

* ``steps``: Era3D denoising steps (linear);
* ``guidance``: classifier-free guidance doubles the UNet batch (24 instead of 12 latents per step), so a step with
  ``guidance == 1`` costs half a CFG step (docs/benchmarks.md: UNet batch 12 85.7 s vs batch 24 177.4 s, AVX2);
* ``resolution``: Era3D's image side (UNet, VAE and CLIP work ~ pixels; 512 for the released model);
* pose options: search candidates, refinement iterations and appearance iterations (linear; refinement and
  appearance also ~ working pixels);
* turntable frames and frame size (linear in frames and pixels);
* ``threads``: PyTorch intra-op threads, assumed to scale linearly from the profile's count (an optimistic
  assumption beyond the physical cores);
* the device: a CUDA / MPS device uses :data:`GPU_PROFILE` (not measured by this project: the issue's "about a
  minute" on a CUDA GPU), and no message is shown for it.

:func:`estimate_generate` returns an :class:`Estimate` (seconds per stage, the total and a one-line ``message``
when the run is expected to take longer than ``min_seconds``, e.g. ``"Estimated time on this CPU (AVX2, 2
threads): ~3 h 27 min (Era3D 40 steps ~3 h 23 min, LGM ~20 s, pose ~3 min, turntable ~15 s). A CUDA GPU takes
about a minute."``). ``python -m mvboost_core.estimate`` prints it for the defaults.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field, replace
from typing import Optional

__all__ = ["HostProfile", "Estimate", "CPU_PROFILES", "GPU_PROFILE", "estimate_generate", "format_rough",
           "host_profile", "DEFAULT_MIN_SECONDS", "main", "register", "cmd_estimate"]

#: Runs expected to take less than this (seconds) get no message.
DEFAULT_MIN_SECONDS = 300.0

#: Reference sizes the per-unit constants are measured at.
ERA3D_RESOLUTION = 512
POSE_RESOLUTION = 256  # PoseOptions().resolution (the CLI and the node use the core defaults)
SEARCH_RESOLUTION = 64  # PoseOptions().search_resolution
TURNTABLE_SIZE = 384


@dataclass(frozen=True)
class HostProfile:
    """Seconds per unit of work on one host class, at ``threads`` PyTorch threads.

    era3d_encode: CLIP + VAE encoding of the condition image (512²); era3d_step_cfg: one denoising step with CFG
    (UNet batch 24 + DDIM, 512²); era3d_decode: VAE decode of the 12 views; lgm: bridge + LGM ``big`` forward;
    pose_search: per search candidate at 64²; pose_iter: per refinement iteration (Adam or LM) at 256²; adjust_iter:
    per appearance iteration at 256² (the default fast schedule of :class:`~mvboost_core.pose.PoseOptions`); turntable_frame: per frame at 384²; load: loading both models; save: writing
    .ply/.splat/frames/GIF."""

    name: str
    label: str
    threads: int
    source: str
    load: float
    era3d_encode: float
    era3d_step_cfg: float
    era3d_decode: float
    lgm: float
    pose_search: float
    pose_iter: float
    adjust_iter: float
    turntable_frame: float
    save: float


# Measured by `flock /tmp/mvboost-cpu.lock python benchmarks/e2e_bench.py --threads 2` (docs/benchmarks.md,
# "End to end on CPU", run 2): AMD EPYC, AVX2 only, 2 threads, torch 2.14.1, 2026-12-02 18:08-18:20 UTC,
# dtype "auto" (fp16 weights, fp32 compute), 1 Era3D step / 4+1 pose / 3 adjust iterations / 8 frames measured.
_AVX2 = HostProfile(
    name="avx2", label="AVX2", threads=2,
    source="measured: AMD EPYC (AVX2 only), 2 threads, torch 2.14.1, 2026-12-02, benchmarks/e2e_bench.py",
    load=6.6, era3d_encode=15.3, era3d_step_cfg=295.3, era3d_decode=376.1, lgm=19.4,
    # pose: benchmarks/pose_bench.py, default (fast) schedule, 65,536 Gaussians, 256² target, same host and day
    # (docs/benchmarks.md "Optimize Input Pose on CPU", 19:03 UTC): search 5.1 s / 28 candidates, refine 18.0 s /
    # 24 iterations, adjust 18.5 s / 12 iterations (upper bounds: the early stops did not trigger in that run)
    pose_search=5.1 / 28, pose_iter=18.0 / 24, adjust_iter=18.5 / 12, turntable_frame=0.39, save=2.4,
)

# The AVX-512 host of docs/benchmarks.md ("Precision and CPU tactics on an AVX-512 / avx512_bf16 host", 2026-12-02):
# Era3D UNet batch 12 fp32 149.2 CPU-s vs 167.0 CPU-s on the AVX2 host (ratio 0.89, applied to every Era3D stage);
# LGM big fp16->fp32 13.2 s vs 13.4 s; the rest (renderer, pose, I/O) was not measured faster there: AVX2 values.
_ERA3D_AVX512 = 149.2 / 167.0
_LGM_AVX512 = 13.2 / 13.4


def _scaled(p: HostProfile, name: str, label: str, source: str) -> HostProfile:
    return replace(p, name=name, label=label, source=source, era3d_encode=p.era3d_encode * _ERA3D_AVX512,
                   era3d_step_cfg=p.era3d_step_cfg * _ERA3D_AVX512, era3d_decode=p.era3d_decode * _ERA3D_AVX512,
                   lgm=p.lgm * _LGM_AVX512)


_AVX512_SOURCE = ("derived: Era3D x0.89 and LGM x0.99 of the AVX2 profile from the AVX-512/avx512_bf16 Xeon rows of "
                  "docs/benchmarks.md (2026-12-02, 2 threads; bf16 is not faster there, fp32 compute is used)")

#: Per CPU class of :func:`mvboost_core.precision.cpu_info` (``"other"`` CPUs are assumed to be like AVX2).
CPU_PROFILES: dict[str, HostProfile] = {
    "avx2": _AVX2,
    "avx512": _scaled(_AVX2, "avx512", "AVX-512", _AVX512_SOURCE),
    "avx512_bf16": _scaled(_AVX2, "avx512_bf16", "AVX-512 + avx512_bf16", _AVX512_SOURCE),
    # Era3D computing in bf16 (precision auto where bf16_compute_faster()): AMD EPYC with avx512_bf16, 2 threads,
    # 2026-12-03, `era3d_bench.py --cases unet_fp32_b12,unet_bf16_b12 --force-bf16`: UNet batch 12 47.0 s vs 70.3 s
    # fp32 (0.67x), applied to the CFG steps; the VAE runs in fp32 with bf16 (decode as the fp32 profile), the CLIP
    # encoder's share of the encode is small (kept). Measured before the attention core went bf16 (on the AMX host
    # that change took the bf16 UNet from 22.6 s to 13.8 s): an upper bound for that AMD host
    "avx512_bf16+bf16": replace(
        _scaled(_AVX2, "avx512_bf16+bf16", "AVX-512 + avx512_bf16, Era3D in bf16", _AVX512_SOURCE),
        era3d_step_cfg=_AVX2.era3d_step_cfg * _ERA3D_AVX512 * (47.0 / 70.3),
        # pose: pose_bench.py default schedule on the same AMD EPYC, 2 threads, 2026-12-03 07:35 UTC: search 3.2 s /
        # 28 candidates, refine 7.6 s / 24 iterations, adjust 9.0 s / 12 iterations
        pose_search=3.2 / 28, pose_iter=7.6 / 24, adjust_iter=9.0 / 12,
        source="derived: the avx512_bf16 profile with Era3D's CFG steps x0.67 for bf16 compute (AMD EPYC with "
               "avx512_bf16, 2 threads, era3d_bench UNet batch 12: 47.0 s bf16 vs 70.3 s fp32, 2026-12-03); pose "
               "measured there (pose_bench.py)"),
    # Era3D in bf16 on a CPU with AMX-bf16 tiles: measured end to end by `benchmarks/e2e_bench.py --threads 2` on an
    # Intel Xeon with AVX-512, avx512_bf16 and AMX (KVM guest, 2 vCPUs), torch 2.14.1, 2026-12-03 08:19-08:23 UTC,
    # after the attention core went bf16 (docs/benchmarks.md "Era3D on an AMX host"); dtype auto = Era3D bf16
    # (op probe conv 0.20x, Linear 0.05x), VAE and LGM fp32; 1 CFG step and 8 frames measured
    "amx_bf16+bf16": HostProfile(
        name="amx_bf16+bf16", label="AVX-512 + AMX-bf16, Era3D in bf16", threads=2,
        source="measured: Intel Xeon with AMX-bf16, 2 threads, torch 2.14.1, 2026-12-03, benchmarks/e2e_bench.py "
               "and pose_bench.py",
        load=4.9, era3d_encode=8.2, era3d_step_cfg=31.1, era3d_decode=113.9, lgm=7.6,
        # pose: pose_bench.py default schedule, same host, 08:29 UTC: search 2.9 s / 28 candidates, refine 9.7 s /
        # 24 iterations, adjust 9.3 s / 12 iterations (24.2 s in all)
        pose_search=2.9 / 28, pose_iter=9.7 / 24, adjust_iter=9.3 / 12, turntable_frame=1.5 / 8, save=1.1),
    "other": replace(_AVX2, name="other", label="unknown ISA",
                     source="assumed like the AVX2 profile (no measurement for this CPU class)"),
}

#: CUDA / MPS: not measured by this project (no GPU was available); order of magnitude only.
GPU_PROFILE = HostProfile(
    name="gpu", label="GPU", threads=1, source="not measured: order of magnitude for a recent CUDA GPU (fp16)",
    load=15.0, era3d_encode=0.5, era3d_step_cfg=0.9, era3d_decode=2.0, lgm=0.3, pose_search=0.02, pose_iter=0.05,
    adjust_iter=0.1, turntable_frame=0.02, save=2.0,
)


@dataclass
class Estimate:
    """Seconds per stage (``load``, ``era3d``, ``lgm``, ``pose``, ``turntable``, ``save``), their ``total``,
    the ``profile`` used, the thread count and ``message`` (None when no warning is due)."""

    device: str
    profile: HostProfile
    threads: int
    steps: int
    stages: dict[str, float] = field(default_factory=dict)
    message: Optional[str] = None

    @property
    def total(self) -> float:
        return float(sum(self.stages.values()))


def format_rough(seconds: float) -> str:
    """A rounded duration for humans: ``"~15 s"``, ``"~4 min"``, ``"~2 h 05 min"``."""
    s = max(0.0, float(seconds))
    if s < 60:
        return f"~{max(1, int(round(s / 5.0) * 5)) if s >= 5 else max(1, int(round(s)))} s"
    if s < 3600:
        return f"~{int(round(s / 60.0))} min"
    m = int(round(s / 60.0))
    return f"~{m // 60} h {m % 60:02d} min"


def host_profile(device=None, cpu_class: Optional[str] = None) -> HostProfile:
    """The profile for ``device`` (CPU: this CPU's class, or ``cpu_class``)."""
    import torch

    dev = torch.device(device if device is not None else "cpu")
    if dev.type != "cpu":
        return GPU_PROFILE
    if cpu_class is None:
        from .precision import choose, cpu_info

        cpu_class = cpu_info().cpu_class
        if cpu_class == "avx512_bf16" and choose("era3d", dev, "auto").compute == torch.bfloat16:
            # what `auto` will run Era3D in on this machine; AMX tiles make bf16 much faster still
            cpu_class = "amx_bf16+bf16" if cpu_info().amx else "avx512_bf16+bf16"
    return CPU_PROFILES.get(cpu_class, CPU_PROFILES["other"])


def estimate_generate(device=None, *, steps: int = 40, guidance: float = 3.0, resolution: int = ERA3D_RESOLUTION,
                      optimize_pose: bool = True, pose_options=None, frames: int = 36,
                      turntable_size: int = TURNTABLE_SIZE, threads: Optional[int] = None,
                      cpu_class: Optional[str] = None, min_seconds: float = DEFAULT_MIN_SECONDS,
                      include_load: bool = True) -> Estimate:
    """Estimated seconds per stage of ``mvboost generate`` (see the module docstring for the scaling rules).

    ``pose_options``: a :class:`~mvboost_core.pose.PoseOptions` (default: its defaults, which the CLI uses). ``threads``: default ``torch.get_num_threads()`` (CPU only). ``message`` is set only on a CPU and
    only when the total exceeds ``min_seconds``."""
    import torch

    from .pipeline import pose_stage_totals

    dev = torch.device(device if device is not None else "cpu")
    prof = host_profile(dev, cpu_class)
    steps = max(0, int(steps))
    on_cpu = dev.type == "cpu"
    if on_cpu:
        threads = int(threads) if threads is not None else torch.get_num_threads()
        speed = prof.threads / max(1, threads)  # cost factor: linear thread scaling assumed
    else:
        threads, speed = 1, 1.0
    px = (float(resolution) / ERA3D_RESOLUTION) ** 2
    step = prof.era3d_step_cfg * (1.0 if float(guidance) != 1.0 else 0.5)
    stages = {}
    if include_load:
        stages["load"] = prof.load
    stages["era3d"] = (prof.era3d_encode + steps * step + prof.era3d_decode) * px * speed
    stages["lgm"] = prof.lgm * speed
    if optimize_pose:
        if pose_options is None:
            from .pose import PoseOptions

            pose_options = PoseOptions()  # what `mvboost generate` and the node use on every device
        n = pose_stage_totals(pose_options)
        r = (float(pose_options.resolution) / POSE_RESOLUTION) ** 2
        rs = (float(pose_options.search_resolution) / SEARCH_RESOLUTION) ** 2
        stages["pose"] = (n["search"] * prof.pose_search * rs + n["pose"] * prof.pose_iter * r
                          + n["adjust"] * prof.adjust_iter * r) * speed
    stages["turntable"] = int(frames) * prof.turntable_frame * (float(turntable_size) / TURNTABLE_SIZE) ** 2 * speed
    stages["save"] = prof.save
    est = Estimate(device=str(dev), profile=prof, threads=threads, steps=steps, stages=stages)
    if on_cpu and est.total > float(min_seconds):
        parts = [f"Era3D {steps} steps {format_rough(stages['era3d'])}", f"LGM {format_rough(stages['lgm'])}"]
        if "pose" in stages:
            parts.append(f"pose {format_rough(stages['pose'])}")
        parts.append(f"turntable {format_rough(stages['turntable'])}")
        est.message = (f"Estimated time on this CPU ({prof.label}, {threads} thread{'s' if threads != 1 else ''}): "
                       f"{format_rough(est.total)} ({', '.join(parts)}). A CUDA GPU takes about a minute.")
    return est


def _add_args(ap) -> None:
    ap.add_argument("--device", default="cpu", help="cpu|cuda|mps (default cpu)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--no-pose", action="store_true")
    ap.add_argument("--frames", type=int, default=36)
    ap.add_argument("--turntable-size", type=int, default=384)
    ap.add_argument("--threads", type=int, default=None, help="PyTorch threads (default: torch.get_num_threads())")


def cmd_estimate(a) -> int:
    """Print the estimate per stage for parsed arguments (see :func:`register`)."""
    est = estimate_generate(a.device, steps=a.steps, guidance=a.guidance, optimize_pose=not a.no_pose,
                            frames=a.frames, turntable_size=a.turntable_size, threads=a.threads, min_seconds=-1)
    print(est.message or f"Estimated time on {est.device}: {format_rough(est.total)}")
    for k, v in est.stages.items():
        print(f"  {k:10s} {format_rough(v)}")
    print(f"  (constants: {est.profile.source})")
    return 0


def register(subparsers) -> None:
    """Add ``mvboost estimate`` to an ``argparse`` sub-parser collection (``func`` = :func:`cmd_estimate`)."""
    p = subparsers.add_parser("estimate", help="estimated time of `mvboost generate` on this machine")
    _add_args(p)
    p.set_defaults(func=cmd_estimate)


def main(argv=None) -> int:
    """``python -m mvboost_core.estimate [--device cpu] [--steps 40] ...``: print the estimate per stage."""
    ap = argparse.ArgumentParser(prog="mvboost estimate", description="estimated time of `mvboost generate` here")
    _add_args(ap)
    return cmd_estimate(ap.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
