"""Reading and writing 4D trajectories: TrajScene / DELTA ``*_dt3d_pred.pkl`` and our own ``.npz``.

TrajScene / DELTA pkl (reference ``moge4d_official.md`` section F): a dict with

- ``coords``  ``(T,N,3)`` or ``(1,T,N,3)`` float, metric xyz in the first-frame camera (OpenCV axes),
  N points row-major over the pixel grid (``N = 384*512 = 196608`` for TrajScene / DELTA);
- ``colors``  ``(N,3)`` or ``(1,N,3)``, 0..255 (frame-0 colour of each point);
- ``vis``     ``(T,N)`` or ``(1,T,N)`` (a trailing singleton axis is also accepted), optional;
  bool, or float where values > 0.5 count as visible.

Values may be numpy arrays or torch tensors (both occur in the wild); the file may be a plain
pickle or a ``torch.save`` file. It is read with :func:`moge4d_core.io.safe_pickle.load_pickle`,
which refuses pickles that would run code unless ``allow_unsafe=True``.

Our own ``.npz`` (``format = "moge4d_trajectories"``, ``version = 1``), read with
``allow_pickle=False``:

==============  ===============  ======================================================
key             dtype / shape    meaning
==============  ===============  ======================================================
``points``      float32 (T,N,3)  world = first-frame camera, OpenCV axes
``colors``      float32 (N,3)    [0, 1]
``visibility``  bool (T,N)       optional
``height``      int64 ()         pixel grid, N == height*width, row-major
``width``       int64 ()
``K``           float32 (3,3)    optional pixel intrinsics of that grid
``fps``         float64 ()
``format``      str ()           ``"moge4d_trajectories"``
``version``     int64 ()         1
==============  ===============  ======================================================
"""
from __future__ import annotations

import os
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..errors import MoGe4DInputError
from ..types import Trajectories
from ._atomic import atomic_path, check_output_path
from ._convert import as_float, check_shape, to_numpy
from .safe_pickle import load_pickle

__all__ = [
    "DELTA_GRID",
    "NPZ_FORMAT",
    "NPZ_VERSION",
    "read_trajectory_pkl",
    "trajectories_from_dict",
    "save_trajectories_npz",
    "load_trajectories_npz",
    "load_trajectories",
]

DELTA_GRID = (384, 512)
"""(height, width) of the TrajScene-60K / DELTA trajectory grid (N = 196608 points)."""

NPZ_FORMAT = "moge4d_trajectories"
NPZ_VERSION = 1

_PKL_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth")


def _resolve_grid(n: int, height: Optional[int], width: Optional[int], source: str) -> tuple[int, int]:
    if height is None and width is None:
        if n == DELTA_GRID[0] * DELTA_GRID[1]:
            return DELTA_GRID
        raise MoGe4DInputError(
            f"{source}: N = {n} points is not the TrajScene/DELTA grid {DELTA_GRID[0]}x{DELTA_GRID[1]} "
            f"(= {DELTA_GRID[0] * DELTA_GRID[1]}); pass height= and width= of the pixel grid the points "
            "were sampled on (row-major, N == height*width)")
    if height is None or width is None:
        given, name = (height, "height") if height is not None else (width, "width")
        if int(given) <= 0 or n % int(given):
            raise MoGe4DInputError(
                f"{source}: N = {n} points is not divisible by {name} = {given}; pass both height= and width=")
        other = n // int(given)
        return (int(given), other) if name == "height" else (other, int(given))
    height, width = int(height), int(width)
    if height <= 0 or width <= 0 or height * width != n:
        raise MoGe4DInputError(
            f"{source}: N = {n} points does not match height*width = {height}*{width} = {height * width}; "
            "the points must be one per pixel of that grid, row-major")
    return height, width


def _strip_batch(arr: np.ndarray, name: str, ndim: int, what: str) -> np.ndarray:
    """Drop a leading batch axis of size 1 (``(1,...)``) when the array has ``ndim + 1`` axes."""
    if arr.ndim == ndim + 1:
        if arr.shape[0] != 1:
            raise MoGe4DInputError(
                f"{name}: leading batch axis of size {arr.shape[0]} in shape {tuple(arr.shape)}; expected "
                f"{what} or a batch of one (1,...); split multi-scene files first")
        arr = arr[0]
    if arr.ndim != ndim:
        raise MoGe4DInputError(f"{name}: expected {what} (optionally with a leading batch axis of 1), "
                               f"got {arr.ndim} axes with shape {tuple(arr.shape)}")
    return arr


