"""Fit a photo (and its depth map) to the working size's aspect ratio without stretching it.

``crop`` keeps the centre of the image at the working aspect; ``pad`` keeps the whole image and adds black bars
(whose depth repeats the nearest edge's). A horizontal field of view given for the photo is converted to the
fitted image (same focal length in pixels, new width). The working size itself is reached later by a uniform resize.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..errors import MoGe4DInputError
from ..geometry.intrinsics import focal_from_fov, fov_from_focal

__all__ = ["FIT_MODES", "Fitted", "fit_to_aspect", "fit_box"]

FIT_MODES = ("crop", "pad")


@dataclass
class Fitted:
    """The fitted image (H',W',3), depth (H',W') or None, field of view (degrees) or None, and ``note``: one line
    saying what was cut or added ("" when the aspect already matched)."""

    image: torch.Tensor
    depth: Optional[torch.Tensor]
    fov: Optional[float]
    note: str


def fit_box(height: int, width: int, target_w: int, target_h: int, mode: str) -> tuple[int, int, int, int]:
    """Rows / columns to cut (crop, >= 0) or add (pad, <= 0) on each side to reach the aspect target_w : target_h.

    Returns:
        (top, bottom, left, right) in pixels: positive = cut, negative = added.
    """
    if mode not in FIT_MODES:
        raise MoGe4DInputError(f"--fit {mode!r}: expected one of {', '.join(FIT_MODES)}")
    aspect = target_w / target_h
    if abs(width / height - aspect) * height < 0.5:        # the same aspect up to half a pixel
        return 0, 0, 0, 0
    too_wide = width / height > aspect
    if mode == "crop":
        if too_wide:
            cut = width - max(1, round(height * aspect))
            return 0, 0, cut // 2, cut - cut // 2
        cut = height - max(1, round(width / aspect))
        return cut // 2, cut - cut // 2, 0, 0
    if too_wide:
        add = round(width / aspect) - height
        return -(add // 2), -(add - add // 2), 0, 0
    add = round(height * aspect) - width
    return 0, 0, -(add // 2), -(add - add // 2)


def _apply(x: torch.Tensor, box: tuple[int, int, int, int], fill: str) -> torch.Tensor:
    """Cut or pad the first two dims of ``x`` (H,W[,C]) by ``box``; pads with zeros or by repeating the edge."""
    top, bottom, left, right = box
    h, w = x.shape[:2]
    x = x[max(top, 0):h - max(bottom, 0), max(left, 0):w - max(right, 0)]
    pads = (max(-left, 0), max(-right, 0), max(-top, 0), max(-bottom, 0))
    if not any(pads):
        return x
    chw = x.permute(2, 0, 1) if x.ndim == 3 else x[None]
    if fill == "zeros":
        out = F.pad(chw[None].float(), pads)[0]
    else:
        out = F.pad(chw[None].float(), pads, mode="replicate")[0]
    return (out.permute(1, 2, 0) if x.ndim == 3 else out[0]).to(x.dtype)


def fit_to_aspect(image: torch.Tensor, depth: Optional[torch.Tensor], fov: Optional[float], width: int, height: int,
                  mode: str = "crop") -> Fitted:
    """Centre-crop or pad ``image`` (and ``depth``) to the aspect ``width : height``; never stretched.

    Args:
        image: (H,W,3) float in [0,1].
        depth: (h,w) depth map or None; resized to (H,W) with nearest-neighbour first when its size differs.
        fov: horizontal field of view of ``image`` in degrees, or None.
        width, height: the working size (only its aspect matters here).
        mode: ``"crop"`` (keep the centre) or ``"pad"`` (black bars; the depth repeats the nearest edge).

    Returns:
        :class:`Fitted`; the field of view is the same focal length in pixels across the new width.
    """
    h, w = int(image.shape[0]), int(image.shape[1])
    box = fit_box(h, w, width, height, mode)
    if box == (0, 0, 0, 0):
        return Fitted(image, depth, fov, "")
    if depth is not None and tuple(depth.shape) != (h, w):
        depth = F.interpolate(depth[None, None].float(), size=(h, w), mode="nearest")[0, 0]
    out = _apply(image, box, "zeros")
    d = None if depth is None else _apply(depth, box, "edge")
    h1, w1 = int(out.shape[0]), int(out.shape[1])
    new_fov = None if fov is None else fov_from_focal(focal_from_fov(fov, w), w1)
    top, bottom, left, right = (abs(v) for v in box)
    rows, cols = top + bottom, left + right
    what = (f"{rows} rows ({top} top, {bottom} bottom)" if rows else f"{cols} columns ({left} left, {right} right)")
    if mode == "crop":
        note = (f"--fit crop: the image is {w}x{h}, the working size {width}x{height}; using its centre {w1}x{h1} "
                f"(cut {what}); --fit pad keeps the whole image")
    else:
        note = (f"--fit pad: the image is {w}x{h}, the working size {width}x{height}; padded to {w1}x{h1} with black "
                f"bars of {what} (their depth repeats the nearest edge); --fit crop cuts instead")
    if fov is not None and abs(new_fov - fov) > 1e-6:
        note += f"; --fov {fov:g} of the image is {new_fov:.2f} degrees across the fitted width"
    return Fitted(out, d, new_fov, note)
