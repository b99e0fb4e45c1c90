"""Depth-guided motion normalisation and its inverse (paper eq. for the de-normaliser; reference B).

Given first-frame points ``P0`` (camera frame, OpenCV axes) and trajectories ``P_t``:

    dP_t = P_t - P0,   z0 = sanitize(P0.z)   (NaN, inf and 0 -> ``depth_fill``, official 1.0; no clamp)
    dx_hat = dx * fx / z0,   dy_hat = dy * fy / z0,   dz_hat = dz / z0

with (fx, fy) the *normalised* focal lengths (alpha_x = fx_px / W, alpha_y = fy_px / H). The inverse
(the de-normaliser, which the released inference omits and which crashes there) is

    dx = dx_hat * z0 / fx,   dy = dy_hat * z0 / fy,   dz = dz_hat * z0,   P_t = P0 + dP_t

and frame 0 is exactly ``P0``.

Constant sets (:class:`~moge4d_core.types.NormalizationSpec`):

* ``release`` (:func:`release_spec`): the constants the released STraG / motion VAE were trained with,
  1.043478 and 1.0, at any working size. The release trained at 368x512 only, so these numbers are what its
  normalised motion means; compat mode uses them whatever size it runs at.
* ``official`` (:func:`official_spec`): the release's *rule* applied at the working size: an "original size"
  (720, 960) resized to the working size (1.043478, 1.0 at 368x512, 1.125, 1.0 at 64x96). Our trainers
  normalise with this rule at the size they train at (``training/datasets/samples.py``), so a model trained
  here at another size (the nano model, 96x64) gets back the constants it learnt with. At 368x512 it equals
  ``release``.
* ``real_k``: the image's own intrinsics (fx_px / W, fy_px / H), as the paper describes.

Shapes: trajectories are ``(..., T, N, 3)`` or ``(..., T, H, W, 3)`` (any point layout; ``P0`` is the
same layout without ``T``). Works for any float dtype; no clipping of normalised values.
"""
from __future__ import annotations

import torch

from ..errors import MoGe4DInputError, require
from ..types import NormalizationSpec
from .intrinsics import OFFICIAL_TRAIN_ORIGINAL_SIZE, official_pseudo_focal


def sanitize_depth(z: torch.Tensor, fill: float = 1.0) -> torch.Tensor:
    """Replace NaN, +-inf and exact zeros by ``fill`` (the official rule; negative depth is kept)."""
    bad = ~torch.isfinite(z) | (z == 0)
    return torch.where(bad, torch.full_like(z, fill), z)


def official_spec(height: int, width: int,
                  original_size: tuple[int, int] = OFFICIAL_TRAIN_ORIGINAL_SIZE) -> NormalizationSpec:
    """The released checkpoint's constants at a working size (368x512 -> fx 1.043478, fy 1)."""
    fx, fy = official_pseudo_focal(height, width, *original_size)
    return NormalizationSpec(fx=fx, fy=fy, mode="official")


RELEASE_TRAIN_SIZE = (368, 512)   # (H, W) the released STraG and motion VAE were trained at


def release_spec() -> NormalizationSpec:
    """The released checkpoint's own constants (fx 1.043478, fy 1), independent of the working size.

    Returns:
        :func:`official_spec` at 368x512, with ``mode="release"``.
    """
    fx, fy = official_pseudo_focal(*RELEASE_TRAIN_SIZE, *OFFICIAL_TRAIN_ORIGINAL_SIZE)
    return NormalizationSpec(fx=fx, fy=fy, mode="release")


def real_k_spec(K: torch.Tensor, width: int, height: int) -> NormalizationSpec:
    """Constants from a real pixel K (3, 3): fx = K[0,0] / width, fy = K[1,1] / height."""
    require(K.shape == (3, 3), f"K: expected (3,3) pixel intrinsics, got {tuple(K.shape)}")
    fx, fy = float(K[0, 0]) / width, float(K[1, 1]) / height
    require(fx > 0 and fy > 0, f"K: focal lengths must be positive, got fx={K[0, 0]}, fy={K[1, 1]}")
    return NormalizationSpec(fx=fx, fy=fy, mode="real_k")


