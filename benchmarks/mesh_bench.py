"""Export Mesh benchmark: time, peak RSS, surface accuracy and colour fidelity of mvboost_core.mesh.

Per scene, in a fresh subprocess on 2 torch threads (peak RSS = VmHWM of that process, including torch):
  time      gaussians_to_mesh + save .glb + save .obj (median of --repeat runs)
  chamfer   ½·(mean_a min_b |a-b| + mean_b min_a |a-b|) between 30,000 points sampled on the mesh and 30,000 on the
            Gaussians' surface (the ground-truth surface the synthetic Gaussians were sampled on; for the LGM-like
            sphere: its shell Gaussians' centres), world units, not squared; object size ≈ 1
  F@0.05    F-score at distance 0.05 over the same point sets
  PSNR      mesh rendered unlit with its vertex colours (embree ray casting through trimesh) vs the Gaussians
            rendered by our splat renderer, 8 views (azimuth 0..315 step 45, elevation -15°, radius 1.5, fovy
            49.1°, 256², white background); mean of per-view PSNR

    python benchmarks/mesh_bench.py [--scenes lgm_sphere torus box] [--repeat 3] [--resolution 192]
    (the PSNR column needs `pip install embreex`; without it the column says n/a)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(scene: str, repeat: int, resolution: int) -> dict:
    import tempfile
    import time

    import numpy as np
    import torch

    torch.set_num_threads(2)
    sys.path.insert(0, str(ROOT))
    from mvboost_core.mesh import gaussians_to_mesh, save_mesh
    from mvboost_core.mesh_scenes import lgm_like_sphere, surface_scene

    if scene == "lgm_sphere":
        g, shell = lgm_like_sphere(65536)
        gt_pts = shell[np.random.default_rng(0).choice(len(shell), min(30000, len(shell)), replace=False)]
    else:
        import trimesh

        g, gt = surface_scene(scene, 20000)
        gt_pts = trimesh.sample.sample_surface(gt, 30000, seed=1)[0]
    times = []
    with tempfile.TemporaryDirectory() as d:
        for _ in range(repeat):
            t = time.perf_counter()
            m = gaussians_to_mesh(g, resolution=resolution)
            save_mesh(m, Path(d) / "m.glb")
            save_mesh(m, Path(d) / "m.obj")
            times.append(time.perf_counter() - t)
    hwm = [ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("VmHWM")][0]
    peak_gib = int(hwm.split()[1]) / 2 ** 20
    import trimesh
    from scipy.spatial import cKDTree

    tm = m.to_trimesh()
    mesh_pts = trimesh.sample.sample_surface(tm, 30000, seed=2)[0]
    d_mg = cKDTree(gt_pts).query(mesh_pts)[0]
    d_gm = cKDTree(mesh_pts).query(gt_pts)[0]
    chamfer = 0.5 * (d_mg.mean() + d_gm.mean())
    p, r = (d_mg < 0.05).mean(), (d_gm < 0.05).mean()
    fscore = 2 * p * r / max(p + r, 1e-12)
    return {"scene": scene, "n": len(g), "time_s": float(np.median(times)), "peak_gib": peak_gib,
            "faces": int(len(m.faces)), "vertices": int(len(m.vertices)), "chamfer": float(chamfer),
            "fscore": float(fscore), "psnr": psnr_views(g, m)}


def psnr_views(g, m):
    import numpy as np
    import torch
    import trimesh

    if not trimesh.ray.has_embree:
        return None
    from mvboost_core.cameras import Cameras
    from mvboost_core.render import render

    size = 256
    tm = m.to_trimesh()
    inter = trimesh.ray.ray_pyembree.RayMeshIntersector(tm)
    vals = []
    for az in range(0, 360, 45):
        cam = Cameras.orbit([-15.0], [float(az)], radius=1.5, fovy_deg=49.1, width=size, height=size)
        with torch.no_grad():
            splat = render(g, cam, background=(1.0, 1.0, 1.0)).rgb[0].clamp(0, 1).double().numpy()
        c2w = cam.c2w[0].double().numpy()  # OpenCV: x right, y down, z forward
        fx, fy, cx, cy = (float(v[0]) for v in (cam.fx, cam.fy, cam.cx, cam.cy))
        j, i = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5)
        dirs = np.stack([(j - cx) / fx, (i - cy) / fy, np.ones_like(j)], -1).reshape(-1, 3) @ c2w[:3, :3].T
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        origins = np.broadcast_to(c2w[:3, 3], dirs.shape)
        tri, ray, loc = inter.intersects_id(origins, dirs, multiple_hits=False, return_locations=True)
        img = np.ones((size * size, 3))
        bary = trimesh.triangles.points_to_barycentric(tm.triangles[tri], loc)
        img[ray] = (m.colors[tm.faces[tri]] * bary[:, :, None]).sum(1)
        mse = float(np.mean((img.reshape(size, size, 3) - splat) ** 2))
        vals.append(-10 * np.log10(max(mse, 1e-12)))
    return float(np.mean(vals))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenes", nargs="+", default=["lgm_sphere", "torus", "box"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--resolution", type=int, default=192)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.repeat, a.resolution)))
        return 0
    rows = []
    for s in a.scenes:
        env = {**os.environ, "OMP_NUM_THREADS": "2"}
        out = subprocess.run([sys.executable, __file__, "--child", s, "--repeat", str(a.repeat), "--resolution",
                              str(a.resolution)], capture_output=True, text=True, env=env, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"resolution {a.resolution}, 2 threads, median of {a.repeat}")
    print("| scene | Gaussians | time (s) | peak RSS (GiB) | faces | Chamfer | F@0.05 | PSNR 8 views (dB) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        psnr = "n/a" if r["psnr"] is None else f"{r['psnr']:.2f}"
        print(f"| {r['scene']} | {r['n']:,} | {r['time_s']:.1f} | {r['peak_gib']:.2f} | {r['faces']:,} | "
              f"{r['chamfer']:.4f} | {r['fscore']:.3f} | {psnr} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
