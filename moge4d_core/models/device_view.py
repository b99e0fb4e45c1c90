"""A view of a block-offloaded model that reports its *compute* device.

The pipeline places noise and condition tensors on ``next(model.parameters()).device``.  With diffusers group
offloading (:func:`moge4d_core.pipeline.memory.enable_block_offload`) the parameters rest on the offload device
(CPU) and only move to the GPU inside each block's forward, so that rule would put the inputs on the CPU while
the model returns GPU tensors.  :class:`ComputeDeviceView` wraps such a model: its first parameter is an empty
tensor on the compute device, every attribute (``config``, ``feature_adapter``, ...) and ``forward`` are the
wrapped model's.  It holds no weights of its own and adds nothing to memory.
"""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["ComputeDeviceView"]


class ComputeDeviceView(nn.Module):
    """``view = ComputeDeviceView(model, device, dtype)``: ``next(view.parameters())`` is on ``device``.

    Args:
        model: the block-offloaded model (held as ``inner``).
        device: its compute device (where the inputs should go).
        dtype: dtype of the empty anchor parameter (what ``next(view.parameters()).dtype`` reports).
    """

    def __init__(self, model: nn.Module, device: torch.device, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.empty(0, device=device, dtype=dtype), requires_grad=False)
        self.inner = model

    def forward(self, *args, **kwargs):
        """The wrapped model's forward, same arguments and result."""
        return self.inner(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("inner"), name)
