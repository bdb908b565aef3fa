"""Evaluation metrics: PSNR, SSIM, LPIPS (image), Chamfer distance and F-score (3D).

Image conventions
-----------------
Images are float tensors in [0, 1], **channels-last** ``[B,H,W,C]`` or ``[H,W,C]`` (C = 3, or 1), as everywhere in
this project (``MultiView.images``, ComfyUI IMAGE). Channels-first ``[B,C,H,W]`` / ``[C,H,W]`` is accepted only when
it is unambiguous: the last dimension is not 1 or 3 while the third-last is. ``a`` and ``b`` must have the same
shape. Every image function returns **one value per image** (``[B]``) with ``reduction="none"`` and the mean over
the batch with ``reduction="mean"`` (the default).

- PSNR is computed per image (MSE over its pixels and channels, or over the masked pixels), then averaged over the
  batch. LGM's training log instead averages the MSE over the whole batch before the log; pass the images as one
  big batch-free image (or use ``reduction="none"`` and combine yourself) if you need that.
- SSIM: Gaussian window 11×11, σ = 1.5, K1 = 0.01, K2 = 0.03, ``data_range`` 1; the image is reflect-padded by 5
  pixels and the SSIM map is averaged over all H×W positions and channels — exactly what torchmetrics'
  ``structural_similarity_index_measure(preds, target, data_range=1.0)`` computes (tested against it).
- LPIPS through the ``lpips`` package (v0.1 linear heads shipped in its wheel; VGG16 by default as in LGM's
  training loss, AlexNet optional). Our inputs in [0, 1] are mapped to lpips's [-1, 1] convention internally.
  The ImageNet VGG16 trunk is a model file like the others (see :func:`find_lpips_weights`): an explicit path, else
  ``<models_dir>/lpips/vgg16.tv_in1k.safetensors`` (``mvboost download lpips``; in ComfyUI ``models/lpips/``, which
  the nodes pass in with :func:`lpips_weights`), else torchvision's cached ``vgg16-397923af.pth`` (legacy).

3D conventions
--------------
Point sets are ``[N,3]`` tensors (or numpy arrays). Chamfer distance is the **unsquared** Euclidean distance,
``CD = ½·(mean_{x∈P} min_{y∈G} ‖x−y‖₂ + mean_{y∈G} min_{x∈P} ‖x−y‖₂)`` (SPAR3D/TripoSR style). F-score at threshold
τ: precision = fraction of predicted points with a ground-truth point closer than τ, recall = the converse,
``F = 2PR/(P+R)`` (0 when both are 0); the default τ = 0.1, 0.2 is also reported by :func:`point_cloud_metrics`.
No normalisation or alignment is done here: normalise both point sets the same way first (e.g.
:func:`normalize_points`). Nearest-neighbour search is exact: scipy's KD-tree on the CPU when scipy is installed,
otherwise (or with ``backend="torch"``) a chunked brute force whose memory stays bounded (``chunk × chunk``
distances at a time) for any number of points.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "psnr",
    "ssim",
    "LPIPSLoss",
    "get_lpips",
    "lpips_metric",
    "lpips_backbone_file",
    "find_lpips_weights",
    "lpips_weights",
    "nearest_distances",
    "chamfer_distance",
    "fscore",
    "point_cloud_metrics",
    "normalize_points",
    "sample_mesh_points",
    "sample_gaussian_points",
]


# ================================================================================================ image helpers
def _to_bchw(x: Tensor, name: str) -> Tensor:
    """``[B,H,W,C]``/``[H,W,C]`` (or unambiguous channels-first) -> ``[B,C,H,W]``."""
    if not isinstance(x, Tensor):
        x = torch.as_tensor(np.asarray(x))
    if not x.is_floating_point():
        raise TypeError(f"{name}: images must be float tensors in [0,1], got dtype {x.dtype}")
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4:
        raise ValueError(f"{name}: images must be [B,H,W,C] or [H,W,C] (channels-last), got shape {list(x.shape)}")
    if x.shape[-1] in (1, 3):
        return x.permute(0, 3, 1, 2)
    if x.shape[1] in (1, 3):
        return x
    raise ValueError(f"{name}: cannot find a channel axis of size 1 or 3 in shape {list(x.shape)}; "
                     "expected [B,H,W,3] (channels-last) or [B,3,H,W].")


def _pair(a: Tensor, b: Tensor, name: str) -> tuple[Tensor, Tensor]:
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"{name}: images must have the same shape, got {list(a.shape)} and {list(b.shape)}")
    a4, b4 = _to_bchw(a, name), _to_bchw(b, name)
    dtype = torch.promote_types(a4.dtype, b4.dtype)
    return a4.to(dtype), b4.to(device=a4.device, dtype=dtype)


def _reduce(v: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return v.mean()
    if reduction == "none":
        return v
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


# ====================================================================================================== PSNR
def psnr(a: Tensor, b: Tensor, data_range: float = 1.0, mask: Tensor | None = None,
         reduction: str = "mean") -> Tensor:
    """Peak signal-to-noise ratio in dB, ``10·log10(data_range² / MSE)`` per image, then the batch mean.

    ``mask``: optional ``[B,H,W]`` / ``[H,W]`` (or with a trailing 1) weights/booleans; the MSE is then the mean over
    the masked pixels (all channels) of each image. Identical images give ``inf``.
    """
    a4, b4 = _pair(a, b, "psnr")
    se = (a4 - b4) ** 2  # [B,C,H,W]
    if mask is None:
        mse = se.flatten(1).mean(1)
    else:
        m = torch.as_tensor(mask, device=a4.device)
        if m.ndim >= 3 and m.shape[-1] == 1:
            m = m[..., 0]
        if m.ndim == 2:
            m = m[None]
        if tuple(m.shape) != (a4.shape[0], a4.shape[2], a4.shape[3]):
            raise ValueError(f"psnr: mask must be [B,H,W] = {[a4.shape[0], a4.shape[2], a4.shape[3]]}, "
                             f"got {list(torch.as_tensor(mask).shape)}")
        m = m.to(se.dtype)[:, None]
        denom = m.flatten(1).sum(1) * a4.shape[1]
        if (denom <= 0).any():
            raise ValueError("psnr: the mask selects no pixel in at least one image.")
        mse = (se * m).flatten(1).sum(1) / denom
    val = 10.0 * torch.log10(data_range ** 2 / mse)
    return _reduce(val, reduction)


# ====================================================================================================== SSIM
@functools.lru_cache(maxsize=8)
def _gauss_window(size: int, sigma: float) -> Tensor:
    d = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-0.5 * (d / sigma) ** 2)
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(a: Tensor, b: Tensor, data_range: float = 1.0, kernel_size: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03, reduction: str = "mean") -> Tensor:
    """Structural similarity (Wang et al. 2004) with an 11×11 Gaussian window σ = 1.5; torchmetrics' numbers.

    The image is reflect-padded by ``kernel_size//2``, local statistics come from a depthwise Gaussian convolution,
    variances are clamped at 0, and the SSIM map is averaged over every pixel and channel of each image.
    Differentiable. Images need H, W > kernel_size//2 (reflect padding).
    """
    a4, b4 = _pair(a, b, "ssim")
    if kernel_size % 2 == 0 or kernel_size < 1:
        raise ValueError(f"ssim: kernel_size must be odd and positive, got {kernel_size}")
    pad = kernel_size // 2
    if min(a4.shape[2:]) <= pad:
        raise ValueError(f"ssim: images of {a4.shape[2]}×{a4.shape[3]} are too small for a {kernel_size}×"
                         f"{kernel_size} window (need H, W > {pad}).")
    c = a4.shape[1]
    win = _gauss_window(kernel_size, float(sigma)).to(device=a4.device, dtype=a4.dtype)
    win = win.expand(c, 1, kernel_size, kernel_size)
    a4 = F.pad(a4, (pad, pad, pad, pad), mode="reflect")
    b4 = F.pad(b4, (pad, pad, pad, pad), mode="reflect")
    stats = F.conv2d(torch.cat([a4, b4, a4 * a4, b4 * b4, a4 * b4]), win, groups=c)
    mu_a, mu_b, e_aa, e_bb, e_ab = stats.split(a4.shape[0])
    mu_aa, mu_bb, mu_ab = mu_a * mu_a, mu_b * mu_b, mu_a * mu_b
    var_a = (e_aa - mu_aa).clamp(min=0.0)
    var_b = (e_bb - mu_bb).clamp(min=0.0)
    cov = e_ab - mu_ab
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    smap = ((2 * mu_ab + c1) * (2 * cov + c2)) / ((mu_aa + mu_bb + c1) * (var_a + var_b + c2))
    return _reduce(smap.flatten(1).mean(1), reduction)


# ===================================================================================================== LPIPS
# torchvision ImageNet weights the lpips trunks are built from (torchvision models/vgg.py, models/alexnet.py).
_BACKBONE_URLS = {
    "vgg": "https://download.pytorch.org/models/vgg16-397923af.pth",
    "alex": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
}


def lpips_backbone_file(net: str = "vgg") -> Path:
    """Where torchvision caches the ImageNet backbone LPIPS needs: ``$TORCH_HOME/hub/checkpoints/<file>``."""
    if net not in _BACKBONE_URLS:
        raise ValueError(f"LPIPS net must be one of {sorted(_BACKBONE_URLS)}, got {net!r}")
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(_BACKBONE_URLS[net])


_WEIGHTS_OVERRIDE: contextvars.ContextVar = contextvars.ContextVar("mvboost_lpips_weights", default=None)


@contextlib.contextmanager
def lpips_weights(path: "str | os.PathLike | None"):
    """Inside this block, LPIPS-VGG built without an explicit ``pretrained_path`` (e.g. by the pose optimiser) reads
    its trunk from ``path`` first (None: no change). The CLI passes its ``--models-dir`` file, the ComfyUI node the
    file it found in ``models/lpips/``. A context variable: threads and other requests are not affected."""
    token = _WEIGHTS_OVERRIDE.set(None if path is None else Path(path))
    try:
        yield
    finally:
        _WEIGHTS_OVERRIDE.reset(token)


def find_lpips_weights(net: str = "vgg", models_dir=None) -> Path | None:
    """The trunk file LPIPS-``net`` will use, or None. VGG, in order: the :func:`lpips_weights` path, then
    ``<models_dir>/lpips/vgg16.tv_in1k.safetensors`` (:func:`mvboost_core.weights.lpips_weights_file`; default models
    dir: ``$MVBOOST_MODELS_DIR`` or the user cache), then torchvision's ``$TORCH_HOME/hub/checkpoints/
    vgg16-397923af.pth``. AlexNet: torchvision's cache only."""
    from .weights import lpips_weights_file

    if net not in _BACKBONE_URLS:
        raise ValueError(f"LPIPS net must be one of {sorted(_BACKBONE_URLS)}, got {net!r}")
    cands = []
    if net == "vgg":
        cands += [p for p in (_WEIGHTS_OVERRIDE.get(),) if p is not None] + [lpips_weights_file(models_dir)]
    cands.append(lpips_backbone_file(net))
    return next((p for p in cands if p.is_file()), None)


