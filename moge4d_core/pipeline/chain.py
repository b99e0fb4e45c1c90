"""Chained generation: scenes longer than one model window (reference: issue 24, item 1).

The trajectory model generates one window of ``L`` frames (4k+1: 49 for the release, 17 for the nano model). A
longer scene of ``T`` frames runs window after window, all in one world (= the first-frame camera of the whole
scene, OpenCV axes); the camera never moves, so every window is conditioned from that same camera:

1. **Windows.** Window ``k`` covers the output frames ``s_k .. s_k + L - 1`` with ``s_0 = 0`` and
   ``s_{k+1} = s_k + L - 1 - overlap``: consecutive windows share ``overlap + 1`` frames. The last window is run
   in full and cut to ``T`` (:func:`window_starts`).
2. **Re-projection** (:func:`reproject`). Window ``k+1`` starts from the scene's points at its first frame
   ``s_{k+1}`` (with ``overlap = 0`` the previous window's last frame). Every point whose first-frame depth was
   valid is drawn through the first-frame ``K`` with the hard z-buffer (nearest grid cell of its projection,
   the front-most point wins): the drawn colours are the next window's image, the points' camera z its depth.
   **Holes** (cells no point landed on: disocclusions, the border an object left) are filled by a
   background-biased dilation (:func:`fill_holes`): each round, every hole cell next to filled cells takes the
   colour and depth of its *deepest* filled 8-neighbour, until none is left; a hole usually shows what lay behind
   the thing that moved away, so the far side is the better guess. Cell points are the filled depth
   back-projected through ``K`` (they only set the de-normalisation depth ``z0``).
3. **Identity.** The output keeps the first frame's ``N = H*W`` points, row-major. At each window start a point
   is *tracked* by the cell its projection lands in when it is in view and not occluded: its camera z is within
   :data:`SAME_SURFACE` (relative) of the cell's front-most z, so points of one surface that crowd into a cell
   all follow it. A tracked point moves by its cell's de-normalised displacement
   ``P_i(t) = P_i(s) + ΔP_cell(t)`` (:func:`~moge4d_core.geometry.normalization.denormalize_motion` with the
   cell's ``z0``), so it starts exactly where it was.
4. **Untracked points** (out of view, behind the camera, occluded, or with an invalid first-frame depth) hold
   still for the window (``untracked="hold"``, the default), or keep moving with their last velocity, the mean
   per-frame displacement over the :data:`VELOCITY_FRAMES` frames before the window start (``"velocity"``). They
   are marked not visible for that window and are tracked again when a later window start sees them. Holding
   keeps a wrong motion from running away: on the nano model's synthetic scenes (``training.eval.chained``) it
   halves the error of the later windows against constant-velocity extrapolation, whose drift grows with every
   window; extrapolation suits a model whose motions can be trusted for long (objects that left the view keep
   going).
5. **Seam blend.** Over the ``overlap`` frames after the seam frame ``s_{k+1}`` (shared by both windows) the
   output's per-frame *steps* are cross-faded: step ``j = 1 .. overlap`` is ``a·(next step) + (1-a)·(previous
   step)`` with ``a = j/(overlap+1)``; later steps are the next window's own. A step is then never longer than
   the longer of the two windows' steps there (a cross-fade of *positions* would overshoot when the two motions
   differ); the next window's later frames are its own motion continued from where the blend ended. Visibility
   switches to the next window's at ``a >= 0.5``. With ``overlap = 0`` the seam frame is the previous window's last
   frame and the next window's first, unchanged.

Window 0 is exactly the single-window pipeline (:func:`~.trajectory.denormalize`, frame 0 = the geometry's
points); window ``k`` samples with seed ``seed + k``. Visibility inside a window is constant (tracked or not), as
in the single-window output, which marks only invalid first-frame depth.

The result is one :class:`~moge4d_core.types.Trajectories` of ``T`` frames and a :class:`ChainedMotion` (the
normalised motion of the whole scene relative to the first frame, for previews and the Denormalize node, which
hands back the exact chained trajectories).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..errors import MoGe4DInputError, require
from ..geometry.backproject import backproject_depth
from ..geometry.normalization import denormalize_motion, normalize_motion
from ..models import constants as C
from ..models.conditioning import ImageContext, TextContext
from ..types import Geometry, Motion, MotionFeatures, Trajectories
from .settings import NativeSampler, SamplerSettings
from .trajectory import TrajectoryOptions, denormalize, generate_motion

__all__ = ["SAME_SURFACE", "VELOCITY_FRAMES", "UNTRACKED", "DEFAULT_OVERLAP", "ChainedMotion", "WindowInfo",
           "window_starts", "window_frames", "check_chain", "chained_frames", "fill_holes", "Reprojection", "reproject", "chain_windows",
           "generate_chained", "pad_frames"]

SAME_SURFACE = 0.03
"""Relative depth tolerance: a point within 3 % of its cell's front-most depth counts as visible (same surface)."""

