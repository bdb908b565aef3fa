"""The ``mvboost`` command.

    mvboost download {lgm,era3d,lpips} [--variant fp16_fixrot] [--models-dir DIR]
    mvboost generate IMAGE -o OUT [--lora FILE] [--device auto|cpu|cuda|mps] [--models-dir DIR] [--yes]
    mvboost selftest [--keep DIR]

``generate`` writes ``OUT/<image name>.ply``, ``.splat``, ``<name>_turntable/frame_XXX.png`` and
``<name>_turntable.gif``. Every argument, path and weight file is checked before the first model loads (output
folder writable, image readable with a real object, LoRA compatible with the LGM checkpoint's header, checkpoint
headers readable, the LPIPS trunk the pose step uses). Missing official weights: in a terminal it asks before
downloading them (``--yes`` answers yes); without a terminal it stops and names the download commands. A missing
LPIPS trunk is not fatal: the pose step then uses its fallback loss. User errors print one line
``error: <problem>. <fix>`` and exit with status 2 (``--debug`` shows the traceback). ``boost-data`` and
``train-lora`` come from :mod:`mvboost_core.boost.cli` when that module is present.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["main", "build_parser", "resolve_device", "UserError", "prog", "int_range", "float_range"]

log = logging.getLogger("mvboost")


class UserError(Exception):
    """A mistake the user can fix: ``main`` prints ``error: <message>`` on one line and exits with status 2."""


def _one_line(msg) -> str:
    return " ".join(str(msg).split())


# ------------------------------------------------------------------------------------------------ how to call us
def prog() -> str:
    """This command as the user can type it again: ``mvboost`` when that is on PATH, else the script's path as
    given (e.g. ``.venv/bin/mvboost`` after ``scripts/main.sh``), or ``python -m mvboost_core``."""
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else "mvboost"
    if argv0.endswith(("__main__.py", "cli.py")) or argv0 in ("-m", "-c"):
        exe = sys.executable or "python"
        rel = os.path.relpath(exe) if os.path.abspath(exe).startswith(os.getcwd() + os.sep) else exe
        return f"{rel} -m mvboost_core"
    name = os.path.basename(argv0)
    found = shutil.which(name)
    try:
        if found and os.path.samefile(found, argv0):
            return name
    except OSError:
        pass
    if os.path.sep not in argv0:
        return name
    return os.path.relpath(argv0) if os.path.abspath(argv0).startswith(os.getcwd() + os.sep) else argv0


def rerun_with_yes() -> str:
    """How to answer yes to the downloads: ``bash scripts/main.sh --yes`` when launched from it (it exports
    ``MVBOOST_LAUNCHER``), else the same command with --yes."""
    launcher = os.environ.get("MVBOOST_LAUNCHER")
    return f"run `{launcher} --yes`" if launcher else "re-run this command with --yes"


# ------------------------------------------------------------------------------------------------ argument types
def int_range(lo: int | None = None, hi: int | None = None):
    """argparse ``type=``: an integer in ``[lo, hi]`` (either bound optional)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f">= {lo}" if hi is None else f"between {lo} and {hi}"
            raise argparse.ArgumentTypeError(f"must be an integer {rng}, got {v}")
        return v
    parse.__name__ = "integer"
    return parse