def _missing_trunk(net: str, tried: Path | None = None):
    from .weights import LPIPS_URL, WeightsNotFoundError, lpips_weights_file

    if net == "vgg":
        return WeightsNotFoundError(
            f"LPIPS-VGG needs the ImageNet VGG16 weights{f' (not found at {tried})' if tried else ''}: run "
            f"`mvboost download lpips` (~553 MB into {lpips_weights_file()}), or download {LPIPS_URL} as "
            f"vgg16.tv_in1k.safetensors into ComfyUI/models/lpips/ (torchvision's {lpips_backbone_file('vgg')} "
            "also works)")
    return WeightsNotFoundError(
        f"LPIPS-alex needs torchvision's ImageNet AlexNet weights{f' (not found at {tried})' if tried else ''}: "
        f"download {_BACKBONE_URLS['alex']} into {lpips_backbone_file('alex').parent}")


def _build_lpips(net: str, spatial: bool) -> nn.Module:
    """An ``lpips.LPIPS`` module with the v0.1 linear heads shipped in the lpips wheel and an *uninitialised* trunk.

    The module is constructed on the meta device, so torchvision never allocates or initialises the unused VGG16 /
    AlexNet classifier (102 M / 55 M parameters: ~0.4 GB and seconds of random init), then materialised on the CPU;
    the caller fills the trunk (file or random init). The lin heads are loaded from the same file lpips itself uses
    (``lpips/weights/v0.1/<net>.pth``) and the input scaling constants from a fresh ``lpips.ScalingLayer``.
    """
    import lpips  # lazy: imports torchvision

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torchvision's deprecated pretrained= argument
        with torch.device("meta"):
            model = lpips.LPIPS(net=net, pretrained=False, pnet_rand=True, spatial=spatial, verbose=False)
    model.to_empty(device="cpu")
    model.scaling_layer.load_state_dict(lpips.ScalingLayer().state_dict())
    lin_file = Path(lpips.__file__).resolve().parent / "weights" / "v0.1" / f"{net}.pth"
    lin_sd = torch.load(lin_file, map_location="cpu", weights_only=True)
    lin_keys = {f"lin{i}.model.1.weight" for i in range(len(model.chns))}
    if set(lin_sd) != lin_keys:
        raise RuntimeError(f"unexpected keys in the lpips wheel's {lin_file}: {sorted(lin_sd)}")
    model.load_state_dict(lin_sd, strict=False)
    return model


