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
