"""Preview images of render outputs (for humans, not for models).

``depth_to_image``: depth (T,H,W) -> (T,H,W,3) grey in [0,1], inverse depth normalised over the
whole sequence (so brightness is comparable between frames): nearest = 1, farthest = 0.1, holes = 0.
"""
from __future__ import annotations

import torch


def depth_to_image(depth: torch.Tensor, holes: torch.Tensor | None = None) -> torch.Tensor:
    """depth (T,H,W) camera z, holes (T,H,W) 1 = empty -> (T,H,W,3) float in [0,1]."""
    d = depth.float()
    valid = (d > 0) & torch.isfinite(d)
    if holes is not None:
        valid &= holes < 0.5
    out = torch.zeros_like(d)
    if valid.any():
        inv = torch.where(valid, 1.0 / d.clamp_min(1e-12), torch.zeros_like(d))
        lo, hi = inv[valid].min(), inv[valid].max()
        span = (hi - lo).clamp_min(1e-12)
        out = torch.where(valid, 0.1 + 0.9 * (inv - lo) / span, out)
    return out[..., None].expand(*out.shape, 3).contiguous()
