"""Turning one TrajScene trajectory file into a STraG training sample (reference ``moge4d_official.md`` B, F).

Steps, as the official ``STraGDataset`` does them:

1. frames: truncate to ``frames`` (official 49) or pad by repeating the last frame;
2. centre crop of the (H, W) point grid to ``crop`` (official 384x512 -> 368x512, 8 rows off top
   and bottom); ``crop=None`` keeps the full grid;
3. target ``delta_hat``: depth-guided normalised motion (:func:`normalize_motion`) with the official
   pseudo-intrinsics at the working (cropped) size (:func:`official_spec`; 1.043478, 1 at 368x512):
   ``dx*fx/z0, dy*fy/z0, dz/z0``, frame 0 exactly 0;
4. control frames: the frame-0 colours mapped to [-1, 1] (``c/255*2-1``) and repeated over time.

The sample filter ``coords.max() > 500`` (over raw x, y, z and all frames, before truncation) is
:func:`exceeds_coordinate_limit`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.geometry.normalization import normalize_motion, official_spec
from moge4d_core.types import NormalizationSpec

__all__ = ["TrajSceneSample", "TrajSceneBatch", "collate_samples", "fit_frames", "fit_video", "center_crop", "exceeds_coordinate_limit", "prepare_sample",
           "OFFICIAL_FRAMES", "OFFICIAL_CROP", "COORD_LIMIT"]

OFFICIAL_FRAMES = 49
OFFICIAL_CROP = (368, 512)
COORD_LIMIT = 500.0


@dataclass
class TrajSceneSample:
    """One STraG training sample (CPU float32 tensors; OpenCV camera axes, world = first-frame camera).

    Attributes:
        id: sample id (``<id>`` of ``<id>_dt3d_pred.pkl``).
        caption: the ``<id>.txt`` text, stripped.
        points: (T, h, w, 3) metric trajectories after frame fitting and the centre crop.
        colors: (h, w, 3) frame-0 colours in [0, 1].
        delta_hat: (T, h, w, 3) normalised motion (official spec at (h, w)); frame 0 is 0.
        first_frame_points: (h, w, 3) = ``points[0]`` (the official ``flow_first_frame``).
        control: (T, h, w, 3) colours in [-1, 1] repeated over T (the official control frames,
            channels last; the official tensor is (T, 3, h, w)).
        visibility: (T, h, w) bool or None when the file has no ``vis``.
        spec: the :class:`NormalizationSpec` used for ``delta_hat``.
        video: (T, Hv, Wv, 3) uint8 source frames (native video size, same frame fitting) or None.
        render: (T, Hr, Wr, 3) uint8 ``_dt3d_render.mp4`` frames or None.
        mask: (T, Hr, Wr) bool ``_mask_render.mp4`` (True = hole, luma > 127) or None.
        source: where it came from (``archive::member`` or a folder path).
        original_frames: frame count in the file before truncation / padding.
    """

    id: str
    caption: str
    points: torch.Tensor
    colors: torch.Tensor
    delta_hat: torch.Tensor
    first_frame_points: torch.Tensor
    control: torch.Tensor
    visibility: Optional[torch.Tensor]
    spec: NormalizationSpec
    video: Optional[torch.Tensor] = None
    render: Optional[torch.Tensor] = None
    mask: Optional[torch.Tensor] = None
    source: str = ""
    original_frames: int = 0


def fit_frames(x: torch.Tensor, frames: int) -> torch.Tensor:
    """Truncate the leading (time) axis to ``frames`` or pad it by repeating the last entry."""
    t = x.shape[0]
    if t >= frames:
        return x[:frames]
    pad = x[-1:].expand(frames - t, *x.shape[1:])
    return torch.cat([x, pad], 0)


def center_crop(x: torch.Tensor, crop: Optional[tuple[int, int]], h_axis: int, source: str) -> torch.Tensor:
    """Centre-crop axes (h_axis, h_axis+1) to ``crop`` = (h, w); top = (H-h)//2, left = (W-w)//2."""
    if crop is None:
        return x
    H, W = x.shape[h_axis], x.shape[h_axis + 1]
    h, w = crop
    if h > H or w > W:
        raise MoGe4DInputError(f"{source}: crop {h}x{w} is larger than the point grid {H}x{W}; "
                               "pass a smaller crop= (or crop=None)")
    top, left = (H - h) // 2, (W - w) // 2
    return x.narrow(h_axis, top, h).narrow(h_axis + 1, left, w)


def fit_video(frames: torch.Tensor, crop: Optional[tuple[int, int]], multiple: int = 8) -> torch.Tensor:
    """Centre-crop video frames to ``crop`` (where it fits), then down to multiples of ``multiple``.

    Args:
        frames: (T, H, W, C) video frames, any dtype.
        crop: (h, w) in pixels, or None to keep the full frame.
        multiple: the cropped height and width are rounded down to a multiple of this.

    Returns:
        (T, h', w', C) view of ``frames``: ``top = (H - h') // 2``, ``left = (W - w') // 2``.
    """
    t, h, w = frames.shape[:3]
    th, tw = (min(crop[0], h), min(crop[1], w)) if crop is not None else (h, w)
    th, tw = th - th % multiple, tw - tw % multiple
    if th < multiple or tw < multiple:
        raise MoGe4DInputError(f"video frames {h}x{w} are too small (need at least {multiple}x{multiple})")
    top, left = (h - th) // 2, (w - tw) // 2
    return frames[:, top:top + th, left:left + tw]


