"""DINOv2 ViT/14 encoder of UniDepth, hosted by transformers' :class:`~transformers.Dinov2Model`.

UniDepth's backbone is plain DINOv2 (no registers, LayerScale, GELU MLP x4, block LayerNorm eps 1e-6,
pos-embed grid 37x37 resampled bicubically without antialias). transformers' ``Dinov2Model`` is the same network
(reference ``encoders.md`` §1.7, verified to 0.0 difference) once

* UniDepth's fused ``attn.qkv`` rows ``[q | k | v]`` are split into ``q_proj`` / ``k_proj`` / ``v_proj``,
* the final ``norm`` keeps UniDepth's **eps 1e-5** (``nn.LayerNorm`` default) instead of the blocks' 1e-6, and
* that final norm is applied to *every* tapped block output (``use_norm=True``), the cls token taken after it.

``register_tokens`` (always present as ``(1, 1, C)`` and unused when there are no registers) is dropped;
``mask_token`` is kept (unused at inference). :func:`convert_dinov2_keys` does the renaming.

Outputs of :meth:`DinoV2Encoder.forward` for an input ``(B, 3, H, W)`` with H, W multiples of 14: lists over the
requested 1-based block counts of patch features ``(B, H/14, W/14, C)`` and cls tokens ``(B, 1, C)``.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn as nn

from ...errors import MoGe4DInputError


def dinov2_config(embed_dim: int, depth: int, num_heads: int):
    from transformers import Dinov2Config

    cfg = Dinov2Config(hidden_size=embed_dim, num_hidden_layers=depth, num_attention_heads=num_heads,
                       mlp_ratio=4, image_size=518, patch_size=14, num_channels=3, qkv_bias=True,
                       layerscale_value=1.0, layer_norm_eps=1e-6, use_swiglu_ffn=False, hidden_act="gelu",
                       drop_path_rate=0.0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    cfg._attn_implementation = "sdpa"
    return cfg


class DinoV2Encoder(nn.Module):
    """UniDepth's DINOv2 ViT-S/B/L-14 (module ``model`` is a transformers ``Dinov2Model``)."""

    FINAL_NORM_EPS = 1e-5

    def __init__(self, embed_dim: int, depth: int, num_heads: int) -> None:
        super().__init__()
        from transformers import Dinov2Model

        self.embed_dim, self.depth, self.num_heads = embed_dim, depth, num_heads
        self.model = Dinov2Model(dinov2_config(embed_dim, depth, num_heads))
        self.model.layernorm.eps = self.FINAL_NORM_EPS

    def forward(self, x: torch.Tensor, taps: Sequence[int]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``x (B, 3, H, W)`` normalised image, H and W multiples of 14; ``taps`` 1-based block counts.

        Returns ``(features, cls)``: per tap, ``LN_final(block output)`` split into patches ``(B, H/14, W/14, C)``
        and cls ``(B, 1, C)``.
        """
        b, _, h, w = x.shape
        gh, gw = h // 14, w // 14
        wanted = sorted(set(int(t) for t in taps))
        if wanted and (wanted[0] < 1 or wanted[-1] > self.depth):
            raise ValueError(f"taps must be in 1..{self.depth}, got {list(taps)}")
        hidden = self.model.embeddings(x.to(self.model.embeddings.patch_embeddings.projection.weight.dtype))
        kept: dict[int, torch.Tensor] = {}
        last = wanted[-1] if wanted else 0
        for i, layer in enumerate(self.model.encoder.layer[:last], start=1):
            hidden = layer(hidden)
            if i in wanted:
                kept[i] = self.model.layernorm(hidden)
        feats = [kept[int(t)][:, 1:].reshape(b, gh, gw, -1) for t in taps]
        cls = [kept[int(t)][:, :1] for t in taps]
        return feats, cls


def convert_dinov2_keys(state: Mapping[str, torch.Tensor], src_prefix: str = "pixel_encoder.",
                        dst_prefix: str = "pixel_encoder.model.") -> dict[str, torch.Tensor]:
    """Rename UniDepth DINOv2 keys (under ``src_prefix``) to ``Dinov2Model`` keys (under ``dst_prefix``).

    Keys outside ``src_prefix`` are returned unchanged. Keys already in ``Dinov2Model`` form are kept, so the
    conversion is idempotent. Raises :class:`MoGe4DInputError` for register tokens (n > 1) or a malformed qkv.
    """
    out: dict[str, torch.Tensor] = {}
    simple = {
        "cls_token": "embeddings.cls_token",
        "mask_token": "embeddings.mask_token",
        "pos_embed": "embeddings.position_embeddings",
        "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
        "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
        "norm.weight": "layernorm.weight",
        "norm.bias": "layernorm.bias",
    }
    block_map = {
        "norm1": "norm1", "norm2": "norm2", "attn.proj": "attention.o_proj",
        "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
    }
    for key, value in state.items():
        if not key.startswith(src_prefix) or key.startswith(dst_prefix):
            out[key] = value
            continue
        name = key[len(src_prefix):]
        if name == "register_tokens":
            if value.ndim == 3 and value.shape[1] > 1:
                raise MoGe4DInputError(
                    f"pixel_encoder.register_tokens has {value.shape[1]} register tokens; only DINOv2 without "
                    f"registers (UniDepthV2 / V2old as published) is supported")
            continue
        if name in simple:
            out[dst_prefix + simple[name]] = value
            continue
        parts = name.split(".")
        if parts[0] == "blocks" and len(parts) >= 4 and parts[1].isdigit():
            n = parts[1]
            rest = ".".join(parts[2:])
            base = f"{dst_prefix}encoder.layer.{n}."
            if rest in ("attn.qkv.weight", "attn.qkv.bias"):
                kind = rest.rsplit(".", 1)[1]
                if value.shape[0] % 3:
                    raise MoGe4DInputError(f"{key}: fused qkv with {value.shape[0]} rows is not divisible by 3")
                q, k, v = value.chunk(3, dim=0)
                out[base + f"attention.q_proj.{kind}"] = q
                out[base + f"attention.k_proj.{kind}"] = k
                out[base + f"attention.v_proj.{kind}"] = v
                continue
            if rest in ("ls1.gamma", "ls2.gamma"):
                out[base + f"layer_scale{rest[2]}.lambda1"] = value
                continue
            mod, _, leaf = rest.rpartition(".")
            if mod in block_map:
                out[base + f"{block_map[mod]}.{leaf}"] = value
                continue
        out[key] = value  # unknown: left for the key check to report
    return out
