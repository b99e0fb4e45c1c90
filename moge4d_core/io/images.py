"""Read an input image and a depth map from disk, by their real bit depth and with explicit depth units.

Images (:func:`read_image`): every Pillow mode is scaled to [0,1] by what its values mean, not by 255:

=====================================  ===================================================================
mode                                   scaling
=====================================  ===================================================================
``1``, ``L``, ``P``, ``RGB``, ``LA``,  8 bit per channel: ``/ 255`` (palette images are expanded through
``PA``, ``RGBA``, ``CMYK``, ``YCbCr``  their palette; CMYK / YCbCr are converted to RGB)
``I;16``, ``I;16B``, ``I;16L``, …      16-bit greyscale: ``/ 65535``
``I`` (32-bit integer)                 16-bit greyscale PNGs of older Pillows: ``/ 65535`` when every value
                                       is in [0, 65535]; other ranges are refused (the bit depth is unknown)
``F`` (32-bit float)                   taken as is when every value is finite and in [0, 1], else refused
=====================================  ===================================================================

Greyscale is repeated to three channels. Transparency (``RGBA``, ``LA``, ``PA``, palette transparency) is
composited over black (colour × alpha), so the colour stored under fully transparent pixels never leaks in.
The EXIF orientation of photos is applied.

Depth (:func:`read_depth`): ``.npy`` (``allow_pickle=False``) or an image file; ``(H,W)``, or ``(H,W,C)`` /
``(1,H,W)`` of which channel 0 is used. Float data is in metres (``scale`` multiplies it when given);
integer data (8/16/32-bit PNG, integer ``.npy``) has no unit of its own, so metric depth from it needs
``scale`` (metres per unit, e.g. 0.001 for millimetre PNGs) and is refused without one. Non-finite values
are refused (write 0 for "no depth"); metric depth needs at least one positive value.

Every failure is a :class:`~moge4d_core.errors.MoGe4DInputError` naming the option and the file.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import MoGe4DInputError

__all__ = ["read_image", "read_depth", "image_to_float", "depth_array"]

_EIGHT_BIT = {"1", "L", "P", "RGB", "LA", "PA", "RGBA", "RGBX", "RGBa", "La", "CMYK", "YCbCr", "LAB", "HSV"}


def _existing_file(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise MoGe4DInputError(f"{what} {p}: no such file")
    if not p.is_file():
        raise MoGe4DInputError(f"{what} {p}: not a file")
    if p.stat().st_size == 0:
        raise MoGe4DInputError(f"{what} {p}: the file is empty (0 bytes); pass the real file")
    return p


def _open_image(p: Path, what: str):
    """Open and fully decode ``p`` with Pillow (first frame of an animation)."""
    from PIL import Image

    try:
        img = Image.open(p)
        img.load()
    except Exception as exc:  # Pillow raises many types (UnidentifiedImageError, OSError, SyntaxError, ...)
        raise MoGe4DInputError(f"{what} {p}: cannot read it as an image ({type(exc).__name__}: {exc}); "
                               f"pass a PNG / JPEG / TIFF file") from None
    if img.width < 1 or img.height < 1:
        raise MoGe4DInputError(f"{what} {p}: the image has no pixels ({img.width}x{img.height})")
    return img


def _has_alpha(img) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode in ("P", "L", "RGB")
                                                              and "transparency" in img.info)


def image_to_float(img, where: str = "image") -> np.ndarray:
    """A Pillow image -> ``(H,W,3)`` float32 RGB in [0,1], scaled by the mode's real bit depth.

    Args:
        img: a loaded ``PIL.Image.Image`` of any mode in the module docstring's table.
        where: how the error messages name the image (e.g. ``"--image photo.png"``).

    Returns:
        ``(H,W,3)`` float32 numpy array in [0,1]; transparency composited over black.

    Raises:
        MoGe4DInputError: a 32-bit integer image outside [0, 65535], a float image outside [0,1] or with
            NaN / inf, or a mode with no known meaning.
    """
    mode = img.mode
    if mode in _EIGHT_BIT:
        if _has_alpha(img):
            rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
            return np.ascontiguousarray(rgba[..., :3] * rgba[..., 3:4])
        return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
    if mode.startswith("I;16"):
        grey = np.asarray(img).astype(np.float32) / 65535.0
    elif mode == "I":
        raw = np.asarray(img)
        lo, hi = int(raw.min()), int(raw.max())
        if lo < 0 or hi > 65535:
            raise MoGe4DInputError(f"{where}: a 32-bit integer image with values in [{lo}, {hi}]; its bit depth "
                                   f"is unknown, so it cannot be scaled to [0,1]; save it as an 8- or 16-bit image")
        grey = raw.astype(np.float32) / 65535.0
    elif mode == "F":
        raw = np.asarray(img, dtype=np.float32)
        if not np.isfinite(raw).all():
            raise MoGe4DInputError(f"{where}: a float image with NaN or inf values; save it as an 8- or 16-bit image")
        lo, hi = float(raw.min()), float(raw.max())
        if lo < 0.0 or hi > 1.0:
            raise MoGe4DInputError(f"{where}: a float image with values in [{lo:g}, {hi:g}], expected [0, 1]; "
                                   f"save it as an 8- or 16-bit image")
        grey = raw
    else:
        raise MoGe4DInputError(f"{where}: image mode {mode!r} is not supported; save it as 8- or 16-bit RGB or "
                               f"greyscale")
    return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=-1))


def read_image(path: str | os.PathLike, what: str = "--image") -> torch.Tensor:
    """Read an image file as ``(H,W,3)`` float32 RGB in [0,1] (see the module docstring for the modes).

    Args:
        path: image file (PNG, JPEG, TIFF, WebP, ... anything Pillow decodes).
        what: the option that named the file, used in error messages.

    Returns:
        ``(H,W,3)`` float32 CPU tensor in [0,1], EXIF orientation applied.

    Raises:
        MoGe4DInputError: missing, empty or undecodable file, or a mode that cannot be scaled (names the file).
    """
    from PIL import ImageOps

    p = _existing_file(path, what)
    img = _open_image(p, what)
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block: keep the stored orientation
        pass
    return torch.from_numpy(image_to_float(img, f"{what} {p}"))


def _is_integer(arr: np.ndarray) -> bool:
    return arr.dtype.kind in "iu"


def depth_array(arr: np.ndarray, where: str, *, scale: Optional[float] = None, metric: bool = True) -> np.ndarray:
    """Check a raw depth array and convert it to float32 ``(H,W)`` (metres when ``metric``).

    Args:
        arr: ``(H,W)``, ``(H,W,C)`` (channel 0 is used) or ``(1,H,W)``; float (metres) or integer (units).
        where: names the input in error messages (e.g. ``"--depth d.png"``).
        scale: metres per stored unit; required for integer data when ``metric``; multiplies float data.
        metric: the values are metric depth (else relative: units do not matter, ``scale`` is optional).

    Returns:
        ``(H,W)`` float32 array; integer data times ``scale`` (or as is for relative depth).

    Raises:
        MoGe4DInputError: wrong shape or dtype, integer metric depth without ``scale``, a bad ``scale``,
            NaN / inf values, or metric depth with no positive value.
    """
    if arr.dtype.kind not in "iuf":
        raise MoGe4DInputError(f"{where}: depth values of type {arr.dtype} are not numbers; save float32 metres "
                               f"(.npy) or an integer depth image with --depth-scale")
    if arr.ndim == 3 and arr.shape[0] == 1 and arr.shape[-1] not in (1, 3, 4):
        arr = arr[0]
    elif arr.ndim == 3:
        arr = arr[..., 0]
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise MoGe4DInputError(f"{where}: expected an (H,W) depth map, got shape {tuple(arr.shape)}")
    if scale is not None:
        if isinstance(scale, bool) or not math.isfinite(float(scale)) or float(scale) <= 0:
            raise MoGe4DInputError(f"--depth-scale: expected a positive number of metres per unit, got {scale!r}")
    if _is_integer(arr) and metric and scale is None:
        kind = f"{arr.dtype.itemsize * 8}-bit integer"
        raise MoGe4DInputError(
            f"{where}: {kind} depth values (range {int(arr.min())}..{int(arr.max())}) have no unit; pass "
            f"--depth-scale METRES_PER_UNIT (e.g. 0.001 for millimetres, 1/5000 for TUM-style PNGs), or save "
            f"float32 metres as .npy")
    out = arr.astype(np.float64 if _is_integer(arr) else np.float32)
    if scale is not None:
        out = out * float(scale)
    out = out.astype(np.float32)
    finite = np.isfinite(out)
    if not finite.all():
        bad = int((~finite).sum())
        raise MoGe4DInputError(f"{where}: {bad} of {out.size} depth values are NaN or inf; write 0 where the depth "
                               f"is unknown (0 and negative values are treated as no depth)")
    if metric and not (out > 0).any():
        raise MoGe4DInputError(f"{where}: no positive depth value (range {float(out.min()):g}..{float(out.max()):g}); "
                               f"metric depth is the distance in front of the camera in metres (z > 0)")
    return out


def read_depth(path: str | os.PathLike, *, scale: Optional[float] = None, metric: bool = True,
               what: str = "--depth") -> torch.Tensor:
    """Read a depth map (``.npy`` or an image file) as an ``(H,W)`` float32 tensor.

    Args:
        path: ``.npy`` array (never unpickled) or an image (16-bit PNG, float TIFF, ...).
        scale: metres per stored unit (see :func:`depth_array`); required for integer metric depth.
        metric: metric depth (positive values needed, integer data needs ``scale``) or relative depth.
        what: the option that named the file, used in error messages.

    Returns:
        ``(H,W)`` float32 CPU tensor (metres when ``metric``).

    Raises:
        MoGe4DInputError: missing, empty or unreadable file, or any check of :func:`depth_array` (names the file).
    """
    p = _existing_file(path, what)
    where = f"{what} {p}"
    if p.suffix.lower() == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except Exception as exc:  # EOFError, ValueError (bad header / pickled objects), OSError, ...
            raise MoGe4DInputError(f"{where}: cannot read it as a .npy array ({type(exc).__name__}: {exc}); "
                                   f"save the depth with numpy.save as a float32 (H,W) array") from None
        if not isinstance(arr, np.ndarray):
            raise MoGe4DInputError(f"{where}: not a single .npy array")
    else:
        img = _open_image(p, what)
        if img.mode in ("P", "PA"):
            raise MoGe4DInputError(f"{where}: a palette image holds colour indices, not depth; save the depth as "
                                   f"a greyscale 16-bit PNG (with --depth-scale) or float32 .npy")
        arr = np.asarray(img)
        if arr.dtype == bool:
            raise MoGe4DInputError(f"{where}: a 1-bit image holds no depth; save a 16-bit PNG or float32 .npy")
    return torch.from_numpy(np.ascontiguousarray(depth_array(arr, where, scale=scale, metric=metric)))
