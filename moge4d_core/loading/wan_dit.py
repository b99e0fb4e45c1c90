"""Loaders for the Wan2.1 DiTs: 4D-STraG (:func:`load_strag`) and the 4D-ViSM base (:func:`load_vism_base`).

Accepted inputs (reference §E, DESIGN §6):

* the official MoGe4D release: ``4D-STraG/diffusion_pytorch_model.safetensors`` (a full DiT in the
  original Wan names, in_dim 64, with optional MPM and ``omnimae_extractor.*`` keys), given as the file,
  the ``4D-STraG`` folder, the ``models`` folder above it, or a training output folder with
  ``checkpoint-N/`` (highest N wins; ``checkpoint-N/transformer/`` too);
* base models as published by VideoX-Fun / Wan (original names; sharded safetensors + index JSON,
  single safetensors, ``.pth``), with their ``config.json`` next to the weights when present;
* ComfyUI repackages: one safetensors, keys possibly prefixed ``model.diffusion_model.`` or
  ``diffusion_model.``, in fp16 / bf16 / fp8_e4m3fn, and fp8-scaled in both ComfyUI layouts: the
  legacy one (``<layer>.scale_weight`` + a ``scaled_fp8`` marker tensor) and the newer one
  (``<layer>.weight_scale``, ``<layer>.comfy_quant`` JSON, ``<layer>.input_scale``);
* GGUF files (``Q8_0``, ``Q6_K``, ``Q5_K_M``, ``Q4_K_M``, ...; ours from ``python -m moge4d_core quantize`` and
  other tools' Wan files): read through diffusers' GGUF support, quantised Linears kept packed as diffusers'
  ``GGUFLinear`` (see :mod:`moge4d_core.loading.gguf`);
* our own training outputs: safetensors whose metadata names the architecture and config
  (:func:`save_wan_dit`, via :func:`moge4d_core.loading.common.save_state_dict`).

The architecture is detected from key names and shapes (``patch_embedding`` in-channels 64 + ``ref_conv``
= STraG, 36 = Fun-InP / I2V, 48 = Fun-Control, 16 = T2V; width 5120 = 14B), unless the file carries our
metadata. The model is built on the meta device and filled with ``load_state_dict(assign=True)``:
tensors read from the file become the parameters (converted one at a time, each source tensor
released after conversion), so a 14B model never exists twice in memory.

``dtype``: float32 / float16 / bfloat16, or float8_e4m3fn / float8_e5m2 for fp8 *storage* of the big
Linear weights (per-tensor scaled, see :mod:`moge4d_core.models.fp8`) with ``compute_dtype``
(bfloat16) for everything else. Scaled-fp8 files are dequantised (``w_fp8 * scale``) for a non-fp8
``dtype`` and kept as they are (fp8 + their scale) for an fp8 ``dtype``. As in diffusers, the timestep
embedder, the AdaLN tables and the affine LayerNorms stay in float32 when ``dtype`` is 16-bit.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch

from ..errors import MoGe4DInputError
from ..models import fp8 as fp8_storage
from ..models.wan_dit.config import (ARCH_CONTROL_V11, ARCH_INP, ARCH_STRAG, ARCHS, KNOWN_WIDTHS, config_to_json,
                                     dit_config, hidden_width)
from ..models.wan_dit.model import STraGDiT, ViSMDiT, WanDiT
from . import wan_keys
from .common import (LoadInfo, check_keys, find_weights, load_file_state_dict, read_arch_config, read_metadata,
                     save_state_dict, strip_prefix, with_load_info)

__all__ = ["load_strag", "load_vism_base", "load_wan_dit", "save_wan_dit", "detect_wan_config",
           "resolve_dit_path", "WanDiTSource", "read_wan_dit_source"]

OMNIMAE_PREFIX = "omnimae_extractor."
MPM_PATTERNS = (re.compile(r"^blocks\.\d+\.spatial_guidance_(self|ffn)\."), re.compile(r"^feature_adapter\."))
PREFERRED_FILES = ("diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.safetensors",
                   "diffusion_pytorch_model.bin.index.json", "diffusion_pytorch_model.bin",
                   "diffusion_pytorch_model.pth")
SUBFOLDERS = ("", "4D-STraG", "transformer", "models/4D-STraG")
ANCHORS = ("patch_embedding.weight", "head.modulation", "time_projection.1.weight", "condition_embedder.time_proj.weight",
           "blocks.0.self_attn.q.weight", "blocks.0.attn1.to_q.weight")
_QUANT_DROP_SUFFIXES = (".scale_input", ".input_scale", ".comfy_quant")
_SCALE_SUFFIXES = (".scale_weight", ".weight_scale")
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

ConfigLike = Optional[Mapping[str, Any]]


# ----------------------------------------------------------------------------------------------- paths
def _checkpoint_dirs(d: Path) -> list[Path]:
    found = []
    for p in d.iterdir() if d.is_dir() else []:
        m = re.fullmatch(r"checkpoint-(\d+)", p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found, reverse=True)]


def _has_weights(d: Path) -> bool:
    if not d.is_dir():
        return False
    return any(f.is_file() and (f.name.endswith(".index.json") or f.suffix in (".safetensors", ".sft", ".pth", ".pt", ".bin"))
               for f in d.iterdir())


def resolve_dit_path(path: Union[str, Path]) -> Path:
    """The weights file (or index JSON) for a DiT given as a file or as one of the folders above."""
    p = Path(path)
    if not p.exists():
        raise MoGe4DInputError(f"{p}: no such file or folder (expected a Wan DiT checkpoint)")
    if p.is_file():
        return p
    roots = [p] + _checkpoint_dirs(p)
    for root in roots:
        for sub in SUBFOLDERS:
            d = root / sub if sub else root
            if _has_weights(d):
                return find_weights(d, preferred=PREFERRED_FILES)
        for ck in _checkpoint_dirs(root) if root is not p else []:
            for sub in SUBFOLDERS:
                d = ck / sub if sub else ck
                if _has_weights(d):
                    return find_weights(d, preferred=PREFERRED_FILES)
    raise MoGe4DInputError(f"{p}: no DiT weights found (looked for diffusion_pytorch_model.safetensors / an index "
                           f"JSON / a single weights file in {p}, {', '.join(s for s in SUBFOLDERS if s)} and "
                           f"checkpoint-N/); pass the weights file itself")


# ----------------------------------------------------------------------------------------------- reading
@dataclass
class WanDiTSource:
    """A DiT state dict read from disk, renamed to diffusers names, quantisation scales separated."""

    file: Path
    state: dict[str, torch.Tensor]              # diffusers names, prefix stripped
    scales: dict[str, torch.Tensor]             # diffusers weight name -> float32 scale (fp8-scaled files)
    extras: dict[str, torch.Tensor]             # omnimae_extractor.* (prefix kept)
    unknown: list[str]                          # keys that are not Wan DiT names
    layout: str                                 # "original" | "diffusers"
    format: str                                 # human-readable format name
    meta_arch: Optional[str] = None
    meta_config: Optional[dict] = None
    json_config: Optional[dict] = None
    metadata: dict = field(default_factory=dict)
    filled: list[str] = field(default_factory=list)     # keys taken from a base checkpoint
    ignored: list[str] = field(default_factory=list)    # keys of the file left out on purpose
    converted: list[str] = field(default_factory=list)  # keys dequantised / quantised on the way
    files: dict[str, str] = field(default_factory=dict)  # further files read, by role

    def load_info(self, dtype: torch.dtype, keep_omnimae: bool = True) -> LoadInfo:
        """What was read, for ``model.load_info``; ``omnimae_state_dict`` holds the ``omnimae_extractor.*``
        tensors (prefix removed) when ``keep_omnimae``."""
        extras: dict[str, Any] = {"metadata": dict(self.metadata)}
        if keep_omnimae:
            extras["omnimae_state_dict"] = strip_prefix(self.extras, OMNIMAE_PREFIX)
        return LoadInfo(file=str(self.file), format=self.format, dtype=dtype, files=dict(self.files),
                        filled_keys=list(self.filled), ignored_keys=sorted(self.extras) + self.ignored,
                        converted_keys=list(self.converted), extras=extras)


def _adjacent_config(file: Path) -> Optional[dict]:
    cfg = file.parent / "config.json"
    if cfg.is_file():
        try:
            d = json.loads(cfg.read_text())
            return d if isinstance(d, dict) else None
        except Exception:
            return None
    return None


def _comfy_quant_format(t: torch.Tensor) -> Optional[str]:
    try:
        raw = bytes(t.detach().cpu().to(torch.uint8).flatten().tolist()).rstrip(b"\x00")
        conf = json.loads(raw.decode("utf-8"))
    except Exception:
        return None
    if isinstance(conf, dict):
        return conf.get("format")
    return conf if isinstance(conf, str) else None


def read_wan_dit_source(path: Union[str, Path], device: str = "cpu") -> WanDiTSource:
    """Read any accepted DiT checkpoint into a :class:`WanDiTSource` (no model is built)."""
    file = resolve_dit_path(path)
    fmt = []
    if file.suffix == ".gguf":              # diffusers' GGUF reader; quantised tensors stay packed (see loading.gguf)
        from .gguf import read_gguf_state

        state, gmeta = read_gguf_state(file)
        meta = {k: v for k, v in gmeta.items() if k.startswith("moge4d.")}
        meta_arch = gmeta.get("moge4d.arch")
        meta_cfg = json.loads(gmeta["moge4d.config"]) if "moge4d.config" in gmeta else None
    else:
        state = load_file_state_dict(file, device=device)
        meta = read_metadata(file) if file.suffix in (".safetensors", ".sft") else {}
        meta_arch, meta_cfg = read_arch_config(file) if meta else (None, None)

    prefix = None
    for anchor in ANCHORS:
        prefix = wan_keys.strip_known_prefix(state.keys(), anchor)
        if prefix is not None:
            break
    if prefix is None:
        shown = sorted(state)[:5]
        raise MoGe4DInputError(f"{file}: not a Wan DiT checkpoint (no 'patch_embedding.weight' / 'head.modulation' / "
                               f"'blocks.0.self_attn.q.weight' key; first keys: {shown}). "
                               f"Check that the file is the diffusion model, not a VAE, text encoder or LoRA.")
    marker = state.pop(prefix + "scaled_fp8", None)
    if marker is None:
        marker = state.pop("scaled_fp8", None)
    if prefix:
        state = strip_prefix(state, prefix)
        fmt.append(f"prefix '{prefix}'")

    # ComfyUI quantisation side tensors
    scales_orig: dict[str, torch.Tensor] = {}
    for k in list(state):
        if k.endswith(".comfy_quant"):
            qf = _comfy_quant_format(state[k])
            if qf is not None and "float8" not in str(qf):
                raise MoGe4DInputError(f"{file}: quantisation format '{qf}' (layer {k[:-len('.comfy_quant')]}) is not "
                                       f"supported; use a bf16/fp16 or fp8(-scaled) file")
        if k.endswith(_QUANT_DROP_SUFFIXES):
            state.pop(k)
    for k in list(state):
        for suf in _SCALE_SUFFIXES:
            if k.endswith(suf):
                scales_orig[k[: -len(suf)] + ".weight"] = state.pop(k).float()
                break
    fp8_count = sum(1 for v in state.values() if fp8_storage.is_fp8(v.dtype))
    if scales_orig or marker is not None:
        fmt.append("ComfyUI fp8-scaled")
    elif fp8_count:
        fmt.append("fp8")

    extras = {k: state.pop(k) for k in list(state) if k.startswith(OMNIMAE_PREFIX)}
    try:
        layout = "original" if wan_keys.is_original_layout(state.keys()) else "diffusers"
    except ValueError:
        layout = "original"
    unknown: list[str] = []
    if layout == "original":
        renamed: dict[str, torch.Tensor] = {}
        for k in list(state):
            try:
                nk = wan_keys.original_to_diffusers(k)
            except KeyError:
                unknown.append(k)
                nk = k
            renamed[nk] = state.pop(k)
        state = renamed
        scales = {}
        for k, v in scales_orig.items():
            try:
                scales[wan_keys.original_to_diffusers(k)] = v
            except KeyError:
                scales[k] = v
    else:
        scales = scales_orig
        for k in state:
            try:
                wan_keys.diffusers_to_original(k)
            except KeyError:
                unknown.append(k)
    if file.name.endswith(".index.json"):
        fmt.insert(0, "sharded safetensors")
    elif file.suffix in (".pth", ".pt", ".bin", ".ckpt", ".torch"):
        fmt.insert(0, "PyTorch pickle")
    else:
        fmt.insert(0, f"GGUF {meta.get('moge4d.quantization', '')}".strip() if file.suffix == ".gguf" else "safetensors")
    if meta_arch:
        fmt.append(f"MoGe4D metadata ({meta_arch})")
    fmt.append(f"{layout} names")
    return WanDiTSource(file=file, state=state, scales=scales, extras=extras, unknown=unknown, layout=layout,
                        format=", ".join(fmt), meta_arch=meta_arch, meta_config=meta_cfg,
                        json_config=_adjacent_config(file), metadata=meta)


# ----------------------------------------------------------------------------------------------- detection
def _shape(state: Mapping[str, torch.Tensor], key: str) -> Optional[tuple]:
    t = state.get(key)
    return None if t is None else _tshape(t)


def _tshape(t: torch.Tensor) -> tuple:
    """The weight's shape; for a packed GGUF tensor its unpacked (quantised) shape."""
    return tuple(getattr(t, "quant_shape", None) or t.shape)


