"""Ctrl-C in ``mvboost boost-data`` / ``train-lora`` (real subprocesses, SIGINT to the process group as a terminal
sends it): exit within 2 s with status 130 and one ``interrupted; ...`` line, no traceback, nothing half-written;
the same command (``--resume`` for training) then completes. Also the in-process interruption points: the
turntable render, ``generate_dataset``'s ``check_interrupt``, :class:`DeferInterrupt`, :func:`interrupt_hooks`."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch

import boost_helpers as H
from mvboost_core.boost import dataset as D
from mvboost_core.progress import DeferInterrupt, Interrupted, interrupt_hooks

LATENCIES: list[float] = []


@pytest.fixture(autouse=True, scope="module")
def _threads():
    yield from H.one_thread()


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([H.PY, "-m", "mvboost_core", *args], cwd=H.REPO, env=H.env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 300) -> None:
    t0 = time.time()
    while not cond():
        if proc.poll() is not None:
            raise AssertionError("the command ended before the condition held")
        assert time.time() - t0 < timeout, "timed out waiting for the command to start working"
        time.sleep(0.01)


class _StderrReader(threading.Thread):
    """Collects a child's stderr while it runs (tqdm writes progress there)."""

    def __init__(self, proc: subprocess.Popen):
        super().__init__(daemon=True)
        self.proc, self.chunks = proc, []
        self.start()

    def run(self):
        while True:
            c = self.proc.stderr.read(64)
            if not c:
                return
            self.chunks.append(c)

    @property
    def text(self) -> str:
        return "".join(self.chunks)


def _interrupt(proc: subprocess.Popen, reader: "_StderrReader | None" = None) -> tuple[float, str, str]:
    """SIGINT to the process group (like Ctrl-C); returns (seconds until exit, stdout, stderr)."""
    t0 = time.perf_counter()
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    dt = time.perf_counter() - t0
    if reader is not None:
        reader.join(10)
        out, err = proc.stdout.read(), reader.text
    else:
        out, err = proc.communicate()
    LATENCIES.append(dt)
    print(f"SIGINT -> exit: {dt:.3f} s")
    return dt, out, err


def _check_clean_interrupt(proc, dt, err, expect: str) -> str:
    assert proc.returncode == 130, err[-3000:]
    assert dt < 2.0, f"took {dt:.2f} s to stop"
    assert "Traceback" not in err, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("interrupted; ")]
    assert len(lines) == 1 and expect in lines[0], err[-3000:]
    return lines[0]


@pytest.mark.slow
def test_boost_data_ctrl_c_leaves_only_complete_samples_and_resumes(tmp_path):
    ck, opts = H.write_nano_checkpoint(tmp_path / "lgm")
    out = tmp_path / "ds"
    args = ["boost-data", "--out", str(out), "--synthetic", "12", "--size", "48", "--views", "4", "--seed", "3",
            "--lgm", str(ck), "--lgm-config", str(opts), "--on-error", "raise"]
    samples = out / "samples"

    def n_complete() -> int:
        return sum(1 for p in samples.iterdir() if not p.name.startswith(".")) if samples.is_dir() else 0

    for want in (1, 3):  # two interruptions at different points of the run
        proc = _start(args)
        _wait_for(lambda: n_complete() >= want, proc)
        time.sleep(0.05)  # land inside the next sample's stages
        dt, _, err = _interrupt(proc)
        line = _check_clean_interrupt(proc, dt, err, "samples complete")
        assert line.endswith("re-run the same command to resume"), line
        folders = [p for p in samples.iterdir()]
        done = [p for p in folders if not p.name.startswith(".")]
        assert not [p.name for p in folders if p.name.startswith(".")], "a temp/trash folder was left behind"
        assert all(D.sample_is_complete(p, "hash") for p in done)
        assert f"interrupted; {len(done)} of 12 samples complete" in line, (line, len(done))
        assert len(done) < 12, "the run should have been interrupted before its end"
        assert not (out / "manifest.json").exists()  # written only when a run completes
    before = n_complete()
    p = H.run_cli(args)
    assert f"{12 - before} generated, {before} already complete" in p.stdout
    assert json.loads((out / "manifest.json").read_text())["count"] == 12


@pytest.mark.slow
def test_train_lora_ctrl_c_saves_a_resumable_checkpoint(tmp_path):
    ck, opts = H.write_nano_checkpoint(tmp_path / "lgm")
    gen = D.SyntheticGenerator(input_size=16, render_size=16, n_views=2, n_blobs=8)
    D.generate_dataset(tmp_path / "ds", [f"o{i}" for i in range(5)], gen, seed=1, rank=0, world_size=1,
                       progress=False)

    def args(out: Path, *extra: str) -> list[str]:
        return ["train-lora", "--data", str(tmp_path / "ds"), "--lgm", str(ck), "--lgm-config", str(opts),
                "--out", str(out), "--rank", "4", "--lr", "3e-3", "--lpips-random", "--lpips-size", "16",
                "--steps", "14", "--save-every", "4", "--grad-accum", "2", "--dropout", "0.1", "--seed", "5", *extra]

    ref = tmp_path / "ref.safetensors"
    H.run_cli(args(ref))
    ref_losses = json.loads(ref.with_suffix(".losses.json").read_text())

    out = tmp_path / "lora.safetensors"
    ckdir = tmp_path / "lora.checkpoints"
    proc = _start(args(out))
    reader = _StderrReader(proc)
    # one step past the periodic checkpoint at 4 (tqdm's bar on stderr shows it), so Ctrl-C must save step 5+
    _wait_for(lambda: (ckdir / "step_00000004" / "trainer_state.json").is_file() and "| 5/14 [" in reader.text,
              proc)
    dt, _, err = _interrupt(proc, reader)
    line = _check_clean_interrupt(proc, dt, err, "steps done, checkpoint saved in")
    assert line.endswith("re-run the same command with --resume to continue"), line
    assert not out.exists(), "the run should have been interrupted before its end"
    assert not [p for p in ckdir.iterdir() if p.name.startswith(".")], "a half-written checkpoint was left"
    steps = sorted(int(p.name[5:]) for p in ckdir.iterdir())
    saved = int(line.split("step_")[1].split(";")[0])
    assert saved == steps[-1] and saved >= 4
    st = json.loads((ckdir / f"step_{saved:08d}" / "trainer_state.json").read_text())
    assert st["step"] == saved == len(st["losses"]) and f"interrupted; {saved}/14 steps done" in line
    p = H.run_cli(args(out, "--resume"))
    assert f"resumed from {ckdir / f'step_{saved:08d}'}" in p.stdout + p.stderr
    losses = json.loads(out.with_suffix(".losses.json").read_text())
    assert [r["step"] for r in losses] == list(range(1, 15))
    for a, b in zip(losses, ref_losses):  # the checkpoint written on Ctrl-C continues the uninterrupted curve
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-7), (a, b)


