"""Where the shipped nano model lives (``moge4d_core/nano_model/``; see the README beside its files), and its demo
input: the synthetic test image and its shipped metric depth, as ``python -m moge4d_core demo`` and the MoGe4D Nano
Demo Input node use them."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import MoGe4DInputError
from ..types import Geometry

NANO_DIR = Path(__file__).resolve().parent.parent / "nano_model"
# each part's file, relative to NANO_DIR; the ViSM and its pixel VAE sit in folders named as ComfyUI's model folders
# (the pack registers those two folders, so ComfyUI's own UNETLoader / VAELoader list them)
NANO_FILES = {"strag": "strag.safetensors", "motion_vae": "motion_vae.safetensors",
              "vism": "diffusion_models/moge4d_nano_vism.safetensors", "vae": "vae/moge4d_nano_vae.safetensors"}

__all__ = ["NANO_DIR", "NANO_FILES", "demo_spec", "demo_input"]


def demo_spec() -> dict:
    """The nano demo's ``demo.json``: ``image`` and ``depth`` file names, ``fov_deg`` (horizontal, degrees) and the
    ``settings`` the demo runs with.

    Raises:
        MoGe4DInputError: the file or one of those keys is missing (a broken install).
    """
    spec_file = NANO_DIR / "demo.json"
    if not spec_file.is_file():
        raise MoGe4DInputError(f"{spec_file}: the nano model files are missing; reinstall the pack")
    spec = json.loads(spec_file.read_text())
    missing = [k for k in ("image", "depth", "fov_deg", "settings") if k not in spec]
    if missing:
        raise MoGe4DInputError(f"{spec_file}: no {', '.join(missing)}; reinstall the pack")
    return spec


def demo_input() -> tuple[torch.Tensor, Geometry]:
    """The demo image ``(H, W, 3)`` in [0, 1] and its :class:`Geometry` (shipped metric depth, ``fov_deg``)."""
    from ..geometry.sources import geometry_from_depth
    from ..io.images import read_depth, read_image

    spec = demo_spec()
    image = read_image(NANO_DIR / spec["image"], "nano demo image")
    depth = read_depth(NANO_DIR / spec["depth"], metric=True, what="nano demo depth")
    geometry = geometry_from_depth(image, depth[..., None].expand(*depth.shape, 3), float(spec["fov_deg"]),
                                   depth_kind="metric")
    return image, geometry