def exceeds_coordinate_limit(coords: torch.Tensor, limit: float = COORD_LIMIT) -> bool:
    """The official skip rule: True when ``coords.max() > limit`` over all raw x, y, z and frames."""
    return bool(coords.max() > limit)


def prepare_sample(points: torch.Tensor, colors: torch.Tensor, visibility: Optional[torch.Tensor], *,
                   sample_id: str, caption: str, frames: int = OFFICIAL_FRAMES,
                   crop: Optional[tuple[int, int]] = OFFICIAL_CROP, spec: Optional[NormalizationSpec] = None,
                   source: str = "") -> TrajSceneSample:
    """Build a :class:`TrajSceneSample` from grid trajectories.

    points (T0, H, W, 3) metric; colors (H, W, 3) in [0,1]; visibility (T0, H, W) bool or None.
    ``spec`` defaults to :func:`official_spec` at the cropped size.
    """
    if points.ndim != 4 or points.shape[-1] != 3:
        raise MoGe4DInputError(f"{source}: expected grid points (T,H,W,3), got {tuple(points.shape)}")
    if frames < 1:
        raise MoGe4DInputError(f"{source}: frames must be >= 1, got {frames}")
    t0 = points.shape[0]
    pts = center_crop(fit_frames(points.float(), frames), crop, 1, source).contiguous()
    col = center_crop(colors.float(), crop, 0, source).contiguous()
    vis = None
    if visibility is not None:
        vis = center_crop(fit_frames(visibility.bool(), frames), crop, 1, source).contiguous()
    h, w = pts.shape[1:3]
    spec = spec or official_spec(h, w)
    delta = normalize_motion(pts, spec, time_dim=0)
    control = (col * 2.0 - 1.0).unsqueeze(0).expand(frames, h, w, 3).contiguous()
    return TrajSceneSample(id=sample_id, caption=caption, points=pts, colors=col, delta_hat=delta,
                           first_frame_points=pts[0].clone(), control=control, visibility=vis, spec=spec,
                           source=source, original_frames=t0)


@dataclass
class TrajSceneBatch:
    """A batch of :class:`TrajSceneSample` (:func:`collate_samples`): the same fields, batch first.

    Attributes:
        id, caption, source: B strings each.
        points: (B, T, h, w, 3) metric trajectories.
        colors: (B, h, w, 3) frame-0 colours in [0, 1].
        delta_hat: (B, T, h, w, 3) normalised motion; frame 0 is 0.
        first_frame_points: (B, h, w, 3).
        control: (B, T, h, w, 3) colours in [-1, 1] repeated over T.
        visibility: (B, T, h, w) bool, or None when a sample has none.
        spec: B :class:`NormalizationSpec`.
        video: (B, T, Hv, Wv, 3) uint8, or None when a sample has none (likewise ``render``).
        render: (B, T, Hr, Wr, 3) uint8 or None.
        mask: (B, T, Hr, Wr) bool (True = hole) or None.
        original_frames: B frame counts before truncation / padding.
    """

    id: list
    caption: list
    points: torch.Tensor
    colors: torch.Tensor
    delta_hat: torch.Tensor
    first_frame_points: torch.Tensor
    control: torch.Tensor
    visibility: Optional[torch.Tensor]
    spec: list
    video: Optional[torch.Tensor] = None
    render: Optional[torch.Tensor] = None
    mask: Optional[torch.Tensor] = None
    source: list = dataclasses.field(default_factory=list)
    original_frames: list = dataclasses.field(default_factory=list)


def collate_samples(batch: list[TrajSceneSample]) -> TrajSceneBatch:
    """DataLoader ``collate_fn``: a list of samples -> a :class:`TrajSceneBatch`.

    Tensor fields present in every sample are stacked (``points``, ``delta_hat``, ``control``, ...);
    optional fields missing in any sample become None; ``id``, ``caption``, ``source``, ``spec`` and
    ``original_frames`` become lists. Videos of different native sizes cannot be stacked and raise MoGe4DInputError.
    """
    if not batch:
        raise MoGe4DInputError("collate_samples: empty batch")
    out: dict = {}
    for f in dataclasses.fields(TrajSceneSample):
        values = [getattr(s, f.name) for s in batch]
        if all(isinstance(v, torch.Tensor) for v in values):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                raise MoGe4DInputError(f"collate_samples: field {f.name!r} has different shapes {sorted(shapes)} "
                                       f"in the batch (ids {[s.id for s in batch]}); use batch size 1 or one size")
            out[f.name] = torch.stack(values)
        elif any(v is None for v in values) and f.name in ("visibility", "video", "render", "mask"):
            out[f.name] = None
        else:
            out[f.name] = values
    return TrajSceneBatch(**out)
