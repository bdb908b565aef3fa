"""Shared pytest fixtures: the path to ../shared/fixtures, deterministic CPU settings, a writable cache folder,
forcing a CPU class, and the ``../shared`` guard (``shared_guard.py``: the run fails if anything there changed)."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("MVBOOST_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures"))

pytest_plugins = ["shared_guard"]

torch.set_num_threads(min(2, os.cpu_count() or 1))

# caches the code writes (e.g. Era3D prompt embeddings) go to a per-run temporary folder, never into the user's
# cache or next to a fixture
os.environ["MVBOOST_CACHE_DIR"] = tempfile.mkdtemp(prefix="mvboost-test-cache-")
atexit.register(shutil.rmtree, os.environ["MVBOOST_CACHE_DIR"], True)


@pytest.fixture
def force_cpu_class(monkeypatch):
    """``force_cpu_class("avx2" | "avx512" | "avx512_bf16" | "other", bf16_fast=False, amx=False)``: make
    :mod:`mvboost_core.precision` (and so every CPU-capability decision: auto dtypes, NNPACK convolutions) see that
    CPU class for this test; ``bf16_fast`` is the answer of its bf16-vs-fp32 op probe (only an avx512_bf16 class can
    say True: the two avx512_bf16 hosts measured disagree). The kernels that then run are real; on a host of another
    class they are only slower (NNPACK runs on any x86-64 CPU with AVX2; bf16/fp16 kernels run everywhere, emulated
    without native instructions)."""
    from mvboost_core import precision

    def force(cls: str, bf16_fast: bool = False, amx: bool = False):
        isa = {"avx512_bf16": "avx512", "avx512": "avx512", "avx2": "avx2", "other": "other"}[cls]
        info = precision.CpuInfo(isa, bf16=cls == "avx512_bf16", amx=amx and cls == "avx512_bf16")
        monkeypatch.setattr(precision, "cpu_info", lambda: info)
        fast = bool(bf16_fast) and info.bf16
        monkeypatch.setattr(precision, "bf16_compute_faster", lambda: fast)
        return info

    return force


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """``../shared/fixtures`` (override with MVBOOST_FIXTURES); skips with a clear message if absent."""
    if not FIXTURES.is_dir():
        pytest.skip(f"parity fixtures not found at {FIXTURES} (set MVBOOST_FIXTURES); CI always has them")
    return FIXTURES


@pytest.fixture(scope="session")
def chromium_browser():
    """One headless Debian Chromium for the whole session (see ``tests/browser_helpers.py``).

    Tests open their own ``chromium_browser.new_context()`` and close it. A missing Chromium is an error, not a
    skip: the README test command installs it.
    """
    from playwright.sync_api import sync_playwright

    from browser_helpers import launch_chromium

    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests on one torch thread, restored afterwards.

    For the micro/tiny models and small renders one thread is as fast as two on an idle machine, and it avoids
    OpenMP barrier spinning when the 2 CI cores are shared (observed 10-50x slow-downs with 2 threads).
    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")`` or as a test argument.
    """
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)
