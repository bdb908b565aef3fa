"""Era3D sampling pipeline on current diffusers: loader, unCLIP conditioning, CFG DDIM loop, SDEdit refinement.

Re-implements the inference of upstream Era3D (github pengHTYX/Era3D, ``StableUnCLIPImg2ImgPipeline`` in
``mvdiffusion/pipelines/pipeline_mvdiffusion_unclip.py``) for the released ``pengHTYX/MacLab-Era3D-512-6view``
diffusers folder, without importing any upstream module. Facts and citations: ``shared/notes/era3d.md`` §1, §4.1.

Conventions (every tensor of this module):

* view order inside a 6-view group: ``ERA3D_VIEWS`` = front, front_right, right, back, left, front_left;
* domains block-stacked, **normals first**: ``[normals(6) ; colors(6)]`` (12 latents per object);
* with classifier-free guidance the UNet batch is ``[normal_uncond, normal_cond, color_uncond, color_cond]``
  (24): noisy latents ``[n,n,c,c]``, condition latents and unCLIP class labels ``[0,n,0,c]`` (zeros = uncond),
  prompt embeddings ``[n,n,c,c]`` (the per-view prompt is kept for the unconditional branch);
  guided v = ``uncond + s*(cond - uncond)`` with ``uncond = [n_u ; c_u]``, ``cond = [n_c ; c_c]``;
* latents are ``[12,4,h,w]`` float32 (``h = H/8``), VAE-scaled by ``vae.config.scaling_factor`` (0.18215);
* images are ``[V,H,W,3]`` float32 in [0,1] (HWC, like ComfyUI and :class:`~mvboost_core.multiview.MultiView`);
* randomness comes from one CPU ``torch.Generator`` seeded with ``seed`` and is drawn in float32 in upstream's
  order: unCLIP embedding noise ``[12, D_clip]``, initial latents ``[12,4,h,w]`` (or the SDEdit noise), then one
  ``[12,4,h,w]`` DDIM variance noise per step when ``eta > 0``. Results therefore do not depend on the compute
  device or dtype beyond rounding. (Upstream drew in the weights' dtype on CUDA; seeds do not carry over bit-wise.)

Precision (:mod:`mvboost_core.precision`): the UNet stores and computes in the dtypes ``precision.choose("era3d",
...)`` gives; the CLIP image encoder runs in the UNet's compute dtype, the VAE too except with bf16 or an fp16
``force_upcast`` VAE (then fp32); the unCLIP noising, the CFG combination and the DDIM update always run in float32.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor

from .. import precision
from ..cameras import ERA3D_VIEWS, Cameras
from ..multiview import MultiView, MultiViewResult
from .preprocess import Era3DInputError, preprocess_image, preprocess_image_and_alpha

log = logging.getLogger("mvboost")

__all__ = [
    "Era3DPipeline",
    "Era3DCondition",
    "Era3DLoadError",
    "load_era3d",
    "era3d_prompts",
    "compute_prompt_embeds",
    "load_upstream_prompt_embeds",
    "prompt_cache_dir",
    "PROMPT_TEMPLATE",
    "REQUIRED_COMPONENTS",
    "PROMPT_CACHE_NAME",
    "PROMPT_CACHE_FORMAT",
    "write_prompt_cache",
]

#: Upstream ``generate_fixed_text_embeds.py``: ``{view}`` keeps the underscore (``front_right``), ``{kind}`` is
#: ``color`` or ``normal``.
PROMPT_TEMPLATE = "a rendering image of 3D models, {view} view, {kind} map."

#: Components read by :func:`load_era3d` (``text_encoder`` / ``tokenizer`` only until the prompt cache exists).
REQUIRED_COMPONENTS = (
    "vae", "image_encoder", "feature_extractor", "image_normalizer", "image_noising_scheduler", "scheduler", "unet",
)
TEXT_COMPONENTS = ("text_encoder", "tokenizer")

#: Optional sub-folder of an Era3D folder holding upstream's shipped ``normal_embeds.pt`` / ``clr_embeds.pt``; used
#: instead of the text encoder when present (bit-identical to the reference's prompt embeddings).
UPSTREAM_PROMPT_DIR = "fixed_prompt_embeds_6view"

#: File holding the 12 fixed prompt embeddings: read when a model folder carries it (slimmed folders without a text
#: encoder); the loader itself writes its cache into :func:`prompt_cache_dir`, never into a model folder.
PROMPT_CACHE_NAME = "mvboost_prompt_embeds.safetensors"
PROMPT_CACHE_FORMAT = "mvboost-era3d-prompt-embeds-v1"
_PROMPT_CACHE_FORMAT = PROMPT_CACHE_FORMAT  # (older private name, used by mvboost_core.selftest)
_MEMORY_PROMPT_CACHE: dict[tuple[str, str], tuple[Tensor, Tensor]] = {}

RELEASED_REPO = "pengHTYX/MacLab-Era3D-512-6view"
_FIX_HINT = (
    f"download the complete diffusers folder of {RELEASED_REPO} into models/era3d/<name>/ "
    "(the 'MVBoost: Load Era3D' node's download option or mvboost_core.weights.download_era3d does this)"
)

StepCallback = Callable[[int, int, Tensor], None]


class Era3DLoadError(RuntimeError):
    """An Era3D folder cannot be loaded; the message names the folder/file and the fix."""


# ------------------------------------------------------------------------------------------------ helpers
def prompt_cache_dir() -> Path:
    """Where :func:`load_era3d` caches prompt embeddings it computed: ``$MVBOOST_CACHE_DIR/era3d_prompt_embeds`` if
    set, else the per-user cache directory (``~/.cache/mvboost/era3d_prompt_embeds``; the platform's equivalent on
    macOS/Windows). One file per model folder (named by a hash of its resolved path), holding the text encoder's
    fingerprint: a cache whose folder's text encoder changed is recomputed; a folder whose text encoder was
    removed after the first load keeps using it."""
    env = os.environ.get("MVBOOST_CACHE_DIR")
    if env:
        base = Path(env).expanduser()
    else:
        from ..weights import default_models_dir

        base = default_models_dir().parent  # <user cache>/mvboost (MVBOOST_MODELS_DIR does not move caches)
        if os.environ.get("MVBOOST_MODELS_DIR"):
            base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mvboost"
    return base / "era3d_prompt_embeds"


def era3d_prompts() -> tuple[list[str], list[str]]:
    """The 12 fixed prompts: ``(normal prompts, color prompts)``, each in ``ERA3D_VIEWS`` order."""
    normal = [PROMPT_TEMPLATE.format(view=v, kind="normal") for v in ERA3D_VIEWS]
    color = [PROMPT_TEMPLATE.format(view=v, kind="color") for v in ERA3D_VIEWS]
    return normal, color


@torch.no_grad()
def compute_prompt_embeds(tokenizer, text_encoder) -> tuple[Tensor, Tensor]:
    """Encode the 12 fixed prompts like upstream ``generate_fixed_text_embeds.py``.

    Tokenised with ``padding="max_length", max_length=77, truncation=True``; the embedding is the text model's
    ``last_hidden_state`` (the SD-2.1 text tower already stops at the penultimate OpenCLIP layer and applies the final
    LayerNorm). Upstream shipped these as float16 files, so the result is rounded to float16 (returned as float32).

    Returns:
        ``(normal [6,77,D], color [6,77,D])`` float32 on CPU.
    """
    n_prompts, c_prompts = era3d_prompts()
    max_len = int(getattr(text_encoder.config, "max_position_embeddings", 77) or 77)
    max_len = min(max_len, int(getattr(tokenizer, "model_max_length", max_len) or max_len))
    dev = next(text_encoder.parameters()).device
    out = []
    for prompts in (n_prompts, c_prompts):
        ids = tokenizer(prompts, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt")
        h = text_encoder(ids.input_ids.to(dev))[0]
        out.append(h.to(torch.float16).to(torch.float32).cpu())
    return out[0], out[1]


def load_upstream_prompt_embeds(folder) -> tuple[Tensor, Tensor]:
    """Upstream's shipped prompt embeddings: ``<folder>/normal_embeds.pt`` and ``<folder>/clr_embeds.pt``
    (``mvdiffusion/data/fixed_prompt_embeds_6view`` in github pengHTYX/Era3D; float16 ``[6,77,1024]`` each, view order
    front, front_right, right, back, left, front_left). Loaded with ``weights_only=True`` (nothing is unpickled).

    Returns ``(normal, color)`` float32 on CPU.
    """
    folder = Path(os.fspath(folder))
    out = []
    for name in ("normal_embeds.pt", "clr_embeds.pt"):
        f = folder / name
        if not f.is_file():
            raise Era3DLoadError(
                f"{f} not found: give the folder holding upstream's normal_embeds.pt and clr_embeds.pt "
                "(github pengHTYX/Era3D, mvdiffusion/data/fixed_prompt_embeds_6view)"
            )
        try:
            t = torch.load(str(f), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise Era3DLoadError(f"{f} is not a plain tensor file loadable with weights_only=True: {exc}") from exc
        if not isinstance(t, Tensor) or t.ndim != 3 or t.shape[0] != len(ERA3D_VIEWS):
            raise Era3DLoadError(f"{f} must hold one [6,77,D] tensor, got {getattr(t, 'shape', type(t).__name__)}")
        out.append(t.float())
    return out[0], out[1]


def _fingerprint_file(path: Path) -> str:
    """Cheap identity of a weights file: size + sha256 of its first and last MiB (covers the safetensors header)."""
    st = path.stat()
    h = hashlib.sha256(str(st.st_size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if st.st_size > (2 << 20):
            f.seek(-(1 << 20), os.SEEK_END)
            h.update(f.read(1 << 20))
    return h.hexdigest()


def _text_encoder_fingerprint(root: Path) -> str:
    te = root / "text_encoder"
    files = sorted(p for p in te.glob("*") if p.suffix in (".safetensors", ".json"))
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        h.update(_fingerprint_file(p).encode())
    tok = root / "tokenizer"
    for p in sorted(tok.glob("*")) if tok.is_dir() else []:
        h.update(p.name.encode())
        h.update(_fingerprint_file(p).encode())
    h.update(json.dumps(era3d_prompts()).encode())
    return h.hexdigest()


def _atomic_save_safetensors(tensors: dict, path: Path, metadata: dict) -> None:
    from safetensors.torch import save_file

    from ..atomic import atomic_write

    atomic_write(path, writer=lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
                                                    metadata=metadata))


def write_prompt_cache(folder, normal: Tensor, color: Tensor, fingerprint: str = "") -> Path:
    """Write ``<folder>/mvboost_prompt_embeds.safetensors`` (float16 ``normal_prompt_embeds`` /
    ``color_prompt_embeds`` ``[6,77,D]``, metadata ``format``, ``fingerprint``, ``prompts``) atomically.

    ``fingerprint`` identifies the text encoder the embeddings came from (empty = trusted as is, e.g. a slimmed
    folder shipped without ``text_encoder/``); :func:`load_era3d` recomputes a cache whose fingerprint no longer
    matches the folder's text encoder.
    """
    path = Path(os.fspath(folder)) / PROMPT_CACHE_NAME
    _atomic_save_safetensors(
        {"normal_prompt_embeds": normal.detach().cpu().to(torch.float16),
         "color_prompt_embeds": color.detach().cpu().to(torch.float16)},
        path,
        {"format": PROMPT_CACHE_FORMAT, "fingerprint": fingerprint, "prompts": json.dumps(era3d_prompts())},
    )
    return path


def _user_cache_path(root: Path) -> Path:
    return prompt_cache_dir() / (hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:32] + ".safetensors")


def _read_prompt_cache(path: Path, fp: Optional[str]) -> Optional[tuple[Tensor, Tensor]]:
    """The embeddings of a cache file in :data:`PROMPT_CACHE_FORMAT` whose fingerprint matches ``fp`` (any when
    ``fp`` is None), else None (stale, foreign or unreadable files are ignored, never fatal)."""
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") == PROMPT_CACHE_FORMAT and (fp is None or meta.get("fingerprint") == fp):
                return f.get_tensor("normal_prompt_embeds").float(), f.get_tensor("color_prompt_embeds").float()
        log.info("[MVBoost] %s is stale (text encoder changed); recomputing", path)
    except Exception as exc:
        log.warning("[MVBoost] ignoring unreadable prompt cache %s: %s", path, exc)
    return None


def _load_prompt_embeds(root: Path, cache: bool) -> tuple[Tensor, Tensor]:
    """Prompt embeddings from memory, the folder's own cache file, the user cache (:func:`prompt_cache_dir`), else
    computed from the folder's text encoder and written to the user cache (never into the model folder)."""
    for comp in TEXT_COMPONENTS:
        if not (root / comp).is_dir():
            if cache and ((root / PROMPT_CACHE_NAME).is_file() or _user_cache_path(root).is_file()):
                break  # a cache without the text encoder is fine (e.g. a slimmed folder)
            raise Era3DLoadError(
                f"Era3D folder {root} has no '{comp}/' sub-folder, needed once to compute the 12 fixed prompt "
                f"embeddings (no {PROMPT_CACHE_NAME} cache either): {_FIX_HINT}"
            )
    fp = _text_encoder_fingerprint(root) if (root / "text_encoder").is_dir() else None
    key = (str(root.resolve()), fp or "")
    if cache and key in _MEMORY_PROMPT_CACHE:
        n, c = _MEMORY_PROMPT_CACHE[key]
        return n.clone(), c.clone()
    user_cache = _user_cache_path(root)
    if cache:
        for path in (root / PROMPT_CACHE_NAME, user_cache):
            got = _read_prompt_cache(path, fp)
            if got is not None:
                _MEMORY_PROMPT_CACHE[key] = got
                return got[0].clone(), got[1].clone()
    from transformers import CLIPTextModel, CLIPTokenizer

    try:
        tokenizer = CLIPTokenizer.from_pretrained(str(root / "tokenizer"))
        text_encoder = CLIPTextModel.from_pretrained(str(root / "text_encoder"), use_safetensors=True)
    except Exception as exc:
        raise Era3DLoadError(
            f"could not load {root / 'text_encoder'} / {root / 'tokenizer'}: {exc}. {_FIX_HINT}"
        ) from exc
    text_encoder = text_encoder.to(torch.float32).eval()
    n, c = compute_prompt_embeds(tokenizer, text_encoder)
    del text_encoder, tokenizer  # freed: the text encoder is never needed again
    if cache:
        _MEMORY_PROMPT_CACHE[key] = (n, c)
        try:
            user_cache.parent.mkdir(parents=True, exist_ok=True)
            _atomic_save_safetensors(
                {"normal_prompt_embeds": n.to(torch.float16), "color_prompt_embeds": c.to(torch.float16)},
                user_cache, {"format": PROMPT_CACHE_FORMAT, "fingerprint": fp or "",
                             "prompts": json.dumps(era3d_prompts()), "source": str(root)})
            log.info("[MVBoost] cached Era3D prompt embeddings in %s", user_cache)
        except OSError as exc:
            log.info("[MVBoost] prompt cache %s not writable (%s); embeddings kept in memory only", user_cache, exc)
    return n.clone(), c.clone()


