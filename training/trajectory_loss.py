"""The paper's average trajectory error (eq. 7) as a differentiable training loss, for the STraG trainer's
``--trajectory-loss``.

The flow-matching objective scores latents; the model is judged on trajectories in metres, after the motion
VAE's decoder and the depth-guided de-normalisation. Those two steps weigh latent errors very unevenly (a small
normalised error on far static background is a large error in metres, and the decoder spreads one latent cell over
8×8 pixels), and a latent-MSE predictor that is unsure hedges towards the mean everywhere, which eq. 7 (an L2
distance, not squared) punishes on the many static points. This loss lets the DiT see the metric it is scored by::

    x̂0   = x_t − σ·v̂                                   (the one-step estimate of the clean latent)
    ΔP̂   = motion_vae.decode(x̂0)                         (B,T,H,W,3) normalised motion, frozen decoder
    P̂    = apply_motion(ΔP̂, P0, spec)                   (metres; frame 0 = P0)
    loss = mean over (b, t ≥ 1, n visible) of ‖P̂ − P‖₂

exactly :func:`training.eval.metrics.trajectory_error` pooled over the batch (the test checks it against that
function). Written here because it is a few lines on top of this project's own de-normalisation; no library
has MoGe4D's motion normalisation.
"""
from __future__ import annotations

from typing import Optional

import torch

from moge4d_core.geometry.normalization import motion_scale

__all__ = ["trajectory_loss"]


def trajectory_loss(delta_hat: torch.Tensor, points: torch.Tensor, first_frame_points: torch.Tensor, specs: list,
                    visibility: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean L2 distance (metres) of the de-normalised ``delta_hat`` from the true ``points``.

    Args:
        delta_hat: (B,T,H,W,3) predicted normalised motion (frame 0 is ignored).
        points: (B,T,H,W,3) true metric trajectories (world = first-frame camera, OpenCV axes).
        first_frame_points: (B,H,W,3) the first-frame points the motion is added to.
        specs: B :class:`~moge4d_core.geometry.normalization.NormalizationSpec`, one per sample.
        visibility: (B,T,H,W) bool true visibility, or None (every point counts).

    Returns:
        scalar float32, pooled over every selected (sample, frame ≥ 1, point); 0 when none is selected.
    """
    scale = torch.stack([motion_scale(first_frame_points[i].float(), s) for i, s in enumerate(specs)])
    pred = first_frame_points.float()[:, None] + delta_hat[:, 1:].float() * scale[:, None]
    dist = (pred - points[:, 1:].float()).square().sum(-1).clamp_min(1e-12).sqrt()      # (B,T-1,H,W)
    if visibility is None:
        return dist.mean()
    keep = visibility[:, 1:].to(dist.dtype)
    return (dist * keep).sum() / keep.sum().clamp_min(1.0)
