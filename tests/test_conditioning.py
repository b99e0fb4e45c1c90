"""The conditioning tensor contract: padding to 512, zero image context, validators, ComfyUI converters."""
from __future__ import annotations

import pytest
import torch

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.interop.conditioning import from_comfy_clip_vision_output, from_comfy_conditioning
from moge4d_core.models.conditioning import (
    IMAGE_DIM, IMAGE_TOKENS, TEXT_DIM, TEXT_LEN, ImageContext, TextContext, pad_text, validate_image_context,
    validate_text_context, zero_image_context,
)


def _expected_pad(emb: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """Wan: [u[:v] for u, v in zip(x, seq_lens)], then each zero-padded to 512 (loop form, float64)."""
    rows = []
    for u, v in zip(emb.double(), lengths):
        u = u[: min(v, TEXT_LEN)]
        rows.append(torch.cat([u, u.new_zeros(TEXT_LEN - u.shape[0], u.shape[1])]))
    return torch.stack(rows)


def test_pad_text_keeps_valid_rows_and_zeroes_the_rest():
    torch.manual_seed(0)
    emb = torch.randn(3, 20, 16)
    out = pad_text(emb, torch.tensor([5, 20, 0]))
    assert out.shape == (3, TEXT_LEN, 16) and out.dtype == emb.dtype
    assert torch.equal(out.double(), _expected_pad(emb, [5, 20, 0]))
    # padding rows may hold garbage (even NaN) in the encoder output; they must come out exactly zero
    emb[0, 5:] = float("nan")
    assert torch.equal(pad_text(emb, [5, 20, 0]).double(), _expected_pad(emb.nan_to_num(0.0), [5, 20, 0]))


def test_pad_text_truncates_beyond_512():
    emb = torch.randn(2, 600, 8)
    out = pad_text(emb, [600, 530])
    assert out.shape == (2, TEXT_LEN, 8)
    assert torch.equal(out, emb[:, :TEXT_LEN])
    ctx = TextContext.from_embeddings(emb, [600, 100])
    assert ctx.lengths.tolist() == [512, 100]
    assert torch.count_nonzero(ctx.embeddings[1, 100:]) == 0


def test_text_context_contract_and_validator():
    ctx = TextContext.from_embeddings(torch.randn(2, 7, TEXT_DIM), None)
    assert ctx.lengths.tolist() == [7, 7] and ctx.dim == TEXT_DIM and ctx.batch_size == 2
    assert validate_text_context(ctx) is ctx
    both = TextContext.cat([ctx, TextContext.from_embeddings(torch.randn(1, 3, TEXT_DIM), [2])])
    assert both.batch_size == 3 and both.lengths.tolist() == [7, 7, 2]
    with pytest.raises(MoGe4DInputError, match=r"negative_prompt: token width 768, expected 4096: conditioning from a non-umT5 encoder"):
        validate_text_context(TextContext.from_embeddings(torch.randn(1, 77, 768)), name="negative_prompt")
    with pytest.raises(MoGe4DInputError, match=r"padded with zeros to 512"):
        TextContext(torch.randn(1, 77, TEXT_DIM), torch.tensor([77]))
    with pytest.raises(MoGe4DInputError, match="lengths"):
        TextContext.from_embeddings(torch.randn(2, 7, 8), [3])
    with pytest.raises(MoGe4DInputError, match="lengths must be >= 0"):
        pad_text(torch.randn(1, 7, 8), [-1])
    with pytest.raises(MoGe4DInputError, match=r"\(B, L, D\)"):
        pad_text(torch.randn(7, 8), [3])


def test_image_context_zero_and_validator():
    z = zero_image_context(2)
    assert z.tokens.shape == (2, IMAGE_TOKENS, IMAGE_DIM) and torch.count_nonzero(z.tokens) == 0
    assert validate_image_context(z) is z
    assert zero_image_context(1, dim=64).tokens.shape == (1, 257, 64)
    with pytest.raises(MoGe4DInputError, match=r"clip: CLIP tokens of shape \(257, 1024\) per image, expected \(257, 1280\)"):
        validate_image_context(ImageContext(torch.zeros(1, 257, 1024)), name="clip")
    with pytest.raises(MoGe4DInputError, match=r"\(B, 257, C\)"):
        ImageContext(torch.zeros(1, 256, 1280))
    with pytest.raises(MoGe4DInputError, match="batch must be >= 1"):
        zero_image_context(0)


def test_from_comfy_conditioning_prompt_length_and_padding():
    torch.manual_seed(1)
    cond = torch.randn(1, 9, TEXT_DIM, dtype=torch.float16)
    ctx = from_comfy_conditioning([[cond, {"pooled_output": None}]])
    assert ctx.lengths.tolist() == [9] and ctx.embeddings.dtype == torch.float32
    assert torch.equal(ctx.embeddings.double(), _expected_pad(cond.float(), [9]))
    # ComfyUI zeroes masked positions: trailing zero rows count as padding (same tensor either way)
    padded = torch.cat([cond.float(), torch.zeros(1, 4, TEXT_DIM)], dim=1)
    ctx2 = from_comfy_conditioning([[padded, {}]])
    assert ctx2.lengths.tolist() == [9] and torch.equal(ctx2.embeddings, ctx.embeddings)
    # ConditioningZeroOut
    assert from_comfy_conditioning([[torch.zeros(1, 5, TEXT_DIM), {}]]).lengths.tolist() == [0]


def test_from_comfy_conditioning_with_attention_mask():
    torch.manual_seed(2)
    cond = torch.randn(2, 6, TEXT_DIM)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1]])          # right- and left-padded rows
    ctx = from_comfy_conditioning([[cond, {"attention_mask": mask}]])
    assert ctx.lengths.tolist() == [3, 4]
    assert torch.equal(ctx.embeddings[0, :3], cond[0, :3]) and torch.equal(ctx.embeddings[1, :4], cond[1, 2:])
    assert torch.count_nonzero(ctx.embeddings[0, 3:]) == 0 and torch.count_nonzero(ctx.embeddings[1, 4:]) == 0


