"""GGUF weights for the Wan DiTs (4D-STraG, the 4D-ViSM base): write (``python -m moge4d_core quantize``) and read.

**Types** (:data:`GGUF_TYPES`): ``Q8_0``, ``Q6_K``, ``Q5_K_M``, ``Q4_K_M`` (plus ``Q5_K`` / ``Q4_K`` without the mix,
``F16``, ``BF16``). The ``_M`` types follow llama.cpp's mix: the value projection (``self_attn.v``) and the FFN
output (``ffn.2``) of the blocks llama.cpp's ``use_more_bits`` picks (first and last eighth, every third one in
between) are stored in ``Q6_K``, the other quantised weights in ``Q5_K`` / ``Q4_K``.

**What is quantised**: the weights of the ``nn.Linear`` layers that fp8 storage also takes
(:func:`moge4d_core.models.fp8.fp8_eligible_linear_names`: the attention, FFN, MPM linears of the blocks) whose
input width is a multiple of the type's block (256 for K types, 32 for Q8_0; every 14B Linear is). Everything else
(embedders, head, convolutions, norms, biases, modulation tables) stays as it is stored: float32 for 1-D tensors and
the float32-kept modules, else bf16 (what the release ships). Names are the original Wan names (as ComfyUI-GGUF's Wan
files), with our metadata (``moge4d.arch``, ``moge4d.config``) so the loader needs no detection.

**Writing**: the ``gguf`` package (``gguf.GGUFWriter``; its ``quants.quantize`` for Q8_0 / BF16). gguf-py has no
quantiser for the K types (``NotImplementedError`` in 0.19), so :func:`quantize_k` writes their blocks here
(scales chosen by min/max per sub-block, the ggml block layout); they are read back with gguf's own
``quants.dequantize`` in the tests. Tensors are quantised and written one at a time after a header computed from
the shapes, into a temporary file renamed at the end (nothing half-written).

**Reading** (:func:`read_gguf_state`): diffusers' GGUF support: ``load_gguf_checkpoint`` reads the file into
``GGUFParameter`` tensors, and the quantised Linear layers become diffusers' ``GGUFLinear`` (dequantise on the fly
in the compute dtype; diffusers' CUDA kernels when installed) through ``_replace_with_gguf_linear``. diffusers'
own entry points (``from_single_file(..., quantization_config=GGUFQuantizationConfig(...))``) are not used: they
build the model from a diffusers config found by checkpoint type (a Hub download, and no Hub config has STraG's
``ref_conv`` / MPM or our ``arch``) and rename keys with diffusers' Wan converter, which knows none of the MoGe4D
modules; our loader (:mod:`moge4d_core.loading.wan_dit`) does both and calls diffusers' GGUF layer for the weights.
A quantised tensor of a module that is not a Linear (other tools quantise convolutions too) is dequantised at load.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import numpy as np
import torch

from ..errors import MoGe4DInputError

__all__ = ["GGUF_TYPES", "BITS_PER_WEIGHT", "quantize_k", "quantize_tensor", "plan_types", "gguf_sizes", "write_gguf_dit",
           "quantize_file", "read_gguf_state", "is_gguf_tensor", "gguf_linear_names", "add_quantize_arguments",
           "cmd_quantize"]

K_BLOCK = 256
GGUF_TYPES = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q5_K", "Q4_K", "BF16", "F16")
# bytes per block / weights per block (ggml): Q8_0 34/32, Q6_K 210/256, Q5_K 176/256, Q4_K 144/256
BITS_PER_WEIGHT = {"Q8_0": 8.5, "Q6_K": 6.5625, "Q5_K": 5.5, "Q4_K": 4.5, "BF16": 16.0, "F16": 16.0, "F32": 32.0}
_ARCH_KEY, _CONFIG_KEY, _TYPE_KEY = "moge4d.arch", "moge4d.config", "moge4d.quantization"


def _gguf():
    try:
        import gguf
    except ImportError:
        raise MoGe4DInputError("GGUF needs the 'gguf' package: pip install 'gguf>=0.10'") from None
    return gguf


# ------------------------------------------------------------------------------------------------ quantisers
def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16)


def _scale_min_bytes(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """8 six-bit scales and mins per block -> the 12 packed bytes of Q4_K / Q5_K (ggml ``get_scale_min_k4``)."""
    sc, mn = sc.astype(np.uint8), mn.astype(np.uint8)
    out = np.empty((sc.shape[0], 12), np.uint8)
    out[:, 0:4] = (sc[:, 0:4] & 63) | ((sc[:, 4:8] >> 4) << 6)
    out[:, 4:8] = (mn[:, 0:4] & 63) | ((mn[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:8] & 15) | ((mn[:, 4:8] & 15) << 4)
    return out


def _quant_asym(x: np.ndarray, nmax: int) -> tuple[np.ndarray, ...]:
    """Q4_K / Q5_K: ``x ~= d*sc*q - dmin*m`` per 32-wide sub-block, q in [0, nmax], 6-bit sc and m."""
    n = x.shape[0]
    sub = x.reshape(n, 8, 32)
    lo = np.minimum(sub.min(-1), 0.0)
    hi = sub.max(-1)
    scale = (hi - lo) / nmax                                   # (n, 8)
    mins = -lo
    d = _f16(scale.max(-1) / 63.0)
    dmin = _f16(mins.max(-1) / 63.0)
    df, dmf = d.astype(np.float32), dmin.astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.where(df[:, None] > 0, np.rint(scale / df[:, None]), 0).clip(0, 63)
        mn = np.where(dmf[:, None] > 0, np.rint(mins / dmf[:, None]), 0).clip(0, 63)
        eff = (df[:, None] * sc)[..., None]
        off = (dmf[:, None] * mn)[..., None]
        q = np.where(eff > 0, np.rint((sub + off) / eff), 0).clip(0, nmax).astype(np.uint8)
    return d, dmin, sc, mn, q.reshape(n, 256)


def _pack_nibbles(q4: np.ndarray) -> np.ndarray:
    """256 4-bit values -> 128 bytes: byte ``g*32+j`` holds element ``g*64+j`` (low) and ``g*64+32+j`` (high)."""
    v = q4.reshape(-1, 4, 2, 32)
    return (v[:, :, 0] | (v[:, :, 1] << 4)).reshape(-1, 128)


def quantize_k(x: np.ndarray, kind: str) -> np.ndarray:
    """Rows of ``x`` (float32, width a multiple of 256) -> ggml ``Q4_K`` / ``Q5_K`` / ``Q6_K`` blocks.

    Args:
        x: ``(rows, width)`` float32.
        kind: ``"Q4_K"``, ``"Q5_K"`` or ``"Q6_K"``.

    Returns:
        ``(rows, width/256 * bytes_per_block)`` uint8, the ggml layout gguf's ``quants.dequantize`` reads.
    """
    rows, width = x.shape
    if width % K_BLOCK:
        raise ValueError(f"{kind}: width {width} is not a multiple of {K_BLOCK}")
    b = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, K_BLOCK)
    n = b.shape[0]
    if kind in ("Q4_K", "Q5_K"):
        d, dmin, sc, mn, q = _quant_asym(b, 15 if kind == "Q4_K" else 31)
        head = np.concatenate([d.view(np.uint8).reshape(n, 2), dmin.view(np.uint8).reshape(n, 2),
                               _scale_min_bytes(sc, mn)], axis=1)
        if kind == "Q4_K":
            blocks = np.concatenate([head, _pack_nibbles(q)], axis=1)
        else:
            hi = (q >> 4).reshape(n, 8, 32)                     # bit b of byte j = element b*32+j
            qh = np.zeros((n, 32), np.uint8)
            for bit in range(8):
                qh |= hi[:, bit] << bit
            blocks = np.concatenate([head, qh, _pack_nibbles(q & 15)], axis=1)
    elif kind == "Q6_K":
        sub = b.reshape(n, 16, 16)
        amax = np.abs(sub).max(-1)
        scale = amax / 31.0                                      # q in [-32, 31]
        d = _f16(scale.max(-1) / 127.0)
        df = d.astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            sc = np.where(df[:, None] > 0, np.rint(scale / df[:, None]), 0).clip(-128, 127)
            eff = (df[:, None] * sc)[..., None]
            q = np.where(eff != 0, np.rint(sub / eff), 0).clip(-32, 31)
        q = (q + 32).astype(np.uint8).reshape(n, 256)
        lo, hi = q & 15, q >> 4
        lo4 = lo.reshape(n, 2, 2, 64)                            # element h*128 + s*64 + j -> ql[h*64+j], nibble s
        ql = (lo4[:, :, 0] | (lo4[:, :, 1] << 4)).reshape(n, 128)
        hi4 = hi.reshape(n, 2, 4, 32)                            # element h*128 + s*32 + j -> qh[h*32+j], bits 2s
        qh = (hi4[:, :, 0] | (hi4[:, :, 1] << 2) | (hi4[:, :, 2] << 4) | (hi4[:, :, 3] << 6)).reshape(n, 64)
        blocks = np.concatenate([ql, qh, sc.astype(np.int8).view(np.uint8), d.view(np.uint8).reshape(n, 2)], axis=1)
    else:
        raise ValueError(f"quantize_k: unknown kind {kind!r}")
    return np.ascontiguousarray(blocks).reshape(rows, -1)


def quantize_tensor(t: torch.Tensor, qtype: str) -> np.ndarray:
    """One 2-D weight -> its GGUF bytes (``qtype`` one of Q8_0, Q6_K, Q5_K, Q4_K, BF16, F16, F32)."""
    gguf = _gguf()
    x = t.detach().to("cpu", torch.float32).numpy()
    if qtype in ("Q4_K", "Q5_K", "Q6_K"):
        return quantize_k(x, qtype)
    if qtype == "F32":
        return np.ascontiguousarray(x)
    if qtype == "F16":
        return x.astype(np.float16)
    return gguf.quants.quantize(x, gguf.GGMLQuantizationType[qtype])


# ------------------------------------------------------------------------------------------------ type plan
def _use_more_bits(i: int, n: int) -> bool:
    """llama.cpp's choice of the layers that get more bits in the ``_M`` mixes."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def plan_types(shapes: Mapping[str, tuple], quantisable: set, qtype: str, num_layers: int,
               keep_fp32: Callable[[str], bool] = lambda k: False) -> dict[str, str]:
    """The GGUF type of every tensor (diffusers names): quantised Linear weights per ``qtype`` and its mix, the rest
    F32 (1-D, float32-kept) or BF16 (see the module docstring)."""
    if qtype not in GGUF_TYPES:
        raise MoGe4DInputError(f"--gguf {qtype}: unknown type; choose one of {', '.join(GGUF_TYPES)}")
    base = {"Q5_K_M": "Q5_K", "Q4_K_M": "Q4_K"}.get(qtype, qtype)
    mix = qtype.endswith("_M")
    out = {}
    for k, shape in shapes.items():
        module = k[: -len(".weight")] if k.endswith(".weight") else None
        t = base
        if module in quantisable and len(shape) == 2:
            if mix:
                parts = k.split(".")
                if parts[0] == "blocks" and (".attn1.to_v." in k or ".ffn.net.2." in k) \
                        and _use_more_bits(int(parts[1]), num_layers):
                    t = "Q6_K"
            block = 32 if t == "Q8_0" else (K_BLOCK if t.endswith("_K") else 1)
            if shape[1] % block == 0:
                out[k] = t
                continue
        out[k] = "F32" if (len(shape) <= 1 or keep_fp32(k)) else "BF16"
    return out


