"""Pickle-free files for training state: a JSON structure beside a safetensors file of its tensors.

Optimizer, lr-scheduler, grad-scaler and RNG states are nested Python values (dicts with int or str keys, lists,
tuples, numbers, strings, ``None``, tensors, numpy arrays). :func:`write_state` stores one as
``<stem>.json`` (the structure; tensors and arrays replaced by references) and ``<stem>.safetensors`` (the
tensors); :func:`read_state` rebuilds it exactly (same dtypes, shapes, bytes, tuple-ness and key types). Reading
runs ``json.loads`` and safetensors' header parser only: nothing in the files can run code.

JSON tags (objects with one of these keys; a plain JSON object is a dict with str keys)::

    {"__tensor__": "t3"}                                  a torch tensor (safetensors key)
    {"__ndarray__": "t4", "dtype": "uint32", "shape": [624]}   a numpy array (its bytes as a uint8 tensor)
    {"__tuple__": [...]}                                  a tuple
    {"__dict__": [[key, value], ...]}                     a dict whose keys are not all plain strings
    {"__float__": "nan" | "inf" | "-inf"}                 a non-finite float (strict JSON has none)

:func:`check_safetensors_file` validates a safetensors file from its header alone (size, header JSON, offsets):
the cheap "is it intact" test used to pick a checkpoint to resume from.
"""
from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moge4d_core.errors import MoGe4DInputError

__all__ = ["write_state", "read_state", "state_paths", "check_json_file", "check_safetensors_file",
           "write_safetensors"]

FORMAT = "moge4d-train-state/1"
_TAGS = ("__tensor__", "__ndarray__", "__tuple__", "__dict__", "__float__")


def state_paths(stem: os.PathLike) -> tuple[Path, Path]:
    """``(<stem>.json, <stem>.safetensors)``."""
    stem = Path(stem)
    return stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".safetensors")


# ------------------------------------------------------------------------------------------------ encoding
def _encode(obj: Any, tensors: dict) -> Any:
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().to("cpu").contiguous()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = f"t{len(tensors)}"
        arr = np.ascontiguousarray(obj)
        tensors[key] = torch.from_numpy(arr.reshape(-1).view(np.uint8).copy())
        return {"__ndarray__": key, "dtype": arr.dtype.str, "shape": list(arr.shape)}
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else {"__float__": repr(v)}
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and k not in _TAGS for k in obj):
            return {k: _encode(v, tensors) for k, v in obj.items()}
        items = []
        for k, v in obj.items():
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                raise TypeError(f"cannot store a dict key of type {type(k).__name__} in a training state file")
            items.append([_encode(k, tensors), _encode(v, tensors)])
        return {"__dict__": items}
    raise TypeError(f"cannot store a value of type {type(obj).__name__} in a training state file (JSON + "
                    f"safetensors only; nothing is pickled)")


