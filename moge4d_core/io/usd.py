"""USD export of a 4D scene and its camera paths, and camera-path import from a time-sampled ``UsdGeomCamera``.

Written with Pixar's ``usd-core`` (``pxr``) only. One file (``.usd`` / ``.usdc`` binary, ``.usda`` text, ``.usdz``
package) holds::

    /World                      Xform, the default prim
    /World/Scene                UsdGeomPoints: points, widths, extent time-sampled per frame; primvars:displayColor
                                (vertex, linear RGB); primvars:moge4d_visible (vertex bool, per frame, when known)
    /World/Cameras/<name>       UsdGeomCamera per camera path: transform, focal length, apertures and offsets
                                time-sampled per frame; clippingRange; moge4d:imageWidth / moge4d:imageHeight

Conventions (written into the file as stage metadata):

* **Units**: metres, ``metersPerUnit = 1``. Time: one time code per frame, ``timeCodesPerSecond =
  framesPerSecond = fps``, frames 0 .. T-1 (``startTimeCode`` / ``endTimeCode``).
* **Axes**: ``upAxis = "Y"``. The USD world is our world (the first-frame OpenCV camera: x right, y down,
  z forward) turned half a turn about x: a point ``(x, y, z)`` is written as ``(x, -y, -z)``, so +Y is the first
  camera's up, +Z points back towards it, and the first camera sits at the origin looking down -Z.
* **Cameras**: a USD camera looks down its local -Z with +Y up, an OpenCV camera down +Z with +Y down, so a
  camera-to-world ``c2w`` (column vectors) is written as ``S @ c2w @ S`` with ``S = diag(1, -1, -1, 1)`` (world
  flip on the left, camera-frame flip of y and z on the right), transposed into USD's row-vector matrix.
* **Film back**: lens and film-back values are in tenths of a scene unit (the UsdGeomCamera rule; on this metre
  stage 0.1 m, so a value of 0.36 means 36 mm). The horizontal aperture is a 36 mm full-frame film back
  (``0.36``); with pixel intrinsics ``K`` of a ``W`` x ``H`` image: ``focalLength = fx * 0.36 / W``,
  ``verticalAperture = focalLength * H / fy``, ``horizontalApertureOffset = (W/2 - cx) * 0.36 / W``,
  ``verticalApertureOffset = (cy - H/2) * verticalAperture / H``. Only the ratios matter for the projection, so
  any reader that treats the numbers as millimetres still gets the same field of view.
* **Colours**: the scene's colours are sRGB image values; ``displayColor`` holds them as linear RGB.
* **Point size**: ``widths`` = ``stride * depth / fx`` (depth = the point's z in the first-frame camera,
  ``fx`` the scene's focal length in pixels, ``stride`` the subsampling step), so neighbouring splats touch.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ..errors import MoGe4DInputError
from ..types import CameraPath, Trajectories
from ._atomic import atomic_path, check_output_path
from ._export_common import FLIP_YZ, focal_px, grid_subsample, points_yup, srgb_to_linear

__all__ = ["USD_SUFFIXES", "FILM_BACK", "save_scene_usd", "load_camera_path_usd", "check_usd_available"]

USD_SUFFIXES = (".usd", ".usda", ".usdc", ".usdz")
#: horizontal aperture in tenths of a metre (a 36 mm full-frame film back)
FILM_BACK = 0.36
_DEFAULT_IMPORT_WIDTH = 512
_MAX_IMPORT_FRAMES = 100_000


def check_usd_available(what: str = "USD export") -> None:
    """Raise a :class:`MoGe4DInputError` saying how to install ``usd-core`` when ``pxr`` cannot be imported."""
    try:
        from pxr import Usd  # noqa: F401
    except ImportError as exc:
        raise MoGe4DInputError(f"{what}: the USD library is not installed ({exc}); run `pip install usd-core` in "
                               f"the Python environment that runs MoGe4D") from None


def _matrix_to_usd(m: np.ndarray):
    from pxr import Gf

    return Gf.Matrix4d(np.asarray(m, dtype=np.float64).T.tolist())


def _matrix_from_usd(m) -> np.ndarray:
    return np.array(m, dtype=np.float64).T


def _prim_name(name: str, used: set) -> str:
    from pxr import Tf

    base = Tf.MakeValidIdentifier(str(name) or "camera")
    out, i = base, 2
    while out in used:
        out, i = f"{base}_{i}", i + 1
    used.add(out)
    return out


def _clipping_range(traj: Optional[Trajectories], path: CameraPath) -> tuple[float, float]:
    """(near, far) in metres covering the scene's points seen from every camera of ``path``."""
    if traj is None:
        return 0.01, 10000.0
    index, _ = grid_subsample(traj, 65536)
    pts = traj.points.detach().to("cpu", torch.float64)[:, torch.from_numpy(index)]
    w2c = torch.linalg.inv(path.c2w.detach().to("cpu", torch.float64))
    zs = []
    for t in range(path.num_frames):
        p = pts[min(t, traj.num_frames - 1)]
        zs.append(p @ w2c[t, 2, :3] + w2c[t, 2, 3])
    z = torch.cat(zs)
    z = z[z > 0]
    if z.numel() == 0:
        return 0.01, 10000.0
    near = max(1e-3, 0.5 * float(z.min()))
    far = max(2.0 * float(z.max()), 10.0 * near)
    return near, far


