"""Boosting dataset: pseudo-ground-truth multi-view samples for LoRA training (``mvboost boost-data``).

Per input image (MVBoost, arXiv 2411.17772): Era3D six views -> view bridge -> LGM Gaussians -> render at the
refinement cameras -> Refine Views (SDEdit, strength 0.95) -> one sample. The per-item function is pluggable
(:class:`SampleGenerator`): :class:`MVBoostGenerator` is the real chain; :class:`SyntheticGenerator` makes
procedural Gaussian-blob objects with exact ground truth (used by the machinery check in
``benchmarks/boost_experiment.py``).

On-disk layout (format ``mvboost-boost-dataset`` version 1)::

    DATASET/
      manifest.json                 dataset index, rewritten by the main process at the end of every run
      samples/
        <sample_id>/                one complete sample (appears atomically, see below)
          sample.json               metadata: id, source, seed, generator + settings, camera sizes, data checksum
          data.safetensors          all tensors of the sample (table below)
        .tmp-<sample_id>-<pid>-<rand>/   a sample being written (ignored by readers; removed on the next run)

``data.safetensors`` tensors (images ``uint8`` 0..255 with row 0 at the top, RGB, white background; ``V = 6``
refinement views in Era3D order front, front_right, right, back, left, front_left):

=========================  ================  =================================================================
key                        shape / dtype     content
=========================  ================  =================================================================
``input_rgb``              [H0,W0,3] u8      the input image (composited on white)
``input_mask``             [H0,W0] u8        its foreground mask (255 = object)
``era3d_color``            [V,H,W,3] u8      Era3D colour views (synthetic: the ground truth)
``era3d_normal``           [V,H,W,3] u8      Era3D normal maps (``n*0.5+0.5``; synthetic: zeros)
``lgm_input``              [4,S,S,3] u8      the four bridged views fed to LGM (azimuth 0/90/180/270) -- the
                                             training input
``lgm_c2w``                [4,4,4] f32       their cameras, OpenCV camera-to-world (LGM world)
``lgm_intrinsics``         [4,4] f32         ``fx, fy, cx, cy`` in pixels at size S
``rendered_color``         [V,H,W,3] u8      the base LGM Gaussians rendered at the refinement cameras
``rendered_alpha``         [V,H,W] u8        their alpha
``refined_color``          [V,H,W,3] u8      the refined views -- the training target
``refined_normal``         [V,H,W,3] u8      refined normal maps (synthetic: zeros)
``target_mask``            [V,H,W] u8        alpha target: the refined views' masks when the refiner gives them,
                                             else the base render's alpha
``c2w``                    [V,4,4] f32       refinement cameras, OpenCV camera-to-world (LGM world)
``intrinsics``             [V,4] f32         ``fx, fy, cx, cy`` in pixels at size H=W
=========================  ================  =================================================================

``sample.json`` also records ``width``, ``height`` and ``projection`` of both camera sets so that
:class:`mvboost_core.cameras.Cameras` can be rebuilt exactly (:func:`load_sample`).

Atomicity and resume
    A sample is written into ``samples/.tmp-...``, every file is fsync'ed, then the folder is renamed to
    ``samples/<sample_id>`` (one ``rename`` syscall). After ``kill -9`` at any moment a sample folder is either
    complete or absent. A rerun skips valid samples (:func:`sample_is_complete`: JSON readable, format matches,
    data file of the recorded size with a readable header; ``verify="hash"`` also checks the SHA-256), regenerates
    corrupted ones (moved aside then deleted) and deletes stale temp folders of its own items. Sample ids are
    derived from the source name, so nothing is ever duplicated.

Distribution
    Items (image files sorted by relative path, or synthetic names) are sharded ``items[rank::world_size]``
    between the processes of an ``accelerate launch``; each item's seed is derived from its name and the base
    seed (:func:`derive_seed`), never from the rank, so any number of processes produces the same samples. The
    main process shows the progress bar and rewrites ``manifest.json`` after all processes are done.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence

import torch
from torch import Tensor

from ..atomic import atomic_write, fsync_dir as _fsync_dir

log = logging.getLogger(__name__)

__all__ = [
    "DATASET_FORMAT",
    "SAMPLE_FORMAT",
    "IMAGE_EXTENSIONS",
    "SampleGenerator",
    "SyntheticGenerator",
    "MVBoostGenerator",
    "derive_seed",
    "sample_id_for",
    "list_images",
    "shard",
    "write_sample",
    "sample_is_complete",
    "load_sample",
    "list_samples",
    "write_manifest",
    "generate_dataset",
    "BoostDataset",
    "GenerationReport",
]

DATASET_FORMAT = "mvboost-boost-dataset"
SAMPLE_FORMAT = "mvboost-boost-sample"
FORMAT_VERSION = 1
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
DATA_FILE = "data.safetensors"
META_FILE = "sample.json"
SAMPLES_DIR = "samples"
MANIFEST = "manifest.json"
_U8_KEYS = ("input_rgb", "input_mask", "era3d_color", "era3d_normal", "lgm_input", "rendered_color",
            "rendered_alpha", "refined_color", "refined_normal", "target_mask")
_F32_KEYS = ("lgm_c2w", "lgm_intrinsics", "c2w", "intrinsics")


# --------------------------------------------------------------------------------------------- names and seeds
def derive_seed(base_seed: int, name: str) -> int:
    """Per-item seed in ``[0, 2**31)`` from the base seed and the item name (rank-independent)."""
    h = hashlib.sha256(f"{int(base_seed)}/{name}".encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


def sample_id_for(name: str) -> str:
    """Folder name of an item: sanitised stem + 8 hex of SHA-1 of the full relative name (no collisions between
    ``cat.png`` and ``cat.jpg``)."""
    stem = Path(name).stem if "." in Path(name).name else Path(name).name
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_")[:48] or "item"
    return f"{stem}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def list_images(images_dir: str | os.PathLike) -> list[str]:
    """Image files under ``images_dir`` (recursive), as POSIX paths relative to it, sorted."""
    root = Path(images_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"--images folder not found: {root}")
    out = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                 if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    if not out:
        raise ValueError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}")
    return out


def shard(items: Sequence[str], rank: int, world_size: int) -> list[str]:
    """Deterministic disjoint share of process ``rank``: ``sorted(items)[rank::world_size]``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside [0, {world_size})")
    return list(sorted(items))[rank::world_size]