def detect_wan_config(state: Mapping[str, torch.Tensor], file: Union[str, Path] = "<state dict>",
                      json_config: Optional[Mapping] = None, overrides: Optional[Mapping[str, Any]] = None
                      ) -> Mapping[str, Any]:
    """Infer a DiT config (:func:`~moge4d_core.models.wan_dit.config.dit_config`) from a state dict in
    diffusers names; ``overrides`` (either naming) are applied over what the tensors say.

    ``num_heads`` cannot be read from shapes: it comes from ``overrides``, else the ``config.json``
    next to the weights, else the known Wan widths (5120 -> 40 heads, 1536 -> 12), else ``dim // 128``.
    """
    overrides = dict(overrides or {})
    pe = _shape(state, "patch_embedding.weight")
    if pe is None:
        raise MoGe4DInputError(f"{file}: 'patch_embedding.weight' is missing, so the architecture cannot be detected; "
                               f"a partial checkpoint needs base= (load_strag) or a full config=")
    if len(pe) != 5:
        raise MoGe4DInputError(f"{file}: 'patch_embedding.weight' has shape {pe}, expected 5-D; not a Wan2.1 DiT")
    dim, in_dim, patch = pe[0], pe[1], tuple(pe[2:])
    layers = sorted({int(m.group(1)) for k in state if (m := re.match(r"^blocks\.(\d+)\.", k))})
    num_layers = (layers[-1] + 1) if layers else 0
    need = {"blocks.0.ffn.net.0.proj.weight": "ffn", "condition_embedder.text_embedder.linear_1.weight": "text",
            "condition_embedder.time_embedder.linear_1.weight": "time", "proj_out.weight": "head"}
    missing = [k for k in need if k not in state]
    if missing or num_layers == 0:
        orig = [wan_keys.diffusers_to_original(k, strict=False) for k in missing] or ["blocks.0.*"]
        raise MoGe4DInputError(f"{file}: incomplete Wan DiT, missing {orig}; the file may be a partial or "
                               f"delta checkpoint")
    ffn_dim = _tshape(state["blocks.0.ffn.net.0.proj.weight"])[0]
    text_dim = _tshape(state["condition_embedder.text_embedder.linear_1.weight"])[1]
    freq_dim = _tshape(state["condition_embedder.time_embedder.linear_1.weight"])[1]
    out_dim = _tshape(state["proj_out.weight"])[0] // math.prod(patch)
    img = _shape(state, "condition_embedder.image_embedder.norm1.weight")
    image_dim = img[0] if img else None
    ref = _shape(state, "ref_conv.weight")
    ref_in = ref[1] if ref else None
    fa = _shape(state, "feature_adapter.0.weight")
    sg = _shape(state, "blocks.0.spatial_guidance_self.spatial_guide.1.weight")
    mpm_dim = fa[1] if fa else (sg[1] if sg else None)
    cross_attn_norm = "blocks.0.norm2.weight" in state

    num_heads = overrides.pop("num_heads", None)
    if num_heads is None and json_config:
        num_heads = json_config.get("num_heads") or json_config.get("num_attention_heads")
    if num_heads is None and dim in KNOWN_WIDTHS:
        num_heads = KNOWN_WIDTHS[dim][0]
    if num_heads is None and dim % 128 == 0:
        num_heads = dim // 128
    if num_heads is None:
        raise MoGe4DInputError(f"{file}: width {dim} is not a known Wan size; pass config={{'num_heads': N}} "
                               f"or put the model's config.json next to the weights")

    kw: dict[str, Any] = dict(dim=dim, ffn_dim=ffn_dim, num_heads=int(num_heads), num_layers=num_layers,
                              in_dim=in_dim, out_dim=out_dim, text_dim=text_dim, freq_dim=freq_dim,
                              patch_size=patch, cross_attn_norm=cross_attn_norm, image_dim=image_dim,
                              ref_conv_in_dim=ref_in, mpm_feature_dim=mpm_dim)
    if json_config:
        for k in ("text_len", "eps"):
            if k in json_config:
                kw[k] = json_config[k]
    return dit_config(kw, **overrides)


