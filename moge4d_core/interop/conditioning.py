"""ComfyUI's conditioning types -> the core's :class:`~moge4d_core.models.conditioning.TextContext` /
:class:`~moge4d_core.models.conditioning.ImageContext`, without importing ComfyUI.

* ``CONDITIONING`` (from ``CLIPTextEncode`` with a ``CLIPLoader(type="wan")`` umT5 model) is a list of
  ``[cond, extras]`` pairs. ``cond`` is a ``(B, L, 4096)`` tensor (B is 1 for ``CLIPTextEncode``);
  ``extras`` is a dict (``pooled_output``, sometimes ``attention_mask (B, L)`` and node-specific
  entries such as ``concat_latent_image``). ComfyUI v0.21's umT5 tokenizer pads to 512 tokens
  (``min_length=512``, as Wan does) and zeroes the padded positions, so ``L`` is usually 512 with zeros after
  the prompt tokens plus ``</s>``; the converter handles both that and unpadded tensors (trailing zero rows
  are treated as padding). ``ConditioningConcat`` can make ``L`` longer, ``ConditioningZeroOut`` makes
  ``cond`` all zeros.
  Several pairs (``ConditioningCombine``) mean "average the model's predictions", which is not a
  batch; :func:`from_comfy_conditioning` refuses them with an explanation. (ComfyUI's own Wan model
  appears to run ``text_embedding`` on the unpadded ``L`` tokens; the contract here pads to 512 as
  Wan / VideoX-Fun do, which is what the released MoGe4D checkpoints saw in training.)
* ``CLIP_VISION_OUTPUT`` (from ``CLIPVisionEncode``) is a ``comfy.clip_vision.Output`` object that
  supports both ``obj.name`` and ``obj["name"]``: ``last_hidden_state (B, 257, 1280)``,
  ``penultimate_hidden_states (B, 257, 1280)`` (encoder run with ``intermediate_output=-2``, i.e. the
  output of block index 30 of 32, equal to Wan's ``use_31_block``), ``image_embeds (B, 1024)``
  and, in newer versions, ``mm_projected``. ComfyUI's Wan model reads ``penultimate_hidden_states``;
  so does :func:`from_comfy_clip_vision_output`. (ComfyUI preprocesses with a short-side antialiased
  resize + centre crop where Wan stretches to 224x224; for MoGe4D's constant grey image both agree.)
"""
from __future__ import annotations

from typing import Any

import torch

from ..errors import MoGe4DInputError
from ..models.conditioning import (IMAGE_DIM, IMAGE_TOKENS, TEXT_DIM, ImageContext, TextContext,
                                   validate_image_context, validate_text_context)

__all__ = ["from_comfy_conditioning", "from_comfy_clip_vision_output", "empty_text_conditioning"]


def empty_text_conditioning(dim: int = TEXT_DIM) -> list:
    """An all-zero ComfyUI ``CONDITIONING`` ``[[zeros (1, 1, dim), {"pooled_output": None}]]``.

    What a DiT trained without text (:func:`~moge4d_core.models.wan_dit.reads_text` False) runs on: no context
    changes its output, so one zero token of the width ComfyUI's Wan models take (umT5-XXL's 4096) stands for
    any prompt, with no text encoder loaded.
    """
    return [[torch.zeros(1, 1, int(dim)), {"pooled_output": None}]]


def _trailing_valid_lengths(cond: torch.Tensor) -> torch.Tensor:
    """Per row: index after the last token row that is not all zero (ComfyUI zeroes masked positions)."""
    nonzero = (cond != 0).any(dim=-1).to("cpu")                        # (B, L)
    idx = torch.arange(1, cond.shape[1] + 1).unsqueeze(0) * nonzero     # position+1 where non-zero
    return idx.max(dim=1).values.long()


