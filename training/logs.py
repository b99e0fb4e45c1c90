"""Training logs: JSON lines always, TensorBoard event files when the ``tensorboard`` package is installed.

``<out>/logs/train.jsonl`` gets one JSON object per record (``{"kind": "train", "step": ..., "loss": ...}``,
``{"kind": "eval", ...}``, ``{"kind": "skip", ...}``), flushed after each line, appended across resumed runs.
TensorBoard is optional and not a dependency of this project: ``torch.utils.tensorboard`` needs the
``tensorboard`` package; without it :class:`RunLogger` says once that TensorBoard logging is off and keeps
writing the JSONL file (``pip install tensorboard`` to get event files in ``<out>/logs/tensorboard``).
Only the main process writes.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Callable, Optional

__all__ = ["RunLogger"]


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, Path):
        return str(v)
    return v


class RunLogger:
    """JSONL (+ TensorBoard) writer. ``enabled=False`` (non-main processes) makes every call a no-op."""

    def __init__(self, folder: os.PathLike, enabled: bool = True, tensorboard: bool = True,
                 echo: Optional[Callable[[str], None]] = None) -> None:
        self.enabled = enabled
        self.folder = Path(folder)
        self.tb = None
        self.tensorboard_note = ""
        self._fh = None
        if not enabled:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.folder / "train.jsonl", "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self.tensorboard_note = ("TensorBoard logging is off: the 'tensorboard' package is not installed "
                                         "(pip install tensorboard); logs go to logs/train.jsonl only")
            else:
                self.tb = SummaryWriter(str(self.folder / "tensorboard"))
        if self.tensorboard_note and echo is not None:
            echo(self.tensorboard_note)

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        self._fh.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        self._fh.flush()
        if self.tb is not None and "step" in record:
            prefix = record.get("kind", "train")
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self.tb.add_scalar(f"{prefix}/{k}", v, int(record["step"]))

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self.tb is not None:
            self.tb.close()
            self.tb = None
