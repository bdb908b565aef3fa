"""LoRA training on LGM's cross-view attention (``mvboost train-lora``), single process or ``accelerate launch``.

Model: the base LGM (frozen) + peft LoRA on exactly the ``qkv``/``proj`` Linear layers of every MVAttention
(:func:`mvboost_core.boost.lora.inject_lora`; rank 32 by default). Only the LoRA parameters train.

Step (per sample of a :class:`~mvboost_core.boost.dataset.BoostDataset`): the four bridged views ``lgm_input``
-> ``prepare_lgm_input`` (ImageNet normalisation + Plücker rays of the sample's LGM cameras) ->
``forward_gaussians`` -> render at the sample's refinement cameras (white background, differentiable
:func:`mvboost_core.render.render`) -> loss against the refined views, as LGM's own training
(LGM ``core/models.py``): ``MSE(rgb.clamp(0,1), target) + MSE(alpha, target_mask) + lambda_lpips · LPIPS-VGG``,
LPIPS on ``[-1,1]`` images bilinearly downsampled to ``lpips_size`` (256) when larger.

Optimisation: AdamW (betas 0.9/0.95 as LGM), constant LR after a linear warm-up (or cosine), gradient
accumulation, grad-norm clipping (1.0), mixed precision (``no``/``bf16``/``fp16``; rendering and the loss run in
float32), optional gradient checkpointing of every ResnetBlock / MVAttention.

Determinism and resume: the data order is a pure function of ``(seed, micro-step)`` (one permutation per epoch
from ``torch.Generator().manual_seed(seed + epoch)``; global micro-batch ``k`` takes the next ``batch_size ·
num_processes`` indices, process ``r`` its ``r``-th slice), so nothing about the data has to be saved. Checkpoints
(``accelerate.save_state``: LoRA weights only, optimizer, scheduler, RNG states of every process, plus
``trainer_state.json`` with the step and the loss log, plus ``adapter.safetensors`` in the adapter format) go to ``<checkpoint_dir>/step_<N>`` atomically (written to a
temp folder, renamed) every ``save_every`` optimizer steps. ``resume=True`` restores the newest complete
checkpoint and continues; the loss curve after resuming equals the uninterrupted run's (tested).

Output: one adapter ``.safetensors`` (:func:`mvboost_core.boost.lora.save_adapter`, metadata with rank, alpha,
targets, base config and base-weights checksum) that drops into ``models/lgm_loras/``.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

__all__ = ["TrainConfig", "train_lora", "boost_loss", "enable_gradient_checkpointing", "micro_batch_indices",
           "StepBatchSampler",
           "latest_checkpoint", "TrainResult"]


@dataclass
class TrainConfig:
    """Settings of ``mvboost train-lora`` (CLI flags have the same names with dashes)."""

    data: str
    lgm: str
    out: str
    lgm_config: str | None = None  # config name / options JSON; None = detect from the checkpoint
    rank: int = 32
    alpha: float | None = None  # default = rank
    dropout: float = 0.0
    steps: int = 1000
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # constant | cosine
    batch_size: int = 1
    grad_accum: int = 1
    mixed_precision: str = "no"  # no | bf16 | fp16
    grad_clip: float = 1.0
    grad_checkpointing: bool = False
    lambda_lpips: float = 1.0
    lpips_size: int = 256
    lpips_weights: str | None = None  # VGG16 trunk file; None = torchvision cache
    lpips_random: bool = False  # random LPIPS trunk (tests only)
    save_every: int = 0
    checkpoint_dir: str | None = None  # default: <out without suffix>.checkpoints
    resume: bool = False
    keep_checkpoints: int = 2
    seed: int = 0
    num_workers: int = 0  # DataLoader worker processes reading samples
    log_every: int = 1
    cpu: bool = False
    stop_after: int | None = None  # stop (without writing the adapter) after this many steps (tests)

    def resolved_checkpoint_dir(self) -> Path:
        if self.checkpoint_dir:
            return Path(self.checkpoint_dir)
        o = Path(self.out)
        return o.with_name(o.stem + ".checkpoints")


@dataclass
class TrainResult:
    adapter: str | None
    steps: int
    losses: list[dict] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- pieces
def micro_batch_indices(k: int, n_items: int, batch_size: int, world_size: int, rank: int, seed: int) -> list[int]:
    """Dataset indices of process ``rank`` for global micro-batch ``k`` (deterministic, epoch permutations)."""
    per = batch_size * world_size
    start = k * per + rank * batch_size
    out = []
    cache: dict[int, Tensor] = {}
    for j in range(start, start + batch_size):
        epoch, pos = divmod(j, n_items)
        if epoch not in cache:
            cache[epoch] = torch.randperm(n_items, generator=torch.Generator().manual_seed(seed + epoch))
        out.append(int(cache[epoch][pos]))
    return out


def enable_gradient_checkpointing(model: nn.Module) -> int:
    """Recompute every ResnetBlock / MVAttention in the backward pass (non-reentrant ``torch.utils.checkpoint``,
    RNG state preserved so LoRA dropout matches). Returns the number of wrapped modules."""
    from torch.utils.checkpoint import checkpoint

    from ..lgm.network import MVAttention, ResnetBlock

    def wrapped(fn, *args, **kwargs):
        if torch.is_grad_enabled():
            return checkpoint(fn, *args, use_reentrant=False, **kwargs)
        return fn(*args, **kwargs)

    n = 0
    for m in model.modules():
        if isinstance(m, (ResnetBlock, MVAttention)) and not getattr(m, "_mvboost_ckpt", False):
            m.forward = functools.partial(wrapped, m.forward)
            m._mvboost_ckpt = True
            n += 1
    return n


def _cams(c2w: Tensor, intr: Tensor, width: int, height: int, projection: str):
    from ..cameras import Cameras

    return Cameras(c2w, intr[:, 0], intr[:, 1], intr[:, 2], intr[:, 3], width, height, projection)


def boost_loss(gaussians: Tensor, batch: dict[str, Tensor], camera_meta: dict, lpips_fn=None,
               lambda_lpips: float = 1.0, lpips_size: int = 256) -> tuple[Tensor, dict]:
    """LGM's training loss of predicted ``gaussians`` ``[B,N,14]`` against a batch's refined views.

    Returns ``(loss, parts)`` with ``parts`` = float values of ``mse_rgb``, ``mse_alpha``, ``lpips``, ``psnr``.
    """
    from ..gaussians import Gaussians
    from ..render import render

    B = gaussians.shape[0]
    rgbs, alphas = [], []
    for b in range(B):
        g = Gaussians.from_lgm(gaussians[b].float())
        cams = _cams(batch["c2w"][b], batch["intrinsics"][b], camera_meta["width"], camera_meta["height"],
                     camera_meta["projection"])
        out = render(g, cams, background=(1.0, 1.0, 1.0))
        rgbs.append(out.rgb.clamp(0, 1))
        alphas.append(out.alpha[..., 0])
    rgb = torch.stack(rgbs)  # [B,V,H,W,3]
    alpha = torch.stack(alphas)  # [B,V,H,W]
    t_rgb = batch["target_rgb"].to(rgb)
    t_a = batch["target_alpha"].to(alpha)
    mse_rgb = F.mse_loss(rgb, t_rgb)
    mse_a = F.mse_loss(alpha, t_a)
    loss = mse_rgb + mse_a
    lp = torch.zeros((), device=rgb.device)
    if lpips_fn is not None and lambda_lpips > 0:
        x = rgb.flatten(0, 1).permute(0, 3, 1, 2)
        y = t_rgb.flatten(0, 1).permute(0, 3, 1, 2)
        if x.shape[-1] > lpips_size or x.shape[-2] > lpips_size:
            x = F.interpolate(x, size=(lpips_size, lpips_size), mode="bilinear", align_corners=False)
            y = F.interpolate(y, size=(lpips_size, lpips_size), mode="bilinear", align_corners=False)
        lp = lpips_fn(x.permute(0, 2, 3, 1), y.permute(0, 2, 3, 1)).mean()
        loss = loss + lambda_lpips * lp
    psnr = -10 * torch.log10(mse_rgb.detach().clamp_min(1e-10))
    return loss, {"mse_rgb": float(mse_rgb.detach()), "mse_alpha": float(mse_a.detach()), "lpips": float(lp.detach()),
                  "psnr": float(psnr)}


def make_lpips(cfg: "TrainConfig"):
    from ..metrics import LPIPSLoss

    if cfg.lambda_lpips <= 0:
        return None
    return LPIPSLoss(net="vgg", pretrained_path=cfg.lpips_weights, pnet_rand=cfg.lpips_random)


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> Path | None:
    """Newest complete ``step_<N>`` folder (has ``trainer_state.json``), or None."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return None
    best = None
    for p in d.iterdir():
        if p.is_dir() and p.name.startswith("step_") and (p / "trainer_state.json").is_file():
            try:
                n = int(p.name[5:])
            except ValueError:
                continue
            if best is None or n > best[0]:
                best = (n, p)
    return None if best is None else best[1]


