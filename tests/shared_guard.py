"""pytest plugin: the run fails if anything under ``../shared`` changed while it ran.

``../shared`` (fixtures, notes, the vendored ComfyUI) is read-only in CI; on a developer machine it may be
writable, and a test writing there (a cache next to a fixture, a stray output) would pass here and change what
later runs see. At session start every file and folder under it is recorded (relative path, size, mtime, mode);
at session end the tree is compared and any added, removed or modified entry turns the exit status into
"tests failed" with a report naming the entries (``__pycache__`` folders, which Python writes next to the vendored
ComfyUI's modules when the folder is writable, are ignored). ``MVBOOST_SHARED_DIR`` overrides the folder (the guard's own
test uses a writable copy). Loaded by ``tests/conftest.py`` (``pytest_plugins``).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    return Path(os.environ.get("MVBOOST_SHARED_DIR", REPO_ROOT.parent / "shared"))


def snapshot(root: Path) -> dict[str, tuple]:
    """``{relative path: (kind, size, mtime_ns, mode)}`` of everything under ``root`` (links not followed)."""
    out: dict[str, tuple] = {}
    if not root.is_dir():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]  # Python's own bytecode caches (vendored ComfyUI)
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            try:
                st = p.lstat()
            except OSError:
                continue
            kind = "d" if name in dirnames and not p.is_symlink() else "f"
            size = 0 if kind == "d" else st.st_size  # a folder's mtime/size change with its entries: those are listed
            mtime = 0 if kind == "d" else st.st_mtime_ns
            out[str(p.relative_to(root))] = (kind, size, mtime, st.st_mode)
    return out


def differences(before: dict, after: dict) -> list[str]:
    lines = [f"added: {k}" for k in sorted(after.keys() - before.keys())]
    lines += [f"removed: {k}" for k in sorted(before.keys() - after.keys())]
    lines += [f"modified: {k}" for k in sorted(before.keys() & after.keys()) if before[k] != after[k]]
    return lines


_STATE: dict = {}


def pytest_sessionstart(session):
    root = shared_dir()
    _STATE["root"], _STATE["before"] = root, snapshot(root)


def pytest_sessionfinish(session, exitstatus):
    root = _STATE.get("root")
    if root is None:
        return
    diff = differences(_STATE["before"], snapshot(root))
    if diff:
        shown = "\n  ".join(diff[:20]) + (f"\n  ... {len(diff) - 20} more" if len(diff) > 20 else "")
        msg = (f"\nshared_guard: this run changed {len(diff)} entries under {root} (it must stay read-only; write "
               f"caches and outputs to a temporary or user cache directory):\n  {shown}\n")
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line(msg, red=True, bold=True)
        else:
            print(msg)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
