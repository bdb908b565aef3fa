"""``mvboost boost-data`` and ``mvboost train-lora``: :func:`register` adds them to the ``mvboost`` command.

Both run as one process or under ``accelerate launch`` (multi-GPU / multi-node), e.g.::

    accelerate launch --multi_gpu --num_processes 8 -m mvboost_core.cli boost-data --images imgs/ --out ds/ \\
        --era3d models/era3d/MacLab-Era3D-512-6view --lgm models/lgm/model_fp16_fixrot.safetensors
    accelerate launch --multi_gpu --num_processes 8 -m mvboost_core.cli train-lora --data ds/ \\
        --lgm models/lgm/model_fp16_fixrot.safetensors --out models/lgm_loras/boost.safetensors \\
        --mixed-precision bf16 --save-every 500

On a machine without CUDA, several CPU processes are started with the torchrun-based launcher:
``accelerate launch --multi_gpu --num_processes 2 -m ...`` (``--cpu`` alone makes accelerate start a single
process unless MPI is set up); the processes detect the missing GPU and use the gloo backend.

This module also runs on its own (``python -m mvboost_core.boost.cli boost-data ...``).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

__all__ = ["register", "main", "cmd_boost_data", "cmd_train_lora"]


def _cli():
    from .. import cli

    return cli


def _parents(sub):
    """The ``--debug`` option of the main parser's sub-commands (when registered there)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the full traceback")
    return [p]


def _add_boost_data(sub) -> None:
    I, F = _cli().int_range, _cli().float_range
    p = sub.add_parser(
        "boost-data", parents=_parents(sub),
        help="generate the refined multi-view dataset for LoRA boosting (resumable, shards over processes)",
        description="Per image: Era3D six views -> bridge -> LGM -> render -> Refine Views (SDEdit) -> one sample "
                    "under OUT/samples/<id>/. Rerunning skips complete samples. Use `accelerate launch` to spread "
                    "the images over GPUs/nodes.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help="folder of input images (RGBA preferred; searched recursively)")
    src.add_argument("--synthetic", type=I(1), metavar="N",
                     help="N procedural Gaussian-blob objects with exact ground truth (machinery check, no Era3D)")
    p.add_argument("--out", required=True, help="dataset folder (created; existing complete samples are kept)")
    p.add_argument("--era3d", help="Era3D diffusers folder (required with --images)")
    p.add_argument("--lgm", help="LGM checkpoint .safetensors (required with --images; optional base model for "
                                 "--synthetic renders)")
    p.add_argument("--lgm-config", help="LGM config name or options JSON (default: detected from the checkpoint)")
    p.add_argument("--strength", type=F(0.0, 1.0, lo_open=True), default=0.95, help="Refine Views SDEdit strength (default 0.95)")
    p.add_argument("--steps", type=I(1, 1000), default=40, help="Era3D sampling steps (default 40)")
    p.add_argument("--refine-steps", type=I(1, 1000), default=None, help="refinement schedule length (default --steps)")
    p.add_argument("--guidance", type=F(0.0, 50.0), default=3.0)
    p.add_argument("--crop-size", type=I(16, 4096), default=420)
    p.add_argument("--seed", type=I(0), default=0, help="base seed; each item's seed derives from it and its name")
    p.add_argument("--size", type=I(16, 4096), default=64, help="--synthetic: input and render size")
    p.add_argument("--views", type=I(1, 64), default=6, help="--synthetic: supervised views per object")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"),
                   help="auto|cpu|cuda|mps (under accelerate: the process's device)")
    p.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16", "fp16"), help="compute dtype for the models: auto|fp32|bf16|fp16")
    p.add_argument("--verify", choices=["size", "hash"], default="size",
                   help="how existing samples are checked before being skipped (hash = full SHA-256)")
    p.add_argument("--on-error", choices=["raise", "skip"], default="skip",
                   help="skip: log a failing image and continue (retried next run)")
    p.set_defaults(func=cmd_boost_data)


