"""OmniMAE ViT-B/16 image encoder, as MoGe4D's Motion Perception Module uses it (reference ``encoders.md`` §2,
``moge4d_official.md`` A6).

Network (encoder trunk only; the MAE decoder and head are not needed for features):

* input ``(B, 3, 224, 224)`` ImageNet-normalised; the image is repeated to ``T = 2`` frames and embedded by a
  tubelet ``Conv3d(3, C, kernel = stride = (2, 16, 16))`` -> ``(B, C, 1, 14, 14)`` -> 196 tokens (row-major);
* plus the fixed sine-cosine table ``pos_embed (1, 1568, C)`` (a checkpoint buffer laid out as 8 frames x 196;
  an image uses frame 0 = rows 0..195), no CLS token;
* 12 pre-norm ViT blocks (LN eps 1e-6, fused qkv with bias, 12 heads, GELU MLP x4, no LayerScale), final LayerNorm;
* output: the 196 patch tokens ``(B, 196, C)`` after the final norm (MoGe4D's ``forward_patch_features``).

The blocks are transformers' :class:`~transformers.models.vit.modeling_vit.ViTLayer` (``layernorm_before``,
``attention.{q,k,v,o}_proj``, ``layernorm_after``, ``mlp.fc1/fc2``): the same pre-norm block with the same
parameters once the fused ``qkv`` rows ``[q | k | v]`` are split, so the mapping is exact. The tubelet patch
embedding and the frame-0 slice of the sine table have no maintained equivalent with these semantics
(transformers' VideoMAE recomputes its table instead of using the checkpoint buffer, which the released STraG
file stores in bf16, and its attention has no key bias), so those few lines are written here.

Preprocessing (:func:`preprocess`): ``[0, 1]`` RGB -> ImageNet mean/std -> bilinear stretch to 224 x 224
(``align_corners=False``, no antialias, aspect not kept), exactly as MoGe4D does.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import MoGe4DInputError
from ..types import MotionFeatures

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_SIZE = 224
PATCH = 16
TUBELET = 2
GRID = INPUT_SIZE // PATCH           # 14
NUM_POSITIONS = 8 * GRID * GRID      # 1568: the 16-frame video layout of the pretraining config


def sinusoid_table(n_position: int, dim: int) -> torch.Tensor:
    """OmniMAE's fixed table ``(1, n_position, dim)`` float32: ``angle = pos / 10000^(2*(j//2)/dim)``,
    ``sin`` on even ``j``, ``cos`` on odd ``j`` (computed in float64, then cast)."""
    pos = torch.arange(n_position, dtype=torch.float64)[:, None]
    j = torch.arange(dim, dtype=torch.float64)[None, :]
    angle = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)
    table = torch.where(j.long() % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.to(torch.float32).unsqueeze(0)


def _vit_config(dim: int, heads: int, mlp_ratio: int = 4):
    from transformers import ViTConfig

    cfg = ViTConfig(hidden_size=dim, num_attention_heads=heads, intermediate_size=dim * mlp_ratio,
                    hidden_act="gelu", layer_norm_eps=1e-6, qkv_bias=True, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0)
    cfg._attn_implementation = "sdpa"
    return cfg


class OmniMAEEncoder(nn.Module):
    """OmniMAE trunk for images. Keys: ``patch_embed.{weight,bias}`` (Conv3d), ``pos_embed`` (buffer
    ``(1, 1568, C)``), ``blocks.{i}.*`` (ViTLayer), ``norm.{weight,bias}``.

    Args:
        embed_dim: token width ``C`` (768 for ViT-B/16, the MoGe4D checkpoint).
        depth: number of ViT blocks (12).
        num_heads: attention heads (12); must divide ``embed_dim``.
    """

    def __init__(self, embed_dim: int = 768, depth: int = 12, num_heads: int = 12) -> None:
        super().__init__()
        from transformers.models.vit.modeling_vit import ViTLayer

        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} not divisible by num_heads {num_heads}")
        self.embed_dim, self.depth, self.num_heads = embed_dim, depth, num_heads
        self.patch_embed = nn.Conv3d(3, embed_dim, kernel_size=(TUBELET, PATCH, PATCH), stride=(TUBELET, PATCH, PATCH))
        self.register_buffer("pos_embed", sinusoid_table(NUM_POSITIONS, embed_dim), persistent=True)
        cfg = _vit_config(embed_dim, num_heads)
        self.blocks = nn.ModuleList([ViTLayer(cfg) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (B, 3, 224, 224)`` ImageNet-normalised -> tokens ``(B, 196, C)`` after the final LayerNorm.

        Args:
            x: ``(B, 3, 224, 224)`` as :func:`preprocess` returns it (cast to the weights' dtype here).

        Returns:
            the 14x14 patch tokens ``(B, 196, C)``, row-major, in the weights' dtype.
        """
        if x.ndim != 4 or x.shape[1:] != (3, INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"OmniMAEEncoder expects (B, 3, {INPUT_SIZE}, {INPUT_SIZE}), got {tuple(x.shape)}")
        w = self.patch_embed.weight
        video = x.to(w.dtype).unsqueeze(2).repeat(1, 1, TUBELET, 1, 1)       # (B, 3, 2, 224, 224)
        tokens = self.patch_embed(video).flatten(2).transpose(1, 2)          # (B, 196, C)
        tokens = tokens + self.pos_embed[:, : GRID * GRID].to(tokens.dtype)
        for blk in self.blocks:
            tokens = blk(tokens)
        return self.norm(tokens)