def test_from_comfy_conditioning_refuses_bad_inputs():
    with pytest.raises(MoGe4DInputError, match=r"positive: token width 768, expected 4096: conditioning from a non-umT5"):
        from_comfy_conditioning([[torch.randn(1, 77, 768), {}]], name="positive")
    with pytest.raises(MoGe4DInputError, match="ConditioningCombine"):
        from_comfy_conditioning([[torch.randn(1, 5, TEXT_DIM), {}], [torch.randn(1, 5, TEXT_DIM), {}]])
    with pytest.raises(MoGe4DInputError, match="CONDITIONING"):
        from_comfy_conditioning(torch.randn(1, 5, TEXT_DIM))
    with pytest.raises(MoGe4DInputError, match="CONDITIONING"):
        from_comfy_conditioning([])


class _ComfyOutput:
    """Stand-in for comfy.clip_vision.Output: attribute and item access to the same fields."""

    def __getitem__(self, key):
        return getattr(self, key)


def test_from_comfy_clip_vision_output():
    out = _ComfyOutput()
    out.last_hidden_state = torch.randn(1, 257, 1280)
    out.penultimate_hidden_states = torch.randn(1, 257, 1280, dtype=torch.float16)
    out.image_embeds = torch.randn(1, 1024)
    ctx = from_comfy_clip_vision_output(out)
    assert ctx.tokens.dtype == torch.float32
    assert torch.equal(ctx.tokens, out.penultimate_hidden_states.float())
    assert torch.equal(from_comfy_clip_vision_output({"penultimate_hidden_states": out.penultimate_hidden_states}).tokens,
                       ctx.tokens)
    vit_l = _ComfyOutput()
    vit_l.penultimate_hidden_states = torch.randn(1, 257, 1024)
    with pytest.raises(MoGe4DInputError, match=r"clip_vision_output: penultimate_hidden_states of shape \(1, 257, 1024\)"):
        from_comfy_clip_vision_output(vit_l)
    with pytest.raises(MoGe4DInputError, match="no 'penultimate_hidden_states'"):
        from_comfy_clip_vision_output(object())
    with pytest.raises(MoGe4DInputError, match="no CLIP vision output connected"):
        from_comfy_clip_vision_output(None)