# --------------------------------------------------------------------------------------------- generators
class SampleGenerator(Protocol):
    """Makes one sample. ``name`` identifies the generator, ``settings()`` is recorded with every sample.

    ``__call__(item, seed)`` returns the tensors of the table in the module docstring: images as float in [0,1]
    (or uint8), cameras as float; plus the ``"_meta"`` key with ``{"width", "height", "projection",
    "lgm_width", "lgm_height", "lgm_projection"}``.
    """

    name: str

    def settings(self) -> dict: ...

    def __call__(self, item: str, seed: int) -> dict[str, Any]: ...


def _intrinsics(cams) -> Tensor:
    return torch.stack([cams.fx, cams.fy, cams.cx, cams.cy], dim=-1).float().cpu()


def _cams_meta(cams, prefix: str = "") -> dict:
    return {f"{prefix}width": cams.width, f"{prefix}height": cams.height, f"{prefix}projection": cams.projection}


def random_blob_object(seed: int, n_blobs: int = 24, extent: float = 0.45, device=None):
    """A procedural object: ``n_blobs`` anisotropic coloured Gaussians in ``[-extent, extent]^3`` (LGM world).

    Blobs cluster around 2-4 random parts so objects have structure; colours are per part with small jitter.
    Deterministic in ``seed``.
    """
    from ..gaussians import Gaussians

    g = torch.Generator().manual_seed(int(seed))
    n_parts = int(torch.randint(2, 5, (1,), generator=g))
    centers = (torch.rand(n_parts, 3, generator=g) * 2 - 1) * extent * 0.6
    part_col = torch.rand(n_parts, 3, generator=g) * 0.8 + 0.1
    part = torch.randint(0, n_parts, (n_blobs,), generator=g)
    means = centers[part] + torch.randn(n_blobs, 3, generator=g) * extent * 0.25
    means = means.clamp(-extent, extent)
    scales = torch.rand(n_blobs, 3, generator=g) * 0.07 + 0.03
    quats = torch.nn.functional.normalize(torch.randn(n_blobs, 4, generator=g), dim=-1)
    colors = (part_col[part] + torch.randn(n_blobs, 3, generator=g) * 0.05).clamp(0.02, 0.98)
    opac = torch.rand(n_blobs, generator=g) * 0.3 + 0.65
    return Gaussians(means=means, opacities=opac, scales=scales, quats=quats, colors=colors).to(device=device)


