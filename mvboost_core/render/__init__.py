"""Differentiable 3D Gaussian rendering (3DGS 'classic' semantics, ``fixtures/render/README.md``).

``render(gaussians, cameras, background=(1,1,1), backend="auto") -> RenderOutput(rgb, alpha, depth)``;
``rasterize(...)`` is the same on raw tensors. The gsplat backend is imported lazily and only used with CUDA.
"""
from .api import BACKENDS, RenderOptions, RenderOutput, rasterize, render, select_backend

__all__ = ["render", "rasterize", "RenderOutput", "RenderOptions", "select_backend", "BACKENDS"]
