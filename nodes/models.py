"""The pack's model folder (``models/moge4d``) and ComfyUI model management for the encoders.

* :func:`register_model_folder` merges ``moge4d -> <ComfyUI models dir>/moge4d`` into
  ``folder_paths.folder_names_and_paths`` without dropping an entry made from ``extra_model_paths.yaml``: existing
  paths stay first, the default folder is appended, the extension sets are united. Called at import of this module.
* :func:`wrap_model` puts a core model into a ``comfy.model_patcher.ModelPatcher`` (inside a small holder module,
  because ModelPatcher assigns ``model.device`` and our models expose ``device`` as a read-only property);
  :func:`model_for_inference` loads it with ``comfy.model_management.load_models_gpu`` and returns the core model.
No torch.cuda call happens at import.
"""
from __future__ import annotations

import os

import comfy.model_management as mm
import comfy.model_patcher
import folder_paths
import torch
import torch.nn as nn

from moge4d_core.errors import MoGe4DInputError

from .validation import MODEL_FOLDER  # noqa: F401  (re-exported)
MODEL_EXTENSIONS = {".safetensors", ".bin", ".pth", ".torch", ".pt"}
PRECISIONS = ["auto", "fp32", "fp16", "bf16"]
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def register_model_folder() -> None:
    """Add ``<models_dir>/moge4d`` to the ``moge4d`` model folder, keeping any paths already registered."""
    models_dir = getattr(folder_paths, "models_dir", None)
    default = os.path.join(models_dir, MODEL_FOLDER) if models_dir else None
    entry = folder_paths.folder_names_and_paths.get(MODEL_FOLDER)
    if entry is None:
        paths, exts = [], set()
    else:
        paths, exts = list(entry[0]), set(entry[1])
    if default is not None and default not in paths:
        paths.append(default)
    folder_paths.folder_names_and_paths[MODEL_FOLDER] = (paths, exts | MODEL_EXTENSIONS)


def model_files(subfolder: str | None = None) -> list[str]:
    """Files of the ``moge4d`` model folder (relative, ``/``-separated); those under ``subfolder/`` first."""
    try:
        files = folder_paths.get_filename_list(MODEL_FOLDER)
    except KeyError:
        return []
    if subfolder:
        inside = [f for f in files if f.startswith(subfolder.rstrip("/") + "/")]
        return inside + [f for f in files if f not in inside]
    return list(files)


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """``auto`` asks ComfyUI's model management (it knows the GPU, ``--force-fp32`` etc.); else the named dtype."""
    if precision == "auto":
        return mm.unet_dtype(device=device, supported_dtypes=[torch.bfloat16, torch.float16, torch.float32])
    if precision not in _DTYPES:
        raise MoGe4DInputError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    return _DTYPES[precision]


class ModelHolder(nn.Module):
    """Holds a core model for ModelPatcher; ``device`` is a plain attribute ModelPatcher may overwrite."""

    def __init__(self, inner: nn.Module, device: torch.device) -> None:
        super().__init__()
        self.inner = inner
        self.device = device


def wrap_model(model: nn.Module, load_device: torch.device, offload_device: torch.device):
    """A ``ModelPatcher`` around ``model`` (which should sit on ``offload_device``)."""
    holder = ModelHolder(model, offload_device)
    return comfy.model_patcher.ModelPatcher(holder, load_device=load_device, offload_device=offload_device)


def model_for_inference(patcher) -> nn.Module:
    """Let ComfyUI load the patcher onto its device (freeing memory as needed); the core model inside."""
    mm.load_models_gpu([patcher])
    return patcher.model.inner


register_model_folder()