def degrade_views(images: Tensor, seed: int, blur: float = 1.0, color_shift: float = 0.06) -> Tensor:
    """Imitate generated-view imperfections on ``[V,H,W,3]`` views: Gaussian blur (sigma ``blur`` px) and a
    per-view colour gain/offset (``color_shift``), deterministic in ``seed``; white background stays ~white."""
    g = torch.Generator().manual_seed(int(seed) ^ 0x5EED)
    x = images.permute(0, 3, 1, 2).float()
    if blur > 0:
        r = max(1, int(round(2.5 * blur)))
        t = torch.arange(-r, r + 1, dtype=torch.float32)
        k = torch.exp(-0.5 * (t / blur) ** 2)
        k = k / k.sum()
        C = x.shape[1]
        x = torch.nn.functional.pad(x, (r, r, r, r), mode="replicate")
        x = torch.nn.functional.conv2d(x, k.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
        x = torch.nn.functional.conv2d(x, k.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)
    V = x.shape[0]
    gain = 1 + (torch.rand(V, 3, 1, 1, generator=g) * 2 - 1) * color_shift
    dark = 1 - x.mean(1, keepdim=True)  # only shift where there is object (not the white background)
    x = x + dark * (gain - 1) * x
    return x.clamp(0, 1).permute(0, 2, 3, 1)


class SyntheticGenerator:
    """Procedural objects with exact ground truth (the machinery check; no Era3D involved).

    * LGM input: the object rendered at LGM's four orbit cameras (``input_size``), optionally degraded by
      :func:`degrade_views` (``degrade=True`` imitates generated views).
    * Refinement cameras: ``n_views`` perspective orbit views (elevation 0 and +-20 degrees alternating, azimuths
      spread over 360) at ``render_size``; ``refined_color`` / ``target_mask`` = ground-truth render and alpha
      (the pseudo-ground truth is exact here); ``rendered_*`` = ``base_lgm``'s reconstruction rendered there (or
      the ground truth again when no base model is given).
    """

    name = "synthetic"

    def __init__(self, input_size: int = 64, render_size: int = 64, n_views: int = 6, n_blobs: int = 24,
                 degrade: bool = True, base_lgm=None):
        self.input_size, self.render_size, self.n_views = int(input_size), int(render_size), int(n_views)
        self.n_blobs, self.degrade, self.base_lgm = int(n_blobs), bool(degrade), base_lgm

    def settings(self) -> dict:
        return {"input_size": self.input_size, "render_size": self.render_size, "n_views": self.n_views,
                "n_blobs": self.n_blobs, "degrade": self.degrade, "base_lgm": self.base_lgm is not None}

    def target_cameras(self, seed: int):
        from ..cameras import Cameras

        g = torch.Generator().manual_seed(int(seed) ^ 0xCA11)
        az0 = float(torch.rand(1, generator=g)) * 360.0
        az = [(az0 + 360.0 * k / self.n_views) % 360.0 for k in range(self.n_views)]
        el = [(-20.0 if k % 3 == 1 else 20.0 if k % 3 == 2 else 0.0) for k in range(self.n_views)]
        return Cameras.orbit(el, az, width=self.render_size)

    @torch.no_grad()
    def __call__(self, item: str, seed: int) -> dict[str, Any]:
        from ..cameras import Cameras
        from ..render import render

        obj = random_blob_object(seed, self.n_blobs)
        in_cams = Cameras.lgm_input(self.input_size)
        clean = render(obj, in_cams).rgb.clamp(0, 1)
        lgm_in = degrade_views(clean, seed) if self.degrade else clean
        cams = self.target_cameras(seed)
        gt = render(obj, cams)
        if self.base_lgm is not None:
            from ..lgm import reconstruct

            pred = reconstruct(self.base_lgm, lgm_in[None].to(self.base_lgm.device))[0].to("cpu", torch.float32)
            base = render(pred, cams)
        else:
            base = gt
        V, H = len(cams), self.render_size
        zeros = torch.zeros(V, H, H, 3)
        return {
            "input_rgb": clean[0], "input_mask": render(obj, in_cams[0]).alpha[0, ..., 0],
            "era3d_color": gt.rgb.clamp(0, 1), "era3d_normal": zeros,
            "lgm_input": lgm_in, "lgm_c2w": in_cams.c2w.float(), "lgm_intrinsics": _intrinsics(in_cams),
            "rendered_color": base.rgb.clamp(0, 1), "rendered_alpha": base.alpha[..., 0],
            "refined_color": gt.rgb.clamp(0, 1), "refined_normal": zeros, "target_mask": gt.alpha[..., 0],
            "c2w": cams.c2w.float(), "intrinsics": _intrinsics(cams),
            "_meta": {**_cams_meta(cams), **_cams_meta(in_cams, "lgm_")},
        }


def _is_loader(x) -> bool:
    import functools
    import types

    return isinstance(x, (types.FunctionType, functools.partial))


class MVBoostGenerator:
    """The real MVBoost chain for one input image (RGBA, or RGB with a white/uniform background).

    Era3D (``era3d(image, seed=..., steps, guidance, crop_size)``) -> :func:`mvboost_core.bridge.era3d_to_lgm` ->
    LGM (:func:`mvboost_core.lgm.reconstruct`) -> :func:`mvboost_core.refine.refine_views` (which renders the
    Gaussians at Era3D's six orthographic cameras and refines them with SDEdit at ``strength``). The rendered views
    are re-rendered here at exactly the cameras the refiner returns, so target and renders share cameras.
    """

    name = "mvboost"

    def __init__(self, era3d, lgm, images_dir: str | os.PathLike, *, strength: float = 0.95, steps: int = 40,
                 refine_steps: int | None = None, guidance: float = 3.0, crop_size: int = 420,
                 lgm_config_name: str | None = None):
        """``era3d`` / ``lgm``: loaded models, or zero-argument callables that load them on first use (so a rerun
        whose samples are all complete never loads a model)."""
        self._era3d, self._lgm, self.images_dir = era3d, lgm, Path(images_dir)
        self.strength, self.steps, self.guidance, self.crop_size = float(strength), int(steps), float(guidance), crop_size
        self.refine_steps = int(refine_steps or steps)
        self.lgm_config_name = lgm_config_name
        #: called between the stages and after every denoising step (raise to stop); set by generate_dataset
        self.check_interrupt = None

    @property
    def era3d(self):
        if _is_loader(self._era3d):
            self._era3d = self._era3d()
        return self._era3d

    @property
    def lgm(self):
        if _is_loader(self._lgm):
            self._lgm = self._lgm()
        return self._lgm

    def settings(self) -> dict:
        name = self.lgm_config_name
        if name is None and isinstance(self._lgm, torch.nn.Module):
            name = getattr(getattr(self._lgm, "config", None), "name", None)
        return {"strength": self.strength, "steps": self.steps, "refine_steps": self.refine_steps,
                "guidance": self.guidance, "crop_size": self.crop_size, "lgm_config": name}

    def load_image(self, item: str) -> tuple[Tensor, Tensor]:
        """``(rgba [H,W,4] float 0..1, mask [H,W])``; images without alpha get mask = non-white pixels."""
        import numpy as np
        from PIL import Image

        with Image.open(self.images_dir / item) as im:
            has_alpha = im.mode in ("RGBA", "LA") or "transparency" in im.info
            arr = torch.from_numpy(np.array(im.convert("RGBA"))).float() / 255.0
        if not has_alpha:
            arr[..., 3] = ((arr[..., :3] < 0.98).any(-1)).float()
        return arr, arr[..., 3]

    @torch.no_grad()
    def __call__(self, item: str, seed: int) -> dict[str, Any]:
        from ..bridge import era3d_to_lgm
        from ..gaussians import Gaussians
        from ..lgm import reconstruct
        from ..refine import refine_views
        from ..render import render

        tick = self.check_interrupt or (lambda: None)

        def step_cb(*_):
            tick()

        rgba, mask = self.load_image(item)
        tick()
        mv = self.era3d(rgba, seed=seed, steps=self.steps, guidance=self.guidance, crop_size=self.crop_size,
                        callback=step_cb)
        tick()
        size = self.lgm.config.input_size
        imgs4, cams4 = era3d_to_lgm(mv, size=size)
        gauss: Gaussians = reconstruct(self.lgm, imgs4[None].to(self.lgm.device), cams4)[0]
        tick()
        input_image = mv.input_image if mv.input_image is not None else rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])
        refined = refine_views(self.era3d, gauss, input_image, strength=self.strength, steps=self.refine_steps,
                               guidance=self.guidance, seed=seed, callback=step_cb)
        tick()
        cams = refined.colors.cameras
        rendered = render(gauss.to(dtype=torch.float32), cams.to(device=gauss.device))
        target_mask = refined.colors.masks if refined.colors.masks is not None else rendered.alpha[..., 0]
        white = rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])
        return {
            "input_rgb": white, "input_mask": mask,
            "era3d_color": mv.colors.images, "era3d_normal": mv.normals.images,
            "lgm_input": imgs4, "lgm_c2w": cams4.c2w.float(), "lgm_intrinsics": _intrinsics(cams4),
            "rendered_color": rendered.rgb.clamp(0, 1), "rendered_alpha": rendered.alpha[..., 0],
            "refined_color": refined.colors.images, "refined_normal": refined.normals.images,
            "target_mask": target_mask,
            "c2w": cams.c2w.float(), "intrinsics": _intrinsics(cams),
            "_meta": {**_cams_meta(cams), **_cams_meta(cams4, "lgm_"),
                      "era3d_elevation": mv.elevation, "era3d_focal": mv.focal},
        }