def _sanitize_points(coords: np.ndarray, bad: np.ndarray, source: str) -> np.ndarray:
    """Replace non-finite positions (``bad`` (T,N)) by the point's first finite position.

    Points with no finite position in any frame take the median of all finite positions.
    """
    good = ~bad
    if not good.any():
        raise MoGe4DInputError(f"{source}: every point position is NaN or inf; nothing to sanitise")
    n = coords.shape[1]
    first = np.argmax(good, axis=0)                       # first finite frame of each point
    anchor = coords[first, np.arange(n)].copy()           # (N,3)
    never = ~good.any(axis=0)
    if never.any():
        anchor[never] = np.median(coords[good], axis=0)
    return np.where(bad[..., None], anchor[None], coords)


def trajectories_from_dict(
    data: Any,
    *,
    source: str = "trajectory dict",
    height: Optional[int] = None,
    width: Optional[int] = None,
    sanitize: bool = False,
    fps: float = 8.0,
    K: Optional[torch.Tensor] = None,
) -> Trajectories:
    """Build :class:`Trajectories` from a TrajScene / DELTA dict (``coords``, ``colors``, ``vis``).

    Shapes accepted: coords ``(T,N,3)`` / ``(1,T,N,3)``; colors ``(N,3)`` / ``(1,N,3)`` in 0..255;
    vis ``(T,N)`` / ``(1,T,N)`` / with a trailing axis of 1, bool or float (> 0.5 = visible).
    The grid defaults to 384x512 when N == 196608, else ``height`` / ``width`` are required (one
    of them is enough when it divides N). Colours are divided by 255 and clipped to [0, 1] (a
    ``UserWarning`` is issued when they all lie in [0, 1], i.e. were probably stored pre-scaled).

    Non-finite values: by default NaN / inf point positions raise :class:`MoGe4DInputError` naming
    how many there are. With ``sanitize=True`` each non-finite position is replaced by that point's
    frame-0 position (its first finite one if frame 0 is bad; the median of all finite positions if
    the point is never finite) and its visibility is set to False for that frame (a visibility
    array of all True is created when the file has none); NaN colours become 0 and NaN visibility
    False. ``source`` names the input in error messages.
    """
    if not isinstance(data, Mapping):
        raise MoGe4DInputError(
            f"{source}: expected a dict with keys 'coords', 'colors' (and optional 'vis'), "
            f"got {type(data).__name__}")
    keys = ", ".join(repr(k) for k in list(data.keys())[:10]) or "none"
    for key in ("coords", "colors"):
        if key not in data:
            raise MoGe4DInputError(
                f"{source}: missing key '{key}' (keys found: {keys}); a TrajScene/DELTA trajectory "
                "file holds 'coords' (T,N,3), 'colors' (N,3) and optionally 'vis' (T,N)")

    coords = to_numpy(data["coords"], f"{source}['coords']")
    coords = _strip_batch(coords, f"{source}['coords']", 3, "(T,N,3)")
    if coords.shape[-1] != 3:
        raise MoGe4DInputError(f"{source}['coords']: expected (T,N,3) xyz, got shape {tuple(coords.shape)}")
    t, n, _ = coords.shape
    if t == 0:
        raise MoGe4DInputError(f"{source}['coords']: has no frames (T = 0), shape {tuple(coords.shape)}")
    if n == 0:
        raise MoGe4DInputError(f"{source}['coords']: the point set is empty (N = 0), shape {tuple(coords.shape)}")
    coords = as_float(coords, f"{source}['coords']", np.float32)
    h, w = _resolve_grid(n, height, width, source)

    colors = to_numpy(data["colors"], f"{source}['colors']")
    colors = _strip_batch(colors, f"{source}['colors']", 2, "(N,3)")
    check_shape(colors, f"{source}['colors']", (n, 3), f"(N,3) with N = {n} matching coords")
    colors = as_float(colors, f"{source}['colors']", np.float64)
    nan_colors = ~np.isfinite(colors)
    if nan_colors.any():
        if not sanitize:
            raise MoGe4DInputError(
                f"{source}['colors']: {int(nan_colors.any(-1).sum())} of {n} colours are NaN or inf; "
                "fix the file or pass sanitize=True (they become black)")
        colors = np.where(nan_colors, 0.0, colors)
    lo, hi = float(colors.min()), float(colors.max())
    if lo < -0.5 or hi > 255.5:
        raise MoGe4DInputError(
            f"{source}['colors']: values span [{lo:.3g}, {hi:.3g}], expected 0..255 (TrajScene/DELTA "
            "store frame-0 RGB in 0..255)")
    if hi <= 1.0 and hi > 0.0 and colors.size > 3:
        warnings.warn(f"{source}['colors']: all values are <= 1 although TrajScene/DELTA colours are "
                      "0..255; they are still divided by 255 (the scene will look almost black). "
                      "Scale them to 0..255 if they were stored in [0,1].", stacklevel=3)
    colors = np.clip(colors / 255.0, 0.0, 1.0).astype(np.float32)

    vis = None
    vis_key = "vis" if "vis" in data else ("visibility" if "visibility" in data else None)
    if vis_key is not None and data[vis_key] is not None:
        name = f"{source}['{vis_key}']"
        vis = to_numpy(data[vis_key], name)
        if vis.ndim == 4 and vis.shape[0] == 1 and vis.shape[-1] == 1:
            vis = vis[0, ..., 0]
        elif vis.ndim == 3 and vis.shape == (1, t, n):
            vis = vis[0]
        elif vis.ndim == 3 and vis.shape == (t, n, 1):
            vis = vis[..., 0]
        check_shape(vis, name, (t, n), f"(T,N) = ({t},{n}) matching coords")
        if vis.dtype != np.bool_:
            vis = as_float(vis, name, np.float64)
            if not sanitize and not np.isfinite(vis).all():
                raise MoGe4DInputError(f"{name}: contains NaN or inf; pass sanitize=True to treat them as not visible")
            vis = np.nan_to_num(vis, nan=0.0) > 0.5

    bad = ~np.isfinite(coords).all(axis=-1)
    if bad.any():
        count = int(bad.sum())
        if not sanitize:
            frames = int(bad.any(axis=1).sum())
            raise MoGe4DInputError(
                f"{source}['coords']: {count} of {t * n} point positions (in {frames} of {t} frames) are NaN "
                "or inf; fix the file or pass sanitize=True (they are replaced by the point's frame-0 "
                "position and marked not visible)")
        coords = _sanitize_points(coords, bad, source)
        vis = (np.ones((t, n), dtype=bool) if vis is None else vis) & ~bad

    try:
        return Trajectories(
            points=torch.from_numpy(np.ascontiguousarray(coords, dtype=np.float32)),
            colors=torch.from_numpy(np.ascontiguousarray(colors)),
            height=h,
            width=w,
            visibility=None if vis is None else torch.from_numpy(np.ascontiguousarray(vis)),
            K=None if K is None else torch.as_tensor(K, dtype=torch.float32),
            fps=float(fps),
        )
    except MoGe4DInputError as exc:
        raise MoGe4DInputError(f"{source}: {exc}") from None


