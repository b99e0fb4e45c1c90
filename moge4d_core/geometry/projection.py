"""World points -> camera pixels along a camera path, and 2D tracks for ComfyUI's ``TRACKS``.

World = first-frame camera (OpenCV axes); ``CameraPath.c2w`` is camera-to-world, so a world point
``X`` is ``R^T (X - t)`` in camera t. Pixel coordinates have pixel centres at +0.5:
``u = fx x / z + cx``. kornia's pinhole helpers expect batched homogeneous matrices per point set;
these two lines of matrix algebra are clearer written out.
"""
from __future__ import annotations

import torch

from ..errors import require
from ..types import CameraPath, Trajectories


def world_to_camera(points: torch.Tensor, c2w: torch.Tensor) -> torch.Tensor:
    """points (T,N,3) or (N,3), c2w (T,4,4) -> camera-frame points (T,N,3)."""
    R = c2w[:, :3, :3].to(points.dtype)
    t = c2w[:, :3, 3].to(points.dtype)
    pts = points if points.ndim == 3 else points.unsqueeze(0)
    return torch.einsum("tji,tnj->tni", R, pts - t[:, None, :])


def project(points: torch.Tensor, camera: CameraPath, near: float = 1e-3):
    """points (T,N,3) or (N,3) in world -> (uv (T,N,2) pixels, z (T,N), in_view (T,N) bool).

    ``in_view`` is True where z > near and the pixel lies inside the image.
    """
    cam = world_to_camera(points, camera.c2w)
    require(cam.shape[0] in (1, camera.num_frames) or camera.num_frames == 1,
            f"project: {cam.shape[0]} point frames vs {camera.num_frames} cameras; the counts must match")
    K = camera.K.to(cam.dtype)
    z = cam[..., 2]
    safe_z = torch.where(z.abs() > 1e-12, z, torch.full_like(z, 1e-12))
    u = K[:, None, 0, 0] * cam[..., 0] / safe_z + K[:, None, 0, 2]
    v = K[:, None, 1, 1] * cam[..., 1] / safe_z + K[:, None, 1, 2]
    uv = torch.stack([u, v], -1)
    in_view = (z > near) & (u >= 0) & (u < camera.width) & (v >= 0) & (v < camera.height)
    return uv, z, in_view


def grid_track_indices(height: int, width: int, num_tracks: int) -> torch.Tensor:
    """Indices of about ``num_tracks`` points on an even sub-grid of a row-major height x width grid."""
    require(num_tracks >= 1, f"num_tracks must be >= 1, got {num_tracks}")
    aspect = width / height
    rows = max(1, min(height, round((num_tracks / aspect) ** 0.5)))
    cols = max(1, min(width, round(num_tracks / rows)))
    ys = ((torch.arange(rows) + 0.5) * height / rows).long().clamp_max(height - 1)
    xs = ((torch.arange(cols) + 0.5) * width / cols).long().clamp_max(width - 1)
    return (ys[:, None] * width + xs[None, :]).reshape(-1)


def trajectories_to_tracks(traj: Trajectories, camera: CameraPath, num_tracks: int = 256):
    """2D pixel tracks of a sub-grid of points seen along ``camera``.

    Returns ``(track_path (T,M,2) float32 pixels x,y, track_visibility (T,M) bool)``, the layout of
    ComfyUI's ``TRACKS`` (WanMove). Visibility: in front of the camera, inside the image, and visible
    in the source trajectories when they carry visibility.
    """
    idx = grid_track_indices(traj.height, traj.width, num_tracks)
    uv, _, in_view = project(traj.points[:, idx], camera)
    vis = in_view
    if traj.visibility is not None:
        vis = vis & traj.visibility[:, idx].to(torch.bool)
    return uv.float(), vis
