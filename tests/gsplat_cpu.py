"""Run gsplat 1.5.3's own ``rasterization()`` on CPU: its CUDA kernels replaced by its pure-PyTorch twins.

``gsplat.rendering.rasterization`` (the real function, our backend calls it unchanged) calls four CUDA wrappers.
Three have PyTorch reference implementations in ``gsplat/cuda/_torch_impl.py`` and are substituted by them:

* ``fully_fused_projection``  -> ``_quat_scale_to_covar_preci`` + ``_fully_fused_projection`` (world-to-camera,
  pinhole/ortho Jacobians with gsplat's FOV clamp, +eps2d blur, conics, depths, 3.33σ radii, near/far culling;
  ``calc_compensations`` for the antialiased mode);
* ``isect_tiles``             -> ``_isect_tiles`` (Gaussian/tile intersections, sorted by tile then depth);
* ``isect_offset_encode``     -> ``_isect_offset_encode`` (per-tile list offsets).

The fourth cannot be substituted: gsplat's twin ``_rasterize_to_pixels`` itself calls
``rasterize_to_indices_in_range`` (a CUDA kernel without a PyTorch twin) and nerfacc's CUDA scans. It is replaced by
:func:`composite_tiles` below, our literal transcription of the documented per-pixel rule of gsplat's
``RasterizeToPixels3DGSFwd.cu`` (fixtures/render/README.md §2.7): walk the tile's list front to back,
α = min(0.999, o·exp(-σ)), skip α < 1/255 (and σ < 0), stop before the Gaussian whose next T would be ≤ 1e-4,
rgb = Σ w c + T·background. Written with differentiable tensor ops, so autograd gives the gradients.
"""
from __future__ import annotations

import torch
from torch import Tensor


def fully_fused_projection(means, covars, quats, scales, viewmats, Ks, width, height, eps2d=0.3, packed=False,
                           near_plane=0.01, far_plane=1e10, radius_clip=0.0, sparse_grad=False,
                           calc_compensations=False, camera_model="pinhole", opacities=None):
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci

    assert not packed and radius_clip == 0.0, "only the unpacked path is substituted (our backend's)"
    if covars is None:
        covars, _ = _quat_scale_to_covar_preci(quats, scales, True, False, triu=False)
    return _fully_fused_projection(means, covars, viewmats, Ks, width, height, eps2d=eps2d, near_plane=near_plane,
                                   far_plane=far_plane, calc_compensations=calc_compensations,
                                   camera_model=camera_model)


def isect_tiles(means2d, radii, depths, tile_size, tile_width, tile_height, sort=True, segmented=False,
                packed=False, n_images=None, image_ids=None, gaussian_ids=None):
    from gsplat.cuda._torch_impl import _isect_tiles

    assert not packed
    return _isect_tiles(means2d, radii, depths, tile_size, tile_width, tile_height, sort=sort)


def isect_offset_encode(isect_ids, n_images, tile_width, tile_height):
    from gsplat.cuda._torch_impl import _isect_offset_encode

    return _isect_offset_encode(isect_ids, n_images, tile_width, tile_height)


