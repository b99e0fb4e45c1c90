"""Loss-spike skipping (reference ``moge4d_official.md`` A2, A7).

The released VAE script skips a batch (no backward) when its loss is non-finite, above an absolute ceiling
(1e7), or above ``mean + 6·std`` of the last 1,000 kept losses once 100 losses have been seen (``10·mean``
when that std is below 1e-6). The released STraG script additionally skips a step whose loss exceeds 0.25
after step 50. :class:`LossSpikeGuard` implements both rules; its state (the recent kept losses) is saved
in every checkpoint so resumed runs make the same decisions.

In distributed runs the guard is fed the loss *gathered over all processes*, so every process takes the same
decision (a process that skipped its backward alone would desynchronise DDP).
"""
from __future__ import annotations

import math
from collections import deque
from typing import Optional

__all__ = ["LossSpikeGuard"]


class LossSpikeGuard:
    """Decides whether a loss value is a spike to skip.

    Args:
        k: the ``mean + k·std`` multiplier (release 6); ``None`` or 0 disables that rule.
        window: how many recent kept losses the statistic uses (release 1000).
        warmup: kept losses needed before the statistic applies (release 100).
        max_loss: skip anything above this (release 1e7).
        abs_threshold: optional extra ceiling (STraG release 0.25) applied from step ``abs_after`` on.
        small_std: below this std the rule is ``loss > small_std_factor · mean`` (release 1e-6, 10).
    """

    def __init__(self, k: Optional[float] = 6.0, window: int = 1000, warmup: int = 100, max_loss: float = 1e7,
                 abs_threshold: Optional[float] = None, abs_after: int = 0, small_std: float = 1e-6,
                 small_std_factor: float = 10.0) -> None:
        self.k, self.window, self.warmup = k, int(window), int(warmup)
        self.max_loss, self.abs_threshold, self.abs_after = max_loss, abs_threshold, int(abs_after)
        self.small_std, self.small_std_factor = small_std, small_std_factor
        self.history: deque = deque(maxlen=max(1, self.window))
        self.skipped = 0

    def threshold(self) -> Optional[float]:
        """The current statistical threshold, or None while warming up / disabled."""
        if not self.k or len(self.history) < max(self.warmup, 1):
            return None
        n = len(self.history)
        mean = sum(self.history) / n
        std = math.sqrt(sum((x - mean) ** 2 for x in self.history) / n) if n > 1 else 0.0
        return mean * self.small_std_factor if std < self.small_std else mean + self.k * std

    def check(self, loss: float, step: int) -> tuple[bool, str]:
        """``(skip, reason)`` for ``loss`` at optimizer step ``step``; kept losses enter the history."""
        reason = ""
        if not math.isfinite(loss):
            reason = f"loss is not finite ({loss})"
        elif self.max_loss is not None and loss > self.max_loss:
            reason = f"loss {loss:.6g} > ceiling {self.max_loss:g}"
        elif self.abs_threshold is not None and step > self.abs_after and loss > self.abs_threshold:
            reason = f"loss {loss:.6g} > {self.abs_threshold:g} after step {self.abs_after}"
        else:
            thr = self.threshold()
            if thr is not None and loss > thr:
                reason = f"loss {loss:.6g} > mean + {self.k:g}·std = {thr:.6g}"
        if reason:
            self.skipped += 1
            return True, reason
        self.history.append(float(loss))
        return False, ""

    def state_dict(self) -> dict:
        return {"history": list(self.history), "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        self.history = deque((float(x) for x in state.get("history", [])), maxlen=max(1, self.window))
        self.skipped = int(state.get("skipped", 0))
