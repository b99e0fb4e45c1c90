"""Glue between ComfyUI and the core Wan DiT stages (no maths here): loading with precision / fp8 / block
offload under ComfyUI's model management, native ``SAMPLER`` / ``SIGMAS`` objects, and the conversion of
ComfyUI conditioning to the core contexts.

* :func:`load_dit` loads a core DiT with a loader of :mod:`moge4d_core.loading.wan_dit` and wraps it in a
  ``ModelPatcher``.  ``fp8``: the big Linear weights are stored as scaled fp8 and upcast per layer
  (:mod:`moge4d_core.pipeline.memory`).  ``offload``: diffusers block offloading keeps the blocks in CPU memory and
  moves one at a time to the compute device; the patcher then has the CPU as its load device (ComfyUI must not
  move the whole model), and :func:`dit_for_inference` hands the pipeline a
  :class:`~moge4d_core.models.device_view.ComputeDeviceView` so noise and conditions go to the compute device.
* :func:`native_sampler` builds the core :class:`~moge4d_core.pipeline.settings.NativeSampler` with a real
  ComfyUI ``ModelSamplingDiscreteFlow + CONST`` instance (so ancestral / SDE samplers take their flow branch).
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Optional

import torch

import comfy.model_management as mm
import comfy.model_sampling
import comfy.samplers

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.interop.conditioning import from_comfy_clip_vision_output, from_comfy_conditioning
from moge4d_core.models.conditioning import TextContext
from moge4d_core.models.device_view import ComputeDeviceView
from moge4d_core.models.wan_dit import reads_text
from moge4d_core.models.fp8 import enable_fp8_storage
from moge4d_core.pipeline.memory import enable_block_offload, parse_memory_mode
from moge4d_core.pipeline.residency import Residency
from moge4d_core.pipeline.speed import check_attention_backend, compile_blocks, set_attention_backend
from moge4d_core.pipeline.settings import NativeSampler

from .comfy_runtime import compute_device
from .models import model_for_inference, resolve_dtype, wrap_model

# our solver names -> ComfyUI sampler names (for SIGMAS without a SAMPLER)
SOLVER_TO_COMFY = {"euler": "euler", "unipc": "uni_pc", "dpmpp_2m": "dpmpp_2m"}
FP8 = torch.float8_e4m3fn
log = logging.getLogger("moge4d")


def load_dit(load: Callable[[torch.dtype, torch.dtype], torch.nn.Module], *, precision: str, fp8: bool,
             offload: bool, merge: Optional[Callable[[torch.nn.Module], Any]] = None, memory: str = "auto",
             attention_backend: str = "native", compile: bool = False):
    """``load(dtype, compute_dtype) -> model`` on the CPU; returns a ``ModelPatcher``.

    ``merge(model)`` (e.g. a LoRA merge) runs on the full-precision weights before fp8 storage is enabled, so
    the small LoRA delta is not lost to fp8 rounding. ``memory``: a memory mode named as the CLI's ``--memory``
    (:func:`moge4d_core.pipeline.memory.parse_memory_mode`); ``auto`` keeps the ``fp8`` / ``offload`` switches,
    ``full`` / ``model_offload`` leave residency to ComfyUI's model management, ``block_swap:N`` keeps N blocks on
    the device and streams the rest (:class:`moge4d_core.pipeline.residency.Residency`), ``fp8`` stores the weights
    as float8. ``attention_backend`` / ``compile``: as the CLI's (:mod:`moge4d_core.pipeline.speed`).
    """
    mode = parse_memory_mode(memory or "auto")
    check_attention_backend(attention_backend or "native", option="attention_backend:")
    swap = None
    if not mode.is_auto:
        fp8 = mode.fp8
        swap = mode.blocks if mode.residency == "block_swap" else None
        offload = False
    device = compute_device()
    offload_device = mm.unet_offload_device()
    dtype = resolve_dtype(precision, device)
    if fp8 and merge is not None:
        model = load(dtype, dtype)
        merge(model)
        enable_fp8_storage(model, compute_dtype=dtype)
    else:
        model = load(FP8 if fp8 else dtype, dtype)
        if merge is not None:
            merge(model)
    if (attention_backend or "native") != "native":
        set_attention_backend(model, attention_backend, label=type(model).__name__, report=log.warning)
    if compile:
        compile_blocks(model)
    if offload or swap is not None:
        model = model.to(offload_device)
        if swap is None:
            enable_block_offload(model, onload_device=device, offload_device=offload_device)
        else:
            residency = Residency(device, f"block_swap:{swap}", offload_device=offload_device)
            residency.keep_on_device(residency.prepare(model, name="dit"))
        patcher = wrap_model(model, offload_device, offload_device)
        patcher.model.onload_device = device
        patcher.model.compute_dtype = dtype
        return patcher
    return wrap_model(model, device, offload_device)


def dit_for_inference(patcher) -> torch.nn.Module:
    """The core DiT, loaded by ComfyUI's model management (or its compute-device view when block-offloaded)."""
    model = model_for_inference(patcher)
    onload = getattr(patcher.model, "onload_device", None)
    if onload is not None:
        return ComputeDeviceView(model, onload, getattr(patcher.model, "compute_dtype", torch.float32))
    return model