def _random_trunk(trunk: nn.Module, net: str) -> None:
    """Random trunk weights like torchvision's constructors (VGG: kaiming-normal fan_out + zero bias; AlexNet:
    PyTorch's default conv init). Only for ``pnet_rand=True`` (plumbing tests): the numbers mean nothing."""
    for m in trunk.modules():
        if isinstance(m, nn.Conv2d):
            if net == "vgg":
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            else:
                m.reset_parameters()


class LPIPSLoss(nn.Module):
    """LPIPS v0.1 (``lpips`` package) on our image convention; a frozen, differentiable loss and a metric.

    ``forward(a, b)`` takes two image batches in [0,1] (``[B,H,W,3]``/``[H,W,3]`` or unambiguous channels-first),
    maps them to lpips's [-1,1] and returns the per-image distance ``[B]`` (``reduction="none"``, default) or its
    mean. Gradients flow to the inputs; every parameter is frozen and the module always stays in eval mode
    (``.train()`` is ignored, so the lpips dropout layers never activate inside a training loop).

    Weights: the linear heads ship inside the ``lpips`` wheel (``lpips/weights/v0.1/<net>.pth``). The ImageNet
    trunk (torchvision VGG16 / AlexNet ``features``) is read from ``pretrained_path`` if given, else from
    :func:`find_lpips_weights`; ``download=True`` fetches the VGG file with
    :func:`mvboost_core.weights.download_lpips` (huggingface_hub) when none is found. A missing trunk raises
    :class:`mvboost_core.weights.WeightsNotFoundError` (a ``FileNotFoundError``) naming ``mvboost download lpips``.
    ``pnet_rand=True`` keeps a randomly initialised trunk (tests / plumbing only; the numbers are meaningless).
    The file may be a ``.safetensors`` (timm's ``vgg16.tv_in1k``: ``features.N.*`` as torchvision, plus a
    classifier that is not read) or a torch file (a full torchvision state dict or just its ``features.*``).
    """

    def __init__(self, net: str = "vgg", pretrained_path: str | os.PathLike | None = None,
                 pnet_rand: bool = False, download: bool = False, spatial: bool = False):
        super().__init__()
        if net not in _BACKBONE_URLS:
            raise ValueError(f"LPIPSLoss: net must be 'vgg' or 'alex', got {net!r}")
        # find the trunk weights first, so a missing file fails fast (before building the network)
        path = None if pnet_rand else self._backbone_path(net, pretrained_path, download)
        self.model = _build_lpips(net, spatial)
        self.net = net
        self.pnet_rand = pnet_rand
        self.weights_file: Path | None = path
        if path is not None:
            self._load_backbone(net, path)
        else:
            _random_trunk(self.model.net, net)
        self.model.requires_grad_(False)
        self.model.eval()

    @staticmethod
    def _backbone_path(net: str, pretrained_path, download: bool) -> Path:
        if pretrained_path is not None:
            path = Path(pretrained_path).expanduser()
            if not path.is_file():
                raise _missing_trunk(net, path)
            return path
        path = find_lpips_weights(net)
        if path is None and download:
            if net == "vgg":
                from .weights import download_lpips

                path = download_lpips()
            else:
                torch.hub.load_state_dict_from_url(_BACKBONE_URLS[net], progress=False)
                path = find_lpips_weights(net)
        if path is None:
            raise _missing_trunk(net)
        return path

    def _load_backbone(self, net: str, path: Path) -> None:
        want = {"features." + n.split(".", 1)[1] for n, _ in self.model.net.named_parameters()}
        try:
            if path.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(path), framework="pt") as f:  # only the trunk: timm's classifier is 0.4 GB
                    sd = {k: f.get_tensor(k) for k in f.keys() if k in want}
            else:
                sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file gets the same clear message
            raise ValueError(f"LPIPS-{net}: cannot read backbone weights {path}: {e}. Download it again "
                             "(`mvboost download lpips` after deleting it).") from e
        if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
            sd = sd["state_dict"]
        if not isinstance(sd, dict):
            raise ValueError(f"LPIPS-{net}: {path} does not hold a state dict.")
        new = {}
        for name, param in self.model.net.named_parameters():
            # lpips trunk parameter 'slice3.10.weight' is torchvision's 'features.10.weight'
            key = "features." + name.split(".", 1)[1]
            if key not in sd:
                raise ValueError(f"LPIPS-{net}: {path} lacks '{key}'; it is not a torchvision "
                                 f"{'vgg16' if net == 'vgg' else 'alexnet'} state dict.")
            if tuple(sd[key].shape) != tuple(param.shape):
                raise ValueError(f"LPIPS-{net}: {path} '{key}' has shape {list(sd[key].shape)}, expected "
                                 f"{list(param.shape)} (weights of a different network?).")
            new[name] = sd[key]
        self.model.net.load_state_dict(new, strict=True)

    def train(self, mode: bool = True) -> "LPIPSLoss":  # noqa: D401 - frozen metric, always eval
        return super().train(False)

    def forward(self, a: Tensor, b: Tensor, reduction: str = "none") -> Tensor:
        a4, b4 = _pair(a, b, "LPIPS")
        if a4.shape[1] != 3:
            raise ValueError(f"LPIPS needs RGB images (3 channels), got {a4.shape[1]}")
        p = next(self.model.parameters())
        a4 = a4.to(device=p.device, dtype=p.dtype) * 2 - 1
        b4 = b4.to(device=p.device, dtype=p.dtype) * 2 - 1
        d = self.model(a4, b4)
        if not self.model.spatial:
            d = d.flatten(1)[:, 0]
        return _reduce(d, reduction)


