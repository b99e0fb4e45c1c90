"""One video on several processes (GPUs): CFG-parallel sampling over ``torch.distributed``.

**CFG-parallel** (:func:`cfg_parallel_velocity`): the two guidance branches run on two ranks at the same time —
rank 0 the conditional one, rank 1 the unconditional one — and ``all_gather`` hands both velocities to both
ranks, which combine them (``v_uncond + s·(v_cond − v_uncond)``) and take the same solver step. Every rank
draws the same noise from the seed (:func:`~.samplers.make_noise` draws on the CPU), so the ranks keep identical
latents all the way through and every rank ends with the full result (rank 0 writes it). Any backend works
(``gloo`` on CPU, ``nccl`` on GPU); each rank holds the whole model, and one step costs one B-batch forward pass
instead of one 2B pass (or two B passes).

**Context parallel** (:func:`enable_context_parallel`, ``"ulysses"`` or ``"ring"``): every rank holds the whole
model and one part of the token sequence; attention exchanges keys/values (ring) or heads (Ulysses) between the
ranks. This is diffusers' own machinery (``ContextParallelConfig`` + ``enable_parallelism``) with our DiTs'
``_cp_plan`` (:class:`~moge4d_core.models.wan_dit.model.WanDiT`: the reference tokens travel in the split
sequence, the MPM's MAdaNorm gets each rank's sequence positions). diffusers picks the rank's device as
``rank % torch.accelerator.device_count()``, which divides by zero on a machine without an accelerator; for a model
on the CPU :func:`enable_context_parallel` builds the CPU device mesh itself (nothing else differs). diffusers' ring
attention needs a backend that returns the log-sum-exp (flash, ``_native_cudnn``), so ring is refused with the
native (SDPA) backend, which includes every CPU run: ring is not tested here, Ulysses is. The sequence
(reference tokens + ``F·h/2·w/2`` video tokens) must split evenly over the ranks, and for Ulysses the attention
heads too.

Launch with ``torchrun --nproc-per-node 2 ...``; :func:`init_from_env` starts the process group from torchrun's
environment variables.
"""
from __future__ import annotations

import os
import types
from typing import Callable, Optional

import torch

from ..errors import MoGe4DInputError
from ..types import DiTConditioning
from .guidance import cfg_combine

__all__ = ["PARALLEL_MODES", "CONTEXT_MODES", "cfg_parallel_velocity", "context_parallel_velocity",
           "enable_context_parallel", "init_from_env", "world"]

CONTEXT_MODES = ("ulysses", "ring")
PARALLEL_MODES = ("cfg",) + CONTEXT_MODES

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def world(group=None) -> tuple[int, int]:
    """``(rank, world_size)`` in ``group`` (``(0, 1)`` when ``torch.distributed`` is not initialised)."""
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def init_from_env(backend: Optional[str] = None) -> tuple[int, int]:
    """Start the default process group from torchrun's variables (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ...).

    Args:
        backend: ``"nccl"`` / ``"gloo"``; None picks nccl when CUDA is available, else gloo.

    Returns:
        ``(rank, world_size)``; ``(0, 1)`` without torchrun's variables (nothing started). With CUDA, each rank
        uses the GPU ``LOCAL_RANK``.
    """
    import torch.distributed as dist
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1
    if not dist.is_initialized():
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return world()


