"""LoRAs for the Wan DiTs: parse (kohya and the other published layouts), merge / unmerge / stack, PEFT
adapters, export.

The released 4D-ViSM LoRA (``4D-ViSM/lora_diffusion_pytorch_model.safetensors``, reference §C, §E) is a
kohya/VideoX-Fun ``LoRANetwork`` file:

* keys ``lora_unet__<module path with '.' replaced by '_'>.{lora_down.weight, lora_up.weight, alpha}`` (the
  double underscore comes from ``("lora_unet" + "." + "" + "." + path).replace(".", "_")``), bf16;
* 488 modules for the 14B I2V layout: every ``nn.Linear`` (per block ``self_attn.{q,k,v,o}``,
  ``cross_attn.{q,k,v,o,k_img,v_img}``, ``ffn.0``, ``ffn.2``; globally ``text_embedding.{0,2}``,
  ``time_embedding.{0,2}``, ``time_projection.1``, ``head.head``, ``img_emb.proj.{1,3}``);
* rank 128, alpha 64; merged as ``W += strength * (alpha / rank) * up @ down`` with the official inference
  strength **0.55** (``--stage2_lora_weight``), i.e. 0.55 x the trained strength. A missing ``alpha`` means
  scale 1 (as the official ``merge_lora``).

Other LoRAs for the same base models, e.g. the step-distilled Wan2.1 I2V / InP LoRAs for few-step sampling, are
published in other key layouts: dotted module paths with ``lora_A`` / ``lora_B`` or ``lora_down`` / ``lora_up``
weights, optional ``alpha``, with or without a ``diffusion_model.`` prefix. :func:`parse_lora` reads all of them
(:func:`group_lora_keys` sorts the keys, :func:`check_lora_keys` checks a file's names without its tensors), and
:func:`merge_loras` stacks several LoRAs with their own strengths (the ViSM LoRA at 0.55 plus a distill LoRA).

Module names in a LoRA are *original* Wan names (``blocks.0.self_attn.q``). Models built on diffusers'
``WanTransformer3DModel`` use other names (``blocks.0.attn1.to_q``); ``name_map`` maps an original
*parameter* name (``blocks.0.self_attn.q.weight``) to the model's, and by default is chosen automatically:
identity when the model has the original names, else :func:`moge4d_core.loading.wan_keys.original_to_diffusers`.

The underscore form is turned back into dotted names by matching against a list of candidate module names
(the Wan Linear modules from :mod:`wan_keys`, plus the model's own Linear modules); two candidates with the
same underscore form would make a name ambiguous, and that is reported, never guessed.

Two ways to apply: :func:`merge_lora` folds the delta into the weights (fastest at inference, exact official
behaviour); :func:`apply_lora_peft` injects PEFT ``LoraLayer`` adapters (per-module ranks and alphas through
``rank_pattern`` / ``alpha_pattern``) that can be switched off (:func:`set_lora_enabled`) or rescaled
(:func:`set_lora_strength`) without touching the base weights, and trained. :func:`export_kohya_lora` writes
either back in the official kohya format.

The parsing and merging are written here (a few lines each) rather than through diffusers'
``load_lora_weights``, because diffusers' Wan LoRA converter targets its own pipeline objects and does not
implement the official ``strength * alpha / rank`` merge nor report LoRA/model mismatches by name.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Mapping, NamedTuple, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import MoGe4DInputError
from .common import check_finite, load_file_state_dict, save_state_dict

KOHYA_PREFIX = "lora_unet__"
OFFICIAL_STRENGTH = 0.55
_ELEMENT_ALIASES = {"lora_down.weight": "down", "lora_A.weight": "down", "lora_up.weight": "up",
                    "lora_B.weight": "up", "alpha": "alpha"}
DOTTED_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.", "base_model.model.")
ARCH = "kohya_lora"

NameMap = Callable[[str], str]


class LoraWeights(NamedTuple):
    """One module's LoRA: down (rank, in) [or (rank, in, 1, 1)], up (out, rank) [or (out, rank, 1, 1)], alpha."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


LoraDict = dict[str, LoraWeights]
LoraSource = Union[str, os.PathLike, Mapping[str, torch.Tensor], Mapping[str, LoraWeights]]