def float_range(lo: float | None = None, hi: float | None = None, lo_open: bool = False):
    """argparse ``type=``: a finite float in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``)."""
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        bad = not math.isfinite(v) or (lo is not None and (v <= lo if lo_open else v < lo)) or \
            (hi is not None and v > hi)
        if bad:
            low = "" if lo is None else (f"> {lo:g}" if lo_open else f">= {lo:g}")
            rng = " and ".join(x for x in (low, "" if hi is None else f"<= {hi:g}") if x) or "finite"
            raise argparse.ArgumentTypeError(f"must be a number {rng}, got {text}")
        return v
    parse.__name__ = "number"
    return parse


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (``error: argument --steps: must be ... See `mvboost generate --help`.``), status 2."""

    def error(self, message: str):  # noqa: D401
        print(f"error: {_one_line(message)}. See `{prog()}{self.prog[len('mvboost'):]} --help`.", file=sys.stderr)
        raise SystemExit(2)


def resolve_device(name: str = "auto"):
    """``auto`` = CUDA, else MPS, else CPU; explicit names are checked for availability (:class:`UserError`)."""
    import torch

    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda requested but CUDA is not available. Use --device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("--device mps requested but MPS is not available. Use --device cpu or auto")
    if name not in ("cpu", "cuda", "mps"):
        raise UserError(f"unknown device {name!r}. Use auto, cpu, cuda or mps")
    return torch.device(name)


# ------------------------------------------------------------------------------------------------ path checks
_CREATED: list[Path] = []  # folders this run created; removed again (if still empty) when it fails


def prepare_output_dir(path, what: str = "output folder") -> Path:
    """Create ``path`` (and parents) if needed and prove it is writable with a probe file; :class:`UserError`
    otherwise. Folders created here are removed again if the command then fails before writing into them."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a folder. Give a folder path")
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    try:
        path.mkdir(parents=True, exist_ok=True)
        _CREATED.extend(reversed(missing))
        fd, probe = tempfile.mkstemp(prefix=".mvboost-write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"cannot write to {what} {path} ({e.strerror or e}). Choose a folder you can write to")
    return path


def _cleanup_created() -> None:
    for d in reversed(_CREATED):
        try:
            d.rmdir()
        except OSError:
            pass
    _CREATED.clear()


def existing_file(path, what: str, suffixes: tuple = ()) -> Path:
    """``path`` as an existing regular file (``~`` expanded), else :class:`UserError`."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise UserError(f"{what} {p} is a directory, not a file. Give the file itself")
    if not p.is_file():
        raise UserError(f"{what} {p} does not exist. Check the path")
    if suffixes and p.suffix.lower() not in suffixes:
        raise UserError(f"{what} {p} is not a {' / '.join(suffixes)} file. Give a {suffixes[0]} file")
    return p


def check_lgm_file(path) -> None:
    """The LGM checkpoint's safetensors header is readable and is LGM's (no tensor data read)."""
    from .lgm.checkpoint import LGMCheckpointError, _read_any, detect_config

    try:
        shapes, kind = _read_any(Path(path))
        if kind == "safetensors":
            detect_config(shapes)
    except (LGMCheckpointError, OSError) as e:
        raise UserError(_one_line(e)) from None


def check_era3d_folder(folder) -> None:
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise UserError(f"Era3D folder {folder} does not exist" + (" (it is a file)" if folder.exists() else "")
                        + ". Give the diffusers folder (the one holding model_index.json)")
    if not (folder / "model_index.json").is_file():
        raise UserError(f"{folder} is not an Era3D diffusers folder (no model_index.json). Give the folder that "
                        "holds model_index.json, unet/ and vae/")
    from .lgm.checkpoint import LGMCheckpointError, read_safetensors_header

    for f in sorted(folder.glob("*/diffusion_pytorch_model*.safetensors")):
        try:
            read_safetensors_header(f)
        except (LGMCheckpointError, OSError) as e:
            raise UserError(_one_line(str(e).replace("huggingface.co/ashawkey/LGM", "the Era3D repository"))) from None


def check_image(path) -> "object":
    """The input image as RGBA (PIL), refusing what Era3D cannot use (no alpha, nothing opaque, a speck)."""
    import numpy as np
    from PIL import Image

    path = existing_file(path, "input image")
    try:
        img = Image.open(path)
        img.load()
    except Exception as e:  # noqa: BLE001
        raise UserError(f"cannot read {path} as an image ({_one_line(e)}). Give a PNG/WebP with transparency") from None
    if "A" not in img.getbands() and "transparency" not in img.info:
        raise UserError(
            f"{path} has no alpha channel. Era3D needs the object cut out: give an RGBA PNG with a transparent "
            "background (remove the background first, e.g. with rembg)")
    img = img.convert("RGBA")
    alpha = np.asarray(img.getchannel("A"))
    ys, xs = np.nonzero(alpha > 0)
    if len(ys) == 0:
        raise UserError(f"{path} is fully transparent: there is no object in it. Give an image whose object is "
                        "opaque on a transparent background")
    h, w = int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)
    if max(h, w) < 16 or len(ys) < 64:
        raise UserError(f"the object in {path} is only {w}x{h} pixels ({len(ys)} not transparent). Era3D enlarges "
                        "the object to fill its input; give an image where it is at least 16 pixels across")
    if len(ys) == alpha.size and alpha.min() == 255:
        log.warning("%s is fully opaque: the whole picture is taken as the object", path)
    return img


# ------------------------------------------------------------------------------------------------ download
def _download(what: str, variant: str, models_dir) -> Path:
    from . import weights

    folder = weights.model_folder(what, models_dir)
    src = {"lgm": weights.LGM_REPO, "era3d": weights.ERA3D_REPO, "lpips": weights.LPIPS_REPO}[what]
    label = {"lgm": f"LGM ({variant})", "era3d": "Era3D", "lpips": "the LPIPS VGG16 trunk"}[what]
    print(f"Downloading {label} ({weights.SIZES[what]}) from huggingface.co/{src} into {folder} ...", flush=True)
    try:
        return weights.download(what, models_dir, variant=variant)
    except weights.WeightsUnavailableError as e:
        raise UserError(_one_line(e)) from None


def cmd_download(args) -> int:
    from . import weights

    if args.models_dir:
        prepare_output_dir(args.models_dir, "models folder")
    if args.what == "lgm":
        weights.lgm_filename(args.variant)  # validated by argparse's choices
    path = _download(args.what, args.variant, args.models_dir)
    print(f"OK: {path}")
    return 0


# ------------------------------------------------------------------------------------------------ generate
def _ask(question: str) -> bool:
    try:
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        return False


def _download_cmd(what: str, models_dir) -> str:
    return f"{prog()} download {what}" + (f" --models-dir {models_dir}" if models_dir else "")


def lpips_ready(models_dir, yes: bool, purpose: str) -> Path | None:
    """The LPIPS-VGG trunk file (downloaded when ``yes`` or confirmed in a terminal), or None when unavailable.
    ``purpose`` names who needs it, for the question."""
    from . import weights
    from .metrics import find_lpips_weights

    found = weights.lpips_weights_file(models_dir)
    other = find_lpips_weights("vgg", models_dir)  # <models>/lpips/, else torchvision's cache (legacy)
    if other is not None:
        return other
    if not yes and not (sys.stdin.isatty() and _ask(
            f"{purpose} uses LPIPS, whose VGG16 weights ({weights.SIZES['lpips']}, huggingface.co/"
            f"{weights.LPIPS_REPO}) are not in {found.parent}. Download them now?")):
        return None
    try:
        return _download("lpips", "", models_dir)
    except UserError as e:
        print(f"warning: {e}", file=sys.stderr)
        return None


def _ensure_weights(args) -> tuple[Path, Path, Path | None]:
    """LGM checkpoint, Era3D folder and LPIPS trunk (None = pose fallback); asks before downloading."""
    from . import weights

    missing = []
    try:
        lgm_path = weights.find_lgm_checkpoint(args.lgm, args.models_dir)
    except weights.WeightsNotFoundError as e:
        raise UserError(f"{_one_line(e)}. Give an existing .safetensors file, or leave --lgm out for the official "
                        "checkpoint") from None
    except weights.WeightsUnavailableError:
        lgm_path = None
        missing.append("lgm")
    if args.era3d:
        era3d_dir = Path(args.era3d).expanduser()
        check_era3d_folder(era3d_dir)
    else:
        era3d_dir = weights.model_folder("era3d", args.models_dir) / weights.ERA3D_FOLDER
        if not weights.era3d_complete(era3d_dir):
            missing.append("era3d")
    if missing:
        names = " and ".join(f"{m.replace('lgm', 'LGM').replace('era3d', 'Era3D')} ({weights.SIZES[m]})"
                             for m in missing)
        cmds = " && ".join(_download_cmd(m, args.models_dir) for m in missing)
        if not args.yes:
            if not sys.stdin.isatty():
                raise UserError(
                    f"the official weights for {names} are not in {weights.resolve_models_dir(args.models_dir)}. "
                    f"Download them with `{cmds}`, or {rerun_with_yes()}")
            if not _ask(f"The official weights for {names} are missing. Download them now from huggingface.co?"):
                raise UserError(f"not downloading {names}. Download them later with `{cmds}`")
        for m in missing:
            p = _download(m, args.lgm_variant, args.models_dir)
            if m == "lgm":
                lgm_path = p
            else:
                era3d_dir = p
    lpips_path = None
    if not args.no_pose:
        lpips_path = lpips_ready(args.models_dir, args.yes, "The pose step")
        if lpips_path is None:
            print("warning: no LPIPS VGG16 weights: the pose step uses its fallback loss 0.8*L1 + 0.2*(1-SSIM) "
                  f"instead of LPIPS; for LPIPS run `{_download_cmd('lpips', args.models_dir)}`", file=sys.stderr)
    return lgm_path, era3d_dir, lpips_path


def cmd_generate(args) -> int:
    device = resolve_device(args.device)
    image = check_image(args.image)
    out_dir = prepare_output_dir(args.output)
    lora = existing_file(args.lora, "LoRA", (".safetensors",)) if args.lora else None
    from .estimate import estimate_generate

    est = estimate_generate(device, steps=args.steps, guidance=args.guidance, optimize_pose=not args.no_pose,
                            frames=args.frames, turntable_size=args.turntable_size)
    if est.message:  # a CPU run expected to take more than a few minutes: say so before downloads and loading
        print(est.message, flush=True)
    lgm_path, era3d_dir, lpips_path = _ensure_weights(args)
    check_lgm_file(lgm_path)
    if lora is not None:
        from .boost.lora import LoRAError, check_adapter_file

        try:
            check_adapter_file(lora, lgm_path)
        except (LoRAError, OSError) as e:
            raise UserError(_one_line(e)) from None

    import torch
    from tqdm.auto import tqdm

    from .era3d import load_era3d
    from .lgm import load_lgm
    from .metrics import lpips_weights
    from .pipeline import STAGE_LABELS, image_to_gaussians, render_turntable, write_outputs
    from .pose import PoseOptions

    t0 = time.perf_counter()
    bars: dict = {}

    def progress(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=STAGE_LABELS.get(stage, stage), unit="step", leave=False)
        bar.total = total
        bar.n = done
        bar.refresh()

    from . import precision

    print(f"Loading Era3D from {era3d_dir} and LGM from {lgm_path} ({precision.describe('era3d', device, args.dtype)}; "
          f"{precision.describe('lgm', device, args.dtype, lgm_path)}) ...", flush=True)
    era3d = load_era3d(era3d_dir, device=device, dtype=args.dtype)
    lgm = load_lgm(lgm_path, device=device, dtype=args.dtype)
    if lora is not None:
        from .boost.lora import apply_lora

        apply_lora(lgm, lora, strength=args.lora_strength)
        print(f"Applied LoRA {lora} (strength {args.lora_strength})")
    opts = PoseOptions(lpips_pretrained=True)  # the core defaults on every device (the node's too)
    with torch.inference_mode(False), lpips_weights(lpips_path):
        res = image_to_gaussians(image, era3d, lgm, optimize_pose=not args.no_pose, seed=args.seed,
                                 steps=args.steps, guidance=args.guidance, pose_options=opts, progress=progress)
    del era3d
    tt = render_turntable(res.gaussians, frames=args.frames, size=args.turntable_size, progress=progress)
    name = Path(args.image).stem
    paths = write_outputs(res.gaussians, out_dir, name, tt, animation=args.animation, mesh=args.mesh or (),
                          progress=progress)
    for b in bars.values():
        b.close()
    _CREATED.clear()  # the output folder is in use now
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


def _debug_parent() -> argparse.ArgumentParser:
    d = argparse.ArgumentParser(add_help=False)
    d.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show the full traceback of an error")
    return d


def build_parser() -> argparse.ArgumentParser:
    from .weights import LGM_FILES

    p = _Parser(prog="mvboost", description="MVBoost: one image -> 3D Gaussians (Era3D + boosted LGM).")
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    dbg = [_debug_parent()]

    d = sub.add_parser("download", help="download official weights (explicit)", parents=dbg)
    d.add_argument("what", choices=["lgm", "era3d", "lpips"],
                   help="lgm (~830 MB), era3d (~6 GB) or lpips (the pose step's VGG16 trunk, ~553 MB)")
    d.add_argument("--variant", default="fp16_fixrot", choices=sorted(LGM_FILES), help="LGM variant")
    d.add_argument("--models-dir", default=None, help="models folder (default: $MVBOOST_MODELS_DIR or user cache)")
    d.set_defaults(func=cmd_download)

    g = sub.add_parser("generate", help="image -> .ply, .splat and a turntable", parents=dbg)
    g.add_argument("image", help="RGBA image of the object (transparent background)")
    g.add_argument("-o", "--output", required=True, help="output folder (created)")
    g.add_argument("--lora", default=None, help="MVBoost LoRA adapter (.safetensors) for LGM")
    g.add_argument("--lora-strength", type=float_range(-4.0, 4.0), default=1.0)
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    g.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="weights/compute precision; auto = the per-device rule of mvboost_core.precision")
    g.add_argument("--models-dir", default=None, help="models folder (default: $MVBOOST_MODELS_DIR or user cache)")
    g.add_argument("--lgm", default=None, help="LGM checkpoint path or file name (default: the official one)")
    g.add_argument("--lgm-variant", default="fp16_fixrot", choices=sorted(LGM_FILES), help=argparse.SUPPRESS)
    g.add_argument("--era3d", default=None, help="Era3D diffusers folder (default: <models-dir>/era3d/...)")
    g.add_argument("--seed", type=int_range(0, 2**63 - 1), default=42)
    g.add_argument("--steps", type=int_range(1, 1000), default=40, help="Era3D sampling steps (1-1000)")
    g.add_argument("--guidance", type=float_range(0.0, 50.0), default=3.0)
    g.add_argument("--no-pose", action="store_true", help="skip Optimize Input Pose")
    g.add_argument("--frames", type=int_range(1, 720), default=36, help="turntable frames (1-720)")
    g.add_argument("--turntable-size", type=int_range(16, 4096), default=384)
    g.add_argument("--animation", choices=["gif", "webp"], default="gif")
    g.add_argument("--mesh", action="append", choices=["glb", "obj"], default=None,
                   help="also write a vertex-coloured mesh (<name>.glb / .obj); repeat for both")
    g.add_argument("-y", "--yes", action="store_true", help="download missing official weights without asking")
    g.set_defaults(func=cmd_generate)

    s = sub.add_parser("selftest", help="run the whole chain on tiny random checkpoints (CPU, offline)", parents=dbg)
    s.add_argument("--keep", default=None, help="keep checkpoints and outputs in this folder")
    s.set_defaults(func=cmd_selftest)

    from .estimate import register as register_estimate

    register_estimate(sub)  # mvboost estimate: the time `generate` is expected to take here
    _register_optional(sub)
    return p


def main(argv=None) -> int:
    """Run the command; user errors -> one ``error:`` line on stderr and status 2 (``--debug``: the traceback)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    debug = bool(getattr(args, "debug", False))
    from .boost.lora import LoRAError
    from .lgm.checkpoint import LGMCheckpointError
    from .weights import WeightsUnavailableError

    try:
        return int(args.func(args) or 0)
    except (UserError, WeightsUnavailableError, LoRAError, LGMCheckpointError) as e:
        _cleanup_created()
        if debug:
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        _cleanup_created()
        if debug:
            raise
        from .progress import report_interrupt

        # outputs are written atomically (temp file + rename): nothing half-written is left
        return report_interrupt(e, "no partial files were left; re-run the same command", exit_now=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
