"""mvboost_core.splatio: every format round-trips within its documented quantisation, the axes conventions hold,
spz v2/v3/v4 (+ the coordinate-system extension) and SOG / compressed PLY / KHR_gaussian_splatting are read and
written; gsply (PyPI, written by others) reads what we write and writes what we read."""
from __future__ import annotations

import gzip
import json
import math
import struct
import zipfile

import numpy as np
import pytest
import torch

from mvboost_core import splatio
from mvboost_core.gaussians import Gaussians
from mvboost_core.splat_convert import rotate_x180


def lgm_like(n: int = 600, seed: int = 0) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    return Gaussians(
        means=((torch.rand(n, 3, generator=g) - 0.5) * 1.2).double(),
        opacities=(torch.rand(n, generator=g) * 0.9 + 0.05).double(),
        scales=(0.1 * torch.nn.functional.softplus(torch.randn(n, 3, generator=g) * 0.5 - 3)).double(),
        quats=torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=1).double(),
        colors=(torch.rand(n, 3, generator=g) * 0.8 + 0.1).double())


def max_angle_deg(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest rotation angle between paired quaternions (sign-invariant, accurate near 0)."""
    a, b = a.double(), b.double()
    sign = torch.where((a * b).sum(1, keepdim=True) < 0, -1.0, 1.0)
    d = (a - sign * b).norm(dim=1).clamp(max=2.0)
    return float(torch.rad2deg(4 * torch.asin(d / 2)).max())


def match(back: Gaussians, ref: Gaussians) -> Gaussians:
    """ref reordered like back (formats may reorder records), by nearest centre (float64)."""
    d = torch.cdist(back.means.double(), ref.means.double(), compute_mode="donot_use_mm_for_euclid_dist")
    return ref[d.argmin(1)]


# format -> (position atol, colour atol, opacity atol, scale rtol, rotation max degrees)
TOL = {
    "ply": (1e-7, 1e-6, 1e-6, 2e-5, 0.05),  # scales: LGM's log(s + 1e-8)
    "ply_full": (1e-7, 1e-6, 1e-6, 2e-5, 0.05),
    "splat": (1e-7, 0.5 / 255 + 1e-6, 0.5 / 255 + 1e-6, 1e-6, 1.8),
    "spz": (2 ** -13 + 1e-7, 0.5 * splatio.SH_C0 / (0.15 * 255) + 1e-6, 0.5 / 255 + 1e-6, math.exp(1 / 32) - 1 + 1e-6,
            11.2),
    "sog": (3e-5, 0.02, 0.5 / 255 + 1e-6, 0.03, 1.0),
    "glb": (1e-7, 1e-6, 1e-7, 1e-6, 0.05),
}


@pytest.mark.parametrize("fmt", list(splatio.FORMATS))
def test_every_format_round_trips_within_its_quantisation(tmp_path, fmt):
    g = lgm_like()
    path = tmp_path / f"g{splatio.FORMATS[fmt].extension}"
    assert splatio.save(g, path, fmt, prune_opacity=0.0) == len(g)
    back = splatio.load(path)
    assert back.dtype == torch.float32 and len(back) == len(g)
    ref = match(back, g)
    pos, col, op, srel, rot = TOL[fmt]
    assert float((back.means - ref.means).abs().max()) <= pos
    assert float((back.colors - ref.colors).abs().max()) <= col
    assert float((back.opacities - ref.opacities).abs().max()) <= op
    assert float((back.scales / ref.scales - 1).abs().max()) <= srel
    assert max_angle_deg(back.quats, ref.quats) <= rot


@pytest.mark.parametrize("fmt", ["ply", "splat", "spz", "sog", "glb"])
def test_axes_auto_is_the_format_convention_and_y_up_keeps_coordinates(tmp_path, fmt):
    g = lgm_like(200)
    ext = splatio.FORMATS[fmt].extension
    splatio.save(g, tmp_path / f"auto{ext}", fmt, prune_opacity=0)
    splatio.save(g, tmp_path / f"up{ext}", fmt, axes="y_up", prune_opacity=0)
    raw_auto = splatio.load(tmp_path / f"auto{ext}", axes="y_up")  # the coordinates as stored
    raw_up = splatio.load(tmp_path / f"up{ext}", axes="y_up")
    expect = rotate_x180(g) if splatio.FORMATS[fmt].frame == "y_down" else g
    tol = TOL[fmt][0] + 1e-6
    assert float((match(raw_auto, expect).means - raw_auto.means).abs().max()) <= tol
    assert float((match(raw_up, g).means - raw_up.means).abs().max()) <= tol
    with pytest.raises(ValueError, match="axes"):
        splatio.save(g, tmp_path / f"bad{ext}", fmt, axes="z_up")
    assert not (tmp_path / f"bad{ext}").exists()


def test_ply_layouts_and_sizes(tmp_path):
    """ply = 14 properties (56 B), ply_full = INRIA at SH degree 0 (68 B); inria_sh3 (248 B) only on request."""
    from plyfile import PlyData

    g = lgm_like(100)
    sizes = {}
    for name, kw in (("lgm", {}), ("inria", {}), ("inria_sh3", {})):
        p = tmp_path / f"{name}.ply"
        splatio.save_ply(g, p, layout=name, prune_opacity=0)
        props = [q.name for q in PlyData.read(str(p))["vertex"].properties]
        assert props == splatio.PLY_LAYOUTS[name]
        sizes[name] = len(props) * 4
    assert sizes == {"lgm": 56, "inria": 68, "inria_sh3": 248}
    splatio.save(g, tmp_path / "full.ply", "ply_full")
    assert [q.name for q in PlyData.read(str(tmp_path / "full.ply"))["vertex"].properties] == \
        splatio.PLY_LAYOUTS["inria"]


# ---------------------------------------------------------------------------------------------------- spz
def test_spz_versions_headers_and_precision(tmp_path):
    g = lgm_like(4000, seed=3)
    res = {}
    for v in (2, 3, 4):
        p = tmp_path / f"v{v}.spz"
        splatio.save(g, p, "spz", version=v, prune_opacity=0)
        head = p.read_bytes()
        assert head[:4] == b"NGSP" if v == 4 else head[:2] == b"\x1f\x8b"
        h = splatio.read_spz_header(p)
        assert h["version"] == v and h["num_points"] == 4000 and h["sh_degree"] == 0
        back = splatio.load(p)
        err = torch.rad2deg(2 * torch.acos((back.quats.double() * g.quats).sum(1).abs().clamp(max=1)))
        res[v] = (float(err.max()), float((err > 2).float().mean()))
    assert res[3][0] <= 0.23 and res[4][0] <= 0.23  # smallest three, 9-bit magnitudes
    assert 2.0 < res[2][0] <= 11.2 and res[2][1] > 0.01  # v2's 8-bit x,y,z: the documented 11.15° worst case
    assert splatio.DEFAULT_SPZ_VERSION == 2
    assert splatio.read_spz_header(tmp_path / "v4.spz")["coordinate_system"] == "RDF"  # what auto stores


def _v4_with_frame(src, dst, cs_value: int):
    """Rewrite a v4 file's coordinate-system extension payload (the data bytes stay the same)."""
    raw = bytearray(src.read_bytes())
    typ, length, _ = struct.unpack_from("<III", raw, 32)
    assert typ == 0xADBE0003 and length == 4
    struct.pack_into("<I", raw, 40, cs_value)
    dst.write_bytes(bytes(raw))


def test_spz_v4_coordinate_system_extension_is_honoured(tmp_path):
    g = lgm_like(300, seed=5)
    p = tmp_path / "up.spz"
    splatio.save(g, p, "spz", version=4, axes="y_up", prune_opacity=0)  # stores RUB, says RUB
    assert splatio.read_spz_header(p)["coordinate_system"] == "RUB"
    # the extension wins over axes: a RUB file read with axes=y_down is still our world
    back = splatio.load(p, axes="y_down")
    assert float((back.means - g.means.float()).abs().max()) < 2e-4
    # the same bytes labelled LUB (x mirrored) come back mirrored, with the covariance mirrored too
    _v4_with_frame(p, tmp_path / "lub.spz", 3)
    m = splatio.load(tmp_path / "lub.spz")
    torch.testing.assert_close(m.means, back.means * torch.tensor([-1.0, 1.0, 1.0]), atol=1e-6, rtol=0)

    def cov(x):
        from mvboost_core.splatio.spz import _quat_to_mat

        r = torch.from_numpy(_quat_to_mat(x.quats.double().numpy()))
        s = torch.diag_embed(x.scales.double() ** 2)
        return r @ s @ r.transpose(1, 2)

    f = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))
    torch.testing.assert_close(cov(m), f @ cov(back) @ f, atol=1e-9, rtol=1e-5)
    # without the extension, axes decides (the de-facto y-down convention by default)
    splatio.save(g, tmp_path / "plain.spz", "spz", version=4, coordinate_system=False, prune_opacity=0)
    assert splatio.read_spz_header(tmp_path / "plain.spz")["coordinate_system"] is None
    torch.testing.assert_close(splatio.load(tmp_path / "plain.spz").means, back.means, atol=2e-4, rtol=0)