@functools.lru_cache(maxsize=4)
def _cached_lpips(net: str, pretrained_path: str | None, pnet_rand: bool, device: str) -> LPIPSLoss:
    return LPIPSLoss(net=net, pretrained_path=pretrained_path, pnet_rand=pnet_rand).to(device)


def get_lpips(net: str = "vgg", pretrained_path=None, pnet_rand: bool = False, device="cpu") -> LPIPSLoss:
    """A process-wide cached :class:`LPIPSLoss` (built once per (net, path, pnet_rand, device); the path is
    resolved first, so :func:`lpips_weights` is honoured)."""
    if pretrained_path is None and not pnet_rand:
        pretrained_path = find_lpips_weights(net)
        if pretrained_path is None:
            raise _missing_trunk(net)
    return _cached_lpips(net, None if pretrained_path is None else str(pretrained_path), bool(pnet_rand),
                         str(torch.device(device)))


def lpips_metric(a: Tensor, b: Tensor, net: str = "vgg", pretrained_path=None, pnet_rand: bool = False,
                 reduction: str = "mean") -> Tensor:
    """LPIPS between two [0,1] image batches (see :class:`LPIPSLoss`), without gradients; cached model."""
    model = get_lpips(net, pretrained_path, pnet_rand, device=a.device)
    with torch.no_grad():
        return model(a, b, reduction=reduction)