def read_trajectory_pkl(
    path: str | os.PathLike,
    *,
    height: Optional[int] = None,
    width: Optional[int] = None,
    allow_unsafe: bool = False,
    sanitize: bool = False,
    fps: float = 8.0,
    K: Optional[torch.Tensor] = None,
) -> Trajectories:
    """Read a TrajScene / DELTA ``*_dt3d_pred.pkl`` (plain pickle or ``torch.save``) as :class:`Trajectories`.

    See :func:`trajectories_from_dict` for the accepted keys, shapes, the grid default (384x512 when
    N == 196608) and ``sanitize``. The file is unpickled restrictedly (numpy arrays / torch tensors
    only) unless ``allow_unsafe=True``. Points come back float32 on the CPU, in the file's frame
    (first-frame camera, OpenCV axes). DELTA's intrinsics are not stored in the file; pass ``K``
    (3,3) pixel intrinsics of the grid if known.
    """
    data = load_pickle(path, allow_unsafe=allow_unsafe)
    return trajectories_from_dict(data, source=str(path), height=height, width=width,
                                  sanitize=sanitize, fps=fps, K=K)


def save_trajectories_npz(traj: Trajectories, path: str | os.PathLike, *, compress: bool = False) -> Path:
    """Write ``traj`` to our ``.npz`` format (see the module docstring); returns the path written.

    Written to a temporary file in the same folder and renamed, so a failure leaves no partial file.
    ``compress=True`` uses zip deflate (smaller, slower).
    """
    if not isinstance(traj, Trajectories):
        raise MoGe4DInputError(f"save_trajectories_npz: expected Trajectories, got {type(traj).__name__}")
    path = check_output_path(path, "save_trajectories_npz")
    arrays: dict[str, np.ndarray] = {
        "points": traj.points.detach().cpu().to(torch.float32).numpy(),
        "colors": traj.colors.detach().cpu().to(torch.float32).numpy(),
        "height": np.asarray(int(traj.height), dtype=np.int64),
        "width": np.asarray(int(traj.width), dtype=np.int64),
        "fps": np.asarray(float(traj.fps), dtype=np.float64),
        "format": np.asarray(NPZ_FORMAT),
        "version": np.asarray(NPZ_VERSION, dtype=np.int64),
    }
    if traj.visibility is not None:
        arrays["visibility"] = traj.visibility.detach().cpu().to(torch.bool).numpy()
    if traj.K is not None:
        arrays["K"] = traj.K.detach().cpu().to(torch.float32).numpy()
    save = np.savez_compressed if compress else np.savez
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            save(fh, **arrays)
    return path