def test_spz_bad_files_say_what_is_wrong(tmp_path):
    g = lgm_like(50)
    splatio.save(g, tmp_path / "g.spz", "spz", version=4)
    raw = (tmp_path / "g.spz").read_bytes()
    (tmp_path / "t.spz").write_bytes(raw[:-20])
    with pytest.raises(ValueError, match="truncated|corrupt"):
        splatio.load(tmp_path / "t.spz")
    (tmp_path / "v.spz").write_bytes(raw[:4] + struct.pack("<I", 7) + raw[8:])
    with pytest.raises(ValueError, match="version 7"):
        splatio.load(tmp_path / "v.spz")
    (tmp_path / "v1.spz").write_bytes(gzip.compress(struct.pack("<IIIBBBB", 0x5053474E, 1, 1, 0, 12, 0, 0)))
    with pytest.raises(ValueError, match="version 1"):
        splatio.load(tmp_path / "v1.spz")
    with pytest.raises(ValueError, match="version"):
        splatio.save(g, tmp_path / "x.spz", "spz", version=5)
    with pytest.raises(ValueError, match="no option"):
        splatio.save(g, tmp_path / "x.spz", "ply", version=3)
    assert not (tmp_path / "x.spz").exists()


# ---------------------------------------------------------------------------------------------- sog / glb
def test_sog_bundle_layout_and_unbundled_meta(tmp_path):
    g = lgm_like(500)
    splatio.save(g, tmp_path / "g.sog", "sog", prune_opacity=0)
    with zipfile.ZipFile(tmp_path / "g.sog") as z:
        names = set(z.namelist())
        meta = json.loads(z.read("meta.json"))
        z.extractall(tmp_path / "unbundled")
    assert {"meta.json", "means_l.webp", "means_u.webp", "quats.webp", "scales.webp", "sh0.webp"} <= names
    assert meta["version"] == 2 and meta["count"] == 500 and len(meta["scales"]["codebook"]) == 256
    a, b = splatio.load(tmp_path / "g.sog"), splatio.load(tmp_path / "unbundled" / "meta.json")
    torch.testing.assert_close(a.means, b.means)
    (tmp_path / "bad.sog").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(ValueError):
        splatio.load(tmp_path / "bad.sog")