def kohya_name(module: str) -> str:
    """Original module path -> kohya key stem, official double-underscore form (``lora_unet__blocks_0_ffn_0``)."""
    return KOHYA_PREFIX + module.replace(".", "_")


# ------------------------------------------------------------------------------------------------
# parsing
# ------------------------------------------------------------------------------------------------

def _underscore_stem(stem: str) -> Optional[str]:
    """``lora_unet__blocks_0_x`` or ``lora_unet_blocks_0_x`` -> ``blocks_0_x``; None for other prefixes."""
    if not stem.startswith("lora_unet_"):
        return None
    rest = stem[len("lora_unet_"):]
    return rest[1:] if rest.startswith("_") else rest


def _default_candidates(stems: Iterable[str]) -> list[str]:
    from .wan_keys import original_linear_module_names

    blocks = [int(m.group(1)) for s in stems if (m := re.match(r"blocks[._](\d+)[._]", s))]
    return original_linear_module_names(max(blocks) + 1 if blocks else 0, image=True, mpm=True)


def _split_key(key: str) -> Optional[tuple[str, str]]:
    """``<stem>.<element>`` -> (stem, "down" | "up" | "alpha"); None when the key is no LoRA element."""
    for suffix, elem in _ELEMENT_ALIASES.items():
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1], elem
    return None


def _dotted_stem(stem: str) -> str:
    """Strip one known prefix (``diffusion_model.`` ...) from a dotted module path."""
    for prefix in DOTTED_PREFIXES:
        if stem.startswith(prefix):
            return stem[len(prefix):]
    return stem


def _is_wan_module_name(name: str, known: set[str]) -> bool:
    from .wan_keys import diffusers_to_original

    from .wan_keys import original_to_diffusers

    if name in known:
        return True
    for mapping in (diffusers_to_original, original_to_diffusers):
        try:
            mapping(name + ".weight", strict=True)
            return True
        except KeyError:
            pass
    return False


def group_lora_keys(keys: Iterable[str], *, source: str = "LoRA") -> dict[tuple[str, str], dict[str, str]]:
    """Sort LoRA keys by module: ``{(kind, stem): {"down"|"up"|"alpha": key}}``, kind ``"underscore"`` (kohya
    ``lora_unet_…`` stems, the part after the prefix) or ``"dotted"`` (module path, known prefix removed).

    Reads names only (no tensors), so a file can be checked before any model loads. Raises
    :class:`MoGe4DInputError` naming the first keys that are in none of the supported layouts (see
    :func:`parse_lora`).
    """
    groups: dict[tuple[str, str], dict[str, str]] = {}
    foreign = []
    for key in keys:
        split = _split_key(key)
        if split is None:
            foreign.append(key)
            continue
        stem, elem = split
        under = _underscore_stem(stem)
        gkey = ("underscore", under) if under is not None else ("dotted", _dotted_stem(stem))
        if gkey[1] == "" or (under is None and stem.startswith("lora_")):
            foreign.append(key)
            continue
        slot = groups.setdefault(gkey, {})
        if elem in slot:
            raise MoGe4DInputError(f"{source}: module '{gkey[1]}' has its {elem} weight twice ('{slot[elem]}' and "
                                   f"'{key}'); the file mixes two LoRAs")
        slot[elem] = key
    if foreign:
        raise MoGe4DInputError(
            f"{source}: {len(foreign)} keys are not Wan DiT LoRA keys, first: {foreign[:5]}. Supported layouts: "
            f"kohya 'lora_unet__<module>.lora_down.weight / .lora_up.weight / .alpha' (single or double "
            f"underscore), and '[diffusion_model.]<module>.lora_A.weight / .lora_B.weight' or "
            f"'.lora_down.weight / .lora_up.weight' with optional '.alpha'. Text-encoder LoRAs (lora_te_*), "
            f"LyCORIS/LoKr/DoRA variants and full-weight '.diff' / '.diff_b' keys are not supported.")
    if not groups:
        raise MoGe4DInputError(f"{source}: holds no LoRA weights")
    return groups