def _write_points(stage, traj: Trajectories, max_points: Optional[int]) -> None:
    from pxr import Gf, Sdf, UsdGeom, Vt

    index, stride = grid_subsample(traj, max_points)
    pts = points_yup(traj, index)                                    # (T,M,3) float32
    widths = (np.abs(pts[..., 2]) * (stride / focal_px(traj))).astype(np.float32)
    geom = UsdGeom.Points.Define(stage, "/World/Scene")
    colors = srgb_to_linear(traj.colors.detach().to("cpu", torch.float64).numpy()[index]).astype(np.float32)
    color_pv = geom.CreateDisplayColorPrimvar(UsdGeom.Tokens.vertex)
    color_pv.Set(Vt.Vec3fArray.FromNumpy(colors))
    points_attr, widths_attr, extent_attr = geom.CreatePointsAttr(), geom.CreateWidthsAttr(), geom.CreateExtentAttr()
    geom.SetWidthsInterpolation(UsdGeom.Tokens.vertex)
    vis_pv = None
    if traj.visibility is not None:
        vis = traj.visibility.detach().to("cpu").bool().numpy()[:, index]
        vis_pv = UsdGeom.PrimvarsAPI(geom).CreatePrimvar("moge4d_visible", Sdf.ValueTypeNames.BoolArray,
                                                        UsdGeom.Tokens.vertex)
    for t in range(traj.num_frames):
        half = widths[t, :, None] * 0.5
        lo, hi = (pts[t] - half).min(axis=0), (pts[t] + half).max(axis=0)
        points_attr.Set(Vt.Vec3fArray.FromNumpy(np.ascontiguousarray(pts[t])), t)
        widths_attr.Set(Vt.FloatArray.FromNumpy(np.ascontiguousarray(widths[t])), t)
        extent_attr.Set(Vt.Vec3fArray([Gf.Vec3f(*map(float, lo)), Gf.Vec3f(*map(float, hi))]), t)
        if vis_pv is not None:
            vis_pv.Set(Vt.BoolArray.FromNumpy(np.ascontiguousarray(vis[t])), t)


