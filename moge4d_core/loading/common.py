"""Reading checkpoint files into state dicts, with errors that say what to do.

Accepted containers (each component loader builds on these):

* ``*.safetensors`` / ``*.sft`` (single file; fp8 tensors included),
* a sharded checkpoint: ``*.safetensors.index.json`` (its ``weight_map``) or a folder holding one,
* ``*.pth`` / ``*.pt`` / ``*.bin`` / ``*.torch`` via ``torch.load(weights_only=True)``, so a pickle
  that would run code is refused,
* a folder: the index JSON if present, else the single weights file inside.

Our own training outputs are safetensors whose metadata header holds ``moge4d_arch`` (a name) and
``moge4d_config`` (JSON), so a loader never guesses: :func:`save_state_dict` / :func:`read_metadata`.

Every loader returns the model alone; what it read is kept on the model as ``model.load_info``
(:class:`LoadInfo`), the way diffusers' ``from_pretrained`` reports its loading info.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, TypeVar

import torch

from ..errors import MoGe4DInputError

WEIGHT_SUFFIXES = (".safetensors", ".sft", ".pth", ".pt", ".bin", ".torch", ".ckpt")
ARCH_KEY = "moge4d_arch"
CONFIG_KEY = "moge4d_config"


@dataclass
class LoadInfo:
    """What a loader read, kept on the loaded model as ``model.load_info``.

    Attributes:
        file: the weights file (or the release folder) read.
        format: the source format in words (container, key layout, quantisation, metadata).
        dtype: the dtype the weights were loaded in (the fp8 storage dtype for fp8 storage).
        files: further files read, by role (e.g. ``{"base": ...}``, ``{"decoder_prompt": ..., "vae": ...}``).
        filled_keys: model tensors the file did not hold, taken from elsewhere (a base checkpoint, an init).
        ignored_keys: tensors of the file not loaded into the model (e.g. ``omnimae_extractor.*``, a dropped MPM).
        converted_keys: tensors whose values were converted on the way (e.g. dequantised scaled fp8).
        notes: anything substituted or assumed, in words.
        extras: further things the file held, by name (e.g. ``omnimae_state_dict``, ``metadata``).
    """

    file: str
    format: str
    dtype: Optional[torch.dtype] = None
    files: dict[str, Optional[str]] = field(default_factory=dict)
    filled_keys: list[str] = field(default_factory=list)
    ignored_keys: list[str] = field(default_factory=list)
    converted_keys: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)


ModelT = TypeVar("ModelT", bound=torch.nn.Module)


def with_load_info(model: ModelT, info: LoadInfo) -> ModelT:
    """Attach ``info`` to ``model`` as ``model.load_info`` and return the model."""
    model.load_info = info
    return model


def _load_safetensors(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=device)
    except Exception as exc:  # safetensors raises its own error types for truncated/corrupt headers
        raise MoGe4DInputError(
            f"{path}: not a readable safetensors file ({exc}). The file may be truncated or still "
            f"downloading; download it again.") from None


_ZIP_MAGIC = b"PK\x03\x04"          # torch.save's default (zip) container
_PICKLE_PROTO = 0x80                  # first byte of a protocol-2+ pickle (torch's legacy container)


def _load_torch_pickle(path: Path) -> dict[str, torch.Tensor]:
    """A ``.pth`` / ``.pt`` / ``.bin`` / ``.torch`` / ``.ckpt`` file through ``torch.load(weights_only=True)``.

    The first bytes are checked before torch sees the file, so random bytes, an HTML error page or an empty
    download get "this is not a PyTorch checkpoint" rather than torch's message about mmap or zip records.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise MoGe4DInputError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not head:
        raise MoGe4DInputError(f"{path}: the file is empty; download it again")
    if head != _ZIP_MAGIC and head[0] != _PICKLE_PROTO:
        raise MoGe4DInputError(
            f"{path}: this is not a PyTorch checkpoint (it starts with {head!r}, where a file written by torch.save "
            f"starts with {_ZIP_MAGIC!r} or a pickle header). The download may have failed or saved an error page; "
            f"download it again, or pass the .safetensors file.")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=head == _ZIP_MAGIC)
    except Exception as exc:
        raise MoGe4DInputError(
            f"{path}: could not be read as a PyTorch weights file with weights_only=True "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). The file may be truncated "
            f"(download it again); a file that needs arbitrary unpickling is refused for safety, only plain "
            f"state dicts of tensors are accepted.") from None
    return _as_flat_state_dict(obj, path)


def _as_flat_state_dict(obj, path: Path) -> dict[str, torch.Tensor]:
    """Accept ``{name: tensor}`` or a wrapper ``{"state_dict"|"model"|"module": {...}}``."""
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model", "module"):
            inner = obj.get(wrapper)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors and len(tensors) == len(obj):
            return dict(tensors)
        if tensors:
            # e.g. training checkpoints that also hold step counters: keep the tensors
            return dict(tensors)
    raise MoGe4DInputError(f"{path}: does not hold a state dict of tensors (found {type(obj).__name__})")


