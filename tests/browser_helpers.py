"""Real headless Chromium for the browser tests (Debian's ``chromium`` driven by Playwright for Python).

Playwright's own browser download does not work here, so the Debian build is launched through
``executable_path``. ``scripts/test.sh`` installs it (``apt-get install chromium``) when it is missing.

Flags: no sandbox (CI runs as root), no GPU (SwiftShader's software WebGL2 renders instead), and no background
networking, so the browser never tries to reach the closed network. Pages are only ever served on loopback.

Use the session fixture ``chromium_browser`` (in ``conftest.py``) and open a fresh ``new_context()`` per test.
"""
from __future__ import annotations

import os
import shutil

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_executable() -> str | None:
    """Path of the system Chromium (``$MVBOOST_CHROMIUM`` overrides), or None when there is none."""
    explicit = os.environ.get("MVBOOST_CHROMIUM")
    if explicit:
        return explicit
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def launch_chromium(playwright):
    """Launch headless Chromium through Playwright's sync API; raises RuntimeError naming the fix if absent."""
    exe = chromium_executable()
    if exe is None:
        raise RuntimeError("no Chromium found: run `apt-get install chromium` (scripts/test.sh does this) "
                           "or set MVBOOST_CHROMIUM to a Chromium binary")
    return playwright.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
