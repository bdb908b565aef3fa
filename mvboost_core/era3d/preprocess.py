"""Era3D input preprocessing: alpha bounding-box crop, resize, centre on a square canvas, white background.

This reproduces upstream Era3D's ``SingleImageDataset.load_image`` (``mvdiffusion/data/single_image_dataset.py``)
with the same Pillow calls, so the result is bit-identical to the reference for the same RGBA uint8 input:

1. bbox of the pixels with ``alpha != 0``; ``PIL.Image.crop((min_x, min_y, max_x, max_y))`` — PIL's box is exclusive,
   so the bbox's last row and column are dropped (upstream quirk, kept);
2. ``scale = crop_px / max(h, w)``; ``resize((int(scale*w), int(scale*h)))`` with BICUBIC (Pillow's default; RGBA is
   resampled premultiplied);
3. pasted at ``((size-w)//2, (size-h)//2)`` on a transparent ``size x size`` RGBA canvas;
4. float32 ``/255`` and composited over white: ``rgb*a + 1*(1-a)`` (float32 arithmetic as numpy does it).

Alpha sources, in order of precedence:

* an explicit ``alpha`` argument (``[H,W]``, 1 = object, 0 = background), e.g. from a segmentation;
* a ComfyUI ``MASK`` converted with :func:`alpha_from_comfy_mask`: **ComfyUI's LoadImage outputs MASK = 1 - alpha**
  (1 = transparent background), so the object's alpha is ``1 - mask``;
* the image's own fourth channel (RGBA input).

An image without any alpha source is refused with an error explaining how to provide one (there is no silent
"whole image is the object" fallback: Era3D was trained on cut-out objects and a framed photo produces garbage).
"""
from __future__ import annotations

from typing import Union

import numpy as np
import torch
from PIL import Image

__all__ = [
    "Era3DInputError",
    "to_rgba_uint8",
    "alpha_from_comfy_mask",
    "crop_pixels",
    "preprocess_rgba",
    "preprocess_image",
    "preprocess_image_and_alpha",
]

ImageLike = Union[Image.Image, np.ndarray, torch.Tensor]

#: The released model's resolution; ``crop_size`` arguments are expressed on this scale.
REFERENCE_SIZE = 512


class Era3DInputError(ValueError):
    """Raised for an unusable input image or mask; the message names the problem and the fix."""


def _to_numpy_hwc(x: ImageLike, what: str) -> np.ndarray:
    """Any image-like -> numpy array ``[H,W]`` or ``[H,W,C]`` (uint8 stays uint8, floats stay float)."""
    if isinstance(x, Image.Image):
        return np.asarray(x)
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype == torch.bfloat16 or x.dtype == torch.float16:
            x = x.float()
        x = x.numpy()
    if not isinstance(x, np.ndarray):
        raise Era3DInputError(f"{what} must be a PIL image, numpy array or torch tensor, got {type(x).__name__}")
    return x


