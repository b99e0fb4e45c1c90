"""Load OmniMAE ViT-B weights for the Motion Perception Module (reference ``encoders.md`` §2.2, A6).

Sources:

* ``vitb_pretrain.torch`` (the published MAE pretraining checkpoint): a flat ``{trunk.*, head.*}`` state dict read
  with ``torch.load(weights_only=True)`` (:func:`moge4d_core.loading.common.load_file_state_dict`), so a pickle
  that would run code is refused, as is anything that is not a dict of tensors;
* a 4D-STraG checkpoint (``diffusion_pytorch_model.safetensors``, single file or sharded index) that carries the
  sub-dict ``omnimae_extractor.*``: only those tensors are read from disk (the file is ~30 GB);
* an in-memory state dict, with keys ``trunk.*`` (prefix already stripped) or ``omnimae_extractor.trunk.*``.

Which one to use: the released MPM (``feature_adapter`` + ``spatial_guidance_*``) was trained on the
``omnimae_extractor`` weights saved inside STraG, and MoGe4D's ``init_weights()`` had re-initialised every
``nn.Linear`` of that extractor after loading ``vitb_pretrain.torch`` (reference A6). So with a STraG file that
holds ``omnimae_extractor.*``, load from it to reproduce the trained behaviour; ``vitb_pretrain.torch`` gives the
genuine OmniMAE features (what the paper describes).

Only the encoder keys are used: ``trunk.{pos_embed, patch_embed.proj.1.*, blocks.*, norm.*}``; ``trunk.mask_token``,
``trunk.decoder.*`` and ``head.*`` are accepted and ignored.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Mapping, Optional, Union

import torch

from ..errors import MoGe4DInputError
from ..models.omnimae import NUM_POSITIONS, OmniMAEEncoder
from .common import LoadInfo, check_finite, check_keys, find_weights, load_file_state_dict, with_load_info

STRAG_PREFIX = "omnimae_extractor."
IGNORED_PREFIXES = ("trunk.mask_token", "trunk.decoder.", "head.")


def _read_prefixed_safetensors(files: list[Path], prefix: str) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    out: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as h:
                for k in h.keys():
                    if k.startswith(prefix):
                        out[k] = h.get_tensor(k)
        except Exception as exc:
            raise MoGe4DInputError(f"{f}: not a readable safetensors file ({exc})") from None
        check_finite({k: v for k, v in out.items()}, f)
    return out


def read_omnimae_state(path: Union[str, os.PathLike]) -> tuple[str, dict[str, torch.Tensor]]:
    """The OmniMAE tensors of a file or folder as stored, unconverted -> ``(label, state)``.

    ``vitb_pretrain.torch`` / a plain state dict: its own keys; a STraG checkpoint (file or sharded index):
    its ``omnimae_extractor.*`` tensors with that prefix removed. ``label`` names the file read (for errors).
    """
    path = Path(path)
    weights = find_weights(path)
    label = str(weights)
    if weights.name.endswith(".safetensors.index.json"):
        try:
            wmap = json.loads(weights.read_text())["weight_map"]
        except Exception as exc:
            raise MoGe4DInputError(f"{weights}: not a valid sharded-checkpoint index ({exc})") from None
        shards = sorted({weights.parent / s for k, s in wmap.items() if k.startswith(STRAG_PREFIX)})
        if not shards:
            raise MoGe4DInputError(f"{weights}: no 'omnimae_extractor.*' keys in this checkpoint; the Motion "
                                   f"Perception Module weights are absent. Load vitb_pretrain.torch instead.")
        return label, _read_prefixed_safetensors(shards, STRAG_PREFIX)
    if weights.suffix in (".safetensors", ".sft"):
        state = _read_prefixed_safetensors([weights], STRAG_PREFIX)
        if not state:  # a plain OmniMAE state dict saved as safetensors
            state = load_file_state_dict(weights)
        return label, state
    return label, load_file_state_dict(weights)


def _to_trunk(state: Mapping[str, torch.Tensor], label: str) -> dict[str, torch.Tensor]:
    keys = list(state)
    if any(k.startswith(STRAG_PREFIX) for k in keys):
        state = {k[len(STRAG_PREFIX):]: v for k, v in state.items() if k.startswith(STRAG_PREFIX)}
    elif keys and all(k.startswith("module.") for k in keys):
        state = {k[len("module."):]: v for k, v in state.items()}
    if not any(k.startswith("trunk.") for k in state):
        hint = ""
        if any(k.startswith(("blocks.", "patch_embedding", "head.")) for k in keys) or any(".blocks." in k for k in keys[:50]):
            hint = (" A 4D-STraG checkpoint without 'omnimae_extractor.*' keys has no MPM weights; "
                    "use vitb_pretrain.torch.")
        raise MoGe4DInputError(f"{label}: not an OmniMAE checkpoint: no 'trunk.*' or 'omnimae_extractor.trunk.*' "
                               f"keys (found {len(keys)} keys, e.g. {keys[:5]}).{hint}")
    return dict(state)


def _convert(state: Mapping[str, torch.Tensor], label: str) -> dict[str, torch.Tensor]:
    """``trunk.*`` published names -> :class:`OmniMAEEncoder` names (fused qkv split into q/k/v)."""
    out: dict[str, torch.Tensor] = {}
    rx = re.compile(r"trunk\.blocks\.(\d+)\.(.+)$")
    block_map = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.o_proj",
                 "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
    for key, v in state.items():
        if key.startswith(IGNORED_PREFIXES):
            continue
        if key == "trunk.pos_embed":
            out["pos_embed"] = v
        elif key.startswith("trunk.patch_embed.proj.1."):
            out["patch_embed." + key.rsplit(".", 1)[1]] = v
        elif key in ("trunk.norm.weight", "trunk.norm.bias"):
            out["norm." + key.rsplit(".", 1)[1]] = v
        elif (m := rx.match(key)) is not None:
            n, rest = m.groups()
            mod, _, leaf = rest.rpartition(".")
            if mod == "attn.qkv":
                if v.shape[0] % 3:
                    raise MoGe4DInputError(f"{label}: {key} has {v.shape[0]} rows, not divisible by 3")
                for part, t in zip("qkv", v.chunk(3, dim=0)):
                    out[f"blocks.{n}.attention.{part}_proj.{leaf}"] = t
            elif mod in block_map:
                out[f"blocks.{n}.{block_map[mod]}.{leaf}"] = v
            else:
                out[key] = v  # reported as unexpected by the key check
        else:
            out[key] = v  # reported as unexpected by the key check
    return out


def load_omnimae(source: Union[str, os.PathLike, Mapping[str, torch.Tensor]], *, dtype: torch.dtype = torch.float32,
                 device: Union[str, torch.device] = "cpu", num_heads: Optional[int] = None) -> OmniMAEEncoder:
    """Load the OmniMAE encoder trunk -> :class:`OmniMAEEncoder` in eval mode without grads.

    ``source``: ``vitb_pretrain.torch``, a STraG safetensors file / index / folder holding ``omnimae_extractor.*``,
    or a state dict (``trunk.*`` or ``omnimae_extractor.trunk.*``). Width and depth come from the tensors;
    ``num_heads`` defaults to ``embed_dim // 64`` (12 for ViT-B). ``model.load_info`` names the source
    (``format``: ``4D-STraG omnimae_extractor.*`` or ``OmniMAE trunk.*``) and the ignored tensors (decoder, head).
    """
    if isinstance(source, Mapping):
        label, raw = "state dict", dict(source)
        if not all(isinstance(v, torch.Tensor) for v in raw.values()):
            raise MoGe4DInputError("state dict: OmniMAE weights must be a mapping of names to tensors")
    else:
        label, raw = read_omnimae_state(source)
    fmt = "4D-STraG omnimae_extractor.*" if any(k.startswith(STRAG_PREFIX) for k in raw) else "OmniMAE trunk.*"
    trunk = _to_trunk(raw, label)
    ignored = sorted(k for k in trunk if k.startswith(IGNORED_PREFIXES))
    state = _convert(trunk, label)
    w = state.get("patch_embed.weight")
    if w is None or w.ndim != 5 or tuple(w.shape[1:]) != (3, 2, 16, 16):
        raise MoGe4DInputError(f"{label}: 'trunk.patch_embed.proj.1.weight' missing or not a (C,3,2,16,16) tubelet "
                               f"kernel (found {None if w is None else tuple(w.shape)}); expected OmniMAE ViT/16")
    dim = int(w.shape[0])
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    heads = int(num_heads) if num_heads else dim // 64
    if heads < 1 or dim % heads:
        raise MoGe4DInputError(f"{label}: cannot split width {dim} into heads; pass num_heads explicitly")
    with torch.device("meta"):
        model = OmniMAEEncoder(dim, depth, heads)
    expected = model.state_dict()
    check_keys(label, f"OmniMAE ViT ({dim}x{depth})", expected.keys(), state.keys())
    bad = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}" for k, v in expected.items()
           if tuple(state[k].shape) != tuple(v.shape)]
    if bad:
        raise MoGe4DInputError(f"{label}: {len(bad)} OmniMAE tensors have the wrong shape, first: {bad[:5]}")
    if tuple(state["pos_embed"].shape) != (1, NUM_POSITIONS, dim):
        raise MoGe4DInputError(f"{label}: trunk.pos_embed should be (1, {NUM_POSITIONS}, {dim})")
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=True, assign=True)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return with_load_info(model, LoadInfo(file=label, format=fmt, dtype=dtype, ignored_keys=ignored))


__all__ = ["load_omnimae", "read_omnimae_state"]
