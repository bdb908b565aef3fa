"""train-lora: single-process and 2-process accelerate runs on a nano LGM, adapter output, kill -9 + --resume gives the uninterrupted loss
curve, mixed precision + gradient checkpointing."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

import boost_helpers as H
from mvboost_core.boost import dataset as D
from mvboost_core.boost import lora as L
from mvboost_core.boost.train import micro_batch_indices


@pytest.fixture(autouse=True, scope="module")
def _threads():
    yield from H.one_thread()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("boost_train")
    ck, opts = H.write_nano_checkpoint(root / "lgm")
    gen = D.SyntheticGenerator(input_size=16, render_size=16, n_views=2, n_blobs=8)
    D.generate_dataset(root / "ds", [f"o{i}" for i in range(5)], gen, seed=1, rank=0, world_size=1, progress=False)
    return root, ck, opts


def _args(root, ck, opts, out, *extra):
    return ["train-lora", "--data", str(root / "ds"), "--lgm", str(ck), "--lgm-config", str(opts), "--out", str(out),
            "--rank", "4", "--lr", "3e-3", "--lpips-random", "--lpips-size", "16", *extra]


def test_data_order_is_a_function_of_the_step():
    a = [micro_batch_indices(k, 5, 2, 2, r, seed=0) for k in range(5) for r in range(2)]
    flat = sum(a, [])
    assert sorted(flat[:5]) == list(range(5)) and sorted(flat[5:10]) == list(range(5))  # epochs are permutations
    assert micro_batch_indices(3, 5, 2, 2, 1, 0) == a[7]


@pytest.mark.slow
def test_resume_after_kill9_reproduces_the_loss_curve(setup, tmp_path):
    root, ck, opts = setup
    common = ["--steps", "6", "--save-every", "2", "--grad-accum", "2", "--dropout", "0.1", "--seed", "5"]
    ref = tmp_path / "ref.safetensors"
    H.run_cli(_args(root, ck, opts, ref, *common))
    ref_losses = json.loads(ref.with_suffix(".losses.json").read_text())
    assert [r["step"] for r in ref_losses] == list(range(1, 7))

    out = tmp_path / "res.safetensors"
    ckdir = tmp_path / "res.checkpoints"
    cmd = [H.PY, "-m", "mvboost_core.cli", *_args(root, ck, opts, out, *common)]
    proc = subprocess.Popen(cmd, cwd=H.REPO, env=H.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    t0 = time.time()
    try:
        while not (ckdir / "step_00000002" / "trainer_state.json").exists():
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.time() - t0 < 400
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not out.exists(), "the run must have been interrupted before finishing"
    assert (ckdir / "step_00000002" / "model.safetensors").is_file()
    p = H.run_cli(_args(root, ck, opts, out, *common, "--resume", "--num-workers", "1"))
    assert "resumed from" in p.stdout + p.stderr
    losses = json.loads(out.with_suffix(".losses.json").read_text())
    assert [r["step"] for r in losses] == list(range(1, 7))
    for a, b in zip(losses, ref_losses):  # same curve after the restart (float rounding across processes only)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-7), (a, b)
        assert a["lr"] == b["lr"]
    sa, _ = L.load_adapter(out)
    sb, info = L.load_adapter(ref)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-4, atol=1e-6)
    # the checkpoints hold the LoRA only (not the frozen base), plus optimizer/scheduler/RNG of both processes
    last = sorted(ckdir.iterdir())[-1]
    from safetensors import safe_open

    with safe_open(str(last / "model.safetensors"), framework="pt") as f:
        assert all(".lora_" in k for k in f.keys())
    assert {"optimizer.bin", "scheduler.bin", "random_states_0.pkl", "adapter.safetensors"} <= {
        q.name for q in last.iterdir()}
    assert len([q for q in ckdir.iterdir() if q.name.startswith("step_")]) == 2  # --keep-checkpoints 2


@pytest.mark.slow
def test_bf16_grad_checkpointing_adapter_drops_into_loader(setup, tmp_path):
    root, ck, opts = setup
    out = tmp_path / "lgm_loras" / "boost.safetensors"
    p = H.run_cli(_args(root, ck, opts, out, "--steps", "3", "--mixed-precision", "bf16", "--grad-checkpointing",
                        "--grad-accum", "2", "--lambda-lpips", "1.0", "--save-every", "3"), nproc=2)
    losses = json.loads(out.with_suffix(".losses.json").read_text())
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(r["loss"])) for r in losses)
    sd, info = L.load_adapter(out)
    assert info.rank == 4 and info.alpha == 4.0 and info.base_config == "nano"
    assert info.training["mixed_precision"] == "bf16" and info.training["steps_done"] == 3
    assert info.training["num_processes"] == 2
    ck3 = out.parent / "boost.checkpoints" / "step_00000003"
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {q.name for q in ck3.iterdir()}
    assert any(v.abs().max() > 0 for k, v in sd.items() if ".lora_B." in k)  # it trained
    from mvboost_core.lgm import load_lgm

    base = load_lgm(ck, config=str(opts))
    assert info.base_checksum == L.base_weights_checksum(base)
    x = torch.randn(1, 4, 9, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y0 = base(x)
        L.apply_lora(base, out, 1.0)
        assert (base(x) - y0).abs().max() > 1e-5
        L.apply_lora(base, out, 0.0)
        assert torch.equal(base(x), y0)