# ========================================================================================== Chamfer / F-score
def _points(x, name: str) -> Tensor:
    t = x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim != 2 or t.shape[1] != 3:
        raise ValueError(f"{name}: points must be [N,3], got {list(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name}: the point set is empty.")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: the point set contains NaN/inf.")
    return t if t.is_floating_point() else t.float()


def _kdtree():
    try:
        from scipy.spatial import cKDTree
    except ImportError:  # scipy is optional
        return None
    return cKDTree


def nearest_distances(x, y, chunk: int = 4096, backend: str = "auto") -> Tensor:
    """For each point of ``x [N,3]`` the Euclidean distance to its nearest neighbour in ``y [M,3]`` -> ``[N]``.

    ``backend``: ``"kdtree"`` = scipy's exact ``cKDTree`` query in float64 (fast; CPU; needs scipy),
    ``"torch"`` = exact chunked brute force (any device), ``"auto"`` = kdtree for CPU tensors when scipy is
    importable, else torch. Both are exact; the tests check them against each other and against brute force.

    Torch brute force is processed in ``chunk × chunk`` blocks with a running minimum, so peak extra memory is about
    ``chunk² × 8`` bytes whatever N and M are. The nearest neighbour is searched in float64 with one matrix product
    per block (``argmin_y ‖y‖² − 2x·y``; float64 makes the cancellation error negligible) and the chosen pair's
    distance is then recomputed from the coordinate difference. Returned in the inputs' (promoted) dtype.
    """
    x, y = _points(x, "nearest_distances(x)"), _points(y, "nearest_distances(y)")
    out_dtype = torch.promote_types(x.dtype, y.dtype)
    if backend not in ("auto", "kdtree", "torch"):
        raise ValueError(f"nearest_distances: backend must be 'auto', 'kdtree' or 'torch', got {backend!r}")
    tree = _kdtree() if backend in ("auto", "kdtree") else None
    if backend == "kdtree" and tree is None:
        raise ImportError("nearest_distances(backend='kdtree') needs scipy (pip install scipy).")
    if tree is not None and (backend == "kdtree" or (x.device.type == "cpu" and y.device.type == "cpu")):
        yn = y.detach().to("cpu", torch.float64).numpy()
        xn = x.detach().to("cpu", torch.float64).numpy()
        d, _ = tree(yn).query(xn, k=1)
        return torch.from_numpy(np.asarray(d, dtype=np.float64)).to(device=x.device, dtype=out_dtype)
    x64, y64 = x.to(torch.float64), y.to(device=x.device, dtype=torch.float64)
    yy = y64.square().sum(dim=1)
    out = torch.empty(x64.shape[0], dtype=torch.float64, device=x.device)
    for i in range(0, x64.shape[0], chunk):
        xi = x64[i:i + chunk]
        best = torch.full((xi.shape[0],), math.inf, dtype=torch.float64, device=x.device)
        arg = torch.zeros(xi.shape[0], dtype=torch.long, device=x.device)
        for j in range(0, y64.shape[0], chunk):
            yj = y64[j:j + chunk]
            score = torch.addmm(yy[j:j + chunk][None], xi, yj.T, alpha=-2.0)  # ‖x−y‖² − ‖x‖²
            v, a = score.min(dim=1)
            better = v < best
            best = torch.where(better, v, best)
            arg = torch.where(better, a + j, arg)
        out[i:i + chunk] = (xi - y64[arg]).norm(dim=1)
    return out.to(out_dtype)