def gguf_file_bytes(shapes: Mapping[str, tuple], types: Mapping[str, str]) -> int:
    """Tensor bytes of a GGUF file with these types (header and alignment padding excluded)."""
    total = 0.0
    for k, shape in shapes.items():
        total += BITS_PER_WEIGHT[types[k]] / 8 * int(np.prod(shape))
    return int(total)


def _keep_fp32_rule(model: torch.nn.Module) -> Callable[[str], bool]:
    keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    return lambda k: any(p in k.split(".") for p in keep)


def gguf_sizes(model: torch.nn.Module, types: tuple = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M")) -> dict[str, int]:
    """Tensor bytes of the GGUF file :func:`quantize_file` writes for ``model`` (a DiT, the meta device is fine),
    per type: the planner's table."""
    from ..models import fp8 as fp8_storage

    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    quantisable = set(fp8_storage.fp8_eligible_linear_names(model))
    return {t: gguf_file_bytes(shapes, plan_types(shapes, quantisable, t, len(model.blocks), _keep_fp32_rule(model)))
            for t in types}


# ------------------------------------------------------------------------------------------------ writing
def _torch_dtype_name(qtype: str):
    return {"F32": np.float32, "F16": np.float16}.get(qtype, np.uint8)


def write_gguf_dit(state: Mapping[str, torch.Tensor], types: Mapping[str, str], path: Union[str, Path], *,
                   arch: str, config_json: str, qtype: str, name_map: Callable[[str], str] = lambda k: k) -> Path:
    """Write ``state`` (diffusers names) as GGUF with ``types`` per tensor, names through ``name_map`` (to the
    original Wan names). Quantised one tensor at a time; written to ``<path>.partial`` and renamed at the end."""
    gguf = _gguf()
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    writer = gguf.GGUFWriter(str(tmp), "wan")
    try:
        writer.add_string(_ARCH_KEY, arch)
        writer.add_string(_CONFIG_KEY, config_json)
        writer.add_string(_TYPE_KEY, qtype)
        order = list(state)
        for k in order:
            t, shape = types[k], tuple(state[k].shape)
            if t in ("F32", "F16"):
                dt = _torch_dtype_name(t)
                nbytes = int(np.prod(shape)) * np.dtype(dt).itemsize
                writer.add_tensor_info(name_map(k), shape, np.dtype(dt), nbytes)
            else:
                qt = gguf.GGMLQuantizationType[t]
                block, tsize = gguf.GGML_QUANT_SIZES[qt]
                byte_shape = (*shape[:-1], shape[-1] // block * tsize)
                writer.add_tensor_info(name_map(k), byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), raw_dtype=qt)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for k in order:
            t = state[k]
            arr = quantize_tensor(t if t.ndim == 2 else t.reshape(-1, t.shape[-1]) if t.ndim > 1 else t.reshape(1, -1),
                                  types[k])
            writer.write_tensor_data(np.ascontiguousarray(arr).reshape(-1) if types[k] in ("F32", "F16")
                                     else np.ascontiguousarray(arr))
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        try:
            writer.close()
        except Exception:
            pass
        tmp.unlink(missing_ok=True)
        raise
    return path


def quantize_file(src: Union[str, Path], out: Union[str, Path], qtype: str,
                  report: Callable[[str], None] = print) -> Path:
    """Read a released / our Wan DiT checkpoint (any format the loaders read) and write it as GGUF ``qtype``."""
    from ..models import fp8 as fp8_storage
    from ..models.wan_dit.config import config_to_json
    from ..models.wan_dit.model import STraGDiT, ViSMDiT, WanDiT
    from . import wan_keys
    from .wan_dit import _resolve_config, read_wan_dit_source

    out = Path(out)
    if out.suffix != ".gguf":
        raise MoGe4DInputError(f"{out}: the output must end in .gguf")
    if not out.parent.is_dir():
        raise MoGe4DInputError(f"{out.parent}: no such folder")
    if qtype not in GGUF_TYPES:
        raise MoGe4DInputError(f"--gguf {qtype}: unknown type; choose one of {', '.join(GGUF_TYPES)}")
    src_info = read_wan_dit_source(src)
    if src_info.file.suffix == ".gguf":
        raise MoGe4DInputError(f"{src}: already GGUF; quantise the safetensors release file")
    cfg = _resolve_config(src_info, None)
    cls = {"moge4d_strag": STraGDiT, "wan2.1_fun_inp": ViSMDiT}.get(cfg.arch, WanDiT)
    with torch.device("meta"):
        model = cls(**cfg)
    expected = set(model.state_dict())
    missing = sorted(expected - set(src_info.state))
    if missing:
        raise MoGe4DInputError(f"{src_info.file}: incomplete DiT, missing {missing[:5]}; quantise a full checkpoint")
    state = {}
    for k in model.state_dict():
        t = src_info.state[k]
        s = src_info.scales.get(k)
        if s is not None or fp8_storage.is_fp8(t.dtype):
            t = t.float() * (s if s is not None else 1.0)
        state[k] = t
    quantisable = set(fp8_storage.fp8_eligible_linear_names(model))
    types = plan_types({k: tuple(v.shape) for k, v in state.items()}, quantisable, qtype, cfg.num_layers,
                       _keep_fp32_rule(model))
    path = write_gguf_dit(state, types, out, arch=cfg.arch, config_json=json.dumps(config_to_json(cfg)), qtype=qtype,
                          name_map=lambda k: wan_keys.diffusers_to_original(k, strict=False))
    counts: dict[str, int] = {}
    for t in types.values():
        counts[t] = counts.get(t, 0) + 1
    report(f"wrote {path} ({qtype}, {path.stat().st_size / 2 ** 30:.2f} GiB; tensors per type: "
           + ", ".join(f"{t} {n}" for t, n in sorted(counts.items())) + ")")
    return path


# ------------------------------------------------------------------------------------------------ reading
def is_gguf_tensor(t: Any) -> bool:
    """A diffusers ``GGUFParameter`` (packed quantised bytes with a ``quant_type``)."""
    return hasattr(t, "quant_type") and hasattr(t, "quant_shape")


def read_gguf_state(path: Union[str, Path]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors of a GGUF file (quantised ones as diffusers ``GGUFParameter``, F32/F16 as tensors) and its
    metadata strings (``moge4d.*``, ``general.architecture``)."""
    _gguf()
    from diffusers.models.model_loading_utils import load_gguf_checkpoint

    try:
        state = load_gguf_checkpoint(str(path))
    except ValueError as exc:           # an unsupported quantisation type, named by diffusers
        raise MoGe4DInputError(f"{path}: {exc}") from None
    except Exception as exc:
        raise MoGe4DInputError(f"{path}: not a readable GGUF file ({type(exc).__name__}: {exc})") from None
    meta = {}
    import gguf

    reader = gguf.GGUFReader(str(path))
    for key in (_ARCH_KEY, _CONFIG_KEY, _TYPE_KEY, "general.architecture"):
        field = reader.fields.get(key)
        if field is not None:
            meta[key] = bytes(field.parts[field.data[0]]).decode("utf-8")
    return state, meta


def gguf_linear_names(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    """Linear modules of ``model`` whose weight in ``state`` is GGUF-quantised."""
    return [n for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and is_gguf_tensor(state.get(n + ".weight"))]


# ------------------------------------------------------------------------------------------------ CLI
def add_quantize_arguments(p) -> None:
    p.add_argument("--gguf", required=True, metavar="TYPE", choices=list(GGUF_TYPES),
                   help="GGUF type: " + ", ".join(GGUF_TYPES) + " (_M: llama.cpp's mix, V and FFN-out of some blocks "
                        "in Q6_K)")
    p.add_argument("input", help="the DiT checkpoint (the release's 4D-STraG / Wan2.1-Fun-InP safetensors, a folder)")
    p.add_argument("output", help="the .gguf file to write")


def cmd_quantize(args) -> int:
    quantize_file(args.input, args.output, args.gguf)
    return 0
