"""The nano model shipped inside the pack (``moge4d_core/nano_model/``) as a loader choice.

Every loader whose stage the nano model has (Load 4D-STraG, Load Motion VAE, Load 4D-ViSM) lists
:data:`NANO_CHOICE` first; picking it loads the nano file through the same core loader as a user's file. The
choice is an exact name, not a path: nothing else maps into the package folder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from moge4d_core.pipeline.nano import NANO_DIR

NANO_CHOICE = "nano (built-in)"
NANO_FILES = {"strag": "strag.safetensors", "motion_vae": "motion_vae.safetensors", "vism": "vism.safetensors",
              "vae": "vae.safetensors"}


def is_nano(name: Any) -> bool:
    """True when a loader's file choice is the built-in nano model."""
    return isinstance(name, str) and name == NANO_CHOICE


def nano_path(stage: str) -> str:
    """Path of the nano model's file for ``stage`` (``strag``, ``motion_vae``, ``vism``, ``vae``)."""
    return str(Path(NANO_DIR) / NANO_FILES[stage])


def nano_or(name: Any, problem: Optional[str]) -> Optional[str]:
    """``validate_inputs`` helper: no problem for the nano choice, else ``problem``."""
    return None if is_nano(name) else problem
