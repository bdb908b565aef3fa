"""Real web viewers for Gaussian files, on loopback: Spark (three.js) and the PlayCanvas engine, served from the npm
packages in ``tests/js/node_modules`` (``scripts/test.sh`` runs ``npm ci --prefix tests/js``) and driven by the
session's headless Chromium. Also: the image comparison used by the orientation tests.
"""
from __future__ import annotations

import functools
import http.server
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np

JS_DIR = Path(__file__).resolve().parent / "js"
NODE_MODULES = JS_DIR / "node_modules"


def npm_packages_missing() -> str | None:
    """A message naming the fix when the npm test packages are not installed, else None."""
    for pkg in ("@sparkjsdev/spark", "three", "playcanvas", "@playcanvas/splat-transform", "gltf-validator"):
        if not (NODE_MODULES / pkg / "package.json").is_file():
            return f"npm package {pkg} missing: run `npm ci --prefix tests/js` (scripts/test.sh does)"
    return None


class _Handler(http.server.SimpleHTTPRequestHandler):
    data_dir: Path = Path(".")

    def translate_path(self, path):
        path = path.split("?", 1)[0]
        if path.startswith("/node_modules/"):
            return str(NODE_MODULES / path[len("/node_modules/"):])
        if path.startswith("/data/"):
            return str(self.data_dir / path[len("/data/"):])
        if path == "/viewer.html":
            return str(JS_DIR / "viewer.html")
        return str(JS_DIR / "__nothing__")

    def end_headers(self):
        self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, *args):  # keep pytest output clean
        pass


@contextmanager
def serve(data_dir: Path):
    """HTTP server on 127.0.0.1 (free port) serving viewer.html, /node_modules/ and ``data_dir`` as /data/."""
    handler = type("H", (_Handler,), {"data_dir": Path(data_dir)})
    handler.extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript",
                              ".js": "text/javascript", ".wasm": "application/wasm"}
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def render_in_viewer(browser, base_url: str, file_name: str, viewer: str, eye, target=(0, 0, 0), fov=49.1,
                     size=192, timeout_ms=60000) -> np.ndarray:
    """Screenshot of ``/data/file_name`` in ``viewer`` -> float RGB [size,size,3] in 0..1."""
    import io

    from PIL import Image

    ctx = browser.new_context(viewport={"width": size, "height": size})
    try:
        page = ctx.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        url = (f"{base_url}/viewer.html?viewer={viewer}&file=/data/{file_name}&size={size}&fov={fov}"
               f"&eye={','.join(map(str, eye))}&target={','.join(map(str, target))}")
        page.goto(url)
        page.wait_for_function("window.__done !== undefined", timeout=timeout_ms)
        status = page.evaluate("window.__done")
        if status != "ok":
            raise AssertionError(f"{viewer} could not show {file_name}: {status} {errors}")
        png = page.locator("canvas").screenshot()
    finally:
        ctx.close()
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64)[:size, :size] / 255.0


ORIENTATIONS = {
    "identity": lambda a: a,
    "flip (upside down)": lambda a: a[::-1],
    "mirror (left-right)": lambda a: a[:, ::-1],
    "180°": lambda a: a[::-1, ::-1],
}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else -10.0 * np.log10(mse)


def best_orientation(shot: np.ndarray, ours: np.ndarray) -> tuple[str, dict]:
    """Which of identity / flip / mirror / 180° of our render matches the viewer's screenshot best (PSNR)."""
    scores = {name: psnr(shot, fn(ours)) for name, fn in ORIENTATIONS.items()}
    return max(scores, key=scores.get), scores
