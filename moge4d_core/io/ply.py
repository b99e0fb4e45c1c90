"""PLY export: coloured point clouds, per-frame point-cloud sequences and 3D Gaussian splats.

All files are binary little-endian PLY written with numpy structured arrays (the format is a short
ASCII header followed by packed records, so a dependency such as ``plyfile`` is not needed at run
time; the tests use ``plyfile`` as an independent parser).

Point cloud (:func:`write_ply_points`): ``x y z`` float32, ``red green blue`` uchar; readable by
ComfyUI's Load3D / PreviewPointCloud, MeshLab, CloudCompare, Open3D, Blender.

Gaussian splat (:func:`write_splat_ply`): the layout of the original 3D Gaussian Splatting code,
all float32, SH degree 0 (no ``f_rest_*``)::

    x y z  nx ny nz  f_dc_0 f_dc_1 f_dc_2  opacity  scale_0 scale_1 scale_2  rot_0 rot_1 rot_2 rot_3

with ``f_dc = (rgb - 0.5) / C0`` (``C0 = 0.28209479177387814``, the degree-0 SH constant), ``opacity``
stored as its logit (viewers apply a sigmoid; the opacity is clipped to [1e-6, 1 - 1e-6] first so
1.0 stays finite), ``scale`` stored as its natural log, ``rot`` a unit quaternion (w, x, y, z) and
normals 0. Readable by ComfyUI's PreviewGaussianSplat / Load3D, SuperSplat, antimatter15 / spark.

Axes: points are written as given (our world frame: first-frame camera, OpenCV x right, y down,
z forward), which is the convention of 3DGS splat files. ``axes="opengl"`` writes (x, -y, -z)
instead (y up, camera looking down -z), which Y-up mesh / point-cloud viewers show upright;
for splats it also conjugates the rotations accordingly.

Every writer validates its inputs before creating anything and writes through a temporary file
that is renamed at the end; :func:`write_ply_sequence` / :func:`write_splat_sequence` write all
frames into a temporary folder and move them in only when every frame succeeded.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..errors import MoGe4DInputError
from ..types import Trajectories
from ._atomic import atomic_dir, atomic_path, check_output_path
from ._convert import as_float, check_shape, to_numpy

__all__ = [
    "SH_C0",
    "OPACITY_EPS",
    "write_ply_points",
    "write_splat_ply",
    "write_ply_sequence",
    "write_splat_sequence",
]

SH_C0 = 0.28209479177387814
"""Degree-0 real spherical-harmonic constant 1 / (2 sqrt(pi))."""

OPACITY_EPS = 1e-6
"""Opacities are clipped to [OPACITY_EPS, 1 - OPACITY_EPS] before the logit."""

_AXES = ("opencv", "opengl")


def _check_axes(axes: str, what: str) -> None:
    if axes not in _AXES:
        raise MoGe4DInputError(f"{what}: axes must be one of {_AXES}, got {axes!r}")


def _prepare_xyz(xyz: Any, what: str) -> np.ndarray:
    arr = to_numpy(xyz, f"{what}: xyz")
    check_shape(arr, f"{what}: xyz", (None, 3), "(N,3) point positions")
    if arr.shape[0] == 0:
        raise MoGe4DInputError(f"{what}: the point set is empty (N = 0); nothing to write")
    arr = as_float(arr, f"{what}: xyz", np.float64)
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise MoGe4DInputError(
            f"{what}: {int(bad.sum())} of {arr.shape[0]} points have NaN or inf coordinates; "
            "drop or sanitise them before export")
    return arr


def _prepare_rgb01(rgb: Any, n: int, what: str) -> np.ndarray:
    """Colours as float64 in [0,1], (N,3). uint8 input is divided by 255; float input is clipped."""
    arr = to_numpy(rgb, f"{what}: rgb")
    check_shape(arr, f"{what}: rgb", (n, 3), f"(N,3) with N = {n} matching xyz")
    if arr.dtype == np.uint8:
        return arr.astype(np.float64) / 255.0
    arr = as_float(arr, f"{what}: rgb", np.float64)
    if not np.isfinite(arr).all():
        raise MoGe4DInputError(f"{what}: rgb contains NaN or inf; colours must be float in [0,1] or uint8")
    return np.clip(arr, 0.0, 1.0)


def _to_uint8(rgb01: np.ndarray) -> np.ndarray:
    return np.rint(rgb01 * 255.0).astype(np.uint8)


def _apply_axes(xyz: np.ndarray, axes: str) -> np.ndarray:
    if axes == "opengl":
        xyz = xyz * np.array([1.0, -1.0, -1.0])
    return xyz


def _header(n: int, properties: list[tuple[str, str]]) -> bytes:
    lines = ["ply", "format binary_little_endian 1.0", "comment written by MoGe4D",
             f"element vertex {n}"]
    lines += [f"property {kind} {name}" for name, kind in properties]
    lines.append("end_header")
    return ("\n".join(lines) + "\n").encode("ascii")


_PLY_TYPE = {"<f4": "float", "u1": "uchar", "|u1": "uchar"}


def _write_records(path: Path, records: np.ndarray) -> None:
    props = [(name, _PLY_TYPE[records.dtype.fields[name][0].str]) for name in records.dtype.names]
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(_header(len(records), props))
            fh.write(records.tobytes())


def _point_records(xyz: np.ndarray, rgb01: np.ndarray, axes: str) -> np.ndarray:
    dtype = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                      ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    xyz = _apply_axes(xyz, axes).astype(np.float32)
    rgb = _to_uint8(rgb01)
    rec = np.empty(xyz.shape[0], dtype=dtype)
    for i, name in enumerate(("x", "y", "z")):
        rec[name] = xyz[:, i]
    for i, name in enumerate(("red", "green", "blue")):
        rec[name] = rgb[:, i]
    return rec


def write_ply_points(path: str | os.PathLike, xyz: Any, rgb: Any, *, axes: str = "opencv") -> Path:
    """Write a coloured point cloud as binary little-endian PLY; returns the path.

    xyz (N,3) finite positions (numpy or torch, any float dtype; written as float32);
    rgb (N,3) float in [0,1] (clipped, rounded to 0..255) or uint8. ``axes`` see the module docstring.
    """
    what = "write_ply_points"
    _check_axes(axes, what)
    path = check_output_path(path, what)
    xyz_np = _prepare_xyz(xyz, what)
    rgb01 = _prepare_rgb01(rgb, xyz_np.shape[0], what)
    _write_records(path, _point_records(xyz_np, rgb01, axes))
    return path


def _broadcast_param(value: Any, n: int, width: int, name: str, what: str) -> np.ndarray:
    """A scalar, (N,), (width,) or (N,width) parameter as float64 (N,width)."""
    arr = as_float(to_numpy(value, f"{what}: {name}") if not np.isscalar(value) else np.asarray(value),
                   f"{what}: {name}", np.float64)
    if arr.ndim == 0:
        arr = np.broadcast_to(arr, (n, width))
    elif arr.ndim == 1 and arr.shape[0] == n and (width == 1 or n != width):
        arr = np.broadcast_to(arr[:, None], (n, width))
    elif arr.ndim == 1 and arr.shape[0] == width:
        arr = np.broadcast_to(arr[None, :], (n, width))
    elif arr.shape != (n, width):
        raise MoGe4DInputError(
            f"{what}: {name} must be a number, ({n},), ({width},) or ({n},{width}); got shape {tuple(arr.shape)}")
    if not np.isfinite(arr).all():
        raise MoGe4DInputError(f"{what}: {name} contains NaN or inf")
    return np.array(arr, dtype=np.float64)


_SPLAT_FIELDS = ("x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
                 "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")


def _splat_records(xyz: np.ndarray, rgb01: np.ndarray, scale: Any, opacity: Any, rotation: Any,
                   axes: str, what: str) -> np.ndarray:
    n = xyz.shape[0]
    scales = _broadcast_param(scale, n, 3, "scale", what)
    if (scales <= 0).any():
        raise MoGe4DInputError(f"{what}: scale must be > 0 (it is stored as log(scale)); "
                               f"got min {scales.min():.3g}")
    opac = _broadcast_param(opacity, n, 1, "opacity", what)[:, 0]
    if (opac < 0).any() or (opac > 1).any():
        raise MoGe4DInputError(f"{what}: opacity must be in [0,1]; got [{opac.min():.3g}, {opac.max():.3g}]")
    if rotation is None:
        rot = np.zeros((n, 4))
        rot[:, 0] = 1.0
    else:
        rot = _broadcast_param(rotation, n, 4, "rotation (w,x,y,z)", what)
        norm = np.linalg.norm(rot, axis=1, keepdims=True)
        if (norm < 1e-12).any():
            raise MoGe4DInputError(f"{what}: rotation has zero-length quaternions; expected unit (w,x,y,z)")
        rot = rot / norm
    if axes == "opengl":
        # q' = R_flip q R_flip with R_flip = diag(1,-1,-1) (a rotation by pi about x):
        # (w, x, y, z) -> (w, x, -y, -z)
        rot = rot * np.array([1.0, 1.0, -1.0, -1.0])
    p = np.clip(opac, OPACITY_EPS, 1.0 - OPACITY_EPS)
    columns = [
        *_apply_axes(xyz, axes).T,
        np.zeros(n), np.zeros(n), np.zeros(n),
        *((rgb01 - 0.5) / SH_C0).T,
        np.log(p) - np.log1p(-p),
        *np.log(scales).T,
        *rot.T,
    ]
    rec = np.empty(n, dtype=np.dtype([(name, "<f4") for name in _SPLAT_FIELDS]))
    for name, col in zip(_SPLAT_FIELDS, columns):
        rec[name] = col
    return rec


def write_splat_ply(
    path: str | os.PathLike,
    xyz: Any,
    rgb: Any,
    *,
    scale: Any = 1e-4,
    opacity: Any = 1.0,
    rotation: Any = None,
    axes: str = "opencv",
) -> Path:
    """Write isotropic / anisotropic Gaussians as a standard 3DGS PLY (SH degree 0); returns the path.

    xyz (N,3) centres; rgb (N,3) float [0,1] or uint8; scale: one number, (N,), (3,) or (N,3) linear
    standard deviations in scene units (> 0); opacity: number or (N,) in [0,1]; rotation: None
    (identity) or (4,) / (N,4) quaternions (w,x,y,z), normalised here. The stored fields and their
    transforms are listed in the module docstring.
    """
    what = "write_splat_ply"
    _check_axes(axes, what)
    path = check_output_path(path, what)
    xyz_np = _prepare_xyz(xyz, what)
    rgb01 = _prepare_rgb01(rgb, xyz_np.shape[0], what)
    _write_records(path, _splat_records(xyz_np, rgb01, scale, opacity, rotation, axes, what))
    return path


def _check_prefix(prefix: str, what: str) -> None:
    if not isinstance(prefix, str) or not prefix or any(c in prefix for c in "/\\\0") or prefix.startswith("."):
        raise MoGe4DInputError(
            f"{what}: prefix must be a plain file-name prefix (no path separators, not starting with '.'), "
            f"got {prefix!r}")


def _frame_mask(traj: Trajectories, t: int, visible_only: bool) -> Optional[np.ndarray]:
    if visible_only and traj.visibility is not None:
        return traj.visibility[t].detach().cpu().numpy().astype(bool)
    return None


def _set_xyz(base: np.ndarray, xyz: np.ndarray, keep: Optional[np.ndarray], axes: str) -> np.ndarray:
    """``base`` with x, y, z replaced by ``xyz`` (N,3) in ``axes``; rows ``keep`` only (a copy) when
    given, else ``base`` itself is overwritten (one buffer reused for every frame)."""
    rec = base if keep is None else base[keep]
    xyz = _apply_axes(xyz if keep is None else xyz[keep], axes)
    for i, name in enumerate(("x", "y", "z")):
        rec[name] = xyz[:, i]
    return rec


def _write_sequence(traj: Trajectories, folder: str | os.PathLike, prefix: str, visible_only: bool,
                    axes: str, what: str, template: Callable[[np.ndarray], np.ndarray]) -> list[Path]:
    """Write one PLY per frame. ``template(rgb01)`` builds the per-point records once (colours,
    splat attributes); each frame only replaces x, y, z. Inputs are validated before any file is
    created; frames go to a temporary folder that is moved in only when all were written."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise MoGe4DInputError(f"{what}: {folder} exists and is not a folder")
    rgb01 = traj.colors.detach().cpu().double().clamp(0, 1).numpy()
    base = template(rgb01)
    masks = [_frame_mask(traj, t, visible_only) for t in range(traj.num_frames)]
    for t, keep in enumerate(masks):
        if keep is not None and not keep.any():
            raise MoGe4DInputError(f"{what}: frame {t} has no visible points; pass visible_only=False")
    names = [f"{prefix}_{t:05d}.ply" for t in range(traj.num_frames)]
    with atomic_dir(folder) as tmp:
        for t, (name, keep) in enumerate(zip(names, masks)):
            xyz = traj.points[t].detach().cpu().double().numpy()
            _write_records(tmp / name, _set_xyz(base, xyz, keep, axes))
    return [folder / name for name in names]


