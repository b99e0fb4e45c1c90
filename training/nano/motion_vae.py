"""The nano recipe's motion VAE task: :class:`~training.train_vae.MotionVaeTask` with the reconstruction error
measured in metres.

The release's L1 of the normalised motion weighs every element alike; a small motion VAE trained from scratch on it
trades the sparse moving points for the static background and decodes every motion as 0. This task instead
scores the squared error of the *de-normalised* motion, ``(recon − target) · (z/fx, z/fy, z)`` per pixel (the
factors of :func:`moge4d_core.geometry.normalization.motion_scale`), summed over the elements and divided by the
batch: the units of the trajectory error the model is judged by, so far static background weighs as it does there.
The ``motion_vae`` and ``motion_decoder`` stages of :mod:`.train_nano` train with it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from moge4d_core.geometry.normalization import motion_scale

from ..train_vae import MotionVaeTask
from ..vae_task import VaeBatch

__all__ = ["MetricVaeBatch", "MetricMotionVaeTask", "metric_l2"]


@dataclass
class MetricVaeBatch(VaeBatch):
    """A motion VAE batch with the de-normalisation factors of its samples.

    Attributes:
        target: (B, 3, T, H, W) normalised motion ``delta_hat``.
        metric_scale: (B, 3, 1, H, W) float32 ``(z0/fx, z0/fy, z0)`` per pixel (metres per normalised unit).
    """

    metric_scale: torch.Tensor


def metric_l2(recon: torch.Tensor, target: torch.Tensor, metric_scale: torch.Tensor) -> torch.Tensor:
    """Squared error of the de-normalised motion, summed over the elements and divided by the batch.

    Args:
        recon: (B, 3, T, H, W) decoded normalised motion.
        target: (B, 3, T, H, W) true normalised motion.
        metric_scale: (B, 3, 1, H, W) de-normalisation factors (:class:`MetricVaeBatch`).

    Returns:
        scalar float32, in square metres per sample.
    """
    r, t = recon.float(), target.float()
    return ((r - t) * metric_scale.float()).square().sum() / r.shape[0]


class MetricMotionVaeTask(MotionVaeTask):
    """The motion VAE trainer with :func:`metric_l2` as the reconstruction term (``--rec-loss`` is not used)."""

    def collate(self, samples: list) -> MetricVaeBatch:
        scale = torch.stack([motion_scale(s.first_frame_points, s.spec) for s in samples]).permute(0, 3, 1, 2)
        return MetricVaeBatch(target=super().collate(samples).target, metric_scale=scale[:, :, None].contiguous())

    def reconstruction(self, recon: torch.Tensor, batch: MetricVaeBatch) -> torch.Tensor:
        return metric_l2(recon, batch.target.to(recon.device), batch.metric_scale.to(recon.device))