def _add_train_lora(sub) -> None:
    from .train import TrainConfig

    d = TrainConfig(data="", lgm="", out="")
    I, F = _cli().int_range, _cli().float_range
    p = sub.add_parser(
        "train-lora", parents=_parents(sub),
        help="train a LoRA on LGM's cross-view attention from a boost-data dataset",
        description="peft LoRA on the qkv/proj Linear layers of every MVAttention; loss MSE(rgb) + MSE(alpha) + "
                    "LPIPS-VGG against the refined views. Checkpoints every --save-every steps; --resume continues "
                    "from the newest one.",
    )
    p.add_argument("--data", required=True, help="dataset folder written by boost-data")
    p.add_argument("--lgm", required=True, help="base LGM checkpoint .safetensors")
    p.add_argument("--lgm-config", default=None, help="LGM config name or options JSON (default: detected)")
    p.add_argument("--out", required=True, help="adapter file to write (.safetensors, e.g. models/lgm_loras/x.safetensors)")
    p.add_argument("--rank", type=I(1, 1024), default=d.rank)
    p.add_argument("--alpha", type=F(0.0, lo_open=True), default=None, help="lora_alpha (default: = rank)")
    p.add_argument("--dropout", type=F(0.0, 0.99), default=d.dropout)
    p.add_argument("--steps", type=I(1), default=d.steps, help="optimizer steps")
    p.add_argument("--lr", type=F(0.0, 1.0, lo_open=True), default=d.lr)
    p.add_argument("--weight-decay", type=F(0.0), default=d.weight_decay)
    p.add_argument("--warmup-steps", type=I(0), default=d.warmup_steps)
    p.add_argument("--lr-schedule", choices=["constant", "cosine"], default=d.lr_schedule)
    p.add_argument("--batch-size", type=I(1), default=d.batch_size, help="samples per process per micro-batch")
    p.add_argument("--grad-accum", type=I(1), default=d.grad_accum)
    p.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default=d.mixed_precision)
    p.add_argument("--grad-clip", type=F(0.0), default=d.grad_clip)
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--lambda-lpips", type=F(0.0), default=d.lambda_lpips)
    p.add_argument("--lpips-size", type=I(16, 4096), default=d.lpips_size)
    p.add_argument("--lpips-weights", default=None, help="LPIPS VGG16 trunk file (default: <models-dir>/lpips/"
                                                          "vgg16.tv_in1k.safetensors, `mvboost download lpips`)")
    p.add_argument("--models-dir", default=None, help="models folder (default: $MVBOOST_MODELS_DIR or user cache)")
    p.add_argument("-y", "--yes", action="store_true", help="download the LPIPS trunk without asking if missing")
    p.add_argument("--lpips-random", action="store_true", help="random LPIPS trunk (tests only; meaningless loss)")
    p.add_argument("--save-every", type=I(0), default=d.save_every, help="checkpoint every N steps (0 = never)")
    p.add_argument("--checkpoint-dir", default=None, help="default: <out stem>.checkpoints next to --out")
    p.add_argument("--keep-checkpoints", type=I(1), default=d.keep_checkpoints)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    p.add_argument("--seed", type=I(0), default=d.seed)
    p.add_argument("--num-workers", type=I(0), default=d.num_workers, help="DataLoader workers reading samples")
    p.add_argument("--cpu", action="store_true", help="force CPU even when a GPU is present")
    p.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_train_lora)


def register(subparsers) -> None:
    """Add ``boost-data`` and ``train-lora`` to an ``argparse`` sub-parser collection.

    Each sub-parser sets ``func``: dispatch with ``return args.func(args)`` (an int exit code)."""
    _add_boost_data(subparsers)
    _add_train_lora(subparsers)


def _device(arg: str):
    import torch

    from .dataset import partial_state

    if arg != "auto":
        return torch.device(arg)
    return partial_state().device


def _validate_boost_data(args) -> None:
    """Every path and file before a model loads (UserError: one line)."""
    cli = _cli()
    if args.images is not None:
        root = Path(args.images).expanduser()
        if not root.is_dir():
            raise cli.UserError(f"--images {root} " + ("is a file, not a folder" if root.exists() else "does not exist")
                                + ". Give a folder of RGBA images")
        from .dataset import list_images

        try:
            list_images(root)
        except ValueError as e:
            raise cli.UserError(f"{e}. Put RGBA .png images in it") from None
        if not args.era3d or not args.lgm:
            raise cli.UserError("boost-data --images needs --era3d FOLDER and --lgm CHECKPOINT. Add both "
                                f"(`{cli.prog()} download era3d` / `download lgm` fetch the official ones)")
        cli.check_era3d_folder(args.era3d)
    if args.lgm:
        cli.check_lgm_file(cli.existing_file(args.lgm, "--lgm checkpoint"))
    cli.prepare_output_dir(args.out, "dataset folder")
    if args.device != "auto":
        cli.resolve_device(args.device)


def cmd_boost_data(args) -> int:
    """``boost-data``; Ctrl-C prints ``interrupted; N of M samples complete ..., re-run the same command to resume``
    and returns 130 (only complete samples stay on disk)."""
    from ..progress import report_interrupt

    try:
        return _boost_data(args)
    except KeyboardInterrupt as e:
        return report_interrupt(e, "no sample was being written; re-run the same command to resume",
                                exit_now=True)


