"""The real ComfyUI server for the acceptance tests: the vendored v0.3.64 (``../shared/comfyui``, read-only) started
headless on loopback with this checkout in ``custom_nodes/`` and tiny checkpoints under the official names.

* One server per frontend for the whole pytest session (:func:`get_server`, started lazily, stopped at exit):
  ``"1.27.10"`` is the frontend ComfyUI v0.3.64 pins (installed with its requirements by ``scripts/test.sh``),
  ``"1.58.1"`` the newest on PyPI (``.venv/frontend-1.58.1``, passed with ``--front-end-root``).
* The server runs from the read-only vendored folder with ``--base-directory`` (a temp dir holding
  ``custom_nodes/ComfyUI-MVBoost`` -> this checkout as a symlink, ``models/``, ``input/``, ``output/``, ``temp/``,
  ``user/``) and ``--database-url sqlite:///:memory:``; ``--cpu``; ``--listen 127.0.0.1`` and a free port.
* Models: ``models/lgm/model_fp16_fixrot.safetensors`` (the LGM ``micro`` config in the public key names and
  fp16 safetensors format) and ``models/era3d/MacLab-Era3D-512-6view/`` (a tiny Era3D diffusers folder in the
  released layout), both from ``mvboost_core.selftest``, and ``models/lpips/vgg16.tv_in1k.safetensors`` (LPIPS-VGG's
  trunk in timm's file format, random values, ``tests/lpips_helpers.py``); inputs the example workflows name are written into
  ``input/``.

Only the standard library talks to the server (``urllib``); the log is kept in ``<base>/server.log``.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
COMFYUI_ROOT = Path(os.environ.get("MVBOOST_COMFYUI", REPO_ROOT.parent / "shared" / "comfyui"))
FRONTEND_PINNED = "1.27.10"
FRONTEND_NEWEST = "1.58.1"
PACK_DIR_NAME = "ComfyUI-MVBoost"
LGM_FILE = "model_fp16_fixrot.safetensors"
ERA3D_DIR = "MacLab-Era3D-512-6view"
LPIPS_FILE = "vgg16.tv_in1k.safetensors"


def frontend_root(version: str) -> Path | None:
    """``--front-end-root`` for ``version`` (None = the pip-installed default, i.e. the pinned one)."""
    if version == FRONTEND_PINNED:
        return None
    return REPO_ROOT / ".venv" / f"frontend-{version}" / "comfyui_frontend_package" / "static"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _input_views(size: int = 64):
    """Four object-on-white views (front, right, back, left) as uint8 arrays, for lgm_reconstruct.json."""
    import numpy as np

    yy, xx = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    out = []
    for v in range(4):
        inside = ((xx - 0.1 * v) ** 2 + yy ** 2) < (0.5 + 0.08 * v) ** 2
        img = np.full((size, size, 3), 255, np.uint8)
        img[inside] = (40 + 50 * v, 120, 200 - 40 * v)
        out.append(img)
    return out


def populate_base(base: Path) -> None:
    """Write the tiny checkpoints under the official names and the inputs of every example workflow."""
    import torch
    from PIL import Image

    from mvboost_core.gaussians import Gaussians, save_ply
    from mvboost_core.selftest import build_tiny_era3d, build_tiny_lgm

    models = base / "models"
    build_tiny_lgm(models / "lgm" / LGM_FILE)
    build_tiny_era3d(models / "era3d" / ERA3D_DIR)
    from lpips_helpers import write_vgg16_safetensors

    write_vgg16_safetensors(models / "lpips" / LPIPS_FILE)  # timm/vgg16.tv_in1k's format, random values
    inp = base / "input"
    inp.mkdir(parents=True, exist_ok=True)
    example = REPO_ROOT / "workflows" / "mvboost_example.png"
    shutil.copy(example, inp / "mvboost_example.png")
    shutil.copy(example, inp / "era3d_example.png")
    for name, img in zip(("front", "right", "back", "left"), _input_views()):
        Image.fromarray(img).save(inp / f"{name}.png")
    g = torch.Generator().manual_seed(0)
    n = 400
    d = torch.randn(n, 3, generator=g)
    means = 0.3 * d / d.norm(dim=1, keepdim=True) * torch.rand(n, 1, generator=g) ** (1 / 3)
    q = torch.randn(n, 4, generator=g)
    save_ply(Gaussians(means=means, opacities=torch.full((n,), 0.8), scales=torch.full((n, 3), 0.03),
                       quats=q / q.norm(dim=1, keepdim=True), colors=(means + 0.5).clamp(0, 1)),
             inp / "gaussians.ply")


class ComfyServer:
    """A running ComfyUI (see the module docstring). ``url``, ``base``, ``log_path``; HTTP helpers below."""

    def __init__(self, frontend: str = FRONTEND_PINNED, base: Path | None = None):
        self.frontend = frontend
        self.base = Path(base or tempfile.mkdtemp(prefix=f"mvboost-comfy-{frontend}-"))
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.base / "server.log"
        self.proc: subprocess.Popen | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 180.0) -> "ComfyServer":
        if not (COMFYUI_ROOT / "main.py").is_file():
            raise RuntimeError(f"the vendored ComfyUI is not at {COMFYUI_ROOT} (set MVBOOST_COMFYUI)")
        custom = self.base / "custom_nodes"
        custom.mkdir(parents=True, exist_ok=True)
        link = custom / PACK_DIR_NAME
        if not link.exists():
            link.symlink_to(REPO_ROOT, target_is_directory=True)
        if not (self.base / "models" / "lgm" / LGM_FILE).exists():
            populate_base(self.base)
        cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--base-directory", str(self.base), "--database-url", "sqlite:///:memory:",
               "--disable-auto-launch"]
        root = frontend_root(self.frontend)
        if root is not None:
            if not (root / "index.html").is_file():
                raise RuntimeError(f"frontend {self.frontend} is not installed at {root}: run scripts/test.sh")
            cmd += ["--front-end-root", str(root)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
        env.pop("PYTHONPATH", None)
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=COMFYUI_ROOT, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                if self.get("/object_info/MVBoostLoadEra3D"):
                    self.startup_seconds = time.monotonic() - t0
                    return self
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer within {timeout} s:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        if getattr(self, "_log", None):
            self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # ------------------------------------------------------------------ HTTP
    def request(self, path: str, data=None, method: str | None = None, timeout: float = 60.0):
        """``(status, parsed JSON or text)``; HTTP errors are returned, not raised."""
        body = None if data is None else json.dumps(data).encode()
        req = urllib.request.Request(self.url + path, data=body, method=method or ("POST" if body else "GET"),
                                     headers={"Content-Type": "application/json"} if body else {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def get(self, path: str):
        status, out = self.request(path)
        if status != 200:
            raise urllib.error.URLError(f"GET {path}: {status}")
        return out

    def submit(self, prompt: dict, client_id: str | None = None):
        """POST /prompt -> ``(status, response)``; 200 gives ``{"prompt_id": ...}``, 400 the node errors."""
        return self.request("/prompt", {"prompt": prompt, "client_id": client_id or uuid.uuid4().hex})

    def wait(self, prompt_id: str, timeout: float = 600.0) -> dict:
        """Poll ``/history/<id>`` until the prompt finished (success, error or interrupted); its history entry."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            h = self.get(f"/history/{prompt_id}")
            if prompt_id in h and h[prompt_id].get("status", {}).get("completed") is not None:
                st = h[prompt_id]["status"]
                if st.get("completed") or st.get("status_str") in ("error", "success"):
                    return h[prompt_id]
            time.sleep(0.25)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout} s:\n{self.log()[-3000:]}")

    def run(self, prompt: dict, timeout: float = 600.0) -> dict:
        status, out = self.submit(prompt)
        if status != 200:
            raise AssertionError(f"/prompt refused the workflow ({status}): {json.dumps(out)[:3000]}")
        return self.wait(out["prompt_id"], timeout)


_SERVERS: dict[str, ComfyServer] = {}


def get_server(frontend: str = FRONTEND_PINNED) -> ComfyServer:
    """The session's server for ``frontend`` (started on first use, stopped when the test process exits)."""
    srv = _SERVERS.get(frontend)
    if srv is None or srv.proc is None or srv.proc.poll() is not None:
        srv = ComfyServer(frontend)
        _SERVERS[frontend] = srv
        srv.start()
    return srv


@atexit.register
def _stop_all() -> None:
    for srv in _SERVERS.values():
        srv.stop()
        shutil.rmtree(srv.base, ignore_errors=True)


def execution_error(entry: dict) -> dict | None:
    """The ``execution_error`` message of a history entry, or None."""
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return data
    return None


def message_kinds(entry: dict) -> list[str]:
    return [m[0] for m in entry.get("status", {}).get("messages", [])]