def preprocess(image: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` float in [0, 1] -> ``(B, 3, 224, 224)``: ImageNet normalisation, then a bilinear stretch.

    Args:
        image: ``(B, 3, H, W)`` RGB, float in [0, 1], channel-first.

    Returns:
        ``(B, 3, 224, 224)`` ImageNet-normalised, in the dtype and device of ``image`` (aspect not kept).
    """
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    x = (image - mean) / std
    return F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)


def _as_chw(image: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(image, torch.Tensor):
        raise MoGe4DInputError(f"{name}: expected a torch.Tensor (H,W,3), got {type(image).__name__}")
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 3:
        raise MoGe4DInputError(f"{name}: expected one image (H,W,3) channel-last, got shape {tuple(image.shape)}")
    c = image.shape[-1]
    if c != 3:
        hint = {1: "a grey image: repeat it to 3 channels (image.repeat(1, 1, 3))",
                4: "an RGBA image: drop the alpha channel (image[..., :3])"}.get(
            c, "channel-first or not RGB: pass (H,W,3) channel-last")
        raise MoGe4DInputError(f"{name}: expected 3 colour channels last, got shape {tuple(image.shape)}; this is {hint}")
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise MoGe4DInputError(f"{name}: image {image.shape[0]}x{image.shape[1]} is too small; need at least 2x2 "
                               f"pixels (any larger size is stretched to 224x224)")
    if image.dtype == torch.uint8:
        image = image.float() / 255.0
    elif not image.is_floating_point():
        raise MoGe4DInputError(f"{name}: expected float in [0,1] or uint8, got {image.dtype}")
    image = image.float()
    if not bool(torch.isfinite(image).all()):
        raise MoGe4DInputError(f"{name}: contains NaN or inf")
    if float(image.min()) < -1e-3 or float(image.max()) > 1 + 1e-3:
        raise MoGe4DInputError(f"{name}: values must be in [0, 1] (got {float(image.min()):.3g}..{float(image.max()):.3g})")
    return image.permute(2, 0, 1)


@torch.no_grad()
def extract_motion_features(model: OmniMAEEncoder, image: torch.Tensor) -> MotionFeatures:
    """One image ``(H, W, 3)`` float [0, 1] (or uint8) -> :class:`MotionFeatures` with ``tokens (196, C)`` float32
    on the model's device and ``grid (14, 14)``. Any H x W >= 2 x 2 is stretched to 224 x 224 (aspect not kept,
    as in MoGe4D), so images smaller than the 16-px patch grid are simply upsampled.

    Args:
        model: the OmniMAE encoder (:mod:`moge4d_core.loading.omnimae`).
        image: one RGB image ``(H, W, 3)`` channel-last (or ``(1, H, W, 3)``), float in [0, 1] or uint8
            in [0, 255].

    Returns:
        :class:`~moge4d_core.types.MotionFeatures`: ``tokens (196, C)`` float32 (C = 768 for ViT-B), row-major
        14x14 grid, the MPM input of :class:`~moge4d_core.models.wan_dit.STraGDiT`.

    Raises:
        MoGe4DInputError: not a tensor, a batch of more than one image, not 3 channels last, smaller than 2x2,
            a non-float non-uint8 dtype, NaN / inf, or float values outside [0, 1].
    """
    x = _as_chw(image, "image")
    w = model.patch_embed.weight
    work = torch.float64 if w.dtype == torch.float64 else torch.float32  # preprocessing precision
    x = preprocess(x.unsqueeze(0).to(device=w.device, dtype=work))
    tokens = model(x)[0].float()
    return MotionFeatures(tokens=tokens, grid=(GRID, GRID))


__all__ = ["OmniMAEEncoder", "sinusoid_table", "preprocess", "extract_motion_features"]
