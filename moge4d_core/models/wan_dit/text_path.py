"""Whether a Wan DiT reads its text context at all.

A DiT trained without a text encoder (the nano model: every text context it saw was all zeros) has no use for a
prompt. The trainers then start the text embedder's input weights at zero (:func:`drop_text_input_`); zero inputs
give them zero gradients, so they stay zero and the exported file itself shows that text has no effect: the text
embedder's output is its bias path whatever the context, and :func:`reads_text` is False. The nodes and the CLI
use it to run such a model with no text conditioning; any context of the right width gives the same result, so
ComfyUI's own ``KSampler`` can be fed an empty one (MoGe4D Empty Text).
"""
from __future__ import annotations

import torch

__all__ = ["reads_text", "drop_text_input_"]

_ROWS = 256        # rows checked at a time: a model that reads text shows non-zero weights in the first chunk


def _text_input_weight(model: torch.nn.Module) -> torch.Tensor:
    return model.condition_embedder.text_embedder.linear_1.weight


def reads_text(model: torch.nn.Module) -> bool:
    """False when the DiT's text embedder ignores its input (its input weights are all zero), else True.

    Args:
        model: a :class:`~moge4d_core.models.wan_dit.WanDiT` (weights on any device; meta counts as reading text).

    Returns:
        True when a text context can change the output.
    """
    w = _text_input_weight(model).detach()
    if w.device.type == "meta":
        return True
    for start in range(0, w.shape[0], _ROWS):
        if bool(w[start:start + _ROWS].to(torch.float32).abs().amax() > 0):
            return True
    return False


@torch.no_grad()
def drop_text_input_(model: torch.nn.Module) -> torch.nn.Module:
    """Zero the text embedder's input weights (for training from scratch without a text encoder); returns model."""
    _text_input_weight(model).zero_()
    return model
