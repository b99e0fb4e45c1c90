"""Restricted loading of pickle files that hold plain data (dicts of numpy arrays / torch tensors).

TrajScene-60K and DELTA write their trajectories as pickles (``*_dt3d_pred.pkl``). A pickle can run
arbitrary code when it is loaded, so :func:`load_pickle` only lets a pickle rebuild the few globals
that plain numpy arrays and torch tensors need:

- numpy: ``ndarray``, ``dtype``, ``multiarray._reconstruct`` / ``multiarray.scalar`` /
  ``numeric._frombuffer`` (under both ``numpy.core`` (numpy 1.x) and ``numpy._core`` (numpy 2) names),
  and ``_codecs.encode`` restricted to latin-1 (protocol-2 pickles store bytes that way);
- torch (a tensor pickled with :func:`pickle.dump`): ``torch._utils._rebuild_tensor_v2`` and
  ``torch.storage._load_from_bytes``. The latter is *replaced* by a version that reads the embedded
  storage with ``torch.load(weights_only=True)`` (torch's own one calls ``weights_only=False``);
- ``collections.OrderedDict`` and a few inert builtins (``set``, ``frozenset``, ``bytearray``,
  ``complex``, ``slice``).

Any other global is refused with :class:`MoGe4DInputError` naming the file and the global, before it
is imported or called.

Files written by :func:`torch.save` (zip archives, and the older non-zip format that starts with
torch's magic number) are read with ``torch.load(weights_only=True)``, torch's own restricted
unpickler, with the numpy reconstruction globals above added to its allow list.

``allow_unsafe=True`` skips all of this and unpickles normally; use it only for files you trust.

Written by hand (instead of a library) because the standard library offers only the
``find_class`` hook and torch's restricted unpickler handles torch's own formats, not a plain
``pickle.dump`` of numpy arrays.
"""
from __future__ import annotations

import codecs
import collections
import io
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..errors import MoGe4DInputError

__all__ = ["load_pickle", "UNSAFE_HINT"]

UNSAFE_HINT = "pass allow_unsafe=True only for files you trust"

# torch's legacy (non-zip) serialisation starts with this integer pickled on its own.
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _RefusedGlobal(pickle.UnpicklingError):
    def __init__(self, qualified: str) -> None:
        super().__init__(qualified)
        self.qualified = qualified


