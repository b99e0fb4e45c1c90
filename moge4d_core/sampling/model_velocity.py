"""Turn a MoGe4D DiT (``STraGDiT`` / ``ViSMDiT`` / any ``forward(latents, timestep, **conds) -> v``) into the
velocity function ``fn(x, sigma) -> v`` the samplers drive, with optional classifier-free guidance.

The DiT takes the diffusers Wan timestep ``t = 1000·σ`` as a ``(B,)`` float tensor.  For CFG the official
pipeline runs one batch ``[uncond; cond]`` (only the text differs, negative prompt ""): ``batched=True`` does
the same by concatenating every conditioning tensor of ``uncond`` and ``cond`` along dim 0; ``batched=False``
runs two forward passes of batch B (lower peak memory).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import torch

from ..errors import require
from .guidance import batched_guided_velocity, guided_velocity
from .schedules import sigma_to_timestep

__all__ = ["dit_velocity"]

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _timestep(sigma: torch.Tensor, batch: int, device, num_train_timesteps: int) -> torch.Tensor:
    t = sigma_to_timestep(torch.as_tensor(sigma, dtype=torch.float32, device=device), num_train_timesteps)
    t = t.reshape(-1)
    return t.expand(batch) if t.numel() == 1 else t


def _plain(model: Callable[..., torch.Tensor], conds: Mapping[str, Any], T: int) -> VelocityFn:
    def fn(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return model(x, _timestep(sigma, x.shape[0], x.device, T), **conds)
    return fn


def _cat_conds(uncond: Mapping[str, Any], cond: Mapping[str, Any]) -> dict:
    require(set(uncond) == set(cond), f"CFG: the conditional and unconditional inputs must name the same "
                                      f"tensors, got {sorted(cond)} vs {sorted(uncond)}")
    out = {}
    for k in cond:
        a, b = uncond[k], cond[k]
        if isinstance(b, torch.Tensor):
            require(isinstance(a, torch.Tensor) and a.shape == b.shape,
                    f"CFG input '{k}': conditional and unconditional tensors must have the same shape, got "
                    f"{tuple(b.shape)} vs {None if not isinstance(a, torch.Tensor) else tuple(a.shape)}")
            out[k] = torch.cat([a, b], dim=0)
        else:
            require(a is b or a == b, f"CFG input '{k}': non-tensor values must be equal in both branches")
            out[k] = b
    return out


def dit_velocity(model: Callable[..., torch.Tensor], cond: Mapping[str, Any],
                 uncond: Optional[Mapping[str, Any]] = None, cfg: float = 1.0, *, batched: bool = True,
                 num_train_timesteps: int = 1000) -> VelocityFn:
    """Velocity function ``fn(x (B,16,F,h,w), sigma) -> model(x, timestep=1000σ (B,), **cond)`` with CFG.

    ``cond`` / ``uncond``: keyword inputs of ``model.forward`` (e.g. ``text``, ``clip``, ``control``,
    ``depth`` for STraG; ``text``, ``mask``, ``masked_video`` for ViSM), batch B each.  With ``uncond`` and
    ``cfg != 1``: ``v = v_uncond + cfg·(v_cond − v_uncond)``, in one 2B pass (``batched``) or two B passes.
    """
    T = int(num_train_timesteps)
    cond_fn = _plain(model, cond, T)
    if uncond is None or float(cfg) == 1.0:
        return cond_fn
    if not batched:
        return guided_velocity(cond_fn, _plain(model, uncond, T), cfg)
    return batched_guided_velocity(_plain(model, _cat_conds(uncond, cond), T), cfg, uncond_first=True)
