"""fp8 weight storage for the Wan 14B DiTs (a model feature the loaders apply; the memory *policy* is
:mod:`moge4d_core.pipeline.memory`).

Unscaled storage is diffusers' ``enable_layerwise_casting``; one addition is written here: **scaled** fp8 storage.

Why a scaled variant: diffusers' layerwise casting (and VideoX-Fun's ``fp8_optimization``) store
``weight.to(float8_e4m3fn)`` without a scale. e4m3fn has normal numbers only down to 2**-6 = 0.0156 and
Wan's Linear weights are mostly smaller than that, so many land in the subnormal range and lose most of
their mantissa. ComfyUI's ``*_fp8_scaled`` files store a per-tensor scale (``scale_weight`` /
``weight_scale``) for exactly this reason. :func:`enable_fp8_storage` with ``scaled=True`` keeps
``weight_fp8`` plus a float32 scalar ``weight_scale`` per Linear and computes
``F.linear(x, (weight_fp8 * weight_scale).to(compute_dtype), bias)`` on the fly (a diffusers
``ModelHook`` with ``new_forward``). Weights already in fp8 (loaded from a ComfyUI fp8 file) are kept
as they are, with their file scale. Memory is saved, there is no speed-up (no fp8 matmul).

Both fp8 modes are meant for inference. Modules matching diffusers' skip patterns (patch embedding,
condition embedders, norms, ``proj_out``, ``ref_conv``, ``feature_adapter``) stay in the compute dtype.
"""
from __future__ import annotations

import re
from typing import Iterable, Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.hooks.hooks import HookRegistry, ModelHook

from ..errors import MoGe4DInputError

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
_HOOK_NAME = "moge4d_scaled_fp8"

__all__ = ["FP8_DTYPES", "quantize_fp8", "fp8_skip_patterns", "fp8_eligible_linear_names", "enable_fp8_storage",
           "is_fp8"]


def is_fp8(dtype: torch.dtype) -> bool:
    """True for ``torch.float8_e4m3fn`` and ``torch.float8_e5m2``."""
    return dtype in FP8_DTYPES


def quantize_fp8(weight: torch.Tensor, storage_dtype: torch.dtype = torch.float8_e4m3fn
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor scaled fp8: ``(w_fp8, scale)`` with ``w ~= w_fp8.float() * scale``, ``scale = amax / fp8_max``.

    Args:
        weight: any-shape float tensor.
        storage_dtype: an fp8 dtype (e4m3fn: max 448).

    Returns:
        ``(w_fp8, scale)``: ``w_fp8`` of ``weight``'s shape in ``storage_dtype``; ``scale`` a 0-d float32 tensor
        (1 for an all-zero weight), both on ``weight``'s device.
    """
    w = weight.float()
    amax = w.abs().max()
    fmax = torch.finfo(storage_dtype).max
    scale = (amax / fmax) if amax > 0 else torch.ones((), device=w.device)
    scale = scale.reshape(()).float()
    return (w / scale).clamp(-fmax, fmax).to(storage_dtype), scale


def fp8_skip_patterns(model: nn.Module) -> tuple[str, ...]:
    """The module-name regexes diffusers' ``enable_layerwise_casting`` skips for this model."""
    from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

    pats = list(DEFAULT_SKIP_MODULES_PATTERN)
    pats += list(getattr(model, "_keep_in_fp32_modules", None) or [])
    pats += list(getattr(model, "_skip_layerwise_casting_patterns", None) or [])
    return tuple(dict.fromkeys(pats))


def fp8_eligible_linear_names(model: nn.Module, skip_patterns: Optional[Iterable[str]] = None) -> list[str]:
    """Names of the ``nn.Linear`` modules whose weights fp8 storage applies to.

    Args:
        model: the DiT.
        skip_patterns: module-name regexes to leave out; None = :func:`fp8_skip_patterns`.

    Returns:
        the qualified module names (``model.named_modules()`` order).
    """
    pats = tuple(skip_patterns) if skip_patterns is not None else fp8_skip_patterns(model)
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and not any(re.search(p, n) for p in pats)]


