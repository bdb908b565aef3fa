"""glTF 2.0 binary (``.glb``) with the ``KHR_gaussian_splatting`` extension (Release Candidate, KhronosGroup/glTF
``extensions/2.0/Khronos/KHR_gaussian_splatting``): write + read, through ``pygltflib``.

One node, one mesh, one ``POINTS`` primitive (mode 0) whose attributes are, per Gaussian:

==========================================  ======  ========================================================
attribute                                   type    value
==========================================  ======  ========================================================
``POSITION``                                VEC3 f  centre (min / max given, as glTF requires)
``KHR_gaussian_splatting:ROTATION``         VEC4 f  unit quaternion in glTF order (x, y, z, w)
``KHR_gaussian_splatting:SCALE``            VEC3 f  linear standard deviations (not log)
``KHR_gaussian_splatting:OPACITY``          SCAL f  linear opacity in [0, 1] (not a logit)
``KHR_gaussian_splatting:SH_DEGREE_0_COEF_0``  VEC3 f  DC coefficients ``(rgb - 0.5) / SH_C0``
``COLOR_0``                                 VEC4 f  point-cloud fallback: sRGB-decoded (linear) rgb, opacity
==========================================  ======  ========================================================

The extension object is ``{"kernel": "ellipse", "colorSpace": "srgb_rec709_display"}`` and ``KHR_gaussian_splatting``
is listed in ``extensionsUsed`` (not required: readers without it show the coloured point cloud). glTF is y up with
the front towards +z, which is our world, so ``axes="auto"`` = ``"y_up"``.
"""
from __future__ import annotations

import numpy as np

from ._common import (SH_C0, DEFAULT_PRUNE_OPACITY, atomic_write, existing_file, from_arrays, normalise_quats,
                      numpy_params, prune, resolve_axes)

__all__ = ["save_glb", "load_glb", "EXTENSION"]

EXTENSION = "KHR_gaussian_splatting"
_FLOAT, _ARRAY_BUFFER, _POINTS = 5126, 34962, 0


def _srgb_to_linear(c: np.ndarray) -> np.ndarray:
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def save_glb(g, path, *, axes: str = "auto", prune_opacity: float = DEFAULT_PRUNE_OPACITY) -> int:
    """Write Gaussians as a ``KHR_gaussian_splatting`` ``.glb`` (see the module docstring); returns the count.

    Float32 attributes, so the only loss is float32 rounding. ``axes``: ``"auto"`` = ``"y_up"`` (glTF's frame).
    Validation, pruning and atomic writing as in ``save_ply``.
    """
    import pygltflib as gl

    axes = resolve_axes(axes, "glb", "save_glb")
    params = numpy_params(g, "save_glb", axes)
    means, opac, scales, quats, colors = prune(list(params), params[1], prune_opacity, "save_glb")
    n = means.shape[0]
    f32 = np.float32
    attrs = [
        ("POSITION", means.astype(f32), "VEC3"),
        ("COLOR_0", np.concatenate([_srgb_to_linear(np.clip(colors, 0, 1)), opac[:, None]], 1).astype(f32), "VEC4"),
        (f"{EXTENSION}:ROTATION", quats[:, [1, 2, 3, 0]].astype(f32), "VEC4"),
        (f"{EXTENSION}:SCALE", scales.astype(f32), "VEC3"),
        (f"{EXTENSION}:OPACITY", opac.astype(f32), "SCALAR"),
        (f"{EXTENSION}:SH_DEGREE_0_COEF_0", ((colors - 0.5) / SH_C0).astype(f32), "VEC3"),
    ]
    blob, views, accessors, attributes = bytearray(), [], [], gl.Attributes()
    for i, (name, arr, typ) in enumerate(attrs):
        data = np.ascontiguousarray(arr).tobytes()
        views.append(gl.BufferView(buffer=0, byteOffset=len(blob), byteLength=len(data), target=_ARRAY_BUFFER))
        acc = gl.Accessor(bufferView=i, componentType=_FLOAT, count=n, type=typ)
        if name == "POSITION":
            acc.min = [float(x) for x in arr.min(0)]
            acc.max = [float(x) for x in arr.max(0)]
        accessors.append(acc)
        setattr(attributes, name, i)
        blob += data  # float32 arrays keep 4-byte alignment
    prim = gl.Primitive(attributes=attributes, mode=_POINTS,
                        extensions={EXTENSION: {"kernel": "ellipse", "colorSpace": "srgb_rec709_display"}})
    gltf = gl.GLTF2(
        asset=gl.Asset(version="2.0", generator="mvboost_core.splatio"),
        extensionsUsed=[EXTENSION], scene=0, scenes=[gl.Scene(nodes=[0])], nodes=[gl.Node(mesh=0)],
        meshes=[gl.Mesh(primitives=[prim])], accessors=accessors, bufferViews=views,
        buffers=[gl.Buffer(byteLength=len(blob))])
    gltf.set_binary_blob(bytes(blob))
    atomic_write(path, b"".join(gltf.save_to_bytes()))
    return n


