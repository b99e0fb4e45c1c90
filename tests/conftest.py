"""Shared pytest setup: deterministic, single-threaded torch so tests are fast on small CI machines."""
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
torch.manual_seed(0)


STUB = ROOT / "tests" / "comfy_stub"


def load_nodes(tmp_path):
    """Import the pack's ``nodes`` package against the ComfyUI stand-in, with fresh folders in tmp_path.

    Returns the ``nodes`` package; ``folder_paths`` points input/output/temp at tmp_path subfolders.
    """
    if str(STUB) not in sys.path:
        sys.path.insert(0, str(STUB))
    import folder_paths

    for sub in ("input", "output", "temp"):
        (tmp_path / sub).mkdir(exist_ok=True)
    folder_paths.set_dirs(tmp_path / "input", tmp_path / "output", tmp_path / "temp")
    import comfy.model_management as mm

    mm.reset_interrupt()
    import nodes

    return nodes