def _describe(cfg: Mapping[str, Any]) -> str:
    dim = hidden_width(cfg)
    size = "14B" if dim == 5120 else ("1.3B" if dim == 1536 else f"dim {dim}")
    extra = []
    if cfg.ref_conv_in_dim:
        extra.append("ref_conv")
    if cfg.image_dim:
        extra.append("CLIP img_emb")
    if cfg.mpm_feature_dim:
        extra.append("MPM")
    return f"{cfg.arch} ({size}, in_dim {cfg.in_channels}{', ' + ', '.join(extra) if extra else ''})"


# ----------------------------------------------------------------------------------------------- building
def _keep_fp32(name: str, keep: tuple[str, ...]) -> bool:
    parts = name.split(".")
    return any(k in parts for k in keep)


def _materialise(model_cls: type, cfg: Mapping[str, Any], src: WanDiTSource, *, dtype: torch.dtype,
                 compute_dtype: torch.dtype, device: Union[str, torch.device], label: str) -> WanDiT:
    """Build ``model_cls`` on the meta device and fill it from ``src`` (consumed); records ``converted_keys``
    on ``src.info``."""
    if dtype not in _FLOAT_DTYPES and not fp8_storage.is_fp8(dtype):
        raise MoGe4DInputError(f"dtype must be float32, float16, bfloat16 or an fp8 dtype, got {dtype}")
    if compute_dtype not in _FLOAT_DTYPES:
        raise MoGe4DInputError(f"compute_dtype must be float32, float16 or bfloat16, got {compute_dtype}")
    fp8 = fp8_storage.is_fp8(dtype)
    cdtype = compute_dtype if fp8 else dtype
    with torch.device("meta"):
        model = model_cls(**cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = list(src.state.keys())
    orig = lambda ks: [wan_keys.diffusers_to_original(k, strict=False) for k in ks]  # noqa: E731
    try:
        check_keys(src.file, label, orig(expected), orig(found))
    except MoGe4DInputError as exc:
        raise MoGe4DInputError(f"{exc} Detected architecture: {_describe(cfg)}; format: {src.format}.") from None
    for k, t in src.state.items():
        if _tshape(t) != expected[k]:
            raise MoGe4DInputError(f"{src.file}: tensor '{wan_keys.diffusers_to_original(k, strict=False)}' has shape "
                                   f"{tuple(t.shape)}, {label} ({_describe(cfg)}) expects {expected[k]}")

    keep = tuple(model._keep_in_fp32_modules or ()) if cdtype in (torch.float16, torch.bfloat16) else ()
    fp8_linears = set(fp8_storage.fp8_eligible_linear_names(model)) if fp8 else set()
    from .gguf import is_gguf_tensor

    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    gguf_state: dict[str, torch.Tensor] = {}
    if fp8 and any(is_gguf_tensor(t) for t in src.state.values()):
        raise MoGe4DInputError(f"{src.file}: GGUF weights are already quantised; load them with a float dtype "
                               f"(bf16 / fp16 / fp32 compute), not fp8 storage")
    fp8_scales: dict[str, torch.Tensor] = {}
    dev = torch.device(device)
    new_state: dict[str, torch.Tensor] = {}
    for k in list(src.state):
        t = src.state.pop(k)  # release the source tensor as soon as it is converted
        if is_gguf_tensor(t):
            module_name = k[: -len(".weight")] if k.endswith(".weight") else None
            if module_name in linears:      # stays packed: diffusers' GGUFLinear dequantises per forward
                gguf_state[k] = t.to(device)
                continue
            from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

            t = dequantize_gguf_tensor(t).float()       # e.g. a quantised convolution from another tool
            src.converted.append(k)
        scale = src.scales.get(k)
        module_name = k[: -len(".weight")] if k.endswith(".weight") else None
        if fp8 and module_name in fp8_linears:
            if fp8_storage.is_fp8(t.dtype):
                fp8_scales[module_name] = scale if scale is not None else torch.ones(())
                out = t
            else:
                if scale is not None:
                    t = t.float() * scale
                out, s = fp8_storage.quantize_fp8(t, dtype)
                fp8_scales[module_name] = s
                src.converted.append(k)
        else:
            if scale is not None or fp8_storage.is_fp8(t.dtype):
                t = t.float() * (scale if scale is not None else 1.0)
                src.converted.append(k)
            out = t.to(torch.float32 if _keep_fp32(k, keep) else cdtype)
        out = out.to(dev)
        if out.device.type == "cpu" and out.data_ptr() % 64:
            # safetensors hands out views of the mapped file at arbitrary byte offsets; CPU kernels pick
            # different code paths for unaligned data, so copy into an aligned buffer (same results as
            # a model built in memory, and faster CPU matmuls).
            out = out.clone()
        new_state[k] = out
        del t, out
    if gguf_state:
        from diffusers.quantizers.gguf.utils import _replace_with_gguf_linear

        _replace_with_gguf_linear(model, cdtype, gguf_state)
        missing, unexpected = model.load_state_dict(new_state, strict=False, assign=True)
        if set(missing) != set(gguf_state) or unexpected:
            raise RuntimeError(f"internal: GGUF load left {sorted(set(missing) - set(gguf_state))[:5]} / {unexpected[:5]}")
        modules = dict(model.named_modules())
        for k, t in gguf_state.items():
            modules[k[: -len(".weight")]]._parameters["weight"] = t
        del gguf_state
    else:
        model.load_state_dict(new_state, strict=True, assign=True)
    del new_state
    model.reset_rope(dev)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.device.type == "meta"]
    if left:
        raise RuntimeError(f"internal: tensors left on the meta device after loading: {left[:5]}")
    if fp8:
        fp8_storage.enable_fp8_storage(model, compute_dtype=cdtype, storage_dtype=dtype, scaled=True, scales=fp8_scales)
    model.eval()
    return model