def check_lora_keys(keys: Iterable[str], *, source: str = "LoRA") -> int:
    """Check LoRA key names (layout and Wan module names) without reading tensors; returns the module count.

    Module names are checked against the Wan2.1 DiT (original or diffusers names); shapes are checked when the
    LoRA is merged into a model.
    """
    groups = group_lora_keys(keys, source=source)
    candidates = _default_candidates(stem for _, stem in groups)
    table = {c.replace(".", "_") for c in candidates}
    known = set(candidates)
    unknown = [stem for kind, stem in groups
               if (kind == "underscore" and stem not in table) or (kind == "dotted" and not _is_wan_module_name(stem, known))]
    if unknown:
        raise MoGe4DInputError(
            f"{source}: {len(unknown)} of {len(groups)} LoRA modules match no known Wan DiT module, first: "
            f"{sorted(unknown)[:5]}. The LoRA was made for another model (not a Wan2.1 DiT).")
    missing = [stem for stem, elems in ((s, e) for (_, s), e in groups.items()) if "down" not in elems or "up" not in elems]
    if missing:
        raise MoGe4DInputError(f"{source}: module '{missing[0]}' lacks its down (lora_A / lora_down) or up "
                               f"(lora_B / lora_up) weight")
    return len(groups)


def parse_lora(state: Mapping[str, torch.Tensor], module_names: Optional[Iterable[str]] = None, *,
               source: str = "LoRA") -> LoraDict:
    """LoRA state dict in any supported layout -> ``{module name: LoraWeights(down, up, alpha)}``.

    Layouts (mixed freely, one module once):

    * kohya ``lora_unet__<module with '.' as '_'>.{lora_down.weight, lora_up.weight, alpha}`` (the official
      ViSM LoRA; single-underscore ``lora_unet_…`` too);
    * dotted ``<module>.{lora_A.weight, lora_B.weight}`` or ``<module>.{lora_down.weight, lora_up.weight}``,
      each with optional ``.alpha``, the module path with or without a ``diffusion_model.`` /
      ``model.diffusion_model.`` / ``transformer.`` prefix: what the step-distilled Wan2.1 I2V / InP LoRAs are
      published in. ``lora_A`` is down ``(rank, in)``, ``lora_B`` is up ``(out, rank)``.

    Module names come back as written (original Wan ``blocks.0.self_attn.q`` or diffusers ``blocks.0.attn1.to_q``;
    the underscore form resolved against ``module_names`` + the Wan2.1 Linear modules); they are mapped onto a
    model when merged. Tensors are returned as stored; ``alpha`` is a float (the rank when absent: scale 1).
    """
    groups = group_lora_keys(state.keys(), source=source)
    check_finite(state, source)                 # a NaN alpha or up/down would spread over the whole merged model
    stems = [stem for _, stem in groups]
    candidates = list(module_names) if module_names is not None else _default_candidates(stems)
    if module_names is not None:
        given = set(candidates)
        candidates += [c for c in _default_candidates(stems) if c not in given]
    table: dict[str, str] = {}
    ambiguous: dict[str, set[str]] = {}
    for name in candidates:
        u = name.replace(".", "_")
        if u in table and table[u] != name:
            ambiguous.setdefault(u, {table[u]}).add(name)
        table.setdefault(u, name)
    known = set(candidates)
    out: LoraDict = {}
    unknown = []
    for (kind, stem), elems in groups.items():
        if kind == "underscore":
            if stem in ambiguous:
                raise MoGe4DInputError(f"{source}: LoRA module '{stem}' matches several modules "
                                       f"{sorted(ambiguous[stem])}; cannot tell which one it targets")
            if stem not in table:
                unknown.append(stem)
                continue
            name = table[stem]
        else:
            if not _is_wan_module_name(stem, known):
                unknown.append(stem)
                continue
            name = stem
        if "down" not in elems or "up" not in elems:
            raise MoGe4DInputError(f"{source}: module '{name}' lacks its down (lora_A / lora_down) or up "
                                   f"(lora_B / lora_up) weight")
        if name in out:
            raise MoGe4DInputError(f"{source}: module '{name}' appears twice (in two key layouts)")
        down, up = state[elems["down"]], state[elems["up"]]
        if down.ndim not in (2, 4) or up.ndim != down.ndim or up.shape[1] != down.shape[0]:
            raise MoGe4DInputError(f"{source}: module '{name}' has inconsistent LoRA shapes "
                                   f"down {tuple(down.shape)}, up {tuple(up.shape)} (expected (rank,in), (out,rank))")
        alpha = float(state[elems["alpha"]].float().item()) if "alpha" in elems else float(down.shape[0])
        out[name] = LoraWeights(down, up, alpha)
    if unknown:
        raise MoGe4DInputError(
            f"{source}: {len(unknown)} of {len(groups)} LoRA modules match no known Wan DiT module, first: "
            f"{sorted(unknown)[:5]}. The LoRA was made for another model (not a Wan2.1 DiT).")
    return out


