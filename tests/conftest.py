"""Shared pytest fixtures: the path to ../shared/fixtures and deterministic CPU settings."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("MVBOOST_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures"))

torch.set_num_threads(min(2, os.cpu_count() or 1))


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