def cfg_parallel_velocity(branch_fn: Callable[[DiTConditioning], VelocityFn], cond: DiTConditioning,
                          uncond: Optional[DiTConditioning], cfg: float, *, group=None) -> VelocityFn:
    """Velocity with the CFG branches split over two ranks: rank 0 evaluates ``cond``, rank 1 ``uncond``.

    Args:
        branch_fn: ``branch_fn(conditioning) -> fn(x, sigma) -> v`` (one plain model evaluation, batch B).
        cond: the conditional inputs; uncond: the unconditional ones.
        cfg: guidance scale ``s``; with ``uncond=None`` or ``s == 1`` every rank evaluates ``cond`` alone (no
            communication).
        group: the ``torch.distributed`` process group (None = the default one); it must have exactly 2 ranks.

    Returns:
        ``fn(x (B,...), sigma) -> v (B,...)``, the same on every rank: ``v_uncond + s·(v_cond − v_uncond)``.

    Raises:
        MoGe4DInputError: torch.distributed is not initialised or the group does not have 2 ranks.
    """
    if uncond is None or float(cfg) == 1.0:
        return branch_fn(cond)
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        raise MoGe4DInputError("parallel 'cfg': torch.distributed is not initialised; launch with "
                               "`torchrun --nproc-per-node 2 ...` (or call init_process_group first)")
    rank, size = world(group)
    if size != 2:
        raise MoGe4DInputError(f"parallel 'cfg': needs exactly 2 processes (one per guidance branch), got {size}; "
                               f"launch with `torchrun --nproc-per-node 2`")
    own = branch_fn(cond if rank == 0 else uncond)
    scale = float(cfg)

    def fn(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        v = own(x, sigma).contiguous()
        both = [torch.empty_like(v) for _ in range(2)]
        dist.all_gather(both, v, group=group)
        return cfg_combine(both[0], both[1], scale)

    return fn


def _require_group(mode: str) -> tuple[int, int]:
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        raise MoGe4DInputError(f"parallel {mode!r}: torch.distributed is not initialised; launch with "
                               f"`torchrun --nproc-per-node 2 ...` (or call init_process_group first)")
    return world()


def _resolve_on_cpu(self, config):
    """diffusers' ``_resolve_parallel_config`` for a model on the CPU (its own divides by the accelerator count)."""
    from diffusers.models._modeling_parallel import ContextParallelConfig, ParallelConfig
    from torch.distributed.device_mesh import init_device_mesh
    if isinstance(config, ContextParallelConfig):
        config = ParallelConfig(context_parallel_config=config)
    cp = config.context_parallel_config
    mesh = cp.mesh or init_device_mesh("cpu", mesh_shape=cp.mesh_shape, mesh_dim_names=cp.mesh_dim_names)
    rank, size = world()
    config.setup(rank, size, torch.device("cpu"), mesh=mesh)
    self._parallel_config = config
    return config


def _attention_backends(model: torch.nn.Module) -> set:
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry
    active = _AttentionBackendRegistry.get_active_backend()[0]
    names = set()
    for m in model.modules():
        proc = getattr(m, "processor", None)
        if proc is not None and hasattr(proc, "_attention_backend"):
            b = proc._attention_backend or active
            names.add(getattr(b, "value", str(b)))
    return names


def enable_context_parallel(model: torch.nn.Module, mode: str = "ulysses") -> torch.nn.Module:
    """Split ``model``'s token sequence over all ranks of the default process group (once per model).

    Args:
        model: a MoGe4D DiT (``STraGDiT`` / ``ViSMDiT``), the same weights on every rank.
        mode: ``"ulysses"`` (all-to-all over the heads; the head count must divide by the world size) or
            ``"ring"`` (keys/values gathered around the ranks).

    Returns:
        ``model`` with diffusers' context-parallel hooks; its forward takes and returns whole tensors on every rank.
    """
    if mode not in CONTEXT_MODES:
        raise MoGe4DInputError(f"parallel: expected None or one of {PARALLEL_MODES}, got {mode!r}")
    _, size = _require_group(mode)
    if size < 2:
        raise MoGe4DInputError(f"parallel {mode!r}: needs 2 or more processes, got {size}; launch with "
                               f"`torchrun --nproc-per-node N`")
    current = getattr(model, "_parallel_config", None)
    if current is not None:
        cp = getattr(current, "context_parallel_config", None)
        have = None if cp is None else ("ulysses" if cp.ulysses_degree > 1 else "ring")
        if have != mode:
            raise MoGe4DInputError(f"parallel {mode!r}: this model already runs with {have or 'another'} "
                                   f"parallelism; load it again to change")
        return model
    heads = int(model.config.num_attention_heads)
    if mode == "ulysses" and heads % size:
        raise MoGe4DInputError(f"parallel 'ulysses': the model's {heads} attention heads do not split over {size} "
                               f"processes; use a process count that divides {heads}, or --parallel ring")
    if mode == "ring" and "native" in _attention_backends(model):
        raise MoGe4DInputError("parallel 'ring': diffusers' ring attention needs an attention backend that returns "
                               "log-sum-exp (flash, _native_cudnn; model.set_attention_backend), the native one does "
                               "not; use --parallel ulysses")
    from diffusers import ContextParallelConfig
    config = ContextParallelConfig(ulysses_degree=size) if mode == "ulysses" else ContextParallelConfig(ring_degree=size)
    if next(model.parameters()).device.type == "cpu":
        model._resolve_parallel_config = types.MethodType(_resolve_on_cpu, model)
    import logging
    log = logging.getLogger("diffusers.models.modeling_utils")
    level = log.level
    log.setLevel(logging.ERROR)                      # "experimental feature" warning on every rank
    try:
        model.enable_parallelism(config=config)
    finally:
        log.setLevel(level)
    return model


def context_parallel_velocity(fn: VelocityFn, model: torch.nn.Module, mode: str) -> VelocityFn:
    """``fn`` (a velocity of ``model``) with ``model``'s token sequence split over the ranks
    (:func:`enable_context_parallel`); refuses, with a message, a latent whose sequence does not split evenly.

    Returns:
        ``fn(x (B,16,F,h,w), sigma) -> v``, the same whole velocity on every rank.
    """
    enable_context_parallel(model, mode)
    _, size = world()
    p_t, p_h, p_w = model.config.patch_size

    def run(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        f, h, w = x.shape[2:]
        s = (h // p_h) * (w // p_w)
        n = (f // p_t) * s + (s if getattr(model, "ref_conv", None) is not None else 0)
        if n % size:
            raise MoGe4DInputError(f"parallel {mode!r}: {n} tokens (latent {f}x{h}x{w}) do not split evenly over "
                                   f"{size} processes; change the frame count or size, or use --parallel cfg")
        return fn(x, sigma)

    return run
