"""The conditioning tensors the Wan DiTs take, independent of who produced them.

Two contexts enter the Wan-Fun 14B DiTs (4D-STraG and 4D-ViSM):

* :class:`TextContext`: umT5-XXL last hidden states, ``embeddings (B, 512, 4096)``, each row valid up
  to ``lengths[b]`` tokens (the prompt tokens plus ``</s>``) and exactly zero after. This is Wan's
  convention: the encoder output is cut to the valid length, then the DiT zero-pads it to
  ``text_len = 512`` before its ``text_embedding`` MLP (so the padded rows still reach cross-attention
  as ``text_embedding(0)``; the DiT does not mask them).
* :class:`ImageContext`: CLIP ViT-H/14 tokens of the *penultimate* block (Wan's ``use_31_block``:
  the first 31 of 32 blocks, no ``post_norm``), ``tokens (B, 257, 1280)`` = class token + 16x16
  patches of a 224x224 input. MoGe4D stage 1 embeds a uniform grey image; stage 2 passes zeros
  (:func:`zero_image_context`).

Producers: the core encoders (:func:`moge4d_core.models.text.encode_text`,
:func:`moge4d_core.models.clip.encode_image`) or ComfyUI's native nodes, converted here without
importing ComfyUI:

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

Widths are parameters (``dim``) so that tiny test DiTs can use tiny contexts; the defaults are the
real ones (4096 for umT5-XXL, 1280 for CLIP ViT-H/14).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from ..errors import MoGe4DInputError

TEXT_LEN = 512          # Wan's text_len: tokens per prompt after zero padding
TEXT_DIM = 4096         # umT5-XXL d_model
IMAGE_TOKENS = 257      # CLIP ViT-H/14 at 224 px: 1 class token + 16*16 patches
IMAGE_DIM = 1280        # CLIP ViT-H/14 width

__all__ = [
    "TEXT_LEN", "TEXT_DIM", "IMAGE_TOKENS", "IMAGE_DIM",
    "TextContext", "ImageContext", "pad_text", "zero_image_context",
    "validate_text_context", "validate_image_context",
    "from_comfy_conditioning", "from_comfy_clip_vision_output",
]


def _lengths_tensor(lengths, batch: int, full: int, name: str) -> torch.Tensor:
    if lengths is None:
        return torch.full((batch,), full, dtype=torch.long)
    t = torch.as_tensor(lengths).detach().to("cpu")
    if t.ndim != 1 or t.shape[0] != batch:
        raise MoGe4DInputError(f"{name}: lengths must hold one count per prompt ({batch}), got shape {tuple(t.shape)}")
    if t.is_floating_point() or t.is_complex():
        raise MoGe4DInputError(f"{name}: lengths must be integer token counts, got dtype {t.dtype}")
    if bool((t < 0).any()):
        raise MoGe4DInputError(f"{name}: lengths must be >= 0, got {t.tolist()}")
    return t.long()


def pad_text(emb: torch.Tensor, lengths=None, text_len: int = TEXT_LEN, *, name: str = "text embeddings") -> torch.Tensor:
    """Wan's text padding: keep each prompt's first ``lengths[b]`` rows, zero the rest, pad/truncate to ``text_len``.

    emb (B, L, D) float; lengths (B,) ints (None: all L rows valid). Returns (B, text_len, D) with the
    dtype and device of ``emb``. Rows at or beyond ``min(lengths[b], text_len)`` are exactly zero;
    a prompt longer than ``text_len`` is cut (Wan's tokenizer truncates at 512 tokens too).
    """
    if not isinstance(emb, torch.Tensor) or emb.ndim != 3:
        got = tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
        raise MoGe4DInputError(f"{name}: expected a (B, L, D) tensor of token embeddings, got {got}")
    if not emb.is_floating_point():
        raise MoGe4DInputError(f"{name}: expected floating-point embeddings, got dtype {emb.dtype}")
    b, l, d = emb.shape
    lens = _lengths_tensor(lengths, b, l, name).clamp(max=min(l, text_len))
    keep = min(l, text_len)
    out = emb.new_zeros((b, text_len, d))
    valid = torch.arange(keep).unsqueeze(0) < lens.unsqueeze(1)          # (B, keep) on CPU
    out[:, :keep] = torch.where(valid.to(emb.device).unsqueeze(-1), emb[:, :keep], out[:, :keep])
    return out


@dataclass
class TextContext:
    """umT5 text conditioning for the Wan DiTs.

    embeddings (B, 512, D) float, D = 4096 for umT5-XXL: row ``t`` of prompt ``b`` is the encoder
    output for token ``t`` when ``t < lengths[b]``, else exactly 0.
    lengths (B,) int64 on CPU: valid tokens per prompt (prompt tokens + ``</s>``), at most 512.
    Build it from unpadded tensors with :meth:`from_embeddings`.
    """

    embeddings: torch.Tensor
    lengths: torch.Tensor

    def __post_init__(self) -> None:
        e = self.embeddings
        if not isinstance(e, torch.Tensor) or e.ndim != 3 or e.shape[1] != TEXT_LEN or not e.is_floating_point():
            got = f"{tuple(e.shape)} {e.dtype}" if isinstance(e, torch.Tensor) else type(e).__name__
            raise MoGe4DInputError(
                f"TextContext.embeddings: expected a float (B, {TEXT_LEN}, D) tensor padded with zeros to "
                f"{TEXT_LEN} tokens, got {got}; build it with TextContext.from_embeddings or pad_text")
        self.lengths = _lengths_tensor(self.lengths, e.shape[0], TEXT_LEN, "TextContext.lengths")
        if bool((self.lengths > TEXT_LEN).any()):
            raise MoGe4DInputError(f"TextContext.lengths: at most {TEXT_LEN} tokens, got {self.lengths.tolist()}")

    @classmethod
    def from_embeddings(cls, emb: torch.Tensor, lengths=None, *, name: str = "text embeddings") -> "TextContext":
        """From unpadded encoder output ``emb (B, L, D)`` and valid ``lengths (B,)`` (None: all L)."""
        padded = pad_text(emb, lengths, name=name)
        lens = _lengths_tensor(lengths, emb.shape[0], emb.shape[1], name).clamp(max=min(emb.shape[1], TEXT_LEN))
        return cls(padded, lens)

    @property
    def batch_size(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[2])

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "TextContext":
        return TextContext(self.embeddings.to(device=device, dtype=dtype), self.lengths)

    @staticmethod
    def cat(contexts: Sequence["TextContext"]) -> "TextContext":
        """Stack contexts along the batch (e.g. conditional + unconditional for CFG)."""
        return TextContext(torch.cat([c.embeddings for c in contexts]), torch.cat([c.lengths for c in contexts]))


@dataclass
class ImageContext:
    """CLIP image conditioning for the Wan i2v DiTs.

    tokens (B, 257, C) float, C = 1280 for CLIP ViT-H/14: output of the penultimate transformer block
    (no final LayerNorm) for a 224x224 input, class token first. All zeros means "no image".
    """

    tokens: torch.Tensor

    def __post_init__(self) -> None:
        t = self.tokens
        if not isinstance(t, torch.Tensor) or t.ndim != 3 or t.shape[1] != IMAGE_TOKENS or not t.is_floating_point():
            got = f"{tuple(t.shape)} {t.dtype}" if isinstance(t, torch.Tensor) else type(t).__name__
            raise MoGe4DInputError(
                f"ImageContext.tokens: expected a float (B, {IMAGE_TOKENS}, C) tensor of CLIP penultimate-block "
                f"tokens, got {got}")

    @property
    def batch_size(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def dim(self) -> int:
        return int(self.tokens.shape[2])

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "ImageContext":
        return ImageContext(self.tokens.to(device=device, dtype=dtype))

    @staticmethod
    def cat(contexts: Sequence["ImageContext"]) -> "ImageContext":
        return ImageContext(torch.cat([c.tokens for c in contexts]))


def zero_image_context(batch: int, *, dim: int = IMAGE_DIM, dtype: torch.dtype = torch.float32,
                       device=None) -> ImageContext:
    """All-zero CLIP context (B, 257, dim): what Wan-Fun InP (MoGe4D stage 2) uses when no image is given."""
    if int(batch) < 1:
        raise MoGe4DInputError(f"zero_image_context: batch must be >= 1, got {batch}")
    return ImageContext(torch.zeros(int(batch), IMAGE_TOKENS, dim, dtype=dtype, device=device))


def validate_text_context(ctx: TextContext, *, dim: int = TEXT_DIM, name: str = "text conditioning") -> TextContext:
    """Check ``ctx`` is a :class:`TextContext` of width ``dim``; raise :class:`MoGe4DInputError` naming ``name``."""
    if not isinstance(ctx, TextContext):
        raise MoGe4DInputError(f"{name}: expected a TextContext (umT5 embeddings padded to {TEXT_LEN} tokens), "
                               f"got {type(ctx).__name__}")
    if ctx.dim != dim:
        raise MoGe4DInputError(
            f"{name}: token width {ctx.dim}, expected {dim}: conditioning from a non-umT5 encoder. The Wan models "
            f"need umT5-XXL text embeddings: in ComfyUI load umt5_xxl_fp16.safetensors (or "
            f"umt5_xxl_fp8_e4m3fn_scaled.safetensors) with CLIPLoader type 'wan'; in the core use load_text_encoder.")
    return ctx


def validate_image_context(ctx: ImageContext, *, dim: int = IMAGE_DIM, name: str = "CLIP image conditioning") -> ImageContext:
    """Check ``ctx`` is an :class:`ImageContext` of shape (B, 257, ``dim``); raise :class:`MoGe4DInputError` naming ``name``."""
    if not isinstance(ctx, ImageContext):
        raise MoGe4DInputError(f"{name}: expected an ImageContext (CLIP penultimate tokens), got {type(ctx).__name__}")
    if tuple(ctx.tokens.shape[1:]) != (IMAGE_TOKENS, dim):
        raise MoGe4DInputError(
            f"{name}: CLIP tokens of shape {tuple(ctx.tokens.shape[1:])} per image, expected ({IMAGE_TOKENS}, {dim}): "
            f"the penultimate block of CLIP ViT-H/14 at 224 px. Use clip_vision_h.safetensors (ComfyUI "
            f"CLIPVisionLoader) or the Wan CLIP checkpoint with load_clip_vision.")
    return ctx


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
    """ComfyUI ``CLIP_VISION_OUTPUT`` -> :class:`ImageContext` (float32) from ``penultimate_hidden_states (B, 257, dim)``."""
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
