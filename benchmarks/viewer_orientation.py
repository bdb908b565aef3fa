"""Which way up, and which side, do real web viewers show our Gaussian files? Prints the table in docs/formats.md.

For every format x axes x viewer, the file is drawn by the real viewer (headless Chromium, npm packages from
tests/js) from that viewer's DEFAULT camera direction, and compared (PSNR) with our own renderer drawing the object
after each candidate frame change T in {identity, 180° about x, about y, about z}, from the same camera. The best T
is how the viewer's world holds our object:

    identity  -> upright, front (+z in our world) towards the viewer's +z
    x180      -> upside down                       y180 -> upright, front towards -z
    z180      -> upside down and turned

Default cameras (from each viewer's source): ComfyUI core Load3D/Preview3D: three.js camera on the (+x,+y,+z)
diagonal looking at the model, splats turned 180° about x (SplatModelAdapter: quaternion (1,0,0,0)); Spark's
examples: camera in front (on +z) of a SplatMesh turned 180° about x; SuperSplat viewer: camera along (2,1,2) from the
scene centre, splats turned 180° about z; three.js without a turn (e.g. GaussianSplats3D defaults): camera on +z.

    python benchmarks/viewer_orientation.py            (needs: npm ci --prefix tests/js, Debian chromium)
"""
from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from mvboost_core import splatio  # noqa: E402
from mvboost_core.cameras import Cameras  # noqa: E402
from mvboost_core.render import render  # noqa: E402
from mvboost_core.splat_convert import rotate_x180  # noqa: E402

SIZE = 160
# viewer label -> (page viewer, camera eye in the viewer's world, vertical fov)
VIEWERS = {
    "ComfyUI core viewer (Spark, turned 180° about x)": ("spark", (1.3, 1.3, 1.3), 35.0),
    "Spark examples (turned 180° about x)": ("spark", (0.0, 0.0, 1.6), 50.0),
    "SuperSplat viewer (PlayCanvas engine; splats turned 180° about z, .glb unrotated)":
        ("playcanvas", (1.55, 0.78, 1.55), 60.0),
    "three.js, no turn (GaussianSplats3D-like)": ("spark_raw", (0.0, 0.0, 1.6), 50.0),
}


def turned(g, axis: str | None):
    if axis is None:
        return g
    if axis == "x":
        return rotate_x180(g)
    flip = {"y": (-1.0, 1.0, -1.0), "z": (-1.0, -1.0, 1.0)}[axis]
    q = {"y": (0.0, 0.0, 1.0, 0.0), "z": (0.0, 0.0, 0.0, 1.0)}[axis]
    from mvboost_core.splat_convert import _quat_mul

    qa = torch.tensor(q, dtype=g.quats.dtype).expand_as(g.quats)
    return g.replace(means=g.means * torch.tensor(flip, dtype=g.means.dtype), quats=_quat_mul(qa, g.quats))


def camera(eye, fov):
    x, y, z = eye
    r = math.sqrt(x * x + y * y + z * z)
    return Cameras.orbit([-math.degrees(math.asin(y / r))], [math.degrees(math.atan2(x, z))], radius=r,
                         fovy_deg=fov, width=SIZE, height=SIZE)


def main() -> int:
    from playwright.sync_api import sync_playwright

    from browser_helpers import launch_chromium
    from test_formats_viewers import letter_f
    from viewer_helpers import psnr, render_in_viewer, serve

    g = letter_f()
    labels = {None: "upright, front towards +z", "x": "UPSIDE DOWN", "y": "upright, front towards -z",
              "z": "UPSIDE DOWN, turned"}
    rows = []
    with tempfile.TemporaryDirectory() as d, sync_playwright() as pw:
        browser = launch_chromium(pw)
        with serve(Path(d)) as url:
            for fmt in ("ply", "ply_full", "splat", "spz", "sog", "glb"):
                for axes in ("auto", "y_up"):
                    name = f"g_{fmt}_{axes}{splatio.FORMATS[fmt].extension}"
                    splatio.save(g, Path(d) / name, fmt, axes=axes)
                    for label, (viewer, eye, fov) in VIEWERS.items():
                        if viewer == "playcanvas" and fmt in ("splat", "spz"):
                            continue  # the PlayCanvas engine has no .splat/.spz loader (SuperSplat converts them
                            # with splat-transform, which reads them like .ply: same frame)
                        if fmt == "glb" and viewer != "playcanvas":
                            continue
                        try:
                            shot = render_in_viewer(browser, url, name, viewer, eye, fov=fov, size=SIZE)
                        except AssertionError as e:
                            rows.append((fmt, axes, label, f"does not load ({str(e)[:60]})", ""))
                            continue
                        cam = camera(eye, fov)
                        scores = {}
                        for axis in (None, "x", "y", "z"):
                            with torch.no_grad():
                                ours = render(turned(g, axis), cam, background=(1.0, 1.0, 1.0)).rgb[0]
                            scores[axis] = psnr(shot, ours.clamp(0, 1).double().numpy())
                        best = max(scores, key=scores.get)
                        # our front (+z) stays +z under identity / z180 and becomes -z under x180 / y180
                        side = "front" if (best in (None, "z")) == (eye[2] > 0) else "back"
                        rows.append((fmt, axes, label, f"{labels[best]}; default camera sees the {side}",
                                     f"{scores[best]:.1f} dB (next {sorted(scores.values())[-2]:.1f})"))
        browser.close()
    print("| format | axes | viewer | what it shows | PSNR best (next) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
