"""Flow-matching training objective of both DiTs (reference ``moge4d_official.md`` A7, C).

* σ grid: the 1000 *training* sigmas of diffusers ``FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000,
  shift=5)`` before ``set_timesteps``: ``s_k = k/1000`` for ``k = 1000..1`` (float32), shifted with
  :func:`moge4d_core.sampling.schedules.time_shift` (``5s/(1+4s)``). Index 0 is σ = 1, index 999 is
  σ = time_shift(0.001) ≈ 0.004975.
* per batch item ``idx ~ U{0..999}``, ``σ = sigmas[idx]``, ``timestep = 1000·σ`` (the scheduler's
  ``timesteps[idx]``), ``x_t = (1−σ)·x0 + σ·ε``, target velocity ``v = ε − x0``;
* loss: MSE where elements with ``|pred − target| > 50`` count as 0, averaged over *all* elements (the
  release's ``custom_mse_loss``), weighting "none".

The σ grid is computed here from the shared ``time_shift`` rather than by instantiating the diffusers
scheduler (no hidden state; the test checks it against diffusers bit for bit).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from moge4d_core.sampling.schedules import time_shift

__all__ = ["TRAIN_TIMESTEPS", "RELEASE_SHIFT", "LOSS_THRESHOLD", "training_sigmas", "FlowBatch",
           "flow_matching_inputs", "masked_mse"]

TRAIN_TIMESTEPS = 1000
RELEASE_SHIFT = 5.0
LOSS_THRESHOLD = 50.0


def training_sigmas(shift: float = RELEASE_SHIFT, num_train_timesteps: int = TRAIN_TIMESTEPS) -> torch.Tensor:
    """(num_train_timesteps,) float32 decreasing σ grid (= diffusers ``FlowMatchEulerDiscreteScheduler.sigmas``)."""
    t = int(num_train_timesteps)
    s = torch.arange(t, 0, -1, dtype=torch.float32) / t
    return time_shift(s, float(shift)) if shift != 1.0 else s


@dataclass
class FlowBatch:
    """One flow-matching draw for latents ``x0 (B,C,F,h,w)``: ``noisy`` like x0, ``timestep (B,)`` = 1000σ,
    ``target`` = ε − x0, ``sigma (B,)``, ``index (B,)`` into the σ grid."""

    noisy: torch.Tensor
    timestep: torch.Tensor
    target: torch.Tensor
    sigma: torch.Tensor
    index: torch.Tensor


def flow_matching_inputs(x0: torch.Tensor, sigmas: torch.Tensor, generator: torch.Generator) -> FlowBatch:
    """Draw ``idx ~ U{0..len(sigmas)-1}`` per item, then noise ε ~ N(0,1) (float32, on ``x0``'s device, from
    ``generator``, which must live on that device), in this order."""
    b = x0.shape[0]
    x0 = x0.float()
    idx = torch.randint(0, sigmas.shape[0], (b,), generator=generator, device=x0.device)
    sigma = sigmas.to(x0.device)[idx]
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=torch.float32)
    s = sigma.view(b, *([1] * (x0.ndim - 1)))
    noisy = (1 - s) * x0 + s * noise
    return FlowBatch(noisy=noisy, timestep=sigma * TRAIN_TIMESTEPS, target=noise - x0, sigma=sigma, index=idx)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, threshold: float = LOSS_THRESHOLD) -> torch.Tensor:
    """``mean((pred − target)² · [|pred − target| ≤ threshold])`` over all elements, in float32."""
    diff = pred.float() - target.float()
    keep = (diff.abs() <= threshold).to(diff.dtype)
    return (diff.square() * keep).mean()
