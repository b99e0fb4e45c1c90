"""Load the CLIP ViT-H/14 image tower (Wan's CLIP) from the files users have.

Accepted layouts (detected from key names; any common prefix tolerated; other towers ignored):

* ``wan``: Wan's ``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`` (whole ``XLMRobertaCLIP``):
  ``visual.patch_embedding.weight``, ``visual.cls_embedding (1,1,D)``, ``visual.pos_embedding (1,257,D)``,
  ``visual.{pre_norm,post_norm}.*``, ``visual.head``, ``visual.transformer.N.{norm1,norm2}.*``,
  ``visual.transformer.N.attn.to_qkv.* ([q|k|v] rows)``, ``visual.transformer.N.attn.proj.*``,
  ``visual.transformer.N.mlp.{0,2}.*``; ``textual.*`` and ``log_scale`` are ignored.
* ``hf``: transformers ``CLIPVisionModelWithProjection`` names, which ComfyUI's ``clip_vision_h.safetensors``
  uses: ``vision_model.embeddings.{class_embedding, patch_embedding.weight, position_embedding.weight}``,
  ``vision_model.pre_layrnorm.*``, ``vision_model.encoder.layers.N.{self_attn.{q,k,v,out}_proj, layer_norm1,
  mlp.fc1, mlp.fc2, layer_norm2}.*``, ``vision_model.post_layernorm.*``; ``visual_projection`` and text keys ignored.
* ``open_clip``: ``visual.conv1.weight``, ``visual.class_embedding (D,)``, ``visual.positional_embedding (257,D)``,
  ``visual.ln_pre/ln_post``, ``visual.proj``, ``visual.transformer.resblocks.N.{ln_1, attn.in_proj_weight/bias,
  attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}``.

Everything is mapped to transformers' ``vision_model.*`` names (fused ``[q|k|v]`` projections are cut
in thirds), the last block and the projection are dropped (only the penultimate output is used),
and :class:`~moge4d_core.models.clip.ClipVisionEncoder` is built on the meta device and assigned.
Sizes come from the tensors; the head count, which no tensor shows, is 16 for ViT-H (width 1280)
and can be given with ``num_heads`` for other widths.
"""
from __future__ import annotations

import math
import os
import re
from typing import Mapping, Optional

import torch

from ..errors import MoGe4DInputError
from ..models.clip import ClipVisionEncoder, clip_vision_config
from .common import LoadInfo, find_weights, load_file_state_dict, with_load_info
from .text import build_with_weights, find_prefix

__all__ = ["detect_clip_format", "convert_clip_state_dict", "load_clip_vision"]

ARCH = "CLIP ViT-H/14 image tower"
_KNOWN_HEADS = {1280: 16, 1024: 16, 1664: 16, 768: 12}   # open-clip ViT-H, ViT-L, ViT-bigG, ViT-B


def detect_clip_format(state: Mapping[str, torch.Tensor]) -> tuple[str, str]:
    """``("wan" | "hf" | "open_clip", prefix)``; for wan / open_clip the prefix ends at the visual tower."""
    keys = list(state.keys())
    p = find_prefix(keys, "transformer.0.attn.to_qkv.weight", companion="patch_embedding.weight")
    if p is not None:
        return "wan", p
    p = find_prefix(keys, "vision_model.encoder.layers.0.self_attn.q_proj.weight")
    if p is not None:
        return "hf", p
    p = find_prefix(keys, "transformer.resblocks.0.attn.in_proj_weight", companion="conv1.weight")
    if p is not None:
        return "open_clip", p
    raise MoGe4DInputError(
        "does not look like a CLIP vision tower: found none of 'visual.transformer.0.attn.to_qkv.weight' (Wan "
        "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth), 'vision_model.encoder.layers.0.self_attn.q_proj."
        f"weight' (clip_vision_h.safetensors), 'visual.transformer.resblocks.0.attn.in_proj_weight' (open_clip). "
        f"First keys: {sorted(keys)[:5]}")


_V = "vision_model."
_L = "vision_model.encoder.layers."

_WAN_TOP = {
    "patch_embedding.weight": _V + "embeddings.patch_embedding.weight",
    "pre_norm.weight": _V + "pre_layrnorm.weight", "pre_norm.bias": _V + "pre_layrnorm.bias",
    "post_norm.weight": _V + "post_layernorm.weight", "post_norm.bias": _V + "post_layernorm.bias",
}
_WAN_BLOCK = {
    "norm1": "layer_norm1", "norm2": "layer_norm2", "attn.proj": "self_attn.out_proj",
    "mlp.0": "mlp.fc1", "mlp.2": "mlp.fc2",
}
_OC_TOP = {
    "conv1.weight": _V + "embeddings.patch_embedding.weight",
    "class_embedding": _V + "embeddings.class_embedding",
    "positional_embedding": _V + "embeddings.position_embedding.weight",
    "ln_pre.weight": _V + "pre_layrnorm.weight", "ln_pre.bias": _V + "pre_layrnorm.bias",
    "ln_post.weight": _V + "post_layernorm.weight", "ln_post.bias": _V + "post_layernorm.bias",
}
_OC_BLOCK = {
    "ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
}


def _split_qkv(out: dict, layer: str, kind: str, t: torch.Tensor) -> None:
    q, k, v = t.chunk(3, dim=0)
    for name, part in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
        out[f"{_L}{layer}.self_attn.{name}.{kind}"] = part


