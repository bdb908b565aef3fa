"""Interop with ComfyUI's native Gaussian-splat stack (ComfyUI 2026+: ``SPLAT`` type, File3D types).

* **MVBoost: To ComfyUI Splat** — MVBOOST_GAUSSIANS -> core ``SPLAT`` (for Render Splat, Extract Mesh from Splat,
  Create 3D File (from Splat) -> PreviewGaussianSplat / SaveGLB, Transform / Merge Splat ...).
* **MVBoost: From ComfyUI Splat** — core ``SPLAT`` (e.g. TripoSplat's or Get Splat's) -> MVBOOST_GAUSSIANS, so core
  splats go through Render Gaussians, Optimize Input Pose, Save Gaussians.

The maths (field layout, SH DC <-> colour, the 180°-about-x frame change) is in :mod:`mvboost_core.splat_convert`.
Host detection only looks at modules ComfyUI has already imported (``comfy_api.latest``), so importing this module is
free and never fails; on ComfyUI without the splat types (v0.3.64 and older) the nodes load and explain at execution
which ComfyUI they need.
"""
from __future__ import annotations

import importlib
import sys

from comfy_api.latest import io

from . import _comfy as C

GaussiansType = io.Custom(C.MVBOOST_GAUSSIANS)

NEEDS = ("this node needs a ComfyUI with the native Gaussian-splat types (the SPLAT type from Comfy-Org/ComfyUI "
         "PR #14190 and the File3D splat types from PR #14194, i.e. a 2026 or newer ComfyUI); {what}. "
         "Update ComfyUI, or use MVBoost: Save Gaussians / Render Gaussians instead.")


def host_api():
    """ComfyUI's ``comfy_api.latest`` module when running inside ComfyUI, else None (never raises)."""
    mod = sys.modules.get("comfy_api.latest")
    if mod is None and "folder_paths" in sys.modules and "comfy_api" in sys.modules:
        try:
            mod = importlib.import_module("comfy_api.latest")
        except Exception:
            mod = None
    return mod


def _io_module(api):
    return getattr(api, "IO", None) or getattr(api, "io", None)


def host_splat_type() -> str | None:
    """The host's io type string for native splats (``"SPLAT"``; ``"GAUSSIAN"`` in the first 2026 builds)."""
    api = host_api()
    io = _io_module(api) if api is not None else None
    for name in ("Splat", "Gaussian"):
        t = getattr(getattr(io, name, None), "io_type", None)
        if isinstance(t, str):
            return t
    return None


def host_splat_class():
    api = host_api()
    types = getattr(api, "Types", None) if api is not None else None
    for name in ("SPLAT", "GAUSSIAN"):
        cls = getattr(types, name, None)
        if cls is not None:
            return cls
    return None


def host_file3d_splat_type() -> str | None:
    """The host's io type for splat files (``"FILE_3D_SPLAT_ANY"``) when it has the File3D types, else None."""
    api = host_api()
    io = _io_module(api) if api is not None else None
    t = getattr(getattr(io, "File3DSplatAny", None), "io_type", None)
    return t if isinstance(t, str) and getattr(getattr(api, "Types", None), "File3D", None) is not None else None


def make_host_file3d(path: str, ext: str):
    """A core ``Types.File3D`` for a file on disk (format from the extension), or None without File3D types."""
    api = host_api()
    cls = getattr(getattr(api, "Types", None), "File3D", None) if api is not None else None
    return None if cls is None else cls(path, file_format=ext)


SPLAT_TYPE = host_splat_type() or "SPLAT"
_FIELDS = ("positions", "scales", "rotations", "opacities", "sh")


def _convert():
    from ..mvboost_core import splat_convert

    return splat_convert


class MVBoostToComfySplat(io.ComfyNode):
    """MVBOOST_GAUSSIANS -> ComfyUI's native SPLAT."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MVBoostToComfySplat",
            display_name=f"{C.DISPLAY_PREFIX}To ComfyUI Splat",
            category=C.CATEGORY,
            description=("Converts MVBoost Gaussians into ComfyUI's native splat (ComfyUI 2026+), for Render Splat, "
                         "Extract Mesh from Splat, Create 3D File (from Splat) -> Preview Splat / Save 3D Model."),
            inputs=[
                GaussiansType.Input("gaussians"),
                io.Boolean.Input("convert_axes", default=True, optional=True,
                                 tooltip="Rotate LGM's y-up world into ComfyUI's 3DGS splat frame (y down), so core "
                                         "viewers and Extract Mesh show it upright."),
            ],
            outputs=[io.Custom(SPLAT_TYPE).Output(display_name="splat")],
        )

    @classmethod
    def execute(cls, gaussians, convert_axes=True) -> io.NodeOutput:
        splat_cls = host_splat_class()
        if splat_cls is None:
            raise RuntimeError(NEEDS.format(what="this ComfyUI has no SPLAT type"))
        sc = _convert()
        if not isinstance(gaussians, sc.Gaussians):
            raise TypeError(f"expected MVBOOST_GAUSSIANS, got {type(gaussians).__name__}")
        t = sc.to_splat_tensors(gaussians.to(device=C.intermediate_device()), flip=bool(convert_axes))
        return io.NodeOutput(splat_cls(t.positions, t.scales, t.rotations, t.opacities, t.sh))


class MVBoostFromComfySplat(io.ComfyNode):
    """ComfyUI's native SPLAT -> MVBOOST_GAUSSIANS (one batch item; SH beyond the DC term is dropped)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MVBoostFromComfySplat",
            display_name=f"{C.DISPLAY_PREFIX}From ComfyUI Splat",
            category=C.CATEGORY,
            description=("Converts a ComfyUI native splat (e.g. from TripoSplat or Get Splat) into MVBoost Gaussians "
                         "for Render Gaussians, Optimize Input Pose and Save Gaussians. Only the base colour (SH DC) "
                         "is kept."),
            inputs=[
                io.Custom(SPLAT_TYPE).Input("splat"),
                io.Int.Input("index", default=0, min=0, max=4095, step=1, optional=True,
                             tooltip="Which item of a batched splat to convert."),
                io.Boolean.Input("convert_axes", default=True, optional=True,
                                 tooltip="Rotate ComfyUI's 3DGS splat frame (y down) into LGM's y-up world (what "
                                         "Render Gaussians and Optimize Input Pose expect)."),
            ],
            outputs=[GaussiansType.Output(display_name="gaussians")],
        )

    @classmethod
    def execute(cls, splat, index=0, convert_axes=True) -> io.NodeOutput:
        missing = [f for f in _FIELDS if not hasattr(splat, f)]
        if missing:
            if host_splat_class() is None:
                raise RuntimeError(NEEDS.format(what="this ComfyUI has no SPLAT type"))
            raise TypeError(f"expected a ComfyUI SPLAT object with fields {list(_FIELDS)}; "
                            f"{type(splat).__name__} lacks {missing}")
        g = _convert().from_splat_tensors(*(getattr(splat, f) for f in _FIELDS), getattr(splat, "counts", None),
                                          index=int(index), flip=bool(convert_axes))
        return io.NodeOutput(g)


NODES = [MVBoostToComfySplat, MVBoostFromComfySplat]