# ------------------------------------------------------------------------------------------- conditioning
@dataclass
class Era3DCondition:
    """Everything the denoiser is conditioned on, for one object (before the CFG expansion).

    Attributes:
        cond_image: ``[H,W,3]`` float32 in [0,1], the preprocessed input (white background).
        cond_image_uint8: ``[H,W,3]`` uint8 = ``trunc(cond_image*255)`` (upstream's ``TF.to_pil_image``); CLIP and
            the VAE see this image, not ``cond_image``.
        clip_pixel_values: ``[1,3,S,S]`` CLIPImageProcessor output (None if ``clip_embeds`` were given).
        clip_embeds: ``[1,Dc]`` (or ``[12,Dc]`` if given per sample) CLIP ``image_embeds`` before noising.
        clip_noise: ``[12,Dc]`` the unCLIP noise (one row per sample, upstream draws 12).
        image_embeds: ``[12,2*Dc]`` unCLIP class labels ``[normals(6) ; colors(6)]`` = noised embeds (level 0) ++
            the sinusoidal embedding of noise level 0 (``flip_sin_to_cos=True``: cos half first).
        cond_latents: ``[1,4,h,w]`` float32 ``vae.encode(u8/255*2-1).mode() * scaling_factor``.
        prompt_embeds: ``[12,77,D]`` fixed prompt embeddings ``[normal(6) ; color(6)]``.
    """

    cond_image: Tensor
    cond_image_uint8: Tensor
    clip_pixel_values: Optional[Tensor]
    clip_embeds: Tensor
    clip_noise: Tensor
    image_embeds: Tensor
    cond_latents: Tensor
    prompt_embeds: Tensor
    num_views: int = 6

    def cfg_inputs(self, do_cfg: bool) -> tuple[Tensor, Tensor, Tensor]:
        """``(class_labels, image_latents, prompt_embeds)`` in the UNet batch layout.

        With CFG: ``[0,n,0,c]``, ``[0,n,0,c]``, ``[n,n,c,c]`` (24 rows); without: ``[n;c]`` each (12 rows).
        """
        V = self.num_views
        lat = self.cond_latents.expand(2 * V, *self.cond_latents.shape[1:])
        emb, pe = self.image_embeds, self.prompt_embeds
        if not do_cfg:
            return emb, lat.contiguous(), pe
        z_e = torch.zeros_like(emb[:V])
        z_l = torch.zeros_like(lat[:V])
        cls = torch.cat([z_e, emb[:V], z_e, emb[V:]], 0)
        lats = torch.cat([z_l, lat[:V], z_l, lat[V:]], 0)
        pes = torch.cat([pe[:V], pe[:V], pe[V:], pe[V:]], 0)
        return cls, lats, pes


