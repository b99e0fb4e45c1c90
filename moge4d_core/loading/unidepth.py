"""Load the published UniDepthV2 / UniDepthV2old checkpoints (reference ``encoders.md`` §1.0, §1.5, §1.6).

Accepted sources: ``model.safetensors``, ``pytorch_model.bin`` (read with ``weights_only=True``), a folder holding
either (with the hub's ``config.json`` when present, also read when it sits next to a weights file), or an
in-memory state dict. Keys are the published ``pixel_encoder.*`` / ``pixel_decoder.*`` names (a ``module.``
prefix is stripped); the DINOv2 part is renamed for transformers' ``Dinov2Model``
(:func:`moge4d_core.models.unidepth.encoder.convert_dinov2_keys`).

The generation is detected from the keys: ``pixel_decoder.global_layer.*`` -> V2old (2024),
``pixel_decoder.camera_layer.out_pinhole.*`` -> V2 (2025); ``pixel_decoder.token_adapter.*`` is UniDepth V1
(refused). Sizes (encoder width / depth, decoder width, stage depths, ...) come from tensor shapes; the number of
attention heads is ``embed_dim // 64`` (DINOv2 S/B/L) unless ``config.json`` says otherwise.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Mapping, Optional, Union

import torch

from ..errors import MoGe4DInputError
from ..models.unidepth.config import UniDepthConfig, backbone_name, parse_hub_config
from ..models.unidepth.encoder import convert_dinov2_keys
from ..models.unidepth.model import UniDepthV2, UniDepthV2Old, build_unidepth
from .common import LoadInfo, check_keys, find_weights, load_file_state_dict, with_load_info

PREFERRED_FILES = ("model.safetensors", "pytorch_model.bin")
_ENC = "pixel_encoder."
_DEC = "pixel_decoder."


def _strip_module(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def detect_version(state: Mapping[str, torch.Tensor], source: str = "state dict") -> str:
    """``"v2"`` or ``"v2old"`` from the published key names; :class:`MoGe4DInputError` otherwise."""
    keys = list(state)
    if not any(k.startswith((_ENC, _DEC)) for k in keys):
        raise MoGe4DInputError(
            f"{source}: not a UniDepth checkpoint: no 'pixel_encoder.*' / 'pixel_decoder.*' keys "
            f"(found {len(keys)} keys, e.g. {keys[:5]}). Expected lpiccinelli/unidepth-v2-* or -v2old-* weights.")
    if any(k.startswith(_DEC + "token_adapter.") for k in keys):
        raise MoGe4DInputError(
            f"{source}: this is a UniDepth V1 checkpoint (found 'pixel_decoder.token_adapter.*'); only UniDepthV2 "
            f"(unidepth-v2-vit{{s,b,l}}14) and UniDepthV2old (unidepth-v2old-vit{{s,l}}14, the one MoGe4D uses) "
            f"are supported.")
    if any(k.startswith(_DEC + "global_layer.") for k in keys):
        return "v2old"
    if any(k.startswith(_DEC + "camera_layer.out_pinhole.") for k in keys):
        return "v2"
    dec = sorted({".".join(k.split(".")[:2]) for k in keys if k.startswith(_DEC)})
    raise MoGe4DInputError(
        f"{source}: UniDepth-like keys but an unknown decoder (found decoder parts {dec[:8]}); expected "
        f"'pixel_decoder.global_layer.*' (V2old) or 'pixel_decoder.camera_layer.out_pinhole.*' (V2).")


def _count(keys, pattern: str) -> int:
    rx = re.compile(pattern)
    found = {m.group(1) for k in keys for m in [rx.match(k)] if m}
    return len(found)


def config_from_state(state: Mapping[str, torch.Tensor], source: str = "state dict",
                      overrides: Optional[dict] = None) -> UniDepthConfig:
    """Build a :class:`UniDepthConfig` from a state dict in *our* key names (after :func:`convert_keys`).

    ``overrides`` (e.g. from ``config.json``) win over values read from shapes, except that a version that
    contradicts the keys is an error.
    """
    overrides = dict(overrides or {})
    version = detect_version(state, source)
    if "version" in overrides and overrides["version"] != version:
        raise MoGe4DInputError(f"{source}: config.json says UniDepth {overrides['version']} but the weights are "
                               f"{version}; use the config.json that came with these weights")
    overrides.pop("version", None)
    cls = state.get(_ENC + "model.embeddings.cls_token")
    pos = state.get(_ENC + "model.embeddings.position_embeddings")
    if cls is None or pos is None:
        raise MoGe4DInputError(f"{source}: UniDepth {version} weights without a DINOv2 encoder "
                               f"('pixel_encoder.cls_token' / 'pixel_encoder.pos_embed' missing); only the ViT-14 "
                               f"backbones (vits14 / vitb14 / vitl14) are supported")
    embed_dim = int(cls.shape[-1])
    named = overrides.get("backbone")
    if named and named != "custom" and named != backbone_name(embed_dim):
        raise MoGe4DInputError(f"{source}: config.json describes a {named} encoder but the weights are "
                               f"{embed_dim} wide ({backbone_name(embed_dim)}); use the config.json that came with "
                               f"these weights")
    if tuple(pos.shape) != (1, 1370, embed_dim):
        raise MoGe4DInputError(f"{source}: pixel_encoder.pos_embed has shape {tuple(pos.shape)}, expected "
                               f"(1, 1370, {embed_dim}) (DINOv2/14 at 518 px)")
    keys = list(state)
    depth = _count(keys, re.escape(_ENC + "model.encoder.layer.") + r"(\d+)\.")
    if "num_heads" in overrides:
        heads = int(overrides.pop("num_heads"))
    elif embed_dim % 64 == 0:
        heads = embed_dim // 64
    else:
        raise MoGe4DInputError(f"{source}: cannot tell the number of attention heads of a {embed_dim}-wide encoder "
                               f"(published S/B/L widths are 384/768/1024); put the model's config.json next to "
                               f"the weights")
    d = _DEC
    try:
        if version == "v2":
            hidden = int(state[d + "input_adapter.input_adapters.0.weight"].shape[0])
            n_stages = _count(keys, re.escape(d + "depth_layer.ups.") + r"(\d+)\.")
            depths = tuple(_count(keys, re.escape(d + f"depth_layer.ups.{i}.convs.") + r"(\d+)\.")
                           for i in range(n_stages))
            conv = state.get(d + "depth_layer.ups.0.convs.0.conv1.weight")
            values = dict(
                hidden_dim=hidden, decoder_depths=depths,
                out_dim=int(state[d + "depth_layer.to_depth_lr.weight"].shape[1]),
                kernel_size=int(conv.shape[-1]) if conv is not None else 3,
                expansion=int(state[d + "camera_layer.aggregate1.mlp.proj1.weight"].shape[0]) // hidden,
                layer_scale=1.0 if d + "camera_layer.aggregate1.ls1.gamma" in state else -1.0,
                num_prompt_blocks=_count(keys, re.escape(d + "depth_layer.prompt_camera.0.layers.") + r"(\d+)\."),
            )
        else:
            hidden = int(state[d + "input_adapter.input_adapters.0.1.weight"].shape[0])
            n_stages = _count(keys, re.escape(d + "depth_layer.rays_layers.") + r"(\d+)\.")
            depths = tuple(_count(keys, re.escape(d + f"depth_layer.process_layers.{i}.") + r"(\d+)\.")
                           for i in range(n_stages))
            values = dict(
                hidden_dim=hidden, decoder_depths=depths,
                camera_dim=int(state[d + "depth_layer.rays_layers.0.weight"].shape[1]) - 3,
                expansion=int(state[d + "camera_layer.aggregate1.mlp.proj1.weight"].shape[0]) // hidden,
                ratio_bounds=(0.66, 2.0), pixels_bounds=(1400, 2400),
            )
    except KeyError as exc:
        raise MoGe4DInputError(f"{source}: UniDepth {version} checkpoint is missing {exc.args[0]!r}; the file is "
                               f"incomplete or not a published UniDepth {version} model") from None
    values.update(overrides)
    try:
        return UniDepthConfig(version=version, embed_dim=embed_dim, depth=depth, num_heads=heads, **values)
    except (TypeError, ValueError) as exc:
        raise MoGe4DInputError(f"{source}: inconsistent UniDepth {version} configuration ({exc})") from None


def convert_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Published UniDepth key names -> our module's names (idempotent)."""
    return convert_dinov2_keys(_strip_module(state))