def flow_model_sampling(shift: float):
    """A real ComfyUI ``ModelSamplingDiscreteFlow + CONST`` (x = (1−σ)·x0 + σ·ε, timestep = 1000σ) with ``shift``."""
    cls = type("MoGe4DFlowSampling", (comfy.model_sampling.ModelSamplingDiscreteFlow, comfy.model_sampling.CONST), {})
    ms = cls()
    ms.set_parameters(shift=float(shift), multiplier=1000)
    return ms


def native_sampler(sampler: Any, sigmas: Any, solver: str, shift: float) -> Optional[NativeSampler]:
    """None when neither is connected; a SIGMAS without SAMPLER runs ComfyUI's sampler of the same name as
    ``solver`` (euler / uni_pc / dpmpp_2m)."""
    if sampler is None and sigmas is None:
        return None
    if sigmas is not None:
        sigmas = torch.as_tensor(sigmas, dtype=torch.float32).flatten()
        if sigmas.numel() < 2:
            raise MoGe4DInputError(f"sigmas: {sigmas.numel()} value(s); a schedule needs at least 2 (e.g. "
                                   f"BasicScheduler / OptimalStepsScheduler / MoGe4D Flow Scheduler with steps >= 1)")
    if sampler is None:
        sampler = comfy.samplers.sampler_object(SOLVER_TO_COMFY[solver])
    return NativeSampler(sampler=sampler, sigmas=sigmas, model_sampling=flow_model_sampling(shift))


def step_count(settings, native: Optional[NativeSampler]) -> int:
    if native is not None and native.sigmas is not None:
        return int(native.sigmas.numel()) - 1
    return int(settings.sigmas().numel()) - 1


def text_context(cond: Any, model: torch.nn.Module, name: str):
    """ComfyUI CONDITIONING (or None: not connected) -> core TextContext of the model's text width.

    A model that does not read text (:func:`~moge4d_core.models.wan_dit.reads_text`: trained without a text
    encoder, e.g. the nano model) gets the all-zero context it was trained with whatever is connected (no text
    can change its output), as :func:`moge4d_core.pipeline.model_dir.encode_prompts` gives it without a text
    encoder. Any other model needs the conditioning.
    """
    width = int(model.config.text_dim)
    if not reads_text(model):
        return TextContext.from_embeddings(torch.zeros(1, 1, width), name=name)
    if cond is None:
        raise MoGe4DInputError(f"{name}: not connected, but this model reads umT5 text ({width} wide): connect "
                               f"CLIPTextEncode with CLIPLoader(type=wan, umt5_xxl) (the release's negative "
                               f"prompt is an empty text)")
    return from_comfy_conditioning(cond, dim=width, name=name)


def image_context(clip_vision_output: Any, model: torch.nn.Module):
    """CLIP_VISION_OUTPUT (or None) -> core ImageContext of the model's CLIP width (None = zero context)."""
    if clip_vision_output is None:
        return None
    width = getattr(model.config, "image_dim", None)
    if width is None:
        raise MoGe4DInputError("clip_vision_output: this model has no CLIP image input; disconnect it")
    return from_comfy_clip_vision_output(clip_vision_output, dim=int(width))
