"""umT5-XXL text encoder as Wan uses it (transformers ``UMT5EncoderModel``).

The model is transformers' ``UMT5EncoderModel``, which computes exactly Wan's ``T5Encoder``
(``wan/modules/t5.py``): per-layer relative position bias (32 bidirectional buckets, max distance
128), T5 RMSNorm (eps 1e-6), no attention scaling, gated-GELU(tanh) FFN ``wo(gelu(wi_0 x) * wi_1 x)``,
final RMSNorm. Checkpoint key maps live in :mod:`moge4d_core.loading.text`.

Wan's text convention (``WanT5EncoderModel`` in VideoX-Fun, which MoGe4D calls): tokenise with
``padding="max_length", max_length=512, truncation=True`` (no BOS, ``</s>`` = 1 appended, pad = 0),
run the encoder with the attention mask, cut each output to its valid length, and let the DiT
zero-pad to 512. VideoX-Fun/MoGe4D do no prompt cleaning (Wan's own repo additionally collapses
whitespace with ftfy), so neither does :func:`encode_text`.

Speed: :func:`encode_text` drops padding columns that no prompt in the batch uses before running
the encoder. Masked keys get a ``finfo.min`` additive bias, so their softmax weight is exactly zero
and the valid rows do not depend on how much padding follows; a 20-token prompt then costs 20
positions instead of 512 (~25x less encoder work for typical prompts).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ..errors import MoGe4DInputError
from .conditioning import TEXT_LEN, TextContext, pad_text

# Wan `umt5_xxl` / VideoX-Fun `text_encoder_kwargs`, in transformers' UMT5Config names.
UMT5_XXL = dict(
    vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
    relative_attention_num_buckets=32, relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu", layer_norm_epsilon=1e-6, dropout_rate=0.0,
    pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
)

__all__ = ["UMT5_XXL", "umt5_config", "build_umt5_encoder", "SentencePieceT5Tokenizer", "tokenize", "encode_text"]


def umt5_config(**overrides):
    """transformers ``UMT5Config`` for the Wan umT5-XXL encoder, with ``overrides`` (e.g. tiny test sizes)."""
    from transformers import UMT5Config

    kw = dict(UMT5_XXL)
    kw.update(overrides)
    return UMT5Config(**kw)


def build_umt5_encoder(config):
    """An (uninitialised if built under a meta device) transformers ``UMT5EncoderModel`` for ``config``."""
    from transformers import UMT5EncoderModel

    return UMT5EncoderModel(config).eval()


class SentencePieceT5Tokenizer:
    """umT5 tokenisation straight from a SentencePiece model (no protobuf / tokenizer.json needed).

    Used when the tokenizer comes as ``spiece.model`` only, or embedded in a ComfyUI umT5 file as its
    ``spiece_model`` tensor. Encodes like Wan's HF tokenizer call: pieces of the prompt, truncated to
    ``max_length - 1``, then ``</s>`` (id 1), right-padded with ``<pad>`` (id 0). It matches the HF fast
    tokenizer for ordinary prompts; rare Unicode normalisation corner cases may differ.

    Args:
        model_proto: the serialised SentencePiece model (the bytes of ``spiece.model``).
        source: where it came from, for error messages.

    Raises:
        MoGe4DInputError: the ``sentencepiece`` package is missing, or ``model_proto`` is not a SentencePiece model.
    """

    padding_side = "right"

    def __init__(self, model_proto: bytes, source: str = "<bytes>"):
        try:
            import sentencepiece as spm
        except ImportError:
            raise MoGe4DInputError(
                f"{source}: reading a SentencePiece tokenizer needs the 'sentencepiece' package "
                f"(pip install sentencepiece), or give a tokenizer folder that holds tokenizer.json") from None
        self.source = source
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(bytes(model_proto))
        except Exception as exc:
            raise MoGe4DInputError(f"{source}: not a valid SentencePiece model ({exc})") from None
        self.eos_token_id = self.sp.eos_id() if self.sp.eos_id() >= 0 else 1
        self.pad_token_id = self.sp.pad_id() if self.sp.pad_id() >= 0 else 0

    def __len__(self) -> int:
        """Vocabulary size (SentencePiece pieces)."""
        return int(self.sp.get_piece_size())

    def __call__(self, texts: Sequence[str], max_length: int = TEXT_LEN, **_ignored: Any) -> dict:
        """HF-style output for ``padding="max_length", truncation=True``: input_ids / attention_mask (B, max_length).

        Args:
            texts: B prompts.
            max_length: tokens per row, ``</s>`` included (512).

        Returns:
            ``{"input_ids": (B, max_length) int64, "attention_mask": (B, max_length) int64}``, 1 on the prompt
            pieces and ``</s>``, 0 on the padding.
        """
        rows = [list(ids[: max_length - 1]) + [self.eos_token_id] for ids in self.sp.encode(list(texts))]
        ids = torch.full((len(rows), max_length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), max_length), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def tokenize(tokenizer, prompts: Sequence[str], max_length: int = TEXT_LEN) -> tuple[torch.Tensor, torch.Tensor]:
    """Wan tokenisation: ``(input_ids, attention_mask)``, both (B, max_length) int64, padded to ``max_length``.

    Args:
        tokenizer: a HF umT5 tokenizer or :class:`SentencePieceT5Tokenizer`.
        prompts: B prompts.
        max_length: tokens per row after padding / truncation (512).

    Returns:
        ``(input_ids, attention_mask)``, each ``(B, max_length)`` int64 on the CPU; mask 1 = a real token.
    """
    out = tokenizer(list(prompts), padding="max_length", max_length=max_length, truncation=True,
                    add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    ids = torch.as_tensor(out["input_ids"], dtype=torch.long)
    mask = torch.as_tensor(out["attention_mask"], dtype=torch.long)
    return ids, mask


def _check_prompts(prompts) -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts) if isinstance(prompts, (list, tuple)) else prompts
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise MoGe4DInputError(f"prompts: expected a non-empty list of strings, got {prompts!r:.200}")
    return prompts


@torch.no_grad()   # not inference_mode: training code may save these outputs for backward
def encode_text(model, tokenizer, prompts: Sequence[str], *, max_length: int = TEXT_LEN,
                out_dtype: torch.dtype = torch.float32) -> TextContext:
    """Encode prompts with umT5 the way Wan does -> :class:`TextContext` (B, 512, d_model), zero past each length.

    Args:
        model: a transformers ``UMT5EncoderModel`` (from :func:`moge4d_core.loading.text.load_text_encoder`).
        tokenizer: a HF tokenizer or :class:`SentencePieceT5Tokenizer`.
        prompts: one prompt or a non-empty list of B prompts.
        max_length: tokeniser length (prompts are truncated to ``max_length - 1`` tokens plus ``</s>``).
        out_dtype: dtype of the embeddings.

    Returns:
        :class:`~moge4d_core.models.conditioning.TextContext`: ``embeddings (B, 512, d_model)`` (4096 for
        umT5-XXL) in ``out_dtype`` on the model's device, rows past each prompt's length exactly 0;
        ``lengths (B,)`` int64 on the CPU (prompt tokens + ``</s>``).

    Raises:
        MoGe4DInputError: ``prompts`` is empty or not strings, or the tokenizer produces ids outside the model's
            vocabulary (a tokenizer of another model).
    """
    prompts = _check_prompts(prompts)
    ids, mask = tokenize(tokenizer, prompts, max_length=max_length)
    lengths = mask.sum(dim=1)
    vocab = int(model.config.vocab_size)
    if int(ids.max()) >= vocab:
        raise MoGe4DInputError(
            f"tokenizer: produced token id {int(ids.max())} but the text encoder has only {vocab} embeddings; "
            f"the tokenizer folder does not belong to this umT5 model (use the google/umt5-xxl tokenizer)")
    used = mask.bool().any(dim=0)               # drop padding columns no prompt uses
    ids, mask = ids[:, used], mask[:, used]
    p = next(model.parameters())
    hidden = model(input_ids=ids.to(p.device), attention_mask=mask.to(p.device)).last_hidden_state
    hidden = hidden.to(out_dtype)
    # valid rows first (no-op for right padding), then zero past each length and pad to 512
    valid = mask.bool().to(hidden.device)
    order = torch.argsort((~valid).long(), dim=1, stable=True)
    hidden = torch.gather(hidden, 1, order.unsqueeze(-1).expand_as(hidden))
    return TextContext(pad_text(hidden, lengths, TEXT_LEN, name="umT5 output"), lengths.clamp(max=TEXT_LEN))