def _float_to_uint8(x: np.ndarray) -> np.ndarray:
    """[0,1] floats -> uint8 by rounding (inverts ComfyUI's ``uint8 / 255`` exactly)."""
    return np.clip(np.round(x.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)


def alpha_from_comfy_mask(mask: ImageLike) -> np.ndarray:
    """ComfyUI ``MASK`` (``[H,W]`` or ``[1,H,W]`` float, **1 = background**, as LoadImage outputs ``1 - alpha``)
    -> object alpha ``[H,W]`` uint8 (255 = object)."""
    m = _to_numpy_hwc(mask, "mask")
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2:
        raise Era3DInputError(f"mask must be [H,W] (one mask per image), got shape {list(m.shape)}")
    if m.dtype == np.uint8:
        return (255 - m).astype(np.uint8)
    return _float_to_uint8(1.0 - m.astype(np.float64))


def to_rgba_uint8(image: ImageLike, alpha: ImageLike | None = None) -> np.ndarray:
    """Normalise an input to an RGBA uint8 array ``[H,W,4]``.

    Args:
        image: PIL image (RGB/RGBA/LA/L/P), or an array/tensor ``[H,W,3|4]`` (or ``[1,H,W,3|4]``, a ComfyUI IMAGE
            batch of one), uint8 0..255 or float 0..1. Floats are converted with ``round(x*255)``, which recovers the
            uint8 values ComfyUI's LoadImage started from.
        alpha: optional object alpha ``[H,W]`` (uint8 0..255 or float 0..1, 1 = object). Overrides the image's own
            alpha channel. For a ComfyUI MASK use :func:`alpha_from_comfy_mask` first.

    Raises:
        Era3DInputError: no alpha source, mismatched sizes, degenerate shapes.
    """
    if isinstance(image, Image.Image):
        if image.mode not in ("RGB", "RGBA"):
            image = image.convert("RGBA" if ("A" in image.getbands() or "transparency" in image.info) else "RGB")
    arr = _to_numpy_hwc(image, "image")
    if arr.ndim == 4:
        if arr.shape[0] != 1:
            raise Era3DInputError(
                f"expected one image, got a batch of {arr.shape[0]}; run Era3D once per image (split the batch)"
            )
        arr = arr[0]
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise Era3DInputError(f"image must be [H,W,3] (RGB) or [H,W,4] (RGBA), got shape {list(arr.shape)}")
    if arr.dtype != np.uint8:
        arr = _float_to_uint8(arr)
    H, W = arr.shape[:2]
    if alpha is not None:
        a = _to_numpy_hwc(alpha, "alpha")
        if a.ndim == 3 and a.shape[0] == 1:
            a = a[0]
        if a.ndim != 2:
            raise Era3DInputError(f"alpha/mask must be [H,W], got shape {list(a.shape)}")
        if tuple(a.shape) != (H, W):
            hint = ""
            if tuple(a.shape) == (64, 64):
                hint = (
                    " (ComfyUI's LoadImage outputs a blank 64x64 MASK when the file has no transparency: remove the "
                    "background first, e.g. with a background-removal node, or load an RGBA PNG)"
                )
            raise Era3DInputError(
                f"mask size {a.shape[1]}x{a.shape[0]} (WxH) does not match the image size {W}x{H}{hint}; "
                "connect the MASK that belongs to this IMAGE"
            )
        if a.dtype != np.uint8:
            a = _float_to_uint8(a)
        arr = np.concatenate([arr[..., :3], a[..., None]], axis=-1)
    elif arr.shape[-1] == 3:
        raise Era3DInputError(
            "the image has no alpha channel and no mask was given: Era3D needs the object cut out. Connect "
            "LoadImage's MASK output (ComfyUI masks are 1 - alpha), load an RGBA PNG with a transparent background, "
            "or remove the background first (e.g. with a background-removal node)"
        )
    return np.ascontiguousarray(arr)


def crop_pixels(crop_size: float, size: int) -> int:
    """``crop_size`` is given on the released model's 512-px scale (default 420); for a model of resolution
    ``size`` the object's longest side becomes ``int(round(crop_size * size / 512))`` px (identity at 512)."""
    px = int(round(float(crop_size) * size / REFERENCE_SIZE))
    if not 1 <= px <= size:
        raise Era3DInputError(
            f"crop_size {crop_size} (on the 512 scale) gives {px} px for a {size}-px model; use 1..512 "
            "(Era3D's default is 420)"
        )
    return px


def preprocess_rgba(rgba: np.ndarray, crop_px: int, size: int, bg: float = 1.0,
                    return_alpha: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """The upstream crop/resize/centre/composite on an RGBA uint8 array ``[H,W,4]``.

    Args:
        rgba: ``[H,W,4]`` uint8.
        crop_px: longest side of the object after resizing, in output pixels (upstream ``crop_size``).
        size: output canvas side (upstream ``img_wh[0]``).
        bg: background grey level in [0,1] (white = 1, Era3D's inference setting).
        return_alpha: also return the object's alpha on the canvas (same crop, resize and padding).

    Returns:
        ``[size,size,3]`` float32 in [0,1]; with ``return_alpha`` also ``[size,size]`` float32 alpha (1 = object).
    """
    if rgba.ndim != 3 or rgba.shape[-1] != 4 or rgba.dtype != np.uint8:
        raise Era3DInputError(f"preprocess_rgba needs an [H,W,4] uint8 array, got {rgba.dtype} {list(rgba.shape)}")
    alpha = rgba[:, :, 3]
    ys, xs = np.nonzero(alpha)
    if ys.size == 0:
        raise Era3DInputError(
            "the alpha/mask is empty (no object pixel): nothing to generate from. Check the mask polarity: "
            "ComfyUI's LoadImage MASK is 1 - alpha (1 = background)"
        )
    min_x, min_y, max_x, max_y = int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
    # Exclusive PIL box, as upstream: the bbox's last column/row are dropped.
    if max_x - min_x < 1 or max_y - min_y < 1:
        raise Era3DInputError(
            f"the object's bounding box is {max_x - min_x + 1}x{max_y - min_y + 1} px (image "
            f"{rgba.shape[1]}x{rgba.shape[0]}): at least 2x2 object pixels are needed; use a larger image"
        )
    img = Image.fromarray(rgba)  # [H,W,4] uint8 -> mode RGBA
    ref = img.crop((min_x, min_y, max_x, max_y))
    h, w = ref.height, ref.width
    scale = crop_px / max(h, w)
    h_, w_ = int(scale * h), int(scale * w)
    if h_ < 1 or w_ < 1:
        raise Era3DInputError(
            f"the object ({w}x{h} px) is too thin to resize to a longest side of {crop_px} px; use a larger crop_size "
            "or a better-proportioned cut-out"
        )
    ref = ref.resize((w_, h_), resample=Image.Resampling.BICUBIC)
    canvas = Image.new(ref.mode, (size, size), 0)
    canvas.paste(ref, ((size - w_) // 2, (size - h_) // 2))
    out = np.array(canvas).astype(np.float32) / 255.0
    a = out[..., 3:4]
    bg_arr = np.array([bg, bg, bg], dtype=np.float32)
    rgb = out[..., :3] * a + bg_arr * (1 - a)
    return (rgb, np.ascontiguousarray(out[..., 3])) if return_alpha else rgb


def preprocess_image(
    image: ImageLike,
    alpha: ImageLike | None = None,
    crop_size: float = 420,
    size: int = 512,
    bg: float = 1.0,
) -> torch.Tensor:
    """Era3D condition image from an RGBA image (or RGB + alpha).

    Args:
        image: see :func:`to_rgba_uint8` (PIL, numpy or torch; ``[H,W,3|4]`` or a batch of one).
        alpha: optional ``[H,W]`` object alpha (1 = object). ComfyUI MASKs are ``1 - alpha``: convert them with
            :func:`alpha_from_comfy_mask`.
        crop_size: longest object side on the 512-px scale (:func:`crop_pixels`); 420 is Era3D's default.
        size: model resolution (``unet.sample_size * 8``; 512 for the released model).
        bg: background level (1 = white).

    Returns:
        ``[size,size,3]`` float32 tensor in [0,1] (CPU), white background — upstream's ``imgs_in[0]`` (HWC).
    """
    return preprocess_image_and_alpha(image, alpha, crop_size, size, bg)[0]


def preprocess_image_and_alpha(
    image: ImageLike,
    alpha: ImageLike | None = None,
    crop_size: float = 420,
    size: int = 512,
    bg: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`preprocess_image` plus the object's alpha framed the same way.

    Returns:
        ``(image [size,size,3], alpha [size,size])`` float32 tensors in [0,1] (CPU); alpha 1 = object. Optimize
        Input Pose uses this alpha as its target mask (it travels in ``MultiViewResult.input_alpha``).
    """
    rgba = to_rgba_uint8(image, alpha)
    rgb, a = preprocess_rgba(rgba, crop_pixels(crop_size, size), size, bg, return_alpha=True)
    return torch.from_numpy(np.ascontiguousarray(rgb)), torch.from_numpy(a)
