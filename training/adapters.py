"""LoRA training adapters through PEFT, and their exports (reference ``moge4d_official.md`` C).

* :func:`add_lora` injects PEFT ``LoraLayer`` adapters into every ``nn.Linear`` of a Wan DiT (the official
  ViSM recipe: 40·12 + 8 = 488 modules on the 14B I2V layout; on STraG the MPM linears too). PEFT's default
  init is the official one: ``lora_A`` (= kohya ``lora_down``) kaiming-uniform(a=√5), ``lora_B``
  (= ``lora_up``) zeros, scale ``alpha / rank``. PEFT marks every other parameter ``requires_grad=False``.
* :func:`save_peft_adapter` writes a standard PEFT adapter folder (``adapter_config.json`` +
  ``adapter_model.safetensors``, keys prefixed ``base_model.model.`` as ``PeftModel.save_pretrained`` does);
  :func:`load_peft_adapter` injects such a folder into a bare model.
* the kohya ``lora_unet__`` file is written with :func:`moge4d_core.loading.lora.export_kohya_lora`
  (names mapped back to the original Wan names), which the shared loaders parse and merge.
* :func:`merged_copy` gives a deep copy of the model with the adapters folded into the weights (for a
  full-DiT export of a LoRA run).
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Iterable, Optional

import torch
import torch.nn as nn

from moge4d_core.errors import MoGe4DInputError

__all__ = ["linear_module_names", "add_lora", "lora_parameter_names", "save_peft_adapter", "load_peft_adapter",
           "merged_copy", "PEFT_WEIGHTS", "PEFT_PREFIX"]

PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."


def linear_module_names(model: nn.Module, exclude: Iterable[str] = ()) -> list[str]:
    """Names of every ``nn.Linear`` in ``model`` (module order), minus names starting with an ``exclude`` prefix."""
    ex = tuple(exclude)
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not (ex and n.startswith(ex))]


def add_lora(model: nn.Module, rank: int, alpha: float, *, targets: Optional[list[str]] = None,
             adapter_name: str = "default"):
    """Inject a LoRA (rank, alpha) on ``targets`` (default: every nn.Linear) in place; returns the ``LoraConfig``."""
    from peft import LoraConfig, inject_adapter_in_model

    if rank < 1:
        raise MoGe4DInputError(f"--lora-rank must be >= 1, got {rank}")
    targets = list(targets) if targets is not None else linear_module_names(model)
    if not targets:
        raise MoGe4DInputError(f"{type(model).__name__}: no nn.Linear modules to put a LoRA on")
    config = LoraConfig(r=int(rank), lora_alpha=float(alpha), lora_dropout=0.0, target_modules=targets,
                        init_lora_weights=True, bias="none")
    inject_adapter_in_model(config, model, adapter_name=adapter_name)
    return config


def lora_parameter_names(model: nn.Module, adapter_name: str) -> list[str]:
    """Parameter names of one adapter (``...lora_A.<adapter>.weight`` / ``...lora_B.<adapter>.weight``)."""
    tag = f".{adapter_name}."
    return [n for n, _ in model.named_parameters() if (".lora_A" in n or ".lora_B" in n) and tag in n]


def save_peft_adapter(model: nn.Module, folder: os.PathLike, config, adapter_name: str) -> Path:
    """Write a PEFT adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``)."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = get_peft_model_state_dict(model, adapter_name=adapter_name)
    if not state:
        raise MoGe4DInputError(f"{type(model).__name__}: no PEFT adapter named {adapter_name!r} to save")
    config.save_pretrained(str(folder))
    save_file({PEFT_PREFIX + k: v.detach().cpu().contiguous() for k, v in state.items()},
              str(folder / PEFT_WEIGHTS), metadata={"format": "pt"})
    return folder


def load_peft_adapter(model: nn.Module, folder: os.PathLike, adapter_name: str = "default") -> nn.Module:
    """Inject the adapter saved by :func:`save_peft_adapter` into ``model`` (in place) and fill its weights."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / "adapter_config.json").is_file() or not (folder / PEFT_WEIGHTS).is_file():
        raise MoGe4DInputError(f"{folder}: not a PEFT adapter folder (expected adapter_config.json and {PEFT_WEIGHTS})")
    config = LoraConfig.from_pretrained(str(folder))
    inject_adapter_in_model(config, model, adapter_name=adapter_name)
    state = {k[len(PEFT_PREFIX):] if k.startswith(PEFT_PREFIX) else k: v for k, v in load_file(str(folder / PEFT_WEIGHTS)).items()}
    result = set_peft_model_state_dict(model, state, adapter_name=adapter_name)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise MoGe4DInputError(f"{folder}: {len(unexpected)} adapter tensors match no module of "
                               f"{type(model).__name__}, first: {unexpected[:5]}")
    return model


def merged_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every PEFT LoRA layer merged into its base layer and removed."""
    from peft.tuners.lora import LoraLayer

    out = copy.deepcopy(model)
    names = [n for n, m in out.named_modules() if isinstance(m, LoraLayer)]
    with torch.no_grad():
        for name in names:
            layer = out.get_submodule(name)
            layer.merge(safe_merge=True)
            parent_name, _, child = name.rpartition(".")
            parent = out.get_submodule(parent_name) if parent_name else out
            setattr(parent, child, layer.get_base_layer())
    for p in out.parameters():
        p.requires_grad_(False)
    return out
