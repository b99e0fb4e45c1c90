"""Depth previews for people: inverse depth as grey, and UniDepth's confidence as a mask.

One rule for every depth preview in the pack (the depth nodes' per-image preview and the renderer's per-clip
depth video): inverse depth rescaled over all valid values given (so frames of a clip are comparable), near = 1,
far = 0.1, invalid = 0; a constant depth is drawn white.
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["depth_preview", "confidence_mask"]


def depth_preview(depth: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Depth ``(..., H, W)`` -> grey preview ``(..., H, W, 3)`` in [0, 1].

    Args:
        depth: camera z (metres or any positive unit), any leading dims (e.g. ``(T, H, W)`` for a clip);
            values <= 0 or non-finite are invalid.
        valid: optional bool mask of the same shape (e.g. ``holes < 0.5`` of a render).

    Returns:
        float32 ``(..., H, W, 3)``: ``0.1 + 0.9 * (1/z - min) / (max - min)`` over all valid values, 0 elsewhere.
    """
    d = depth.float()
    ok = torch.isfinite(d) & (d > 0)
    if valid is not None:
        ok = ok & valid.bool()
    out = torch.zeros_like(d)
    if bool(ok.any()):
        inv = 1.0 / d[ok]
        lo, hi = inv.min(), inv.max()
        out[ok] = 0.1 + 0.9 * ((inv - lo) / (hi - lo) if float(hi - lo) > 0 else torch.ones_like(inv))
    return out[..., None].expand(*out.shape, 3).contiguous()


def confidence_mask(confidence: torch.Tensor) -> torch.Tensor:
    """UniDepth confidence ``(..., H, W)`` -> ``[0, 1]`` mask: divided by its maximum (V2's ``exp(logc)`` is a
    ranking, not a probability; V2old's sigmoid keeps its order too). Non-finite -> 0."""
    c = torch.nan_to_num(confidence.float(), nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0)
    peak = c.amax(dim=(-2, -1), keepdim=True)
    return torch.where(peak > 0, c / peak.clamp_min(1e-12), torch.zeros_like(c))