def _write_camera(stage, prim_path: str, path: CameraPath, clip: tuple[float, float]) -> None:
    from pxr import Gf, Sdf, UsdGeom

    cam = UsdGeom.Camera.Define(stage, prim_path)
    cam.CreateProjectionAttr(UsdGeom.Tokens.perspective)
    cam.CreateClippingRangeAttr(Gf.Vec2f(float(clip[0]), float(clip[1])))
    op = cam.AddTransformOp()
    c2w = path.c2w.detach().to("cpu", torch.float64).numpy()
    K = path.K.detach().to("cpu", torch.float64).numpy()
    w, h = float(path.width), float(path.height)
    attrs = [cam.CreateFocalLengthAttr(), cam.CreateHorizontalApertureAttr(), cam.CreateVerticalApertureAttr(),
             cam.CreateHorizontalApertureOffsetAttr(), cam.CreateVerticalApertureOffsetAttr()]
    for t in range(path.num_frames):
        op.Set(_matrix_to_usd(FLIP_YZ @ c2w[t] @ FLIP_YZ), t)
        fx, fy, cx, cy = K[t, 0, 0], K[t, 1, 1], K[t, 0, 2], K[t, 1, 2]
        focal = fx * FILM_BACK / w
        v_ap = focal * h / fy
        values = (focal, FILM_BACK, v_ap, (w / 2 - cx) * FILM_BACK / w, (cy - h / 2) * v_ap / h)
        for attr, value in zip(attrs, values):
            attr.Set(float(value), t)
    prim = cam.GetPrim()
    prim.CreateAttribute("moge4d:imageWidth", Sdf.ValueTypeNames.Int, custom=True).Set(int(path.width))
    prim.CreateAttribute("moge4d:imageHeight", Sdf.ValueTypeNames.Int, custom=True).Set(int(path.height))


def _as_camera_list(cameras) -> list[CameraPath]:
    if cameras is None:
        return []
    if isinstance(cameras, CameraPath):
        return [cameras]
    out = list(cameras)
    for i, c in enumerate(out):
        if not isinstance(c, CameraPath):
            raise MoGe4DInputError(f"cameras[{i}]: expected a CameraPath, got {type(c).__name__}")
    return out


def save_scene_usd(traj: Optional[Trajectories], cameras: Union[CameraPath, Sequence[CameraPath], None],
                   path: Union[str, os.PathLike], *, max_points: Optional[int] = None,
                   fps: Optional[float] = None) -> Path:
    """Write a 4D scene and its camera paths as one USD file (see the module docstring for the layout).

    Args:
        traj: the scene (points (T,N,3) metres, colours (N,3), visibility (T,N) or None), or None for cameras only.
        cameras: a :class:`CameraPath`, a list of them, or None; each becomes ``/World/Cameras/<name>``.
        path: ``.usd`` (binary), ``.usdc``, ``.usda`` (text) or ``.usdz`` (package); written atomically.
        max_points: keep an even sub-grid of at most this many points (None / 0: all points).
        fps: frame rate; default the scene's ``fps`` (8 without a scene).

    Returns:
        ``path`` as a Path.
    """
    check_usd_available()
    from pxr import Usd, UsdGeom, UsdUtils

    path = check_output_path(path, "USD export")
    suffix = path.suffix.lower()
    if suffix not in USD_SUFFIXES:
        raise MoGe4DInputError(f"USD export {path}: unknown extension {path.suffix!r}; use one of "
                               f"{', '.join(USD_SUFFIXES)}")
    cams = _as_camera_list(cameras)
    if traj is None and not cams:
        raise MoGe4DInputError(f"USD export {path}: nothing to write; give a scene, a camera path or both")
    rate = float(fps if fps is not None else (traj.fps if traj is not None else 8.0))
    if not np.isfinite(rate) or rate <= 0:
        raise MoGe4DInputError(f"USD export {path}: fps must be a positive number, got {rate!r}")
    frames = max(([traj.num_frames] if traj is not None else []) + [c.num_frames for c in cams])

    stage = Usd.Stage.CreateInMemory()
    UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.y)
    UsdGeom.SetStageMetersPerUnit(stage, UsdGeom.LinearUnits.meters)
    stage.SetTimeCodesPerSecond(rate)
    stage.SetFramesPerSecond(rate)
    stage.SetStartTimeCode(0)
    stage.SetEndTimeCode(frames - 1)
    world = UsdGeom.Xform.Define(stage, "/World")
    stage.SetDefaultPrim(world.GetPrim())
    stage.GetRootLayer().documentation = (
        "MoGe4D 4D scene: metres, Y-up; world = first-frame OpenCV camera with y and z negated; "
        "one time code per frame")
    if traj is not None:
        _write_points(stage, traj, max_points)
    if cams:
        UsdGeom.Scope.Define(stage, "/World/Cameras")
        used: set = set()
        for cam in cams:
            _write_camera(stage, f"/World/Cameras/{_prim_name(cam.name, used)}", cam, _clipping_range(traj, cam))

    with atomic_path(path) as tmp:
        if suffix != ".usdz":
            if not stage.GetRootLayer().Export(str(tmp)):
                raise OSError(f"USD export {path}: usd-core could not write the file")
        else:
            work = Path(tempfile.mkdtemp(prefix=".moge4d-usdz-", dir=tmp.parent))
            try:
                layer = work / f"{path.stem}.usdc"
                if not stage.GetRootLayer().Export(str(layer)) or \
                        not UsdUtils.CreateNewUsdzPackage(str(layer), str(tmp)):
                    raise OSError(f"USD export {path}: usd-core could not write the package")
            finally:
                shutil.rmtree(work, ignore_errors=True)
    return path