def test_generate_dataset_check_interrupt_is_not_swallowed_and_counts(tmp_path):
    """A cancel raised by ``check_interrupt`` (ComfyUI's is an ``Exception``) stops the run even with
    ``on_error="skip"``; a KeyboardInterrupt becomes ``Interrupted`` with the count of complete samples."""
    gen = D.SyntheticGenerator(input_size=16, render_size=16, n_views=2, n_blobs=4)
    calls = []

    class Cancel(Exception):
        pass

    def cancel_on_third():
        calls.append(1)
        if len(calls) == 3:
            raise Cancel("cancelled")

    with pytest.raises(Cancel):
        D.generate_dataset(tmp_path / "a", ["x0", "x1", "x2", "x3"], gen, rank=0, world_size=1, progress=False,
                           on_error="skip", check_interrupt=cancel_on_third)
    assert len(D.list_samples(tmp_path / "a")) == 2

    def ctrl_c_on_second():
        calls.append(2)
        if calls.count(2) == 2:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted) as ei:
        D.generate_dataset(tmp_path / "b", ["y0", "y1", "y2"], gen, rank=0, world_size=1, progress=False,
                           check_interrupt=ctrl_c_on_second)
    assert ei.value.summary.startswith("1 of 3 samples complete")
    assert [p.name for p in (tmp_path / "b" / "samples").iterdir()] == [D.sample_id_for("y0")]


def test_turntable_checks_between_frames():
    from mvboost_core.boost.dataset import random_blob_object
    from mvboost_core.pipeline import render_turntable

    g = random_blob_object(0, 8)
    seen, calls = [], []

    def check():
        calls.append(len(seen))
        if len(seen) >= 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        render_turntable(g, frames=10, size=16, batch=1, backend="torch", check_interrupt=check,
                         progress=lambda s, d, n: seen.append((s, d, n)))
    assert seen == [("turntable", 1, 10), ("turntable", 2, 10), ("turntable", 3, 10)]
    assert calls == [0, 1, 2, 3]  # checked before every frame


def test_defer_interrupt_raises_at_release():
    d = DeferInterrupt()
    d.hold()
    os.kill(os.getpid(), signal.SIGINT)  # delivered to the main thread's (deferred) handler
    time.sleep(0.01)
    with pytest.raises(KeyboardInterrupt):
        d.release()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with DeferInterrupt():
        pass  # nothing pending: no exception


def test_interrupt_hooks_stop_inside_a_forward():
    net = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(4, 4)) for _ in range(5)])

    class Block(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    model = torch.nn.Sequential(*[Block(m) for m in net])
    n = []

    def check():
        n.append(1)
        if len(n) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        with interrupt_hooks(model, check):
            model(torch.zeros(1, 4))
    assert len(n) == 3  # stopped before the third block, inside one forward
    model(torch.zeros(1, 4))  # hooks removed
    assert len(n) == 3


def test_image_to_gaussians_cancel_inside_the_networks(tmp_path):
    """ComfyUI's way: a check_interrupt that raises is honoured inside the Era3D networks (before the first
    denoising step reports), not only between steps."""
    from mvboost_core import selftest
    from mvboost_core.era3d import load_era3d
    from mvboost_core.lgm import load_lgm
    from mvboost_core.pipeline import image_to_gaussians

    era3d_dir, _ = selftest.build_tiny_era3d(tmp_path / "era3d")
    era3d = load_era3d(era3d_dir, device="cpu", dtype="fp32")
    lgm = load_lgm(selftest.build_tiny_lgm(tmp_path / "lgm.safetensors"), device="cpu", dtype="fp32")

    class Cancel(Exception):
        pass

    checks, reports = [], []

    def check():
        checks.append(1)
        if len(checks) == 12:
            raise Cancel

    with pytest.raises(Cancel):
        image_to_gaussians(selftest.example_image(64), era3d, lgm, steps=3, check_interrupt=check,
                           progress=lambda s, d, n: reports.append((s, d)))
    assert reports == [("era3d_encode", 0)]  # stopped inside the networks, before the first denoising step ended
    hooks = sum(len(m._forward_pre_hooks) for m in era3d.unet.modules())
    assert hooks == 0  # and the hooks are gone