def _load_index(index: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except Exception as exc:
        raise MoGe4DInputError(f"{index}: not a valid sharded-checkpoint index ({exc})") from None
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = index.parent / shard
        if not shard_path.exists():
            raise MoGe4DInputError(
                f"{index}: shard '{shard}' is missing; put it next to the index in {index.parent}")
        state.update(load_file_state_dict(shard_path, device=device))
    missing = [k for k in weight_map if k not in state]
    if missing:
        raise MoGe4DInputError(f"{index}: keys listed in the index are absent from their shards: {missing[:5]}")
    return state


def find_weights(path: str | os.PathLike, preferred: Iterable[str] = ()) -> Path:
    """Resolve a file or folder to the one weights file (or index JSON) to read.

    In a folder: a file named in ``preferred`` wins, then a ``*.index.json``, then the only weights file.
    """
    p = Path(path)
    if not p.exists():
        raise MoGe4DInputError(f"{p}: no such file or folder")
    if p.is_file():
        return p
    for name in preferred:
        if (p / name).is_file():
            return p / name
    indexes = sorted(p.glob("*.safetensors.index.json")) + sorted(p.glob("*.bin.index.json"))
    if indexes:
        return indexes[0]
    files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix in WEIGHT_SUFFIXES)
    if len(files) == 1:
        return files[0]
    if not files:
        raise MoGe4DInputError(f"{p}: folder holds no weights file ({', '.join(WEIGHT_SUFFIXES)})")
    raise MoGe4DInputError(f"{p}: folder holds several weights files and no index: {[f.name for f in files[:5]]}; "
                           f"pass the file itself")


def load_file_state_dict(path: str | os.PathLike, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Load one weights file, an index JSON or a folder into a flat ``{name: tensor}`` dict.

    Every floating-point tensor is checked for NaN / inf (:func:`check_finite`), so a damaged file is refused at
    load, naming the tensor, instead of running the whole pipeline and failing at the video writer.

    Args:
        path: a weights file (see the module docstring), an index JSON or a folder holding one.
        device: where safetensors places the tensors.

    Returns:
        ``{name: tensor}`` as stored (dtypes unchanged).
    """
    p = find_weights(path)
    name = p.name
    if name.endswith(".index.json"):
        return _load_index(p, device=device)       # each shard is checked as it is read
    if p.suffix in (".safetensors", ".sft"):
        state = _load_safetensors(p, device=device)
    elif p.suffix in (".pth", ".pt", ".bin", ".torch", ".ckpt"):
        state = _load_torch_pickle(p)
    else:
        raise MoGe4DInputError(f"{p}: unknown weights format '{p.suffix}'; expected one of "
                               f"{', '.join(WEIGHT_SUFFIXES)}")
    check_finite(state, p)
    return state


def check_finite(state: Mapping[str, torch.Tensor], source: str | os.PathLike) -> None:
    """Refuse a state dict holding NaN or inf in any floating-point tensor.

    One reduction per tensor (fp8 tensors are widened to fp16, which holds every fp8 value, NaN and inf included).

    Args:
        state: ``{name: tensor}``.
        source: the file the tensors came from, for the message.

    Raises:
        MoGe4DInputError: naming the file, the first bad tensor and how many values are bad.
    """
    for key, t in state.items():
        if not t.is_floating_point() or t.numel() == 0:
            continue
        if t.element_size() == 1:                   # float8 variants: isfinite is not defined for them on CPU
            t = t.to(torch.float16)
        finite = torch.isfinite(t)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise MoGe4DInputError(
                f"{source}: tensor '{key}' holds {bad} NaN/inf value(s) of {t.numel()}; the file is damaged "
                f"(a diverged training run or a broken conversion). Use another copy of the file.")


def read_metadata(path: str | os.PathLike) -> dict:
    """Metadata header of a safetensors file (empty dict for other formats or none)."""
    p = find_weights(path)
    if p.suffix not in (".safetensors", ".sft"):
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as exc:
        raise MoGe4DInputError(f"{p}: not a readable safetensors file ({exc})") from None


def read_arch_config(path: str | os.PathLike) -> tuple[Optional[str], Optional[dict]]:
    """``(architecture, config)`` from one of our own training outputs, else ``(None, None)``."""
    meta = read_metadata(path)
    arch = meta.get(ARCH_KEY)
    cfg = json.loads(meta[CONFIG_KEY]) if CONFIG_KEY in meta else None
    return arch, cfg


def strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Keys starting with ``prefix``, with it removed (others dropped)."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def key_mismatch_message(file: str | os.PathLike, arch: str, missing: Iterable[str],
                         unexpected: Iterable[str], limit: int = 5) -> str:
    missing, unexpected = list(missing), list(unexpected)
    parts = [f"{file}: does not match the expected layout for {arch}."]
    if missing:
        parts.append(f"{len(missing)} missing keys, first: {missing[:limit]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys, first: {unexpected[:limit]}")
    parts.append("Check that the file is the right model for this loader.")
    return " ".join(parts)


def check_keys(file: str | os.PathLike, arch: str, expected: Iterable[str], found: Iterable[str],
               allow_missing: Iterable[str] = (), allow_unexpected_prefixes: Iterable[str] = ()) -> None:
    """Raise :class:`MoGe4DInputError` naming the first missing / unexpected keys."""
    expected, found = set(expected), set(found)
    allow_missing = set(allow_missing)
    prefixes = tuple(allow_unexpected_prefixes)
    missing = sorted(expected - found - allow_missing)
    unexpected = sorted(k for k in found - expected if not (prefixes and k.startswith(prefixes)))
    if missing or unexpected:
        raise MoGe4DInputError(key_mismatch_message(file, arch, missing, unexpected))


def save_state_dict(state: Mapping[str, torch.Tensor], path: str | os.PathLike, arch: str,
                    config: Mapping, extra_metadata: Optional[Mapping[str, str]] = None) -> Path:
    """Write ``state`` as safetensors with our metadata header, atomically (temp file + rename)."""
    from safetensors.torch import save_file

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    meta = {ARCH_KEY: arch, CONFIG_KEY: json.dumps(dict(config), sort_keys=True)}
    meta.update({k: str(v) for k, v in (extra_metadata or {}).items()})
    fd, tmp = tempfile.mkstemp(prefix=p.name + ".", suffix=".tmp", dir=str(p.parent))
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in state.items()}, tmp, metadata=meta)
        os.replace(tmp, p)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return p