VELOCITY_FRAMES = 4
"""Frames over which an untracked point's last velocity is averaged."""

UNTRACKED = ("hold", "velocity")
"""What untracked points do inside a window (module docstring, item 4)."""

DEFAULT_OVERLAP = 2
"""Cross-faded frames at each seam used by the CLI and the sampler node when not given."""


@dataclass
class ChainedMotion(Motion):
    """:class:`~moge4d_core.types.Motion` of a chained scene: ``delta`` (T,H,W,3) is the whole scene normalised
    relative to the first frame; ``trajectories`` the chained :class:`Trajectories` themselves (with the tracked
    visibility), which :func:`~.trajectory.denormalize` returns instead of recomputing; ``windows`` one
    :class:`WindowInfo` per window."""

    trajectories: Optional[Trajectories] = None
    windows: list = field(default_factory=list)


@dataclass
class WindowInfo:
    """One window of a chain: its first output frame ``start``, the output frames it wrote (``start .. stop-1``,
    the shared ones included), how many of the N points it tracked and how many grid cells were holes filled."""

    start: int
    stop: int
    tracked: int
    holes: int


def _is_4k1(n: int) -> bool:
    return n >= 1 and (n - 1) % C.TEMPORAL_COMPRESSION == 0


def window_frames(frames: int, window: int) -> int:
    """Frames the model runs per window for a scene of ``frames``: ``window`` for a longer scene, else the
    shortest 4k+1 count covering ``frames`` (``frames`` itself when it is 4k+1; the old single-window run)."""
    if frames >= window:
        return window
    return frames if _is_4k1(frames) else frames + (C.TEMPORAL_COMPRESSION - (frames - 1) % C.TEMPORAL_COMPRESSION)


def check_chain(frames: int, window: int, overlap: int, prefix: str = "") -> None:
    """Refuse a frame count, window length or overlap the chain cannot run.

    Raises:
        MoGe4DInputError: naming the setting (``prefix`` + ``frames`` / ``window`` / ``overlap``, e.g. ``--`` for
            the CLI's options) and its valid range.
    """
    for value, what in ((frames, "frames"), (window, "window"), (overlap, "overlap")):
        if not isinstance(value, int) or isinstance(value, bool):
            raise MoGe4DInputError(f"{prefix}{what}: expected a whole number, got {value!r}")
    require(frames >= 1, f"{prefix}frames: {frames}; a scene needs at least 1 frame")
    require(window >= 5 and _is_4k1(window),
            f"{prefix}window: {window}; the model's window must be 4k+1 frames and at least 5 (release 49, nano "
            f"model 17)")
    require(frames <= window or 0 <= overlap <= (window - 1) // 2,
            f"{prefix}overlap: {overlap}; expected 0 .. {(window - 1) // 2} frames for a window of {window} "
            f"(consecutive seams must not overlap)")


def chained_frames(window: int, windows: int, overlap: int) -> int:
    """Frames of a scene made of ``windows`` windows of ``window`` frames, ``overlap + 1`` shared at each seam.

    Raises:
        MoGe4DInputError: ``windows`` < 1, or (for more than one window) ``window`` / ``overlap`` out of range.
    """
    require(isinstance(windows, int) and not isinstance(windows, bool) and windows >= 1,
            f"windows: expected a whole number >= 1, got {windows!r}")
    if windows == 1:
        return window
    check_chain(window + 1, window, overlap)
    return window + (windows - 1) * (window - 1 - overlap)