def _resolve_config(src: WanDiTSource, config: ConfigLike) -> Mapping[str, Any]:
    overrides = dict(config or {})
    if src.meta_arch is not None and src.meta_arch not in ARCHS:
        raise MoGe4DInputError(f"{src.file}: this file is a MoGe4D '{src.meta_arch}' checkpoint, not a Wan DiT "
                               f"(expected one of {ARCHS})")
    if src.meta_config:
        # our metadata: the constructor arguments, or (files written before v0.x) the Wan names; both convert
        d = dict(src.meta_config)
        d.setdefault("arch", src.meta_arch)
        return dit_config(d, **overrides)
    return detect_wan_config(src.state, src.file, src.json_config, overrides)


def _drop_mpm(src: WanDiTSource) -> None:
    ks = [k for k in src.state if any(p.match(k) for p in MPM_PATTERNS)]
    for k in ks:
        src.state.pop(k)
    src.ignored.extend(ks)


def load_wan_dit(path: Union[str, Path], *, dtype: torch.dtype = torch.bfloat16, device: Union[str, torch.device] = "cpu",
                 compute_dtype: torch.dtype = torch.bfloat16, config: ConfigLike = None,
                 expect: Optional[tuple[str, ...]] = None) -> WanDiT:
    """Load any supported Wan2.1 DiT (class chosen by architecture), with ``model.load_info``
    (:class:`~moge4d_core.loading.common.LoadInfo`)."""
    src = read_wan_dit_source(path)
    cfg = _resolve_config(src, config)
    if expect is not None and cfg.arch not in expect:
        raise MoGe4DInputError(f"{src.file}: expected {' or '.join(expect)}, found {_describe(cfg)}")
    cls = STraGDiT if cfg.arch == ARCH_STRAG else (ViSMDiT if cfg.arch == ARCH_INP else WanDiT)
    model = _materialise(cls, cfg, src, dtype=dtype, compute_dtype=compute_dtype, device=device, label=cfg.arch)
    return with_load_info(model, src.load_info(dtype))


