"""A built-in procedural 4D scene for demos and tests (no downloads).

The scene is ray-cast analytically from a pinhole camera at the origin (OpenCV axes: x right, y down,
z forward), one point per pixel of the first frame, so it has the layout of a TrajScene / DELTA
trajectory file: ``points (T, H*W, 3)`` row-major over the pixel grid, world = first-frame camera.

Content: a textured back wall (z = 8), a checkered floor (y = 1.5, below the camera), and three
spheres with different motions: one orbits sideways (rigid translation), one bounces while spinning
about its vertical axis (rigid rotation + translation), one breathes (non-rigid radial wobble).
Background points are static. Each point moves with the object its first-frame pixel hit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import require
from .geometry.intrinsics import K_from_fov
from .types import Trajectories

WALL_Z = 8.0
FLOOR_Y = 1.5


@dataclass(frozen=True)
class _Sphere:
    centre: tuple[float, float, float]
    radius: float
    color_a: tuple[float, float, float]
    color_b: tuple[float, float, float]


SPHERES = (
    _Sphere((-1.4, 0.6, 5.0), 0.8, (0.90, 0.25, 0.20), (0.98, 0.85, 0.30)),   # orbits sideways
    _Sphere((1.3, 0.8, 4.2), 0.65, (0.20, 0.45, 0.90), (0.95, 0.95, 0.95)),   # bounces and spins
    _Sphere((0.1, 0.2, 6.2), 0.9, (0.25, 0.75, 0.35), (0.10, 0.30, 0.15)),    # breathes (non-rigid)
)


def _rot_y(angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], dtype=torch.float64)


def _ray_cast(dirs: torch.Tensor):
    """dirs (M,3) -> hit distance t (M,), object id (M,) (-2 wall, -1 floor, k sphere k)."""
    inf = torch.full(dirs.shape[:1], float("inf"), dtype=dirs.dtype)
    t_wall = torch.where(dirs[:, 2] > 0, WALL_Z / dirs[:, 2], inf)
    t_floor = torch.where(dirs[:, 1] > 1e-9, FLOOR_Y / dirs[:, 1], inf)
    best_t = torch.minimum(t_wall, t_floor)
    obj = torch.where(t_floor < t_wall, torch.full_like(best_t, -1), torch.full_like(best_t, -2)).long()
    for k, s in enumerate(SPHERES):
        c = torch.tensor(s.centre, dtype=dirs.dtype)
        b = dirs @ c
        disc = b * b - (dirs * dirs).sum(1) * (c @ c - s.radius ** 2)
        t = (b - disc.clamp_min(0).sqrt()) / (dirs * dirs).sum(1)
        hit = (disc > 0) & (t > 0) & (t < best_t)
        best_t = torch.where(hit, t, best_t)
        obj = torch.where(hit, torch.full_like(obj, k), obj)
    return best_t, obj


def _colours(p: torch.Tensor, obj: torch.Tensor) -> torch.Tensor:
    """Procedural textures at first-frame points p (M,3) -> rgb (M,3) in [0,1]."""
    rgb = torch.zeros_like(p)
    wall = obj == -2
    chk = ((torch.floor(p[:, 0] * 1.5) + torch.floor(p[:, 1] * 1.5)) % 2)[:, None]
    grad = ((p[:, 1:2] + 4.0) / 8.0).clamp(0, 1)
    wall_rgb = torch.cat([0.55 + 0.25 * grad, 0.60 + 0.1 * chk, 0.80 - 0.3 * grad], 1) * (0.75 + 0.25 * chk)
    rgb[wall] = wall_rgb[wall]
    floor = obj == -1
    chk_f = ((torch.floor(p[:, 0] * 1.0) + torch.floor(p[:, 2] * 1.0)) % 2)[:, None]
    floor_rgb = torch.cat([0.35 + 0.45 * chk_f, 0.30 + 0.40 * chk_f, 0.25 + 0.30 * chk_f], 1)
    rgb[floor] = floor_rgb[floor]
    for k, s in enumerate(SPHERES):
        m = obj == k
        if not m.any():
            continue
        local = p[m] - torch.tensor(s.centre, dtype=p.dtype)
        stripes = (torch.floor(torch.atan2(local[:, 0], local[:, 2]) / (math.pi / 6)) % 2)[:, None]
        a, b = torch.tensor(s.color_a, dtype=p.dtype), torch.tensor(s.color_b, dtype=p.dtype)
        shade = (0.55 + 0.45 * (-local[:, 1:2] / s.radius + 1) / 2).clamp(0, 1)
        rgb[m] = (a * (1 - stripes) + b * stripes) * shade
    return rgb.clamp(0, 1)


def _move(p0: torch.Tensor, obj: torch.Tensor, phase: float) -> torch.Tensor:
    """Positions at ``phase`` in [0, 1] of the first-frame points p0 (M,3) of each object."""
    p = p0.clone()
    for k, s in enumerate(SPHERES):
        m = obj == k
        if not m.any():
            continue
        c0 = torch.tensor(s.centre, dtype=p0.dtype)
        local = p0[m] - c0
        if k == 0:   # sideways orbit in the xz plane (rigid translation)
            shift = torch.tensor([1.2 * math.sin(2 * math.pi * phase), 0.0,
                                  0.8 * (1 - math.cos(2 * math.pi * phase))], dtype=p0.dtype)
            p[m] = c0 + local + shift
        elif k == 1:  # bounce with spin about the vertical axis (rigid motion)
            lift = torch.tensor([0.0, -0.9 * abs(math.sin(2 * math.pi * phase)), 0.0], dtype=p0.dtype)
            p[m] = c0 + lift + local @ _rot_y(2 * math.pi * phase).T
        else:         # non-rigid breathing: radial scale varying with latitude
            wobble = 1 + 0.18 * math.sin(2 * math.pi * phase) * (local[:, 1:2] / s.radius)
            p[m] = c0 + local * wobble
    return p


def make_demo_scene(height: int = 192, width: int = 256, num_frames: int = 25, fov_deg: float = 60.0,
                    fps: float = 8.0) -> Trajectories:
    """The built-in 4D scene as :class:`Trajectories` (T, H*W, 3), with pixel K and colours.

    Deterministic (no randomness). Frame 0 is exactly the ray-cast first frame.
    """
    require(height > 0 and width > 0, f"demo scene: height and width must be positive, got {height}x{width}")
    require(num_frames >= 1, f"demo scene: num_frames must be >= 1, got {num_frames}")
    K = K_from_fov(fov_deg, width, height, dtype=torch.float64)
    v, u = torch.meshgrid(torch.arange(height, dtype=torch.float64) + 0.5,
                          torch.arange(width, dtype=torch.float64) + 0.5, indexing="ij")
    dirs = torch.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], torch.ones_like(u)], -1).reshape(-1, 3)
    t_hit, obj = _ray_cast(dirs)
    p0 = dirs * t_hit[:, None]
    colors = _colours(p0, obj)
    frames = [_move(p0, obj, i / max(num_frames - 1, 1)) for i in range(num_frames)]
    frames[0] = p0
    points = torch.stack(frames).float()
    return Trajectories(points=points, colors=colors.float(), height=height, width=width,
                        K=K.float(), fps=fps)
