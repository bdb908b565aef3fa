"""Gaussians: the activated 3D Gaussian parameters that flow between every stage.

Conventions (DESIGN.md):
    means      [N,3]  world coordinates (LGM world: y up, objects inside [-1,1]^3)
    opacities  [N]    in (0,1), *not* logits
    scales     [N,3]  linear standard deviations along the local axes, *not* log
    quats      [N,4]  (w, x, y, z), normalised
    colors     [N,3]  RGB in [0,1], used directly as the splat colour (no SH, no offset)

LGM's raw network layout ``[N,14]`` = pos(3) opacity(1) scale(3) rot(4) rgb(3), all already activated, converts
with :meth:`Gaussians.from_lgm` / :meth:`Gaussians.to_lgm`.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

__all__ = ["Gaussians"]


@dataclass
class Gaussians:
    """One object's Gaussians (activated parameters, one tensor each; see the module docstring)."""

    means: Tensor
    opacities: Tensor
    scales: Tensor
    quats: Tensor
    colors: Tensor

    def __post_init__(self) -> None:
        n = self.means.shape[0] if self.means.ndim == 2 else -1
        expect = {"means": (n, 3), "opacities": (n,), "scales": (n, 3), "quats": (n, 4), "colors": (n, 3)}
        for name, shape in expect.items():
            t = getattr(self, name)
            if not isinstance(t, Tensor):
                raise TypeError(f"Gaussians.{name} must be a torch.Tensor, got {type(t).__name__}")
            if tuple(t.shape) != shape:
                raise ValueError(
                    f"Gaussians.{name} must have shape {list(shape)} (N={n}), got {list(t.shape)}"
                )

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype

    def to(self, device=None, dtype=None) -> "Gaussians":
        return Gaussians(**{f.name: getattr(self, f.name).to(device=device, dtype=dtype) for f in fields(self)})

    def detach(self) -> "Gaussians":
        return Gaussians(**{f.name: getattr(self, f.name).detach() for f in fields(self)})

    def clone(self) -> "Gaussians":
        return Gaussians(**{f.name: getattr(self, f.name).clone() for f in fields(self)})

    def __getitem__(self, idx) -> "Gaussians":
        """Select Gaussians with an index, slice or boolean mask over N."""
        return Gaussians(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    def replace(self, **changes) -> "Gaussians":
        return replace(self, **changes)

    @staticmethod
    def cat(items: "list[Gaussians]") -> "Gaussians":
        return Gaussians(**{f.name: torch.cat([getattr(g, f.name) for g in items]) for f in fields(Gaussians)})

    def validate(self, what: str = "Gaussians") -> "Gaussians":
        """Raise ``ValueError`` naming the problem if empty, non-finite or out of range; returns ``self``."""
        if len(self) == 0:
            raise ValueError(f"{what} is empty (0 Gaussians): nothing to render or save.")
        for f in fields(self):
            t = getattr(self, f.name).detach()
            bad = ~torch.isfinite(t)
            if bad.any():
                count = int(bad.reshape(t.shape[0], -1).any(dim=1).sum())
                raise ValueError(
                    f"{what}: {count} Gaussian(s) have NaN/inf {f.name}. The upstream model produced invalid "
                    "values; check the input images and the checkpoint (fp16 overflow?)."
                )
        if (self.opacities.detach() < 0).any() or (self.opacities.detach() > 1).any():
            raise ValueError(f"{what}: opacities must be activated values in [0,1], not logits.")
        if (self.scales.detach() < 0).any():
            raise ValueError(f"{what}: scales must be linear (>= 0), not log-scales.")
        return self

    # ------------------------------------------------------------- LGM layout
    @classmethod
    def from_lgm(cls, x: Tensor) -> "Gaussians":
        """From LGM's activated ``[N,14]`` = pos(3) opacity(1) scale(3) rot wxyz(4) rgb(3)."""
        if x.ndim != 2 or x.shape[-1] != 14:
            raise ValueError(f"LGM gaussians must be [N,14], got {list(x.shape)}")
        return cls(
            means=x[:, 0:3],
            opacities=x[:, 3],
            scales=x[:, 4:7],
            quats=x[:, 7:11],
            colors=x[:, 11:14],
        )

    def to_lgm(self) -> Tensor:
        """To LGM's ``[N,14]`` layout (inverse of :meth:`from_lgm`)."""
        return torch.cat(
            [self.means, self.opacities[:, None], self.scales, self.quats, self.colors], dim=-1
        )


# =====================================================================================================================
# Colour / pruning constants shared with the file formats (mvboost_core.splatio)
# =====================================================================================================================
__all__ += ["SH_C0", "DEFAULT_PRUNE_OPACITY"]

#: Degree-0 spherical-harmonics constant: ``rgb = 0.5 + SH_C0 * f_dc`` (INRIA 3DGS, LGM core/gs.py, antimatter15).
SH_C0 = 0.28209479177387814
#: LGM's default pruning threshold on the activated opacity (LGM core/gs.py: ``opacity >= 0.005`` is kept).
DEFAULT_PRUNE_OPACITY = 0.005

# File I/O lives in :mod:`mvboost_core.splatio` (one module per format, a registry, each format's measured axes
# convention). The names below are kept for code written against the first releases, with their old meaning:
# coordinates are written and read exactly as they are in the file ("y_up": no axis change) and .spz is version 3.
# New code uses ``mvboost_core.splatio`` (default axes = what viewers expect).
_LEGACY_IO = {"save_ply": {"axes": "y_up"}, "load_ply": {"axes": "y_up"}, "save_splat": {"axes": "y_up"},
              "load_splat": {"axes": "y_up"}, "save_spz": {"axes": "y_up", "version": 3},
              "load_spz": {"axes": "y_up"}}


def __getattr__(name):  # PEP 562: legacy I/O names, resolved lazily (splatio imports this module)
    if name in _LEGACY_IO:
        import functools

        from . import splatio

        fn = getattr(splatio, name)
        defaults = _LEGACY_IO[name]

        @functools.wraps(fn)
        def legacy(*args, **kwargs):
            return fn(*args, **{**defaults, **kwargs})

        legacy.__doc__ = (f"Legacy ``{name}``: :func:`mvboost_core.splatio.{name}` with {defaults} as defaults "
                          "(coordinates unchanged). Prefer mvboost_core.splatio.\n\n" + (fn.__doc__ or ""))
        globals()[name] = legacy
        return legacy
    if name == "SPLAT_DTYPE":
        from .splatio import SPLAT_DTYPE

        return SPLAT_DTYPE
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
