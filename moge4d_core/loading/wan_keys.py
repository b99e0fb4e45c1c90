"""Wan2.1 DiT parameter / module names: original Wan (and VideoX-Fun, MoGe4D, ComfyUI) <-> diffusers.

The released MoGe4D checkpoints, the VideoX-Fun base models and ComfyUI's repackaged files all use the
*original* Wan names (``blocks.3.self_attn.q.weight``); our modules are built on diffusers'
``WanTransformer3DModel`` and use its names (``blocks.3.attn1.to_q.weight``). This module maps one to
the other, name by name. It works for parameter names and for module paths alike, so LoRA module names
(``blocks.3.ffn.0``) map to modules of our model (``blocks.3.ffn.net.0.proj``).

The table follows diffusers' ``convert_wan_transformer_to_diffusers`` (``loaders/single_file_utils.py``)
and Wan2.1 ``wan/modules/model.py``. It is written here as a component-wise table instead of calling
diffusers' converter because that converter works on whole state dicts by substring replacement (it
cannot map a single module name, nor run backwards) and knows nothing of MoGe4D's extra modules.

Original -> diffusers (``N`` = block index):

=====================================  ===================================================
original                               diffusers (ours)
=====================================  ===================================================
patch_embedding                        patch_embedding
text_embedding.0 / .2                  condition_embedder.text_embedder.linear_1 / linear_2
time_embedding.0 / .2                  condition_embedder.time_embedder.linear_1 / linear_2
time_projection.1                      condition_embedder.time_proj
img_emb.proj.0 / .1 / .3 / .4          condition_embedder.image_embedder.norm1 / ff.net.0.proj /
                                       ff.net.2 / norm2
img_emb.emb_pos                        condition_embedder.image_embedder.pos_embed
head.head                              proj_out
head.modulation                        scale_shift_table
blocks.N.modulation                    blocks.N.scale_shift_table
blocks.N.self_attn.{q,k,v}             blocks.N.attn1.to_{q,k,v}
blocks.N.self_attn.o                   blocks.N.attn1.to_out.0
blocks.N.self_attn.norm_{q,k}          blocks.N.attn1.norm_{q,k}
blocks.N.cross_attn.{q,k,v,o,norm_q,norm_k}   blocks.N.attn2.(same as self_attn)
blocks.N.cross_attn.k_img / v_img      blocks.N.attn2.add_k_proj / add_v_proj
blocks.N.cross_attn.norm_k_img         blocks.N.attn2.norm_added_k
blocks.N.norm3 (cross-attn LayerNorm)  blocks.N.norm2          (the two names are swapped)
blocks.N.ffn.0 / ffn.2                 blocks.N.ffn.net.0.proj / ffn.net.2
=====================================  ===================================================

Names that are the same in both layouts (MoGe4D additions): ``ref_conv``, ``feature_adapter.{0,2}``,
``blocks.N.spatial_guidance_{self,ffn}.{gate, spatial_guide.1}``.

Parameters that exist in neither state dict: the non-affine LayerNorms (original ``norm1``/``norm2``,
``head.norm``; diffusers ``norm1``/``norm3``/``norm_out``) and the RoPE tables.
"""
from __future__ import annotations

import re
from typing import Iterable, Mapping, Optional

__all__ = [
    "original_to_diffusers",
    "diffusers_to_original",
    "convert_state_dict",
    "is_original_layout",
    "original_parameter_names",
    "original_linear_module_names",
]

# Top-level module paths (outside ``blocks``). Values are the diffusers paths.
_TOP_O2D: dict[str, str] = {
    "patch_embedding": "patch_embedding",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "img_emb.proj.0": "condition_embedder.image_embedder.norm1",
    "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj",
    "img_emb.proj.3": "condition_embedder.image_embedder.ff.net.2",
    "img_emb.proj.4": "condition_embedder.image_embedder.norm2",
    "img_emb.emb_pos": "condition_embedder.image_embedder.pos_embed",
    "head.head": "proj_out",
    "head.modulation": "scale_shift_table",
    # MoGe4D / VideoX-Fun additions, same name in both layouts
    "ref_conv": "ref_conv",
    "feature_adapter.0": "feature_adapter.0",
    "feature_adapter.2": "feature_adapter.2",
}

