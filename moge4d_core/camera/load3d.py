"""ComfyUI ``LOAD3D_CAMERA`` <-> our camera-to-world poses.

The ``LOAD3D_CAMERA`` value (``comfy_api/latest/_io.py::Load3DCamera``, ``comfy_extras`` ``CreateCameraInfo``)
is a dict::

    {"position": {"x","y","z"}, "target": {"x","y","z"},      # three.js world units; target = OrbitControls focus
     "zoom": 1.0,                                              # three.js digital zoom, scales the focal length
     "cameraType": "perspective" | "orthographic",
     "quaternion": {"x","y","z","w"},                          # optional: camera world rotation (three.js)
     "fov": 35.0}                                              # optional here: vertical field of view, degrees

Axes. The three.js world is right-handed and Y-up; a three.js camera looks down its local -Z with
local +Y up. ComfyUI maps that world to the OpenCV / 3DGS frame of splats and MoGe point maps with a
180 degree rotation about X, ``(x, y, z) -> (x, -y, -z)`` (``nodes_gaussian.py::_camera_basis``), and
we use the same map ``F = diag(1, -1, -1)`` between the three.js world and our world (OpenCV axes,
world = first-frame camera):

* position / target: ``p_cv = F p_three``;
* rotation: ``R_cv = F R_three F`` (left F: world axes; right F: camera axes, since the OpenCV camera
  is the three.js camera with y and z negated);
* without ``quaternion`` the camera looks from ``position`` at ``target`` with world up +Y (three.js
  ``lookAt``; if it looks straight up or down, up +Z as ComfyUI does), which is our look-at with up
  ``(0, -1, 0)``.

Field of view. ``fov`` is vertical (three.js ``PerspectiveCamera.fov``); missing -> 35 degrees, the
default of ComfyUI's ``CreateCameraInfo`` and ``RenderSplat``. ``zoom`` scales the focal length, so
:func:`c2w_from_load3d` returns the *effective* vertical fov ``2 atan(tan(fov/2) / zoom)``. (ComfyUI's
``RenderSplat`` applies the fov to the smaller image side; that is the vertical one for landscape
frames.) Orthographic cameras cannot be represented by a pinhole ``K`` and are rejected.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from kornia.geometry.quaternion import Quaternion

from ..errors import MoGe4DInputError, require
from ..types import CameraPath
from .keyframes import interpolate_poses
from .presets import EASINGS, F64, ease, look_at_R, make_c2w, path_time

DEFAULT_LOAD3D_FOV = 35.0
_F3 = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=F64))
LOAD3D_MODES = ("orbit", "linear")


def _xyz(v: Any, where: str) -> torch.Tensor:
    if isinstance(v, Mapping):
        missing = [k for k in ("x", "y", "z") if k not in v]
        require(not missing, f"{where}: missing key(s) {', '.join(missing)} (need x, y, z)")
        vals = [v["x"], v["y"], v["z"]]
    elif isinstance(v, (list, tuple)) and len(v) == 3:
        vals = list(v)
    else:
        raise MoGe4DInputError(f"{where}: expected {{'x','y','z'}} or [x, y, z], got {v!r}")
    ok = all(isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a) for a in vals)
    require(ok, f"{where}: coordinates must be finite numbers, got {vals}")
    return torch.tensor([float(a) for a in vals], dtype=F64)


def _fov_and_zoom(cam: Mapping) -> tuple[float, float]:
    fov = cam.get("fov", DEFAULT_LOAD3D_FOV)
    if fov is None:
        fov = DEFAULT_LOAD3D_FOV
    require(isinstance(fov, (int, float)) and not isinstance(fov, bool) and 0.0 < fov < 180.0,
            f"LOAD3D_CAMERA: 'fov' must be a vertical field of view in (0, 180) degrees, got {fov!r}")
    zoom = cam.get("zoom", 1.0)
    if zoom is None:
        zoom = 1.0
    require(isinstance(zoom, (int, float)) and not isinstance(zoom, bool) and math.isfinite(zoom) and zoom > 0,
            f"LOAD3D_CAMERA: 'zoom' must be a positive number, got {zoom!r}")
    return float(fov), float(zoom)


def _load3d_to_c2w64(cam: Mapping, name: str = "LOAD3D_CAMERA") -> tuple[torch.Tensor, float, torch.Tensor]:
    """-> (c2w (4,4) float64 in our world, effective vertical fov in degrees, target (3,) in our world)."""
    require(isinstance(cam, Mapping), f"{name}: expected a dict, got {type(cam).__name__}")
    ctype = cam.get("cameraType", "perspective")
    require(ctype is None or str(ctype).lower().startswith("persp"),
            f"{name}: cameraType {ctype!r} is not supported; switch the 3D viewer camera to 'perspective'")
    for key in ("position", "target"):
        require(key in cam, f"{name}: missing key {key!r} (a LOAD3D_CAMERA needs position and target)")
    pos = _F3 @ _xyz(cam["position"], f"{name}.position")
    tgt = _F3 @ _xyz(cam["target"], f"{name}.target")
    q = cam.get("quaternion")
    if q:
        require(isinstance(q, Mapping) and all(k in q for k in ("x", "y", "z", "w")),
                f"{name}.quaternion: expected {{'x','y','z','w'}}, got {q!r}")
        vals = [q["w"], q["x"], q["y"], q["z"]]
        require(all(isinstance(a, (int, float)) and not isinstance(a, bool) and math.isfinite(a) for a in vals),
                f"{name}.quaternion: components must be finite numbers, got {q!r}")
        qt = torch.tensor([float(a) for a in vals], dtype=F64)
        require(float(qt.norm()) > 1e-8, f"{name}.quaternion: zero quaternion")
        R_three = Quaternion(qt / qt.norm()).matrix()
        R = _F3 @ R_three @ _F3
    else:
        d = tgt - pos
        require(float(d.norm()) > 1e-12, f"{name}: position and target coincide; the view direction is undefined")
        up = torch.tensor([0.0, -1.0, 0.0], dtype=F64)  # three.js +Y
        if abs(float((d / d.norm()) @ up)) > 0.999:      # looking straight up / down: three.js-style fallback
            up = torch.tensor([0.0, 0.0, -1.0], dtype=F64)  # three.js +Z
        R = look_at_R(pos, tgt, up, name)
    fov, zoom = _fov_and_zoom(cam)
    fov_eff = math.degrees(2.0 * math.atan(math.tan(math.radians(fov) / 2.0) / zoom))
    return make_c2w(R, pos), fov_eff, tgt


def c2w_from_load3d(cam: Mapping) -> tuple[torch.Tensor, float]:
    """``LOAD3D_CAMERA`` dict -> (camera-to-world (4,4) float32 in our world, effective vertical fov in degrees)."""
    c2w, fov, _ = _load3d_to_c2w64(cam)
    return c2w.to(torch.float32), fov


def load3d_from_c2w(c2w: Any, fov_deg: float, target_distance: float = 1.0) -> dict:
    """Camera-to-world ``(4,4)`` (our world, OpenCV axes) + vertical fov -> ``LOAD3D_CAMERA`` dict.

    ``target`` is placed ``target_distance`` (world units, > 0) in front of the camera along its
    view axis; ``quaternion`` carries the exact rotation (roll included); ``zoom = 1``.
    """
    M = torch.as_tensor(c2w, dtype=F64).detach().cpu()
    require(tuple(M.shape) == (4, 4), f"load3d_from_c2w: c2w must be (4,4), got {tuple(M.shape)}")
    require(bool(torch.isfinite(M).all()), "load3d_from_c2w: c2w contains NaN or inf")
    R = M[:3, :3]
    err = float((R.T @ R - torch.eye(3, dtype=F64)).abs().max())
    require(err < 1e-3 and float(torch.linalg.det(R)) > 0,
            f"load3d_from_c2w: c2w rotation is not a proper rotation (max |R^T R - I| = {err:.3g})")
    require(isinstance(fov_deg, (int, float)) and 0.0 < float(fov_deg) < 180.0,
            f"load3d_from_c2w: fov_deg must be a vertical field of view in (0, 180) degrees, got {fov_deg!r}")
    require(isinstance(target_distance, (int, float)) and math.isfinite(target_distance) and target_distance > 0,
            f"load3d_from_c2w: target_distance must be a positive number, got {target_distance!r}")
    pos = M[:3, 3]
    tgt = pos + float(target_distance) * R[:, 2]
    R_three = _F3 @ R @ _F3
    q = Quaternion.from_matrix(R_three).data  # wxyz
    xyz = lambda v: {"x": float(v[0]), "y": float(v[1]), "z": float(v[2])}  # noqa: E731
    return {"position": xyz(_F3 @ pos), "target": xyz(_F3 @ tgt),
            "quaternion": {"x": float(q[1]), "y": float(q[2]), "z": float(q[3]), "w": float(q[0])},
            "fov": float(fov_deg), "zoom": 1.0, "cameraType": "perspective"}


def load3d_camera_path(start_cam: Mapping, end_cam: Mapping, num_frames: int, width: int, height: int, *,
                       mode: str = "orbit", easing: str = "ease_in_out", name: str = "load3d") -> CameraPath:
    """Camera path from ``start_cam`` (frame 0) to ``end_cam`` (last frame), both ``LOAD3D_CAMERA`` dicts.

    * ``mode="orbit"`` (default): the look-at target moves linearly (eased) from one target to the
      other, the rotation slerps, the camera-target distance interpolates linearly, and the camera sits
      on its view axis at that distance from the target, so the target stays at the image centre. Both
      cameras must look at their targets (true for the 3D viewer and ``CreateCameraInfo``).
    * ``mode="linear"``: position lerp, rotation slerp.

    The vertical fov interpolates linearly (eased); ``K``: ``fx = fy = H / (2 tan(fov/2))``, centred.
    """
    require(mode in LOAD3D_MODES, f"load3d_camera_path: mode {mode!r} unknown; choose one of {', '.join(LOAD3D_MODES)}")
    require(easing in EASINGS, f"load3d_camera_path: easing {easing!r} unknown; choose one of {', '.join(EASINGS)}")
    require(isinstance(num_frames, int) and not isinstance(num_frames, bool) and num_frames >= 1,
            f"num_frames: need a whole number >= 1, got {num_frames!r}")
    require(isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0,
            f"load3d_camera_path: width and height must be positive whole numbers, got {width!r}x{height!r}")
    c0, fov0, t0 = _load3d_to_c2w64(start_cam, "start_cam")
    c1, fov1, t1 = _load3d_to_c2w64(end_cam, "end_cam")
    n = num_frames
    if n == 1:
        c2w, fov = c0[None], torch.tensor([fov0], dtype=F64)
    else:
        c2w, fov = interpolate_poses(torch.stack([c0, c1]), torch.tensor([fov0, fov1], dtype=F64), n,
                                     interpolation="linear", easing=easing)
        if mode == "orbit":
            dists = []
            for label, c, t in (("start_cam", c0, t0), ("end_cam", c1, t1)):
                d = t - c[:3, 3]
                dn = float(d.norm())
                require(dn > 1e-9, f"{label}: position and target coincide; use mode='linear'")
                ang = math.acos(max(-1.0, min(1.0, float(d @ c[:3, 2]) / dn)))
                require(ang < 1e-3, f"{label}: the camera does not look at its target ({math.degrees(ang):.3f} deg "
                        "off); orbit mode needs both cameras aimed at their targets, use mode='linear'")
                dists.append(dn)
            e = ease(path_time(n), easing)[:, None]
            tgt = t0 + e * (t1 - t0)
            dist = dists[0] + e * (dists[1] - dists[0])
            c2w[:, :3, 3] = tgt - dist * c2w[:, :3, 2]
            c2w[0], c2w[-1] = c0, c1
    f = 0.5 * height / torch.tan(torch.deg2rad(fov) / 2.0)
    K = torch.zeros(n, 3, 3, dtype=F64)
    K[:, 0, 0], K[:, 1, 1] = f, f
    K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = width / 2.0, height / 2.0, 1.0
    return CameraPath(c2w=c2w.to(torch.float32), K=K.to(torch.float32), width=width, height=height, name=name)
