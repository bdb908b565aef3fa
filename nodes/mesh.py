"""**MVBoost: Export Mesh**: Gaussians -> a vertex-coloured triangle mesh (``.glb`` or ``.obj``) in ComfyUI's output
folder, for core's Preview3D / Load3D and for Blender (adapter only: :mod:`mvboost_core.mesh` does the work)."""
from __future__ import annotations

import os

from comfy_api.latest import io

from . import _comfy as C

GaussiansType = io.Custom(C.MVBOOST_GAUSSIANS)


def _mesh():
    from ..mvboost_core import mesh

    return mesh


class MVBoostExportMesh(io.ComfyNode):
    """Gaussians -> .glb / .obj mesh with vertex colours; the STRING output is the path core Preview3D takes."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        opt = _mesh().MeshOptions()
        return io.Schema(
            node_id="MVBoostExportMesh",
            display_name=f"{C.DISPLAY_PREFIX}Export Mesh",
            category=C.CATEGORY,
            description=("Turns Gaussians into a coloured triangle mesh on the CPU (marching cubes on the "
                         "opacity-weighted density, small pieces removed, decimated, vertex colours) and saves it as "
                         ".glb (vertex colours + normals, y up: upright in ComfyUI's 3D viewer and Blender) or .obj "
                         "(vertex colours). Connect model_file to core Preview3D to look at it."),
            inputs=[
                GaussiansType.Input("gaussians"),
                io.String.Input("filename_prefix", default="mvboost/mesh",
                                tooltip="Relative to the output folder; sub-folders allowed, '..' is not."),
                io.Combo.Input("format", options=list(_mesh().MESH_FORMATS), default="glb",
                               tooltip="glb = glTF binary with vertex colours (Preview3D, Blender, most tools); "
                                       "obj = Wavefront OBJ with 'v x y z r g b' vertex colours."),
                io.Int.Input("resolution", default=opt.resolution, min=32, max=512, step=16, optional=True,
                             tooltip="Grid cells along the object's longest side (time and memory grow with its "
                                     "cube; 192 takes about half a minute for 65,536 Gaussians on 2 CPU cores)."),
                io.Float.Input("level", default=opt.level, min=0.01, max=5.0, step=0.01, optional=True,
                               tooltip="Density at which the surface is drawn (summed opacity); lower = fatter."),
                io.Int.Input("max_faces", default=opt.max_faces, min=0, max=2_000_000, step=1000, optional=True,
                             tooltip="Decimate to at most this many triangles (0 = keep every triangle)."),
            ],
            outputs=[io.String.Output("model_file", display_name="model_file",
                                      tooltip="The saved mesh, relative to the output folder (core Preview3D's "
                                              "model_file input).")],
            is_output_node=True,
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, gaussians, filename_prefix, format, resolution=192, level=0.5, max_faces=100_000
                ) -> io.NodeOutput:
        m = _mesh()
        if format not in m.MESH_FORMATS:
            raise ValueError(f"format {format!r} is not one of {list(m.MESH_FORMATS)}")
        from ..mvboost_core.gaussians import Gaussians

        if not isinstance(gaussians, Gaussians):
            raise TypeError(f"Export Mesh: expected MVBOOST_GAUSSIANS (a Gaussians object), got "
                            f"{type(gaussians).__name__}.")
        out_dir = C.get_output_directory()
        folder, name, counter, _, _ = C.get_save_image_path(filename_prefix, out_dir)  # refuses paths outside
        progress = C.NodeProgress({}, node_id=cls.hidden.unique_id, title="Export Mesh")
        progress.show("extracting the surface ...")
        C.check_interrupt()
        mesh = m.gaussians_to_mesh(gaussians, resolution=int(resolution), level=float(level),
                                   max_faces=int(max_faces))
        full = m.save_mesh(mesh, os.path.join(folder, f"{name}_{counter:05}_.{format}"))
        rel = os.path.relpath(full, out_dir).replace(os.sep, "/")
        progress.show(f"saved {rel} ({len(mesh.faces):,} triangles)")
        return io.NodeOutput(rel)


NODES = [MVBoostExportMesh]