def test_glb_structure(tmp_path):
    import pygltflib

    g = lgm_like(100)
    splatio.save(g, tmp_path / "g.glb", "glb", prune_opacity=0)
    gl = pygltflib.GLTF2().load_binary(str(tmp_path / "g.glb"))
    prim = gl.meshes[0].primitives[0]
    assert prim.mode == 0 and gl.extensionsUsed == ["KHR_gaussian_splatting"]
    ext = prim.extensions["KHR_gaussian_splatting"]
    assert ext == {"kernel": "ellipse", "colorSpace": "srgb_rec709_display"}
    attrs = {k: v for k, v in prim.attributes.__dict__.items() if v is not None}
    assert set(attrs) == {"POSITION", "COLOR_0", "KHR_gaussian_splatting:ROTATION", "KHR_gaussian_splatting:SCALE",
                          "KHR_gaussian_splatting:OPACITY", "KHR_gaussian_splatting:SH_DEGREE_0_COEF_0"}
    mesh_glb = tmp_path / "mesh.glb"
    import trimesh

    trimesh.creation.box().export(mesh_glb)
    with pytest.raises(ValueError, match="no KHR_gaussian_splatting primitive"):
        splatio.load(mesh_glb)


def test_unknown_files_are_refused_with_the_readable_list(tmp_path):
    (tmp_path / "a.obj").write_text("v 0 0 0\n")
    with pytest.raises(ValueError, match="readable: .ply, .splat, .spz, .sog, .glb, meta.json"):
        splatio.load(tmp_path / "a.obj")
    with pytest.raises(ValueError, match="unknown Gaussian file format"):
        splatio.save(lgm_like(5), tmp_path / "a.xyz", "xyz")


