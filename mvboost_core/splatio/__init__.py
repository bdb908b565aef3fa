"""Gaussian splat files: one module per format and a registry the CLI and the ComfyUI nodes read.

=============  =========  =================================================  ==========  =======================
registry name  extension  what                                               axes=auto   options
=============  =========  =================================================  ==========  =======================
``ply``        .ply       3DGS PLY, LGM's 14 properties (56 B / Gaussian)    y_down      –
``ply_full``   .ply       INRIA layout at SH degree 0 (+ zero normals, 68 B)  y_down      –
``splat``      .splat     antimatter15 32-byte records                       y_down      –
``spz``        .spz       Niantic spz v2 / v3 / v4                           y_down      ``version`` 2 | 3 | 4
``sog``        .sog       PlayCanvas SOG bundle (WebP images + meta.json)    y_down      –
``glb``        .glb       glTF ``KHR_gaussian_splatting`` POINTS primitive    y_up        –
=============  =========  =================================================  ==========  =======================

Readers: ``.ply`` (uncompressed and PlayCanvas ``.compressed.ply``), ``.splat``, ``.spz`` (v2-v4), ``.sog`` and
unbundled SOG ``meta.json``, ``.glb``. Everything returns / takes :class:`~mvboost_core.gaussians.Gaussians` in our
world (LGM's: y up, front towards +z); ``axes`` says which frame the *file* is in (see :mod:`._common`): ``"auto"``
is each format's measured convention, so the default export is upright in SuperSplat, Spark and ComfyUI core's
splat viewer (docs/formats.md has the per-viewer table).

    from mvboost_core import splatio
    splatio.save(g, "out/object.spz", "spz", version=3)
    g = splatio.load("scene.compressed.ply")
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ._common import AXES, DEFAULT_PRUNE_OPACITY, FORMAT_AXES, SH_C0, atomic_write
from .glb import load_glb, save_glb
from .ply import PLY_LAYOUTS, load_compressed_ply, load_ply, save_ply
from .sog import load_sog, save_sog
from .splat import SPLAT_DTYPE, load_splat, save_splat
from .spz import DEFAULT_SPZ_VERSION, SPZ_VERSIONS, load_spz, read_spz_header, save_spz

__all__ = ["FORMATS", "FormatSpec", "save", "load", "reader_for", "READ_EXTENSIONS", "AXES", "FORMAT_AXES", "SH_C0",
           "DEFAULT_PRUNE_OPACITY", "save_ply", "load_ply", "load_compressed_ply", "save_splat", "load_splat",
           "save_spz", "load_spz", "read_spz_header", "save_sog", "load_sog", "save_glb", "load_glb", "PLY_LAYOUTS",
           "SPZ_VERSIONS", "DEFAULT_SPZ_VERSION", "SPLAT_DTYPE", "atomic_write"]


@dataclass(frozen=True)
class FormatSpec:
    """One writable format: ``save(g, path, axes=..., prune_opacity=..., **fixed, **options)``."""

    name: str
    extension: str  # with the dot
    description: str
    save: Callable
    fixed: dict = field(default_factory=dict)  # arguments this registry entry always passes (e.g. the ply layout)
    options: dict = field(default_factory=dict)  # option name -> (choices tuple, default)
    frame: str = "y_down"  # the file frame axes="auto" writes


FORMATS: dict[str, FormatSpec] = {f.name: f for f in (
    FormatSpec("ply", ".ply", "3DGS PLY, LGM's 14 properties (every tool opens it)", save_ply, {"layout": "lgm"}),
    FormatSpec("ply_full", ".ply", "3DGS PLY in INRIA's layout (normals, SH degree 0)", save_ply,
               {"layout": "inria"}),
    FormatSpec("splat", ".splat", "antimatter15 .splat (32-byte records)", save_splat),
    FormatSpec("spz", ".spz", "Niantic .spz (v2 opens everywhere; v3/v4 keep rotations to 0.23°)", save_spz,
               options={"version": (SPZ_VERSIONS, DEFAULT_SPZ_VERSION), "coordinate_system": ((True, False), True)}),
    FormatSpec("sog", ".sog", "PlayCanvas SOG bundle (SuperSplat's compressed format)", save_sog),
    FormatSpec("glb", ".glb", "glTF KHR_gaussian_splatting (y up)", save_glb, frame="y_up"),
)}

_READERS: dict[str, Callable] = {".compressed.ply": load_compressed_ply, ".ply": load_ply, ".splat": load_splat,
                                 ".spz": load_spz, ".sog": load_sog, "meta.json": load_sog, ".json": load_sog,
                                 ".glb": load_glb}
#: File-name endings :func:`load` reads (``meta.json`` = an unbundled SOG).
READ_EXTENSIONS = (".ply", ".splat", ".spz", ".sog", ".glb", "meta.json")


def save(g, path, format: str = "ply", *, axes: str = "auto", prune_opacity: float = DEFAULT_PRUNE_OPACITY,
         **options) -> int:
    """Write ``g`` in registry format ``format``; returns the number of Gaussians written.

    ``options`` are the format's (e.g. ``version=3`` for spz); unknown names or values raise ``ValueError`` before
    anything is written.
    """
    spec = FORMATS.get(format)
    if spec is None:
        raise ValueError(f"unknown Gaussian file format {format!r}; choose one of {list(FORMATS)}")
    for k, v in options.items():
        if k not in spec.options:
            raise ValueError(f"format {format!r} has no option {k!r} (options: {list(spec.options) or 'none'})")
        if v not in spec.options[k][0]:
            raise ValueError(f"format {format!r}: {k} must be one of {list(spec.options[k][0])}, got {v!r}")
    return spec.save(g, path, axes=axes, prune_opacity=prune_opacity, **spec.fixed, **options)


def reader_for(path) -> Callable:
    """The reader function for a file name (by its ending), or ``ValueError`` listing what is readable."""
    name = Path(path).name.lower()
    for ending, fn in _READERS.items():
        if name.endswith(ending):
            return fn
    raise ValueError(f"{Path(path).name}: not a Gaussian file this version reads; readable: "
                     f"{', '.join(READ_EXTENSIONS)}")


def load(path, *, axes: str = "auto"):
    """Read any supported Gaussian file (chosen by its name) into float32 CPU Gaussians in our world."""
    return reader_for(path)(path, axes=axes)
