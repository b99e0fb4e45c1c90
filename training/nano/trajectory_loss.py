"""The paper's average trajectory error (eq. 7) as a differentiable training loss, and the STraG task of the
nano recipe's ``strag_tune`` stage that adds it to the flow loss (``--trajectory-loss W``, :class:`TrajectoryStragTask`).

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

from dataclasses import dataclass
from typing import Optional

import torch

from moge4d_core.geometry.normalization import motion_scale

from ..datasets import TrajSceneBatch
from ..options import opt
from ..train_strag import StragOptions, StragTask

__all__ = ["trajectory_loss", "TrajectoryStragOptions", "TrajectoryStragTask"]


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


@dataclass
class TrajectoryStragOptions(StragOptions):
    """:class:`~training.train_strag.StragOptions` plus the weight of the trajectory-space loss."""

    trajectory_loss: float = opt(0.0, "weight of the trajectory-space loss (eq. 7 in metres of the one-step estimate "
                                      "x_t - sigma*v decoded by the frozen motion VAE; 0: off, the release's objective)")


class TrajectoryStragTask(StragTask):
    """The STraG task with ``trajectory_loss × eq. 7`` (:func:`trajectory_loss`) added to the flow loss; the flow
    draws are the plain task's, and the log records carry both terms (``flow``, ``trajectory``)."""

    def loss_from_latents(self, model, batch: TrajSceneBatch, g: torch.Generator, x0: torch.Tensor,
                          control: torch.Tensor, depth: torch.Tensor, ref: Optional[torch.Tensor] = None):
        weight = self.o.trajectory_loss
        if weight <= 0:
            return super().loss_from_latents(model, batch, g, x0, control, depth, ref)
        loss, metrics, pred, fb = self.flow_prediction(model, x0, g, **self.dit_inputs(batch, g, control, depth, ref))
        traj = self.trajectory_term(pred, fb, batch)
        metrics["flow"], metrics["trajectory"] = float(loss.detach()), float(traj.detach())
        return loss + weight * traj, metrics

    def trajectory_term(self, pred: torch.Tensor, fb, batch: TrajSceneBatch) -> torch.Tensor:
        """Eq. 7 (metres) of the one-step estimate ``x̂0 = x_t − σ·v̂`` decoded by the frozen motion VAE.

        Args:
            pred: (B,16,F,h,w) the DiT's velocity prediction (gradients reach the DiT through it).
            fb: the :class:`~training.flow.FlowBatch` it was predicted from (``noisy`` x_t, ``sigma`` (B,)).
            batch: the batch (true points, first-frame points, normalisation specs, visibility).

        Returns:
            scalar float32 (metres).
        """
        dev = self.device
        s = fb.sigma.view(-1, *([1] * (pred.ndim - 1)))
        x0_hat = fb.noisy - s * pred.float()
        p = next(self.motion_vae.parameters())
        delta = self.motion_vae.decode(x0_hat.to(p.dtype), traj_norm=self.o.traj_norm).float().permute(0, 2, 3, 4, 1)
        vis = batch.visibility
        return trajectory_loss(delta, batch.points.to(dev), batch.first_frame_points.to(dev), batch.spec,
                               None if vis is None else vis.to(dev))