def composite_tiles(means2d: Tensor, conics: Tensor, colors: Tensor, opacities: Tensor, image_width: int,
                    image_height: int, tile_size: int, isect_offsets: Tensor, flatten_ids: Tensor,
                    backgrounds: Tensor | None = None, packed: bool = False, absgrad: bool = False):
    """Stand-in for ``rasterize_to_pixels`` (unpacked): means2d [C,N,2], conics [C,N,3], colors [C,N,D],
    opacities [C,N], isect_offsets [C,th,tw], flatten_ids [n_isects] (= image·N + gaussian) -> ([C,H,W,D],
    [C,H,W,1])."""
    assert not packed
    C, N = means2d.shape[:2]
    D = colors.shape[-1]
    th, tw = isect_offsets.shape[-2:]
    flat_off = torch.cat([isect_offsets.reshape(-1), torch.tensor([flatten_ids.numel()])]).tolist()
    rows = []
    for c in range(C):
        img = means2d.new_zeros(image_height, image_width, D)
        alpha = means2d.new_zeros(image_height, image_width, 1)
        tiles_c, tiles_a = {}, {}
        for ty in range(th):
            for tx in range(tw):
                t = (c * th + ty) * tw + tx
                ids = flatten_ids[flat_off[t]:flat_off[t + 1]].long() - c * N  # depth order
                y0, x0 = ty * tile_size, tx * tile_size
                y1, x1 = min(y0 + tile_size, image_height), min(x0 + tile_size, image_width)
                yy, xx = torch.meshgrid(torch.arange(y0, y1), torch.arange(x0, x1), indexing="ij")
                px = torch.stack([xx.reshape(-1), yy.reshape(-1)], -1).to(means2d.dtype) + 0.5  # [P,2]
                bg = backgrounds[c] if backgrounds is not None else means2d.new_zeros(D)
                if ids.numel() == 0:
                    tiles_c[(ty, tx)] = bg.expand(px.shape[0], D)
                    tiles_a[(ty, tx)] = means2d.new_zeros(px.shape[0], 1)
                    continue
                d = px[:, None, :] - means2d[c, ids][None]  # [P,K,2]
                A, B, Cc = conics[c, ids].unbind(-1)
                sigma = 0.5 * (A * d[..., 0] ** 2 + Cc * d[..., 1] ** 2) + B * d[..., 0] * d[..., 1]
                a = torch.clamp_max(opacities[c, ids] * torch.exp(-sigma), 0.999)
                a = torch.where((a < 1.0 / 255.0) | (sigma < 0), torch.zeros_like(a), a)
                one_minus = 1 - a
                T_excl = torch.cumprod(torch.cat([one_minus.new_ones(px.shape[0], 1), one_minus[:, :-1]], 1), 1)
                stop = (a > 0) & (T_excl * one_minus <= 1e-4)
                alive = (torch.cumsum(stop.int(), 1) == 0).to(a.dtype)
                w = a * T_excl * alive  # [P,K]
                T_final = torch.prod(torch.where(alive > 0, one_minus, torch.ones_like(one_minus)), 1)
                tiles_c[(ty, tx)] = w @ colors[c, ids] + T_final[:, None] * bg
                tiles_a[(ty, tx)] = (1 - T_final)[:, None]
        # assemble the image from its tiles (autograd-friendly: no in-place writes into leaves)
        img = torch.cat([torch.cat([tiles_c[(ty, tx)].reshape(min(tile_size, image_height - ty * tile_size), -1, D)
                                    for tx in range(tw)], 1) for ty in range(th)], 0)
        alpha = torch.cat([torch.cat([tiles_a[(ty, tx)].reshape(min(tile_size, image_height - ty * tile_size), -1, 1)
                                      for tx in range(tw)], 1) for ty in range(th)], 0)
        rows.append((img, alpha))
    return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])


def substitute(monkeypatch) -> None:
    """Patch gsplat's CUDA entry points (as ``gsplat.rendering`` sees them) and let our gsplat backend run on CPU."""
    import gsplat.rendering as R

    from mvboost_core.render import gsplat_backend

    monkeypatch.setattr(R, "fully_fused_projection", fully_fused_projection)
    monkeypatch.setattr(R, "isect_tiles", isect_tiles)
    monkeypatch.setattr(R, "isect_offset_encode", isect_offset_encode)
    monkeypatch.setattr(R, "rasterize_to_pixels", composite_tiles)
    ok = (True, "gsplat 1.5.3 with PyTorch twins of its CUDA kernels (tests)")
    monkeypatch.setattr(gsplat_backend, "_probe", lambda: ok)
    monkeypatch.setattr(gsplat_backend, "gsplat_available", lambda device=None: ok)
