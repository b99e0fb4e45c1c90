"""One flow-matching run of a Wan DiT with CFG, shared by the trajectory and inpainting stages.

``run_dit_sampling(model, shape, cond, uncond, settings, native=None, callback=None)``: noise (drawn on the CPU
from ``settings.seed``) → our solver or a ComfyUI ``SAMPLER`` → final latent ``shape`` float32.
``cond`` / ``uncond`` are :class:`~moge4d_core.types.DiTConditioning` (text + latent conditions), batch 1.
Cancel: ``callback(done, total)`` may raise; the exception propagates and nothing is kept between runs
(every call builds its own noise, schedule and solver state).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..interop.comfy_sampler import sample_with_comfy_sampler
from ..sampling import dit_velocity, make_noise, sample_flow
from ..sampling.step_cache import step_cache
from ..types import DiTConditioning
from .settings import NativeSampler, SamplerSettings

__all__ = ["run_dit_sampling", "model_device_dtype"]


def model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """(device, dtype) of the model's first parameter (for a DiT, where its inputs go)."""
    p = next(model.parameters())
    return p.device, p.dtype


def run_dit_sampling(model: torch.nn.Module, shape: tuple, cond: DiTConditioning, uncond: Optional[DiTConditioning],
                     settings: SamplerSettings, *, native: Optional[NativeSampler] = None,
                     callback: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
    """Sample a latent of ``shape`` (1,16,F,h,w) float32 with ``model`` (see the module docstring).

    Args:
        model: the DiT; the noise is put on its device.
        shape: the latent shape.
        cond: the conditional inputs; uncond: the unconditional ones (CFG when given and ``settings.cfg != 1``).
        settings: seed, schedule, solver, CFG scale and batching, step cache (``settings.cache``: enabled on the
            model for this run only, removed after it).
        native: a ComfyUI ``SAMPLER`` (and optional sigmas) to drive the model instead of our solver.
        callback: ``callback(done, total)`` per step; an exception it raises propagates (Cancel).
    """
    device, _ = model_device_dtype(model)
    noise = make_noise(shape, settings.seed, device=device)
    use_cfg = uncond is not None and float(settings.cfg) != 1.0
    sigmas = settings.sigmas()
    if native is not None and native.sigmas is not None:
        sigmas = torch.as_tensor(native.sigmas, dtype=torch.float32)
    with step_cache(model, settings.cache, calls=int(sigmas.shape[0]) - 1,
                    batched_cfg=settings.batched_cfg if use_cfg else None) as cache, torch.no_grad():
        velocity = dit_velocity(model, cond, uncond if use_cfg else None, settings.cfg, batched=settings.batched_cfg,
                                cache=cache, parallel=settings.parallel)
        if native is None:
            return sample_flow(velocity, noise, sigmas, solver=settings.solver, callback=callback).float()
        out = sample_with_comfy_sampler(native.sampler, sigmas, velocity, noise, callback=callback,
                                        seed=settings.seed, shift=settings.shift,
                                        model_sampling=native.model_sampling)
        return out.float()