# --------------------------------------------------------------------------------------------- writing / reading
def _to_u8(t: Tensor) -> Tensor:
    t = t.detach().cpu()
    if t.dtype == torch.uint8:
        return t.contiguous()
    return (t.float().clamp(0, 1) * 255.0).round().to(torch.uint8).contiguous()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_sample(root: str | os.PathLike, sample_id: str, sample: dict[str, Any], meta: dict) -> Path:
    """Write one sample atomically (temp folder + fsync + rename) and return its folder.

    ``sample`` holds the tensors of the module table (float images are quantised to uint8) and ``"_meta"``;
    ``meta`` is merged into ``sample.json``. An existing folder of the same id is replaced only if it is not a
    complete sample.
    """
    from safetensors.torch import save_file

    samples = Path(root) / SAMPLES_DIR
    samples.mkdir(parents=True, exist_ok=True)
    final = samples / sample_id
    tmp = samples / f".tmp-{sample_id}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        tensors = {}
        missing = [k for k in _U8_KEYS + _F32_KEYS if k not in sample]
        if missing:
            raise KeyError(f"sample generator returned no {missing}")
        for k in _U8_KEYS:
            tensors[k] = _to_u8(sample[k])
        for k in _F32_KEYS:
            tensors[k] = sample[k].detach().to("cpu", torch.float32).contiguous()
        save_file(tensors, str(tmp / DATA_FILE))
        _fsync_file(tmp / DATA_FILE)
        info = {
            "format": SAMPLE_FORMAT, "version": FORMAT_VERSION, "id": sample_id,
            **meta, **{k: v for k, v in sample.get("_meta", {}).items()},
            "shapes": {k: list(v.shape) for k, v in tensors.items()},
            "data_bytes": (tmp / DATA_FILE).stat().st_size,
            "data_sha256": _sha256_file(tmp / DATA_FILE),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (tmp / META_FILE).write_text(json.dumps(info, indent=1, sort_keys=True, default=str))
        _fsync_file(tmp / META_FILE)
        _fsync_dir(tmp)
        if final.exists() or final.is_symlink():
            _discard(final)
        os.rename(tmp, final)
        _fsync_dir(samples)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _discard(folder: Path) -> None:
    """Move an invalid sample folder out of the way (atomic) and delete it."""
    trash = folder.parent / f".trash-{folder.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(folder, trash)
    except OSError:
        trash = folder
    if trash.is_dir() and not trash.is_symlink():
        shutil.rmtree(trash, ignore_errors=True)
    else:
        trash.unlink(missing_ok=True)


def sample_is_complete(folder: str | os.PathLike, verify: str = "size") -> bool:
    """True iff ``folder`` holds a complete, readable sample.

    ``verify``: ``"size"`` (JSON + data size + safetensors header with every expected key) or ``"hash"`` (also
    the SHA-256 of the data file).
    """
    folder = Path(folder)
    try:
        info = json.loads((folder / META_FILE).read_text())
        if info.get("format") != SAMPLE_FORMAT or info.get("version") != FORMAT_VERSION:
            return False
        data = folder / DATA_FILE
        if data.stat().st_size != int(info["data_bytes"]):
            return False
        with open(data, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or n > 100_000_000:
                return False
            header = json.loads(f.read(n))
        if any(k not in header for k in _U8_KEYS + _F32_KEYS):
            return False
        if verify == "hash" and _sha256_file(data) != info["data_sha256"]:
            return False
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False


def load_sample(folder: str | os.PathLike) -> dict[str, Any]:
    """Read a sample: float tensors in [0,1] for images, ``Cameras`` for ``cameras`` / ``lgm_cameras``, and
    ``meta`` (the ``sample.json`` dict)."""
    from safetensors.torch import load_file

    from ..cameras import Cameras

    folder = Path(folder)
    meta = json.loads((folder / META_FILE).read_text())
    t = load_file(str(folder / DATA_FILE))
    out: dict[str, Any] = {k: (v.float() / 255.0 if v.dtype == torch.uint8 else v) for k, v in t.items()}
    out["meta"] = meta
    out["cameras"] = _cams(t["c2w"], t["intrinsics"], meta["width"], meta["height"], meta["projection"])
    out["lgm_cameras"] = _cams(t["lgm_c2w"], t["lgm_intrinsics"], meta["lgm_width"], meta["lgm_height"],
                               meta["lgm_projection"])
    return out


def _cams(c2w, intr, w, h, proj):
    from ..cameras import Cameras

    return Cameras(c2w, intr[:, 0], intr[:, 1], intr[:, 2], intr[:, 3], int(w), int(h), proj)


def list_samples(root: str | os.PathLike, verify: str = "size") -> list[Path]:
    """Complete sample folders under ``root/samples`` sorted by id (temp / trash / broken folders skipped)."""
    d = Path(root) / SAMPLES_DIR
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and sample_is_complete(p, verify))


def write_manifest(root: str | os.PathLike, generator: str | None = None, settings: dict | None = None) -> dict:
    """Scan the complete samples and (re)write ``manifest.json`` atomically; returns the manifest dict."""
    root = Path(root)
    entries = []
    for p in list_samples(root):
        info = json.loads((p / META_FILE).read_text())
        entries.append({"id": info["id"], "source": info.get("source"), "seed": info.get("seed"),
                        "generator": info.get("generator"), "data_sha256": info.get("data_sha256")})
    man = {"format": DATASET_FORMAT, "version": FORMAT_VERSION, "count": len(entries), "samples": entries,
           "generator": generator, "settings": settings or {},
           "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    atomic_write(root / MANIFEST, json.dumps(man, indent=1, sort_keys=True, default=str).encode())
    return man


def launched_on_cpu() -> bool:
    """True when this process belongs to a multi-process launch (torchrun / ``accelerate launch``) on a machine
    without CUDA, or ``ACCELERATE_USE_CPU`` is set: accelerate then needs ``cpu=True`` to pick the gloo backend
    (its ``--multi_gpu`` launcher is torchrun, which works for CPU processes too)."""
    flag = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1 or int(os.environ.get("LOCAL_RANK", "-1")) != -1
    return flag or (distributed and not torch.cuda.is_available())


def partial_state():
    """accelerate's ``PartialState`` (initialises torch.distributed under a launcher, CPU-aware)."""
    from accelerate import PartialState

    return PartialState(cpu=launched_on_cpu())


@dataclass
class GenerationReport:
    """What one process did."""

    rank: int = 0
    world_size: int = 1
    assigned: list[str] = field(default_factory=list)
    generated: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    regenerated: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    current: str | None = None  # the item being worked on (for an interruption's count)


def generate_dataset(
    out: str | os.PathLike,
    items: Sequence[str],
    generator: SampleGenerator | Callable[[str, int], dict],
    *,
    seed: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
    verify: str = "size",
    progress: bool | None = None,
    on_error: str = "raise",
    barrier: Callable[[], None] | None = None,
    is_main: bool | None = None,
    check_interrupt: Callable[[], None] | None = None,
) -> GenerationReport:
    """Generate the samples of this process's shard of ``items`` into ``out`` (resumable, atomic).

    ``rank`` / ``world_size`` default to accelerate's ``PartialState`` (1 process when not launched). After the
    shard is done the processes synchronise (``barrier``, default ``PartialState().wait_for_everyone``) and the
    main process rewrites ``manifest.json``. ``on_error="skip"`` logs a failing item and continues (it is retried
    by the next run); ``"raise"`` stops.

    Interruption: ``check_interrupt()`` (e.g. ComfyUI's interrupt check; whatever it raises propagates) is called
    before every item and handed to generators that have a ``check_interrupt`` attribute (:class:`MVBoostGenerator`
    calls it between its stages and after every denoising step). A ``KeyboardInterrupt`` (Ctrl-C) at any point
    leaves only complete samples (the one being written is removed, :func:`write_sample`) and is re-raised as
    :class:`~mvboost_core.progress.Interrupted` saying how many of this process's samples are complete; the
    manifest is not rewritten (the next run does it).
    """
    from ..progress import Interrupted
    state = None
    if rank is None or world_size is None:
        state = partial_state()
        rank, world_size = state.process_index, state.num_processes
        barrier = barrier or state.wait_for_everyone
        is_main = state.is_main_process if is_main is None else is_main
    is_main = (rank == 0) if is_main is None else is_main
    out = Path(out)
    (out / SAMPLES_DIR).mkdir(parents=True, exist_ok=True)
    names = sorted(set(items))
    if len(names) != len(items):
        raise ValueError("duplicate item names")
    ids = [sample_id_for(n) for n in names]
    if len(set(ids)) != len(ids):
        raise ValueError("two items map to the same sample id; rename one of them")
    mine = shard(names, rank, world_size)
    rep = GenerationReport(rank=rank, world_size=world_size, assigned=mine)
    gen_name = getattr(generator, "name", getattr(generator, "__name__", type(generator).__name__))
    settings = generator.settings() if hasattr(generator, "settings") else {}
    show = is_main if progress is None else (progress and is_main)
    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(mine), desc=f"boost-data [rank 0 of {world_size}]", unit="sample")
    tick = _Tick(check_interrupt)
    if check_interrupt is not None and getattr(generator, "check_interrupt", False) is None:
        generator.check_interrupt = tick
    try:
        _generate_items(out, mine, generator, rep, seed, verify, on_error, gen_name, settings, bar, tick)
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        n = len(rep.generated) + len(rep.skipped)
        cur = rep.current
        if cur is not None and cur not in rep.generated and sample_is_complete(out / SAMPLES_DIR / sample_id_for(cur)):
            n += 1  # stopped right after its folder was renamed into place
        where = f" of rank {rank}/{world_size}" if world_size > 1 else ""
        raise Interrupted(f"{n} of {len(mine)} samples{where} complete in {out}, re-run the same command to "
                          "resume") from None
    if bar is not None:
        bar.close()
    if barrier is not None:
        barrier()
    if is_main:
        write_manifest(out, gen_name, settings)
    return rep


class _Tick:
    """``check_interrupt`` wrapper remembering what it raised, so ``on_error="skip"`` never swallows a cancel
    (ComfyUI's interrupt exception is an ``Exception``)."""

    def __init__(self, fn: Callable[[], None] | None):
        self.fn, self.raised = fn, None

    def __call__(self) -> None:
        if self.fn is None:
            return
        try:
            self.fn()
        except BaseException as e:
            self.raised = e
            raise


def _generate_items(out: Path, mine: list[str], generator, rep: GenerationReport, seed: int, verify: str,
                    on_error: str, gen_name: str, settings: dict, bar, tick: _Tick) -> None:
    for name in mine:
        tick()
        rep.current = name
        sid = sample_id_for(name)
        folder = out / SAMPLES_DIR / sid
        for stale in (out / SAMPLES_DIR).glob(f".tmp-{sid}-*"):  # our own leftovers from a killed run
            shutil.rmtree(stale, ignore_errors=True)
        for stale in (out / SAMPLES_DIR).glob(f".trash-{sid}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if folder.exists():
            if sample_is_complete(folder, verify):
                rep.skipped.append(name)
                if bar is not None:
                    bar.update(1)
                continue
            log.warning("sample %s is incomplete or corrupted; regenerating it", folder)
            _discard(folder)
            rep.regenerated.append(name)
        s = derive_seed(seed, name)
        try:
            sample = generator(name, s)
            write_sample(out, sid, sample, {"source": name, "seed": s, "base_seed": seed, "generator": gen_name,
                                            "settings": settings})
            rep.generated.append(name)
        except Exception as e:  # noqa: BLE001
            if on_error == "raise" or e is tick.raised:
                raise
            log.error("boost-data: item %s failed: %r (it will be retried by the next run)", name, e)
            rep.failed[name] = repr(e)
        if bar is not None:
            bar.update(1)


# --------------------------------------------------------------------------------------------- training view
class BoostDataset(torch.utils.data.Dataset):
    """Training view of a boosting dataset: each item is a dict of tensors

    * ``lgm_input`` ``[4,S,S,3]`` float in [0,1] (network input views), ``lgm_c2w`` ``[4,4,4]``,
      ``lgm_intrinsics`` ``[4,4]``;
    * ``target_rgb`` ``[V,H,W,3]`` (refined views), ``target_alpha`` ``[V,H,W]``, ``c2w`` ``[V,4,4]``,
      ``intrinsics`` ``[V,4]``;
    * ``index`` (int).

    Every sample must share the image sizes and projections (``camera_meta``); samples are sorted by id.
    """

    def __init__(self, root: str | os.PathLike, verify: str = "size"):
        self.root = Path(root)
        if not (self.root / SAMPLES_DIR).is_dir():
            raise FileNotFoundError(f"{self.root} is not a boosting dataset (no {SAMPLES_DIR}/ folder); create one "
                                    "with `mvboost boost-data`.")
        self.folders = list_samples(self.root, verify)
        if not self.folders:
            raise ValueError(f"No complete samples in {self.root / SAMPLES_DIR}; run `mvboost boost-data` first.")
        metas = [json.loads((p / META_FILE).read_text()) for p in self.folders]
        keys = ("width", "height", "projection", "lgm_width", "lgm_height", "lgm_projection")
        first = {k: metas[0][k] for k in keys}
        for p, m in zip(self.folders, metas):
            if {k: m[k] for k in keys} != first:
                raise ValueError(f"sample {p.name} has cameras {({k: m[k] for k in keys})}, others {first}; "
                                 "a dataset must use one resolution/projection")
        self.camera_meta = first

    def __len__(self) -> int:
        return len(self.folders)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        from safetensors.torch import load_file

        t = load_file(str(self.folders[i] / DATA_FILE))
        return {
            "lgm_input": t["lgm_input"].float() / 255.0,
            "lgm_c2w": t["lgm_c2w"], "lgm_intrinsics": t["lgm_intrinsics"],
            "target_rgb": t["refined_color"].float() / 255.0,
            "target_alpha": t["target_mask"].float() / 255.0,
            "c2w": t["c2w"], "intrinsics": t["intrinsics"],
            "index": torch.tensor(i),
        }

    def cameras(self, c2w: Tensor, intrinsics: Tensor, lgm: bool = False):
        """Rebuild :class:`Cameras` from a (possibly batched, flattened) ``c2w [V,4,4]`` / ``intrinsics [V,4]``."""
        m = self.camera_meta
        p = "lgm_" if lgm else ""
        return _cams(c2w, intrinsics, m[p + "width"], m[p + "height"], m[p + "projection"])
