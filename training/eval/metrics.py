"""Evaluation metrics: the paper's average trajectory error and a PSNR restricted to known pixels.

All metrics accept numpy arrays or torch tensors (any float dtype, any device), compute in float64
on the CPU and return a Python float. Bad shapes, NaN / inf values or an empty selection raise
:class:`MoGe4DInputError`.

Average trajectory error (paper eq. 7), :func:`trajectory_error`::

    err = 1/|S| * sum_{(t, n) in S} || pred[t, n] - gt[t, n] ||_2
    S   = {(t, n) : 1 <= t < T, 0 <= n < N, visibility[t, n]}   (every (t, n) with t >= 1 when
                                                                   visibility is None)

* points (T,N,3) in the same metric frame (world = first-frame camera, OpenCV axes);
* frame 0 is excluded: it is the given input (the reconstructed first frame), not a prediction;
* the mean is pooled over all selected (frame, point) pairs, i.e. a frame with more visible points
  weighs more (it is *not* the mean of per-frame means);
* ``visibility[t, n]`` is the ground truth's visibility of point n in frame t: occluded / out-of-view
  positions of the tracker are unreliable and are ignored.

:func:`zero_motion_baseline` is the trivial prediction "nothing moves" (every frame = gt frame 0),
the reference any motion generator has to beat.

Masked PSNR, :func:`masked_psnr`::

    mse  = mean over the known pixels of all frames and the 3 channels of (pred - target)^2
    psnr = 10 * log10(MAX^2 / mse),  MAX = 1   (inf when mse == 0)

with frames (T,H,W,3) in [0, 1] and ``known`` (T,H,W) bool (True = pixel counted, e.g. not a hole of
the render). The mse is pooled over all frames (one PSNR for the clip, not a mean of per-frame PSNRs).

Written by hand: these are a few lines of arithmetic; torchmetrics' PSNR has no pixel mask and is not
a dependency of this project.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import torch

from moge4d_core.errors import MoGe4DInputError

__all__ = ["trajectory_error", "axis_squared_error", "zero_motion_baseline", "masked_psnr"]


def _f64(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.is_floating_point() and x.dtype not in (torch.float16, torch.float32, torch.float64):
            x = x.float()
        x = x.numpy()
    if not isinstance(x, np.ndarray):
        raise MoGe4DInputError(f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_) or np.iscomplexobj(x):
        raise MoGe4DInputError(f"{name}: expected real numbers, got dtype {x.dtype}")
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise MoGe4DInputError(f"{name}: contains {int((~np.isfinite(x)).sum())} NaN / inf values")
    return x


def _bool(x: Any, name: str, shape: tuple) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise MoGe4DInputError(f"{name}: expected a bool numpy array or torch tensor, got {type(x).__name__}")
    if x.dtype != np.bool_:
        raise MoGe4DInputError(f"{name}: expected dtype bool, got {x.dtype} (threshold it first)")
    if x.shape != shape:
        raise MoGe4DInputError(f"{name}: expected shape {shape}, got {tuple(x.shape)}")
    return x


def trajectory_error(pred: Any, gt: Any, visibility: Optional[Any] = None) -> float:
    """Average trajectory error (paper eq. 7): mean L2 distance over frames t >= 1 and visible points.

    Args:
        pred: (T,N,3) predicted positions (metric, world = first-frame camera).
        gt: (T,N,3) ground-truth positions in the same frame and units.
        visibility: (T,N) bool ground-truth visibility, or None (all points count). Only frames
            t >= 1 are used, so ``visibility[0]`` is ignored.

    Returns:
        ``mean ||pred[t,n] - gt[t,n]||_2`` over the (t, n) pairs with t >= 1 and visibility[t, n],
        pooled (see the module docstring), in the units of the points.

    Raises:
        MoGe4DInputError: shapes differ or are not (T,N,3), T < 2, NaN / inf, or no visible pair.
    """
    p, g = _f64(pred, "trajectory_error: pred"), _f64(gt, "trajectory_error: gt")
    if g.ndim != 3 or g.shape[-1] != 3:
        raise MoGe4DInputError(f"trajectory_error: gt must be (T,N,3), got {tuple(g.shape)}")
    if p.shape != g.shape:
        raise MoGe4DInputError(f"trajectory_error: pred {tuple(p.shape)} and gt {tuple(g.shape)} differ in shape")
    t, n, _ = g.shape
    if t < 2:
        raise MoGe4DInputError(f"trajectory_error: needs T >= 2 frames (frame 0 is given and excluded), got T = {t}")
    dist = np.sqrt(((p[1:] - g[1:]) ** 2).sum(-1))                # (T-1, N)
    if visibility is None:
        return float(dist.mean())
    vis = _bool(visibility, "trajectory_error: visibility", (t, n))[1:]
    count = int(vis.sum())
    if count == 0:
        raise MoGe4DInputError("trajectory_error: no point is visible in frames 1..T-1; nothing to average")
    return float(dist[vis].sum() / count)


def axis_squared_error(pred: Any, gt: Any, visibility: Optional[Any] = None) -> tuple[np.ndarray, int]:
    """Per-axis squared error over the pairs :func:`trajectory_error` averages (frames t >= 1, visible points).

    Returns ``(sums, count)``: ``sums`` (3,) float64, ``Σ (pred - gt)²`` separately for x, y and z (OpenCV
    camera axes, world = first-frame camera), and the number of (t, n) pairs. Pool several samples by adding
    both, then ``sqrt(sums / count)`` is the RMS error per axis: it tells which motion direction a model gets
    wrong (the pooled L2 of eq. 7 does not). Same shapes and errors as :func:`trajectory_error`.
    """
    p, g = _f64(pred, "axis_squared_error: pred"), _f64(gt, "axis_squared_error: gt")
    if g.ndim != 3 or g.shape[-1] != 3 or p.shape != g.shape or g.shape[0] < 2:
        raise MoGe4DInputError(f"axis_squared_error: pred {tuple(p.shape)} and gt {tuple(g.shape)} must both be "
                               f"(T,N,3) with T >= 2")
    sq = (p[1:] - g[1:]) ** 2                                         # (T-1, N, 3)
    if visibility is None:
        return sq.reshape(-1, 3).sum(0), int(sq.shape[0] * sq.shape[1])
    vis = _bool(visibility, "axis_squared_error: visibility", g.shape[:2])[1:]
    return sq[vis].sum(0), int(vis.sum())


def zero_motion_baseline(gt: Any) -> Any:
    """The "nothing moves" prediction: (T,N,3) with every frame equal to ``gt[0]``.

    Returns the same kind as ``gt`` (torch tensor -> tensor on its device and dtype, numpy -> numpy).
    """
    if isinstance(gt, torch.Tensor):
        if gt.ndim != 3 or gt.shape[-1] != 3:
            raise MoGe4DInputError(f"zero_motion_baseline: gt must be (T,N,3), got {tuple(gt.shape)}")
        return gt[:1].expand_as(gt).clone()
    if not isinstance(gt, np.ndarray):
        raise MoGe4DInputError(f"zero_motion_baseline: expected a numpy array or torch tensor, got {type(gt).__name__}")
    if gt.ndim != 3 or gt.shape[-1] != 3:
        raise MoGe4DInputError(f"zero_motion_baseline: gt must be (T,N,3), got {tuple(gt.shape)}")
    return np.repeat(gt[:1], gt.shape[0], axis=0)


def masked_psnr(pred: Any, target: Any, known: Any) -> float:
    """PSNR (dB, MAX = 1) over the known pixels only.

    Args:
        pred: (T,H,W,3) frames in [0, 1].
        target: (T,H,W,3) reference frames in [0, 1].
        known: (T,H,W) bool, True where the pixel counts (e.g. not a hole).

    Returns:
        ``10*log10(1/mse)`` with mse pooled over known pixels, all frames and channels; ``inf`` when
        the frames agree exactly on the known pixels.

    Raises:
        MoGe4DInputError: shapes differ or are not (T,H,W,3), values outside [0, 1], NaN / inf, or no
            known pixel.
    """
    p, g = _f64(pred, "masked_psnr: pred"), _f64(target, "masked_psnr: target")
    if g.ndim != 4 or g.shape[-1] != 3:
        raise MoGe4DInputError(f"masked_psnr: target must be (T,H,W,3) RGB, got {tuple(g.shape)}")
    if p.shape != g.shape:
        raise MoGe4DInputError(f"masked_psnr: pred {tuple(p.shape)} and target {tuple(g.shape)} differ in shape")
    for arr, name in ((p, "pred"), (g, "target")):
        if arr.min() < -1e-6 or arr.max() > 1 + 1e-6:
            raise MoGe4DInputError(f"masked_psnr: {name} values span [{arr.min():.4g}, {arr.max():.4g}], expected "
                                   "[0, 1] (divide 8-bit frames by 255)")
    m = _bool(known, "masked_psnr: known", g.shape[:3])
    count = int(m.sum())
    if count == 0:
        raise MoGe4DInputError("masked_psnr: no known pixel (known is all False); nothing to compare")
    mse = float(((p[m] - g[m]) ** 2).sum() / (3 * count))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(1.0 / mse)
