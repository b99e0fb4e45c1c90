"""Camera intrinsics helpers: pixel K <-> normalised K <-> field of view, and the official
pseudo-intrinsics of the released MoGe4D checkpoints.

Conventions
-----------
* Pixel K: ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` in pixels of a ``width`` x ``height`` image,
  pixel centres at integer + 0.5 (so the image centre is ``(width/2, height/2)``).
* Normalised K (ComfyUI ``MOGE_GEOMETRY``, MoGe): fx / width, fy / height, cx / width, cy / height.
* Field of view is in degrees, full angle: ``fov_x = 2 * atan(width / (2 * fx))``.
All functions accept batched tensors ``(..., 3, 3)``; kornia has no normalised-K conversion, so these
few lines are our own.
"""
from __future__ import annotations

import math

import torch

from ..errors import MoGe4DInputError, require


def _scale(width: float, height: float, K: torch.Tensor) -> torch.Tensor:
    return torch.tensor([width, height, 1.0], dtype=K.dtype, device=K.device)


def normalize_K(K: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Pixel K (...,3,3) of a width x height image -> normalised K (...,3,3)."""
    s = _scale(width, height, K)
    return K / s[:, None]


def denormalize_K(K_norm: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Normalised K (...,3,3) -> pixel K (...,3,3) of a width x height image."""
    s = _scale(width, height, K_norm)
    return K_norm * s[:, None]


def check_fov(fov_deg: float, name: str = "fov") -> float:
    """Validate a full field-of-view angle in degrees (0 < fov < 180)."""
    fov = float(fov_deg)
    if not (0.0 < fov < 180.0) or math.isnan(fov):
        raise MoGe4DInputError(f"{name}: field of view must be in (0, 180) degrees, got {fov_deg}")
    return fov


def focal_from_fov(fov_deg: float, size: float) -> float:
    """Focal length in pixels for a full field of view ``fov_deg`` across ``size`` pixels."""
    fov = check_fov(fov_deg)
    require(size > 0, f"image size must be positive, got {size}")
    return 0.5 * size / math.tan(math.radians(fov) / 2.0)


def fov_from_focal(focal_px: float, size: float) -> float:
    """Full field of view in degrees across ``size`` pixels for a focal length in pixels."""
    require(focal_px > 0, f"focal length must be positive, got {focal_px}")
    return math.degrees(2.0 * math.atan(0.5 * size / focal_px))


def K_from_fov(fov_x_deg: float, width: int, height: int, fov_y_deg: float | None = None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Pixel K (3,3) with the principal point at the image centre.

    ``fov_x_deg`` is the horizontal field of view; square pixels unless ``fov_y_deg`` is given.
    """
    require(width > 0 and height > 0, f"width and height must be positive, got {width}x{height}")
    fx = focal_from_fov(fov_x_deg, width)
    fy = fx if fov_y_deg is None else focal_from_fov(fov_y_deg, height)
    return torch.tensor([[fx, 0.0, width / 2.0], [0.0, fy, height / 2.0], [0.0, 0.0, 1.0]], dtype=dtype)


def official_pseudo_focal(height: int, width: int, height_ori: int, width_ori: int) -> tuple[float, float]:
    """Normalised (fx, fy) of the fixed pseudo-intrinsics in the official MoGe4D code (reference B).

    The official code builds ``K = [[fx,0,.5],[0,fy,.5],[0,0,1]]`` for u, v in [0, 1] from an
    "original size" (H_ori, W_ori) resized to (H, W): the axis that shrank most gets focal 1, the
    other is stretched by the aspect change.

    * (720, 960) at 368x512 -> (1.043478, 1.0): STraG / motion-VAE training normalisation.
    * (540, 960) at 368x512 -> (1.0, 1.277778): inference back-projection and renderers.
    * (540, 960) at 384x512 -> (1.0, 1.333333): ViSM training projection.
    """
    require(min(height, width, height_ori, width_ori) > 0, "sizes must be positive")
    if width_ori / width <= height_ori / height:
        return (height_ori * width) / (width_ori * height), 1.0
    return 1.0, (width_ori * height) / (height_ori * width)


# (H_ori, W_ori) constants of the official code, reference section B.
OFFICIAL_TRAIN_ORIGINAL_SIZE = (720, 960)
OFFICIAL_INFER_ORIGINAL_SIZE = (540, 960)