def to_published_keys(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our module's state dict -> the published UniDepth key layout (fused qkv, ``ls*.gamma``, ``register_tokens``).

    Inverse of :func:`convert_keys`, for exporting a model in the format the UniDepth code reads.
    """
    src = _ENC + "model."
    out: dict[str, torch.Tensor] = {}
    simple = {
        "embeddings.cls_token": "cls_token", "embeddings.mask_token": "mask_token",
        "embeddings.position_embeddings": "pos_embed",
        "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
        "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias",
    }
    rx = re.compile(r"encoder\.layer\.(\d+)\.(.+)$")
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if not key.startswith(src):
            out[key] = value
            continue
        name = key[len(src):]
        if name in simple:
            out[_ENC + simple[name]] = value
            continue
        m = rx.match(name)
        if not m:
            raise ValueError(f"unexpected encoder key {key}")
        n, rest = m.groups()
        base = f"{_ENC}blocks.{n}."
        if rest.startswith("attention.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
            qkv.setdefault((n, rest.rsplit(".", 1)[1]), {})[rest.split(".")[1][0]] = value
            continue
        rest = (rest.replace("attention.o_proj", "attn.proj").replace("layer_scale1.lambda1", "ls1.gamma")
                .replace("layer_scale2.lambda1", "ls2.gamma"))
        out[base + rest] = value
    for (n, kind), parts in qkv.items():
        out[f"{_ENC}blocks.{n}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    cls = out.get(_ENC + "cls_token")
    if cls is not None:
        out[_ENC + "register_tokens"] = torch.zeros_like(cls)
    return out


def _read_json(path: Path) -> Optional[dict]:
    try:
        data = json.loads(path.read_text())
    except Exception as exc:
        raise MoGe4DInputError(f"{path}: not a readable JSON config ({exc})") from None
    return data if isinstance(data, dict) else None


def _hub_overrides(weights: Path, folder: Optional[Path]) -> tuple[dict, bool, Optional[Path]]:
    """``(overrides, from_sibling, file)``: the folder's ``config.json``, else one next to the weights file."""
    for cand, sibling in ([(folder / "config.json", False)] if folder else []) + [(weights.parent / "config.json", True)]:
        if cand.is_file():
            data = _read_json(cand)
            if data and ("model" in data or "config" in data):
                return parse_hub_config(data), sibling and folder is None, cand
    return {}, False, None


def load_unidepth(source: Union[str, os.PathLike, Mapping[str, torch.Tensor]], *, dtype: torch.dtype = torch.float32,
                  device: Union[str, torch.device] = "cpu",
                  config: Optional[Union[UniDepthConfig, dict]] = None) -> Union[UniDepthV2, UniDepthV2Old]:
    """Load a published UniDepthV2 / V2old checkpoint (eval mode, no grads); its config is ``model.config``.

    ``source``: a weights file, a folder (``model.safetensors`` or ``pytorch_model.bin`` + optional
    ``config.json``) or a state dict. ``config``: optional overrides (a :class:`UniDepthConfig` or a dict of its
    fields) for anything the weights cannot tell, e.g. ``num_heads`` of a non-standard width.
    The model is built on the meta device and the tensors assigned, then moved to ``device`` / ``dtype``.
    ``model.load_info`` names the file, the format (``cfg.name``) and which ``config.json`` was read.
    """
    sibling, hub_file = False, None
    if isinstance(source, Mapping):
        label, raw, overrides = "state dict", dict(source), {}
        if not all(isinstance(v, torch.Tensor) for v in raw.values()):
            raise MoGe4DInputError("state dict: UniDepth weights must be a mapping of names to tensors")
    else:
        p = Path(source)
        weights = find_weights(p, preferred=PREFERRED_FILES)
        label = str(weights)
        overrides, sibling, hub_file = _hub_overrides(weights, p if p.is_dir() else None)
        raw = load_file_state_dict(weights)
    if not raw:
        raise MoGe4DInputError(f"{label}: the file holds no tensors")
    if isinstance(config, UniDepthConfig):
        config = config.to_dict()
    state = convert_keys(raw)
    try:
        cfg = config_from_state(state, label, {**overrides, **(config or {})})
    except MoGe4DInputError as exc:
        if not (sibling and overrides):
            raise
        # a config.json that merely sits in the same folder (e.g. a models/unidepth/ folder holding several
        # files) and does not describe this file: ignore it and read everything from the weights
        warnings.warn(f"{label}: ignoring the config.json next to it ({exc})")
        cfg = config_from_state(state, label, dict(config or {}))
        hub_file = None
    with torch.device("meta"):
        model = build_unidepth(cfg)
    expected = model.state_dict()
    check_keys(label, cfg.name, expected.keys(), state.keys())
    bad = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}" for k, v in expected.items()
           if tuple(state[k].shape) != tuple(v.shape)]
    if bad:
        raise MoGe4DInputError(f"{label}: {len(bad)} tensors have the wrong shape for {cfg.name}, first: {bad[:5]}")
    floats = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}
    model.load_state_dict(floats, strict=True, assign=True)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    info = LoadInfo(file=label, format=cfg.name, dtype=dtype, files={"config": str(hub_file)} if hub_file else {})
    return with_load_info(model, info)


__all__ = ["load_unidepth", "detect_version", "config_from_state", "convert_keys", "to_published_keys"]