class _LoraOnlyState:
    """Hook for ``accelerate.save_state``: keep only the LoRA tensors of the model state dict."""

    @staticmethod
    def pre_save(models, weights, output_dir):
        for i, w in enumerate(weights):
            weights[i] = {k: v for k, v in w.items() if ".lora_" in k}


def _lr_lambda(cfg: TrainConfig):
    def f(step: int) -> float:
        w = 1.0 if cfg.warmup_steps <= 0 else min(1.0, (step + 1) / cfg.warmup_steps)
        if cfg.lr_schedule == "cosine":
            prog = min(1.0, step / max(1, cfg.steps))
            return w * 0.5 * (1 + math.cos(math.pi * prog))
        return w

    return f


# --------------------------------------------------------------------------------------------- training
def train_lora(cfg: TrainConfig) -> TrainResult:
    """Run LoRA training (see the module docstring). Works under ``accelerate launch`` (any number of
    processes / nodes) and as a plain single process."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from ..lgm import load_lgm, prepare_lgm_input
    from ..progress import DeferInterrupt
    from .dataset import BoostDataset
    from .lora import base_weights_checksum, inject_lora, lora_parameters, save_adapter

    if cfg.mixed_precision not in ("no", "bf16", "fp16"):
        raise ValueError(f"--mixed-precision must be no, bf16 or fp16, got {cfg.mixed_precision!r}")
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.grad_accum < 1:
        raise ValueError("--steps, --batch-size and --grad-accum must be >= 1")
    if cfg.lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"--lr-schedule must be constant or cosine, got {cfg.lr_schedule!r}")
    from .dataset import launched_on_cpu

    acc = Accelerator(mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum,
                      cpu=cfg.cpu or launched_on_cpu())
    ds = BoostDataset(cfg.data)
    lgm_cfg = cfg.lgm_config
    model = load_lgm(cfg.lgm, config=lgm_cfg, device=acc.device, dtype=torch.float32)
    base_checksum = base_weights_checksum(model)
    torch.manual_seed(cfg.seed)  # the same LoRA init on every process
    inject_lora(model, rank=cfg.rank, alpha=cfg.alpha, dropout=cfg.dropout)
    model.train()
    if cfg.grad_checkpointing:
        n = enable_gradient_checkpointing(model)
        log.info("gradient checkpointing on %d blocks", n)
    params = lora_parameters(model)
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    model, opt, sched = acc.prepare(model, opt, sched)
    lpips_fn = make_lpips(cfg)
    if lpips_fn is not None:
        lpips_fn = lpips_fn.to(acc.device)
    acc.register_save_state_pre_hook(_LoraOnlyState.pre_save)
    ckpt_dir = cfg.resolved_checkpoint_dir()
    step, losses = 0, []
    if cfg.resume:
        last = latest_checkpoint(ckpt_dir)
        if last is None:
            acc.print(f"--resume: no checkpoint in {ckpt_dir}; starting from step 0")
        else:
            acc.load_state(str(last), strict=False)
            _check_lora_restored(last, model)
            st = json.loads((last / "trainer_state.json").read_text())
            step, losses = int(st["step"]), list(st["losses"])
            acc.print(f"resumed from {last} at step {step}")
    if step == 0:
        set_seed(cfg.seed + 1000 * (acc.process_index + 1))  # per-process dropout streams, fixed at step 0
    meta = ds.camera_meta
    lgm_size = _unwrap(model).config.input_size
    n_items = len(ds)
    world, rank = acc.num_processes, acc.process_index
    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.steps, initial=step, desc="train-lora", disable=not acc.is_local_main_process)
    t0 = time.time()
    sampler = StepBatchSampler(step * cfg.grad_accum, cfg.steps * cfg.grad_accum, n_items, cfg.batch_size, world,
                               rank, cfg.seed)
    # own generator: creating the iterator must not draw from the global RNG (restored by --resume; LoRA dropout)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=cfg.num_workers,
                                         collate_fn=_stack, pin_memory=acc.device.type == "cuda",
                                         generator=torch.Generator().manual_seed(cfg.seed))
    batches = iter(loader)
    saved_step = step  # the newest checkpoint on disk (or where we resumed from)
    guard = DeferInterrupt()  # one optimizer update + its bookkeeping is never cut in half by Ctrl-C
    rng = _rng_state()
    try:
        while step < cfg.steps:
            if cfg.stop_after is not None and step >= cfg.stop_after:
                break
            acc_loss, parts_acc = 0.0, {}
            for micro in range(cfg.grad_accum):
                # a Ctrl-C inside safetensors' native reader surfaces as a ValueError from Rust, not as
                # KeyboardInterrupt: hold it while a batch loads (milliseconds) and raise it right after
                guard.hold()
                item = next(batches)
                guard.release()
                batch = {k: v.to(acc.device, non_blocking=True) for k, v in item.items()}
                with acc.accumulate(model):
                    lgm_cams = [_cams(batch["lgm_c2w"][b], batch["lgm_intrinsics"][b], meta["lgm_width"],
                                      meta["lgm_height"], meta["lgm_projection"]) for b in range(len(batch["index"]))]
                    from ..cameras import Cameras

                    x = prepare_lgm_input(batch["lgm_input"], Cameras.cat(lgm_cams), size=lgm_size).to(acc.device)
                    with acc.autocast():
                        raw = model(x)  # forward = forward_gaussians -> [B,N,14] float32
                    loss, parts = boost_loss(raw.float(), batch, meta, lpips_fn, cfg.lambda_lpips, cfg.lpips_size)
                    acc.backward(loss)
                    if acc.sync_gradients and cfg.grad_clip > 0:
                        acc.clip_grad_norm_(params, cfg.grad_clip)
                    if acc.sync_gradients:
                        guard.hold()  # from the weight update to `step += 1`
                    opt.step()
                    sched.step()
                    opt.zero_grad(set_to_none=True)
                acc_loss += float(loss.detach()) / cfg.grad_accum
                for kk, v in parts.items():
                    parts_acc[kk] = parts_acc.get(kk, 0.0) + v / cfg.grad_accum
            # mean over processes for the log (every process logs the same numbers)
            tot = torch.tensor([acc_loss] + [parts_acc[k] for k in sorted(parts_acc)], device=acc.device)
            tot = acc.reduce(tot, reduction="mean")
            rec = {"step": step + 1, "loss": float(tot[0]),
                   **{kk: float(v) for kk, v in zip(sorted(parts_acc), tot[1:])}, "lr": sched.get_last_lr()[0]}
            losses.append(rec)
            step += 1
            rng = _rng_state()  # the RNG state at this step boundary (what a checkpoint here must hold)
            guard.release()  # a Ctrl-C that came during the update is raised here, at a clean step boundary
            bar.update(1)
            if step % max(1, cfg.log_every) == 0:
                bar.set_postfix(loss=f"{rec['loss']:.4f}", psnr=f"{rec['psnr']:.2f}")
            if cfg.save_every and step % cfg.save_every == 0:
                _save_checkpoint(acc, ckpt_dir, step, losses, cfg, model, base_checksum)
                saved_step = step
    except KeyboardInterrupt:
        guard.release_quietly()
        bar.close()
        raise _interrupted(acc, ckpt_dir, step, saved_step, losses, cfg, model, base_checksum, rng) from None
    bar.close()
    acc.wait_for_everyone()
    adapter = None
    if step >= cfg.steps and acc.is_main_process:
        training = {k: v for k, v in asdict(cfg).items() if k not in ("resume", "stop_after", "cpu")}
        training.update(steps_done=step, num_processes=world, final_loss=losses[-1]["loss"] if losses else None,
                        seconds=round(time.time() - t0, 1))
        save_adapter(_unwrap(model), cfg.out, base_checksum=base_checksum, training=training)
        adapter = cfg.out
        (Path(cfg.out).with_suffix(".losses.json")).write_text(json.dumps(losses))
        acc.print(f"wrote LoRA adapter {cfg.out} ({step} steps, final loss {losses[-1]['loss']:.5f})")
    acc.wait_for_everyone()
    acc.end_training()
    return TrainResult(adapter, step, losses)


def _rng_state() -> dict:
    """Torch CPU (and CUDA, when initialised) generator states: the RNG streams a step consumes (LoRA dropout)."""
    st = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["cpu"])
    if "cuda" in st:
        torch.cuda.set_rng_state_all(st["cuda"])


def _interrupted(acc, ckpt_dir: Path, step: int, saved_step: int, losses: list, cfg: TrainConfig, model,
                 base_checksum, rng: dict):
    """After Ctrl-C at a step boundary (``step`` updates done): save a resumable checkpoint there when it is new
    and this is a single process (a few MB of LoRA + optimizer state; with several processes a collective save
    could deadlock, so the last periodic checkpoint is the resume point). Returns the
    :class:`~mvboost_core.progress.Interrupted` to raise."""
    from ..progress import Interrupted

    where = f"{step}/{cfg.steps} steps done"
    if step > saved_step and acc.num_processes == 1:
        _set_rng_state(rng)  # the generator state at this step boundary, as a periodic checkpoint would hold
        acc.step = step * cfg.grad_accum  # accelerate's micro-step counter (saved; it phases sync_gradients)
        _save_checkpoint(acc, ckpt_dir, step, losses, cfg, model, base_checksum)
        return Interrupted(f"{where}, checkpoint saved in {ckpt_dir / f'step_{step:08d}'}; re-run the same command "
                           "with --resume to continue")
    if saved_step > 0:
        return Interrupted(f"{where}, newest checkpoint {ckpt_dir / f'step_{saved_step:08d}'}; re-run the same "
                           "command with --resume to continue from it")
    return Interrupted(f"{where}, no checkpoint yet (--save-every N keeps one); re-run the same command to start "
                       "again")


def _unwrap(model):
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


def _check_lora_restored(ckpt: Path, model) -> None:
    from safetensors import safe_open

    files = sorted(ckpt.glob("model*.safetensors"))
    if not files:
        raise RuntimeError(f"checkpoint {ckpt} has no model weights file")
    with safe_open(str(files[0]), framework="pt") as f:
        have = {k[len("module."):] if k.startswith("module.") else k for k in f.keys()}
    want = {n for n, _ in _unwrap(model).named_parameters() if ".lora_" in n}
    if not want <= have:
        raise RuntimeError(f"checkpoint {ckpt} lacks LoRA tensors {sorted(want - have)[:3]}...; it was made with "
                           "another rank or base config. Start without --resume or use another --checkpoint-dir.")


def _stack(items: list[dict]) -> dict[str, Tensor]:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


class StepBatchSampler(torch.utils.data.Sampler):
    """Batch sampler yielding :func:`micro_batch_indices` for global micro-steps ``start .. stop-1`` of one
    process: the data order depends only on ``(seed, micro-step)``, so a resumed run starts exactly where the
    interrupted one was, with any number of DataLoader workers."""

    def __init__(self, start: int, stop: int, n_items: int, batch_size: int, world_size: int, rank: int, seed: int):
        self.start, self.stop, self.n, self.bs, self.world, self.rank, self.seed = (
            start, stop, n_items, batch_size, world_size, rank, seed)

    def __iter__(self):
        for k in range(self.start, self.stop):
            yield micro_batch_indices(k, self.n, self.bs, self.world, self.rank, self.seed)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def _save_checkpoint(acc, ckpt_dir: Path, step: int, losses: list, cfg: TrainConfig, model, base_checksum) -> None:
    """``save_state`` into ``.tmp-step_<N>`` then rename to ``step_<N>`` (main process); prune old ones.

    Each checkpoint also holds ``adapter.safetensors``: the LoRA at that step in the adapter file format (usable in
    ``models/lgm_loras/`` as is)."""
    from .lora import save_adapter

    final = ckpt_dir / f"step_{step:08d}"
    tmp = ckpt_dir / f".tmp-step_{step:08d}"
    if acc.is_main_process:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()
    try:
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            save_adapter(_unwrap(model), tmp / "adapter.safetensors", base_checksum=base_checksum,
                         training={"steps_done": step, "checkpoint": True})
            (tmp / "trainer_state.json").write_text(json.dumps({"step": step, "losses": losses,
                                                                "config": asdict(cfg)}, default=str))
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
    except BaseException:  # Ctrl-C or a failure while writing: never leave a half-written checkpoint
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if acc.is_main_process:
        olds = sorted(p for p in ckpt_dir.iterdir() if p.is_dir() and p.name.startswith("step_"))
        for p in olds[: max(0, len(olds) - max(1, cfg.keep_checkpoints))]:
            shutil.rmtree(p, ignore_errors=True)
    acc.wait_for_everyone()
