"""Flow-matching noise schedules (sigma grids) for MoGe4D's Wan DiTs.

Convention (rectified flow, as the official training code, report §A7):
``x_σ = (1 − σ)·x0 + σ·ε`` with σ ∈ [0, 1]; the DiT predicts the velocity ``v = ε − x0`` and takes the
timestep ``t = 1000·σ`` (diffusers Wan convention, ``timestep`` in [0, 1000]).

:func:`flow_sigmas` reproduces ``diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000,
shift=shift).set_timesteps(steps).sigmas`` (the official sampler, shift 5, 50 steps): the timestep grid runs
linearly from ``1000·σ_max`` to ``1000·σ_min`` where σ_max/σ_min are the already *shifted* training
end-points, and is then shifted a second time (the release does this; see report §A8).  It is written here
as a three-line formula rather than instantiating the diffusers scheduler so that it has no hidden state and
works for any device; the test checks it against diffusers itself.

All functions return a 1-D float32 tensor of ``steps + 1`` values, decreasing, the last being the end σ
(0 for a full schedule).
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch

from ..errors import require

__all__ = ["time_shift", "flow_sigmas", "truncate_sigmas", "denoise_sigmas", "sigma_to_timestep"]


def time_shift(sigma: Union[float, np.ndarray, torch.Tensor], shift: float):
    """SD3/Wan timestep shift ``shift·σ / (1 + (shift − 1)·σ)`` (identity for shift 1)."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def flow_sigmas(steps: int, shift: float = 5.0, *, num_train_timesteps: int = 1000,
                device: Optional[Union[str, torch.device]] = None) -> torch.Tensor:
    """σ grid of the official Euler flow sampler.

    Returns ``(steps + 1,)`` float32: ``time_shift(linspace(σ_max, σ_min, steps), shift)`` followed by 0, where
    ``σ_max = time_shift(1, shift) = 1`` and ``σ_min = time_shift(1/num_train_timesteps, shift)`` (both in
    float32, as diffusers stores them).  ``steps=50, shift=5`` gives 1.0, 0.99587, …, 0.02441, 0.
    """
    require(isinstance(steps, (int, np.integer)) and steps >= 1,
            f"sampling steps: expected an integer >= 1, got {steps!r}; set steps to e.g. 50")
    require(shift > 0, f"sampling shift: expected a positive number, got {shift!r}; the release uses 5.0")
    T = int(num_train_timesteps)
    # training end-points, computed in float32 exactly like diffusers' scheduler __init__
    train = torch.tensor([1.0, 1.0 / T], dtype=torch.float32)
    train = time_shift(train, float(shift)) if shift != 1.0 else train
    s_max, s_min = float(train[0].item()), float(train[1].item())
    t = np.linspace(s_max * T, s_min * T, int(steps))  # float64, like diffusers
    s = t / T
    s = (time_shift(s, float(shift))).astype(np.float32)
    out = torch.cat([torch.from_numpy(s), torch.zeros(1)])
    return out.to(device) if device is not None else out


def truncate_sigmas(sigmas: torch.Tensor, start_step: int = 0, end_step: Optional[int] = None) -> torch.Tensor:
    """Keep steps ``[start_step, end_step)`` of a schedule: returns ``sigmas[start_step : end_step + 1]``.

    ``end_step=None`` (or >= number of steps) runs to the end.  Like ComfyUI's KSamplerAdvanced, a run that
    stops early returns the latent still noisy at ``sigmas[end_step]``.
    """
    n = sigmas.shape[0] - 1
    require(sigmas.ndim == 1 and n >= 1, f"sigmas: expected a 1-D schedule with >= 2 values, got shape "
                                         f"{tuple(sigmas.shape)}")
    end = n if end_step is None else min(int(end_step), n)
    require(0 <= start_step < end, f"start_step/end_step: expected 0 <= start_step < end_step <= {n}, got "
                                   f"start_step={start_step}, end_step={end_step}")
    return sigmas[int(start_step):end + 1]


def denoise_sigmas(steps: int, denoise: float = 1.0, shift: float = 5.0, *,
                   num_train_timesteps: int = 1000) -> torch.Tensor:
    """Schedule for a partial denoise (img2img strength), the ComfyUI KSampler way.

    ``denoise=1`` → :func:`flow_sigmas`; otherwise the schedule of ``int(steps / denoise)`` steps is built and
    its last ``steps + 1`` values are kept, so ``steps`` model calls are run starting at a σ < 1.
    """
    require(0.0 < denoise <= 1.0, f"denoise: expected a value in (0, 1], got {denoise!r}")
    if denoise >= 1.0:
        return flow_sigmas(steps, shift, num_train_timesteps=num_train_timesteps)
    total = int(steps / denoise)
    return flow_sigmas(total, shift, num_train_timesteps=num_train_timesteps)[-(steps + 1):]


def sigma_to_timestep(sigma: Union[float, torch.Tensor], num_train_timesteps: int = 1000):
    """DiT timestep for a σ: ``t = num_train_timesteps · σ`` (diffusers Wan convention, t ∈ [0, 1000])."""
    return sigma * num_train_timesteps
