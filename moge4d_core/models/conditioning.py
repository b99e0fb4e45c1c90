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
:func:`moge4d_core.models.clip.encode_image`) or ComfyUI's native nodes, converted by
:mod:`moge4d_core.interop.conditioning`.

Widths are parameters (``dim``) so that tiny test DiTs can use tiny contexts; the defaults are the
real ones (4096 for umT5-XXL, 1280 for CLIP ViT-H/14).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

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

    Rows at or beyond ``min(lengths[b], text_len)`` are exactly zero; a prompt longer than ``text_len`` is cut
    (Wan's tokenizer truncates at 512 tokens too).

    Args:
        emb: encoder output ``(B, L, D)``, floating point.
        lengths: ``(B,)`` integer counts of valid rows per prompt (list or tensor), or None: all ``L`` rows valid.
        text_len: rows of the result (512).
        name: the argument name used in error messages.

    Returns:
        ``(B, text_len, D)`` with the dtype and device of ``emb``.

    Raises:
        MoGe4DInputError: ``emb`` is not a float ``(B, L, D)`` tensor, or ``lengths`` is not B non-negative
            integers.
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
        """From unpadded encoder output ``emb (B, L, D)`` and valid ``lengths (B,)`` (None: all L).

        Args:
            emb: ``(B, L, D)`` float encoder output; rows past 512 are dropped.
            lengths: ``(B,)`` integer valid-row counts, or None for all ``L``.
            name: the argument name used in error messages.

        Returns:
            a context with ``embeddings (B, 512, D)`` (zero past each length) and ``lengths`` clamped to
            ``min(L, 512)``.

        Raises:
            MoGe4DInputError: as :func:`pad_text`.
        """
        padded = pad_text(emb, lengths, name=name)
        lens = _lengths_tensor(lengths, emb.shape[0], emb.shape[1], name).clamp(max=min(emb.shape[1], TEXT_LEN))
        return cls(padded, lens)

    @property
    def batch_size(self) -> int:
        """Number of prompts ``B``."""
        return int(self.embeddings.shape[0])

    @property
    def dim(self) -> int:
        """Token width ``D`` (4096 for umT5-XXL)."""
        return int(self.embeddings.shape[2])

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "TextContext":
        """A copy with the embeddings moved / cast (``lengths`` stay on the CPU)."""
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
        """Number of images ``B``."""
        return int(self.tokens.shape[0])

    @property
    def dim(self) -> int:
        """Token width ``C`` (1280 for CLIP ViT-H/14)."""
        return int(self.tokens.shape[2])

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "ImageContext":
        """A copy with the tokens moved / cast."""
        return ImageContext(self.tokens.to(device=device, dtype=dtype))

    @staticmethod
    def cat(contexts: Sequence["ImageContext"]) -> "ImageContext":
        """Stack contexts along the batch (e.g. conditional + unconditional for CFG)."""
        return ImageContext(torch.cat([c.tokens for c in contexts]))


def zero_image_context(batch: int, *, dim: int = IMAGE_DIM, dtype: torch.dtype = torch.float32,
                       device=None) -> ImageContext:
    """All-zero CLIP context (B, 257, dim): what Wan-Fun InP (MoGe4D stage 2) uses when no image is given.

    Args:
        batch: ``B`` >= 1.
        dim: token width (1280 for CLIP ViT-H/14).
        dtype, device: of the zeros.

    Returns:
        :class:`ImageContext` with ``tokens (batch, 257, dim)`` all zero.

    Raises:
        MoGe4DInputError: ``batch < 1``.
    """
    if int(batch) < 1:
        raise MoGe4DInputError(f"zero_image_context: batch must be >= 1, got {batch}")
    return ImageContext(torch.zeros(int(batch), IMAGE_TOKENS, dim, dtype=dtype, device=device))


def validate_text_context(ctx: TextContext, *, dim: int = TEXT_DIM, name: str = "text conditioning") -> TextContext:
    """Check ``ctx`` is a :class:`TextContext` of width ``dim``; raise :class:`MoGe4DInputError` naming ``name``.

    Args:
        ctx: the conditioning to check.
        dim: expected token width (4096 for umT5-XXL; the DiT's ``text_dim``).
        name: the input's name in the error message.

    Returns:
        ``ctx`` unchanged.

    Raises:
        MoGe4DInputError: not a :class:`TextContext`, or tokens ``D != dim`` wide (a non-umT5 text encoder).
    """
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
    """Check ``ctx`` is an :class:`ImageContext` of shape (B, 257, ``dim``); raise :class:`MoGe4DInputError`
    naming ``name``.

    Args:
        ctx: the conditioning to check.
        dim: expected token width (1280 for CLIP ViT-H/14; the DiT's ``image_dim``).
        name: the input's name in the error message.

    Returns:
        ``ctx`` unchanged.

    Raises:
        MoGe4DInputError: not an :class:`ImageContext`, or tokens per image other than ``(257, dim)``.
    """
    if not isinstance(ctx, ImageContext):
        raise MoGe4DInputError(f"{name}: expected an ImageContext (CLIP penultimate tokens), got {type(ctx).__name__}")
    if tuple(ctx.tokens.shape[1:]) != (IMAGE_TOKENS, dim):
        raise MoGe4DInputError(
            f"{name}: CLIP tokens of shape {tuple(ctx.tokens.shape[1:])} per image, expected ({IMAGE_TOKENS}, {dim}): "
            f"the penultimate block of CLIP ViT-H/14 at 224 px. Use clip_vision_h.safetensors (ComfyUI "
            f"CLIPVisionLoader) or the Wan CLIP checkpoint with load_clip_vision.")
    return ctx