# ------------------------------------------------------------------------------------------------ import
_Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])


def _find_camera(stage, prim, file: Path):
    from pxr import UsdGeom

    if prim is not None:
        p = stage.GetPrimAtPath(str(prim)) if str(prim).startswith("/") else None
        if p is None or not p.IsValid():
            raise MoGe4DInputError(f"{file}: no prim {prim!r}; give the camera's absolute prim path, e.g. "
                                   f"/World/Cameras/orbit_left")
        if not p.IsA(UsdGeom.Camera):
            raise MoGe4DInputError(f"{file}: prim {prim} is a {p.GetTypeName() or 'typeless prim'}, not a Camera")
        return p
    found = [p for p in stage.Traverse() if p.IsA(UsdGeom.Camera)]
    if not found:
        raise MoGe4DInputError(f"{file}: holds no UsdGeomCamera; export the camera from your tool as a USD camera")
    if len(found) > 1:
        names = ", ".join(str(p.GetPath()) for p in found[:8]) + (" ..." if len(found) > 8 else "")
        raise MoGe4DInputError(f"{file}: holds {len(found)} cameras ({names}); choose one with prim=<path>")
    return found[0]


def _sample_times(stage, prim) -> list:
    """Integer time codes start..end when the stage has a time range, else the union of the camera's (and its
    ancestors') transform and lens samples, else the default time (a still camera)."""
    from pxr import Usd, UsdGeom

    if stage.HasAuthoredTimeCodeRange():
        start, end = stage.GetStartTimeCode(), stage.GetEndTimeCode()
        count = int(np.floor(end - start)) + 1
        if count > _MAX_IMPORT_FRAMES:
            raise MoGe4DInputError(f"camera import: the stage's time range {start}..{end} has {count} frames; more "
                                   f"than {_MAX_IMPORT_FRAMES} is not a camera path")
        return [Usd.TimeCode(start + i) for i in range(max(count, 1))]
    times: set = set()
    p = prim
    while p and p.IsValid() and not p.IsPseudoRoot():
        if p.IsA(UsdGeom.Xformable):
            times.update(UsdGeom.Xformable(p).GetTimeSamples())
        if p == prim:
            for attr in p.GetAttributes():
                times.update(attr.GetTimeSamples())
        p = p.GetParent()
    if not times:
        return [Usd.TimeCode.Default()]
    return [Usd.TimeCode(t) for t in sorted(times)]