parse_kohya_lora = parse_lora      # the name this module's callers used before the other layouts were read


def load_kohya_lora(path: str | os.PathLike, module_names: Optional[Iterable[str]] = None) -> LoraDict:
    """Read a LoRA file (safetensors / .pt) in any supported layout and parse it (see :func:`parse_lora`)."""
    return parse_lora(load_file_state_dict(path), module_names, source=str(path))


# ------------------------------------------------------------------------------------------------
# resolving LoRA names against a model
# ------------------------------------------------------------------------------------------------

def _model_label(model: nn.Module) -> str:
    return type(model).__name__


def _identity(name: str) -> str:
    return name


def _module_target(name: str, name_map: NameMap) -> str:
    mapped = name_map(name + ".weight")
    return mapped[: -len(".weight")] if mapped.endswith(".weight") else mapped


def _auto_name_map(model_modules: Mapping[str, nn.Module], names: Iterable[str]) -> NameMap:
    names = list(names)
    if all(n in model_modules for n in names):
        return _identity
    from .wan_keys import original_to_diffusers

    def to_diffusers(key: str) -> str:
        return original_to_diffusers(key, strict=False)

    return to_diffusers


def _as_lora_dict(lora: LoraSource, model_modules: Mapping[str, nn.Module]) -> tuple[LoraDict, str]:
    if isinstance(lora, (str, os.PathLike)):
        source = str(lora)
        lora = load_file_state_dict(lora)
    else:
        source = "LoRA"
    if lora and all(isinstance(v, LoraWeights) or (isinstance(v, tuple) and len(v) == 3) for v in lora.values()):
        return {k: LoraWeights(*v) for k, v in lora.items()}, source
    linear_names = [n for n, m in model_modules.items() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return parse_lora(lora, linear_names, source=source), source


def _resolve(model: nn.Module, lora: LoraSource, name_map: Optional[NameMap]
             ) -> tuple[list[tuple[str, str, nn.Module, LoraWeights]], str]:
    """Check the whole LoRA against the model (names, then shapes) before anything is changed."""
    modules = dict(model.named_modules())
    lora_dict, source = _as_lora_dict(lora, modules)
    nm = name_map or _auto_name_map(modules, lora_dict)
    resolved, missing = [], []
    for orig, w in lora_dict.items():
        target = _module_target(orig, nm)
        mod = modules.get(target)
        if mod is None or not isinstance(getattr(mod, "weight", None), torch.Tensor):
            missing.append(f"{orig} -> {target}" if target != orig else orig)
            continue
        resolved.append((orig, target, mod, w))
    if missing:
        raise MoGe4DInputError(
            f"{source}: {len(missing)} of {len(lora_dict)} LoRA modules are not in the model "
            f"{_model_label(model)}, first: {missing[:5]}. The LoRA was made for another model (e.g. more "
            f"blocks or another architecture); use the LoRA that belongs to this base model.")
    for orig, target, mod, w in resolved:
        shape = tuple(getattr(mod.weight, "quant_shape", None) or mod.weight.shape)   # GGUF: unpacked shape
        want = (int(w.up.shape[0]), int(w.down.shape[1]))
        if tuple(shape[:2]) != want or (len(shape) == 4 and tuple(shape[2:]) != (1, 1)) or len(shape) not in (2, 4):
            raise MoGe4DInputError(
                f"{source}: LoRA module '{orig}' gives a delta of shape (out={want[0]}, in={want[1]}) but "
                f"{_model_label(model)}.{target} has weight {shape}. The LoRA was made for a model "
                f"of another size (e.g. Wan 1.3B vs 14B).")
    return resolved, source


# ------------------------------------------------------------------------------------------------
# merge / unmerge
# ------------------------------------------------------------------------------------------------

def lora_delta(w: LoraWeights, strength: float, shape: Optional[torch.Size] = None,
               device: Optional[torch.device] = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``strength * (alpha / rank) * up @ down`` in ``dtype`` (float32 as the official merge; shaped like the
    weight: (out,in) or (out,in,1,1))."""
    up = w.up.to(device=device, dtype=dtype).flatten(1)
    down = w.down.to(device=device, dtype=dtype).flatten(1)
    delta = (strength * w.scale) * torch.mm(up, down)
    return delta.view(shape) if shape is not None else delta


def _apply_delta(model, lora, strength, name_map, sign: float) -> nn.Module:
    resolved, _ = _resolve(model, lora, name_map)
    _add_deltas(resolved, strength, sign)
    return model


def _add_deltas(resolved, strength: float, sign: float) -> None:
    with torch.no_grad():
        for orig, _, mod, w in resolved:
            weight = mod.weight
            if hasattr(weight, "quant_type"):          # GGUF-packed weight: cannot be folded, add a branch
                if sign < 0:
                    raise MoGe4DInputError(f"LoRA module '{orig}': its weight is GGUF-quantised; a LoRA on it cannot "
                                           f"be unmerged (reload the model)")
                _add_lowrank_branch(mod, w, strength)
                continue
            compute = torch.float64 if weight.dtype == torch.float64 else torch.float32
            delta = lora_delta(w, strength, weight.shape, weight.device, compute)
            weight.copy_((weight.to(compute) + sign * delta).to(weight.dtype))


def _lowrank_hook(mod: nn.Module, args, out: torch.Tensor) -> torch.Tensor:
    x = args[0]
    for i, s in enumerate(mod._moge4d_lora_scales):
        down, up = getattr(mod, f"moge4d_lora_down_{i}"), getattr(mod, f"moge4d_lora_up_{i}")
        out = out + (s * F.linear(F.linear(x.to(down.dtype), down), up)).to(out.dtype)
    return out


def _add_lowrank_branch(mod: nn.Module, w: LoraWeights, strength: float) -> None:
    """``y += strength * (alpha/rank) * up @ (down @ x)`` on a Linear whose weight is GGUF-packed (diffusers'
    ``GGUFLinear``): the same output as the merged weight, the factors kept as non-persistent buffers (they move
    with the module)."""
    if not isinstance(mod, nn.Linear):
        raise MoGe4DInputError(f"{type(mod).__name__}: a LoRA on a quantised non-Linear weight is not supported")
    dtype = getattr(mod, "compute_dtype", None) or torch.float32
    dev = mod.weight.device
    scales = mod.__dict__.setdefault("_moge4d_lora_scales", [])
    i = len(scales)
    mod.register_buffer(f"moge4d_lora_down_{i}", w.down.flatten(1).to(dev, dtype), persistent=False)
    mod.register_buffer(f"moge4d_lora_up_{i}", w.up.flatten(1).to(dev, dtype), persistent=False)
    scales.append(float(strength * w.scale))
    if i == 0:
        mod.register_forward_hook(_lowrank_hook)


def merge_lora(model: nn.Module, lora: LoraSource, strength: float = OFFICIAL_STRENGTH,
               name_map: Optional[NameMap] = None) -> nn.Module:
    """Fold the LoRA into ``model``'s weights in place: ``W += strength * (alpha/rank) * up @ down``.

    ``lora``: a file path, a kohya state dict or a parsed ``{name: LoraWeights}``. Arithmetic in float32
    (float64 for float64 weights), the result cast back to the weight's dtype. On fp8-stored weights the
    small delta is mostly lost to fp8 rounding: merge before casting to fp8, or use :func:`apply_lora_peft`. On a
    GGUF-quantised Linear (packed weight) the LoRA becomes a low-rank branch added to its output (same result). Every module and shape is checked before any weight changes;
    a mismatch raises :class:`MoGe4DInputError` naming the first unmatched modules and the model class.
    """
    return _apply_delta(model, lora, strength, name_map, +1.0)


def unmerge_lora(model: nn.Module, lora: LoraSource, strength: float = OFFICIAL_STRENGTH,
                 name_map: Optional[NameMap] = None) -> nn.Module:
    """Subtract what :func:`merge_lora` added (exact up to float32 rounding; in bf16/fp8 weights the
    round trip loses the low bits, so reload the base weights when exactness matters)."""
    return _apply_delta(model, lora, strength, name_map, -1.0)


def merge_loras(model: nn.Module, loras: Sequence[tuple[LoraSource, float]],
                name_map: Optional[NameMap] = None) -> nn.Module:
    """Fold several LoRAs into ``model`` in place, each with its own strength, in the order given.

    Every LoRA is parsed and checked against the model (names, shapes) before any weight changes, so a bad second
    LoRA leaves the model as it was. The result is ``W + sum_i s_i * (alpha_i / rank_i) * up_i @ down_i`` (each
    delta added in float32, float64 for float64 weights, then cast back).

    Args:
        model: the DiT (e.g. the ViSM base).
        loras: ``[(source, strength), ...]``; a source is a file path, a LoRA state dict in any layout
            :func:`parse_lora` reads, or a parsed ``{name: LoraWeights}``. E.g. ``[(vism_lora, 0.55),
            (distill_lora, 1.0)]``.
        name_map: as in :func:`merge_lora` (default: chosen per LoRA).

    Returns:
        ``model``.
    """
    import math

    checked = []
    for i, item in enumerate(loras):
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise MoGe4DInputError(f"LoRA list entry {i}: expected (source, strength), got {item!r}")
        source, strength = item
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength):
            raise MoGe4DInputError(f"LoRA {source if isinstance(source, (str, os.PathLike)) else i}: strength must be "
                                   f"a finite number, got {strength!r}")
        resolved, _ = _resolve(model, source, name_map)
        checked.append((resolved, float(strength)))
    for resolved, strength in checked:
        _add_deltas(resolved, strength, +1.0)
    return model


# ------------------------------------------------------------------------------------------------
# PEFT adapters
# ------------------------------------------------------------------------------------------------

def apply_lora_peft(model: nn.Module, lora: LoraSource, strength: float = OFFICIAL_STRENGTH,
                    adapter_name: str = "vism", name_map: Optional[NameMap] = None) -> nn.Module:
    """Inject the LoRA as PEFT adapters (in place; returns ``model``).

    Output with the adapter on equals the merged model's; :func:`set_lora_enabled` (False) gives back the
    base model's exact output; :func:`set_lora_strength` rescales. Each module keeps its own rank and alpha.
    Only ``nn.Linear`` targets are supported here (the Wan LoRAs target only Linear layers). Like every PEFT
    injection, the base parameters are marked ``requires_grad=False``.
    """
    from peft import LoraConfig, inject_adapter_in_model

    resolved, source = _resolve(model, lora, name_map)
    not_linear = [t for _, t, m, _ in resolved if not isinstance(m, nn.Linear)]
    if not_linear:
        raise MoGe4DInputError(f"{source}: PEFT adapters are supported for nn.Linear targets only; "
                               f"non-Linear targets: {not_linear[:5]}. Use merge_lora for these.")
    targets = [t for _, t, _, _ in resolved]
    ranks = Counter(w.rank for *_, w in resolved)
    alphas = Counter(w.alpha for *_, w in resolved)
    r0, a0 = ranks.most_common(1)[0][0], alphas.most_common(1)[0][0]
    config = LoraConfig(
        r=r0, lora_alpha=a0, lora_dropout=0.0, target_modules=targets,
        rank_pattern={re.escape(t): w.rank for _, t, _, w in resolved if w.rank != r0},
        alpha_pattern={re.escape(t): w.alpha for _, t, _, w in resolved if w.alpha != a0},
    )
    inject_adapter_in_model(config, model, adapter_name=adapter_name)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for _, target, _, w in resolved:
            layer = modules[target]
            a, b = layer.lora_A[adapter_name].weight, layer.lora_B[adapter_name].weight
            a.copy_(w.down.flatten(1).to(a.dtype))
            b.copy_(w.up.flatten(1).to(b.dtype))
            layer.set_scale(adapter_name, strength)
    return model


def _tuner_layers(model: nn.Module):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


def set_lora_enabled(model: nn.Module, enabled: bool) -> None:
    """Switch every PEFT adapter in ``model`` on or off (off = the base model's exact output)."""
    layers = _tuner_layers(model)
    if not layers:
        raise MoGe4DInputError(f"{_model_label(model)}: has no PEFT LoRA adapters to switch (apply_lora_peft first)")
    for _, m in layers:
        m.enable_adapters(enabled)


def set_lora_strength(model: nn.Module, strength: float, adapter_name: str = "vism") -> None:
    """Set the adapter's scale to ``strength * alpha / rank`` in every layer."""
    for _, m in _tuner_layers(model):
        if hasattr(m, "set_scale"):
            m.set_scale(adapter_name, strength)


# ------------------------------------------------------------------------------------------------
# export
# ------------------------------------------------------------------------------------------------

def _default_inverse(name: str) -> str:
    from .wan_keys import diffusers_to_original

    try:
        return diffusers_to_original(name, strict=True)
    except KeyError:
        return name


def lora_from_peft(model: nn.Module, adapter_name: str = "vism",
                   name_map_inverse: Optional[NameMap] = None) -> LoraDict:
    """Collect a PEFT adapter as ``{original module name: LoraWeights}`` (alpha = the adapter's lora_alpha)."""
    inv = name_map_inverse or _default_inverse
    out: LoraDict = {}
    for name, m in _tuner_layers(model):
        if adapter_name not in getattr(m, "lora_A", {}):
            continue
        orig = _module_target(name, inv)
        out[orig] = LoraWeights(m.lora_A[adapter_name].weight.detach(), m.lora_B[adapter_name].weight.detach(),
                                float(m.lora_alpha[adapter_name]))
    if not out:
        raise MoGe4DInputError(f"{_model_label(model)}: has no PEFT adapter named '{adapter_name}'")
    return out


def export_kohya_lora(source: Union[nn.Module, Mapping[str, LoraWeights]], path: str | os.PathLike, *,
                      adapter_name: str = "vism", name_map_inverse: Optional[NameMap] = None,
                      dtype: torch.dtype = torch.bfloat16, metadata: Optional[Mapping[str, str]] = None) -> Path:
    """Write a LoRA in the official kohya format (``lora_unet__…`` keys, 0-dim ``alpha``, ``dtype`` tensors).

    ``source``: a model with a PEFT adapter (module names mapped back to original Wan names with
    ``name_map_inverse``, default :func:`wan_keys.diffusers_to_original` where it applies) or a
    ``{original name: LoraWeights}`` dict. The file loads in the official ``merge_lora``, ComfyUI-style kohya
    loaders and :func:`merge_lora` / :func:`apply_lora_peft` here.
    """
    lora = lora_from_peft(source, adapter_name, name_map_inverse) if isinstance(source, nn.Module) \
        else {k: LoraWeights(*v) for k, v in source.items()}
    state: dict[str, torch.Tensor] = {}
    for name, w in lora.items():
        stem = kohya_name(name)
        state[f"{stem}.lora_down.weight"] = w.down.detach().to("cpu", dtype).contiguous()
        state[f"{stem}.lora_up.weight"] = w.up.detach().to("cpu", dtype).contiguous()
        state[f"{stem}.alpha"] = torch.tensor(float(w.alpha), dtype=dtype)
    ranks = sorted({w.rank for w in lora.values()})
    alphas = sorted({w.alpha for w in lora.values()})
    config = {"format": "kohya lora_unet__", "modules": len(lora), "ranks": ranks, "alphas": alphas}
    return save_state_dict(state, path, ARCH, config, metadata)


__all__ = ["LoraWeights", "kohya_name", "parse_lora", "parse_kohya_lora", "group_lora_keys", "check_lora_keys",
           "load_kohya_lora", "merge_lora", "merge_loras", "unmerge_lora",
           "lora_delta", "apply_lora_peft", "set_lora_enabled", "set_lora_strength", "lora_from_peft",
           "export_kohya_lora", "OFFICIAL_STRENGTH"]
