"""A VGG16 trunk file in the real format of ``timm/vgg16.tv_in1k``'s ``model.safetensors`` (torchvision's
``features.N.weight/bias`` names and shapes, plus timm's ``pre_logits``/``head`` keys, here tiny), random values."""
from __future__ import annotations

from pathlib import Path

import torch


def write_vgg16_safetensors(path, seed: int = 0, dtype=torch.float16) -> dict:
    """Write the file and return its ``features.*`` tensors (float32) for comparisons."""
    import torchvision
    from safetensors.torch import save_file

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in torchvision.models.vgg16(weights=None).features.state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    feats = {f"features.{k}": (torch.randn(s, generator=g) * 0.02).to(dtype) for k, s in shapes.items()}
    extra = {"pre_logits.fc1.weight": torch.zeros(4, 8, dtype=dtype), "head.fc.bias": torch.zeros(4, dtype=dtype)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({**feats, **extra}, str(path))
    return {k: v.float() for k, v in feats.items()}
