"""Classifier-free guidance for velocity (flow-matching) models.

``v = v_uncond + s·(v_cond − v_uncond)`` (the official pipeline uses s = 6 with an empty negative prompt).
Two ways to evaluate the two branches:

* sequential (:func:`guided_velocity`): two forward passes of batch B — half the peak activation memory;
* batched (:func:`batched_guided_velocity`): one forward pass of batch 2B — fewer kernel launches, as the
  official pipeline does (``[uncond; cond]`` order, like diffusers).

Both return a velocity function ``fn(x (B, ...), sigma) -> v (B, ...)`` that the samplers accept.
"""
from __future__ import annotations

from typing import Callable

import torch

__all__ = ["cfg_combine", "guided_velocity", "batched_guided_velocity"]

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cfg_combine(v_cond: torch.Tensor, v_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """``v_uncond + scale·(v_cond − v_uncond)``; any matching shapes."""
    return v_uncond + scale * (v_cond - v_uncond)


def guided_velocity(cond_fn: VelocityFn, uncond_fn: VelocityFn, scale: float) -> VelocityFn:
    """Sequential CFG: calls ``cond_fn`` then ``uncond_fn`` (each ``(x, sigma) -> v``).

    With ``scale == 1`` only ``cond_fn`` is evaluated (the unconditional branch has no effect).
    """
    scale = float(scale)

    def fn(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        v_cond = cond_fn(x, sigma)
        if scale == 1.0:
            return v_cond
        return cfg_combine(v_cond, uncond_fn(x, sigma), scale)

    return fn


def batched_guided_velocity(batched_fn: VelocityFn, scale: float, *, uncond_first: bool = True) -> VelocityFn:
    """Batched CFG: one call of ``batched_fn(cat([x, x]) (2B, ...), sigma) -> v (2B, ...)``.

    The caller's ``batched_fn`` must hold its conditions in the same order: with ``uncond_first=True`` rows
    ``[0, B)`` are the unconditional (negative prompt) branch and ``[B, 2B)`` the conditional one.
    """
    scale = float(scale)

    def fn(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        v = batched_fn(torch.cat([x, x], dim=0), sigma)
        first, second = v.chunk(2, dim=0)
        v_uncond, v_cond = (first, second) if uncond_first else (second, first)
        return cfg_combine(v_cond, v_uncond, scale)

    return fn
