"""Back-projection of depth maps to camera-frame points.

Two pixel conventions are supported:

* ``backproject_depth`` (default everywhere): pixel (row i, col j) is sampled at its centre
  ``(u, v) = (j + 0.5, i + 0.5)`` in pixels, ``X = (u - cx) z / fx``, ``Y = (v - cy) z / fy``, ``Z = z``
  with a pixel K. Implemented with kornia's ``depth_to_3d_v2`` (which samples at integer pixel
  coordinates), by shifting the principal point half a pixel.
* ``backproject_official``: the released MoGe4D inference (reference B): ``u = linspace(0, 1, W)``,
  ``v = linspace(0, 1, H)`` (end points, not pixel centres) with normalised pseudo-intrinsics
  ``X = (u - 0.5) z / fx``, ``Y = (v - 0.5) z / fy``. Used by the compat mode only.

OpenCV camera axes: x right, y down, z forward. Output points are (..., H, W, 3).
"""
from __future__ import annotations

import torch
from kornia.geometry.depth import depth_to_3d_v2

from ..errors import MoGe4DInputError


def _check(depth: torch.Tensor, name: str = "depth") -> None:
    if not isinstance(depth, torch.Tensor) or depth.ndim < 2:
        raise MoGe4DInputError(f"{name}: expected a tensor (..., H, W), got "
                               f"{getattr(depth, 'shape', type(depth).__name__)}")
    if depth.shape[-1] < 1 or depth.shape[-2] < 1:
        raise MoGe4DInputError(f"{name}: empty depth map {tuple(depth.shape)}")


def backproject_depth(depth: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Depth (..., H, W) + pixel K (..., 3, 3) -> points (..., H, W, 3), pixel centres at +0.5."""
    _check(depth)
    if K.shape[-2:] != (3, 3):
        raise MoGe4DInputError(f"K: expected (..., 3, 3), got {tuple(K.shape)}")
    batch = depth.shape[:-2]
    h, w = depth.shape[-2:]
    d = depth.reshape(-1, h, w)
    Kb = K.to(depth.dtype).expand(*batch, 3, 3).reshape(-1, 3, 3).clone()
    Kb[:, 0, 2] -= 0.5
    Kb[:, 1, 2] -= 0.5
    pts = depth_to_3d_v2(d, Kb)
    return pts.reshape(*batch, h, w, 3)


def backproject_official(depth: torch.Tensor, fx: float, fy: float) -> torch.Tensor:
    """Official inference back-projection: depth (..., H, W), normalised focal (fx, fy) -> (..., H, W, 3)."""
    _check(depth)
    h, w = depth.shape[-2:]
    u = torch.linspace(0, 1, w, dtype=depth.dtype, device=depth.device)
    v = torch.linspace(0, 1, h, dtype=depth.dtype, device=depth.device)
    x = (u - 0.5)[None, :] * depth / fx
    y = (v - 0.5)[:, None] * depth / fy
    return torch.stack([x, y, depth], dim=-1)
