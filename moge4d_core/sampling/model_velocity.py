"""Turn a MoGe4D DiT (``STraGDiT`` / ``ViSMDiT`` / any ``forward(hidden_states, timestep, **conds) -> v``) into the
velocity function ``fn(x, sigma) -> v`` the samplers drive, with optional classifier-free guidance.

The DiT takes the diffusers Wan timestep ``t = 1000·σ`` as a ``(B,)`` float tensor and its conditioning inputs as
keywords, held by a :class:`~moge4d_core.types.DiTConditioning`.  For CFG the official pipeline runs one batch
``[uncond; cond]`` (only the text differs, negative prompt ""): ``batched=True`` does the same
(:meth:`~moge4d_core.types.DiTConditioning.cfg_batch` concatenates every input along dim 0); ``batched=False``
runs two forward passes of batch B (lower peak memory).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..types import DiTConditioning
from .guidance import batched_guided_velocity, guided_velocity
from .schedules import sigma_to_timestep
from .step_cache import CacheRun

__all__ = ["dit_velocity"]

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _timestep(sigma: torch.Tensor, batch: int, device, num_train_timesteps: int) -> torch.Tensor:
    t = sigma_to_timestep(torch.as_tensor(sigma, dtype=torch.float32, device=device), num_train_timesteps)
    t = t.reshape(-1)
    return t.expand(batch) if t.numel() == 1 else t


def _plain(model: Callable[..., torch.Tensor], conds: DiTConditioning, T: int, branch: str,
           cache: Optional[CacheRun]) -> VelocityFn:
    kwargs = conds.forward_kwargs()
    if cache is None and getattr(model, "is_cache_enabled", False):
        cache = CacheRun(model)                      # a cache the caller enabled: still one context per branch

    def fn(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        t = _timestep(sigma, x.shape[0], x.device, T)
        if cache is None:
            return model(hidden_states=x, timestep=t, **kwargs)
        with cache.context(branch, t):
            return model(hidden_states=x, timestep=t, **kwargs)
    return fn


def dit_velocity(model: Callable[..., torch.Tensor], cond: DiTConditioning,
                 uncond: Optional[DiTConditioning] = None, cfg: float = 1.0, *, batched: bool = True,
                 num_train_timesteps: int = 1000, cache: Optional[CacheRun] = None,
                 parallel: Optional[str] = None) -> VelocityFn:
    """Velocity ``fn(x (B,16,F,h,w), sigma) -> model(hidden_states=x, timestep=1000σ (B,), **cond.forward_kwargs())``.

    Every input goes by keyword (diffusers' names), so diffusers' hooks that read inputs by name (FasterCache's
    CFG batch split) find them.

    Args:
        model: the DiT (or any callable taking ``(hidden_states=, timestep=, **inputs)``).
        cond: the conditional inputs, batch B (e.g. ``encoder_hidden_states``, ``encoder_hidden_states_image``,
            ``control``, ``depth`` for STraG; ``encoder_hidden_states``, ``mask``, ``masked_video`` for ViSM).
        uncond: the unconditional inputs (usually ``cond.with_text(negative)``), or None for no guidance.
        cfg: guidance scale; with ``uncond`` and ``cfg != 1``: ``v = v_uncond + cfg·(v_cond − v_uncond)``.
        batched: evaluate both branches in one 2B pass (else two B passes).
        num_train_timesteps: the DiT's timestep scale (Wan: 1000).
        cache: the step cache of this run (:func:`~.step_cache.step_cache`): every model call runs in its
            ``cache_context`` (``"cfg"`` for the batched pass, ``"cond"`` / ``"uncond"`` otherwise). Without it, a
            cache enabled on the model by the caller still gets those contexts.
        parallel: None, ``"cfg"``: the two guidance branches on two ``torch.distributed`` ranks
            (:func:`~.parallel.cfg_parallel_velocity`; ``batched`` is then ignored), or ``"ulysses"`` / ``"ring"``:
            the token sequence split over all ranks (:func:`~.parallel.enable_context_parallel`, done on ``model``
            once, kept).

    Returns:
        ``fn(x, sigma) -> v`` with ``v`` shaped like ``x``.
    """
    T = int(num_train_timesteps)
    if parallel == "cfg":
        from .parallel import cfg_parallel_velocity
        return cfg_parallel_velocity(lambda c: _plain(model, c, T, "cond" if c is cond else "uncond", cache),
                                     cond, uncond, cfg)
    if parallel is not None:
        from .parallel import context_parallel_velocity
        return context_parallel_velocity(dit_velocity(model, cond, uncond, cfg, batched=batched,
                                                      num_train_timesteps=T, cache=cache), model, parallel)
    if uncond is None or float(cfg) == 1.0:
        return _plain(model, cond, T, "cond", cache)
    if not batched:
        return guided_velocity(_plain(model, cond, T, "cond", cache), _plain(model, uncond, T, "uncond", cache), cfg)
    return batched_guided_velocity(_plain(model, DiTConditioning.cfg_batch(uncond, cond), T, "cfg", cache), cfg,
                                   uncond_first=True)
