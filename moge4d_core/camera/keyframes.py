"""Keyframed camera paths: :class:`Keyframe`, :func:`keyframe_path` and the pose interpolator.

Conventions: OpenCV axes (x right, y down, z forward), world = first-frame camera, camera-to-world poses.
A keyframe is a camera position, a look-at point, a *horizontal* field of view (as in
:func:`moge4d_core.geometry.intrinsics.K_from_fov`), a world up vector (``(0, -1, 0)``: OpenCV y points
down, so world up is -y) and a roll about the view axis (degrees, applied as ``R_lookat @ R_z(roll)``,
the sign of the official ``camera_rotate``).

Interpolation between consecutive keys j, j+1 (key frames f_j < f_{j+1}) for a frame f:
``u = (f - f_j) / (f_{j+1} - f_j)``, eased ``e = ease(u)`` per segment (``ease_in_out`` slows down at
every key; ``linear`` keeps the parameter speed constant through the keys);

* rotation: quaternion slerp from key j to key j+1 by ``e`` (kornia's :class:`Quaternion.slerp`,
  shortest arc);
* position: ``linear`` lerp by ``e``, or a uniform Catmull-Rom spline through the key positions
  evaluated at ``e`` (end tangents from reflected phantom points ``2 p_0 - p_1`` and
  ``2 p_{K-1} - p_{K-2}``; with two keys it reduces to the straight line);
* field of view: lerp by ``e``.

The path passes exactly through every key: frames that carry a key copy its pose and fov. Frames
before the first key / after the last one hold that key.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import torch
from kornia.geometry.quaternion import Quaternion

from ..errors import MoGe4DInputError, require
from ..types import CameraPath
from .presets import EASINGS, F64, _vec3, ease, look_at_R, make_c2w, rot_z
from ..geometry.intrinsics import K_from_fov, check_fov

INTERPOLATIONS = ("catmull_rom", "linear")


@dataclass
class Keyframe:
    """One key camera: ``position (3,)`` and ``look_at (3,)`` in world (OpenCV) coordinates,
    ``fov_deg`` horizontal field of view in degrees, ``up (3,)`` world up (default ``(0,-1,0)``),
    ``roll_deg`` roll about the view axis in degrees."""

    position: Any
    look_at: Any
    fov_deg: float = 60.0
    up: Any = (0.0, -1.0, 0.0)
    roll_deg: float = 0.0

    def c2w(self, name: str = "keyframe") -> torch.Tensor:
        """Camera-to-world (4,4) float64 of this key: looking from ``position`` at ``look_at``, then rolled by
        ``roll_deg`` about the view axis; ``name`` prefixes error messages.

        Raises:
            MoGe4DInputError: position / look_at / up not 3 finite numbers, position == look_at, or a view
                direction parallel to ``up``.
        """
        R = look_at_R(self.position, self.look_at, self.up, name)
        if self.roll_deg:
            R = R @ rot_z(math.radians(float(self.roll_deg)))
        return make_c2w(R, _vec3(self.position, f"{name}.position"))


def _as_keyframe(k: Any, i: int) -> Keyframe:
    if isinstance(k, Keyframe):
        return k
    if isinstance(k, Mapping):
        missing = [key for key in ("position", "look_at") if key not in k]
        require(not missing, f"keyframes[{i}]: missing key(s) {', '.join(missing)} (need position, look_at; "
                "optional fov_deg, up, roll_deg)")
        extra = sorted(set(k) - {"position", "look_at", "fov_deg", "up", "roll_deg"})
        require(not extra, f"keyframes[{i}]: unknown key(s) {', '.join(extra)}; valid: position, look_at, fov_deg, "
                "up, roll_deg")
        return Keyframe(**dict(k))
    raise MoGe4DInputError(f"keyframes[{i}]: expected a Keyframe or a dict, got {type(k).__name__}")


def _key_frame_indices(num_keys: int, num_frames: int, key_frames: Optional[Sequence[int]]) -> list[int]:
    if key_frames is None:
        if num_keys == 1:
            return [0]
        require(num_frames >= num_keys,
                f"keyframe path: {num_keys} keys need at least {num_keys} frames, got num_frames = {num_frames}")
        return [int(math.floor(k * (num_frames - 1) / (num_keys - 1) + 0.5)) for k in range(num_keys)]
    frames = list(key_frames)
    require(len(frames) == num_keys, f"key_frames: expected one frame index per key ({num_keys}), got {len(frames)}")
    for i, f in enumerate(frames):
        require(isinstance(f, int) and not isinstance(f, bool) and 0 <= f < num_frames,
                f"key_frames[{i}]: expected a frame index in [0, {num_frames - 1}], got {f!r}")
    require(all(a < b for a, b in zip(frames, frames[1:])),
            f"key_frames: frame indices must be strictly increasing, got {frames}")
    return frames


def _catmull_rom(p0, p1, p2, p3, u):
    """Uniform Catmull-Rom between p1 and p2 at u in [0,1]; all (T,3), u (T,1)."""
    return 0.5 * (2.0 * p1 + (p2 - p0) * u + (2.0 * p0 - 5.0 * p1 + 4.0 * p2 - p3) * u ** 2
                  + (3.0 * p1 - p0 - 3.0 * p2 + p3) * u ** 3)


def interpolate_poses(c2w_keys: torch.Tensor, fov_keys: torch.Tensor, num_frames: int, *,
                      key_frames: Optional[Sequence[int]] = None, interpolation: str = "catmull_rom",
                      easing: str = "ease_in_out") -> tuple[torch.Tensor, torch.Tensor]:
    """Interpolate key poses ``c2w_keys (K,4,4)`` and fovs ``fov_keys (K,)`` onto ``num_frames`` frames.

    ``key_frames`` gives the frame of each key (strictly increasing); default evenly spaced from frame
    0 to ``num_frames - 1`` (rounded). Returns ``(c2w (T,4,4), fov (T,))`` float64. The rotation blocks
    must be proper rotations; see the module docstring for the scheme.
    """
    require(interpolation in INTERPOLATIONS,
            f"interpolation: unknown {interpolation!r}; choose one of {', '.join(INTERPOLATIONS)}")
    require(easing in EASINGS, f"easing: unknown {easing!r}; choose one of {', '.join(EASINGS)}")
    require(isinstance(num_frames, int) and not isinstance(num_frames, bool) and num_frames >= 1,
            f"num_frames: need a whole number >= 1, got {num_frames!r}")
    c2w_keys = torch.as_tensor(c2w_keys, dtype=F64)
    fov_keys = torch.as_tensor(fov_keys, dtype=F64).reshape(-1)
    require(c2w_keys.ndim == 3 and c2w_keys.shape[1:] == (4, 4) and c2w_keys.shape[0] >= 1,
            f"keyframe poses: expected (K,4,4) with K >= 1, got {tuple(c2w_keys.shape)}")
    nk = c2w_keys.shape[0]
    require(fov_keys.numel() == nk, f"keyframe fovs: expected {nk} values, got {fov_keys.numel()}")
    frames = _key_frame_indices(nk, num_frames, key_frames)

    T = num_frames
    f = torch.arange(T, dtype=F64)
    kf = torch.tensor(frames, dtype=F64)
    if nk == 1:
        return c2w_keys.expand(T, 4, 4).clone(), fov_keys.expand(T).clone()
    # segment index j in [0, nk-2] and local parameter u in [0, 1] (held outside the key range)
    j = (torch.searchsorted(kf, f, right=True) - 1).clamp(0, nk - 2)
    u = ((f - kf[j]) / (kf[j + 1] - kf[j])).clamp(0.0, 1.0)
    e = ease(u, easing)

    R = c2w_keys[:, :3, :3]
    q = Quaternion.from_matrix(R).data  # (nk, 4) wxyz
    q_t = Quaternion(q[j]).slerp(Quaternion(q[j + 1]), e).matrix()

    P = c2w_keys[:, :3, 3]
    if interpolation == "linear":
        p_t = P[j] + e[:, None] * (P[j + 1] - P[j])
    else:
        ext = torch.cat([2.0 * P[:1] - P[1:2], P, 2.0 * P[-1:] - P[-2:-1]], dim=0)  # phantom end points
        p_t = _catmull_rom(ext[j], ext[j + 1], ext[j + 2], ext[j + 3], e[:, None])
    fov_t = fov_keys[j] + e * (fov_keys[j + 1] - fov_keys[j])

    out = make_c2w(q_t, p_t)
    for k, fk in enumerate(frames):  # exact at the keys
        out[fk] = c2w_keys[k]
        fov_t[fk] = fov_keys[k]
    return out, fov_t


def keyframe_path(keys: Sequence[Any], num_frames: int, width: int, height: int, *,
                  key_frames: Optional[Sequence[int]] = None, interpolation: str = "catmull_rom",
                  easing: str = "ease_in_out", name: str = "keyframes") -> CameraPath:
    """Camera path through ``keys`` (:class:`Keyframe` or dicts with the same fields).

    ``key_frames``: frame index of each key (strictly increasing, default evenly spaced over
    0..num_frames-1). ``interpolation``: ``"catmull_rom"`` or ``"linear"`` for positions; rotations
    always slerp. ``easing``: per-segment easing, one of :data:`EASINGS`. K per frame from the
    interpolated horizontal fov (principal point at the centre, square pixels).
    Returns float32 ``c2w (T,4,4)``, ``K (T,3,3)``.
    """
    require(isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0,
            f"keyframe path: width and height must be positive whole numbers, got {width!r}x{height!r}")
    require(len(keys) >= 1, "keyframe path: need at least one keyframe")
    kfs = [_as_keyframe(k, i) for i, k in enumerate(keys)]
    c2w_keys = torch.stack([k.c2w(f"keyframes[{i}]") for i, k in enumerate(kfs)])
    fovs = torch.tensor([check_fov(k.fov_deg, f"keyframes[{i}].fov_deg") for i, k in enumerate(kfs)], dtype=F64)
    c2w, fov = interpolate_poses(c2w_keys, fovs, num_frames, key_frames=key_frames,
                                 interpolation=interpolation, easing=easing)
    K = torch.stack([K_from_fov(float(a), width, height, dtype=F64) for a in fov])
    return CameraPath(c2w=c2w.to(torch.float32), K=K.to(torch.float32), width=width, height=height, name=name)