def _block_map(out: dict, layer: str, rest: str, t: torch.Tensor, table: dict, raw: str) -> None:
    mod, _, kind = rest.rpartition(".")
    if mod in table:
        out[f"{_L}{layer}.{table[mod]}.{kind}"] = t
    else:
        out[f"<unmapped>.{raw}"] = t


def _from_wan(state: dict) -> dict:
    out = {}
    for k, t in state.items():
        m = re.match(r"^transformer\.(\d+)\.(.+)$", k)
        if k in _WAN_TOP:
            out[_WAN_TOP[k]] = t
        elif k == "cls_embedding":
            out[_V + "embeddings.class_embedding"] = t.reshape(-1)
        elif k == "pos_embedding":
            out[_V + "embeddings.position_embedding.weight"] = t.reshape(-1, t.shape[-1])
        elif k == "head":
            continue                                        # projection to the joint space: unused
        elif m and m.group(2) in ("attn.to_qkv.weight", "attn.to_qkv.bias"):
            _split_qkv(out, m.group(1), m.group(2).rpartition(".")[2], t)
        elif m:
            _block_map(out, m.group(1), m.group(2), t, _WAN_BLOCK, k)
        else:
            out[f"<unmapped>.{k}"] = t
    return out


def _from_open_clip(state: dict) -> dict:
    out = {}
    for k, t in state.items():
        m = re.match(r"^transformer\.resblocks\.(\d+)\.(.+)$", k)
        if k in _OC_TOP:
            out[_OC_TOP[k]] = t
        elif k == "proj":
            continue
        elif m and m.group(2) in ("attn.in_proj_weight", "attn.in_proj_bias"):
            _split_qkv(out, m.group(1), "weight" if m.group(2).endswith("weight") else "bias", t)
        elif m:
            _block_map(out, m.group(1), m.group(2), t, _OC_BLOCK, k)
        else:
            out[f"<unmapped>.{k}"] = t
    return out


def convert_clip_state_dict(state: dict, file="<state dict>") -> tuple[dict, str]:
    """Any accepted layout -> transformers ``vision_model.*`` names (full tower, projection dropped). Consumes ``state``."""
    try:
        fmt, prefix = detect_clip_format(state)
    except MoGe4DInputError as exc:
        raise MoGe4DInputError(f"{file}: {exc}") from None
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    state.clear()
    if fmt == "wan":
        return _from_wan(sub), fmt
    if fmt == "open_clip":
        return _from_open_clip(sub), fmt
    out = {k: v for k, v in sub.items() if k.startswith(_V) and k != _V + "embeddings.position_ids"}
    return out, fmt


def _infer_config(state: Mapping[str, torch.Tensor], file, fmt: str, num_heads: Optional[int]):
    need = [_V + "embeddings.class_embedding", _V + "embeddings.patch_embedding.weight",
            _V + "embeddings.position_embedding.weight", _L + "0.mlp.fc1.weight"]
    missing = [k for k in need if k not in state]
    if missing:
        raise MoGe4DInputError(f"{file} (detected format {fmt}): cannot read the tower size; missing keys {missing}")
    width = state[need[0]].numel()
    patch = state[need[1]]
    positions = state[need[2]].shape[0]
    grid = math.isqrt(positions - 1)
    if grid * grid != positions - 1:
        raise MoGe4DInputError(f"{file}: position embedding has {positions} rows; expected 1 + a square number")
    layers = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"vision_model\.encoder\.layers\.(\d+)\.", k)))
    heads = num_heads or _KNOWN_HEADS.get(width)
    if heads is None or width % heads:
        raise MoGe4DInputError(
            f"{file}: CLIP tower of width {width} is not ViT-H/14 (width 1280) and its head count is unknown; "
            f"Wan needs clip_vision_h.safetensors or models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth")
    return clip_vision_config(hidden_size=int(width), intermediate_size=int(state[need[3]].shape[0]),
                              num_attention_heads=int(heads), num_hidden_layers=int(layers),
                              image_size=int(grid * patch.shape[-1]), patch_size=int(patch.shape[-1]),
                              num_channels=int(patch.shape[1]))


def load_clip_vision(path: str | os.PathLike, *, dtype: torch.dtype = torch.float16, device="cpu",
                     num_heads: Optional[int] = None) -> ClipVisionEncoder:
    """Load a CLIP image tower -> :class:`ClipVisionEncoder` (penultimate-block output) in eval mode on device/dtype.

    path: Wan ``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth``, ComfyUI ``clip_vision_h.safetensors``,
    an open_clip ViT-H/14 file, or a folder holding one. num_heads: only for towers other than ViT-H.
    ``model.load_info``: the file, the detected format, and the last block's tensors as ``ignored_keys``.
    """
    file = find_weights(path)
    state, fmt = convert_clip_state_dict(load_file_state_dict(file), file)
    config = _infer_config(state, file, fmt, num_heads)
    last = f"{_L}{config.num_hidden_layers - 1}."
    ignored = sorted(k for k in state if k.startswith(last))             # last block: output unused
    state = {k: v for k, v in state.items() if not k.startswith(last)}
    arch = f"{ARCH} (detected format {fmt})"
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        probe = ClipVisionEncoder(config)           # meta: only to learn transformers' parameter naming
    state = {(probe.state_key(k) if k.startswith(_V) else k): v for k, v in state.items()}
    del probe
    model = build_with_weights(lambda: ClipVisionEncoder(config), state, file, arch, dtype=dtype, device=device)
    return with_load_info(model, LoadInfo(file=str(file), format=fmt, dtype=dtype, ignored_keys=ignored))