# ------------------------------------------------------------------------------------------ gsply oracle
def _file_frame(g: Gaussians, frame: str) -> Gaussians:
    return rotate_x180(g) if frame == "y_down" else g


@pytest.mark.parametrize("fmt,opts", [("ply", {}), ("ply_full", {}), ("spz", {"version": 2}),
                                      ("spz", {"version": 3}), ("spz", {"version": 4})])
def test_gsply_reads_what_we_write(tmp_path, fmt, opts):
    gsply = pytest.importorskip("gsply", reason="gsply is a test dependency (pip install -e '.[test]')")
    g = lgm_like(400, seed=11)
    p = tmp_path / f"g{splatio.FORMATS[fmt].extension}"
    splatio.save(g, p, fmt, prune_opacity=0, **opts)
    d = gsply.plyread(str(p)) if fmt.startswith("ply") else gsply.read_spz(str(p))
    assert len(d) == 400
    ref = _file_frame(g, "y_down")  # the raw values in the file: 3DGS frame
    pos, col, op, srel, rot = TOL["spz" if fmt == "spz" else fmt]
    means = torch.from_numpy(np.asarray(d.means, np.float64))
    assert float((means - ref.means).abs().max()) <= pos + 1e-6
    torch.testing.assert_close(torch.from_numpy(np.exp(np.asarray(d.scales, np.float64))), ref.scales,
                               rtol=srel + 1e-6, atol=1e-7)
    opac = 1 / (1 + np.exp(-np.asarray(d.opacities, np.float64)))
    assert float(np.abs(opac - ref.opacities.numpy()).max()) <= op + 1e-6
    rgb = 0.5 + splatio.SH_C0 * np.asarray(d.sh0, np.float64).reshape(400, 3)
    assert float(np.abs(rgb - ref.colors.numpy()).max()) <= col + 1e-6
    assert max_angle_deg(torch.from_numpy(np.asarray(d.quats, np.float64)), ref.quats) <= rot


def test_files_gsply_writes_load_through_our_readers(tmp_path):
    gsply = pytest.importorskip("gsply", reason="gsply is a test dependency (pip install -e '.[test]')")
    g = lgm_like(700, seed=12)
    f = _file_frame(g, "y_down")  # what a 3DGS tool holds for our object
    logit = np.log(f.opacities.numpy() / (1 - f.opacities.numpy()))
    args = dict(means=f.means.numpy().astype(np.float32), scales=np.log(f.scales.numpy()).astype(np.float32),
                quats=f.quats.numpy().astype(np.float32), opacities=logit.astype(np.float32),
                sh0=((f.colors.numpy() - 0.5) / splatio.SH_C0).astype(np.float32))
    means = args.pop("means")
    gsply.plywrite(str(tmp_path / "a.ply"), means, **args)
    gsply.plywrite(str(tmp_path / "a.compressed.ply"), means, **args, compressed=True)
    data = gsply.plyread(str(tmp_path / "a.ply"))
    gsply.write_spz(str(tmp_path / "a.spz"), data, version=4)
    for name, (pos, col, op, srel, rot) in (("a.ply", TOL["ply"]), ("a.spz", TOL["spz"]),
                                            ("a.compressed.ply", (3e-3, 0.01, 0.5 / 255 + 1e-6, 0.02, 0.5))):
        back = splatio.load(tmp_path / name)  # auto: y-down files -> our world
        assert len(back) == 700, name
        ref = match(back, g)
        assert float((back.means - ref.means).abs().max()) <= pos + 1e-6, name
        assert float((back.colors - ref.colors).abs().max()) <= col + 1e-6, name
        assert float((back.opacities - ref.opacities).abs().max()) <= op + 1e-6, name
        assert float((back.scales / ref.scales - 1).abs().max()) <= srel + 1e-6, name
        assert max_angle_deg(back.quats, ref.quats) <= rot, name
