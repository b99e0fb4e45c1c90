"""The nano model shipped inside the pack (``moge4d_core/nano_model/``) as a loader choice, and its two files
that ComfyUI's own loaders read.

Every MoGe4D loader whose stage the nano model has (Load 4D-STraG, Load Motion VAE, Load 4D-ViSM) lists
:data:`NANO_CHOICE` first; picking it loads the nano file through the same core loader as a user's file. The
choice is an exact name, not a path: nothing else maps into the package folder.

The nano ViSM and its pixel VAE are shaped as ComfyUI builds a Wan2.1 DiT / VAE, and their folders
(``nano_model/diffusion_models``, ``nano_model/vae``) are added to ComfyUI's ``diffusion_models`` and ``vae``
model folders at import (:func:`register_nano_folders`, after the user's own folders), so ``UNETLoader`` lists
``moge4d_nano_vism.safetensors`` and ``VAELoader`` ``moge4d_nano_vae.safetensors`` with no copy.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import folder_paths

from moge4d_core.pipeline.nano import NANO_DIR, NANO_FILES

NANO_CHOICE = "nano (built-in)"


def is_nano(name: Any) -> bool:
    """True when a loader's file choice is the built-in nano model."""
    return isinstance(name, str) and name == NANO_CHOICE


def nano_path(stage: str) -> str:
    """Path of the nano model's file for ``stage`` (``strag``, ``motion_vae``, ``vism``, ``vae``)."""
    return str(Path(NANO_DIR) / NANO_FILES[stage])


def nano_or(name: Any, problem: Optional[str]) -> Optional[str]:
    """``validate_inputs`` helper: no problem for the nano choice, else ``problem``."""
    return None if is_nano(name) else problem


def register_nano_folders() -> None:
    """Append the nano ViSM's and pixel VAE's folders to the ComfyUI model folders they are named after
    (``diffusion_models``, ``vae``)."""
    for part in ("vism", "vae"):
        folder = Path(nano_path(part)).parent
        folder_paths.add_model_folder_path(folder.name, str(folder), is_default=False)


register_nano_folders()
