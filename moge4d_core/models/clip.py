"""CLIP ViT-H/14 image tower as Wan uses it (transformers ``CLIPVisionModel``, cut after the penultimate block).

Wan2.1 / Wan-Fun embed the conditioning image with the visual tower of open-clip
``xlm-roberta-large-vit-huge-14`` (identical to LAION ``CLIP-ViT-H-14-laion2B-s32B-b79K``) and call it
with ``use_31_block=True``: the output of the first 31 of its 32 blocks, without ``post_norm``, i.e.
``(B, 257, 1280)`` (class token + 16x16 patches). That equals transformers'
``CLIPVisionModel(...).hidden_states[-2]`` and ComfyUI's ``penultimate_hidden_states``.

:class:`ClipVisionEncoder` builds the tower with its last block left out, so the forward pass
returns exactly that tensor as ``last_hidden_state`` (transformers applies ``post_layernorm`` only to
the pooled class token, never to ``last_hidden_state``) and no compute is spent on a block whose
output is thrown away. Architecture: pre-norm ViT, LayerNorm eps 1e-5, exact (erf) GELU, 16 heads,
``pre_layrnorm`` after the position embedding.

Preprocessing follows Wan's ``CLIPModel.visual`` (not ComfyUI's ``clip_preprocess``): the [0, 1]
image is mapped to [-1, 1], stretched to 224x224 with ``F.interpolate(mode="bicubic",
align_corners=False)`` (no antialias, no crop, no clamping), mapped back with ``x * 0.5 + 0.5`` and
normalised with the OpenAI CLIP mean / std. MoGe4D stage 1 feeds a uniform grey image (127/255).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MoGe4DInputError
from .conditioning import ImageContext

CLIP_VIT_H14 = dict(
    hidden_size=1280, intermediate_size=5120, num_attention_heads=16, num_hidden_layers=32,
    image_size=224, patch_size=14, num_channels=3, hidden_act="gelu", layer_norm_eps=1e-5,
    projection_dim=1024,
)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
GRAY_VALUE = 127.0 / 255.0   # MoGe4D stage 1 conditions on a uniform (127, 127, 127) image

__all__ = ["CLIP_VIT_H14", "CLIP_MEAN", "CLIP_STD", "GRAY_VALUE", "clip_vision_config", "ClipVisionEncoder",
           "preprocess_image", "encode_image"]


def clip_vision_config(**overrides):
    """transformers ``CLIPVisionConfig`` of the full ViT-H/14 tower (32 blocks), with ``overrides``."""
    from transformers import CLIPVisionConfig

    kw = dict(CLIP_VIT_H14)
    kw.update(overrides)
    return CLIPVisionConfig(**kw)


class ClipVisionEncoder(nn.Module):
    """The CLIP image tower up to its penultimate block.

    config: the *full* tower's ``CLIPVisionConfig`` (``num_hidden_layers`` = blocks in the checkpoint);
    ``self.vision`` is a transformers ``CLIPVisionModel`` holding all but the last block.
    forward: pixel_values (B, 3, S, S) normalised -> (B, (S/patch)^2 + 1, hidden) penultimate tokens.

    Raises:
        MoGe4DInputError: ``config`` has fewer than 2 blocks (no penultimate block).
    """

    def __init__(self, config):
        super().__init__()
        from transformers import CLIPVisionModel

        if config.num_hidden_layers < 2:
            raise MoGe4DInputError(f"CLIP tower with {config.num_hidden_layers} block(s) has no penultimate block")
        self.config = config
        cut = copy.deepcopy(config)
        cut.num_hidden_layers = config.num_hidden_layers - 1
        self.vision = CLIPVisionModel(cut)

    @property
    def image_size(self) -> int:
        """Input side ``S`` in pixels (224 for ViT-H/14)."""
        return int(self.config.image_size)

    def state_key(self, hf_name: str) -> str:
        """Our parameter name for a checkpoint name in transformers' ``vision_model.*`` layout."""
        if hasattr(self.vision, "vision_model"):       # transformers 4.x wraps a CLIPVisionTransformer
            return "vision." + hf_name
        return "vision." + hf_name[len("vision_model."):]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Penultimate-block tokens of normalised images.

        Args:
            pixel_values: ``(B, 3, S, S)`` as :func:`preprocess_image` returns, in the weights' dtype.

        Returns:
            ``(B, (S/patch)^2 + 1, hidden)``, class token first: ``(B, 257, 1280)`` for ViT-H/14 at 224 px.
        """
        return self.vision(pixel_values=pixel_values).last_hidden_state


def preprocess_image(image: torch.Tensor, size: int = 224) -> torch.Tensor:
    """Wan CLIP preprocessing: image (B, H, W, 3) or (H, W, 3) float in [0, 1] -> (B, 3, size, size) float32 normalised.

    Args:
        image: RGB ``(B, H, W, 3)`` or ``(H, W, 3)`` channel-last, float in [0, 1].
        size: output side in pixels (the tower's ``image_size``, 224).

    Returns:
        ``(B, 3, size, size)`` float32 on ``image``'s device, bicubic stretch (aspect not kept), OpenAI CLIP
        mean / std normalised.

    Raises:
        MoGe4DInputError: not a channel-last RGB tensor, or values outside [0, 1].
    """
    if not isinstance(image, torch.Tensor) or image.ndim not in (3, 4) or image.shape[-1] != 3:
        got = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise MoGe4DInputError(f"image: expected (B, H, W, 3) RGB in [0, 1] (channel-last), got {got}")
    if image.ndim == 3:
        image = image.unsqueeze(0)
    x = image.float()
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise MoGe4DInputError(f"image: values must lie in [0, 1], got range [{lo:.3g}, {hi:.3g}]")
    x = x.permute(0, 3, 1, 2) * 2 - 1                                   # Wan works on [-1, 1]
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
    x = x * 0.5 + 0.5
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()   # not inference_mode: training code may save these outputs for backward
def encode_image(model: ClipVisionEncoder, image: torch.Tensor) -> ImageContext:
    """image (B, H, W, 3) in [0, 1] -> :class:`ImageContext` (B, 257, 1280) float32 on the model's device.

    Args:
        model: a :class:`ClipVisionEncoder` (from :func:`moge4d_core.loading.clip.load_clip_vision`).
        image: RGB ``(B, H, W, 3)`` or ``(H, W, 3)`` channel-last, float in [0, 1] (MoGe4D stage 1: uniform
            :data:`GRAY_VALUE`).

    Returns:
        :class:`~moge4d_core.models.conditioning.ImageContext` with ``tokens (B, 257, 1280)`` float32 (ViT-H/14).

    Raises:
        MoGe4DInputError: ``model`` is not a :class:`ClipVisionEncoder`, or ``image`` is refused by
            :func:`preprocess_image`.
    """
    if not isinstance(model, ClipVisionEncoder):
        raise MoGe4DInputError(f"model: expected a ClipVisionEncoder from load_clip_vision, got {type(model).__name__}")
    p = next(model.parameters())
    pixels = preprocess_image(image.to(p.device), size=model.image_size).to(p.dtype)
    return ImageContext(model(pixels).float())