def _scale(z0: torch.Tensor, spec: NormalizationSpec) -> torch.Tensor:
    """Per-point (..., 3) factor s with dP = dP_hat * s."""
    require(spec.fx > 0 and spec.fy > 0, f"normalisation focal lengths must be positive, got {spec}")
    return torch.stack([z0 / spec.fx, z0 / spec.fy, z0], dim=-1)


def motion_scale(points0: torch.Tensor, spec: NormalizationSpec) -> torch.Tensor:
    """First-frame points (..., 3) -> the de-normalisation factors (..., 3) ``(z0/fx, z0/fy, z0)``: metric
    motion = normalised motion x these (the depth rule and checks of :func:`denormalize_motion`)."""
    if points0.shape[-1:] != (3,):
        raise MoGe4DInputError(f"motion_scale: expected first-frame points (..., 3), got {tuple(points0.shape)}")
    return _scale(sanitize_depth(points0[..., 2], spec.depth_fill), spec)


def _frame0(seq: torch.Tensor, time_dim: int, name: str) -> int:
    if seq.ndim < 2 or seq.shape[-1] != 3:
        raise MoGe4DInputError(f"{name}: expected (..., T, *grid, 3) with xyz last, got {tuple(seq.shape)}")
    t = time_dim % seq.ndim
    require(t < seq.ndim - 1, f"{name}: time_dim {time_dim} points at the xyz axis of {tuple(seq.shape)}")
    return t


def _check_points0(points0: torch.Tensor, seq: torch.Tensor, t: int, name: str) -> None:
    want = seq.shape[:t] + seq.shape[t + 1:]
    if tuple(points0.shape) != tuple(want):
        raise MoGe4DInputError(f"{name}: first-frame points {tuple(points0.shape)} do not match the motion "
                               f"{tuple(seq.shape)} without its time axis {t}; expected {tuple(want)}")


def normalize_motion(points: torch.Tensor, spec: NormalizationSpec, time_dim: int = 0) -> torch.Tensor:
    """Trajectories (..., T, *grid, 3) -> normalised relative motion, same shape, frame 0 = 0.

    ``time_dim`` is the time axis (0 for (T,N,3) or (T,H,W,3); 1 for (B,T,...)). The first frame
    along it is ``P0``.
    """
    t = _frame0(points, time_dim, "normalize_motion")
    p0 = points.narrow(t, 0, 1)
    z0 = sanitize_depth(p0[..., 2], spec.depth_fill)
    return (points - p0) / _scale(z0, spec)


def denormalize_motion(delta_hat: torch.Tensor, points0: torch.Tensor, spec: NormalizationSpec,
                       time_dim: int = 0) -> torch.Tensor:
    """Normalised motion (..., T, *grid, 3) + first-frame points (same without T) -> metric dP."""
    t = _frame0(delta_hat, time_dim, "denormalize_motion")
    _check_points0(points0, delta_hat, t, "denormalize_motion")
    z0 = sanitize_depth(points0[..., 2], spec.depth_fill).unsqueeze(t)
    return delta_hat * _scale(z0, spec)


def apply_motion(delta_hat: torch.Tensor, points0: torch.Tensor, spec: NormalizationSpec,
                 time_dim: int = 0) -> torch.Tensor:
    """De-normalise and add to the first frame: points (..., T, *grid, 3); frame 0 is exactly ``points0``."""
    t = _frame0(delta_hat, time_dim, "apply_motion")
    out = points0.unsqueeze(t) + denormalize_motion(delta_hat, points0, spec, time_dim)
    out.narrow(t, 0, 1).copy_(points0.unsqueeze(t))
    return out