def chamfer_distance(pred, gt, chunk: int = 4096, backend: str = "auto") -> Tensor:
    """Unsquared Chamfer distance ``½·(mean_p min_g ‖p−g‖ + mean_g min_p ‖p−g‖)`` (scalar tensor)."""
    d_pg = nearest_distances(pred, gt, chunk, backend)
    d_gp = nearest_distances(gt, pred, chunk, backend)
    return 0.5 * (d_pg.mean() + d_gp.mean())


def _fscore_from(d_pg: Tensor, d_gp: Tensor, threshold: float) -> Tensor:
    precision = (d_pg < threshold).to(d_pg.dtype).mean()
    recall = (d_gp < threshold).to(d_gp.dtype).mean()
    denom = precision + recall
    return torch.where(denom > 0, 2 * precision * recall / denom.clamp_min(1e-12), torch.zeros_like(denom))


def fscore(pred, gt, threshold: float = 0.1, chunk: int = 4096, backend: str = "auto") -> Tensor:
    """F-score at ``threshold``: harmonic mean of precision (pred→gt distance < τ) and recall (gt→pred < τ)."""
    return _fscore_from(nearest_distances(pred, gt, chunk, backend), nearest_distances(gt, pred, chunk, backend),
                        threshold)


def point_cloud_metrics(pred, gt, thresholds: Sequence[float] = (0.1, 0.2), chunk: int = 4096,
                        backend: str = "auto") -> dict:
    """``{"chamfer": float, "fscore@0.1": float, "fscore@0.2": float, ...}`` with one nearest-neighbour pass."""
    d_pg = nearest_distances(pred, gt, chunk, backend)
    d_gp = nearest_distances(gt, pred, chunk, backend)
    out = {"chamfer": float(0.5 * (d_pg.mean() + d_gp.mean()))}
    for t in thresholds:
        out[f"fscore@{t:g}"] = float(_fscore_from(d_pg, d_gp, t))
    return out