def load_trajectories_npz(path: str | os.PathLike) -> Trajectories:
    """Read a ``.npz`` written by :func:`save_trajectories_npz` (``np.load`` with ``allow_pickle=False``)."""
    path = Path(path)
    if not path.is_file():
        raise MoGe4DInputError(f"{path}: file not found (expected a .npz trajectory file)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            contents = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise MoGe4DInputError(f"{path}: not a readable .npz file ({exc})") from None
    fmt = str(contents.get("format", ""))
    if fmt != NPZ_FORMAT:
        raise MoGe4DInputError(
            f"{path}: not a MoGe4D trajectory .npz (format = {fmt!r}, expected {NPZ_FORMAT!r}); "
            "write it with save_trajectories_npz")
    version = int(contents.get("version", -1))
    if version > NPZ_VERSION or version < 1:
        raise MoGe4DInputError(
            f"{path}: trajectory .npz version {version} is not supported (this code reads versions 1.."
            f"{NPZ_VERSION}); update MoGe4D")
    missing = [k for k in ("points", "colors", "height", "width") if k not in contents]
    if missing:
        raise MoGe4DInputError(f"{path}: missing arrays {missing} in the trajectory .npz")
    try:
        return Trajectories(
            points=torch.from_numpy(np.asarray(contents["points"], dtype=np.float32)),
            colors=torch.from_numpy(np.asarray(contents["colors"], dtype=np.float32)),
            height=int(contents["height"]),
            width=int(contents["width"]),
            visibility=(torch.from_numpy(np.asarray(contents["visibility"], dtype=bool))
                        if "visibility" in contents else None),
            K=torch.from_numpy(np.asarray(contents["K"], dtype=np.float32)) if "K" in contents else None,
            fps=float(contents["fps"]) if "fps" in contents else 8.0,
        )
    except MoGe4DInputError as exc:
        raise MoGe4DInputError(f"{path}: {exc}") from None


def load_trajectories(
    path: str | os.PathLike,
    *,
    height: Optional[int] = None,
    width: Optional[int] = None,
    allow_unsafe: bool = False,
    sanitize: bool = False,
) -> Trajectories:
    """Load trajectories from ``.npz`` (ours) or ``.pkl`` / ``.pickle`` / ``.pt`` / ``.pth`` (TrajScene / DELTA).

    The keyword arguments apply to pickle files only (see :func:`read_trajectory_pkl`).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return load_trajectories_npz(path)
    if suffix in _PKL_SUFFIXES:
        return read_trajectory_pkl(path, height=height, width=width, allow_unsafe=allow_unsafe,
                                   sanitize=sanitize)
    raise MoGe4DInputError(
        f"{path}: unknown trajectory file type {suffix or '(no suffix)'!r}; expected .npz (MoGe4D) or "
        f"{', '.join(_PKL_SUFFIXES)} (TrajScene / DELTA)")
