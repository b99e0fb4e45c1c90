"""Where the shipped nano model lives (``moge4d_core/nano_model/``; see the README beside its files)."""
from pathlib import Path

NANO_DIR = Path(__file__).resolve().parent.parent / "nano_model"
