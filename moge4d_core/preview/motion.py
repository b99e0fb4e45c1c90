"""Preview of the trajectory model's output: the normalised motion as colour video."""
from __future__ import annotations

import torch

from ..types import Motion

__all__ = ["motion_preview"]


def motion_preview(motion: Motion) -> torch.Tensor:
    """(T,H,W,3) in [0,1]: direction of the normalised image-plane motion as hue-like colour (x → red/cyan,
    y → green/magenta), brightness = |ΔP̂| over the whole clip's maximum. Frame 0 is black."""
    d = motion.delta.float()
    mag = d.norm(dim=-1)
    scale = mag.max().clamp_min(1e-8)
    n = d / scale
    rgb = torch.stack([0.5 + 0.5 * n[..., 0], 0.5 + 0.5 * n[..., 1], 0.5 + 0.5 * n[..., 2]], dim=-1)
    return (rgb * (mag / scale)[..., None]).clamp(0, 1)