# Paths inside ``blocks.N.``.
_BLOCK_O2D: dict[str, str] = {
    "modulation": "scale_shift_table",
    "norm3": "norm2",
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
    "cross_attn.k_img": "attn2.add_k_proj",
    "cross_attn.v_img": "attn2.add_v_proj",
    "cross_attn.norm_k_img": "attn2.norm_added_k",
}
for _orig, _diff in (("self_attn", "attn1"), ("cross_attn", "attn2")):
    for _p in ("q", "k", "v"):
        _BLOCK_O2D[f"{_orig}.{_p}"] = f"{_diff}.to_{_p}"
    _BLOCK_O2D[f"{_orig}.o"] = f"{_diff}.to_out.0"
    _BLOCK_O2D[f"{_orig}.norm_q"] = f"{_diff}.norm_q"
    _BLOCK_O2D[f"{_orig}.norm_k"] = f"{_diff}.norm_k"
for _g in ("spatial_guidance_self", "spatial_guidance_ffn"):
    _BLOCK_O2D[f"{_g}.gate"] = f"{_g}.gate"
    _BLOCK_O2D[f"{_g}.spatial_guide.1"] = f"{_g}.spatial_guide.1"

_TOP_D2O = {v: k for k, v in _TOP_O2D.items()}
_BLOCK_D2O = {v: k for k, v in _BLOCK_O2D.items()}

_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")
_LEAVES = ("weight", "bias")


def _map(key: str, top: Mapping[str, str], block: Mapping[str, str], strict: bool, direction: str) -> str:
    m = _BLOCK_RE.match(key)
    if m:
        idx, rest = m.group(1), m.group(2)
        table, prefix = block, f"blocks.{idx}."
    else:
        rest, table, prefix = key, top, ""
    if rest in table:  # a whole module path or a bare parameter (``modulation``, ``gate``)
        return prefix + table[rest]
    head, _, leaf = rest.rpartition(".")
    if leaf in _LEAVES and head in table:
        return f"{prefix}{table[head]}.{leaf}"
    if strict:
        raise KeyError(f"'{key}' is not a Wan2.1 DiT parameter or module name ({direction}); "
                       f"known names look like 'blocks.0.self_attn.q.weight' (original) or "
                       f"'blocks.0.attn1.to_q.weight' (diffusers)")
    return key


def original_to_diffusers(key: str, strict: bool = True) -> str:
    """Map one original-Wan parameter name or module path to the diffusers one.

    ``blocks.3.self_attn.q.weight`` -> ``blocks.3.attn1.to_q.weight``; ``blocks.3.ffn.0`` ->
    ``blocks.3.ffn.net.0.proj``; ``head.modulation`` -> ``scale_shift_table``. An unknown name raises
    ``KeyError`` (or, with ``strict=False``, is returned unchanged).
    """
    return _map(key, _TOP_O2D, _BLOCK_O2D, strict, "original -> diffusers")


def diffusers_to_original(key: str, strict: bool = True) -> str:
    """Inverse of :func:`original_to_diffusers` (``blocks.3.attn2.add_k_proj`` -> ``blocks.3.cross_attn.k_img``)."""
    return _map(key, _TOP_D2O, _BLOCK_D2O, strict, "diffusers -> original")


def is_original_layout(keys: Iterable[str]) -> bool:
    """True when the names are in the original Wan layout (``head.head.weight`` / ``self_attn``)."""
    for k in keys:
        if k.startswith("head.") or ".self_attn." in k or k.startswith("time_embedding."):
            return True
        if k.startswith("condition_embedder.") or ".attn1." in k or k.startswith("proj_out."):
            return False
    raise ValueError("no Wan DiT keys found")


def convert_state_dict(state: Mapping, to: str, strict: bool = True) -> dict:
    """Rename every key of ``state`` to ``to`` = ``"diffusers"`` or ``"original"`` (tensors untouched)."""
    if to == "diffusers":
        fn = original_to_diffusers
    elif to == "original":
        fn = diffusers_to_original
    else:
        raise ValueError(f"to must be 'diffusers' or 'original', got {to!r}")
    out = {}
    for k, v in state.items():
        nk = fn(k, strict=strict)
        if nk in out:
            raise KeyError(f"two keys map to '{nk}'")
        out[nk] = v
    return out