class ScaledFP8LinearHook(ModelHook):
    """diffusers ``ModelHook`` replacing an ``nn.Linear`` forward: fp8 weight times its float32 scale."""

    def __init__(self, compute_dtype: torch.dtype):
        super().__init__()
        self.compute_dtype = compute_dtype

    def new_forward(self, module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """``F.linear`` of ``x (..., in)`` with the dequantised weight, all in the compute dtype -> ``(..., out)``."""
        w = (module.weight.float() * module.weight_scale).to(self.compute_dtype)
        b = None if module.bias is None else module.bias.to(self.compute_dtype)
        return F.linear(x.to(self.compute_dtype), w, b)


def enable_fp8_storage(model: nn.Module, *, compute_dtype: torch.dtype = torch.bfloat16,
                       storage_dtype: torch.dtype = torch.float8_e4m3fn, scaled: bool = True,
                       scales: Optional[Mapping[str, torch.Tensor]] = None,
                       skip_patterns: Optional[Iterable[str]] = None) -> list[str]:
    """Store the big Linear weights in fp8 and upcast them layer by layer at compute time.

    ``scaled=False``: diffusers ``model.enable_layerwise_casting(storage_dtype, compute_dtype)`` (plain
    cast, no scale). ``scaled=True``: per-tensor scaled fp8 (see the module docstring). ``scales``
    maps ``"<module name>"`` to the float32 scale of a weight that is *already* fp8 (from a ComfyUI
    scaled file); already-fp8 weights without an entry get scale 1. Returns the names of the modules
    now stored in fp8. Non-fp8 parameters should already be in ``compute_dtype`` (the loaders do that).

    Args:
        model: the DiT (changed in place).
        compute_dtype: dtype the weights are upcast to for each forward.
        storage_dtype: ``torch.float8_e4m3fn`` or ``torch.float8_e5m2``.
        scaled: per-tensor scaled storage (True) or diffusers' plain cast (False).
        scales: module name -> scale of an already-fp8 weight (scaled mode only).
        skip_patterns: module-name regexes to keep in ``compute_dtype``; None = :func:`fp8_skip_patterns`
            (scaled mode only).

    Returns:
        the names of the ``nn.Linear`` modules now stored in fp8.

    Raises:
        MoGe4DInputError: ``storage_dtype`` is not an fp8 dtype, or ``scaled=False`` on a model that already
            holds fp8 weights.
    """
    if not is_fp8(storage_dtype):
        raise MoGe4DInputError(f"fp8 storage: storage_dtype must be one of {FP8_DTYPES}, got {storage_dtype}")
    if not scaled:
        if any(is_fp8(p.dtype) for p in model.parameters()):
            raise MoGe4DInputError("fp8 storage: the model already holds fp8 weights; use scaled=True")
        model.enable_layerwise_casting(storage_dtype=storage_dtype, compute_dtype=compute_dtype)
        return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.weight.dtype == storage_dtype]
    scales = dict(scales or {})
    names = fp8_eligible_linear_names(model, skip_patterns)
    modules = dict(model.named_modules())
    for name in names:
        lin = modules[name]
        w = lin.weight
        if is_fp8(w.dtype):
            s = scales.get(name)
            s = torch.ones((), dtype=torch.float32) if s is None else s.detach().float().reshape(())
            w8 = w.detach()
        else:
            w8, s = quantize_fp8(w.detach(), storage_dtype)
        lin.weight = nn.Parameter(w8, requires_grad=False)
        if "weight_scale" in lin._buffers:
            lin._buffers["weight_scale"] = s.to(w8.device)
        else:
            lin.register_buffer("weight_scale", s.to(w8.device), persistent=False)
        registry = HookRegistry.check_if_exists_or_initialize(lin)
        if registry.get_hook(_HOOK_NAME) is None:
            registry.register_hook(ScaledFP8LinearHook(compute_dtype), _HOOK_NAME)
    return names
