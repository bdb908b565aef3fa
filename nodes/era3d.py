"""Era3D nodes: Load Era3D (diffusers folder -> MVBOOST_ERA3D) and Era3D MultiView (image -> 6 colour + 6 normals).

No maths here: widgets are parsed, ``mvboost_core.era3d`` does the work. diffusers/transformers are imported only
when a node runs, so loading the pack stays cheap.

Masks follow the convention in :mod:`._comfy` (LoadImage's MASK = 1 - alpha by default; ``mask_convention``
"object mask (1 = object)" for segmentation masks). An RGBA IMAGE needs no mask; an RGB image without one is refused
with a message saying what to connect.
"""
from __future__ import annotations

import os

from comfy_api.latest import io

from . import _comfy as C
from ..mvboost_core.progress import interrupt_hooks

RELEASED_NAME = "MacLab-Era3D-512-6view"
DOWNLOAD_CHOICE = f"download: pengHTYX/{RELEASED_NAME}"
DTYPES = ["auto", "fp32", "bf16", "fp16"]
MASK_LOADIMAGE, MASK_OBJECT = C.MASK_LOADIMAGE, C.MASK_OBJECT  # (kept importable from here)

Era3DType = io.Custom(C.MVBOOST_ERA3D)
MultiViewType = io.Custom(C.MVBOOST_MULTIVIEW)


def _era3d_folders() -> list[str]:
    return C.get_model_dir_list("era3d", marker="model_index.json")


def _download(name: str) -> str:
    """Explicit download (the user picked the download entry); returns the local folder."""
    from ..mvboost_core import weights

    roots = C.get_folder_paths("era3d")
    if not roots:
        raise FileNotFoundError("no 'era3d' model folder is registered; cannot choose where to download Era3D")
    models_dir = os.path.dirname(os.path.normpath(roots[0]))
    out = weights.download_era3d(models_dir)
    return os.fspath(out) if out else os.path.join(roots[0], RELEASED_NAME)


def managed_era3d(pipe) -> C.ManagedModel:
    """An Era3D pipeline with its networks (UNet, VAE, CLIP image encoder, normalizer) under ComfyUI's memory
    manager."""
    import torch

    mods = torch.nn.ModuleDict({"unet": pipe.unet, "vae": pipe.vae, "image_encoder": pipe.image_encoder,
                                "image_normalizer": pipe.image_normalizer})
    return C.ManagedModel(pipe, mods)


def seed_input(default: int) -> io.Int.Input:
    return io.Int.Input("seed", default=default, min=0, max=0xFFFFFFFFFFFFFFFF, step=1, control_after_generate=True)


def mask_inputs(what: str) -> list:
    """The optional ``mask`` + ``mask_convention`` pair shared by the nodes that take the input photo."""
    return [
        io.Mask.Input("mask", optional=True, tooltip=f"LoadImage's MASK (1 - alpha) or an object mask for {what}, "
                                                     "see mask_convention"),
        io.Combo.Input("mask_convention", options=C.MASK_CONVENTIONS, default=C.MASK_LOADIMAGE, optional=True),
    ]


class MVBoostLoadEra3D(io.ComfyNode):
    """Load an Era3D diffusers folder from ``models/era3d/<name>/`` (the released pengHTYX/MacLab-Era3D-512-6view)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        names = _era3d_folders()
        if RELEASED_NAME not in names:
            names = names + [DOWNLOAD_CHOICE]
        return io.Schema(
            node_id="MVBoostLoadEra3D",
            display_name=f"{C.DISPLAY_PREFIX}Load Era3D",
            category=f"{C.CATEGORY}/Era3D",
            description=(
                "Loads an Era3D multi-view diffusion model (a diffusers folder in models/era3d). Pick the 'download:' "
                "entry to fetch pengHTYX/MacLab-Era3D-512-6view from Hugging Face explicitly (about 4 GB). dtype auto "
                "= fp16 on CUDA/MPS; on CPU fp32 compute with the fp16 weights kept as they are, or bf16 on CPUs where "
                "bf16 was measured faster (mvboost_core.precision has the table); bf16 computes in bf16 where the CPU "
                "has native bf16."),
            inputs=[
                io.Combo.Input("model", options=names,
                               tooltip="a sub-folder of models/era3d containing model_index.json"),
                io.Combo.Input("dtype", options=DTYPES, default="auto"),
            ],
            outputs=[Era3DType.Output(display_name="era3d")],
        )

    @classmethod
    def execute(cls, model: str, dtype: str = "auto") -> io.NodeOutput:
        from ..mvboost_core import precision
        from ..mvboost_core.era3d.pipeline import load_era3d

        path = _download(model) if model == DOWNLOAD_CHOICE else C.get_full_path("era3d", model)
        pipe = load_era3d(path, device=C.offload_device(),
                          dtype=precision.choose("era3d", C.get_torch_device(), dtype, path))
        return io.NodeOutput(managed_era3d(pipe))


class MVBoostEra3DMultiView(io.ComfyNode):
    """One cut-out object image -> Era3D's six orthographic colour views and normal maps."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MVBoostEra3DMultiView",
            display_name=f"{C.DISPLAY_PREFIX}Era3D MultiView",
            category=f"{C.CATEGORY}/Era3D",
            description=(
                "Era3D multi-view diffusion: six views (front, front_right, right, back, left, front_left) as colour "
                "images and normal maps. The object must be cut out: use an RGBA image or connect LoadImage's MASK "
                "(ComfyUI masks are 1 - alpha). crop_size = the object's longest side in pixels of the 512 canvas "
                "(Era3D default 420)."),
            inputs=[
                Era3DType.Input("era3d"),
                io.Image.Input("image"),
                seed_input(42),
                io.Int.Input("steps", default=40, min=1, max=200, step=1),
                io.Float.Input("guidance", default=3.0, min=1.0, max=20.0, step=0.1),
                io.Int.Input("crop_size", default=420, min=64, max=512, step=1,
                             tooltip="object's longest side on the 512-px canvas"),
                *mask_inputs("the image"),
            ],
            outputs=[MultiViewType.Output(display_name="multiview"),
                     io.Image.Output("colors", display_name="colors"),
                     io.Image.Output("normals", display_name="normals")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, era3d, image, seed=42, steps=40, guidance=3.0, crop_size=420, mask=None,
                mask_convention=C.MASK_LOADIMAGE) -> io.NodeOutput:
        img = C.one_image(image, "Era3D MultiView")
        alpha = C.object_alpha(mask, mask_convention)
        progress = C.NodeProgress({"era3d": int(steps)}, node_id=cls.hidden.unique_id, title="Era3D MultiView")
        pipe = C.unwrap_model(era3d)
        try:
            with interrupt_hooks([pipe.unet, pipe.vae, pipe.image_encoder], C.check_interrupt):  # cancel in a step
                result = pipe(img, alpha=alpha, seed=int(seed), steps=int(steps), guidance=float(guidance),
                              crop_size=int(crop_size), callback=progress.callback("era3d"))
        finally:
            C.soft_empty_cache()
        return io.NodeOutput(result, C.to_comfy_image(result.colors.images), C.to_comfy_image(result.normals.images))


NODES = [MVBoostLoadEra3D, MVBoostEra3DMultiView]