def original_linear_module_names(num_layers: int, *, image: bool = True, mpm: bool = False) -> list[str]:
    """Every ``nn.Linear`` module path of a Wan2.1 DiT in original names, in model order.

    These are the modules a kohya-style LoRA (``lora_unet__<path with dots as _>``) can target:
    per block ``self_attn.{q,k,v,o}``, ``cross_attn.{q,k,v,o}`` (+ ``k_img``, ``v_img`` with ``image``),
    ``ffn.0``, ``ffn.2`` (+ ``spatial_guidance_{self,ffn}.spatial_guide.1`` with ``mpm``); globally
    ``text_embedding.{0,2}``, ``time_embedding.{0,2}``, ``time_projection.1``, ``head.head`` and with
    ``image`` ``img_emb.proj.{1,3}``. For the 14B I2V layout that is 40*12 + 8 = 488 names.
    """
    names = ["text_embedding.0", "text_embedding.2", "time_embedding.0", "time_embedding.2", "time_projection.1"]
    for i in range(num_layers):
        b = f"blocks.{i}."
        names += [b + f"self_attn.{p}" for p in "qkvo"]
        names += [b + f"cross_attn.{p}" for p in "qkvo"]
        if image:
            names += [b + "cross_attn.k_img", b + "cross_attn.v_img"]
        names += [b + "ffn.0", b + "ffn.2"]
        if mpm:
            names += [b + "spatial_guidance_self.spatial_guide.1", b + "spatial_guidance_ffn.spatial_guide.1"]
    names.append("head.head")
    if image:
        names += ["img_emb.proj.1", "img_emb.proj.3"]
    return names


def original_parameter_names(num_layers: int, *, image: bool = True, ref_conv: bool = False,
                             mpm: bool = False, cross_attn_norm: bool = True,
                             emb_pos: bool = False) -> list[str]:
    """All parameter names of a Wan2.1 DiT state dict in the original layout (no OmniMAE keys)."""
    names: list[str] = []

    def lin(path: str) -> None:
        names.extend((path + ".weight", path + ".bias"))

    lin("patch_embedding")
    for p in ("text_embedding.0", "text_embedding.2", "time_embedding.0", "time_embedding.2", "time_projection.1"):
        lin(p)
    for i in range(num_layers):
        b = f"blocks.{i}."
        names.append(b + "modulation")
        for a in ("self_attn", "cross_attn"):
            for p in "qkvo":
                lin(f"{b}{a}.{p}")
            names += [f"{b}{a}.norm_q.weight", f"{b}{a}.norm_k.weight"]
        if image:
            lin(b + "cross_attn.k_img")
            lin(b + "cross_attn.v_img")
            names.append(b + "cross_attn.norm_k_img.weight")
        if cross_attn_norm:
            lin(b + "norm3")
        lin(b + "ffn.0")
        lin(b + "ffn.2")
        if mpm:
            for g in ("spatial_guidance_self", "spatial_guidance_ffn"):
                names.append(f"{b}{g}.gate")
                lin(f"{b}{g}.spatial_guide.1")
    names.append("head.modulation")
    lin("head.head")
    if image:
        for p in ("img_emb.proj.0", "img_emb.proj.1", "img_emb.proj.3", "img_emb.proj.4"):
            lin(p)
        if emb_pos:
            names.append("img_emb.emb_pos")
    if ref_conv:
        lin("ref_conv")
    if mpm:
        lin("feature_adapter.0")
        lin("feature_adapter.2")
    return names


def strip_known_prefix(keys: Iterable[str], anchor: str = "patch_embedding.weight") -> Optional[str]:
    """The prefix in front of ``anchor`` (``""``, ``"model.diffusion_model."`` ...), or None if absent."""
    for k in keys:
        if k.endswith(anchor):
            return k[: len(k) - len(anchor)]
    return None