def _decode(obj: Any, tensors: dict, where: Path) -> Any:
    def bad(msg: str):
        return MoGe4DInputError(f"{where}: {msg}; the file is damaged or was not written by this trainer, resume "
                                f"from an earlier checkpoint")

    if isinstance(obj, list):
        return [_decode(v, tensors, where) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        key = obj["__tensor__"]
        if not isinstance(key, str) or key not in tensors:
            raise bad(f"refers to tensor {key!r}, which its .safetensors file does not hold")
        return tensors[key]
    if "__ndarray__" in obj:
        key = obj["__ndarray__"]
        if not isinstance(key, str) or key not in tensors:
            raise bad(f"refers to array {key!r}, which its .safetensors file does not hold")
        try:
            dt = np.dtype(str(obj["dtype"]))
            if dt.hasobject:
                raise TypeError("object arrays are not stored")
            return tensors[key].numpy().view(dt).reshape([int(s) for s in obj["shape"]]).copy()
        except (KeyError, TypeError, ValueError) as exc:
            raise bad(f"array {key!r} has an unusable dtype/shape ({exc})") from None
    if "__tuple__" in obj:
        if not isinstance(obj["__tuple__"], list):
            raise bad("malformed tuple entry")
        return tuple(_decode(v, tensors, where) for v in obj["__tuple__"])
    if "__float__" in obj:
        if obj["__float__"] not in ("nan", "inf", "-inf"):
            raise bad(f"malformed float entry {obj['__float__']!r}")
        return float(obj["__float__"])
    if "__dict__" in obj:
        items = obj["__dict__"]
        if not isinstance(items, list) or not all(isinstance(i, list) and len(i) == 2 for i in items):
            raise bad("malformed dict entry")
        out = {}
        for k, v in items:
            if isinstance(k, (dict, list)):
                raise bad("a dict key is not a number or a string")
            out[k] = _decode(v, tensors, where)
        return out
    return {k: _decode(v, tensors, where) for k, v in obj.items()}


# ------------------------------------------------------------------------------------------------ files
def write_safetensors(tensors: dict, path: os.PathLike, metadata: dict | None = None) -> None:
    """``safetensors.torch.save_file`` (one place, so tests can make it fail like a full disk)."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)


def write_state(stem: os.PathLike, obj: Any, kind: str) -> tuple[Path, Path]:
    """Write ``obj`` as ``<stem>.json`` + ``<stem>.safetensors`` (see the module docstring).

    Args:
        stem: path without suffix, e.g. ``ckpt/optimizer``.
        obj: the state (e.g. ``optimizer.state_dict()``).
        kind: what it is ("optimizer", "scheduler", "rng", ...); checked by :func:`read_state`.

    Returns:
        The two paths written.
    """
    jpath, tpath = state_paths(stem)
    tensors: dict = {}
    tree = _encode(obj, tensors)
    write_safetensors(tensors, tpath, metadata={"format": FORMAT, "kind": kind})
    text = json.dumps({"format": FORMAT, "kind": kind, "tree": tree}, allow_nan=False, separators=(",", ":"))
    with open(jpath, "w", encoding="utf-8") as fh:
        fh.write(text)
    return jpath, tpath


def check_json_file(path: os.PathLike) -> Any:
    """Parse a JSON file; :class:`MoGe4DInputError` naming it when it is missing, unreadable or not JSON."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise MoGe4DInputError(f"{path}: missing; the checkpoint is incomplete, resume from an earlier one") from None
    except OSError as exc:
        raise MoGe4DInputError(f"{path}: unreadable ({exc})") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        head = " (it looks like a Python pickle, which is never loaded)" if raw[:1] == b"\x80" else ""
        raise MoGe4DInputError(f"{path}: not a JSON training-state file{head} ({str(exc)[:120]}); the checkpoint "
                               f"is damaged or was not written by this trainer, resume from an earlier one") from None


def check_safetensors_file(path: os.PathLike) -> dict:
    """Validate a safetensors file from its header (no tensor data is read).

    Checks: at least 8 bytes, a header length that fits, a JSON header whose tensors' byte ranges lie inside
    the file and whose last range ends exactly at the end of the file (a truncated file fails).

    Args:
        path: the ``.safetensors`` file.

    Returns:
        The parsed header (tensor name -> dtype/shape/data_offsets, plus ``__metadata__`` when present).
    """
    path = Path(path)

    def bad(msg: str):
        return MoGe4DInputError(f"{path}: {msg}; the checkpoint is damaged or was not written by this trainer, "
                                f"resume from an earlier one")

    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise bad(f"not a safetensors file (only {size} bytes)")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > 100_000_000:
                hint = " (it looks like a Python pickle, which is never loaded)" if head[:1] == b"\x80" else ""
                raise bad(f"not a safetensors file{hint} (header length {n} with {size} bytes in the file)")
            header = json.loads(fh.read(n).decode("utf-8"))
    except FileNotFoundError:
        raise MoGe4DInputError(f"{path}: missing; the checkpoint is incomplete, resume from an earlier one") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise bad(f"unreadable safetensors header ({str(exc)[:120]})") from None
    except OSError as exc:
        raise MoGe4DInputError(f"{path}: unreadable ({exc})") from None
    if not isinstance(header, dict):
        raise bad("unreadable safetensors header")
    end = 0
    for k, v in header.items():
        if k == "__metadata__":
            continue
        try:
            a, b = (int(x) for x in v["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise bad(f"tensor {k!r} has no valid data_offsets") from None
        if not 0 <= a <= b:
            raise bad(f"tensor {k!r} has invalid data_offsets {v['data_offsets']}")
        end = max(end, b)
    if 8 + n + end != size:
        raise bad(f"truncated or padded: the header describes {8 + n + end} bytes, the file has {size}")
    return header


def read_state(stem: os.PathLike, kind: str) -> Any:
    """Read what :func:`write_state` wrote; :class:`MoGe4DInputError` naming the damaged file otherwise.

    Args:
        stem: path without suffix.
        kind: the kind the files must declare.

    Returns:
        The state, with tensors on the CPU.
    """
    jpath, tpath = state_paths(stem)
    doc = check_json_file(jpath)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or "tree" not in doc:
        raise MoGe4DInputError(f"{jpath}: not a {kind} state file of this trainer (format {FORMAT!r} expected); the "
                               f"checkpoint is damaged or was written by another program, resume from an earlier one")
    if doc.get("kind") != kind:
        raise MoGe4DInputError(f"{jpath}: holds a {doc.get('kind')!r} state where a {kind!r} state was expected")
    return _decode(doc["tree"], read_checkpoint_tensors(tpath), jpath)


def read_checkpoint_tensors(path: os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of one checkpoint safetensors file, its header checked first (:func:`check_safetensors_file`).

    Raises:
        MoGe4DInputError: naming the file when it is damaged.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    check_safetensors_file(path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise MoGe4DInputError(f"{path}: unreadable safetensors file ({str(exc)[:160]}); the checkpoint is damaged, "
                               f"resume from an earlier one") from None