def from_comfy_conditioning(cond: Any, *, dim: int = TEXT_DIM, name: str = "conditioning") -> TextContext:
    """ComfyUI ``CONDITIONING`` (``[[tensor (B, L, D), dict]]``) -> :class:`TextContext` (float32).

    Valid lengths come from ``dict["attention_mask"]`` when present, else from the last non-zero token
    row (ComfyUI zeroes padded positions; counting trailing zero rows or not gives the same padded
    tensor). ``L > 512`` is truncated to 512 (ComfyUI itself does not truncate; Wan does).

    Args:
        cond: ComfyUI ``CONDITIONING`` with one ``[tensor (B, L, D) or (L, D), dict]`` entry, or a
            :class:`TextContext` (validated and returned).
        dim: the width D the model takes (4096 for umT5-XXL).
        name: the input's name in error messages.

    Returns:
        :class:`TextContext` with embeddings (B, 512, D) float32, zero past each prompt's valid length, and
        lengths (B,) on the CPU.

    Raises:
        MoGe4DInputError: not a list of ``[tensor, dict]`` pairs, several entries (``ConditioningCombine``), a
            tensor that is not (B, L, D), or a width other than ``dim``.
    """
    if isinstance(cond, TextContext):
        return validate_text_context(cond, dim=dim, name=name)
    if not isinstance(cond, (list, tuple)) or len(cond) == 0:
        raise MoGe4DInputError(f"{name}: expected ComfyUI CONDITIONING (a list of [tensor, dict] pairs), "
                               f"got {type(cond).__name__}{' (empty)' if isinstance(cond, (list, tuple)) else ''}")
    if len(cond) > 1:
        raise MoGe4DInputError(
            f"{name}: holds {len(cond)} conditioning entries (e.g. from ConditioningCombine or area/timestep "
            f"conditioning). MoGe4D takes one prompt per input: connect a single CLIPTextEncode, or join prompts "
            f"with ConditioningConcat.")
    entry = cond[0]
    if not isinstance(entry, (list, tuple)) or len(entry) < 1 or not isinstance(entry[0], torch.Tensor):
        raise MoGe4DInputError(f"{name}: entry is not a [tensor, dict] pair (got {type(entry).__name__})")
    t = entry[0]
    extras = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
    if t.ndim == 2:
        t = t.unsqueeze(0)
    if t.ndim != 3:
        raise MoGe4DInputError(f"{name}: conditioning tensor must be (B, L, D), got {tuple(t.shape)}")
    if t.shape[-1] != dim:
        raise MoGe4DInputError(
            f"{name}: token width {t.shape[-1]}, expected {dim}: conditioning from a non-umT5 encoder. The Wan models "
            f"need umT5-XXL: load umt5_xxl_fp16.safetensors (or the fp8_scaled file) with CLIPLoader type 'wan'.")
    t = t.detach().float()
    mask = extras.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.shape == t.shape[:2]:
        valid = (mask != 0).to(t.device)
        lengths = valid.sum(dim=1).long().to("cpu")
        # valid rows first, in their order (a no-op for right padding), padded rows after
        order = torch.argsort((~valid).long(), dim=1, stable=True)
        t = torch.gather(torch.where(valid.unsqueeze(-1), t, torch.zeros_like(t)), 1, order.unsqueeze(-1).expand_as(t))
    else:
        lengths = _trailing_valid_lengths(t)
    return TextContext.from_embeddings(t, lengths, name=name)


def from_comfy_clip_vision_output(obj: Any, *, dim: int = IMAGE_DIM, name: str = "clip_vision_output") -> ImageContext:
    """ComfyUI ``CLIP_VISION_OUTPUT`` -> :class:`ImageContext` (float32) from ``penultimate_hidden_states``.

    Args:
        obj: the ``CLIPVisionEncode`` output (attribute or key ``penultimate_hidden_states``, (B, 257, dim) or
            (257, dim)), or an :class:`ImageContext` (validated and returned).
        dim: the token width the model takes (1280 for CLIP ViT-H/14).
        name: the input's name in error messages.

    Returns:
        :class:`ImageContext` with tokens (B, 257, dim) float32, detached, on the tensor's device.

    Raises:
        MoGe4DInputError: ``obj`` is None, has no ``penultimate_hidden_states`` tensor, or its shape is not
            (B, 257, dim).
    """
    if isinstance(obj, ImageContext):
        return validate_image_context(obj, dim=dim, name=name)
    if obj is None:
        raise MoGe4DInputError(f"{name}: no CLIP vision output connected; connect CLIPVisionEncode "
                               f"(clip_vision_h.safetensors) or use a zero image context")
    tokens = getattr(obj, "penultimate_hidden_states", None)
    if tokens is None and isinstance(obj, dict):
        tokens = obj.get("penultimate_hidden_states")
    if not isinstance(tokens, torch.Tensor):
        raise MoGe4DInputError(
            f"{name}: {type(obj).__name__} has no 'penultimate_hidden_states' tensor; expected the output of "
            f"ComfyUI's CLIPVisionEncode with a CLIP ViT-H/14 model (clip_vision_h.safetensors)")
    if tokens.ndim == 2:
        tokens = tokens.unsqueeze(0)
    if tokens.ndim != 3 or tuple(tokens.shape[1:]) != (IMAGE_TOKENS, dim):
        raise MoGe4DInputError(
            f"{name}: penultimate_hidden_states of shape {tuple(tokens.shape)}, expected (B, {IMAGE_TOKENS}, {dim}) "
            f"from CLIP ViT-H/14 at 224 px. Use clip_vision_h.safetensors in CLIPVisionLoader (ViT-L / bigG "
            f"models have other widths) and crop 'center' or 'none' in CLIPVisionEncode.")
    return ImageContext(tokens.detach().float())
