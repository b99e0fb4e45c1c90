"""Load the umT5-XXL text encoder (and its tokenizer) from the files users have.

Accepted weight files (format detected from the key names, any common prefix tolerated):

* ``wan``: Wan's original ``models_t5_umt5-xxl-enc-bf16.pth`` (``T5Encoder`` state dict):
  ``token_embedding.weight``, ``blocks.N.{norm1,norm2}.weight``, ``blocks.N.attn.{q,k,v,o}.weight``,
  ``blocks.N.pos_embedding.embedding.weight``, ``blocks.N.ffn.{gate.0,fc1,fc2}.weight``, ``norm.weight``
  (also as safetensors, e.g. re-saved copies with the same names).
* ``hf``: the transformers T5 encoder layout, which ComfyUI's ``umt5_xxl_fp16.safetensors`` uses:
  ``shared.weight``, ``encoder.block.N.layer.0.SelfAttention.{q,k,v,o,relative_attention_bias}.weight``,
  ``encoder.block.N.layer.{0,1}.layer_norm.weight``, ``encoder.block.N.layer.1.DenseReluDense.{wi_0,wi_1,wo}.weight``,
  ``encoder.final_layer_norm.weight``; optional ``encoder.embed_tokens.weight`` and a ``spiece_model``
  uint8 tensor (the SentencePiece tokenizer, used when no tokenizer folder is given). Decoder /
  ``lm_head`` keys of a full HF UMT5 checkpoint are ignored.
* ``hf`` + fp8: ComfyUI's ``umt5_xxl_fp8_e4m3fn_scaled.safetensors``: a ``scaled_fp8`` marker tensor,
  linear weights in ``float8_e4m3fn`` with a float32 ``<layer>.scale_weight`` (optional
  ``<layer>.scale_input``, unused here). Dequantised as ``W = weight.float() * scale_weight``. The newer
  ComfyUI spelling ``<layer>.weight_scale`` (+ ``<layer>.comfy_quant``, ``input_scale``) is read the
  same way; fp8 tensors without a scale are plain casts (NaN codes -> 0, as ComfyUI's ``nan_to_num``).

Wan -> transformers name map (``UMT5EncoderModel``): token_embedding -> shared; norm1 ->
layer.0.layer_norm; attn.{q,k,v,o} -> layer.0.SelfAttention.{q,k,v,o}; pos_embedding.embedding ->
layer.0.SelfAttention.relative_attention_bias; norm2 -> layer.1.layer_norm; ffn.gate.0 (the GELU
branch) -> layer.1.DenseReluDense.wi_0; ffn.fc1 -> wi_1; ffn.fc2 -> wo; norm -> encoder.final_layer_norm.

The architecture is read from the tensors (vocab, width, heads from the relative-bias table, FFN
width, layer count), so tiny test checkpoints load through the same code. The model is built on the
meta device and the converted tensors are assigned, so the weights are never held twice.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, Mapping, Optional

import torch

from ..errors import MoGe4DInputError
from ..models.text import SentencePieceT5Tokenizer, build_umt5_encoder, umt5_config
from .common import LoadInfo, check_keys, find_weights, load_file_state_dict, with_load_info

__all__ = ["detect_text_format", "convert_text_state_dict", "load_umt5_tokenizer", "load_text_encoder",
           "find_prefix", "dequantize_fp8", "split_quantised", "build_with_weights"]

ARCH = "umT5-XXL text encoder"
_WAN_MARKER = "blocks.0.attn.q.weight"
_HF_MARKER = "encoder.block.0.layer.0.SelfAttention.q.weight"
_FP8 = tuple(getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz")
             if hasattr(torch, n))
_SCALE_SUFFIXES = (".scale_weight", ".weight_scale")
_AUX_SUFFIXES = (".scale_input", ".input_scale", ".comfy_quant")


# ----------------------------------------------------------------------------------- shared helpers
def find_prefix(keys, marker: str, companion: Optional[str] = None) -> Optional[str]:
    """The prefix ``p`` such that ``p + marker`` is a key (and ``p + companion`` too, if given); shortest wins."""
    keys = set(keys)
    found = [k[: len(k) - len(marker)] for k in keys if k.endswith(marker)]
    found = [p for p in found if (p == "" or p.endswith(".")) and (companion is None or p + companion in keys)]
    return min(found, key=len) if found else None


def dequantize_fp8(weight: torch.Tensor, scale: Optional[torch.Tensor], name: str, file) -> torch.Tensor:
    """float32 ``weight * scale`` for a scaled-fp8 tensor (per-tensor or per-output-row scale)."""
    w = weight.float()
    if scale is None:
        return w
    s = scale.float()
    if s.numel() == 1:
        return w * s.reshape(())
    if w.ndim == 2 and s.numel() == w.shape[0]:
        return w * s.reshape(-1, 1)
    raise MoGe4DInputError(
        f"{file}: tensor '{name}' has a quantisation scale of shape {tuple(scale.shape)} for a weight of shape "
        f"{tuple(weight.shape)}; only per-tensor or per-row fp8 scaling is supported. Use the fp16 / bf16 file.")


def split_quantised(state: dict, file, dtype: torch.dtype = torch.float32, device="cpu") -> tuple[dict, list[str]]:
    """Dequantise ComfyUI scaled-fp8 tensors to ``dtype`` on ``device``; drop markers and input scales.

    Consumes ``state`` tensor by tensor, so a 5.7 B-parameter file never exists in float32 at once.
    Returns ``(state, notes)`` where notes name the quantisation found ("scaled_fp8", "fp8").
    """
    notes = []
    if "scaled_fp8" in state:
        notes.append("scaled_fp8")
    out = {}
    scales = {}
    for k in list(state):
        for suf in _SCALE_SUFFIXES:
            if k.endswith(suf):
                scales[k[: -len(suf)] + ".weight"] = state.pop(k)
    for k in list(state):
        if k == "scaled_fp8" or k.endswith(_AUX_SUFFIXES):
            state.pop(k)
            continue
        t = state.pop(k)
        s = scales.pop(k, None)
        if t.dtype in _FP8:
            w = dequantize_fp8(t.to(device), None if s is None else s.to(device), k, file)
            # an fp8 NaN code (e.g. an out-of-range value cast without saturation) becomes 0, as ComfyUI's
            # nan_to_num on the fp8 embedding output does
            out[k] = torch.nan_to_num(w, nan=0.0).to(dtype)
            if "fp8" not in notes:
                notes.append("fp8")
        elif s is not None:
            raise MoGe4DInputError(
                f"{file}: tensor '{k}' has a quantisation scale but is stored as {t.dtype} (not fp8); this "
                f"quantisation format is not supported. Use the fp16 / bf16 or fp8_e4m3fn_scaled file.")
        else:
            out[k] = t
    if scales:
        raise MoGe4DInputError(f"{file}: quantisation scales without weights: {sorted(scales)[:5]}")
    return out, notes


def build_with_weights(factory: Callable[[], torch.nn.Module], state: dict, file, arch: str, *,
                       dtype: torch.dtype, device, aliases: Optional[Mapping[str, str]] = None) -> torch.nn.Module:
    """Build ``factory()`` with parameters on the meta device, check the keys, assign ``state`` cast to dtype/device.

    ``state`` is consumed (tensors are cast one by one, so the weights are never held twice).
    ``aliases`` maps a parameter name to the ``state`` key whose (cast) tensor it shares, for tied weights.
    Buffers are created normally (accelerate ``init_empty_weights(include_buffers=False)``), so
    non-persistent buffers such as position ids stay valid.
    Raises :class:`MoGe4DInputError` naming the file, ``arch`` and the first missing / unexpected keys.
    """
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        model = factory()
    expected = set(model.state_dict().keys())
    aliases = {a: src for a, src in (aliases or {}).items() if src in state and a in expected}
    check_keys(file, arch, expected, set(state.keys()) | set(aliases))
    cast = {}
    for k in list(state):
        t = state.pop(k)
        cast[k] = t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)
    for a, src in aliases.items():
        cast[a] = cast[src]
    model.load_state_dict(cast, strict=True, assign=True)
    del cast
    return model.to(device).eval()


# ----------------------------------------------------------------------------------- format + map
def detect_text_format(state: Mapping[str, torch.Tensor]) -> tuple[str, str]:
    """``("wan" | "hf", prefix)`` from the key names, or raise :class:`MoGe4DInputError`."""
    keys = list(state.keys())
    p = find_prefix(keys, _WAN_MARKER, "blocks.0.pos_embedding.embedding.weight")
    if p is not None:
        return "wan", p
    p = find_prefix(keys, _HF_MARKER)
    if p is not None:
        return "hf", p
    raise MoGe4DInputError(
        f"does not look like a umT5 text encoder: found neither '{_WAN_MARKER}' (Wan original "
        f"models_t5_umt5-xxl-enc-bf16.pth) nor '{_HF_MARKER}' (umt5_xxl_fp16 / fp8_scaled safetensors). "
        f"First keys: {sorted(keys)[:5]}")


_WAN_BLOCK = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
_WAN_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


def _wan_to_hf(state: dict) -> dict:
    out = {}
    for k, v in state.items():
        if k == "token_embedding.weight":
            out["shared.weight"] = v
        elif k == "norm.weight":
            out["encoder.final_layer_norm.weight"] = v
        else:
            m = _WAN_BLOCK_RE.match(k)
            rest = _WAN_BLOCK.get(m.group(2)) if m else None
            out[f"encoder.block.{m.group(1)}.{rest}" if rest else f"<unmapped>.{k}"] = v
    return out


def convert_text_state_dict(state: dict, file="<state dict>", *, dtype: torch.dtype = torch.float32,
                            device="cpu") -> tuple[dict, str, Optional[bytes]]:
    """Any accepted layout -> transformers ``UMT5EncoderModel`` names.

    Unquantised tensors keep their stored dtype; fp8 ones are dequantised to ``dtype`` on ``device``.
    Returns ``(state, format description, spiece_model bytes or None)``. Consumes ``state``.
    """
    try:
        fmt, prefix = detect_text_format(state)
    except MoGe4DInputError as exc:
        raise MoGe4DInputError(f"{file}: {exc}") from None
    spiece = state.pop("spiece_model", None)
    spiece = spiece.cpu().numpy().tobytes() if isinstance(spiece, torch.Tensor) else None
    state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) or k == "scaled_fp8"}
    state, notes = split_quantised(state, file, dtype=dtype, device=device)
    if fmt == "wan":
        state = _wan_to_hf(state)
    else:
        for k in [k for k in state if k.startswith(("decoder.", "lm_head."))]:
            del state[k]
        emb = state.pop("encoder.embed_tokens.weight", None)
        if "shared.weight" not in state and emb is not None:
            state["shared.weight"] = emb
    desc = fmt + ("+" + "+".join(notes) if notes else "")
    return state, desc, spiece


def _infer_config(state: Mapping[str, torch.Tensor], file, desc: str):
    try:
        vocab, d_model = state["shared.weight"].shape
        layers = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"encoder\.block\.(\d+)\.", k)))
        buckets, heads = state["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"].shape
        inner = state["encoder.block.0.layer.0.SelfAttention.q.weight"].shape[0]
        d_ff = state["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"].shape[0]
    except (KeyError, ValueError) as exc:
        missing = [k for k in ("shared.weight", "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                               "encoder.block.0.layer.0.SelfAttention.q.weight",
                               "encoder.block.0.layer.1.DenseReluDense.wi_0.weight") if k not in state]
        raise MoGe4DInputError(f"{file} (detected format {desc}): cannot read the encoder size; missing keys "
                               f"{missing[:5] or [str(exc)]}") from None
    if layers > 1 and "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" not in state:
        raise MoGe4DInputError(
            f"{file}: this is a T5 v1.1 encoder (one shared relative-position table, vocab {vocab}; e.g. t5xxl for "
            f"Flux / SD3), not umT5-XXL. The Wan models need umt5_xxl_fp16.safetensors, "
            f"umt5_xxl_fp8_e4m3fn_scaled.safetensors or models_t5_umt5-xxl-enc-bf16.pth.")
    return umt5_config(vocab_size=int(vocab), d_model=int(d_model), num_layers=int(layers), num_heads=int(heads),
                       d_kv=int(inner) // int(heads), d_ff=int(d_ff), relative_attention_num_buckets=int(buckets))


# ----------------------------------------------------------------------------------- tokenizer
_TOKENIZER_HELP = ("the google/umt5-xxl tokenizer files (tokenizer.json + tokenizer_config.json, or spiece.model), "
                   "e.g. the 'google/umt5-xxl' folder shipped with Wan2.1 / Wan2.1-Fun")


def _check_umt5_tokenizer(tok, source) -> None:
    pad = getattr(tok, "pad_token_id", None)
    eos = getattr(tok, "eos_token_id", None)
    if pad != 0 or eos != 1:
        raise MoGe4DInputError(
            f"{source}: not a umT5 tokenizer (pad id {pad}, end-of-sequence id {eos}; umT5 uses pad 0 and </s> 1). "
            f"Give {_TOKENIZER_HELP}.")


def load_umt5_tokenizer(tokenizer_dir: str | os.PathLike):
    """A tokenizer from a local folder (never the hub): HF files via ``AutoTokenizer``, else ``spiece.model``."""
    p = Path(tokenizer_dir)
    if not p.exists():
        raise MoGe4DInputError(f"tokenizer folder not found: {p}. Put {_TOKENIZER_HELP} there.")
    if p.is_file():
        if p.suffix != ".model":
            raise MoGe4DInputError(f"{p}: expected a tokenizer folder or a SentencePiece .model file")
        tok = SentencePieceT5Tokenizer(p.read_bytes(), source=str(p))
        _check_umt5_tokenizer(tok, p)
        return tok
    hf_files = [n for n in ("tokenizer.json", "tokenizer_config.json") if (p / n).is_file()]
    spm = p / "spiece.model"
    error = None
    if hf_files:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
        except Exception as exc:  # e.g. a spiece-only folder on a system without protobuf
            tok, error = None, exc
        if tok is not None:
            _check_umt5_tokenizer(tok, p)
            return tok
    if spm.is_file():
        tok = SentencePieceT5Tokenizer(spm.read_bytes(), source=str(spm))
        _check_umt5_tokenizer(tok, spm)
        return tok
    present = sorted(x.name for x in p.iterdir())[:8]
    why = f" (transformers could not read it: {error})" if error else ""
    raise MoGe4DInputError(f"{p}: no usable tokenizer{why}. Found {present}; expected {_TOKENIZER_HELP}.")


# ----------------------------------------------------------------------------------- loader
def load_text_encoder(path: str | os.PathLike, tokenizer_dir: str | os.PathLike | None = None, *,
                      dtype: torch.dtype = torch.bfloat16, device="cpu"):
    """Load umT5 weights + tokenizer -> ``(UMT5EncoderModel in eval mode on device/dtype, tokenizer)``.

    path: weights file or folder (Wan ``.pth``, ComfyUI fp16 / fp8-scaled safetensors, sharded index).
    tokenizer_dir: folder with the google/umt5-xxl tokenizer (or a ``spiece.model``); when None the
    ``spiece_model`` tensor embedded in ComfyUI's files is used, else an error says what to pass.
    The tokenizer is a second object, not loading info; ``model.load_info`` names the weights file, the detected
    format (e.g. ``hf+scaled_fp8``) and the tokenizer source (``files["tokenizer"]``).
    """

    file = find_weights(path)
    tokenizer = load_umt5_tokenizer(tokenizer_dir) if tokenizer_dir is not None else None  # cheap: fail early
    state = load_file_state_dict(file)
    state, desc, spiece = convert_text_state_dict(state, file, dtype=dtype, device=device)
    config = _infer_config(state, file, desc)
    arch = f"{ARCH} (detected format {desc})"
    if tokenizer is None:
        if spiece is None:
            raise MoGe4DInputError(
                f"{file}: holds no tokenizer; pass tokenizer_dir= a folder with {_TOKENIZER_HELP}.")
        tokenizer = SentencePieceT5Tokenizer(spiece, source=f"{file} (embedded spiece_model)")
        _check_umt5_tokenizer(tokenizer, f"{file} (embedded spiece_model)")
    if len(tokenizer) > config.vocab_size:
        raise MoGe4DInputError(
            f"tokenizer ({tokenizer_dir or 'embedded'}) has {len(tokenizer)} tokens but {file} embeds only "
            f"{config.vocab_size}; they do not belong together. Give {_TOKENIZER_HELP}.")

    model = build_with_weights(lambda: build_umt5_encoder(config), state, file, arch, dtype=dtype, device=device,
                               aliases={"encoder.embed_tokens.weight": "shared.weight"})  # tied in UMT5EncoderModel
    emb = getattr(getattr(model, "encoder", None), "embed_tokens", None)
    if emb is not None and emb.weight is not model.shared.weight:
        emb.weight = model.shared.weight   # one Parameter, so .to() never duplicates the 2 GB table
    tok_source = str(tokenizer_dir) if tokenizer_dir is not None else f"{file} (embedded spiece_model)"
    info = LoadInfo(file=str(file), format=desc, dtype=dtype, files={"tokenizer": tok_source})
    return with_load_info(model, info), tokenizer

