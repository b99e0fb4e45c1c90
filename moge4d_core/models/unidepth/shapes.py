"""Network-input size rules of UniDepthV2 and V2old ``infer`` (reference ``encoders.md`` §1.4, §1.6).

V2 (pixels): the image is zero-padded (centred, after normalisation) to an aspect ratio ``W/H`` clamped to
``ratio_bounds`` (default [0.5, 2.5]), then resized so its pixel count lies in ``pixels_bounds`` (default
[200000, 600000], or the sub-interval of ``resolution_level`` 0..9), each side rounded *up* to a multiple of 14
after truncation. Worked examples: 368x512 -> 392x532, 1080x1920 -> 588x1036, 336x596 -> 336x602.

V2old (tokens): the token count is fixed to ``1400 + ceil(1000 * level / 10)`` (level 10, i.e. 2400 tokens, by
default); ``h = ceil(sqrt(N / ratio) - 0.5)``, ``w = ceil(h * ratio - 0.5)`` tokens of 14 px, no padding.
Examples: 368x512 -> 588x812, 336x596 -> 518x924, 480x640 -> 588x784.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

from ...errors import MoGe4DInputError

PATCH = 14
V2_RESOLUTION_LEVELS = 10      # levels 0..9
V2OLD_RESOLUTION_LEVELS = 10   # levels 0..10


def v2_paddings(height: int, width: int, ratio_bounds: Sequence[float] = (0.5, 2.5)):
    """``((left, right, top, bottom), (padded_h, padded_w))`` that bring ``W/H`` inside ``ratio_bounds``.

    Args:
        height, width: the image size in pixels.
        ratio_bounds: ``(min, max)`` of ``W/H``.

    Returns:
        zero-padding in pixels per side (centred) and the padded size in pixels.
    """
    ratio = width / height
    lo, hi = ratio_bounds
    target = min(hi, max(lo, ratio))
    if ratio > target:      # too wide: pad top / bottom
        new_h = int(width / target)
        top = (new_h - height) // 2
        return (0, 0, top, new_h - height - top), (new_h, width)
    new_w = int(height * target)  # too tall (or inside the bounds: no padding)
    left = (new_w - width) // 2
    return (left, new_w - width - left, 0, 0), (height, new_w)


def v2_pixel_bounds(resolution_level: Optional[int], pixels_bounds: Sequence[float] = (200000, 600000),
                    pixel_budget: Optional[int] = None) -> tuple[float, float]:
    """Pixel-count interval for the network input.

    ``pixel_budget`` (our addition) pins the count to one value; otherwise ``resolution_level`` in 0..9 selects
    the sub-interval ``[lo + l*(hi-lo)/10, lo + (l+1)*(hi-lo)/10]``, and None uses the full interval.

    Returns:
        ``(min_pixels, max_pixels)`` of the network input.

    Raises:
        MoGe4DInputError: ``pixel_budget`` below 196 (one 14x14 patch), or ``resolution_level`` outside 0..9.
    """
    if pixel_budget is not None:
        if int(pixel_budget) < PATCH * PATCH:
            raise MoGe4DInputError(f"pixel_budget: must be at least {PATCH * PATCH} (one 14x14 patch), "
                                   f"got {pixel_budget}")
        return float(pixel_budget), float(pixel_budget)
    lo, hi = float(pixels_bounds[0]), float(pixels_bounds[1])
    if resolution_level is None:
        return lo, hi
    level = int(resolution_level)
    if not 0 <= level < V2_RESOLUTION_LEVELS:
        raise MoGe4DInputError(f"resolution_level: UniDepthV2 accepts 0..{V2_RESOLUTION_LEVELS - 1} (or None for "
                               f"the full range), got {resolution_level}")
    step = (hi - lo) / V2_RESOLUTION_LEVELS
    return lo + level * step, lo + (level + 1) * step


def v2_resize(height: int, width: int, pixel_bounds: Sequence[float]) -> tuple[float, tuple[int, int]]:
    """``(factor, (new_h, new_w))``: scale the pixel count into ``pixel_bounds``, round sides up to 14.

    Args:
        height, width: the (padded) image size in pixels.
        pixel_bounds: ``(min, max)`` pixel count of the network input.

    Returns:
        the scale factor applied to the sides (and to K) and the network size in pixels, multiples of 14.
    """
    n = height * width
    target = min(pixel_bounds[1], max(pixel_bounds[0], n))
    factor = (target / n) ** 0.5
    new_w = int(width * factor)
    new_h = int(height * factor)
    new_h = math.ceil(new_h / PATCH) * PATCH
    new_w = math.ceil(new_w / PATCH) * PATCH
    return factor, (max(new_h, PATCH), max(new_w, PATCH))


def v2_network_shape(height: int, width: int, resolution_level: Optional[int] = None,
                     pixel_budget: Optional[int] = None, ratio_bounds: Sequence[float] = (0.5, 2.5),
                     pixels_bounds: Sequence[float] = (200000, 600000)):
    """All V2 preprocessing numbers: ``(paddings lrtb, (padded_h, padded_w), factor, (net_h, net_w))``.

    Args:
        height, width: the input image size in pixels.
        resolution_level, pixel_budget: as :func:`v2_pixel_bounds`.
        ratio_bounds, pixels_bounds: the config's input rules (aspect ``W/H``, pixel count).

    Returns:
        paddings (left, right, top, bottom) and padded size in input pixels, the resize factor, and the network
        input size (multiples of 14).

    Raises:
        MoGe4DInputError: as :func:`v2_pixel_bounds`.
    """
    pads, padded = v2_paddings(height, width, ratio_bounds)
    bounds = v2_pixel_bounds(resolution_level, pixels_bounds, pixel_budget)
    factor, net = v2_resize(padded[0], padded[1], bounds)
    return pads, padded, factor, net


def v2old_token_budget(resolution_level: Optional[int], tokens_bounds: Sequence[int] = (1400, 2400),
                       pixel_budget: Optional[int] = None) -> int:
    """Number of 14x14 tokens of the V2old network input (``pixel_budget`` / 196 when given).

    Args:
        resolution_level: 0..10 (None = 10): ``lo + ceil((hi - lo) * level / 10)`` tokens.
        tokens_bounds: ``(lo, hi)`` token counts (the config's ``pixels_bounds`` for V2old, 1400..2400).
        pixel_budget: about this many pixels instead, or None.

    Returns:
        the token count.

    Raises:
        MoGe4DInputError: ``pixel_budget`` below 196, or ``resolution_level`` outside 0..10.
    """
    if pixel_budget is not None:
        tokens = int(pixel_budget) // (PATCH * PATCH)
        if tokens < 1:
            raise MoGe4DInputError(f"pixel_budget: must be at least {PATCH * PATCH} (one 14x14 patch), "
                                   f"got {pixel_budget}")
        return tokens
    lo, hi = sorted(int(t) for t in tokens_bounds)
    level = V2OLD_RESOLUTION_LEVELS if resolution_level is None else int(resolution_level)
    if not 0 <= level <= V2OLD_RESOLUTION_LEVELS:
        raise MoGe4DInputError(f"resolution_level: UniDepthV2old accepts 0..{V2OLD_RESOLUTION_LEVELS} (or None for "
                               f"the maximum), got {resolution_level}")
    return lo + math.ceil((hi - lo) * level / V2OLD_RESOLUTION_LEVELS)


def v2old_network_shape(height: int, width: int, tokens: int) -> tuple[tuple[int, int], float]:
    """``((net_h, net_w), ratio)`` with ``ratio = net_h / height`` (the single scale applied to K).

    Args:
        height, width: the input image size in pixels.
        tokens: token budget (:func:`v2old_token_budget`).

    Returns:
        the network input size in pixels (multiples of 14) and the scale factor of K.

    Raises:
        MoGe4DInputError: the aspect ratio is so extreme that a side gets no token.
    """
    aspect = width / height
    h = math.ceil((tokens / aspect) ** 0.5 - 0.5)
    w = math.ceil(h * aspect - 0.5)
    if h < 1 or w < 1:
        raise MoGe4DInputError(f"image: aspect ratio {width}x{height} is too extreme for a {tokens}-token "
                               f"UniDepthV2old input (gives {h}x{w} tokens); crop or pad the image")
    return (h * PATCH, w * PATCH), h / height * PATCH
