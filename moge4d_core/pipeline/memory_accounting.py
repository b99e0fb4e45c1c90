"""Counting what a run keeps in memory and how much it computes, for the planner (:mod:`.plan`) and its tests.

* :class:`LiveBytes`: a ``TorchDispatchMode`` that counts the bytes of every tensor *storage* alive while it is
  active (views share their storage and are counted once; a storage leaves the count when Python frees it).
  Tensors that exist before the mode starts are counted only if passed to :meth:`LiveBytes.track` (weights,
  inputs). It works the same on real tensors and under ``FakeTensorMode``, so a fake dry run and a real run are
  measured by one ruler. It counts tensor storage only: allocator rounding and kernel workspaces that never
  become tensors (cuDNN, im2col) are not seen.
* :func:`count_flops`: ``torch.utils.flop_counter.FlopCounterMode`` with a flop formula for
  ``aten._scaled_dot_product_flash_attention_for_cpu`` registered (without it, attention counts 0 on a CPU or
  under ``FakeTensorMode`` on the CPU device, and a Wan DiT step reads about 27 % low).
"""
from __future__ import annotations

import contextlib
import weakref
from typing import Iterable, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["LiveBytes", "tensor_bytes", "count_flops", "register_cpu_attention_flops"]


def _storages(obj) -> Iterator[torch.UntypedStorage]:
    for leaf in tree_flatten(obj)[0]:
        if isinstance(leaf, torch.Tensor):
            yield leaf.untyped_storage()


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views of one storage count once)."""
    seen, total = set(), 0
    for st in _storages(list(tensors)):
        key = (st.data_ptr(), st.nbytes()) if st.device.type != "meta" and st.data_ptr() else id(st)
        if key not in seen:
            seen.add(key)
            total += st.nbytes()
    return total


class LiveBytes(TorchDispatchMode):
    """Bytes of tensor storage alive, and their peak, while the mode is active.

    Usage::

        with LiveBytes() as lb:
            lb.track(model.parameters(), model.buffers(), inputs)   # what existed before
            out = model(inputs)
        lb.peak, lb.current                                         # bytes

    Attributes:
        current: bytes of the tracked storages alive now.
        peak: the largest ``current`` seen since the mode started (or :meth:`reset_peak`).
    """

    def __init__(self) -> None:
        """A counter at 0 bytes; :meth:`track` what exists before the measured code."""
        super().__init__()
        self.current = 0
        self.peak = 0
        self._alive: dict[int, weakref.ref] = {}

    def _add(self, st: torch.UntypedStorage) -> None:
        key = id(st)
        ref = self._alive.get(key)
        if ref is not None and ref() is st:
            return
        n = int(st.nbytes())
        self.current += n
        self.peak = max(self.peak, self.current)

        def _gone(_r, key=key, n=n, self_ref=weakref.ref(self)):
            me = self_ref()
            if me is not None and me._alive.get(key) is _r:
                del me._alive[key]
                me.current -= n

        self._alive[key] = weakref.ref(st, _gone)

    def track(self, *objs) -> "LiveBytes":
        """Count the storages of tensors that already exist (iterables, dicts, modules' tensors allowed)."""
        for obj in objs:
            if isinstance(obj, torch.nn.Module):
                obj = list(obj.parameters()) + list(obj.buffers())
            elif not isinstance(obj, (torch.Tensor, list, tuple, dict)) and hasattr(obj, "__iter__"):
                obj = list(obj)
            for st in _storages(obj):
                self._add(st)
        return self

    def reset_peak(self) -> None:
        """Start a new peak measurement: ``peak`` = the bytes alive now."""
        self.peak = self.current

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for st in _storages(out):
            self._add(st)
        return out


_REGISTERED = False


def register_cpu_attention_flops() -> None:
    """Register ``sdpa_flop_count`` for the CPU flash-attention op (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from torch.utils.flop_counter import register_flop_formula, sdpa_flop_count

    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        try:
            @register_flop_formula(op)
            def _cpu_flash_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
                return sdpa_flop_count(query_shape, key_shape, value_shape)
        except (RuntimeError, ValueError):  # another module registered it already
            pass
    _REGISTERED = True


@contextlib.contextmanager
def count_flops():
    """``FlopCounterMode`` (no printout) with CPU attention counted; read ``.get_total_flops()`` after."""
    from torch.utils.flop_counter import FlopCounterMode

    register_cpu_attention_flops()
    mode = FlopCounterMode(display=False)
    with mode:
        yield mode
