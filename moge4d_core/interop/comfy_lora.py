"""The 4D-ViSM LoRA for ComfyUI's own LoRA patching of a native Wan ``MODEL``, without importing ComfyUI.

The release stores its LoRA with kohya keys whose prefix has a double underscore (``lora_unet__blocks_0_…``);
ComfyUI v0.21's Wan key map knows the single-underscore form (``lora_unet_blocks_0_…``) and renames the double one
only when the file holds ``lora_unet__blocks_0_cross_attn_k``; otherwise it patches nothing and only logs warnings.
:func:`comfy_kohya_state` renames every module; :func:`check_lora_fits` refuses a LoRA any of whose modules finds no
layer, or a layer of another shape, naming them (ComfyUI would skip them silently).
"""
from __future__ import annotations

from typing import Mapping

import torch

from ..errors import MoGe4DInputError

__all__ = ["KOHYA_DOUBLE", "comfy_kohya_state", "check_lora_fits"]

KOHYA_DOUBLE = "lora_unet__"
_ELEMENTS = (".lora_down.weight", ".lora_up.weight", ".alpha")


def comfy_kohya_state(state: Mapping[str, torch.Tensor], source: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Rename a kohya LoRA's modules to ComfyUI's single-underscore prefix.

    Args:
        state: the LoRA file's tensors.
        source: the file, for the message.

    Returns:
        ``(renamed state, {stem as stored: stem as ComfyUI names it})``.

    Raises:
        MoGe4DInputError: the file holds no kohya LoRA module.
    """
    stems: dict[str, str] = {}
    for key in state:
        for el in _ELEMENTS:
            if key.endswith(el):
                stem = key[: -len(el)]
                stems[stem] = ("lora_unet_" + stem[len(KOHYA_DOUBLE):]) if stem.startswith(KOHYA_DOUBLE) else stem
    if not stems:
        raise MoGe4DInputError(f"lora: {source} holds no kohya LoRA modules (keys '<name>.lora_down.weight' / "
                               f"'.lora_up.weight'); first keys: {sorted(state)[:5]}")
    renamed = {}
    for key, value in state.items():
        for stem, new in stems.items():
            if key.startswith(stem + "."):
                key = new + key[len(stem):]
                break
        renamed[key] = value
    return renamed, stems


def check_lora_fits(renamed: Mapping[str, torch.Tensor], stems: Mapping[str, str], key_map: Mapping[str, str],
                    model_state: Mapping[str, torch.Tensor], source: str) -> None:
    """Every LoRA module must find a layer of ComfyUI's key map, of the LoRA delta's shape.

    Args:
        renamed, stems: from :func:`comfy_kohya_state`.
        key_map: ComfyUI's ``{lora key: model weight key}`` for the MODEL (``comfy.lora.model_lora_keys_unet``).
        model_state: the MODEL's state dict (shapes only are read).
        source: the file, for the message.

    Raises:
        MoGe4DInputError: naming the first modules that find no layer and the first shape mismatches.
    """
    unmatched = sorted(s for s, new in stems.items() if new not in key_map)
    bad_shape = []
    for stem, new in stems.items():
        target = key_map.get(new)
        down, up = renamed.get(new + ".lora_down.weight"), renamed.get(new + ".lora_up.weight")
        if target in model_state and down is not None and up is not None:
            w = model_state[target]
            if tuple(w.shape[:2]) != (int(up.shape[0]), int(down.shape[1])):
                bad_shape.append(f"{stem}: delta ({int(up.shape[0])},{int(down.shape[1])}) vs weight {tuple(w.shape)}")
    if len(unmatched) == len(stems):
        raise MoGe4DInputError(f"lora: none of the {len(stems)} LoRA modules of {source} matches a layer of this "
                               f"MODEL (first: {unmatched[:3]}); it is not a LoRA for a Wan2.1 DiT")
    if unmatched or bad_shape:
        raise MoGe4DInputError(
            f"lora: {len(unmatched)} of {len(stems)} LoRA modules find no layer in this MODEL"
            f"{' (first: ' + ', '.join(unmatched[:5]) + ')' if unmatched else ''}"
            f"{'; shape mismatches: ' + '; '.join(bad_shape[:3]) if bad_shape else ''}. The 4D-ViSM LoRA belongs "
            f"to Wan2.1-Fun-V1.1-14B-InP (I2V layout with CLIP image projections); load that model in UNETLoader.")
