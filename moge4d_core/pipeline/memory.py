"""Memory policy for the pipeline's big models: the memory modes (:class:`MemoryMode`, :func:`parse_memory_mode`,
named the same in the CLI's ``--memory``, the pipeline settings and the node widgets), block offloading and gradient
checkpointing (thin wrappers over diffusers' ``enable_group_offload`` and ``enable_gradient_checkpointing``).
fp8 weight storage is a model feature, :mod:`moge4d_core.models.fp8`; the planner that estimates each mode's memory is
:mod:`moge4d_core.pipeline.plan`; the code that moves models per stage is :mod:`moge4d_core.pipeline.residency`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from ..errors import MoGe4DInputError

__all__ = ["MEMORY_MODE_FORMS", "MemoryMode", "parse_memory_mode", "enable_block_offload", "set_gradient_checkpointing"]

MEMORY_MODE_FORMS = ("auto", "full", "model_offload", "fp8", "block_swap:N", "fp8+block_swap:N", "fp8+full",
                     "fp8+model_offload")


# ---------------------------------------------------------------------------------------------- memory modes
@dataclass(frozen=True)
class MemoryMode:
    """A parsed memory mode. ``residency``: ``full`` | ``model_offload`` | ``block_swap`` | ``auto``;
    ``blocks``: resident transformer blocks per DiT (``block_swap`` only); ``fp8``: fp8 weight storage."""

    residency: str = "model_offload"
    blocks: Optional[int] = None
    fp8: bool = False

    @property
    def is_auto(self) -> bool:
        """True for ``auto`` (to be resolved by :func:`~moge4d_core.pipeline.plan.choose_memory_mode`)."""
        return self.residency == "auto"

    @property
    def name(self) -> str:
        """Canonical spelling (``fp8`` for ``fp8+model_offload``)."""
        if self.is_auto:
            return "auto"
        base = f"block_swap:{self.blocks}" if self.residency == "block_swap" else self.residency
        if not self.fp8:
            return base
        return "fp8" if base == "model_offload" else f"fp8+{base}"

    def __str__(self) -> str:
        return self.name


def _mode_error(text: object, why: str) -> MoGe4DInputError:
    return MoGe4DInputError(
        f"memory mode {text!r}: {why}. Valid forms: {', '.join(MEMORY_MODE_FORMS)} (N = transformer blocks of each "
        f"DiT kept on the GPU, an integer >= 0; the 14B DiTs have 40), e.g. --memory fp8+block_swap:10")


def parse_memory_mode(text: str, *, allow_auto: bool = True) -> MemoryMode:
    """Parse a memory-mode string (CLI ``--memory``, pipeline settings, node widgets).

    Args:
        text: e.g. ``"model_offload"``, ``"block_swap:10"``, ``"fp8+block_swap:10"``, ``"auto"``; case and spaces
            around the parts are ignored; the ``fp8`` part may come first or last.
        allow_auto: accept ``"auto"`` (a :class:`MemoryMode` with ``is_auto``; resolve it with
            :func:`choose_memory_mode`).

    Returns:
        the :class:`MemoryMode`.

    Raises:
        MoGe4DInputError: unknown part, repeated part, two residencies, bad N; the message lists the valid forms.
    """
    if isinstance(text, MemoryMode):
        return text
    if not isinstance(text, str) or not text.strip():
        raise _mode_error(text, "expected a non-empty string")
    parts = [p.strip().lower() for p in text.split("+")]
    fp8, residency, blocks = False, None, None
    for part in parts:
        if part == "fp8":
            if fp8:
                raise _mode_error(text, "'fp8' appears twice")
            fp8 = True
            continue
        m = re.fullmatch(r"block_swap\s*:\s*(\S+)", part)
        if m:
            try:
                n = int(m.group(1))
            except ValueError:
                raise _mode_error(text, f"block_swap needs an integer number of blocks, got {m.group(1)!r}") from None
            if n < 0:
                raise _mode_error(text, f"block_swap:{n} is negative")
            name, value = "block_swap", n
        elif part in ("full", "model_offload", "auto"):
            name, value = part, None
        elif part == "block_swap":
            raise _mode_error(text, "block_swap needs a block count, e.g. block_swap:10")
        else:
            raise _mode_error(text, f"unknown part {part!r}")
        if residency is not None:
            raise _mode_error(text, f"two residencies ({residency!r} and {name!r}); combine at most one with fp8")
        residency, blocks = name, value
    if residency == "auto":
        if fp8:
            raise _mode_error(text, "'auto' cannot be combined")
        if not allow_auto:
            raise _mode_error(text, "'auto' is not accepted here; name a mode")
    return MemoryMode(residency=residency or "model_offload", blocks=blocks, fp8=fp8)


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