def _latin1_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes: only the latin-1 codec is accepted."""
    if codecs.lookup(encoding).name != "iso8859-1" or not isinstance(obj, str):
        raise _RefusedGlobal(f"_codecs.encode with encoding {encoding!r}")
    return codecs.encode(obj, encoding, errors)


def _safe_load_from_bytes(data: bytes) -> Any:
    """Replacement for ``torch.storage._load_from_bytes``: the embedded storage is read restrictedly."""
    if not isinstance(data, (bytes, bytearray)):
        raise _RefusedGlobal("torch.storage._load_from_bytes with a non-bytes argument")
    try:
        return torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _RefusedGlobal(f"an embedded torch storage ({_first_line(exc)})") from None


def _safe_rebuild_tensor_v2(storage: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
    if not isinstance(storage, (torch.storage.TypedStorage, torch.UntypedStorage)):
        raise _RefusedGlobal(f"torch._utils._rebuild_tensor_v2 with a {type(storage).__name__} storage")
    return torch._utils._rebuild_tensor_v2(storage, *args, **kwargs)


def _numpy_core() -> Any:
    return np._core if hasattr(np, "_core") else np.core  # numpy 2 / numpy 1


def _allowed_globals() -> dict[tuple[str, str], Callable]:
    core = _numpy_core()
    numpy_objs = {
        ("multiarray", "_reconstruct"): core.multiarray._reconstruct,
        ("multiarray", "scalar"): core.multiarray.scalar,
        ("numeric", "_frombuffer"): core.numeric._frombuffer,
    }
    allowed: dict[tuple[str, str], Callable] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _safe_rebuild_tensor_v2,
        ("torch.storage", "_load_from_bytes"): _safe_load_from_bytes,
    }
    for pkg in ("numpy.core", "numpy._core"):
        for (sub, name), obj in numpy_objs.items():
            allowed[(f"{pkg}.{sub}", name)] = obj
    for name in ("set", "frozenset", "bytearray", "complex", "slice"):
        allowed[("builtins", name)] = getattr(__import__("builtins"), name)
        allowed[("__builtin__", name)] = getattr(__import__("builtins"), name)
    return allowed


_ALLOWED = _allowed_globals()


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose ``find_class`` returns only the allow-listed globals (never imports anything)."""

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle hook
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _RefusedGlobal(f"{module}.{name}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _torch_safe_globals() -> list:
    """numpy reconstruction globals for ``torch.load(weights_only=True)`` (both numpy 1 and 2 names)."""
    core = _numpy_core()
    entries: list = [np.ndarray, np.dtype]
    for pkg in ("numpy.core", "numpy._core"):
        entries += [
            (core.multiarray._reconstruct, f"{pkg}.multiarray._reconstruct"),
            (core.multiarray.scalar, f"{pkg}.multiarray.scalar"),
            (core.numeric._frombuffer, f"{pkg}.numeric._frombuffer"),
        ]
    # numpy 2 may pickle a dtype as its class, e.g. numpy.dtypes.Float32DType
    dtypes_mod = getattr(np, "dtypes", None)
    if dtypes_mod is not None:
        for name in dir(dtypes_mod):
            obj = getattr(dtypes_mod, name)
            if isinstance(obj, type) and issubclass(obj, np.dtype) and name.endswith("DType") \
                    and name not in ("ObjectDType", "StringDType", "VoidDType"):
                entries.append(obj)
    return entries


_UNSUPPORTED_GLOBAL = re.compile(r"unsupported (?:global:? )?GLOBAL ([\w.]+)", re.IGNORECASE)


def _torch_load(path: Path, allow_unsafe: bool) -> Any:
    if allow_unsafe:
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        with torch.serialization.safe_globals(_torch_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = None
        match = _UNSUPPORTED_GLOBAL.search(str(exc))
        if match:
            refused = match.group(1)
        elif zipfile.is_zipfile(path):
            try:
                names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
                refused = ", ".join(names[:5]) or None
            except Exception:  # noqa: BLE001 - only used to improve the message
                refused = None
        what = refused or "a global outside torch's weights_only allow list"
        raise MoGe4DInputError(
            f"{path}: refusing to unpickle {what} (torch.save file read with weights_only=True); "
            f"{UNSAFE_HINT}") from None


def load_pickle(path: str | os.PathLike, *, allow_unsafe: bool = False) -> Any:
    """Load a pickle / ``torch.save`` file that holds plain data, refusing anything that could run code.

    Returns the unpickled object (typically a dict of numpy arrays or CPU torch tensors; tensors saved
    on a GPU are mapped to the CPU). Raises :class:`MoGe4DInputError` naming the file when it is
    missing, empty, truncated / not a pickle, or when it asks for a global outside the allow list
    (the message names the refused global). ``allow_unsafe=True`` unpickles without restriction.
    """
    path = Path(path)
    if not path.is_file():
        raise MoGe4DInputError(f"{path}: file not found (expected a .pkl trajectory file)")
    if path.stat().st_size == 0:
        raise MoGe4DInputError(f"{path}: the file is empty (0 bytes); expected a pickled dict")
    if zipfile.is_zipfile(path):
        return _torch_load(path, allow_unsafe)
    try:
        with open(path, "rb") as fh:
            if allow_unsafe:
                obj = pickle.load(fh)
            else:
                obj = _RestrictedUnpickler(fh).load()
    except _RefusedGlobal as exc:
        raise MoGe4DInputError(f"{path}: refusing to unpickle {exc.qualified}; {UNSAFE_HINT}") from None
    except MoGe4DInputError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, OverflowError, MemoryError, RuntimeError, UnicodeDecodeError) as exc:
        raise MoGe4DInputError(
            f"{path}: not a readable pickle file ({type(exc).__name__}: {_first_line(exc)}); "
            "the file may be truncated or in another format") from None
    if isinstance(obj, int) and not isinstance(obj, bool) and obj == _TORCH_LEGACY_MAGIC:
        return _torch_load(path, allow_unsafe)
    return obj
