"""Prepare a training set in the TrajScene-60K layout from your own videos and a 3D tracker's output.

Input folder (flat, not searched recursively), per sample ``<id>``:

* ``<id>.mp4``             the source video;
* ``<id>.txt``             its caption (UTF-8, not empty);
* ``<id>_dt3d_pred.pkl``   the tracker output in DELTA's layout (reference ``moge4d_official.md`` F): a dict
  with ``coords`` (T,N,3) or (1,T,N,3) metric xyz (OpenCV camera axes, first-frame camera), ``colors``
  (N,3) / (1,N,3) in 0..255, optional ``vis`` (T,N); numpy arrays or torch tensors. N = H*W points,
  row-major over the tracker's pixel grid.

Other files (e.g. an old ``_dt3d_render.mp4``) are ignored. Output folder (what
:class:`training.datasets.TrajSceneDataset` reads), per kept sample:

* ``<id>.mp4``, ``<id>.txt``  copied byte for byte;
* ``<id>_dt3d_pred.pkl``      ``{"coords": float32 (T,N,3), "colors": float32 (N,3) 0..255, "vis": bool (T,N)}``
  as numpy arrays (a leading batch axis of 1 is dropped). NaN / inf positions are replaced by the point's
  frame-0 position (its first finite one) and marked not visible, as
  :func:`moge4d_core.io.trajectories_from_dict` ``(sanitize=True)`` does; NaN colours become 0; a file
  without ``vis`` gets all True (except sanitised positions);
* ``<id>_dt3d_render.mp4``   the trajectories rendered with our point renderer
  (:func:`moge4d_core.render.render_points`, mode ``"points"``, black background) along the camera preset
  ``camera`` (:func:`moge4d_core.camera.paths.make_camera_path`; default ``orbit_left`` with
  ``angle_deg = 15`` as :mod:`training.datasets.synthetic` uses), frame t of the points seen by camera t,
  at the grid size H x W with DELTA's intrinsics ``K = [[W, 0, W/2], [0, W, H/2], [0, 0, 1]]`` (square
  pixels, f = W; reference B). Points whose first-frame depth is invalid (filter 1) are not drawn;
* ``<id>_mask_render.mp4``   that render's hole mask, white = no point landed on the pixel;
* ``prepare_report.json``    the report (one per run, see :class:`PrepareReport`).

With ``tar = n`` the kept samples are packed ``n`` per archive into ``<first>-<last>.tar.gz`` (6-digit
ordinals of the kept samples, files at the archive's top level), as the published ranges are.

Grid: ``grid = (H, W)`` must satisfy H*W == N. ``grid=None`` (CLI default) infers it: 384x512 (DELTA's
working size) when N == 196608, else the source video's frame size when N equals its pixel count, else
the sample is an error asking for ``--grid``.

Quality filters (the paper drops samples with "depth errors or anomalous values" without formulas; these
are our definitions). ``z0`` = the raw frame-0 depths ``coords[0, :, 2]``; a depth is *valid* when it
is finite and ``min_depth < z < max_depth`` (defaults 1e-3, 1e3, metres):

1. ``invalid_depth``: ``fraction = #(invalid z0) / N``; dropped when ``fraction > max_invalid_fraction``
   (default 0.05). Catches failed depth (sky at infinity, zeros, NaN).
2. ``depth_spread``: over the valid z0, ``ratio = std(z0) / median(z0)`` (population std); dropped when
   ``ratio > max_depth_std_ratio`` (default 1.0). A scene whose depth deviation exceeds its typical
   depth is dominated by a few very far (or very near) points, which the depth-guided normalisation
   (division by z0) turns into huge or vanishing targets. Not evaluated when no z0 is valid.
3. ``scale_drift``: a depth-scale check over time. For each frame t >= 1, ``S_t`` = the points that
   have a valid z0, are visible in frame 0 and in frame t (``vis``; all points when there is none)
   and have a valid depth ``z_t`` in frame t. The frame's global scale factor is
   ``s_t = median over S_t of z_t / z0`` (median of per-point ratios: a global rescale by s gives
   exactly s, and moving objects, as long as they are a minority, do not move it). The measured value
   is ``drift = max_t max(s_t, 1/s_t)``; dropped when ``drift > max_scale_drift`` = r (default 1.5),
   i.e. unless every ``s_t`` lies in [1/r, r]. Catches trackers whose depth scale jumps between
   frames. Frames with an empty ``S_t`` are not checked. Note: if the tracker reports points in
   per-frame camera coordinates, a camera moving towards the scene also lowers ``s_t`` (by the
   fraction of the scene depth it travelled); raise r for such fast dolly shots.
4. ``coord_limit`` (the release's ``skip_large_depth`` rule, reference B): dropped when
   ``coords.max() > coord_limit`` (default 500, over x, y, z of all frames, after sanitising;
   :func:`training.datasets.samples.exceeds_coordinate_limit`); ``coord_limit=None`` disables it.

Every filter is measured on every sample; a dropped sample lists all filters it failed, each with its
measured value and threshold.

Errors: a sample with a missing caption / pkl / video, a pkl of the wrong shapes or an unreadable
video is recorded in the report as an error (:class:`MoGe4DInputError` message) and skipped;
``strict=True`` raises instead. Nothing is half-written: each sample's files are written to a temporary
folder inside the output and moved in only when all of them succeeded; archives are written to a
temporary file and renamed (:func:`os.replace`).

CLI::

    python -m training.prepare --input DIR --out DIR [--grid 384x512] [--camera orbit_left]
        [--camera-param angle_deg=15] [--tar 50] [--max-invalid-fraction 0.05] [--min-depth 1e-3]
        [--max-depth 1e3] [--max-depth-std-ratio 1.0] [--max-scale-drift 1.5] [--coord-limit 500 |
        --no-coord-limit] [--strict]

prints a summary and exits 0 when at least one sample was kept, 1 when none was, 2 on a usage error.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import pickle
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch

from moge4d_core.errors import MoGe4DInputError, require
from moge4d_core.camera.paths import make_camera_path
from moge4d_core.camera.presets import CAMERA_PRESETS
from moge4d_core.io import DELTA_GRID, load_pickle, read_video_frames, trajectories_from_dict, write_mp4
from moge4d_core.io._atomic import atomic_dir, atomic_path
from moge4d_core.render import render_points

from .datasets.samples import COORD_LIMIT, exceeds_coordinate_limit
from .datasets.trajscene import split_member_name

__all__ = ["PrepareOptions", "FilterCheck", "SampleResult", "PrepareReport", "prepare_dataset",
           "quality_checks", "delta_intrinsics", "parse_grid", "main", "FILTERS", "REPORT_NAME",
           "KNOWN_GRIDS", "DEFAULT_CAMERA_PARAMS"]

FILTERS = ("invalid_depth", "depth_spread", "scale_drift", "coord_limit")
REPORT_NAME = "prepare_report.json"
KNOWN_GRIDS = (DELTA_GRID,)
"""Grids recognised from N alone (DELTA's 384x512)."""
DEFAULT_CAMERA_PARAMS = {"orbit_left": {"angle_deg": 15.0}}
"""Preset parameters used when ``camera_params`` is None (presets not listed use their own defaults)."""

_INPUT_KINDS = {"video": ".mp4", "caption": ".txt", "pkl": "_dt3d_pred.pkl"}


@dataclass
class PrepareOptions:
    """Options of :func:`prepare_dataset` (see the module docstring for the filters' exact definitions).

    grid: (H, W) of the tracker's point grid, or None to infer it.
    camera / camera_params: preset of the novel-view render and its parameters (None: the defaults of
        :data:`DEFAULT_CAMERA_PARAMS`, else the preset's own).
    tar: samples per ``.tar.gz`` range archive; 0 writes loose files.
    min_depth, max_depth: a depth is valid when finite and strictly between these.
    max_invalid_fraction, max_depth_std_ratio, max_scale_drift, coord_limit: filter thresholds
        (``coord_limit=None`` disables the release's coords.max() rule).
    strict: raise on the first bad sample instead of reporting and skipping it.
    point_size: render footprint in pixels; render_backend: ``"auto"`` / ``"torch"`` / ``"triton"``.
    fps: frame rate of the render videos (None: the source video's).
    allow_unsafe_pickle: unpickle without restriction (trusted files only).
    compresslevel: gzip level of the archives (1 = fast; float trajectories barely compress).
    """

    grid: Optional[tuple[int, int]] = None
    camera: str = "orbit_left"
    camera_params: Optional[dict] = None
    tar: int = 0
    min_depth: float = 1e-3
    max_depth: float = 1e3
    max_invalid_fraction: float = 0.05
    max_depth_std_ratio: float = 1.0
    max_scale_drift: float = 1.5
    coord_limit: Optional[float] = COORD_LIMIT
    strict: bool = False
    point_size: int = 1
    render_backend: str = "auto"
    fps: Optional[float] = None
    allow_unsafe_pickle: bool = False
    compresslevel: int = 1

    def validate(self) -> None:
        """Raise :class:`MoGe4DInputError` naming the first invalid option."""
        if self.grid is not None:
            require(len(self.grid) == 2 and all(int(v) >= 1 for v in self.grid),
                    f"prepare: grid must be (H, W) with positive sizes, got {self.grid}")
        require(isinstance(self.camera, str) and self.camera in CAMERA_PRESETS,
                f"prepare: unknown camera preset {self.camera!r}; valid presets: {', '.join(CAMERA_PRESETS)}")
        require(self.camera_params is None or isinstance(self.camera_params, dict),
                f"prepare: camera_params must be a dict or None, got {type(self.camera_params).__name__}")
        require(isinstance(self.tar, int) and self.tar >= 0, f"prepare: tar must be an integer >= 0, got {self.tar!r}")
        require(0 <= self.min_depth < self.max_depth,
                f"prepare: need 0 <= min_depth < max_depth, got {self.min_depth}, {self.max_depth}")
        require(0.0 <= self.max_invalid_fraction <= 1.0,
                f"prepare: max_invalid_fraction must be in [0, 1], got {self.max_invalid_fraction}")
        require(self.max_depth_std_ratio > 0, f"prepare: max_depth_std_ratio must be > 0, got {self.max_depth_std_ratio}")
        require(self.max_scale_drift >= 1.0, f"prepare: max_scale_drift must be >= 1 (a ratio), got {self.max_scale_drift}")
        require(self.coord_limit is None or math.isfinite(self.coord_limit),
                f"prepare: coord_limit must be a finite number or None, got {self.coord_limit}")
        require(self.fps is None or self.fps > 0, f"prepare: fps must be > 0, got {self.fps}")
        require(1 <= self.point_size <= 64, f"prepare: point_size must be in [1, 64], got {self.point_size}")
        require(0 <= self.compresslevel <= 9, f"prepare: compresslevel must be in 0..9, got {self.compresslevel}")

    def resolved_camera_params(self) -> dict:
        if self.camera_params is not None:
            return dict(self.camera_params)
        return dict(DEFAULT_CAMERA_PARAMS.get(self.camera, {}))


@dataclass
class FilterCheck:
    """One quality filter measured on one sample.

    value: the measured quantity (None when not evaluated); threshold: the limit it is compared to;
    passed: whether the sample passes this filter; detail: a human-readable explanation.
    """

    name: str
    value: Optional[float]
    threshold: Optional[float]
    passed: bool
    detail: str = ""


@dataclass
class SampleResult:
    """What happened to one input sample: status ``"kept"``, ``"dropped"`` (failed filters) or ``"error"``."""

    id: str
    status: str
    checks: list[FilterCheck] = field(default_factory=list)
    message: str = ""
    frames: Optional[int] = None
    grid: Optional[tuple[int, int]] = None
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[FilterCheck]:
        """The filters this sample failed (empty unless dropped)."""
        return [c for c in self.checks if not c.passed]


@dataclass
class PrepareReport:
    """Outcome of :func:`prepare_dataset`; ``samples`` in input order (sorted ids)."""

    input_dir: str
    out_dir: str
    options: dict
    samples: list[SampleResult] = field(default_factory=list)
    archives: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def kept(self) -> list[str]:
        return [s.id for s in self.samples if s.status == "kept"]

    @property
    def dropped(self) -> dict[str, list[FilterCheck]]:
        """id -> the filters it failed."""
        return {s.id: s.failed for s in self.samples if s.status == "dropped"}

    @property
    def errors(self) -> dict[str, str]:
        """id -> error message."""
        return {s.id: s.message for s in self.samples if s.status == "error"}

    def to_dict(self) -> dict:
        return {
            "input_dir": self.input_dir, "out_dir": self.out_dir, "options": self.options,
            "kept": self.kept,
            "dropped": {i: [dataclasses.asdict(c) for c in checks] for i, checks in self.dropped.items()},
            "errors": self.errors, "archives": self.archives, "seconds": round(self.seconds, 3),
            "samples": [dataclasses.asdict(s) for s in self.samples],
        }

    def summary(self) -> str:
        lines = [f"prepare: {len(self.samples)} samples in {self.input_dir} -> {self.out_dir}: "
                 f"{len(self.kept)} kept, {len(self.dropped)} dropped, {len(self.errors)} errors "
                 f"({self.seconds:.1f} s)"]
        for sid, checks in self.dropped.items():
            for c in checks:
                lines.append(f"  dropped {sid}: {c.name} = {_fmt(c.value)} > {_fmt(c.threshold)} ({c.detail})")
        for sid, msg in self.errors.items():
            lines.append(f"  error   {sid}: {msg}")
        if self.archives:
            lines.append(f"  archives: {', '.join(Path(a).name for a in self.archives)}")
        return "\n".join(lines)


def _fmt(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def parse_grid(text: str) -> tuple[int, int]:
    """``"384x512"`` -> (384, 512) (height x width)."""
    parts = str(text).lower().replace("*", "x").split("x")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise MoGe4DInputError(f"grid {text!r}: expected HEIGHTxWIDTH, e.g. 384x512") from None
    require(h >= 1 and w >= 1, f"grid {text!r}: sizes must be positive")
    return h, w


def delta_intrinsics(height: int, width: int) -> torch.Tensor:
    """DELTA's pixel intrinsics at its grid (reference B): ``[[W, 0, W/2], [0, W, H/2], [0, 0, 1]]`` float32."""
    return torch.tensor([[width, 0.0, width / 2.0], [0.0, width, height / 2.0], [0.0, 0.0, 1.0]],
                        dtype=torch.float32)


# --------------------------------------------------------------------------------------------- filters
def quality_checks(coords: Any, visibility: Optional[Any], options: Optional[PrepareOptions] = None) -> list[FilterCheck]:
    """Measure the four filters on raw trajectories (see the module docstring for the definitions).

    Args:
        coords: (T,N,3) raw positions (numpy or torch; NaN / inf allowed: they count as invalid depths).
        visibility: (T,N) bool or None (all visible).
        options: thresholds (defaults of :class:`PrepareOptions`).

    Returns:
        One :class:`FilterCheck` per name in :data:`FILTERS`, in that order.
    """
    o = options or PrepareOptions()
    if isinstance(coords, torch.Tensor):
        coords = coords.detach().cpu().float().numpy()
    coords = np.asarray(coords)
    require(coords.ndim == 3 and coords.shape[-1] == 3, f"quality_checks: coords must be (T,N,3), got {coords.shape}")
    t, n, _ = coords.shape
    z = coords[..., 2].astype(np.float64)
    finite = np.isfinite(coords).all(-1)                                   # (T,N)
    with np.errstate(invalid="ignore"):
        valid = finite & (z > o.min_depth) & (z < o.max_depth)             # (T,N)
    if visibility is None:
        vis = np.ones((t, n), dtype=bool)
    else:
        vis = (visibility.detach().cpu().numpy() if isinstance(visibility, torch.Tensor) else np.asarray(visibility))
        require(vis.shape == (t, n), f"quality_checks: visibility must be (T,N) = ({t},{n}), got {vis.shape}")
        vis = vis.astype(bool)
    checks = []

    # 1. invalid first-frame depth
    invalid = n - int(valid[0].sum())
    frac = invalid / n
    checks.append(FilterCheck("invalid_depth", frac, o.max_invalid_fraction, frac <= o.max_invalid_fraction,
                              f"{invalid} of {n} frame-0 depths are NaN/inf, <= {o.min_depth:g} or >= {o.max_depth:g}"))

    # 2. depth spread
    z0 = z[0][valid[0]]
    if z0.size:
        med = float(np.median(z0))
        ratio = float(z0.std() / med)
        checks.append(FilterCheck("depth_spread", ratio, o.max_depth_std_ratio, ratio <= o.max_depth_std_ratio,
                                  f"std(z0) = {z0.std():.4g}, median(z0) = {med:.4g} over {z0.size} valid depths"))
    else:
        checks.append(FilterCheck("depth_spread", None, o.max_depth_std_ratio, True,
                                  "not evaluated: no valid frame-0 depth"))

    # 3. global depth scale over time
    base = valid[0] & vis[0]
    worst, worst_t, worst_s, worst_n, checked = None, None, None, 0, 0
    for k in range(1, t):
        sel = base & vis[k] & valid[k]
        cnt = int(sel.sum())
        if cnt == 0:
            continue
        checked += 1
        s = float(np.median(z[k][sel] / z[0][sel]))
        d = max(s, 1.0 / s)
        if worst is None or d > worst:
            worst, worst_t, worst_s, worst_n = d, k, s, cnt
    r = o.max_scale_drift
    if worst is None:
        checks.append(FilterCheck("scale_drift", None, r, True,
                                  "not evaluated: no frame t >= 1 with points visible and valid in frames 0 and t"))
    else:
        checks.append(FilterCheck("scale_drift", worst, r, worst <= r,
                                  f"worst frame {worst_t}: median(z_t/z_0) = {worst_s:.4g} over {worst_n} co-visible "
                                  f"points (allowed [{1 / r:.4g}, {r:.4g}]; {checked} of {t - 1} frames checked)"))

    # 4. the release's coords.max() rule (on the sanitised positions, as the reader sees them)
    if o.coord_limit is None:
        checks.append(FilterCheck("coord_limit", None, None, True, "disabled"))
    else:
        pts = torch.from_numpy(np.where(finite[..., None], coords, -np.inf).astype(np.float32))
        top = float(pts.max()) if finite.any() else None
        passed = top is None or not exceeds_coordinate_limit(pts, o.coord_limit)
        checks.append(FilterCheck("coord_limit", top, float(o.coord_limit), passed,
                                  "max of x, y, z over all points and frames (non-finite positions excluded)"))
    return checks


# --------------------------------------------------------------------------------------------- one sample
@dataclass
class _Loaded:
    id: str
    files: dict
    caption_bytes: bytes
    raw_coords: np.ndarray          # (T,N,3) float32 as in the file (NaN kept)
    points: torch.Tensor            # (T,N,3) float32 sanitised
    colors01: torch.Tensor          # (N,3) [0,1]
    colors255: np.ndarray           # (N,3) float32
    vis_out: np.ndarray             # (T,N) bool (sanitised; all True when the file had none)
    vis_in: Optional[np.ndarray]    # (T,N) bool (sanitised) or None when the file had no vis
    grid: tuple[int, int]
    fps: float
    notes: list[str]


def _discover(input_dir: Path) -> dict[str, dict[str, Path]]:
    found: dict[str, dict[str, Path]] = {}
    for path in sorted(p for p in input_dir.iterdir() if p.is_file()):
        split = split_member_name(path.name)
        if split is None or split[1] not in _INPUT_KINDS:
            continue
        found.setdefault(split[0], {})[split[1]] = path
    return found


def _video_fps(path: Path) -> Optional[float]:
    import av

    try:
        with av.open(str(path)) as c:
            rate = c.streams.video[0].average_rate or c.streams.video[0].guessed_rate
            return float(rate) if rate else None
    except Exception:      # noqa: BLE001 - the frame rate is optional; decoding errors are reported elsewhere
        return None


def _resolve_grid(n: int, grid: Optional[tuple[int, int]], video_hw: tuple[int, int], where: str) -> tuple[int, int]:
    if grid is not None:
        h, w = int(grid[0]), int(grid[1])
        require(h * w == n, f"{where}: N = {n} points does not match --grid {h}x{w} (= {h * w} points); pass the "
                            "grid the tracker sampled the points on (N = H*W, row-major)")
        return h, w
    for h, w in (*KNOWN_GRIDS, video_hw):
        if h * w == n:
            return h, w
    raise MoGe4DInputError(
        f"{where}: cannot infer the point grid from N = {n} (not {KNOWN_GRIDS[0][0]}x{KNOWN_GRIDS[0][1]} nor the "
        f"video's {video_hw[0]}x{video_hw[1]}); pass --grid HxW (grid=(H, W)) with H*W = {n}")


def _raw_array(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return (value.float() if value.is_floating_point() else value).numpy()
    return np.asarray(value)


def _load(sid: str, files: dict[str, Path], input_dir: Path, o: PrepareOptions) -> _Loaded:
    missing = [f"{sid}{suffix} ({kind})" for kind, suffix in _INPUT_KINDS.items() if kind not in files]
    if missing:
        raise MoGe4DInputError(f"{input_dir}: sample {sid!r} is missing {', '.join(missing)}; every sample needs "
                               f"<id>.mp4, <id>.txt (caption) and <id>_dt3d_pred.pkl")
    cap_path = files["caption"]
    caption = cap_path.read_bytes()
    try:
        text = caption.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise MoGe4DInputError(f"{cap_path}: caption is not UTF-8 text") from None
    require(bool(text), f"{cap_path}: caption is empty; write the video's description in it")

    pkl = files["pkl"]
    data = load_pickle(pkl, allow_unsafe=o.allow_unsafe_pickle)
    if not isinstance(data, dict) or "coords" not in data:
        raise MoGe4DInputError(f"{pkl}: expected a dict with 'coords' (T,N,3), 'colors' (N,3) and 'vis' (T,N), "
                               f"got {type(data).__name__}" + (f" with keys {list(data)[:8]}" if isinstance(data, dict) else ""))
    coords_shape = tuple(getattr(data["coords"], "shape", ()))
    require(len(coords_shape) in (3, 4) and (len(coords_shape) == 3 or coords_shape[0] == 1) and coords_shape[-1] == 3,
            f"{pkl}['coords']: expected (T,N,3) or (1,T,N,3), got shape {coords_shape}")
    t, n = coords_shape[-3], coords_shape[-2]

    video = files["video"]
    frames = read_video_frames(video, max_frames=max(int(t), 1))
    notes = []
    if frames.shape[0] < t:
        notes.append(f"the video has {frames.shape[0]} frames, the trajectories {t}")
    grid = _resolve_grid(n, o.grid, frames.shape[1:3], str(pkl))
    traj = trajectories_from_dict(data, source=str(pkl), height=grid[0], width=grid[1], sanitize=True)

    raw = _raw_array(data["coords"]).reshape(t, n, 3).astype(np.float32, copy=False)
    # sanitising only turned non-finite positions invisible; the checks exclude those anyway
    vis = None if traj.visibility is None else traj.visibility.numpy()
    colors = _raw_array(data["colors"]).reshape(n, 3).astype(np.float32)
    colors = np.where(np.isfinite(colors), colors, 0.0).astype(np.float32)
    vis_out = vis if vis is not None else np.ones((t, n), dtype=bool)
    return _Loaded(sid, files, caption, raw, traj.points, traj.colors, colors, vis_out, vis, grid,
                   float(o.fps or _video_fps(video) or 8.0), notes)


def _render(s: _Loaded, o: PrepareOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """Novel-view render (T,H,W,3) [0,1] and hole mask (T,H,W,3) {0,1} of the sanitised points."""
    h, w = s.grid
    t = s.points.shape[0]
    K = delta_intrinsics(h, w)
    z = s.raw_coords[..., 2]
    finite = np.isfinite(s.raw_coords).all(-1)
    with np.errstate(invalid="ignore"):
        valid0 = finite[0] & (z[0] > o.min_depth) & (z[0] < o.max_depth)
    require(bool(valid0.any()), f"{s.files['pkl']}: no valid frame-0 depth; nothing to render")
    keep = torch.from_numpy(valid0[None] & finite)                          # (T,N)
    cam = make_camera_path(o.camera, t, w, h, points0=s.points[0][torch.from_numpy(valid0)], K=K,
                           **o.resolved_camera_params())
    res = render_points(s.points, s.colors01, cam, mode="points", point_size=o.point_size,
                        background=(0.0, 0.0, 0.0), backend=o.render_backend, point_mask=keep)
    return res.rgb.cpu(), res.holes.cpu()[..., None].expand(t, h, w, 3)


def _write_sample(s: _Loaded, folder: Path, o: PrepareOptions) -> None:
    """Write the sample's five files into ``folder`` (a fresh temporary folder)."""
    rgb, holes = _render(s, o)
    shutil.copyfile(s.files["video"], folder / f"{s.id}.mp4")
    (folder / f"{s.id}.txt").write_bytes(s.caption_bytes)
    data = {"coords": np.ascontiguousarray(s.points.numpy(), dtype=np.float32),
            "colors": np.ascontiguousarray(s.colors255), "vis": np.ascontiguousarray(s.vis_out, dtype=bool)}
    with open(folder / f"{s.id}_dt3d_pred.pkl", "wb") as fh:
        pickle.dump(data, fh, protocol=4)
    write_mp4(rgb, folder / f"{s.id}_dt3d_render.mp4", fps=s.fps)
    write_mp4(holes, folder / f"{s.id}_mask_render.mp4", fps=s.fps)


def _pack(staging: Path, out: Path, first: int, last: int, level: int) -> Path:
    final = out / f"{first:06d}-{last:06d}.tar.gz"
    with atomic_path(final) as tmp:
        with tarfile.open(tmp, "w:gz", compresslevel=level) as tf:
            for p in sorted(staging.iterdir()):
                tf.add(p, arcname=p.name)
    for p in list(staging.iterdir()):
        p.unlink()
    return final


# --------------------------------------------------------------------------------------------- driver
def prepare_dataset(input_dir: Union[str, os.PathLike], out_dir: Union[str, os.PathLike], *,
                    options: Optional[PrepareOptions] = None,
                    log: Optional[Callable[[str], None]] = None) -> PrepareReport:
    """Filter, render and write every sample of ``input_dir`` into ``out_dir`` (TrajScene layout).

    Returns the :class:`PrepareReport` (also written to ``out_dir/prepare_report.json``). ``log`` is called
    with one line per sample. Raises :class:`MoGe4DInputError` for bad options, a missing / empty input
    folder, ``out_dir`` equal to ``input_dir``, and (``strict=True``) the first bad sample.
    """
    o = options or PrepareOptions()
    o.validate()
    t_start = time.perf_counter()
    src, out = Path(input_dir), Path(out_dir)
    require(src.is_dir(), f"prepare: input folder {src} not found")
    require(not (out.exists() and out.resolve() == src.resolve()),
            f"prepare: output folder {out} is the input folder; choose another one")
    found = _discover(src)
    require(bool(found), f"prepare: no samples in {src} (expected <id>.mp4, <id>.txt and <id>_dt3d_pred.pkl files)")
    out.mkdir(parents=True, exist_ok=True)
    opts = dataclasses.asdict(o)
    opts["camera_params"] = o.resolved_camera_params()
    report = PrepareReport(str(src), str(out), opts)
    say = log or (lambda _msg: None)

    staging = Path(tempfile.mkdtemp(prefix=".prepare-staging-", dir=out)) if o.tar else None
    in_archive: list[int] = []
    n_kept = 0
    try:
        for sid in sorted(found):
            result = SampleResult(sid, "error")
            report.samples.append(result)
            try:
                s = _load(sid, found[sid], src, o)
                result.frames, result.grid, result.notes = int(s.points.shape[0]), s.grid, s.notes
                result.checks = quality_checks(s.raw_coords, s.vis_in, o)
                if result.failed:
                    result.status = "dropped"
                    result.message = "; ".join(f"{c.name} {_fmt(c.value)} > {_fmt(c.threshold)}" for c in result.failed)
                    say(f"dropped {sid}: {result.message}")
                    continue
                with atomic_dir(staging if staging is not None else out) as tmp:
                    _write_sample(s, tmp, o)
            except MoGe4DInputError as exc:
                result.status, result.message = "error", str(exc)
                if o.strict:
                    raise
                say(f"error   {sid}: {exc}")
                continue
            result.status = "kept"
            say(f"kept    {sid}")
            if staging is not None:
                in_archive.append(n_kept)
                if len(in_archive) == o.tar:
                    report.archives.append(str(_pack(staging, out, in_archive[0], in_archive[-1], o.compresslevel)))
                    in_archive = []
            n_kept += 1
        if staging is not None and in_archive:
            report.archives.append(str(_pack(staging, out, in_archive[0], in_archive[-1], o.compresslevel)))
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    report.seconds = time.perf_counter() - t_start
    with atomic_path(out / REPORT_NAME) as tmp:
        tmp.write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
    return report


def _camera_param(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--camera-param {text!r}: expected NAME=VALUE, e.g. angle_deg=15")
    k, v = text.split("=", 1)
    with contextlib.suppress(ValueError):
        return k.strip(), float(v)
    return k.strip(), v.strip()


def main(argv: Optional[list[str]] = None) -> int:
    d = PrepareOptions()
    ap = argparse.ArgumentParser(prog="python -m training.prepare",
                                 description="Turn videos + DELTA-layout 3D tracks into a TrajScene-60K-layout "
                                             "training set (quality filters, novel-view renders, report).")
    ap.add_argument("--input", required=True, help="folder with <id>.mp4, <id>.txt, <id>_dt3d_pred.pkl")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--grid", type=parse_grid, default=None,
                    help="HxW of the point grid (default: 384x512 when N = 196608, else the video size if N matches)")
    ap.add_argument("--camera", default=d.camera, help=f"camera preset of the render (default {d.camera}; one of "
                                                       f"{', '.join(CAMERA_PRESETS)})")
    ap.add_argument("--camera-param", type=_camera_param, action="append", default=None, metavar="NAME=VALUE",
                    help="preset parameter (repeatable); default for orbit_left: angle_deg=15")
    ap.add_argument("--tar", type=int, default=0, metavar="N", help="pack N samples per .tar.gz range archive")
    ap.add_argument("--min-depth", type=float, default=d.min_depth)
    ap.add_argument("--max-depth", type=float, default=d.max_depth)
    ap.add_argument("--max-invalid-fraction", type=float, default=d.max_invalid_fraction,
                    help="filter 1: max fraction of invalid frame-0 depths")
    ap.add_argument("--max-depth-std-ratio", type=float, default=d.max_depth_std_ratio,
                    help="filter 2: max std(z0)/median(z0)")
    ap.add_argument("--max-scale-drift", type=float, default=d.max_scale_drift,
                    help="filter 3: max global depth scale factor change r (s_t must stay in [1/r, r])")
    ap.add_argument("--coord-limit", type=float, default=d.coord_limit, help="release rule: drop if coords.max() > this")
    ap.add_argument("--no-coord-limit", action="store_true", help="disable the coords.max() rule")
    ap.add_argument("--point-size", type=int, default=d.point_size)
    ap.add_argument("--fps", type=float, default=None, help="render frame rate (default: the source video's)")
    ap.add_argument("--allow-unsafe-pickle", action="store_true", help="unpickle without restriction (trusted files)")
    ap.add_argument("--strict", action="store_true", help="stop at the first bad sample")
    args = ap.parse_args(argv)
    opts = PrepareOptions(grid=args.grid, camera=args.camera,
                          camera_params=None if args.camera_param is None else dict(args.camera_param),
                          tar=args.tar, min_depth=args.min_depth, max_depth=args.max_depth,
                          max_invalid_fraction=args.max_invalid_fraction, max_depth_std_ratio=args.max_depth_std_ratio,
                          max_scale_drift=args.max_scale_drift,
                          coord_limit=None if args.no_coord_limit else args.coord_limit, strict=args.strict,
                          point_size=args.point_size, fps=args.fps, allow_unsafe_pickle=args.allow_unsafe_pickle)
    try:
        report = prepare_dataset(args.input, args.out, options=opts, log=print)
    except MoGe4DInputError as exc:
        ap.error(str(exc))
    print(report.summary())
    print(f"report: {Path(args.out) / REPORT_NAME}")
    return 0 if report.kept else 1


if __name__ == "__main__":
    raise SystemExit(main())
