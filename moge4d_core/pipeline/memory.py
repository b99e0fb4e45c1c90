"""Memory policy for the pipeline's big models: block offloading and gradient checkpointing (thin wrappers over
diffusers' ``enable_group_offload`` and ``enable_gradient_checkpointing``). fp8 weight storage is a model feature,
:mod:`moge4d_core.models.fp8`; the memory modes and their planner are :mod:`moge4d_core.pipeline.plan`.
"""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["enable_block_offload", "set_gradient_checkpointing"]


def enable_block_offload(model: nn.Module, onload_device: torch.device | str,
                         offload_device: torch.device | str = "cpu", num_blocks_per_group: int = 1,
                         use_stream: bool = False, non_blocking: bool = False,
                         record_stream: bool = False, low_cpu_mem_usage: bool = False) -> None:
    """Keep transformer blocks on ``offload_device`` and move ``num_blocks_per_group`` at a time to
    ``onload_device`` for their forward (diffusers group offloading, ``offload_type="block_level"``).

    ``use_stream=True`` (CUDA only) prefetches the next group on a side stream while the current one
    computes. The model's parameters must be on ``offload_device`` before this call.
    """
    kwargs = dict(onload_device=torch.device(onload_device), offload_device=torch.device(offload_device),
                  offload_type="block_level", num_blocks_per_group=num_blocks_per_group,
                  non_blocking=non_blocking, use_stream=use_stream)
    if use_stream:
        kwargs.update(record_stream=record_stream, low_cpu_mem_usage=low_cpu_mem_usage)
    model.enable_group_offload(**kwargs)


def set_gradient_checkpointing(model: nn.Module, enabled: bool = True) -> None:
    """Recompute each transformer block in the backward pass (saves activation memory in training)."""
    if enabled:
        model.enable_gradient_checkpointing()
    else:
        model.disable_gradient_checkpointing()