def window_starts(frames: int, window: int, overlap: int) -> list[int]:
    """First output frame of each window for a scene of ``frames`` (window ``window``, ``overlap`` extra shared
    frames): ``[0, step, 2·step, ...]`` with ``step = window - 1 - overlap``, as many as needed to reach
    ``frames`` (one when ``frames <= window``)."""
    check_chain(frames, window, overlap)
    step = window - 1 - overlap
    starts = [0]
    while starts[-1] + window < frames:
        starts.append(starts[-1] + step)
    return starts


def fill_holes(image: torch.Tensor, depth: torch.Tensor, holes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill hole cells from their deepest filled 8-neighbour, round after round (see the module docstring).

    Args:
        image: (H,W,3) colours; depth: (H,W) z-depth; holes: (H,W) bool, True = no value.

    Returns:
        (image (H,W,3), depth (H,W)) with every hole filled (unchanged when there is none or no filled cell).
    """
    image, depth, known = image.clone(), depth.clone(), ~holes.bool()
    h, w = depth.shape
    if bool(known.all()) or not bool(known.any()):
        return image, depth
    for _ in range(h + w):
        d = torch.where(known, depth, torch.full_like(depth, -torch.inf))
        d = torch.where(torch.isnan(d), torch.full_like(d, -torch.inf), d)
        nd = F.unfold(F.pad(d[None, None], (1, 1, 1, 1), value=-torch.inf), 3)[0]     # (9, H*W), outside = -inf
        best, arg = nd.max(dim=0)
        new = (~known).reshape(-1) & torch.isfinite(best)
        if not bool(new.any()):
            break
        ni = F.unfold(image.permute(2, 0, 1)[None], 3, padding=1)[0].reshape(3, 9, -1)   # (3, 9, H*W)
        col = ni.gather(1, arg[None, None].expand(3, 1, -1))[:, 0].T                     # (H*W, 3)
        depth.reshape(-1)[new] = best[new]
        image.reshape(-1, 3)[new] = col[new]
        known = known | new.reshape(h, w)
        if bool(known.all()):
            break
    return image, depth


@dataclass
class Reprojection:
    """The next window's start: ``geometry`` (image and depth drawn from the points, holes filled; cell points
    the filled depth back-projected through K), ``cell`` (N,) long: the grid cell each point is tracked by, -1 for
    an untracked point; ``holes`` (H,W) bool: the cells that were filled."""

    geometry: Geometry
    cell: torch.Tensor
    holes: torch.Tensor


def reproject(points: torch.Tensor, colors: torch.Tensor, renderable: torch.Tensor, K: torch.Tensor,
              height: int, width: int, *, metric: bool = True, near: float = 1e-3) -> Reprojection:
    """Draw ``points`` from the first-frame camera into the next window's image, depth and point tracking.

    Args:
        points: (N,3) positions in the world (= first-frame camera), metres.
        colors: (N,3) colours in [0,1].
        renderable: (N,) bool, False for points never drawn (invalid first-frame depth).
        K: (3,3) pixel intrinsics of the ``height`` x ``width`` grid.
        metric: stored on the returned geometry.
        near: points with camera z <= near are not drawn (behind the camera).

    Returns:
        :class:`Reprojection` (see there; rule in the module docstring).
    """
    pts = points.float()
    n = pts.shape[0]
    Kf = K.float().to(pts.device)
    z = pts[:, 2]
    safe = torch.where(z > near, z, torch.ones_like(z))
    u = Kf[0, 0] * pts[:, 0] / safe + Kf[0, 2]
    v = Kf[1, 1] * pts[:, 1] / safe + Kf[1, 2]
    inside = renderable.bool() & (z > near) & torch.isfinite(u) & torch.isfinite(v)
    inside &= (u >= 0) & (u < width) & (v >= 0) & (v < height)
    col = u.clamp(0, width - 1).floor().long()
    row = v.clamp(0, height - 1).floor().long()
    cell = torch.where(inside, row * width + col, torch.full_like(col, -1))
    # z-buffer: front-most depth per cell; ties of exactly equal depth go to the smaller point index
    zbuf = torch.full((height * width,), torch.inf, dtype=pts.dtype, device=pts.device)
    idx = cell[inside]
    zbuf.scatter_reduce_(0, idx, z[inside], reduce="amin")
    front = torch.full((height * width,), n, dtype=torch.long, device=pts.device)
    ids = torch.arange(n, device=pts.device)[inside]
    is_front = z[inside] == zbuf[idx]
    front.scatter_reduce_(0, idx[is_front], ids[is_front], reduce="amin")
    hit = front < n
    image = torch.zeros(height * width, 3, dtype=torch.float32, device=pts.device)
    depth = torch.zeros(height * width, dtype=torch.float32, device=pts.device)
    image[hit] = colors.float().to(pts.device)[front[hit]]
    depth[hit] = zbuf[hit]
    holes = ~hit.reshape(height, width)
    if not bool(hit.any()):
        # nothing in view: a gray image at the scene's median depth, so the model still gets a valid condition
        fill = float(z[renderable.bool()].median()) if bool(renderable.any()) else 1.0
        image[:] = 0.5
        depth[:] = fill if fill > near else 1.0
        img, dep = image.reshape(height, width, 3), depth.reshape(height, width)
    else:
        img, dep = fill_holes(image.reshape(height, width, 3), depth.reshape(height, width), holes)
    visible = inside & (z <= zbuf[cell.clamp_min(0)] * (1 + SAME_SURFACE))
    cell = torch.where(visible, cell, torch.full_like(cell, -1))
    geom = Geometry(image=img.clamp(0, 1).cpu(), depth=dep.cpu(), K=K.float().cpu(),
                    points=backproject_depth(dep.cpu(), K.float().cpu()),
                    valid=torch.ones(height, width, dtype=torch.bool), metric=metric)
    return Reprojection(geometry=geom, cell=cell.cpu(), holes=holes.cpu())


def _velocity(points: torch.Tensor, end: int) -> torch.Tensor:
    """Mean per-frame displacement (N,3) over the VELOCITY_FRAMES frames before output frame ``end``."""
    m = min(VELOCITY_FRAMES, end)
    if m <= 0:
        return torch.zeros_like(points[0])
    return (points[end] - points[end - m]) / m


def chain_windows(sample: Callable[[int, Geometry], Motion], geometry: Geometry, *, frames: int, window: int,
                  overlap: int = 0, fps: float = 8.0, untracked: str = "hold",
                  progress: Optional[Callable[[int, int], None]] = None) -> ChainedMotion:
    """Run the window loop with ``sample(k, geometry_k) -> Motion`` (``window`` frames) as the model.

    Args:
        sample: the trajectory model for window ``k`` started from ``geometry_k`` (window 0: ``geometry``).
        geometry: the first frame (H,W) of the whole scene; world = its camera.
        frames: T, the scene's frame count (any >= 1).
        window: frames per model window (4k+1, >= 5).
        overlap: extra frames shared by consecutive windows and cross-faded (0 .. (window-1)//2).
        fps: frame rate stored with the trajectories.
        untracked: what untracked points do in a window: ``"hold"`` (stay where they are) or ``"velocity"`` (keep
            their last velocity).
        progress: ``progress(k, n)`` after window ``k`` (1-based) of ``n``.

    Returns:
        :class:`ChainedMotion` with ``trajectories`` (T, H*W points, row-major; frame 0 = the geometry's points).
    """
    require(untracked in UNTRACKED, f"untracked: expected one of {UNTRACKED}, got {untracked!r}")
    starts = window_starts(frames, window, overlap)
    h, w = geometry.height, geometry.width
    n = h * w
    out = torch.empty(frames, n, 3, dtype=torch.float32)
    vis = torch.zeros(frames, n, dtype=torch.bool)
    first = sample(0, geometry)
    require(first.delta.shape[0] == window,
            f"chain: the trajectory model returned {first.delta.shape[0]} frames for a window of {window}")
    traj0 = denormalize(first, fps=fps)
    stop = min(window, frames)
    out[:stop] = traj0.points[:stop]
    vis[:stop] = traj0.visibility[:stop]
    renderable = geometry.valid.reshape(-1).clone()
    colors = traj0.colors
    infos = [WindowInfo(start=0, stop=stop, tracked=int(traj0.visibility[0].sum()), holes=0)]
    if progress is not None:
        progress(1, len(starts))
    for k, s in enumerate(starts[1:], start=1):
        rep = reproject(out[s], colors, renderable, geometry.K, h, w, metric=geometry.metric)
        motion = sample(k, rep.geometry)
        require(motion.delta.shape[0] == window,
                f"chain: the trajectory model returned {motion.delta.shape[0]} frames for a window of {window}")
        disp = denormalize_motion(motion.delta.float(), rep.geometry.points.float(), motion.norm, time_dim=0)
        disp = disp.reshape(window, n, 3)
        disp = torch.where(torch.isfinite(disp), disp, torch.zeros_like(disp))
        tracked = rep.cell >= 0
        start_pts = out[s].clone()
        steps = torch.arange(window, dtype=torch.float32)[:, None, None]
        velocity = _velocity(out, s) if untracked == "velocity" else torch.zeros_like(start_pts)
        win = start_pts[None] + steps * velocity[None]                          # untracked points
        win[:, tracked] = start_pts[tracked][None] + disp[:, rep.cell[tracked]]
        stop = min(s + window, frames)
        previous = out[s:min(s + overlap + 1, stop)].clone()       # the previous window's own shared frames
        for j in range(1, stop - s):
            t = s + j
            step = win[j] - win[j - 1]
            if j <= overlap:                                       # cross-fade the per-frame steps
                a = j / (overlap + 1)
                step = a * step + (1 - a) * (previous[j] - previous[j - 1])
                if a >= 0.5:
                    vis[t] = tracked
            else:
                vis[t] = tracked
            out[t] = out[t - 1] + step
        infos.append(WindowInfo(start=s, stop=stop, tracked=int(tracked.sum()), holes=int(rep.holes.sum())))
        if progress is not None:
            progress(k + 1, len(starts))
    traj = Trajectories(points=out, colors=colors, height=h, width=w, visibility=vis, K=traj0.K, fps=fps)
    delta = normalize_motion(out.reshape(frames, h, w, 3), first.norm, time_dim=0)
    return ChainedMotion(delta=delta, norm=first.norm, geometry=geometry, trajectories=traj, windows=infos)


def generate_chained(model, motion_vae, image_vae, geometry: Geometry, positive: TextContext,
                     negative: Optional[TextContext] = None, *, frames: int, overlap: int = 0,
                     settings: SamplerSettings = SamplerSettings(), options: TrajectoryOptions = TrajectoryOptions(),
                     clip: Optional[ImageContext] = None,
                     motion_features: Optional[Callable[[Geometry], MotionFeatures]] = None,
                     native: Optional[NativeSampler] = None, fps: float = 8.0, untracked: str = "hold",
                     callback: Optional[Callable[[int, int, int, int], None]] = None) -> ChainedMotion:
    """:func:`~.trajectory.generate_motion` window after window for a scene of ``frames`` (any count >= 1).

    Args:
        model, motion_vae, image_vae, positive, negative, clip, native: as for ``generate_motion``.
        geometry: the first frame; world = its camera.
        frames: T, the scene's frame count; ``options.frames`` is the window (4k+1).
        overlap: frames cross-faded at each seam (module docstring).
        settings: sampler settings; window ``k`` uses seed ``settings.seed + k``.
        options: trajectory options (``frames`` = the window length).
        motion_features: ``features(geometry_k)`` for the Motion Perception Module, or None.
        fps: frame rate stored with the trajectories.
        untracked: ``"hold"`` or ``"velocity"`` (:func:`chain_windows`).
        callback: ``callback(window, windows, step, steps)`` after each sampling step.

    Returns:
        :class:`ChainedMotion` (its ``trajectories``: T frames, H*W points).
    """
    count = len(window_starts(frames, options.frames, overlap))

    def sample(k: int, geom: Geometry) -> Motion:
        step = None if callback is None else (lambda d, t: callback(k + 1, count, d, t))
        feats = motion_features(geom) if motion_features is not None else None
        return generate_motion(model, motion_vae, image_vae, geom, positive, negative,
                               settings=settings.replace(seed=settings.seed + k), options=options, clip=clip,
                               motion_features=feats, native=native, callback=step)

    return chain_windows(sample, geometry, frames=frames, window=options.frames, overlap=overlap, fps=fps,
                         untracked=untracked)


def pad_frames(video: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Repeat the last frame of ``video`` (T, ...) up to the next 4k+1 count (the Wan models' frame rule).

    Returns:
        (padded video (T', ...), T): cut the model's output back with ``[:T]``.
    """
    t = int(video.shape[0])
    if _is_4k1(t):
        return video, t
    extra = C.TEMPORAL_COMPRESSION - (t - 1) % C.TEMPORAL_COMPRESSION
    return torch.cat([video, video[-1:].expand(extra, *video.shape[1:])]), t
