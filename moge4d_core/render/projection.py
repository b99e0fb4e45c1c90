"""Input checks and camera maths shared by the point and Gaussian renderers.

Conventions: OpenCV camera axes (x right, y down, z forward); world = first-frame camera; poses are
camera-to-world ``c2w (T,4,4)``; intrinsics ``K (T,3,3)`` in pixels with pixel centres at integer + 0.5,
so a camera-space point ``(x, y, z)`` projects to ``u = fx*x/z + skew*y/z + cx``, ``v = fy*y/z + cy``
and lies in the pixel ``(row, col) = (floor(v), floor(u))``.

Frames: frame ``t`` of the points is seen by camera ``t``. Either side may have a single frame, which is
then shared by all frames of the other; otherwise both must have the same number of frames.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from ..errors import MoGe4DInputError, require
from ..types import CameraPath


def world_to_camera(c2w: torch.Tensor) -> torch.Tensor:
    """Camera-to-world ``(T,4,4)`` -> world-to-camera ``(T,4,4)``, inverted in float64 (float64 out)."""
    return torch.linalg.inv(c2w.to(torch.float64))


@dataclass
class FrameSetup:
    """Validated render inputs on one device.

    points (Tp,N,3) float32 world; colors (N,3) float32; w2c (Tc,4,4) float32; K (Tc,3,3) float32;
    point_mask (Tm,N) bool or None; frames T = max(Tp, Tc); height, width of the camera image.
    """

    points: torch.Tensor
    colors: torch.Tensor
    w2c: torch.Tensor
    K: torch.Tensor
    point_mask: Optional[torch.Tensor]
    frames: int
    height: int
    width: int

    def points_at(self, t0: int, t1: int) -> torch.Tensor:
        """Points of frames [t0, t1): ``(1,N,3)`` when shared, else ``(t1-t0,N,3)``."""
        return self.points if self.points.shape[0] == 1 else self.points[t0:t1]

    def cameras_at(self, t0: int, t1: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(w2c, K)`` of frames [t0, t1), each ``(t1-t0, ...)`` (a shared camera is repeated)."""
        if self.w2c.shape[0] == 1:
            n = t1 - t0
            return self.w2c.expand(n, 4, 4), self.K.expand(n, 3, 3)
        return self.w2c[t0:t1], self.K[t0:t1]

    def mask_at(self, t0: int, t1: int) -> Optional[torch.Tensor]:
        if self.point_mask is None or self.point_mask.shape[0] == 1:
            return self.point_mask
        return self.point_mask[t0:t1]


def broadcast_frames(n_points: int, n_cameras: int, what: str = "points") -> int:
    """Number of rendered frames for ``n_points`` point frames and ``n_cameras`` cameras."""
    if n_points == n_cameras or n_cameras == 1:
        return n_points
    if n_points == 1:
        return n_cameras
    raise MoGe4DInputError(
        f"render: {what} have {n_points} frames but the camera path has {n_cameras} cameras; they must match "
        "(or one of them must have a single frame, which is then used for every frame). "
        "Make the camera path with the same number of frames as the trajectories.")


def prepare_frames(points: torch.Tensor, colors: torch.Tensor, camera: CameraPath,
                   point_mask: Optional[torch.Tensor] = None) -> FrameSetup:
    """Check and convert render inputs (see :class:`FrameSetup`); everything ends on ``points.device``.

    points (T,N,3) or (N,3); colors (N,3) float in [0,1]; point_mask (T,N) or (N,) bool or None.
    """
    if not isinstance(camera, CameraPath):
        raise MoGe4DInputError(f"render: camera must be a CameraPath, got {type(camera).__name__}")
    if not isinstance(points, torch.Tensor):
        raise MoGe4DInputError(f"render: points must be a torch.Tensor (T,N,3) or (N,3), got {type(points).__name__}")
    if points.ndim == 2:
        points = points[None]
    require(points.ndim == 3 and points.shape[-1] == 3 and points.shape[1] >= 1 and points.shape[0] >= 1,
            f"render: points must have shape (T,N,3) or (N,3) with N >= 1, got {tuple(points.shape)}")
    require(points.is_floating_point(), f"render: points must be a float tensor, got {points.dtype}")
    n = points.shape[1]
    require(n < 2 ** 31, f"render: at most 2**31-1 points per frame are supported, got {n}")
    if not isinstance(colors, torch.Tensor) or colors.shape != (n, 3):
        got = tuple(colors.shape) if isinstance(colors, torch.Tensor) else type(colors).__name__
        raise MoGe4DInputError(f"render: colors must be a tensor of shape (N,3) = ({n},3) matching points, got {got}")
    require(colors.is_floating_point(),
            f"render: colors must be float in [0,1], got dtype {colors.dtype}; divide 8-bit colours by 255")
    device = points.device
    points = points.to(torch.float32)
    # min and max propagate NaN and show +-inf: one pass, no temporaries (isfinite().all() is 25x slower)
    require(bool(torch.isfinite(torch.stack(torch.aminmax(points))).all()),
            "render: points contain NaN or inf; drop or mask those points (point_mask) before rendering")
    frames = broadcast_frames(points.shape[0], camera.num_frames)
    h, w = int(camera.height), int(camera.width)
    require((h + 2) * (w + 2) <= 2 ** 24,
            f"render: image {w}x{h} is too large (at most about 4094x4094 pixels are supported)")
    w2c = world_to_camera(camera.c2w.to(device)).to(torch.float32).contiguous()
    K = camera.K.to(device=device, dtype=torch.float32).contiguous()
    mask = None
    if point_mask is not None:
        if not isinstance(point_mask, torch.Tensor):
            raise MoGe4DInputError("render: point_mask must be a bool tensor (T,N) or (N,)")
        if point_mask.ndim == 1:
            point_mask = point_mask[None]
        require(point_mask.ndim == 2 and point_mask.shape[1] == n and point_mask.shape[0] in (1, frames),
                f"render: point_mask must have shape ({frames},{n}) or ({n},), got {tuple(point_mask.shape)}")
        mask = point_mask.to(device=device, dtype=torch.bool).contiguous()
    return FrameSetup(points=points.contiguous(), colors=colors.to(device=device, dtype=torch.float32).contiguous(),
                      w2c=w2c, K=K, point_mask=mask, frames=frames, height=h, width=w)


def check_background(background: Sequence[float]) -> tuple[float, float, float]:
    """A background colour: three floats (RGB in [0,1])."""
    try:
        bg = tuple(float(b) for b in background)
    except TypeError:
        bg = ()
    require(len(bg) == 3, f"render: background must be three numbers (R, G, B) in [0,1], got {background!r}")
    return bg  # type: ignore[return-value]
