"""Frozen condition encoders of the DiT trainers: umT5 text, CLIP image, OmniMAE motion features.

Each is optional. Without a text encoder the text context is all zeros (the DiT zero-pads to 512 tokens, so
this equals the context of a run whose text rows are all zero; the model then learns no text conditioning);
without CLIP the CLIP context is zeros (what the release's ViSM inference feeds, and close to STraG's constant
gray image). All run under ``no_grad`` in eval mode; their weights never change. On a GPU, umT5 runs in bf16
and CLIP in fp16 (their release precisions), on the CPU in float32; outputs are float32.

Loaders used: :func:`moge4d_core.loading.text.load_text_encoder` + :func:`moge4d_core.models.text.encode_text`,
:func:`moge4d_core.loading.clip.load_clip_vision` + :func:`moge4d_core.models.clip.encode_image`,
:func:`moge4d_core.loading.omnimae.load_omnimae` + :func:`moge4d_core.models.omnimae.extract_motion_features`.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from moge4d_core.errors import MoGe4DInputError

__all__ = ["TextContexts", "ClipContexts", "MotionFeatureExtractor"]


def _aux_dtype(device, gpu_dtype: torch.dtype) -> torch.dtype:
    """Frozen encoders: their native half precision on a GPU (umT5-XXL is 22 GB in float32), float32 on the CPU."""
    return gpu_dtype if torch.device(device).type == "cuda" else torch.float32


def _frozen(module: torch.nn.Module, device) -> torch.nn.Module:
    module = module.to(device).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class TextContexts:
    """Captions -> (B, L, text_dim) umT5 embeddings; ``drop[b]`` True encodes ``""`` instead (the release's
    text dropout). ``source``: a weights path, a ``(model, tokenizer)`` pair, or None (zeros)."""

    def __init__(self, source, tokenizer_dir: Optional[str], text_dim: int, device) -> None:
        self.text_dim, self.device = int(text_dim), device
        self.model = self.tokenizer = None
        if source is None:
            return
        if isinstance(source, (tuple, list)):
            model, tok = source
        else:
            from moge4d_core.loading.text import load_text_encoder

            model, tok = load_text_encoder(source, tokenizer_dir, dtype=_aux_dtype(device, torch.bfloat16), device="cpu")
        width = int(model.config.d_model)
        if width != self.text_dim:
            raise MoGe4DInputError(f"--text-encoder: its width is {width} but the DiT's text_dim is {self.text_dim}; "
                                   f"use the umT5 encoder that belongs to this DiT")
        self.model, self.tokenizer = _frozen(model, device), tok

    @property
    def enabled(self) -> bool:
        return self.model is not None

    @torch.no_grad()
    def __call__(self, captions: Sequence[str], drop: torch.Tensor) -> torch.Tensor:
        b = len(captions)
        if self.model is None:
            return torch.zeros(b, 1, self.text_dim, device=self.device)
        from moge4d_core.models.text import encode_text

        prompts = ["" if bool(d) else str(c) for c, d in zip(captions, drop.tolist())]
        return encode_text(self.model, self.tokenizer, prompts).embeddings.to(self.device)


class ClipContexts:
    """(B,H,W,3) [0,1] images -> (B,257,image_dim) CLIP penultimate tokens; ``source``: a weights path, a
    ``ClipVisionEncoder``, or None (the trainer then passes zeros)."""

    def __init__(self, source, image_dim: Optional[int], device) -> None:
        self.device, self.model = device, None
        if source is None:
            return
        if image_dim is None:
            raise MoGe4DInputError("--clip: this DiT has no CLIP image input (no img_emb); drop --clip")
        if isinstance(source, torch.nn.Module):
            model = source
        else:
            from moge4d_core.loading.clip import load_clip_vision

            model = load_clip_vision(source, dtype=_aux_dtype(device, torch.float16), device="cpu")
        self.model = _frozen(model, device)

    @property
    def enabled(self) -> bool:
        return self.model is not None

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        from moge4d_core.models.clip import encode_image

        return encode_image(self.model, images).tokens.to(self.device)


class MotionFeatureExtractor:
    """Frame-0 RGB (H,W,3) [0,1] -> (196, C) OmniMAE tokens for the MPM. ``source``: a path
    (``vitb_pretrain.torch`` or a STraG file with ``omnimae_extractor.*``), a state dict, an ``OmniMAEEncoder``."""

    def __init__(self, source: Union[str, dict, torch.nn.Module], feature_dim: int, device) -> None:
        if isinstance(source, torch.nn.Module):
            model = source
        else:
            from moge4d_core.loading.omnimae import load_omnimae

            model = load_omnimae(source, dtype=torch.float32, device="cpu")
        width = int(model.patch_embed.weight.shape[0])
        if width != int(feature_dim):
            raise MoGe4DInputError(f"OmniMAE: feature width {width} but the DiT's MPM expects {feature_dim}")
        self.model, self.device = _frozen(model, device), device

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        from moge4d_core.models.omnimae import extract_motion_features

        return torch.stack([extract_motion_features(self.model, img).tokens for img in images]).to(self.device)