def normalize_points(points, reference=None, extent: float = 2.0):
    """Centre and scale ``points`` so that ``reference``'s (default: its own) bounding box is centred at 0 with its
    longest side = ``extent`` (2 → inside [-1,1]³). Use the same reference for prediction and ground truth."""
    p = _points(points, "normalize_points")
    r = p if reference is None else _points(reference, "normalize_points(reference)").to(p)
    lo, hi = r.min(0).values, r.max(0).values
    size = (hi - lo).max()
    if size <= 0:
        raise ValueError("normalize_points: the reference points are all identical (zero extent).")
    return (p - (lo + hi) / 2) * (extent / size)


# ========================================================================================= point sampling
def sample_mesh_points(mesh, n: int = 16384, seed: int = 0) -> Tensor:
    """``n`` points uniformly on a trimesh mesh surface (area-weighted; ``trimesh.sample.sample_surface`` with a
    seed, so the same seed gives the same points) -> float32 ``[n,3]``. ``mesh`` may be a ``trimesh.Trimesh``, a
    ``trimesh.Scene`` (its geometry is concatenated in world space) or a path trimesh can load."""
    import trimesh

    if isinstance(mesh, (str, os.PathLike)):
        mesh = trimesh.load(str(mesh), force="mesh")
    if isinstance(mesh, trimesh.Scene):
        mesh = mesh.to_geometry() if hasattr(mesh, "to_geometry") else mesh.dump(concatenate=True)
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0 or float(mesh.area) <= 0:
        raise ValueError("sample_mesh_points: need a triangle mesh with faces and a non-zero surface area.")
    pts, _ = trimesh.sample.sample_surface(mesh, int(n), seed=seed)
    return torch.from_numpy(np.asarray(pts, dtype=np.float32))


def sample_gaussian_points(g, n: int | None = None, seed: int = 0, opacity_weighted: bool = True,
                           min_opacity: float = 0.0) -> Tensor:
    """Points from Gaussians: their centres ``means``.

    ``n=None`` returns every centre with opacity ≥ ``min_opacity``. With ``n`` given, ``n`` centres are drawn with
    replacement (``torch.Generator`` seeded with ``seed``), with probability ∝ opacity when ``opacity_weighted``
    (else uniform) among those with opacity ≥ ``min_opacity``. Returns float32 ``[n,3]`` on the CPU.
    """
    means = g.means.detach().float().cpu()
    opac = g.opacities.detach().float().cpu()
    keep = opac >= min_opacity
    if not keep.any():
        raise ValueError(f"sample_gaussian_points: no Gaussian has opacity >= {min_opacity}.")
    means, opac = means[keep], opac[keep]
    if n is None:
        return means
    gen = torch.Generator().manual_seed(int(seed))
    w = opac if opacity_weighted else torch.ones_like(opac)
    if w.sum() <= 0:
        w = torch.ones_like(opac)
    idx = torch.multinomial(w, int(n), replacement=True, generator=gen)
    return means[idx]
