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


PACK = "moge4d_pack"   # the pack imported by a package path, as ComfyUI imports custom_nodes/<folder>/


def _import_pack():
    """The repository root as the package ``moge4d_pack`` (so its ``nodes`` never shadows ComfyUI's ``nodes``)."""
    import importlib.util

    if PACK not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACK, ROOT / "__init__.py",
                                                      submodule_search_locations=[str(ROOT)])
        pack = importlib.util.module_from_spec(spec)
        sys.modules[PACK] = pack
        spec.loader.exec_module(pack)
    return sys.modules[PACK]


def pack_module(name: str):
    """A module of the pack's node layer by its package path, e.g. ``pack_module("nodes.models")``."""
    import importlib

    _import_pack()
    return importlib.import_module(f"{PACK}.{name}")


def load_nodes(tmp_path):
    """Import the pack's ``nodes`` package against the ComfyUI stand-in, with fresh folders in tmp_path.

    Returns the ``nodes`` package, imported as ``moge4d_pack.nodes``; ``folder_paths`` points input/output/temp at
    tmp_path subfolders.
    """
    if str(STUB) not in sys.path:
        sys.path.insert(0, str(STUB))
    import folder_paths

    for sub in ("input", "output", "temp"):
        (tmp_path / sub).mkdir(exist_ok=True)
    folder_paths.set_dirs(tmp_path / "input", tmp_path / "output", tmp_path / "temp")
    import comfy.model_management as mm

    mm.reset_interrupt()
    return pack_module("nodes")
