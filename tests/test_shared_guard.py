"""The ../shared guard (tests/shared_guard.py) really fails a run that writes there, on a writable copy."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _run(tmp_path: Path, shared: Path, body: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_probe.py").write_text(body)
    env = dict(os.environ, MVBOOST_SHARED_DIR=str(shared), PYTHONPATH=str(TESTS))
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "shared_guard", "-p", "no:cacheprovider",
                           str(tmp_path / "test_probe.py")], capture_output=True, text=True, env=env, cwd=tmp_path)


def test_guard_fails_a_run_that_changes_the_shared_folder(tmp_path, fixtures_dir):
    shared = tmp_path / "shared"
    shutil.copytree(fixtures_dir / "era3d" / "micro_pipeline" / "scheduler", shared / "fixtures" / "scheduler")
    target = shared / "fixtures" / "scheduler" / "scheduler_config.json"
    (tmp_path / "run").mkdir()
    ok = _run(tmp_path / "run", shared, f"def test_reads():\n    assert open({str(target)!r}).read()\n")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "shared_guard" not in ok.stdout
    wrote = _run(tmp_path / "run", shared, "from pathlib import Path\n"
                 f"def test_writes_a_cache():\n    Path({str(shared / 'fixtures' / 'cache.bin')!r}).write_bytes(b'x')\n"
                 f"def test_edits():\n    Path({str(target)!r}).write_text('{{}}')\n")
    assert wrote.returncode == 1, wrote.stdout + wrote.stderr
    assert "2 passed" in wrote.stdout  # the tests themselves pass: the guard fails the run
    assert "added: fixtures/cache.bin" in wrote.stdout and "modified: fixtures/scheduler/scheduler_config.json" in wrote.stdout
