"""Per-Gaussian, per-camera projection (3DGS 'classic' EWA splatting), plain differentiable PyTorch.

Semantics follow ``fixtures/render/README.md`` §2.2 exactly:

* quaternions ``(w,x,y,z)`` are normalised, R(q) diag(s)^2 R(q)^T is the 3D covariance;
* ``p_cam = R_v p + t_v`` with ``viewmats`` world-to-camera in OpenCV axes (only the top 3x4 block is used);
* a Gaussian is dropped from a camera iff ``z <= near`` (no other culling here);
* perspective: ``u = fx x/z + cx``, Jacobian with gsplat's FOV clamp limits (the clamp enters only J);
  orthographic: ``u = fx x + cx``, constant Jacobian;
* ``Sigma' = J Sigma_c J^T + eps2d I`` (eps2d = 0.3, no opacity compensation), conic = inverse of Sigma'.

Everything here is O(V·N) and differentiated by autograd (means, quats, scales, viewmats and, if they require
grad, Ks).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Projected", "project", "quat_to_rotmat"]


@dataclass
class Projected:
    """Projected Gaussians for ``V`` cameras (all ``[V,N,...]``, same dtype as the inputs).

    means2d ``[V,N,2]`` pixel coordinates (u, v); cov2d ``[V,N,3]`` (a, b, c) of Sigma' including eps2d;
    conic ``[V,N,3]`` (A, B, C); depth ``[V,N]`` camera z (also for culled ones); valid ``[V,N]`` bool z > near.
    For culled entries means2d/cov2d/conic hold harmless finite placeholders (never NaN), so gradients stay clean.
    """

    means2d: Tensor
    cov2d: Tensor
    conic: Tensor
    depth: Tensor
    valid: Tensor


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """``[N,4]`` (w,x,y,z), any non-zero norm -> ``[N,3,3]`` rotation matrices (normalises first)."""
    q = quats / quats.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(q.shape[:-1] + (3, 3))


def project(
    means: Tensor,  # [N,3]
    quats: Tensor,  # [N,4] wxyz
    scales: Tensor,  # [N,3] linear
    viewmats: Tensor,  # [V,4,4] world-to-camera, OpenCV
    Ks: Tensor,  # [V,3,3]
    width: int,
    height: int,
    projection: str = "perspective",
    near: float = 0.01,
    eps2d: float = 0.3,
) -> Projected:
    """Project ``N`` Gaussians into ``V`` cameras (see module docstring for the exact rules)."""
    R = quat_to_rotmat(quats)  # [N,3,3]
    M = R * scales[:, None, :]  # R diag(s): columns scaled
    Rv = viewmats[:, :3, :3]  # [V,3,3]
    tv = viewmats[:, :3, 3]  # [V,3]
    p = torch.einsum("vij,nj->vni", Rv, means) + tv[:, None, :]  # [V,N,3]
    Mc = torch.einsum("vij,njk->vnik", Rv, M)  # [V,N,3,3]: Sigma_c = Mc Mc^T
    x, y, z = p.unbind(-1)
    valid = z > near
    fx = Ks[:, 0, 0][:, None]
    fy = Ks[:, 1, 1][:, None]
    cx = Ks[:, 0, 2][:, None]
    cy = Ks[:, 1, 2][:, None]
    zeros = torch.zeros_like(z)
    if projection == "perspective":
        zs = torch.where(valid, z, torch.ones_like(z))  # safe divisor for culled entries
        xz, yz = x / zs, y / zs
        u = fx * xz + cx
        v = fy * yz + cy
        lim_x_pos = (width - cx) / fx + 0.3 * width / (2 * fx)
        lim_x_neg = cx / fx + 0.3 * width / (2 * fx)
        lim_y_pos = (height - cy) / fy + 0.3 * height / (2 * fy)
        lim_y_neg = cy / fy + 0.3 * height / (2 * fy)
        tx = zs * torch.minimum(torch.maximum(xz, -lim_x_neg), lim_x_pos)
        ty = zs * torch.minimum(torch.maximum(yz, -lim_y_neg), lim_y_pos)
        J = torch.stack(
            [fx / zs, zeros, -fx * tx / (zs * zs), zeros, fy / zs, -fy * ty / (zs * zs)], dim=-1
        ).reshape(z.shape + (2, 3))
    elif projection == "orthographic":
        u = fx * x + cx
        v = fy * y + cy
        ones = torch.ones_like(z)
        J = torch.stack([fx * ones, zeros, zeros, zeros, fy * ones, zeros], dim=-1).reshape(z.shape + (2, 3))
    else:
        raise ValueError(f"projection must be 'perspective' or 'orthographic', got {projection!r}")
    JM = J @ Mc  # [V,N,2,3]
    cov = JM @ JM.transpose(-1, -2)  # [V,N,2,2]
    a = cov[..., 0, 0] + eps2d
    b = cov[..., 0, 1]
    c = cov[..., 1, 1] + eps2d
    det = a * c - b * b
    det = torch.where(valid & (det > 0), det, torch.ones_like(det))
    conic = torch.stack([c / det, -b / det, a / det], dim=-1)
    means2d = torch.stack([u, v], dim=-1)
    return Projected(
        means2d=means2d,
        cov2d=torch.stack([a, b, c], dim=-1),
        conic=conic,
        depth=z,
        valid=valid,
    )