def load_strag(path: Union[str, Path], *, dtype: torch.dtype = torch.bfloat16, device: Union[str, torch.device] = "cpu",
               base: Optional[Union[str, Path]] = None, mpm: bool = True, compute_dtype: torch.dtype = torch.bfloat16,
               config: ConfigLike = None, mpm_alignment: Optional[str] = None, keep_omnimae: bool = True
               ) -> STraGDiT:
    """Load the 4D-STraG DiT, with what was read in ``model.load_info``.

    ``path``: the STraG checkpoint in any accepted format (see the module docstring).
    ``base``: optional Wan2.1-Fun-V1.1-14B-Control checkpoint; keys missing from ``path`` are taken
    from it (as the official ``load_state_dict(strict=False)`` over the base model does), its 48-channel
    ``patch_embedding`` widened to 64 with zeros in channels 48..63 (the official training init).
    ``mpm``: keep the Motion Perception Module when the file has its weights (``False`` drops them).
    ``config``: fields overriding detection, in either naming (``{"num_heads": 40}``; see
    :func:`~moge4d_core.models.wan_dit.config.dit_config`). The model's config is ``model.config``.
    ``mpm_alignment``: override; default = the file's metadata (our checkpoints) else ``"official"``.
    ``keep_omnimae``: keep the file's ``omnimae_extractor.*`` tensors (prefix removed; empty if absent) in
    ``model.load_info.extras["omnimae_state_dict"]`` (pop them from there once used, to free them).

    ``model.load_info``: ``filled_keys`` = tensors taken from ``base``; ``ignored_keys`` = the file's
    ``omnimae_extractor.*`` tensors and, with ``mpm=False``, its MPM tensors; ``extras["metadata"]`` = the
    safetensors metadata.
    """
    src = read_wan_dit_source(path)
    if base is not None:
        _fill_from_base(src, base)
    if not mpm:
        _drop_mpm(src)
    cfg = _resolve_config(src, config)
    if not mpm:
        cfg = dit_config(cfg, mpm_feature_dim=None)
    if cfg.arch != ARCH_STRAG:
        hint = ""
        if cfg.arch == ARCH_CONTROL_V11:
            hint = (" This is the Wan2.1-Fun-V1.1-Control base model; pass the 4D-STraG checkpoint as path "
                    "and this file as base=.")
        elif cfg.arch == ARCH_INP:
            hint = " This looks like the Wan2.1-Fun-InP base of 4D-ViSM; use load_vism_base."
        raise MoGe4DInputError(f"{src.file}: expected a 4D-STraG DiT (in_dim 64 with ref_conv), found "
                               f"{_describe(cfg)}.{hint}")
    if mpm_alignment is not None:
        cfg = dit_config(cfg, mpm_alignment=mpm_alignment)
    model = _materialise(STraGDiT, cfg, src, dtype=dtype, compute_dtype=compute_dtype, device=device,
                         label="4D-STraG")
    return with_load_info(model, src.load_info(dtype, keep_omnimae))


