"""Cameras: one dataclass for every camera set in the pipeline.

Conventions (see DESIGN.md, "Types that cross boundaries"):

* ``c2w`` ``[V,4,4]`` camera-to-world in **OpenCV** axes: x right, y down, z forward (the axes gsplat and our
  rasterizer use). Convert explicitly with :meth:`Cameras.to_opengl` / :meth:`Cameras.from_opengl`; never flip
  signs inline elsewhere.
* Intrinsics ``fx, fy, cx, cy`` are ``[V]`` tensors in pixels. Pixel (row i, column j) has its centre at
  ``(j + 0.5, i + 0.5)``.
* ``projection`` is ``"perspective"`` (u = fx·x/z + cx) or ``"orthographic"`` (u = fx·x + cx, fx in pixels per
  world unit).

World frames used in this project:

* **LGM world** (kiui ``orbit_camera``): y up; azimuth 0 puts the camera on +z, azimuth 90 on +x; a *negative*
  elevation puts the camera above the object. Every ``Cameras`` built here lives in this frame unless a docstring
  says otherwise; Gaussians produced by LGM are in it too.
* **Era3D / Blender world**: z up, the object's front faces -y. :func:`blender_to_lgm` maps it to the LGM world:
  ``(x, y, z)_blender -> (x, z, -y)_lgm`` (a proper rotation, det +1); this is also what LGM's own Objaverse
  loader does to Blender poses.

All constructors compute in float64 and return ``dtype`` (default float32) tensors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import torch
from torch import Tensor

__all__ = [
    "Cameras",
    "orbit_c2w_opengl",
    "opengl_to_opencv",
    "opencv_to_opengl",
    "blender_to_lgm",
    "ERA3D_VIEWS",
    "ERA3D_AZIMUTHS",
    "LGM_AZIMUTHS",
    "LGM_FOVY",
    "LGM_RADIUS",
]

LGM_FOVY = 49.1  # degrees, LGM core/options.py
LGM_RADIUS = 1.5  # LGM cam_radius
LGM_AZIMUTHS = (0.0, 90.0, 180.0, 270.0)
ERA3D_VIEWS = ("front", "front_right", "right", "back", "left", "front_left")
ERA3D_AZIMUTHS = (0.0, 45.0, 90.0, 180.0, 270.0, 315.0)  # offsets from the input view, towards the viewer's right

# OpenCV <-> OpenGL camera axes differ by negating the camera's y and z axes (columns 1 and 2 of c2w).
_FLIP_YZ = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))


def _as_batch(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        x = torch.as_tensor(x)
    if x.ndim == 2:
        x = x.unsqueeze(0)
    if x.ndim != 3 or x.shape[-2:] != (4, 4):
        raise ValueError(f"{name} must be a [V,4,4] (or [4,4]) matrix, got shape {tuple(x.shape)}")
    return x


def opengl_to_opencv(c2w_gl: Tensor) -> Tensor:
    """``[...,4,4]`` OpenGL camera-to-world -> OpenCV camera-to-world (negate camera y and z axes)."""
    return c2w_gl @ _FLIP_YZ.to(c2w_gl)


def opencv_to_opengl(c2w_cv: Tensor) -> Tensor:
    """``[...,4,4]`` OpenCV camera-to-world -> OpenGL camera-to-world (the same flip; it is an involution)."""
    return c2w_cv @ _FLIP_YZ.to(c2w_cv)


def blender_to_lgm(points_or_c2w: Tensor) -> Tensor:
    """Map Blender/Era3D world coordinates (z up, front = -y) to the LGM world (y up, front = +z).

    Accepts points ``[...,3]`` or camera-to-world matrices ``[...,4,4]`` (the camera axes are untouched, only the
    world frame changes: ``M @ c2w``).
    """
    R = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]], dtype=torch.float64).to(points_or_c2w)
    if points_or_c2w.shape[-2:] == (4, 4):
        M = torch.eye(4, dtype=R.dtype, device=R.device)
        M[:3, :3] = R
        return M @ points_or_c2w
    return points_or_c2w @ R.T


def orbit_c2w_opengl(
    elevation_deg: float | Sequence[float] | Tensor,
    azimuth_deg: float | Sequence[float] | Tensor,
    radius: float | Tensor = LGM_RADIUS,
    target: Sequence[float] = (0.0, 0.0, 0.0),
) -> Tensor:
    """kiui ``orbit_camera`` (OpenGL camera-to-world), batched, float64: ``[V,4,4]``.

    campos = target + r·(cos e·sin a, -sin e, cos e·cos a); columns = [right, up, back(=campos-target), campos].
    Negative elevation = camera above the object (kiui's sign). Differentiable w.r.t. tensor inputs.
    """
    e = torch.deg2rad(torch.as_tensor(elevation_deg, dtype=torch.float64)).reshape(-1)
    a = torch.deg2rad(torch.as_tensor(azimuth_deg, dtype=torch.float64)).reshape(-1)
    e, a = torch.broadcast_tensors(e, a)
    r = torch.as_tensor(radius, dtype=torch.float64)
    tgt = torch.as_tensor(target, dtype=torch.float64)
    campos = torch.stack([r * e.cos() * a.sin(), -r * e.sin(), r * e.cos() * a.cos()], -1) + tgt
    forward = campos - tgt
    forward = forward / forward.norm(dim=-1, keepdim=True).clamp_min(1e-20)
    up = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64).expand_as(forward)
    right = torch.linalg.cross(up, forward, dim=-1)
    right = right / right.norm(dim=-1, keepdim=True).clamp_min(1e-20)
    up = torch.linalg.cross(forward, right, dim=-1)
    up = up / up.norm(dim=-1, keepdim=True).clamp_min(1e-20)
    c2w = torch.zeros(campos.shape[0], 4, 4, dtype=torch.float64)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = up
    c2w[:, :3, 2] = forward
    c2w[:, :3, 3] = campos
    c2w[:, 3, 3] = 1.0
    return c2w


def _focal_from_fovy(height: int, fovy_deg: float) -> float:
    return 0.5 * height / math.tan(0.5 * math.radians(fovy_deg))


@dataclass
class Cameras:
    """A set of ``V`` cameras sharing one image size and projection.

    Attributes:
        c2w: ``[V,4,4]`` camera-to-world, OpenCV axes (x right, y down, z forward). May require grad.
        fx, fy, cx, cy: ``[V]`` intrinsics in pixels (orthographic: fx, fy in pixels per world unit).
        width, height: image size in pixels (> 0).
        projection: ``"perspective"`` or ``"orthographic"``.
    """

    c2w: Tensor
    fx: Tensor
    fy: Tensor
    cx: Tensor
    cy: Tensor
    width: int
    height: int
    projection: str = "perspective"

    def __post_init__(self) -> None:
        self.c2w = _as_batch(self.c2w, "c2w")
        V = self.c2w.shape[0]
        for name in ("fx", "fy", "cx", "cy"):
            v = getattr(self, name)
            v = torch.as_tensor(v, dtype=self.c2w.dtype, device=self.c2w.device).reshape(-1)
            if v.numel() == 1 and V > 1:
                v = v.expand(V).clone()
            if v.shape != (V,):
                raise ValueError(f"Cameras.{name} must have one value per camera ({V}), got shape {tuple(v.shape)}")
            setattr(self, name, v)
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise ValueError(
                f"Camera image size must be positive, got width={self.width}, height={self.height}; "
                "pass a resolution of at least 1x1."
            )
        self.width, self.height = int(self.width), int(self.height)
        if self.projection not in ("perspective", "orthographic"):
            raise ValueError(f"projection must be 'perspective' or 'orthographic', got {self.projection!r}")
        if not torch.isfinite(self.c2w.detach()).all():
            raise ValueError("Camera matrices contain NaN or inf values.")

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return self.c2w.shape[0]

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    @property
    def dtype(self) -> torch.dtype:
        return self.c2w.dtype

    def to(self, device=None, dtype=None) -> "Cameras":
        f = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
        return replace(self, c2w=f(self.c2w), fx=f(self.fx), fy=f(self.fy), cx=f(self.cx), cy=f(self.cy))

    def __getitem__(self, idx) -> "Cameras":
        if isinstance(idx, int):
            idx = slice(idx, idx + 1) if idx != -1 else slice(-1, None)
        return replace(self, c2w=self.c2w[idx], fx=self.fx[idx], fy=self.fy[idx], cx=self.cx[idx], cy=self.cy[idx])

    @staticmethod
    def cat(cams: Sequence["Cameras"]) -> "Cameras":
        first = cams[0]
        for c in cams[1:]:
            if (c.width, c.height, c.projection) != (first.width, first.height, first.projection):
                raise ValueError("Cameras.cat needs the same image size and projection for every set")
        return replace(
            first,
            c2w=torch.cat([c.c2w for c in cams]),
            fx=torch.cat([c.fx for c in cams]),
            fy=torch.cat([c.fy for c in cams]),
            cx=torch.cat([c.cx for c in cams]),
            cy=torch.cat([c.cy for c in cams]),
        )

    def with_c2w(self, c2w: Tensor) -> "Cameras":
        """Same intrinsics, new OpenCV camera-to-world ``[V,4,4]`` (keeps autograd history)."""
        return replace(self, c2w=c2w)

    def resized(self, width: int, height: int) -> "Cameras":
        """Scale the intrinsics to a new image size (same field of view / world extent)."""
        sx, sy = width / self.width, height / self.height
        return replace(self, fx=self.fx * sx, fy=self.fy * sy, cx=self.cx * sx, cy=self.cy * sy,
                       width=width, height=height)

    # ------------------------------------------------------------- matrices
    def viewmats(self) -> Tensor:
        """World-to-camera ``[V,4,4]`` (OpenCV), the exact rigid inverse of ``c2w`` (differentiable)."""
        R = self.c2w[:, :3, :3]
        t = self.c2w[:, :3, 3:]
        Rt = R.transpose(1, 2)
        top = torch.cat([Rt, -Rt @ t], dim=2)
        bottom = torch.zeros_like(self.c2w[:, 3:, :])
        bottom[..., 3] = 1.0
        return torch.cat([top, bottom], dim=1)

    w2c = viewmats

    def Ks(self) -> Tensor:
        """Intrinsic matrices ``[V,3,3]``."""
        K = torch.zeros(len(self), 3, 3, dtype=self.dtype, device=self.device)
        K[:, 0, 0] = self.fx
        K[:, 1, 1] = self.fy
        K[:, 0, 2] = self.cx
        K[:, 1, 2] = self.cy
        K[:, 2, 2] = 1.0
        return K

    def to_opengl(self) -> Tensor:
        """OpenGL camera-to-world ``[V,4,4]`` (x right, y up, camera looks along -z)."""
        return opencv_to_opengl(self.c2w)

    def centers(self) -> Tensor:
        """Camera centres in world coordinates ``[V,3]``."""
        return self.c2w[:, :3, 3]

    @classmethod
    def from_opengl(
        cls,
        c2w_gl: Tensor,
        *,
        width: int,
        height: int,
        fovy_deg: float | None = None,
        fx=None,
        fy=None,
        cx=None,
        cy=None,
        projection: str = "perspective",
    ) -> "Cameras":
        """Build from OpenGL camera-to-world matrices ``[V,4,4]``.

        Give either ``fovy_deg`` (square pixels, centred principal point) or explicit ``fx, fy[, cx, cy]``.
        """
        c2w_gl = _as_batch(c2w_gl, "c2w_gl")
        if fovy_deg is not None:
            f = _focal_from_fovy(height, fovy_deg)
            fx = f if fx is None else fx
            fy = f if fy is None else fy
        if fx is None or fy is None:
            raise ValueError("from_opengl needs fovy_deg or fx and fy")
        cx = width / 2.0 if cx is None else cx
        cy = height / 2.0 if cy is None else cy
        return cls(opengl_to_opencv(c2w_gl), fx, fy, cx, cy, width, height, projection)

    # --------------------------------------------------------- constructors
    @classmethod
    def orbit(
        cls,
        elevations: float | Sequence[float] | Tensor,
        azimuths: float | Sequence[float] | Tensor,
        radius: float = LGM_RADIUS,
        fovy_deg: float = LGM_FOVY,
        width: int = 256,
        height: int | None = None,
        target: Sequence[float] = (0.0, 0.0, 0.0),
        dtype: torch.dtype = torch.float32,
        device=None,
    ) -> "Cameras":
        """Perspective cameras on kiui's orbit (LGM world), reproducing ``orbit_camera(elev, azim, radius)``.

        Focal length ``f = (H/2)/tan(fovy/2)``, principal point at the image centre: the same rays LGM builds.
        """
        height = width if height is None else height
        c2w_gl = orbit_c2w_opengl(elevations, azimuths, radius, target)
        cams = cls.from_opengl(c2w_gl, width=width, height=height, fovy_deg=fovy_deg)
        return cams.to(device=device, dtype=dtype)

    @classmethod
    def lgm_input(cls, size: int = 256, elevation: float = 0.0, dtype=torch.float32, device=None) -> "Cameras":
        """LGM's four input cameras: azimuth 0/90/180/270, radius 1.5, fovy 49.1 degrees."""
        return cls.orbit([elevation] * 4, list(LGM_AZIMUTHS), LGM_RADIUS, LGM_FOVY, size, size,
                         dtype=dtype, device=device)

    @classmethod
    def era3d(
        cls,
        size: int = 512,
        ortho_scale: float = 1.0,
        distance: float = 3.0,
        convention: str = "lgm",
        center: Sequence[float] = (0.0, 0.0, 0.0),
        dtype=torch.float32,
        device=None,
    ) -> "Cameras":
        """Era3D's six orthographic target views (front, front_right, right, back, left, front_left).

        All at elevation 0, looking at ``center`` from ``distance``, image up = world up; the image spans
        ``ortho_scale`` world units, so ``fx = fy = size / ortho_scale`` and the principal point is the centre.

        ``convention="lgm"``: LGM world (y up); view k sits at kiui azimuth ``ERA3D_AZIMUTHS[k]`` (front on +z,
        right on +x). ``convention="blender"``: Era3D's own Blender world (z up); front camera on -y, Blender
        azimuth ``270 + offset`` (right on +x). The two are related by :func:`blender_to_lgm`.
        """
        if convention == "lgm":
            c2w_gl = orbit_c2w_opengl([0.0] * 6, list(ERA3D_AZIMUTHS), distance, center)
        elif convention == "blender":
            az = torch.deg2rad(torch.tensor(ERA3D_AZIMUTHS, dtype=torch.float64) + 270.0)
            ctr = torch.as_tensor(center, dtype=torch.float64)
            campos = torch.stack([distance * az.cos(), distance * az.sin(), torch.zeros_like(az)], -1) + ctr
            back = (campos - ctr) / distance  # OpenGL +z axis points away from the target
            up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand_as(back)
            right = torch.linalg.cross(up, back, dim=-1)
            c2w_gl = torch.zeros(6, 4, 4, dtype=torch.float64)
            c2w_gl[:, :3, 0], c2w_gl[:, :3, 1], c2w_gl[:, :3, 2] = right, up, back
            c2w_gl[:, :3, 3] = campos
            c2w_gl[:, 3, 3] = 1.0
        else:
            raise ValueError(f"convention must be 'lgm' or 'blender', got {convention!r}")
        f = size / ortho_scale
        cams = cls.from_opengl(c2w_gl, width=size, height=size, fx=f, fy=f, projection="orthographic")
        return cams.to(device=device, dtype=dtype)

    # ------------------------------------------------------------------ rays
    def rays(self) -> tuple[Tensor, Tensor]:
        """Per-pixel ray origins and unit directions in world space, each ``[V,H,W,3]``.

        Perspective: origin = camera centre, direction through the pixel centre. Orthographic: parallel rays along
        the camera's +z, origins on the image plane through the camera centre.
        """
        V, H, W = len(self), self.height, self.width
        dt, dev = self.dtype, self.device
        j = torch.arange(W, dtype=dt, device=dev) + 0.5
        i = torch.arange(H, dtype=dt, device=dev) + 0.5
        ii, jj = torch.meshgrid(i, j, indexing="ij")  # [H,W]
        x = (jj[None] - self.cx[:, None, None]) / self.fx[:, None, None]
        y = (ii[None] - self.cy[:, None, None]) / self.fy[:, None, None]
        R = self.c2w[:, :3, :3]
        t = self.c2w[:, :3, 3]
        if self.projection == "perspective":
            d_cam = torch.stack([x, y, torch.ones_like(x)], -1)  # OpenCV camera space
            d = torch.einsum("vij,vhwj->vhwi", R, d_cam)
            d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-20)
            o = t[:, None, None, :].expand_as(d)
        else:
            p_cam = torch.stack([x, y, torch.zeros_like(x)], -1)
            o = torch.einsum("vij,vhwj->vhwi", R, p_cam) + t[:, None, None, :]
            d = R[:, :, 2][:, None, None, :].expand_as(o)
        return o, d

    def plucker_rays(self) -> Tensor:
        """LGM's 6-channel Plücker embedding ``(o × d, d)`` as ``[V,6,H,W]``.

        Computed in float64 and returned in the cameras' dtype; for LGM's orbit cameras it equals the reference
        ``get_rays`` + ``cat([cross(o, d), d])`` to float32 rounding.
        """
        cams = self.to(dtype=torch.float64)
        o, d = cams.rays()
        pl = torch.cat([torch.linalg.cross(o, d, dim=-1), d], dim=-1)
        return pl.permute(0, 3, 1, 2).contiguous().to(self.dtype)
