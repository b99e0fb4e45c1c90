"""Stage-at-a-time residency: which model sits on the compute device when.

The pipeline's models are loaded into host memory (the *offload device*, the CPU) in their storage dtype. A
:class:`Residency` brings each stage's models to the compute device for that stage (text + CLIP → depth → motion
features → STraG + motion VAE → render → ViSM + image VAE) and, depending on the memory mode
(:class:`~.memory.MemoryMode`), sends them back after it:

* ``full``: a model comes to the device the first time a stage needs it and stays (fastest for repeated runs).
* ``model_offload``: a stage's models come for that stage only and go back after it (the default). The peak is the
  largest stage, not the sum of all models.
* ``block_swap:N``: as ``model_offload``, but a DiT keeps only its first N transformer blocks and its non-block
  weights (embeddings, head) on the device; the other blocks wait in host memory and come in one at a time for
  their forward, through diffusers' group offloading (``apply_group_offloading``, block level). Written here, not
  taken whole from diffusers, because diffusers offloads *every* block of the module it is given: the N resident
  blocks are kept out by giving it a holder of the remaining blocks only, and the rest of the DiT is moved with
  ``nn.Module.to`` (diffusers' ``ModelMixin.to`` refuses to move a group-offloaded model). Blocks are streamed
  synchronously; prefetching on a side CUDA stream needs diffusers' execution-order tracking on the module that is
  called, which a holder never is.
* ``fp8``: the DiTs' big Linear weights are stored in float8 (e4m3) and computed in bf16 — applied when they are
  loaded (:func:`moge4d_core.pipeline.model_dir.load_models` passes the fp8 storage dtype), combinable with the
  residencies above.

:meth:`Residency.location` and :attr:`Residency.events` record where each model is, so tests (and the GPU suite)
can check that a stage loads only the models it uses and that they leave after it.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Optional, Union

import torch
import torch.nn as nn

from ..errors import require
from .memory import MemoryMode, parse_memory_mode

__all__ = ["Residency", "ResidencyEvent"]

DeviceLike = Union[str, torch.device]


@dataclass(frozen=True)
class ResidencyEvent:
    """One move: ``stage`` (the stage that caused it), ``model`` (its name), ``where`` ("device" | "offload")."""

    stage: str
    model: str
    where: str


def _blocks(model: nn.Module) -> Optional[nn.ModuleList]:
    blocks = getattr(model, "blocks", None)
    return blocks if isinstance(blocks, nn.ModuleList) and len(blocks) > 0 else None


class _BlockHolder(nn.Module):
    """The streamed blocks of one DiT, as the one ``ModuleList`` diffusers' group offloading walks."""

    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)


class Residency:
    """Moves the pipeline's models between the offload device and the compute device, stage by stage.

    Args:
        device: the compute device (e.g. ``"cuda"``).
        mode: a :class:`~.memory.MemoryMode` or its string (not ``auto``: resolve it first with
            :func:`moge4d_core.pipeline.plan.choose_memory_mode`).
        offload_device: where models wait between stages (host memory).

    Usage::

        res = Residency("cuda", "fp8+block_swap:10")
        res.prepare(strag, name="STraG")
        with res.stage("trajectories", strag=strag, motion_vae=mvae):
            ...   # both on the device here (strag: 10 blocks + non-block weights)
    """

    def __init__(self, device: DeviceLike, mode: Union[MemoryMode, str] = "model_offload",
                 offload_device: DeviceLike = "cpu") -> None:
        self.device = torch.device(device)
        self.offload_device = torch.device(offload_device)
        self.mode = parse_memory_mode(mode, allow_auto=False)
        self.events: list[ResidencyEvent] = []
        self._where: dict[int, str] = {}
        self._names: dict[int, str] = {}
        self._models: dict[int, nn.Module] = {}
        self._swapped: dict[int, int] = {}        # id(model) -> resident block count, for block-swapped DiTs

    # ------------------------------------------------------------------------------------------ setup
    def prepare(self, model: nn.Module, *, name: Optional[str] = None) -> nn.Module:
        """Register ``model`` (on the offload device) and, under ``block_swap:N``, set up its block streaming.

        Only modules with a ``blocks`` ``ModuleList`` (the DiTs) are block-swapped; others move whole.

        Returns:
            ``model`` itself.
        """
        key = id(model)
        if key in self._names:
            return model
        self._names[key] = name or type(model).__name__
        self._models[key] = model
        self._where[key] = "offload"
        blocks = _blocks(model)
        if self.mode.residency == "block_swap" and blocks is not None and self.mode.blocks < len(blocks):
            from diffusers.hooks import apply_group_offloading

            n = int(self.mode.blocks)
            holder = _BlockHolder(list(blocks)[n:])
            apply_group_offloading(holder, onload_device=self.device, offload_device=self.offload_device,
                                   offload_type="block_level", num_blocks_per_group=1)
            self._swapped[key] = n
        return model

    # ------------------------------------------------------------------------------------------ moves
    def _move(self, model: nn.Module, target: torch.device) -> None:
        n = self._swapped.get(id(model))
        if n is None:
            nn.Module.to(model, target)
            return
        blocks = _blocks(model)
        for child_name, child in model.named_children():
            if child is not blocks:
                child.to(target)
        for block in list(blocks)[:n]:
            block.to(target)
        for pname, p in model.named_parameters(recurse=False):
            p.data = p.data.to(target)
        for bname, b in model.named_buffers(recurse=False):
            setattr(model, bname, b.to(target))

    def _bring(self, stage: str, name: str, model: nn.Module) -> None:
        self.prepare(model, name=name)
        if self._where[id(model)] != "device":
            self._move(model, self.device)
            self._where[id(model)] = "device"
            self.events.append(ResidencyEvent(stage, name, "device"))

    def _send_back(self, stage: str, name: str, model: nn.Module) -> None:
        if self._where.get(id(model)) == "device":
            self._move(model, self.offload_device)
            self._where[id(model)] = "offload"
            self.events.append(ResidencyEvent(stage, name, "offload"))

    @contextlib.contextmanager
    def stage(self, stage: str, **models: Optional[nn.Module]) -> Iterator[None]:
        """Within the block, the named models (None entries are skipped) are on the compute device.

        After it they go back to the offload device, except in ``full`` mode. An exception inside the block still
        sends them back, so a cancelled run leaves nothing on the device.
        """
        present = {k: m for k, m in models.items() if m is not None}
        for name, model in present.items():
            require(isinstance(model, nn.Module), f"residency: {name} is not a torch module")
            self._bring(stage, name, model)
        try:
            yield
        finally:
            if self.mode.residency != "full":
                for name, model in present.items():
                    self._send_back(stage, name, model)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()

    def keep_on_device(self, model: nn.Module, *, name: Optional[str] = None) -> nn.Module:
        """Bring ``model`` to the device for good (no stage): under ``block_swap:N`` its N resident blocks and
        non-block weights; the other blocks keep streaming. For hosts that manage stages themselves (ComfyUI)."""
        self._bring("keep", name or type(model).__name__, model)
        return model

    def location(self, model: nn.Module) -> str:
        """``"device"`` or ``"offload"`` (``"unknown"`` for a model this residency never saw)."""
        return self._where.get(id(model), "unknown")

    def release(self) -> None:
        """Send every model still on the device back (e.g. at the end of a ``full`` run)."""
        for key, where in list(self._where.items()):
            if where == "device":
                self._send_back("release", self._names[key], self._models[key])