def _fill_from_base(src: WanDiTSource, base: Union[str, Path]) -> None:
    bsrc = read_wan_dit_source(base)
    if bsrc.scales or any(fp8_storage.is_fp8(t.dtype) for t in bsrc.state.values()):
        for k in list(bsrc.state):
            t = bsrc.state[k]
            s = bsrc.scales.get(k)
            if s is not None or fp8_storage.is_fp8(t.dtype):
                bsrc.state[k] = t.float() * (s if s is not None else 1.0)
    pe = bsrc.state.get("patch_embedding.weight")
    if pe is None or pe.shape[1] not in (48, 64) or "ref_conv.weight" not in bsrc.state:
        raise MoGe4DInputError(f"{bsrc.file}: base must be Wan2.1-Fun-V1.1-Control (patch_embedding with 48 input "
                               f"channels and ref_conv); found in_dim {None if pe is None else pe.shape[1]}")
    if pe.shape[1] == 48:
        wide = pe.new_zeros(pe.shape[0], 64, *pe.shape[2:])
        wide[:, :48] = pe
        bsrc.state["patch_embedding.weight"] = wide
    for k, v in bsrc.state.items():
        if k not in src.state:
            src.state[k] = v
            src.filled.append(k)
    src.files["base"] = str(bsrc.file)


