"""Multi-view image sets passed between Era3D, the view bridge, Refine Views and LGM."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from .cameras import ERA3D_VIEWS, Cameras

__all__ = ["MultiView", "MultiViewResult"]


@dataclass
class MultiView:
    """``V`` views of one object.

    Attributes:
        images: ``[V,H,W,3]`` float in [0,1], composited over ``background`` where masks are given.
        cameras: the ``V`` cameras the views were made with (LGM world unless stated).
        kind: ``"color"`` or ``"normal"`` (normals encoded ``n*0.5+0.5`` in the front camera's frame).
        masks: optional ``[V,H,W]`` float in [0,1] (1 = object).
        names: view names, e.g. Era3D's ``front, front_right, right, back, left, front_left``.
    """

    images: Tensor
    cameras: Cameras
    kind: str = "color"
    masks: Tensor | None = None
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise ValueError(f"MultiView.images must be [V,H,W,3], got {list(self.images.shape)}")
        V, H, W, _ = self.images.shape
        if len(self.cameras) != V:
            raise ValueError(f"MultiView has {V} images but {len(self.cameras)} cameras")
        if self.masks is not None and tuple(self.masks.shape) != (V, H, W):
            raise ValueError(f"MultiView.masks must be [V,H,W]=[{V},{H},{W}], got {list(self.masks.shape)}")
        if self.kind not in ("color", "normal"):
            raise ValueError(f"MultiView.kind must be 'color' or 'normal', got {self.kind!r}")
        if self.names and len(self.names) != V:
            raise ValueError(f"MultiView.names has {len(self.names)} entries for {V} views")

    def __len__(self) -> int:
        return self.images.shape[0]

    def select(self, names_or_idx) -> "MultiView":
        """Subset of views by index list or by name list (keeps the given order)."""
        idx = [self.names.index(n) if isinstance(n, str) else int(n) for n in names_or_idx]
        t = torch.tensor(idx, dtype=torch.long)
        return replace(
            self,
            images=self.images[t.to(self.images.device)],
            cameras=self.cameras[t.to(self.cameras.device)],
            masks=None if self.masks is None else self.masks[t.to(self.masks.device)],
            names=tuple(self.names[i] for i in idx) if self.names else (),
        )


@dataclass
class MultiViewResult:
    """What Era3D (or Refine Views) returns for one object.

    Attributes:
        colors: six colour views (Era3D order ``ERA3D_VIEWS``), kind ``"color"``.
        normals: six normal maps, kind ``"normal"``.
        elevation: predicted elevation of the input view in degrees (Era3D/Blender sign: positive = above), or None.
        focal: predicted focal length (Era3D's regression output, in its units), or None.
        input_image: ``[H,W,3]`` the preprocessed condition image in [0,1] (white background), or None.
        info: free-form settings (seed, steps, guidance, strength ...) for provenance.
        input_alpha: ``[H,W]`` float in [0,1], the object's alpha (1 = object) framed exactly like ``input_image``
            (same crop, scale and padding), or None when the condition image was given already preprocessed.
            Optimize Input Pose uses it as the target mask, in the CLI and in ComfyUI alike.
    """

    colors: MultiView
    normals: MultiView
    elevation: float | None = None
    focal: float | None = None
    input_image: Tensor | None = None
    info: dict = field(default_factory=dict)
    input_alpha: Tensor | None = None

    @property
    def cameras(self) -> Cameras:
        return self.colors.cameras

    @property
    def view_names(self) -> tuple[str, ...]:
        return self.colors.names or ERA3D_VIEWS
