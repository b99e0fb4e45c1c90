"""Turning user arrays (numpy or torch, any device / dtype) into numpy arrays with a readable error."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import MoGe4DInputError


def to_numpy(value: Any, name: str) -> np.ndarray:
    """Return ``value`` (numpy array, torch tensor or nested list) as a numpy array on the CPU.

    Floating torch tensors of dtypes numpy lacks (bfloat16) become float32. Raises
    :class:`MoGe4DInputError` naming ``name`` for anything else (``None``, strings, objects).
    """
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu()
        if t.is_floating_point() and t.dtype not in (torch.float16, torch.float32, torch.float64):
            t = t.float()
        return t.numpy()
    if isinstance(value, np.ndarray):
        arr = value
    elif isinstance(value, (list, tuple)):
        try:
            arr = np.asarray(value)
        except ValueError as exc:
            raise MoGe4DInputError(f"{name}: could not be read as a numeric array ({exc})") from None
    else:
        raise MoGe4DInputError(
            f"{name}: expected a numpy array or torch tensor, got {type(value).__name__}")
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            raise MoGe4DInputError(
                f"{name}: expected a numeric array, got dtype {arr.dtype}") from None
    return arr


def as_float(arr: np.ndarray, name: str, dtype=np.float32) -> np.ndarray:
    """``arr`` as a float array (bool and integer inputs are converted; complex is refused)."""
    if np.iscomplexobj(arr):
        raise MoGe4DInputError(f"{name}: expected real numbers, got complex dtype {arr.dtype}")
    return np.asarray(arr, dtype=dtype)


def check_shape(arr: np.ndarray, name: str, shape: tuple, what: str) -> None:
    """Check ``arr.shape`` against ``shape`` (ints or None for any), naming ``name`` in the error."""
    ok = arr.ndim == len(shape) and all(s is None or s == d for s, d in zip(shape, arr.shape))
    if not ok:
        want = "(" + ",".join("*" if s is None else str(s) for s in shape) + ")"
        raise MoGe4DInputError(f"{name}: expected shape {want} {what}, got {tuple(arr.shape)}")
