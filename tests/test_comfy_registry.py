"""Comfy Registry readiness: pyproject.toml per the registry spec, a LICENSE, and `comfy node validate` (comfy-cli
from PyPI, installed by scripts/test.sh into .venv/comfy-cli) passing on this checkout."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMFY_CLI = REPO / ".venv" / "comfy-cli"


def test_pyproject_follows_the_registry_spec():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    project, comfy = meta["project"], meta["tool"]["comfy"]
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]{0,99}", project["name"])
    assert "comfyui" not in project["name"].lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert project["license"] == {"file": "LICENSE"} and "Apache License" in (REPO / "LICENSE").read_text()[:200]
    assert project["urls"]["Repository"].startswith("https://github.com/")
    assert {"Operating System :: OS Independent", "Environment :: GPU :: NVIDIA CUDA",
            "Environment :: GPU :: Apple Metal"} <= set(project["classifiers"])
    assert comfy["PublisherId"] and comfy["DisplayName"] and comfy["requires-comfyui"] == ">=0.3.64"
    for dep in project["dependencies"]:  # torch / torchvision / numpy come unpinned from ComfyUI
        if re.match(r"(torch|torchvision|numpy)\b", dep):
            assert re.fullmatch(r"(torch|torchvision|numpy)", dep), dep
    assert not (REPO / "install.py").exists()


def test_comfy_node_validate_passes():
    if not (COMFY_CLI / "comfy_cli").is_dir():
        pytest.fail(f"comfy-cli is not installed at {COMFY_CLI}: run scripts/test.sh")
    env = {**os.environ, "PYTHONPATH": str(COMFY_CLI)}
    out = subprocess.run([sys.executable, "-m", "comfy_cli.__main__", "node", "validate"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert "All validation checks passed" in text, text[-3000:]
    assert "S307" not in text and "S102" not in text  # no eval/exec findings either (warnings today, errors soon)
