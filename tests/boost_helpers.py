"""Shared helpers for the boosting tests: a nano LGM config/checkpoint in the real on-disk format and subprocess
runners for ``accelerate launch``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable

# Smallest LGM topology with cross-view attention in down, mid and up blocks (8 MVAttention -> 16 LoRA targets).
NANO_OPTIONS = {
    "input_size": 16,
    "down_channels": [32, 32, 64],
    "down_attention": [False, True, True],
    "mid_attention": True,
    "up_channels": [64, 32],
    "up_attention": [True, False],
    "splat_size": 8,
    "output_size": 16,
    "name": "nano",
}


def nano_config():
    from mvboost_core.lgm import LGMConfig

    return LGMConfig(**NANO_OPTIONS)


def write_nano_checkpoint(folder: Path, seed: int = 0, scale_bias: float = -3.0) -> tuple[Path, Path]:
    """Write ``lgm_nano.safetensors`` (fp32, real key names, no metadata) and ``lgm_nano.json`` (options).

    Weights: the deterministic fixture rule; the scale channels of the final conv bias are shifted by
    ``scale_bias`` so the random model's splats are small (fast CPU rendering)."""
    import torch

    from mvboost_core.lgm import LGM, init_lgm_weights_, save_lgm_checkpoint

    folder.mkdir(parents=True, exist_ok=True)
    m = LGM(nano_config())
    init_lgm_weights_(m)
    with torch.no_grad():
        m.conv.bias[4:7] += scale_bias
    ck = folder / "lgm_nano.safetensors"
    save_lgm_checkpoint(m, ck, dtype=torch.float32)
    opts = folder / "lgm_nano.json"
    opts.write_text(json.dumps(NANO_OPTIONS))
    return ck, opts


def env() -> dict:
    e = dict(os.environ)
    e.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO), TQDM_DISABLE="1",
             ACCELERATE_DISABLE_RICH="1", HF_HUB_OFFLINE="1")
    e.pop("CUDA_VISIBLE_DEVICES", None)
    return e


def run_cli(args: list[str], nproc: int = 1, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Run the ``mvboost`` CLI (``mvboost_core.cli``, which registers the boost commands) as ``python -m``
    (nproc=1) or ``accelerate launch --multi_gpu
    --num_processes N`` (torchrun; on this CPU-only machine the processes pick accelerate's MULTI_CPU/gloo mode --
    ``accelerate launch --cpu`` starts a single process unless MPI is installed)."""
    if nproc > 1:
        cmd = [PY, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(nproc),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(29500 + (os.getpid() % 2000)),
               "-m", "mvboost_core.cli", *args]
    else:
        cmd = [PY, "-m", "mvboost_core.cli", *args]
    p = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"command failed ({p.returncode}): {' '.join(cmd)}\nSTDOUT:\n{p.stdout[-4000:]}\n"
                             f"STDERR:\n{p.stderr[-6000:]}")
    return p


def one_thread():
    """Generator for an autouse fixture: run a test module with 1 intra-op thread (on the shared 2-core machine
    2 spinning OpenMP threads made these tiny models 10-50x slower), restoring the previous setting after."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def reset_accelerate() -> None:
    """Forget accelerate's process-wide state after an in-process ``train_lora`` (keeps the pytest session clean)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