def load_glb(path, *, axes: str = "auto"):
    """Read the first ``KHR_gaussian_splatting`` primitive of a ``.glb`` into float32 CPU Gaussians in our world.

    Float, normalised byte and short accessors are accepted (as the extension allows); node transforms are not
    applied (the primitive's local frame is used). ``axes``: the file's frame (``"auto"`` = y_up). Raises
    ``ValueError`` when the file is not a glb or holds no Gaussian-splat primitive.
    """
    import pygltflib as gl

    path = existing_file(path, "load_glb")
    with open(path, "rb") as f:
        if f.read(4) != b"glTF":
            raise ValueError(f"load_glb: {path} is not a binary glTF (.glb) file.")
    axes = resolve_axes(axes, "glb", "load_glb")
    try:
        gltf = gl.GLTF2().load_binary(str(path))
    except Exception as e:  # noqa: BLE001 - pygltflib raises assorted errors on broken files
        raise ValueError(f"load_glb: {path} is malformed: {e}") from e
    blob = gltf.binary_blob() or b""
    prim = next((p for m in gltf.meshes or [] for p in m.primitives if (p.extensions or {}).get(EXTENSION) is not None),
                None)
    if prim is None:
        raise ValueError(f"load_glb: {path} has no {EXTENSION} primitive (a mesh, not Gaussian splats).")
    attrs = prim.attributes.__dict__ if not isinstance(prim.attributes, dict) else prim.attributes

    def read(name, width):
        idx = attrs.get(name)
        if idx is None:
            raise ValueError(f"load_glb: {path}: the splat primitive lacks the required attribute {name}.")
        acc = gltf.accessors[idx]
        view = gltf.bufferViews[acc.bufferView]
        dtype = {5126: np.float32, 5120: np.int8, 5121: np.uint8, 5122: np.int16, 5123: np.uint16}[acc.componentType]
        itemsize = np.dtype(dtype).itemsize * width
        stride = view.byteStride or itemsize
        start = (view.byteOffset or 0) + (acc.byteOffset or 0)
        raw = np.frombuffer(blob, np.uint8, count=stride * (acc.count - 1) + itemsize, offset=start)
        rows = np.lib.stride_tricks.as_strided(raw, (acc.count, itemsize), (stride, 1))
        a = np.ascontiguousarray(rows).view(dtype).reshape(acc.count, width).astype(np.float64)
        if acc.normalized and dtype != np.float32:
            info = np.iinfo(dtype)
            a = np.maximum(a / info.max, -1.0) if info.min < 0 else a / info.max
        return a

    means = read("POSITION", 3)
    xyzw = read(f"{EXTENSION}:ROTATION", 4)
    scales = read(f"{EXTENSION}:SCALE", 3)
    opac = read(f"{EXTENSION}:OPACITY", 1)[:, 0]
    f_dc = read(f"{EXTENSION}:SH_DEGREE_0_COEF_0", 3)
    if len(means) == 0:
        raise ValueError(f"load_glb: {path} contains 0 Gaussians.")
    return from_arrays(means, opac, scales, normalise_quats(xyzw[:, [3, 0, 1, 2]]), 0.5 + SH_C0 * f_dc, axes)
