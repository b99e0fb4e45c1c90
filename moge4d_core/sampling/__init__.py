"""Flow-matching sampling for MoGe4D's Wan DiTs (schedules, Euler/UniPC/DPM++ solvers, CFG); the adapter that
lets ComfyUI's own samplers drive them is :mod:`moge4d_core.interop.comfy_sampler`.

Convention: ``x_σ = (1 − σ)·x0 + σ·ε``, velocity ``v = ε − x0``, DiT timestep ``1000·σ``.
"""
from .schedules import denoise_sigmas, flow_sigmas, sigma_to_timestep, time_shift, truncate_sigmas
from .guidance import batched_guided_velocity, cfg_combine, guided_velocity
from .samplers import SOLVERS, euler_step, make_noise, noise_latent, sample_flow
from .model_velocity import dit_velocity

__all__ = [
    "flow_sigmas", "truncate_sigmas", "denoise_sigmas", "sigma_to_timestep", "time_shift",
    "cfg_combine", "guided_velocity", "batched_guided_velocity",
    "SOLVERS", "make_noise", "noise_latent", "euler_step", "sample_flow",
    "dit_velocity",
]
