"""Shared timing helper for the benchmark scripts (run as ``python benchmarks/<script>.py``)."""
from __future__ import annotations

import statistics
import time

import torch


def timed(fn, device: torch.device, warmup: int, reps: int):
    """Median wall time of ``fn()`` over ``reps`` runs after ``warmup`` runs -> (seconds, last output).

    CUDA work is synchronised around each run so the time covers the kernels, not just their launch.
    """
    for _ in range(warmup):
        fn()
    times, out = [], None
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out