def load_vism_base(path: Union[str, Path], *, dtype: torch.dtype = torch.bfloat16,
                   device: Union[str, torch.device] = "cpu", compute_dtype: torch.dtype = torch.bfloat16,
                   config: ConfigLike = None) -> ViSMDiT:
    """Load the 4D-ViSM base DiT (Wan2.1-Fun-V1.1-14B-InP, or the same-layout Wan2.1-I2V-14B).

    Accepts the VideoX-Fun / Wan layouts, ComfyUI repackages (incl. fp8 / fp8-scaled) and our own
    outputs; what was read is in ``model.load_info``. The ViSM LoRA is applied separately.
    """
    src = read_wan_dit_source(path)
    cfg = _resolve_config(src, config)
    if cfg.arch != ARCH_INP:
        hint = " This is a 4D-STraG checkpoint; use load_strag." if cfg.arch == ARCH_STRAG else ""
        raise MoGe4DInputError(f"{src.file}: expected a Wan2.1-Fun-InP / I2V DiT (in_dim 36 with CLIP img_emb), "
                               f"found {_describe(cfg)}.{hint}")
    model = _materialise(ViSMDiT, cfg, src, dtype=dtype, compute_dtype=compute_dtype, device=device,
                         label="4D-ViSM base (Wan2.1-Fun-InP)")
    return with_load_info(model, src.load_info(dtype))