def load_camera_path_usd(path: Union[str, os.PathLike], prim: Optional[str] = None, *, width: Optional[int] = None,
                         height: Optional[int] = None, relative_to_first: bool = False) -> CameraPath:
    """Read a camera path from a time-sampled ``UsdGeomCamera`` (ours, or one authored in Blender / Houdini).

    The stage's ``upAxis`` (Y or Z) and ``metersPerUnit`` are honoured: the path comes back in metres in our world
    convention (the exporter's inverse: ``c2w = S @ c2w_usd @ S``, ``S = diag(1, -1, -1, 1)``, after a Z-up stage is
    turned Y-up). Scale in the camera's transform is removed (rotation columns normalised). One frame per time code
    of the stage's start..end range (or per authored sample when the stage has no range).

    Args:
        path: a .usd / .usda / .usdc / .usdz file.
        prim: the camera's prim path; None picks the only camera of the stage.
        width, height: image size for ``K``; default the size our exporter stored, else 512 wide with the
            film back's aspect ratio.
        relative_to_first: re-express the path relative to its first camera (its first pose becomes the identity),
            for cameras authored in another tool's world.

    Returns:
        :class:`CameraPath` with c2w (T,4,4) OpenCV camera-to-world and K (T,3,3) pixels.
    """
    check_usd_available("USD camera import")
    from pxr import Gf, Tf, Usd, UsdGeom

    file = Path(path)
    if not file.is_file():
        raise MoGe4DInputError(f"USD camera import: no such file {file}")
    if file.suffix.lower() not in USD_SUFFIXES:
        raise MoGe4DInputError(f"USD camera import {file}: not a USD file (expected {', '.join(USD_SUFFIXES)})")
    try:
        stage = Usd.Stage.Open(str(file), Usd.Stage.LoadAll)
    except Tf.ErrorException as exc:
        raise MoGe4DInputError(f"USD camera import {file}: usd-core cannot open it ({str(exc).strip()[:300]})") \
            from None
    if stage is None:
        raise MoGe4DInputError(f"USD camera import {file}: usd-core cannot open it")
    cam_prim = _find_camera(stage, prim, file)
    cam = UsdGeom.Camera(cam_prim)
    mpu = float(UsdGeom.GetStageMetersPerUnit(stage))
    up = UsdGeom.GetStageUpAxis(stage)
    to_yup = _Z_UP_TO_Y_UP if up == UsdGeom.Tokens.z else np.eye(4)

    if width is None or height is None:
        wa, ha = cam_prim.GetAttribute("moge4d:imageWidth"), cam_prim.GetAttribute("moge4d:imageHeight")
        stored = tuple(a.Get() if a and a.HasAuthoredValue() else None for a in (wa, ha))
    c2ws, Ks = [], []
    for t in _sample_times(stage, cam_prim):
        gf = cam.GetCamera(t)
        if gf.projection != Gf.Camera.Perspective:
            raise MoGe4DInputError(f"USD camera import {file}: camera {cam_prim.GetPath()} is orthographic; only "
                                   f"perspective cameras map to pixel intrinsics")
        focal, h_ap, v_ap = float(gf.focalLength), float(gf.horizontalAperture), float(gf.verticalAperture)
        if not (focal > 0 and h_ap > 0 and v_ap > 0):
            raise MoGe4DInputError(f"USD camera import {file}: camera {cam_prim.GetPath()} has focal length {focal} "
                                   f"and apertures {h_ap} x {v_ap} at time {t}; all must be positive")
        if width is None or height is None:
            w = int(width or stored[0] or _DEFAULT_IMPORT_WIDTH)
            h = int(height or stored[1] or max(1, round(w * v_ap / h_ap)))
            width, height = w, h
        m = to_yup @ _matrix_from_usd(gf.transform)
        m[:3, 3] *= mpu
        norms = np.linalg.norm(m[:3, :3], axis=0)
        if np.any(norms < 1e-12):
            raise MoGe4DInputError(f"USD camera import {file}: camera {cam_prim.GetPath()} has a degenerate "
                                   f"transform (zero scale) at time {t}")
        m[:3, :3] /= norms
        c2ws.append(FLIP_YZ @ m @ FLIP_YZ)
        fx, fy = focal * width / h_ap, focal * height / v_ap
        cx = width / 2.0 - float(gf.horizontalApertureOffset) * width / h_ap
        cy = height / 2.0 + float(gf.verticalApertureOffset) * height / v_ap
        Ks.append(np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]]))
    c2w = torch.from_numpy(np.stack(c2ws))
    if relative_to_first:
        c2w = torch.linalg.inv(c2w[0]) @ c2w
    return CameraPath(c2w=c2w.float(), K=torch.from_numpy(np.stack(Ks)).float(), width=int(width),
                      height=int(height), name=cam_prim.GetName())