def _trace_put(trace: Optional[dict], key: str, value: Tensor) -> None:
    if trace is not None:
        trace.setdefault(key, []).append(value.detach().float().cpu())


def _trace_stack(trace: Optional[dict]) -> None:
    if trace is None:
        return
    for k, v in list(trace.items()):
        if isinstance(v, list) and v and all(isinstance(x, Tensor) for x in v):
            trace[k] = torch.stack(v, 0)


# --------------------------------------------------------------------------------------------- pipeline
class Era3DPipeline:
    """Era3D image -> 6 colour + 6 normal orthographic views (see the module docstring for conventions).

    Build it with :func:`load_era3d`. Entry points, from high to low level:

    * ``pipe(image, alpha=None, seed, steps=40, guidance=3.0, crop_size=420, eta=1.0, callback)`` -> result;
    * :meth:`denoise_from_images` / :meth:`refine` — SDEdit from given views (Refine Views);
    * :meth:`preprocess`, :meth:`encode_condition`, :meth:`sample`, :meth:`decode_latents` — the stages, used by the
      parity tests (each accepts the previous stage's stored output).
    """

    def __init__(
        self,
        *,
        unet,
        vae,
        image_encoder,
        feature_extractor,
        image_normalizer,
        image_noising_scheduler,
        scheduler,
        normal_prompt_embeds: Tensor,
        color_prompt_embeds: Tensor,
        path: str | None = None,
    ):
        self.unet = unet
        self.vae = vae
        self.image_encoder = image_encoder
        self.feature_extractor = feature_extractor
        self.image_normalizer = image_normalizer
        self.image_noising_scheduler = image_noising_scheduler
        self.scheduler = scheduler
        self.path = path
        cfg = dict(unet.config)
        self.num_views = int(cfg.get("num_views", 6))
        if self.num_views != len(ERA3D_VIEWS):
            raise Era3DLoadError(f"the UNet has num_views={self.num_views}; only the 6-view Era3D model is supported")
        for name, pe in (("normal", normal_prompt_embeds), ("color", color_prompt_embeds)):
            if pe.ndim != 3 or pe.shape[0] != self.num_views:
                raise ValueError(f"{name}_prompt_embeds must be [6,77,D], got {list(pe.shape)}")
            if pe.shape[-1] != int(cfg.get("cross_attention_dim", pe.shape[-1])):
                raise Era3DLoadError(
                    f"{name} prompt embeddings have width {pe.shape[-1]} but the UNet's cross_attention_dim is "
                    f"{cfg.get('cross_attention_dim')}: text encoder and UNet come from different models"
                )
        self.prompt_embeds = torch.cat([normal_prompt_embeds, color_prompt_embeds], 0).float().cpu()
        #: run the uncond and cond halves of the CFG batch as two forwards of 12 (lower peak memory, same maths:
        #: joint attention pairs n_u<->c_u and n_c<->c_c either way, row attention groups 6 consecutive samples).
        self.split_cfg_batches = False

    # -------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The UNet's compute dtype (its weights may be stored narrower: ``unet.dtype``)."""
        return precision.compute_dtype(self.unet)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def resolution(self) -> int:
        """Output image side in pixels (``unet.sample_size * 8``; 512 for the released model)."""
        return int(dict(self.unet.config)["sample_size"]) * self.vae_scale_factor

    def to(self, device=None, dtype=None) -> "Era3DPipeline":
        """Move the networks (UNet, VAE, CLIP image encoder, normalizer). ``dtype`` (anything
        :func:`mvboost_core.precision.choose` accepts, for the target device) sets the UNet's precision, the CLIP
        encoder's dtype to its compute dtype and the VAE's as in :func:`load_era3d`."""
        vae_dtype = None
        self.unet.to(device=device)
        self.image_encoder.to(device=device)
        if dtype is not None:
            prec = precision.choose("era3d", device if device is not None else self.device, dtype)
            precision.apply_precision(self.unet, prec)
            self.image_encoder.to(dtype=prec.compute)
            vae_dtype = torch.float32 if prec.compute == torch.bfloat16 or (
                prec.compute == torch.float16 and self.vae.config.get("force_upcast", False)) else prec.compute
        torch.nn.Module.to(self.vae, device=device, dtype=vae_dtype)  # (diffusers' override only adds warnings)
        if device is not None:
            self.image_normalizer.to(device, torch.float32)  # diffusers' own .to(torch_device, torch_dtype)
        return self

    # -------------------------------------------------------------- stages
    def preprocess(self, image, alpha=None, crop_size: float = 420) -> Tensor:
        """Input -> ``[H,W,3]`` condition image (see :func:`~mvboost_core.era3d.preprocess.preprocess_image`).

        ``crop_size`` is on the released 512-px scale (the micro test model at 128 px uses 420*128/512 = 105 px).
        """
        return preprocess_image(image, alpha=alpha, crop_size=crop_size, size=self.resolution)

    def preprocess_with_alpha(self, image, alpha=None, crop_size: float = 420) -> tuple[Tensor, Tensor]:
        """Like :meth:`preprocess`, also returning the object's alpha ``[H,W]`` (1 = object) framed the same way."""
        return preprocess_image_and_alpha(image, alpha=alpha, crop_size=crop_size, size=self.resolution)

    def _clip_processor_input(self, u8: np.ndarray):
        from PIL import Image

        return [Image.fromarray(u8)]

    @torch.no_grad()
    def encode_condition(
        self,
        cond_image: Tensor,
        generator: Optional[torch.Generator] = None,
        clip_noise: Optional[Tensor] = None,
        clip_pixel_values: Optional[Tensor] = None,
        clip_embeds: Optional[Tensor] = None,
        prompt_embeds: Optional[Tensor] = None,
    ) -> Era3DCondition:
        """unCLIP + VAE conditioning of a preprocessed image (upstream ``_encode_image``).

        Every stage can be replaced by given values (parity tests, experiments):

        Args:
            cond_image: ``[H,W,3]`` (or ``[3,H,W]``) float in [0,1] at the model resolution, white background.
            generator: CPU generator the unCLIP noise ``[12,Dc]`` is drawn from (float32); ignored if ``clip_noise``.
            clip_noise: explicit unCLIP noise ``[12,Dc]``.
            clip_pixel_values: explicit CLIP input ``[1|12,3,S,S]`` (skips the feature extractor; row 0 is used).
            clip_embeds: explicit CLIP ``image_embeds`` ``[1,Dc]`` or per sample ``[12,Dc]`` (skips CLIP entirely).
            prompt_embeds: explicit prompt embeddings ``[12,77,D]`` ``[normal(6) ; color(6)]`` for this call
                (default: the pipeline's fixed ones).
        """
        img = torch.as_tensor(cond_image).detach().float().cpu()
        if img.ndim == 3 and img.shape[0] == 3 and img.shape[-1] != 3:
            img = img.permute(1, 2, 0)
        R = self.resolution
        if img.ndim != 3 or img.shape[-1] != 3 or tuple(img.shape[:2]) != (R, R):
            raise Era3DInputError(
                f"cond_image must be [{R},{R},3] in [0,1] (use pipe.preprocess), got {list(img.shape)}"
            )
        dev = self.device
        V = self.num_views
        # Upstream converts the float image to PIL with torchvision's to_pil_image: x*255 truncated to uint8.
        u8 = (img.contiguous() * 255).to(torch.uint8)
        if clip_embeds is None:
            if clip_pixel_values is None:
                clip_pixel_values = self.feature_extractor(
                    images=self._clip_processor_input(u8.numpy()), return_tensors="pt"
                ).pixel_values
            clip_pixel_values = clip_pixel_values[:1].float()
            enc_dtype = next(self.image_encoder.parameters()).dtype
            clip_embeds = self.image_encoder(clip_pixel_values.to(dev, enc_dtype)).image_embeds.float()
        else:
            clip_embeds = torch.as_tensor(clip_embeds).float().to(dev)
            if clip_embeds.ndim != 2 or clip_embeds.shape[0] not in (1, 2 * V):
                raise ValueError(f"clip_embeds must be [1,Dc] or [{2 * V},Dc], got {list(clip_embeds.shape)}")
        Dc = clip_embeds.shape[-1]
        if clip_noise is None:
            clip_noise = torch.randn((2 * V, Dc), generator=generator, dtype=torch.float32)
        clip_noise = clip_noise.float()
        image_embeds = self.noise_image_embeddings(clip_embeds.expand(2 * V, Dc), clip_noise.to(clip_embeds.device))
        # VAE condition latents from the uint8 image (upstream: TF.to_tensor(pil) * 2 - 1, latent_dist.mode()).
        x = (u8.permute(2, 0, 1)[None].float() / 255.0) * 2.0 - 1.0
        vae_dtype = next(self.vae.parameters()).dtype
        cond_latents = self.vae.encode(x.to(dev, vae_dtype)).latent_dist.mode().float()
        cond_latents = cond_latents * float(self.vae.config.scaling_factor)
        if prompt_embeds is None:
            prompt_embeds = self.prompt_embeds
        elif tuple(prompt_embeds.shape) != tuple(self.prompt_embeds.shape):
            raise ValueError(f"prompt_embeds must be {list(self.prompt_embeds.shape)}, got {list(prompt_embeds.shape)}")
        return Era3DCondition(
            cond_image=img,
            cond_image_uint8=u8,
            clip_pixel_values=clip_pixel_values,
            clip_embeds=clip_embeds,
            clip_noise=clip_noise.cpu(),
            image_embeds=image_embeds,
            cond_latents=cond_latents,
            prompt_embeds=prompt_embeds.float().to(dev),
            num_views=V,
        )

    @torch.no_grad()
    def noise_image_embeddings(self, clip_embeds: Tensor, noise: Tensor, noise_level: int = 0) -> Tensor:
        """unCLIP noising (diffusers ``StableUnCLIPPipeline.noise_image_embeddings``), float32.

        ``unscale(add_noise(scale(e), noise, t=noise_level))`` ++ ``timestep_embedding(noise_level, Dc,
        flip_sin_to_cos=True, shift=0)``. Even at level 0 the squaredcos schedule adds noise with
        ``sqrt(1 - alphas_cumprod[0]) ~= 0.0064`` (normalised units).

        Args:
            clip_embeds: ``[N,Dc]``; noise: ``[N,Dc]``. Returns ``[N,2*Dc]`` float32.
        """
        from diffusers.models.embeddings import get_timestep_embedding

        e = clip_embeds.float()
        t = torch.full((e.shape[0],), int(noise_level), dtype=torch.long, device=e.device)
        norm = self.image_normalizer
        mean = norm.mean.to(e.device, torch.float32)
        std = norm.std.to(e.device, torch.float32)
        e = (e - mean) * 1.0 / std  # StableUnCLIPImageNormalizer.scale
        e = self.image_noising_scheduler.add_noise(e, noise.to(e.device, torch.float32), t)
        e = (e * std) + mean  # .unscale
        level = get_timestep_embedding(t, e.shape[-1], flip_sin_to_cos=True, downscale_freq_shift=0)
        return torch.cat([e, level.to(e.dtype)], 1)

    def _unet(self, x: Tensor, t: Tensor, prompt: Tensor, cls: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        dt = self.dtype
        out = self.unet(x.to(dt), t, encoder_hidden_states=prompt.to(dt), class_labels=cls.to(dt))
        if isinstance(out, (tuple, list)):
            sample, pose = out[0], (out[1] if len(out) > 1 else None)
        else:
            sample, pose = out, None
        return sample.float(), (None if pose is None else pose.float())

    def _unet_cfg(self, x_in: Tensor, t: Tensor, prompt: Tensor, cls: Tensor, do_cfg: bool):
        if not (do_cfg and self.split_cfg_batches):
            return self._unet(x_in, t, prompt, cls)
        V = self.num_views
        idx_u = torch.cat([torch.arange(0, V), torch.arange(2 * V, 3 * V)])
        idx_c = idx_u + V
        s_u, p_u = self._unet(x_in[idx_u], t, prompt[idx_u], cls[idx_u])
        s_c, p_c = self._unet(x_in[idx_c], t, prompt[idx_c], cls[idx_c])
        sample = torch.cat([s_u[:V], s_c[:V], s_u[V:], s_c[V:]], 0)
        pose = None if p_u is None else torch.cat([p_u, p_c], 0)
        return sample, pose

    def make_scheduler(self):
        """A fresh DDIM scheduler with the folder's config (the stored one is never mutated)."""
        return type(self.scheduler).from_config(self.scheduler.config)

    @torch.no_grad()
    def sample(
        self,
        cond: Era3DCondition,
        latents: Tensor,
        *,
        steps: int = 40,
        guidance: float = 3.0,
        eta: float = 1.0,
        generator: Optional[torch.Generator] = None,
        start_index: int = 0,
        callback: Optional[StepCallback] = None,
        trace: Optional[dict] = None,
    ) -> tuple[Tensor, Optional[Tensor]]:
        """The DDIM v-prediction loop (upstream pipeline step 8).

        Args:
            cond: from :meth:`encode_condition`.
            latents: ``[12,4,h,w]`` latents at ``timesteps[start_index]`` (``[normals ; colors]``); pure noise for a
                full run (``init_noise_sigma`` is 1 for DDIM).
            steps: ``scheduler.set_timesteps(steps)`` grid (leading spacing, offset 1: 40 -> 976, 951, ..., 1).
            guidance: CFG scale; 1.0 disables CFG (12-sample batch, like upstream).
            eta: DDIM eta (upstream inference: 1.0); eta > 0 draws a variance noise per step from ``generator``.
            start_index: first grid index to run (SDEdit), the loop runs ``steps - start_index`` UNet steps.
            callback: ``callback(done, total, latents)`` after every step (``done`` counts from 1).
            trace: if a dict, records per step ``timesteps``, ``unet_sample``, ``unet_out_sample``,
                ``unet_out_pose``, ``noise_pred_guided``, ``latents_steps`` (stacked on dim 0, float32, CPU).

        Returns:
            ``(latents [12,4,h,w] float32, pose [rows,2] or None)``; ``pose`` is the last step's CFG-combined
            ``[elevation (rad), focal (24/f_mm)]`` per multi-view group (upstream's ``return_elevation_focal``).
        """
        V = self.num_views
        dev = self.device
        do_cfg = float(guidance) != 1.0
        sched = self.make_scheduler()
        sched.set_timesteps(int(steps))
        timesteps = sched.timesteps[int(start_index):]
        cls, lat_cond, prompt = cond.cfg_inputs(do_cfg)
        cls, lat_cond, prompt = cls.to(dev), lat_cond.to(dev), prompt.to(dev)
        x = latents.to(dev, torch.float32)
        if trace is not None:
            trace["timesteps"] = timesteps.clone()
        pose_final = None
        total = len(timesteps)
        for i, t in enumerate(timesteps):
            if do_cfg:
                xin = torch.cat([x[:V], x[:V], x[V:], x[V:]], 0)
            else:
                xin = x
            xin = torch.cat([xin, lat_cond], 1)
            xin = sched.scale_model_input(xin, t)
            _trace_put(trace, "unet_sample", xin)
            v, pose = self._unet_cfg(xin, t.to(dev), prompt, cls, do_cfg)
            _trace_put(trace, "unet_out_sample", v)
            if pose is not None:
                _trace_put(trace, "unet_out_pose", pose)
            if do_cfg:
                nu, nc, cu, cc = v.chunk(4, 0)
                unc, con = torch.cat([nu, cu], 0), torch.cat([nc, cc], 0)
                v = unc + float(guidance) * (con - unc)
                if pose is not None:
                    pu, pc = pose.chunk(2, 0)
                    pose = pu + float(guidance) * (pc - pu)
            _trace_put(trace, "noise_pred_guided", v)
            x = sched.step(v, t, x, eta=float(eta), generator=generator, return_dict=False)[0]
            _trace_put(trace, "latents_steps", x)
            pose_final = pose
            if callback is not None:
                callback(i + 1, total, x)
        _trace_stack(trace)
        return x, pose_final

    @torch.no_grad()
    def decode_latents(self, latents: Tensor, batch_size: int = 2) -> Tensor:
        """``[N,4,h,w]`` -> ``[N,3,H,W]`` float32 in [0,1]: ``clamp(vae.decode(x/scale)/2+0.5, 0, 1)``.

        Decoded ``batch_size`` at a time (the SD VAE decoder at 512 px needs ~1 GB of activations per image).
        """
        vae_dtype = next(self.vae.parameters()).dtype
        s = float(self.vae.config.scaling_factor)
        out = []
        for chunk in latents.split(max(1, int(batch_size)), 0):
            img = self.vae.decode((chunk.float() / s).to(self.device, vae_dtype)).sample
            out.append((img.float() / 2 + 0.5).clamp(0, 1).cpu())
        return torch.cat(out, 0)

    @torch.no_grad()
    def encode_images(self, images: Tensor, batch_size: int = 2) -> Tensor:
        """``[N,H,W,3]`` (or ``[N,3,H,W]``) float in [0,1] -> ``[N,4,h,w]`` float32 latents
        ``vae.encode(x*2-1).latent_dist.mode() * scaling_factor`` (deterministic: the posterior mode)."""
        x = torch.as_tensor(images).detach().float()
        if x.ndim != 4:
            raise Era3DInputError(f"images must be [N,H,W,3], got {list(x.shape)}")
        if x.shape[-1] == 3 and x.shape[1] != 3:
            x = x.permute(0, 3, 1, 2)
        R = self.resolution
        if x.shape[1] != 3 or tuple(x.shape[2:]) != (R, R):
            raise Era3DInputError(
                f"images must be [N,{R},{R},3] (the model resolution; render the views at {R}x{R}), got "
                f"{list(images.shape)}"
            )
        vae_dtype = next(self.vae.parameters()).dtype
        s = float(self.vae.config.scaling_factor)
        out = []
        for chunk in x.split(max(1, int(batch_size)), 0):
            z = self.vae.encode((chunk * 2 - 1).to(self.device, vae_dtype)).latent_dist.mode()
            out.append(z.float() * s)
        return torch.cat(out, 0)

    # -------------------------------------------------------------- results
    def _result(self, images: Tensor, cond: Era3DCondition, pose: Optional[Tensor], info: dict,
                input_alpha: Optional[Tensor] = None) -> MultiViewResult:
        V = self.num_views
        imgs = images.permute(0, 2, 3, 1).contiguous()  # [12,H,W,3]
        H = imgs.shape[1]
        cams = Cameras.era3d(size=H)
        normals = MultiView(images=imgs[:V], cameras=cams, kind="normal", names=tuple(ERA3D_VIEWS))
        colors = MultiView(images=imgs[V:], cameras=cams, kind="color", names=tuple(ERA3D_VIEWS))
        elevation = focal = None
        if pose is not None:
            row = pose[-1].float().cpu()
            elevation = math.degrees(float(row[0]))
            focal = float(row[1]) if row.numel() > 1 else None
            info = {**info, "elevation_rad": float(row[0]), "focal_24_over_f_mm": focal}
        return MultiViewResult(
            colors=colors, normals=normals, elevation=elevation, focal=focal,
            input_image=cond.cond_image.clone(), info=info,
            input_alpha=None if input_alpha is None else input_alpha.float().cpu().clone(),
        )

    def _generator(self, seed: int) -> torch.Generator:
        return torch.Generator("cpu").manual_seed(int(seed) & 0xFFFF_FFFF_FFFF_FFFF)

    def _latent_shape(self) -> tuple[int, int, int, int]:
        h = self.resolution // self.vae_scale_factor
        return (2 * self.num_views, int(dict(self.unet.config).get("out_channels", 4)), h, h)

    # -------------------------------------------------------------- high level
    @torch.no_grad()
    def __call__(
        self,
        image,
        alpha=None,
        *,
        seed: int = 42,
        steps: int = 40,
        guidance: float = 3.0,
        crop_size: float = 420,
        eta: float = 1.0,
        callback: Optional[StepCallback] = None,
        latents: Optional[Tensor] = None,
        trace: Optional[dict] = None,
    ) -> MultiViewResult:
        """Generate six colour and six normal views of the object in ``image``.

        Args:
            image: RGBA image (PIL / ``[H,W,4]`` uint8 or float / ComfyUI ``[1,H,W,3|4]``), or RGB + ``alpha``.
            alpha: optional ``[H,W]`` object alpha (1 = object). ComfyUI MASKs are ``1 - alpha``: convert with
                :func:`~mvboost_core.era3d.preprocess.alpha_from_comfy_mask`.
            seed: CPU generator seed (upstream default 42).
            steps, guidance, eta: DDIM steps (40), CFG scale (3.0), DDIM eta (1.0) — upstream's test settings.
            crop_size: object's longest side on the 512-px scale (420).
            callback: ``callback(done, total, latents)`` after each denoising step (raise to abort).
            latents: optional initial latents ``[12,4,h,w]`` (replaces the seeded draw, like upstream's ``latents``).
            trace: optional dict receiving the stage tensors (see :meth:`sample`, plus ``cond``, ``images``).

        Returns:
            :class:`MultiViewResult`: ``normals``/``colors`` (``[6,H,W,3]``, Era3D view order, ``Cameras.era3d``
            orthographic cameras in the LGM world), ``elevation`` (degrees, positive = camera above), ``focal``
            (24/f_mm, 0 = orthographic input), ``input_image`` (the preprocessed condition image) and
            ``input_alpha`` (the object's alpha framed like it).
        """
        cond_image, input_alpha = self.preprocess_with_alpha(image, alpha=alpha, crop_size=crop_size)
        return self.generate_from_condition_image(
            cond_image, seed=seed, steps=steps, guidance=guidance, eta=eta, callback=callback, latents=latents,
            trace=trace, info={"crop_size": crop_size}, input_alpha=input_alpha,
        )

    @torch.no_grad()
    def generate_from_condition_image(
        self,
        cond_image: Tensor,
        *,
        seed: int = 42,
        steps: int = 40,
        guidance: float = 3.0,
        eta: float = 1.0,
        callback: Optional[StepCallback] = None,
        latents: Optional[Tensor] = None,
        clip_noise: Optional[Tensor] = None,
        trace: Optional[dict] = None,
        info: Optional[dict] = None,
        input_alpha: Optional[Tensor] = None,
    ) -> MultiViewResult:
        """Like ``__call__`` from an already preprocessed ``[H,W,3]`` condition image (e.g. ``result.input_image``).
        ``input_alpha`` (``[H,W]``, 1 = object, framed like it) is passed through to ``MultiViewResult.input_alpha``.

        Random draws in upstream order from ``seed``: unCLIP noise, then the initial latents (skipped if ``latents``
        is given), then the per-step DDIM noise.
        """
        g = self._generator(seed)
        cond = self.encode_condition(cond_image, generator=g, clip_noise=clip_noise)
        if latents is None:
            latents = torch.randn(self._latent_shape(), generator=g, dtype=torch.float32)
        elif tuple(latents.shape) != self._latent_shape():
            raise ValueError(f"latents must be {list(self._latent_shape())}, got {list(latents.shape)}")
        if trace is not None:
            trace["cond"] = cond
        x, pose = self.sample(cond, latents, steps=steps, guidance=guidance, eta=eta, generator=g,
                              callback=callback, trace=trace)
        images = self.decode_latents(x)
        if trace is not None:
            trace["images"] = images
        meta = {"seed": int(seed), "steps": int(steps), "guidance": float(guidance), "eta": float(eta),
                "dtype": str(self.dtype).replace("torch.", ""), **(info or {})}
        return self._result(images, cond, pose, meta, input_alpha=input_alpha)

    @torch.no_grad()
    def denoise_from_images(
        self,
        images_normals: Optional[Tensor],
        images_colors: Tensor,
        cond_image: Tensor,
        strength: float = 0.95,
        steps: int = 40,
        guidance: float = 3.0,
        seed: int = 0,
        eta: float = 1.0,
        *,
        callback: Optional[StepCallback] = None,
        trace: Optional[dict] = None,
    ) -> MultiViewResult:
        """SDEdit refinement of given views (MVBoost's Refine Views; notes §4.1).

        The views are VAE-encoded (posterior mode), noised to the timestep ``strength`` selects, and denoised for the
        remaining steps with the **original input image** as the unCLIP and concat condition.

        Timesteps (diffusers img2img convention): ``scheduler.set_timesteps(steps)``; ``init_steps =
        min(int(steps * strength), steps)``; the loop starts at grid index ``steps - init_steps`` and runs
        ``init_steps`` UNet steps. With 40 steps and strength 0.95: 38 steps from t = 926 (``[926, 901, ..., 1]``).

        * ``strength <= 0`` (``init_steps == 0``): no denoising; returns the VAE round trip of the inputs
          (``decode(encode(x))``) — no randomness is used.
        * ``strength >= 1`` (``init_steps == steps``): the inputs are ignored; initial latents are pure seeded noise,
          exactly as :meth:`generate_from_condition_image` (same seed -> identical output).
        * otherwise ``x_t = scheduler.add_noise(x0, eps, timesteps[start])`` with one ``eps [12,4,h,w]`` drawn after
          the unCLIP noise.

        Args:
            images_normals: ``[6,H,W,3]`` float in [0,1] normal maps (front-camera frame, ``n*0.5+0.5``, white
                background), Era3D view order; or ``None`` — the normal half then starts from zero latents
                (at strength 0.95 the init carries ~6 % signal anyway).
            images_colors: ``[6,H,W,3]`` float in [0,1], white background, orthographic, elevation 0, view order
                front, front_right, right, back, left, front_left, object framed like the condition image.
            cond_image: ``[H,W,3]`` float in [0,1], the preprocessed original input (``MultiViewResult.input_image``
                or :meth:`preprocess`). ``H = W = self.resolution``.
            strength: fraction of the schedule to re-run (0..1; MVBoost uses 0.95).
            steps, guidance, seed, eta: as ``__call__`` (40, 3.0, -, 1.0).
            callback: ``callback(done, total, latents)`` per step; trace: see :meth:`sample`.

        Returns:
            :class:`MultiViewResult` (``info`` holds ``strength``, ``start_timestep``, ``denoise_steps``).
        """
        V = self.num_views
        strength = float(strength)
        if not math.isfinite(strength) or strength < 0 or strength > 1:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
        steps = int(steps)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        colors = torch.as_tensor(images_colors)
        if colors.ndim != 4 or colors.shape[0] != V:
            raise Era3DInputError(f"images_colors must be [6,H,W,3] (Era3D view order), got {list(colors.shape)}")
        if images_normals is not None:
            normals = torch.as_tensor(images_normals)
            if tuple(normals.shape) != tuple(colors.shape):
                raise Era3DInputError(
                    f"images_normals {list(normals.shape)} must match images_colors {list(colors.shape)}"
                )
        init_steps = min(int(steps * strength), steps)
        start = steps - init_steps
        g = self._generator(seed)
        cond = self.encode_condition(cond_image, generator=g)
        z_c = self.encode_images(colors)
        z_n = self.encode_images(normals) if images_normals is not None else torch.zeros_like(z_c)
        x0 = torch.cat([z_n, z_c], 0)
        meta = {"seed": int(seed), "steps": steps, "guidance": float(guidance), "eta": float(eta),
                "strength": strength, "denoise_steps": init_steps, "dtype": str(self.dtype).replace("torch.", "")}
        if trace is not None:
            trace["cond"] = cond
            trace["init_latents_clean"] = x0.detach().cpu()
        if init_steps == 0:
            images = self.decode_latents(x0)
            meta["start_timestep"] = None
            return self._result(images, cond, None, meta)
        noise = torch.randn(self._latent_shape(), generator=g, dtype=torch.float32)
        sched = self.make_scheduler()
        sched.set_timesteps(steps)
        t0 = sched.timesteps[start]
        meta["start_timestep"] = int(t0)
        if start == 0:
            latents = noise * float(sched.init_noise_sigma)  # strength 1: the inputs are ignored
        else:
            latents = sched.add_noise(x0.to(noise.device), noise, t0.reshape(1).expand(x0.shape[0]))
        x, pose = self.sample(cond, latents, steps=steps, guidance=guidance, eta=eta, generator=g, start_index=start,
                              callback=callback, trace=trace)
        images = self.decode_latents(x)
        if trace is not None:
            trace["images"] = images
        return self._result(images, cond, pose, meta)

    refine = denoise_from_images


# ----------------------------------------------------------------------------------------------- loading
def _read_json(p: Path) -> dict:
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise Era3DLoadError(f"{p} is not valid JSON ({exc}); {_FIX_HINT}") from exc


def _check_folder(root: Path, need_text: bool) -> dict:
    if not root.is_dir():
        raise Era3DLoadError(f"Era3D folder {root} does not exist; {_FIX_HINT}")
    mi = root / "model_index.json"
    if not mi.is_file():
        raise Era3DLoadError(
            f"{root} has no model_index.json, so it is not a diffusers pipeline folder; {_FIX_HINT}"
        )
    index = _read_json(mi)
    missing = [c for c in REQUIRED_COMPONENTS + (TEXT_COMPONENTS if need_text else ()) if not (root / c).is_dir()]
    if missing:
        raise Era3DLoadError(
            f"Era3D folder {root} is missing the component folder(s) {', '.join(m + '/' for m in missing)}; {_FIX_HINT}"
        )
    ucfg_path = root / "unet" / "config.json"
    if not ucfg_path.is_file():
        raise Era3DLoadError(f"{ucfg_path} is missing; {_FIX_HINT}")
    ucfg = _read_json(ucfg_path)
    problems = []
    if "num_views" not in ucfg or "mvcd_attention" not in ucfg:
        problems.append("no multi-view fields (num_views / mvcd_attention)")
    if int(ucfg.get("in_channels", 0)) != 8:
        problems.append(f"in_channels {ucfg.get('in_channels')} (Era3D: 8)")
    if ucfg.get("class_embed_type") != "projection":
        problems.append(f"class_embed_type {ucfg.get('class_embed_type')!r} (Era3D: 'projection')")
    if problems:
        raise Era3DLoadError(
            f"{ucfg_path} is not an Era3D multi-view UNet ({ucfg.get('_class_name', 'unknown class')}: "
            f"{'; '.join(problems)}). This folder holds another model; {_FIX_HINT}"
        )
    return {"index": index, "unet_config": ucfg}


def _load_component(what: str, fn):
    try:
        return fn()
    except Era3DLoadError:
        raise
    except Exception as exc:
        raise Era3DLoadError(f"could not load the Era3D component {what}: {exc}. {_FIX_HINT}") from exc


def _vae_dtype(dt: torch.dtype, config_path: Path) -> torch.dtype:
    """The VAE's dtype for pipeline dtype ``dt``: fp32 for bf16 (CPU bf16 convolutions are slow, the VAE is small),
    fp32 for fp16 when the VAE config says ``force_upcast`` (the SD-2.1 VAE overflows in pure fp16 at 512 px; upstream
    relied on CUDA autocast), else ``dt``."""
    if dt == torch.bfloat16:
        return torch.float32
    if dt == torch.float16:
        try:
            if json.loads(config_path.read_text()).get("force_upcast", False):
                return torch.float32
        except (OSError, ValueError):
            pass
    return dt


def _feature_extractor_cls():
    """The PIL-based CLIP processor (bit-identical to upstream's transformers 4.37 processing)."""
    import transformers

    cls = getattr(transformers, "CLIPImageProcessorPil", None)
    if cls is None:
        try:
            from transformers.models.clip import CLIPImageProcessorPil as cls  # type: ignore
        except Exception:
            cls = transformers.CLIPImageProcessor  # transformers 4.x: the slow processor is the PIL one
    return cls


def load_era3d(
    path,
    device=None,
    dtype=None,
    *,
    prompt_embeds=None,
    cache_prompt_embeds: bool = True,
    cpu_tactics: bool | None = None,
) -> Era3DPipeline:
    """Load an Era3D diffusers folder (the released ``pengHTYX/MacLab-Era3D-512-6view`` layout).

    Reads ``vae`` (AutoencoderKL), ``image_encoder`` (CLIPVisionModelWithProjection), ``feature_extractor``
    (CLIPImageProcessor, PIL backend), ``image_normalizer`` (StableUnCLIPImageNormalizer),
    ``image_noising_scheduler`` (DDPMScheduler), ``scheduler`` (DDIMScheduler) and ``unet``
    (:class:`~mvboost_core.era3d.unet.Era3DUNet`; the ``model_index.json`` entry naming upstream's
    ``mvdiffusion.models.unet_mv2d_condition`` class is ignored — nothing from upstream is imported).

    Prompt embeddings: the 12 fixed prompts (:func:`era3d_prompts`) are encoded once with the folder's
    ``text_encoder``/``tokenizer`` (fp32, rounded to fp16 like upstream's shipped ``.pt`` files), cached in the user
    cache (:func:`prompt_cache_dir`, atomic write, keyed by the text encoder's fingerprint; a model folder is never
    written) and the text encoder is freed. A ``<path>/mvboost_prompt_embeds.safetensors`` shipped with a folder
    (:func:`write_prompt_cache`; slimmed folders without a text encoder) is used when its fingerprint matches. Pass
    ``prompt_embeds=(normal [6,77,D],
    color [6,77,D])`` to skip this, or the path of upstream's ``mvdiffusion/data/fixed_prompt_embeds_6view`` folder
    (``normal_embeds.pt`` + ``clr_embeds.pt``, the exact tensors the reference used; see
    :func:`load_upstream_prompt_embeds`). Such a folder copied to ``<path>/fixed_prompt_embeds_6view/`` is used
    automatically.

    Args:
        path: the folder.
        device: target device (default cpu).
        dtype: "auto", "fp32", "bf16", "fp16", a torch dtype or a :class:`~mvboost_core.precision.Precision`,
            resolved by :func:`mvboost_core.precision.choose` (its docstring has the ``auto`` table) into the UNet's
            storage and compute dtypes. The CLIP image encoder runs in the compute dtype, the VAE too except that
            it stays fp32 with bf16 (it is small, 84 M parameters, and CPU bf16 convolutions without AVX512-BF16
            fall back to a kernel ~15x slower than fp32) and with fp16 when its config sets ``force_upcast`` (the
            released SD-2.1 VAE does).
        cpu_tactics: switch the CPU inference tactics of the UNet and the VAE on
            (:func:`mvboost_core.tactics.enable_cpu_inference_tactics`; default: on for CPU).

    Raises:
        Era3DLoadError: missing folder/component/file, a UNet config of another model, incompatible components.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import StableUnCLIPImageNormalizer
    from transformers import CLIPVisionModelWithProjection

    root = Path(os.fspath(path)).expanduser()
    device = torch.device(device) if device is not None else torch.device("cpu")
    precision.parse_dtype(dtype)  # a bad dtype fails here, before any loading
    tactics_on = precision.cpu_tactics_default(device) if cpu_tactics is None else bool(cpu_tactics)
    upstream_pe = root / UPSTREAM_PROMPT_DIR
    if prompt_embeds is None and all((upstream_pe / f).is_file() for f in ("normal_embeds.pt", "clr_embeds.pt")):
        prompt_embeds = upstream_pe
    have_cache = (root / PROMPT_CACHE_NAME).is_file() or _user_cache_path(root).is_file()
    _check_folder(root, need_text=prompt_embeds is None and not (cache_prompt_embeds and have_cache))

    from .unet import Era3DUNet

    unet = _load_component("unet/", lambda: Era3DUNet.from_folder(str(root / "unet"), device=device, dtype=dtype,
                                                                  cpu_tactics=tactics_on))
    dt = precision.compute_dtype(unet)
    vae_dt = _vae_dtype(dt, root / "vae" / "config.json")
    if dt == torch.float16 and device.type == "cpu" and not precision.cpu_info().fp16:
        log.warning("[MVBoost] Era3D in fp16 on CPU is very slow (no fast fp16 matmul on this CPU); use auto")
    vae = _load_component(
        "vae/", lambda: AutoencoderKL.from_pretrained(
            str(root / "vae"), use_safetensors=True, local_files_only=True, torch_dtype=vae_dt)
    ).to(device).eval()
    if tactics_on:
        from ..tactics import enable_cpu_inference_tactics

        enable_cpu_inference_tactics(vae)  # fastconv 3x3 convolutions (NNPACK where the CPU class prefers it)
    image_encoder = _load_component(
        "image_encoder/",
        lambda: CLIPVisionModelWithProjection.from_pretrained(str(root / "image_encoder"), use_safetensors=True),
    ).to(device=device, dtype=dt).eval()
    feature_extractor = _load_component(
        "feature_extractor/", lambda: _feature_extractor_cls().from_pretrained(str(root / "feature_extractor"))
    )
    image_normalizer = _load_component(
        "image_normalizer/",
        lambda: StableUnCLIPImageNormalizer.from_pretrained(
            str(root / "image_normalizer"), use_safetensors=True, local_files_only=True),
    )
    image_normalizer.to(device, torch.float32)  # its own .to(torch_device, torch_dtype) signature
    image_normalizer.eval()
    image_noising_scheduler = _load_component(
        "image_noising_scheduler/", lambda: DDPMScheduler.from_pretrained(str(root / "image_noising_scheduler"))
    )
    scheduler = _load_component("scheduler/", lambda: DDIMScheduler.from_pretrained(str(root / "scheduler")))

    ucfg = dict(unet.config)
    Dc = int(image_encoder.config.projection_dim)
    cls_dim = int(ucfg.get("projection_class_embeddings_input_dim", 2 * Dc))
    if int(image_normalizer.config.embedding_dim) != Dc or cls_dim != 2 * Dc:
        raise Era3DLoadError(
            f"{root}: CLIP projection {Dc}, image_normalizer {image_normalizer.config.embedding_dim} and UNet class "
            f"input {ucfg.get('projection_class_embeddings_input_dim')} disagree (need D, D, 2D): the components come "
            f"from different models; {_FIX_HINT}"
        )

    if isinstance(prompt_embeds, (str, os.PathLike)):
        n, c = load_upstream_prompt_embeds(prompt_embeds)
    elif prompt_embeds is not None:
        n, c = (torch.as_tensor(t).float().cpu() for t in prompt_embeds)
    else:
        n, c = _load_prompt_embeds(root, cache_prompt_embeds)
    for m in (unet, vae, image_encoder):
        m.requires_grad_(False)
    image_normalizer.requires_grad_(False)
    return Era3DPipeline(
        unet=unet, vae=vae, image_encoder=image_encoder, feature_extractor=feature_extractor,
        image_normalizer=image_normalizer, image_noising_scheduler=image_noising_scheduler, scheduler=scheduler,
        normal_prompt_embeds=n, color_prompt_embeds=c, path=str(root),
    )
