"""Preview of OmniMAE motion features: the norm of each patch token as a heat map."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["token_norm_preview"]


def token_norm_preview(tokens: torch.Tensor, grid: tuple[int, int], height: int, width: int) -> torch.Tensor:
    """Patch tokens ``(G_h*G_w, C)`` -> heat map ``(height,width,3)`` in [0,1] of each token's L2 norm
    (min -> 0, max -> 1), bilinearly upsampled to the image size; grey scale repeated to RGB."""
    gh, gw = int(grid[0]), int(grid[1])
    n = tokens.float().norm(dim=-1).reshape(1, 1, gh, gw)
    lo, hi = n.min(), n.max()
    n = (n - lo) / (hi - lo) if float(hi - lo) > 0 else torch.zeros_like(n)
    up = F.interpolate(n, size=(int(height), int(width)), mode="bilinear", align_corners=False)[0, 0].clamp(0, 1)
    return up[..., None].expand(-1, -1, 3).contiguous()