# ----------------------------------------------------------------------------------------------- saving
def save_wan_dit(model: WanDiT, path: Union[str, Path], *, extra_tensors: Optional[Mapping[str, torch.Tensor]] = None,
                 extra_metadata: Optional[Mapping[str, str]] = None) -> Path:
    """Write ``model`` as safetensors in the original Wan names with our metadata (``model.config``: arch +
    constructor arguments).

    The config includes ``mpm_alignment``: a model trained with the corrected MPM alignment must have
    ``model.set_mpm_alignment("corrected")`` before saving, so the loaders use it again.

    ``extra_tensors`` (e.g. ``{"omnimae_extractor.<k>": t}``) are stored as given. fp8-stored models are
    refused (their scales are not part of the state dict); save before enabling fp8 storage.
    """
    cfg = model.config
    state = {}
    for k, v in model.state_dict().items():
        if fp8_storage.is_fp8(v.dtype):
            raise MoGe4DInputError(f"save_wan_dit: '{k}' is stored in fp8; save the model before enabling fp8 storage")
        state[wan_keys.diffusers_to_original(k)] = v.detach().cpu()
    for k, v in (extra_tensors or {}).items():
        state[k] = v.detach().cpu()
    if cfg.arch not in ARCHS:
        raise MoGe4DInputError(f"save_wan_dit: unknown architecture {cfg.arch!r}; expected one of {ARCHS}")
    return save_state_dict(state, path, arch=cfg.arch, config=config_to_json(cfg), extra_metadata=extra_metadata)
