"""Camera paths (``MOGE4D_CAMERA_PATH``): :func:`make_camera_path` from a preset, plus the room's other parts.

The entry point the node layer and the CLI import for cameras; the work lives in small modules beside it:

* :mod:`.presets`    the preset registry :data:`CAMERA_PRESETS` and the pose helpers
* :mod:`.keyframes`  :class:`Keyframe`, :func:`keyframe_path`, :func:`interpolate_poses`
* :mod:`.load3d`     ComfyUI ``LOAD3D_CAMERA`` (three.js) <-> camera-to-world
* :mod:`.scene`      scene-adaptive paths (:func:`~.scene.camera_path_for_scene`)

Camera files (our JSON, nerfstudio) are :mod:`moge4d_core.io.camera_json`; the frustum plot is
:mod:`moge4d_core.preview.camera_plot`.

Conventions: OpenCV camera axes (x right, y down, z forward), world = first-frame camera,
camera-to-world poses ``c2w (T,4,4)``, pixel intrinsics ``K (T,3,3)``; outputs are float32 on the CPU.

Usage::

    path = make_camera_path("orbit_left", 49, 512, 368, points0=traj.points[0], K=traj.K, angle_deg=60)
    for name, spec in CAMERA_PRESETS.items():   # combo entries + widgets
        print(name, spec.doc, [(p.name, p.kind, p.default, p.unit) for p in spec.params])
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from ..errors import MoGe4DInputError, require
from ..types import CameraPath
from ..geometry.intrinsics import K_from_fov, check_fov
from .keyframes import Keyframe, interpolate_poses, keyframe_path
from .load3d import c2w_from_load3d, load3d_camera_path, load3d_from_c2w
from .presets import (
    CAMERA_PRESETS,
    EASINGS,
    CameraPreset,
    PresetParam,
    SceneStats,
    look_at_c2w,
    resolve_params,
    scene_stats,
)

DEFAULT_FOV_DEG = 60.0

__all__ = [
    "CAMERA_PRESETS", "CameraPreset", "PresetParam", "EASINGS", "SceneStats", "DEFAULT_FOV_DEG",
    "make_camera_path", "preset_names", "scene_stats", "look_at_c2w",
    "Keyframe", "keyframe_path", "interpolate_poses",
    "c2w_from_load3d", "load3d_from_c2w", "load3d_camera_path",
]


def preset_names() -> list[str]:
    """Preset names in display order (official ones first)."""
    return list(CAMERA_PRESETS)


def _positive_int(value: Any, name: str) -> int:
    ok = isinstance(value, int) and not isinstance(value, bool)
    require(ok, f"{name}: expected a whole number, got {type(value).__name__} {value!r}")
    return int(value)


def _check_K(K: Any) -> torch.Tensor:
    require(isinstance(K, torch.Tensor), f"K: expected a torch.Tensor (3,3) of pixel intrinsics, got {type(K).__name__}")
    require(tuple(K.shape) == (3, 3), f"K: expected shape (3,3) pixel intrinsics, got {tuple(K.shape)}")
    K = K.detach().to("cpu", torch.float64)
    require(bool(torch.isfinite(K).all()), "K: contains NaN or inf")
    require(float(K[0, 0]) > 0 and float(K[1, 1]) > 0, f"K: focal lengths must be positive, got fx={float(K[0, 0])}, "
            f"fy={float(K[1, 1])}")
    require(torch.allclose(K[2], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)),
            f"K: last row must be [0, 0, 1], got {K[2].tolist()}")
    return K


def make_camera_path(preset: str, num_frames: int, width: int, height: int, *,
                     points0: Optional[torch.Tensor] = None, fov_deg: Optional[float] = None,
                     K: Optional[torch.Tensor] = None, **params: Any) -> CameraPath:
    """Build the camera path ``preset`` for ``num_frames`` frames of ``width`` x ``height`` pixels.

    Args:
        preset: a key of :data:`CAMERA_PRESETS` (see its ``doc`` and ``params``).
        num_frames: T >= 1.
        width, height: image size in pixels of the rendered frames.
        points0: first-frame points ``(N,3)`` (or ``(H,W,3)``), world = first-frame camera, OpenCV
            axes; gives the scene centre (mean) and depth (median z) that size the path. Required by
            presets with ``uses_scene``; NaN / inf points are ignored.
        fov_deg: *horizontal* field of view in degrees (0, 180) used when ``K`` is not given
            (default :data:`DEFAULT_FOV_DEG`); principal point at the image centre, square pixels.
        K: pixel intrinsics ``(3,3)`` for ``width`` x ``height``; give either ``K`` or ``fov_deg``.
        **params: the preset's parameters; missing ones take their defaults.

    Returns:
        :class:`CameraPath` with ``c2w (T,4,4)`` and ``K (T,3,3)`` float32 on the CPU, ``name = preset``.
        ``K`` is the same on every frame except for the zoom presets (fx, fy scaled, cx, cy kept).

    Raises:
        MoGe4DInputError: unknown preset (the message lists the valid ones), num_frames < 1,
            non-positive size, fov outside (0, 180), both K and fov_deg, bad K, unknown or out-of-range
            parameters, missing / empty points0 for a scene-sized preset.
    """
    if not isinstance(preset, str) or preset not in CAMERA_PRESETS:
        raise MoGe4DInputError(f"camera preset: unknown preset {preset!r}; valid presets: {', '.join(CAMERA_PRESETS)}")
    spec = CAMERA_PRESETS[preset]
    n = _positive_int(num_frames, "num_frames")
    require(n >= 1, f"num_frames: need at least one frame, got {n}")
    w, h = _positive_int(width, "width"), _positive_int(height, "height")
    require(w > 0 and h > 0, f"camera path: width and height must be positive, got {w}x{h}")
    if K is not None:
        require(fov_deg is None, "camera path: give either K (pixel intrinsics) or fov_deg, not both")
        K64 = _check_K(K)
    else:
        fov = check_fov(DEFAULT_FOV_DEG if fov_deg is None else fov_deg, "fov_deg")
        K64 = K_from_fov(fov, w, h, dtype=torch.float64)
    p = resolve_params(spec, params)
    stats = scene_stats(points0, preset) if spec.uses_scene else None
    c2w, focal_scale = spec.generate(n, stats, p)
    Ks = K64.expand(n, 3, 3).clone()
    if focal_scale is not None:
        Ks[:, 0, 0] = Ks[:, 0, 0] * focal_scale
        Ks[:, 1, 1] = Ks[:, 1, 1] * focal_scale
    return CameraPath(c2w=c2w.to(torch.float32).contiguous(), K=Ks.to(torch.float32).contiguous(),
                      width=w, height=h, name=preset)
