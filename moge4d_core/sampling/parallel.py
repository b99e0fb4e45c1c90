"""One video on several processes (GPUs): CFG-parallel sampling over ``torch.distributed``.

**CFG-parallel** (:func:`cfg_parallel_velocity`): the two guidance branches run on two ranks at the same time —
rank 0 the conditional one, rank 1 the unconditional one — and ``all_gather`` hands both velocities to both
ranks, which combine them (``v_uncond + s·(v_cond − v_uncond)``) and take the same solver step. Every rank
draws the same noise from the seed (:func:`~.samplers.make_noise` draws on the CPU), so the ranks keep identical
latents all the way through and every rank ends with the full result (rank 0 writes it). Any backend works
(``gloo`` on CPU, ``nccl`` on GPU); each rank holds the whole model, and one step costs one B-batch forward pass
instead of one 2B pass (or two B passes).

Launch with ``torchrun --nproc-per-node 2 ...``; :func:`init_from_env` starts the process group from torchrun's
environment variables.
"""
from __future__ import annotations

import os
from typing import Callable, Optional

import torch

from ..errors import MoGe4DInputError
from ..types import DiTConditioning
from .guidance import cfg_combine

__all__ = ["PARALLEL_MODES", "cfg_parallel_velocity", "init_from_env", "world"]

PARALLEL_MODES = ("cfg",)

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
