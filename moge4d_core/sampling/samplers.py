"""Flow-matching samplers driving a velocity model ``v = model_fn(x, sigma)``.

Convention: ``x_σ = (1 − σ)·x0 + σ·ε``, ``v = ε − x0``, so the x0 estimate is ``x − σ·v``.
``sigma`` is handed to ``model_fn`` as a 0-dim float32 tensor on ``x.device``; a DiT wrapper turns it into its
timestep with :func:`moge4d_core.sampling.schedules.sigma_to_timestep` (``1000·σ``).

Solvers:

* ``"euler"`` — the official sampler (diffusers ``FlowMatchEulerDiscreteScheduler.step`` is the same one-line
  update ``x + (σ_next − σ)·v``); written here because it is one line and needs no scheduler state.
* ``"unipc"`` / ``"dpmpp_2m"`` — diffusers ``UniPCMultistepScheduler`` / ``DPMSolverMultistepScheduler``
  (``prediction_type="flow_prediction"``, ``use_flow_sigmas=True``, 2nd order, ``final_sigmas_type="zero"``),
  made to step on *our* σ grid by overwriting the scheduler's ``sigmas`` / ``timesteps`` after
  ``set_timesteps``.  A fresh scheduler is built for every call, so nothing leaks between runs (a cancelled run
  leaves no state behind).

Progress / cancel: ``callback(done, total)`` is called after every step; it may raise (e.g. ComfyUI's
``InterruptProcessingException``) to cancel — the exception propagates unchanged.

Noise: :func:`make_noise` draws on the CPU from ``torch.Generator().manual_seed(seed)`` in float32 and then
moves/casts, so a seed gives the same noise on every device.  (The official script draws bf16 noise with a
CUDA generator; those exact values cannot be reproduced on other devices, so we do not try.)
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch

from ..errors import require
from .guidance import guided_velocity

__all__ = ["SOLVERS", "make_noise", "noise_latent", "euler_step", "sample_flow"]

SOLVERS = ("euler", "unipc", "dpmpp_2m")

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ProgressFn = Callable[[int, int], None]


def make_noise(shape: Sequence[int], seed: int, device: Union[str, torch.device] = "cpu",
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal noise of ``shape`` drawn on the CPU (float32) from ``seed``, then moved to ``device``
    and cast to ``dtype``: identical values for a seed on every device."""
    require(isinstance(seed, int) and 0 <= seed < 2 ** 64,
            f"seed: expected an integer in [0, 2^64), got {seed!r}")
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn(tuple(int(s) for s in shape), generator=g, dtype=torch.float32).to(device=device,
                                                                                          dtype=dtype)


def noise_latent(noise: torch.Tensor, sigma: Union[float, torch.Tensor],
                 latent_image: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Starting point at ``sigma``: ``σ·noise + (1 − σ)·latent_image`` (``noise`` alone if no latent)."""
    if latent_image is None:
        return noise * sigma if float(sigma) != 1.0 else noise
    require(latent_image.shape == noise.shape, f"latent_image: expected shape {tuple(noise.shape)} (the "
                                               f"noise shape), got {tuple(latent_image.shape)}")
    return sigma * noise + (1.0 - sigma) * latent_image.to(noise.dtype)


def euler_step(x: torch.Tensor, v: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
    """One Euler flow step ``x + (σ_next − σ)·v``."""
    return x + (sigma_next - sigma) * v


def _diffusers_scheduler(solver: str, n_steps: int):
    if solver == "unipc":
        from diffusers import UniPCMultistepScheduler
        sch = UniPCMultistepScheduler(num_train_timesteps=1000, prediction_type="flow_prediction",
                                      use_flow_sigmas=True, solver_order=2, final_sigmas_type="zero")
    else:
        from diffusers import DPMSolverMultistepScheduler
        sch = DPMSolverMultistepScheduler(num_train_timesteps=1000, prediction_type="flow_prediction",
                                          use_flow_sigmas=True, algorithm_type="dpmsolver++", solver_order=2,
                                          final_sigmas_type="zero")
    sch.set_timesteps(n_steps)
    return sch


def sample_flow(model_fn: VelocityFn, noise: torch.Tensor, sigmas: torch.Tensor, *, solver: str = "euler",
                cfg: float = 1.0, uncond_fn: Optional[VelocityFn] = None,
                latent_image: Optional[torch.Tensor] = None,
                callback: Optional[ProgressFn] = None) -> torch.Tensor:
    """Integrate the flow ODE from ``sigmas[0]`` to ``sigmas[-1]``.

    ``model_fn(x (B, ...), sigma 0-dim tensor) -> v (B, ...)``; ``noise`` (B, ...) any float dtype/device;
    ``sigmas`` 1-D decreasing (``steps + 1`` values, see :mod:`.schedules`).  With ``uncond_fn`` and
    ``cfg != 1`` sequential classifier-free guidance is applied (for batched CFG pass
    :func:`~.guidance.batched_guided_velocity` as ``model_fn``).  ``latent_image`` (same shape as noise) starts
    from ``σ0·noise + (1 − σ0)·latent`` (partial denoise); without it the start is ``σ0·noise`` (= noise for
    the official σ0 = 1; ComfyUI's CONST noise scaling with an empty latent).  Returns x at ``sigmas[-1]`` in
    ``noise.dtype``; a run stopped early (``sigmas[-1] > 0``) returns the still-noisy latent as is.
    """
    require(solver in SOLVERS, f"solver: expected one of {SOLVERS}, got {solver!r}")
    sigmas = torch.as_tensor(sigmas)
    require(sigmas.ndim == 1 and sigmas.shape[0] >= 2,
            f"sigmas: expected a 1-D tensor with >= 2 values, got shape {tuple(sigmas.shape)}")
    require(bool((sigmas[1:] < sigmas[:-1]).all()), "sigmas: expected strictly decreasing values")
    if cfg != 1.0:
        require(uncond_fn is not None, f"cfg={cfg}: classifier-free guidance needs uncond_fn (or pass a "
                                       f"batched_guided_velocity as model_fn and leave cfg=1)")
    if uncond_fn is not None:
        model_fn = guided_velocity(model_fn, uncond_fn, cfg)
    n = sigmas.shape[0] - 1
    device = noise.device
    sig_dev = sigmas.to(device=device, dtype=torch.float32)
    x = noise_latent(noise, sig_dev[0].to(noise.dtype), latent_image)

    if solver == "euler":
        for i in range(n):
            v = model_fn(x, sig_dev[i])
            x = euler_step(x, v.to(x.dtype), sig_dev[i].to(x.dtype), sig_dev[i + 1].to(x.dtype))
            if callback is not None:
                callback(i + 1, n)
        return x

    sch = _diffusers_scheduler(solver, n)
    sch.sigmas = sigmas.detach().to(device="cpu", dtype=torch.float32).clone()
    sch.timesteps = (sch.sigmas[:-1] * 1000.0).to(device)
    sch.set_begin_index(0)
    dtype = x.dtype
    for i in range(n):
        v = model_fn(x, sig_dev[i])
        x = sch.step(v, sch.timesteps[i], x, return_dict=False)[0].to(dtype)
        if callback is not None:
            callback(i + 1, n)
    return x
