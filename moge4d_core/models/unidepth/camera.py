"""Pixel-centre rays and intrinsics helpers shared by the UniDepth models.

Conventions (OpenCV): x right, y down, z forward. Pixel ``(row i, col j)`` of an ``H x W`` image is sampled at its
centre ``(u, v) = (j + 0.5, i + 0.5)``; rays are ``K⁻¹ [u, v, 1]ᵀ``. These few lines are written here rather
than taken from kornia because kornia's grids sample integer pixel coordinates and UniDepth normalises rays with
its own clamps, which are reproduced below.
"""
from __future__ import annotations

import torch


def intrinsics_matrix(fx: torch.Tensor, fy: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor) -> torch.Tensor:
    """Batched pixel K ``(B, 3, 3)`` from ``(B,)`` tensors of focal lengths and principal point, in pixels."""
    K = torch.zeros(fx.shape[0], 3, 3, dtype=fx.dtype, device=fx.device)
    K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = fx, fy, cx, cy, 1.0
    return K


def pixel_rays(K: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Un-normalised rays ``K⁻¹ [u+0.5, v+0.5, 1]`` → ``(B, H, W, 3)`` with z = 1 (float32 or K's dtype).

    Args:
        K: pixel intrinsics ``(B, 3, 3)``.
        height, width: the image size ``H x W`` in pixels.

    Returns:
        ``(B, H, W, 3)`` rays with z = 1 (multiply by a z-depth to get camera-frame points), float64 when ``K`` is
        float64, else float32, on ``K``'s device.
    """
    dtype = K.dtype if K.dtype in (torch.float32, torch.float64) else torch.float32
    K = K.to(dtype)
    u = torch.arange(width, dtype=dtype, device=K.device) + 0.5
    v = torch.arange(height, dtype=dtype, device=K.device) + 0.5
    fx, fy, cx, cy = (K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2])
    x = (u[None, None, :] - cx[:, None, None]) / fx[:, None, None]
    y = (v[None, :, None] - cy[:, None, None]) / fy[:, None, None]
    x, y = torch.broadcast_tensors(x, y)
    return torch.stack([x, y, torch.ones_like(x)], dim=-1)


def unit_rays(K: torch.Tensor, height: int, width: int, eps: float = 1e-5) -> torch.Tensor:
    """Unit-length pixel-centre rays ``(B, H, W, 3)`` (norm clamped at ``eps`` as in UniDepth).

    Args:
        K: pixel intrinsics ``(B, 3, 3)``.
        height, width: the image size in pixels.
        eps: lower clamp of the ray norm.

    Returns:
        ``(B, H, W, 3)`` unit rays (dtype as :func:`pixel_rays`).
    """
    r = pixel_rays(K, height, width)
    return r / r.norm(dim=-1, keepdim=True).clamp(min=eps)


def scale_intrinsics(K: torch.Tensor, factor: float) -> torch.Tensor:
    """``fx, fy, cx, cy`` multiplied by one scalar factor (resize of the image by ``factor``).

    Args:
        K: pixel intrinsics ``(B, 3, 3)`` (not changed).
        factor: new size / old size.

    Returns:
        a scaled copy ``(B, 3, 3)``.
    """
    K = K.clone()
    K[:, :2, :] = K[:, :2, :] * factor
    return K