def _boost_data(args) -> int:
    from .dataset import MVBoostGenerator, SyntheticGenerator, generate_dataset, list_images

    _validate_boost_data(args)
    device = _device(args.device)
    dtype = None if args.dtype == "auto" else args.dtype

    def load_base():
        from ..lgm import load_lgm

        return load_lgm(args.lgm, config=args.lgm_config, device=device, dtype=dtype)

    if args.synthetic is not None:
        base = load_base() if args.lgm else None
        in_size = base.config.input_size if base is not None else args.size
        gen = SyntheticGenerator(input_size=in_size, render_size=args.size, n_views=args.views, base_lgm=base)
        items = [f"synthetic_{i:06d}" for i in range(args.synthetic)]
    else:

        def load_era3d():
            from ..era3d import load_era3d as _load

            return _load(args.era3d, device=device, dtype=dtype)

        name = None
        if args.lgm_config:
            from ..lgm import get_config

            name = get_config(args.lgm_config).name
        gen = MVBoostGenerator(load_era3d, load_base, args.images, strength=args.strength, steps=args.steps,
                               refine_steps=args.refine_steps, guidance=args.guidance, crop_size=args.crop_size,
                               lgm_config_name=name or Path(args.lgm).stem)
        items = list_images(args.images)
    rep = generate_dataset(args.out, items, gen, seed=args.seed, verify=args.verify, on_error=args.on_error)
    print(f"[rank {rep.rank}/{rep.world_size}] boost-data: {len(rep.generated)} generated, {len(rep.skipped)} "
          f"already complete, {len(rep.regenerated)} regenerated, {len(rep.failed)} failed", flush=True)
    return 1 if rep.failed else 0


def _validate_train_lora(args) -> None:
    """Paths, files and the LPIPS trunk before a model loads (UserError: one line)."""
    cli = _cli()
    data = Path(args.data).expanduser()
    if not data.is_dir():
        raise cli.UserError(f"--data {data} " + ("is a file, not a folder" if data.exists() else "does not exist")
                            + f". Give a dataset folder written by `{cli.prog()} boost-data`")
    from .dataset import list_samples

    if not list_samples(data):
        raise cli.UserError(f"--data {data} holds no complete samples. Write some with `{cli.prog()} boost-data "
                            f"--images DIR --out {data} ...` first")
    cli.check_lgm_file(cli.existing_file(args.lgm, "--lgm checkpoint"))
    out = Path(args.out).expanduser()
    if out.suffix != ".safetensors":
        raise cli.UserError(f"--out {out} must end in .safetensors (the adapter file). E.g. --out "
                            f"{out.with_suffix('.safetensors')}")
    if out.is_dir():
        raise cli.UserError(f"--out {out} is a directory. Give the adapter file path")
    cli.prepare_output_dir(out.parent, "--out folder")
    if args.lambda_lpips > 0 and not args.lpips_random:
        if args.lpips_weights:
            args.lpips_weights = str(cli.existing_file(args.lpips_weights, "--lpips-weights"))
        else:
            found = cli.lpips_ready(args.models_dir, args.yes, "train-lora's loss")
            if found is None:
                raise cli.UserError(
                    "train-lora's LPIPS loss needs the VGG16 weights, which are not on disk. Run "
                    f"`{cli.prog()} download lpips" + (f" --models-dir {args.models_dir}" if args.models_dir else "")
                    + "` (~553 MB), or pass --lpips-weights FILE, or --lpips-random (meaningless loss, tests only), "
                    "or --lambda-lpips 0")
            args.lpips_weights = str(found)


def cmd_train_lora(args) -> int:
    """``train-lora``; Ctrl-C saves a resumable checkpoint (single process), prints ``interrupted; ...`` and
    returns 130."""
    from ..progress import report_interrupt
    from .train import TrainConfig, train_lora

    _validate_train_lora(args)
    fields = TrainConfig.__dataclass_fields__
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
    try:
        train_lora(cfg)
    except KeyboardInterrupt as e:
        return report_interrupt(e, "before the first training step; re-run the same command to start again",
                                exit_now=True)
    return 0


def main(argv=None) -> int:
    """``python -m mvboost_core.boost.cli``: the same as ``mvboost boost-data|train-lora`` (one-line user errors)."""
    return _cli().main(argv)


if __name__ == "__main__":
    sys.exit(main())