def _check_sequence_args(traj: Any, prefix: str, axes: str, what: str) -> None:
    if not isinstance(traj, Trajectories):
        raise MoGe4DInputError(f"{what}: expected Trajectories, got {type(traj).__name__}")
    _check_prefix(prefix, what)
    _check_axes(axes, what)


def write_ply_sequence(
    traj: Trajectories,
    folder: str | os.PathLike,
    prefix: str = "frame",
    *,
    visible_only: bool = False,
    axes: str = "opencv",
) -> list[Path]:
    """Write one point-cloud PLY per frame, ``<folder>/<prefix>_00000.ply`` ...; returns the paths.

    All frames are written into a temporary folder first and moved into ``folder`` only when every
    frame succeeded (existing files of the same names are replaced). ``visible_only`` drops points
    whose visibility is False in that frame (all points are written when the trajectories carry no
    visibility).
    """
    what = "write_ply_sequence"
    _check_sequence_args(traj, prefix, axes, what)
    n = traj.num_points
    return _write_sequence(traj, folder, prefix, visible_only, axes, what,
                           lambda rgb01: _point_records(np.zeros((n, 3)), rgb01, "opencv"))


def write_splat_sequence(
    traj: Trajectories,
    folder: str | os.PathLike,
    prefix: str = "splat",
    *,
    scale: Any = 1e-4,
    opacity: Any = 1.0,
    visible_only: bool = False,
    axes: str = "opencv",
) -> list[Path]:
    """Write one 3DGS splat PLY per frame (see :func:`write_splat_ply`), all-or-nothing like
    :func:`write_ply_sequence`. ``scale`` / ``opacity`` are a number or per-point arrays ((N,3) / (N,),
    constant over time); with ``visible_only`` each frame keeps the rows of its visible points."""
    what = "write_splat_sequence"
    _check_sequence_args(traj, prefix, axes, what)
    n = traj.num_points
    return _write_sequence(traj, folder, prefix, visible_only, axes, what,
                           lambda rgb01: _splat_records(np.zeros((n, 3)), rgb01, scale, opacity, None, axes, what))
