"""The ``mvboost`` command.

    mvboost download {lgm,era3d} [--variant fp16_fixrot] [--models-dir DIR]
    mvboost generate IMAGE -o OUT [--lora FILE] [--device auto|cpu|cuda|mps] [--models-dir DIR] [--yes]
    mvboost selftest [--keep DIR]

``generate`` writes ``OUT/<image name>.ply``, ``.splat``, ``<name>_turntable/frame_XXX.png`` and
``<name>_turntable.gif``. Missing official weights: in a terminal it asks before downloading them (``--yes``
answers yes); without a terminal it stops and names the ``mvboost download`` command. ``boost-data`` and
``train-lora`` come from :mod:`mvboost_core.boost.cli` when that module is present.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
from pathlib import Path

__all__ = ["main", "build_parser", "resolve_device"]

log = logging.getLogger("mvboost")

_SIZES = {"lgm": "~830 MB", "era3d": "~6 GB"}


def resolve_device(name: str = "auto"):
    """``auto`` = CUDA, else MPS, else CPU; explicit names are checked for availability."""
    import torch

    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda requested but CUDA is not available (use --device cpu or auto)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise SystemExit("error: --device mps requested but MPS is not available (use --device cpu or auto)")
    if name not in ("cpu", "cuda", "mps"):
        raise SystemExit(f"error: unknown device {name!r}; use auto, cpu, cuda or mps")
    return torch.device(name)


# ------------------------------------------------------------------------------------------------ download
def _download(what: str, variant: str, models_dir) -> Path:
    from . import weights

    if what == "lgm":
        print(f"Downloading LGM ({variant}, {_SIZES['lgm']}) from huggingface.co/{weights.LGM_REPO} into "
              f"{weights.model_folder('lgm', models_dir)} ...", flush=True)
        return weights.download_lgm(variant, models_dir)
    print(f"Downloading Era3D ({_SIZES['era3d']}) from huggingface.co/{weights.ERA3D_REPO} into "
          f"{weights.model_folder('era3d', models_dir)} (resumable: run again to continue) ...", flush=True)
    return weights.download_era3d(models_dir)


def cmd_download(args) -> int:
    from .weights import WeightsUnavailableError

    try:
        path = _download(args.what, args.variant, args.models_dir)
    except WeightsUnavailableError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"OK: {path}")
    return 0


# ------------------------------------------------------------------------------------------------ generate
def _ask(question: str) -> bool:
    try:
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        return False


def _ensure_weights(args) -> tuple[Path, Path]:
    """Paths of the LGM checkpoint and the Era3D folder; asks before downloading missing official weights."""
    from . import weights

    missing = []
    try:
        lgm_path = weights.find_lgm_checkpoint(args.lgm, args.models_dir)
    except weights.WeightsUnavailableError:
        lgm_path = None
        missing.append("lgm")
    if args.era3d:
        era3d_dir = Path(args.era3d).expanduser()
        if not (era3d_dir / "model_index.json").is_file():
            raise SystemExit(f"error: --era3d {era3d_dir} is not an Era3D diffusers folder (no model_index.json)")
    else:
        era3d_dir = weights.model_folder("era3d", args.models_dir) / weights.ERA3D_FOLDER
        if not (era3d_dir / "model_index.json").is_file() or any(era3d_dir.rglob("*.incomplete")):
            missing.append("era3d")
    from .metrics import lpips_backbone_file

    args._lpips_download = False
    lpips_missing = not args.no_pose and not lpips_backbone_file("vgg").is_file()
    if missing or lpips_missing:
        names = " and ".join([f"{m} ({_SIZES[m]})" for m in missing]
                             + (["the LPIPS VGG16 trunk (~528 MB, download.pytorch.org)"] if lpips_missing else []))
        cmds = "; ".join(f"mvboost download {m}" + (f" --models-dir {args.models_dir}" if args.models_dir else "")
                         for m in missing) or "re-run with --yes"
        if not args.yes:
            if not sys.stdin.isatty():
                raise SystemExit(
                    f"error: the official weights for {names} are not on disk (models folder "
                    f"{weights.resolve_models_dir(args.models_dir)}). Download them with: {cmds}  (or re-run generate "
                    "with --yes; the LPIPS trunk used by the pose step is fetched by --yes or skipped with --no-pose)"
                )
            if not _ask(f"The official weights for {names} are missing. Download them now from huggingface.co?"):
                raise SystemExit(f"Not downloading. You can download them later with: {cmds}")
        args._lpips_download = lpips_missing
        for m in missing:
            try:
                p = _download(m, args.lgm_variant, args.models_dir)
            except weights.WeightsUnavailableError as e:
                raise SystemExit(f"error: {e}") from None
            if m == "lgm":
                lgm_path = p
            else:
                era3d_dir = p
    return lgm_path, era3d_dir


def _load_image(path: Path):
    from PIL import Image

    if not path.is_file():
        raise SystemExit(f"error: input image {path} does not exist")
    try:
        img = Image.open(path)
        img.load()
    except Exception as e:  # noqa: BLE001
        raise SystemExit(f"error: cannot read {path} as an image: {e}") from None
    if "A" not in img.getbands() and "transparency" not in img.info:
        raise SystemExit(
            f"error: {path} has no alpha channel. Era3D needs the object cut out: give an RGBA PNG with a "
            "transparent background (remove the background first, e.g. with rembg)."
        )
    return img.convert("RGBA")


def cmd_generate(args) -> int:
    import torch
    from tqdm.auto import tqdm

    from .era3d import load_era3d
    from .lgm import load_lgm
    from .pipeline import image_to_gaussians, render_turntable, write_outputs
    from .pose import PoseOptions

    image = _load_image(Path(args.image).expanduser())
    device = resolve_device(args.device)
    lgm_path, era3d_dir = _ensure_weights(args)
    t0 = time.perf_counter()
    bars: dict = {}

    def progress(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=stage, unit="step", leave=False)
        bar.total = total
        bar.n = done
        bar.refresh()

    from . import precision

    print(f"Loading Era3D from {era3d_dir} and LGM from {lgm_path} ({precision.describe('era3d', device, args.dtype)}; "
          f"{precision.describe('lgm', device, args.dtype, lgm_path)}) ...", flush=True)
    era3d = load_era3d(era3d_dir, device=device, dtype=args.dtype)
    lgm = load_lgm(lgm_path, device=device, dtype=args.dtype)
    if args.lora:
        from .boost.lora import apply_lora

        apply_lora(lgm, args.lora, strength=args.lora_strength)
        print(f"Applied LoRA {args.lora} (strength {args.lora_strength})")
    opts = PoseOptions(lpips_pretrained=True, lpips_download=args._lpips_download)
    if device.type == "cpu":  # the CPU rasterizer is slow: fewer, cheaper iterations
        opts = PoseOptions(**{**opts.__dict__, "pose_iters": 40, "adjust_iters": 30, "resolution": 192,
                              "search_radius_scales": (1.0,)})
    with torch.inference_mode(False):
        res = image_to_gaussians(image, era3d, lgm, optimize_pose=not args.no_pose, seed=args.seed,
                                 steps=args.steps, guidance=args.guidance, pose_options=opts, progress=progress)
    del era3d
    tt = render_turntable(res.gaussians, frames=args.frames, size=args.turntable_size, progress=progress)
    for b in bars.values():
        b.close()
    name = Path(args.image).stem
    paths = write_outputs(res.gaussians, Path(args.output).expanduser(), name, tt, animation=args.animation,
                          mesh=args.mesh or ())
    rep = res.report
    if rep:
        print(f"Input view: PSNR {rep['psnr_before']:.2f} -> {rep['psnr_after']:.2f} dB, LPIPS "
              f"{rep.get('lpips_before', float('nan')):.4f} -> {rep.get('lpips_after', float('nan')):.4f}; pose "
              f"elevation {rep['pose']['elevation']:.1f}, azimuth {rep['pose']['azimuth']:.1f}, radius "
              f"{rep['pose']['radius']:.3f}")
        for w in rep.get("warnings", []):
            print(f"warning: {w}")
    meshes = "".join(f", {paths[m]}" for m in (args.mesh or ()))
    print(f"Wrote {paths['ply']}, {paths['splat']}{meshes}, {paths['animation']} and {len(paths.get('frames', []))} "
          f"frames in {time.perf_counter() - t0:.1f} s")
    return 0


# ------------------------------------------------------------------------------------------------ selftest
def cmd_selftest(args) -> int:
    import torch

    from .selftest import run_selftest

    print("MVBoost selftest: tiny RANDOM checkpoints, CPU. The output is meaningless noise; this only proves that "
          "the installation works (every stage loads, runs and writes its files).", flush=True)
    # the toy models are far too small to gain from threads; one thread also avoids OpenMP spin-waiting on
    # busy machines (measured: 10 s with 1 thread vs 76 s with 2 on a loaded 2-core box)
    torch.set_num_threads(1)
    t = time.perf_counter()
    res = run_selftest(args.keep)
    tim = res["timings"]
    print(f"selftest OK in {time.perf_counter() - t:.1f} s (checkpoints {tim['write_checkpoints']:.1f} s, load "
          f"{tim['load']:.1f} s, Era3D->bridge->LGM->pose {tim['image_to_gaussians']:.1f} s, save "
          f"{tim['save']:.1f} s); {res['n_gaussians']} Gaussians written as .ply/.splat/turntable"
          + (f" in {args.keep}" if args.keep else " (temporary folder removed)"))
    return 0


# ------------------------------------------------------------------------------------------------ parser
def _register_optional(sub) -> None:
    """``mvboost_core.boost.cli.register(subparsers)`` if that module exists; never fails the CLI."""
    try:
        mod = importlib.import_module(".boost.cli", __package__)
    except ModuleNotFoundError as e:
        if e.name not in (f"{__package__}.boost.cli", f"{__package__}.boost"):
            log.warning("mvboost: boost commands unavailable (%s)", e)
        return
    except Exception as e:  # noqa: BLE001
        log.warning("mvboost: boost commands unavailable (%s: %s)", type(e).__name__, e)
        return
    register = getattr(mod, "register", None)
    if callable(register):
        try:
            register(sub)
        except Exception as e:  # noqa: BLE001
            log.warning("mvboost: registering the boost commands failed (%s: %s)", type(e).__name__, e)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mvboost", description="MVBoost: one image -> 3D Gaussians (Era3D + boosted LGM).")
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    d = sub.add_parser("download", help="download official weights (explicit, resumable)")
    d.add_argument("what", choices=["lgm", "era3d"])
    d.add_argument("--variant", default="fp16_fixrot", help="LGM variant (fp16_fixrot, fixrot, fp16)")
    d.add_argument("--models-dir", default=None, help="models folder (default: $MVBOOST_MODELS_DIR or user cache)")
    d.set_defaults(func=cmd_download)

    g = sub.add_parser("generate", help="image -> .ply, .splat and a turntable")
    g.add_argument("image", help="RGBA image of the object (transparent background)")
    g.add_argument("-o", "--output", required=True, help="output folder")
    g.add_argument("--lora", default=None, help="MVBoost LoRA adapter (.safetensors) for LGM")
    g.add_argument("--lora-strength", type=float, default=1.0)
    g.add_argument("--device", default="auto", help="auto|cpu|cuda|mps")
    g.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="weights/compute precision; auto = the per-device rule of mvboost_core.precision")
    g.add_argument("--models-dir", default=None, help="models folder (default: $MVBOOST_MODELS_DIR or user cache)")
    g.add_argument("--lgm", default=None, help="LGM checkpoint path or file name (default: the official one)")
    g.add_argument("--lgm-variant", default="fp16_fixrot", help=argparse.SUPPRESS)
    g.add_argument("--era3d", default=None, help="Era3D diffusers folder (default: <models-dir>/era3d/...)")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--steps", type=int, default=40)
    g.add_argument("--guidance", type=float, default=3.0)
    g.add_argument("--no-pose", action="store_true", help="skip Optimize Input Pose")
    g.add_argument("--frames", type=int, default=36, help="turntable frames")
    g.add_argument("--turntable-size", type=int, default=384)
    g.add_argument("--animation", choices=["gif", "webp"], default="gif")
    g.add_argument("--mesh", action="append", choices=["glb", "obj"], default=None,
                   help="also write a vertex-coloured mesh (<name>.glb / .obj); repeat for both")
    g.add_argument("-y", "--yes", action="store_true", help="download missing official weights without asking")
    g.set_defaults(func=cmd_generate)

    s = sub.add_parser("selftest", help="run the whole chain on tiny random checkpoints (CPU, offline)")
    s.add_argument("--keep", default=None, help="keep checkpoints and outputs in this folder")
    s.set_defaults(func=cmd_selftest)

    _register_optional(sub)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
