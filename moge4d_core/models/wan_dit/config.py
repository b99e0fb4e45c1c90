"""Configs of the Wan2.1 DiTs (and their MoGe4D extensions), with the shipped 14B configs.

A DiT's config is its constructor arguments, registered with diffusers' ``@register_to_config``, so
``model.config`` is the one config (as for diffusers' ``WanTransformer3DModel``): diffusers' names
(``num_attention_heads``, ``attention_head_dim``, ``in_channels`` ...) plus ours (``text_len``,
``ref_conv_in_dim``, ``mpm_feature_dim``, ``mpm_alignment``, ``arch``). :func:`dit_config` also reads the
original Wan ``config.json`` names (``dim``, ``num_heads``, ``in_dim``, ``out_dim``, ``qk_norm: true``), which
the shipped JSON files, VideoX-Fun / Wan ``config.json`` files and the metadata of checkpoints written by
earlier versions of this package hold, and converts them.

Architectures (``arch``) and their input channels (``in_channels``), see reference §A1, §A4, §C:

=============================  ======  ==============================================================
arch                           in      latents concatenated along channels (in this order)
=============================  ======  ==============================================================
``moge4d_strag``               64      noise 16 | control 16 | start-image slot 16 | depth 16; + ref_conv
``wan2.1_fun_control_v1.1``    48      noise 16 | control 16 | start-image 16; + ref_conv
``wan2.1_fun_control``         48      noise 16 | control 16 | start-image 16 (no ref_conv)
``wan2.1_fun_inp``             36      noise 16 | mask 4 | masked-video latent 16 (= Wan2.1 I2V layout)
``wan2.1_t2v``                 16      noise 16
=============================  ======  ==============================================================

The shipped JSON files live in ``moge4d_core/models/configs/``; nothing is fetched at run time.
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, Mapping, Optional

from diffusers.configuration_utils import FrozenDict

from ...errors import MoGe4DInputError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

ARCH_STRAG = "moge4d_strag"
ARCH_CONTROL_V11 = "wan2.1_fun_control_v1.1"
ARCH_CONTROL = "wan2.1_fun_control"
ARCH_INP = "wan2.1_fun_inp"
ARCH_T2V = "wan2.1_t2v"
ARCHS = (ARCH_STRAG, ARCH_CONTROL_V11, ARCH_CONTROL, ARCH_INP, ARCH_T2V)

MPM_ALIGNMENTS = ("official", "corrected")
QK_NORM = "rms_norm_across_heads"

#: Wan sizes by hidden width: (num_heads, num_layers, ffn_dim). Width 5120 = the 14B models.
KNOWN_WIDTHS = {5120: (40, 40, 13824), 1536: (12, 30, 8960)}

#: original Wan ``config.json`` name -> constructor argument of the same meaning (``dim`` is converted
#: to ``attention_head_dim = dim // num_heads``, ``qk_norm: true`` to ``"rms_norm_across_heads"``)
WAN_NAMES = {"num_heads": "num_attention_heads", "in_dim": "in_channels", "out_dim": "out_channels"}


def infer_arch(in_channels: int, ref_conv_in_dim: Optional[int], image_dim: Optional[int]) -> str:
    """Architecture name from the input channels and the presence of ``ref_conv`` / CLIP ``img_emb``.

    Args:
        in_channels: patch-embedding input channels (64, 48, 36 or 16, see the module docstring's table).
        ref_conv_in_dim: input channels of ``ref_conv`` (16), or None / 0 without reference tokens.
        image_dim: CLIP token width (1280) of an I2V model, or None.

    Returns:
        one of :data:`ARCHS`, or ``"unknown(in_dim=N)"`` for a layout not in the table.
    """
    if in_channels == 64 and ref_conv_in_dim:
        return ARCH_STRAG
    if in_channels == 48:
        return ARCH_CONTROL_V11 if ref_conv_in_dim else ARCH_CONTROL
    if in_channels == 36 and image_dim:
        return ARCH_INP
    if in_channels == 16 and not image_dim:
        return ARCH_T2V
    return f"unknown(in_dim={in_channels})"


def derived_fields(num_attention_heads: int, attention_head_dim: int, in_channels: int, image_dim: Optional[int],
                   ref_conv_in_dim: Optional[int], added_kv_proj_dim: Optional[int], arch: Optional[str],
                   qk_norm: Optional[str], text_len: int, mpm_alignment: str) -> dict[str, Any]:
    """Check a config and fill what follows from it: ``added_kv_proj_dim`` (the hidden width for an I2V model)
    and ``arch`` (from the channel layout) when not given.

    Raises:
        MoGe4DInputError: for a config no Wan2.1 checkpoint has.
    """
    if mpm_alignment not in MPM_ALIGNMENTS:
        raise MoGe4DInputError(f"Wan config: mpm_alignment must be one of {MPM_ALIGNMENTS}, got {mpm_alignment!r}")
    if qk_norm != QK_NORM:
        raise MoGe4DInputError(f"Wan config: qk_norm must be {QK_NORM!r} (every Wan2.1 model has q/k RMSNorm), "
                               f"got {qk_norm!r}")
    if image_dim is not None and text_len != 512:
        raise MoGe4DInputError("Wan config: I2V models need text_len 512 (diffusers splits the context at 512 text tokens)")
    if image_dim is not None and added_kv_proj_dim is None:
        added_kv_proj_dim = num_attention_heads * attention_head_dim
    return {"added_kv_proj_dim": added_kv_proj_dim, "arch": arch or infer_arch(in_channels, ref_conv_in_dim, image_dim)}


def _constructor_defaults() -> dict[str, Any]:
    from .model import WanDiT  # the constructor is the config's definition

    params = list(inspect.signature(WanDiT.__init__).parameters.values())[1:]
    return {p.name: p.default for p in params}


def _our_names(d: Mapping[str, Any]) -> dict[str, Any]:
    """Rename original Wan fields; a field given in both namings keeps our name's value."""
    out = {WAN_NAMES[k]: v for k, v in d.items() if k in WAN_NAMES}
    out.update({k: v for k, v in d.items() if k not in WAN_NAMES})
    if isinstance(out.get("qk_norm"), bool):
        if not out["qk_norm"]:
            raise MoGe4DInputError("Wan config: qk_norm=False is not supported (every Wan2.1 model has q/k RMSNorm)")
        out["qk_norm"] = QK_NORM
    return out


def dit_config(d: Optional[Mapping[str, Any]] = None, **overrides: Any) -> FrozenDict:
    """The complete constructor arguments of a Wan DiT from a config in either naming (unknown fields ignored).

    Args:
        d: our config (``model.config``, our checkpoint metadata) or one in the original Wan names (a shipped
            JSON file, a VideoX-Fun ``config.json``, metadata written by earlier versions), or a mix; None: the
            constructor defaults (the 14B T2V model).
        overrides: fields in either naming, applied over ``d``.

    Returns:
        a ``FrozenDict`` (read as ``cfg.in_channels``, like ``model.config``) holding every constructor argument
        of :class:`~moge4d_core.models.wan_dit.WanDiT`, ``arch`` and ``added_kv_proj_dim`` filled in;
        ``WanDiT(**cfg)`` builds the model.

    Raises:
        MoGe4DInputError: a width not divisible by the head count, or a config no Wan2.1 checkpoint has.
    """
    defaults = _constructor_defaults()
    src = {**_our_names(d or {}), **_our_names(overrides)}
    dim = src.pop("dim", None)
    cfg = {k: src.get(k, v) for k, v in defaults.items()}
    if dim is not None and "attention_head_dim" not in src:
        heads = int(cfg["num_attention_heads"])
        if int(dim) % heads:
            raise MoGe4DInputError(f"Wan config: dim {dim} is not divisible by num_heads {heads}")
        cfg["attention_head_dim"] = int(dim) // heads
    cfg["patch_size"] = tuple(int(p) for p in cfg["patch_size"])
    cfg.update(derived_fields(**{k: cfg[k] for k in inspect.signature(derived_fields).parameters}))
    return FrozenDict(cfg)


def hidden_width(cfg: Mapping[str, Any]) -> int:
    """Hidden width of a DiT config (``dim`` of the Wan names): heads x head width."""
    return int(cfg["num_attention_heads"]) * int(cfg["attention_head_dim"])


def config_to_json(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor arguments of ``cfg`` (e.g. ``model.config``) as a JSON-ready dict (diffusers' private
    ``_*`` entries left out), for checkpoint metadata; :func:`dit_config` reads it back."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if not k.startswith("_")}


def shipped_config(name: str) -> FrozenDict:
    """One of the JSON configs shipped in ``moge4d_core/models/configs`` (``name`` without ``.json``), as
    :func:`dit_config` returns it.

    Raises:
        MoGe4DInputError: no shipped config of that name (the message lists :func:`list_shipped_configs`).
    """
    p = CONFIG_DIR / f"{name}.json"
    if not p.is_file():
        avail = sorted(f.stem for f in CONFIG_DIR.glob("*.json"))
        raise MoGe4DInputError(f"no shipped config '{name}'; available: {avail}")
    d = json.loads(p.read_text())
    d.pop("description", None)
    return dit_config(d)


def list_shipped_configs() -> list[str]:
    """Names of the shipped JSON configs (file stems, sorted), the values :func:`shipped_config` accepts."""
    return sorted(f.stem for f in CONFIG_DIR.glob("*.json"))
