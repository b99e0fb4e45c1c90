"""Helpers shared by the USD and glTF writers: the Y-up world, point subsampling, colours, splat widths.

Both formats use the same world: the first-frame OpenCV camera (x right, y down, z forward) turned half a turn
about its x axis, i.e. ``(x, y, z) -> (x, -y, -z)``: x right, **+Y up**, +Z towards the viewer, right-handed, in
metres. The first-frame camera then sits at the origin looking down -Z with +Y up, which is exactly the rest pose
of a USD / glTF camera.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from ..errors import MoGe4DInputError
from ..types import Trajectories

#: OpenCV world (first-frame camera) -> Y-up world, and OpenCV camera frame -> USD / glTF camera frame.
FLIP_YZ = np.diag([1.0, -1.0, -1.0, 1.0])


def grid_subsample(traj: Trajectories, max_points: Optional[int]) -> tuple[np.ndarray, int]:
    """Indices of an even sub-grid of the scene's pixel grid with at most ``max_points`` points.

    Args:
        traj: the scene (points one per pixel of a ``height`` x ``width`` grid, row-major).
        max_points: the budget; None or 0 keeps every point.

    Returns:
        ``(index (M,) int64 into N, stride)``: every ``stride``-th row and column, M <= max_points.
    """
    n = traj.num_points
    if max_points is None or max_points == 0 or max_points >= n:
        return np.arange(n, dtype=np.int64), 1
    if isinstance(max_points, bool) or int(max_points) != max_points or max_points < 1:
        raise MoGe4DInputError(f"max_points: expected a whole number >= 1 (or 0 for all points), got {max_points!r}")
    h, w = traj.height, traj.width
    stride = max(1, int(math.ceil(math.sqrt(n / max_points))))
    while math.ceil(h / stride) * math.ceil(w / stride) > max_points:
        stride += 1
    rows = np.arange(0, h, stride)
    cols = np.arange(0, w, stride)
    return (rows[:, None] * w + cols[None, :]).reshape(-1).astype(np.int64), stride


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0, 1] -> linear light (IEC 61966-2-1), float64."""
    c = np.clip(np.asarray(c, dtype=np.float64), 0.0, 1.0)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    """Inverse of :func:`srgb_to_linear`, float64."""
    c = np.clip(np.asarray(c, dtype=np.float64), 0.0, 1.0)
    return np.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1.0 / 2.4) - 0.055)


def focal_px(traj: Trajectories) -> float:
    """Horizontal focal length in pixels of the scene's grid: ``traj.K`` when known, else a 60 degree field of view."""
    if traj.K is not None and float(traj.K[0, 0]) > 0:
        return float(traj.K[0, 0])
    return traj.width / (2.0 * math.tan(math.radians(30.0)))


def points_yup(traj: Trajectories, index: np.ndarray) -> np.ndarray:
    """(T,M,3) float32 points of ``index`` in the Y-up world (``(x, -y, -z)``; a sign flip, so exact)."""
    p = traj.points.detach().to("cpu", torch.float32).numpy()[:, index]
    return p * np.array([1.0, -1.0, -1.0], dtype=np.float32)
