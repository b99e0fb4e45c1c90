"""Options that make the DiT stages faster: extra LoRAs, the few-step preset, attention backends, regional compile.

* **Extra LoRAs** (``--lora FILE:STRENGTH``, repeatable): stacked on the 4D-ViSM DiT after the model folder's ViSM
  LoRA (which keeps its ``--lora-strength``, release 0.55), e.g. a step-distilled Wan2.1 I2V / InP LoRA for
  few-step inpainting; any layout :func:`moge4d_core.loading.lora.parse_lora` reads. Checked by name before any
  model loads (:func:`check_lora_specs`).
* **Few-step preset** (``--preset fast``): the inpainting stage runs :data:`FEW_STEP_PRESETS` ``["fast"]`` = 4 Euler
  steps, shift 5, CFG 1 (one DiT pass per step: no negative branch), the settings step-distilled Wan2.1 LoRAs are
  trained for. It needs such a LoRA (``--lora``): the plain ViSM model at 4 steps without guidance inpaints
  blurry. The trajectory stage keeps its own settings (no distilled 4D-STraG exists).
* **Attention backend** (``--attention-backend``): diffusers' attention dispatcher (``native`` = torch SDPA,
  ``flash``, ``sage``, ``xformers``, ``_native_cudnn``, ...) set *per model* on its attention processors
  (:func:`set_attention_backend`); diffusers' ``ModelMixin.set_attention_backend`` also changes the process-wide
  active backend, which is put back here, so the other models of the process keep theirs. A backend whose package
  is missing falls back to ``native`` with one message.
* **Regional compile** (``--compile``): ``torch.compile`` of the repeated transformer blocks only
  (diffusers' ``compile_repeated_blocks``; one compiled graph shared by the 40 blocks), :func:`compile_blocks`.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch.nn as nn

from ..errors import MoGe4DInputError

__all__ = ["FEW_STEP_PRESETS", "parse_lora_spec", "check_lora_specs", "preset_settings", "attention_backends",
           "check_attention_backend", "set_attention_backend", "compile_blocks", "apply_speed_options"]

FEW_STEP_PRESETS = {"fast": dict(steps=4, shift=5.0, cfg=1.0, solver="euler")}


def parse_lora_spec(text: str, option: str = "--lora") -> tuple[Path, float]:
    """``FILE:STRENGTH`` (or ``FILE``: strength 1) -> (path, strength). The strength is what follows the last ``:``
    when it reads as a number, so Windows drive letters (``C:\\loras\\x.safetensors:0.8``) work."""
    path, strength = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            strength = float(tail)
            path = head
        except ValueError:
            path, strength = text, 1.0
    if not math.isfinite(strength):
        raise MoGe4DInputError(f"{option} {text}: the strength must be a finite number")
    return Path(path), strength


def check_lora_specs(specs: Optional[Sequence[str]], option: str = "--lora") -> list[tuple[Path, float]]:
    """Parse every ``FILE:STRENGTH`` and check each file: it exists and (safetensors) its key names are a Wan DiT
    LoRA layout (names only; shapes are checked at the merge). Returns ``[(path, strength), ...]``."""
    from ..loading.lora import check_lora_keys

    out = []
    for text in specs or []:
        path, strength = parse_lora_spec(text, option)
        if not path.is_file():
            raise MoGe4DInputError(f"{option} {text}: no such file {path}")
        if path.suffix in (".safetensors", ".sft"):
            from safetensors import safe_open

            try:
                with safe_open(str(path), framework="pt") as f:
                    keys = list(f.keys())
            except Exception as exc:                      # damaged / not safetensors
                raise MoGe4DInputError(f"{option} {path}: cannot be read as safetensors ({exc})") from None
            check_lora_keys(keys, source=f"{option} {path}")
        out.append((path, strength))
    return out


def preset_settings(name: Optional[str], settings):
    """``settings`` (a :class:`~moge4d_core.pipeline.settings.SamplerSettings`) with the preset's steps, shift, CFG
    and solver; ``None`` returns them unchanged."""
    if name is None:
        return settings
    if name not in FEW_STEP_PRESETS:
        raise MoGe4DInputError(f"--preset {name}: unknown; choose one of {', '.join(FEW_STEP_PRESETS)}")
    return settings.replace(**FEW_STEP_PRESETS[name])


def attention_backends() -> list[str]:
    """The names diffusers' attention dispatcher knows (``native``, ``flash``, ``sage``, ...)."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    return [b.value for b in AttentionBackendName]


def check_attention_backend(name: Optional[str], option: str = "--attention-backend") -> None:
    """Refuse a name diffusers does not know (a typo), naming the choices. Missing packages are not checked here:
    :func:`set_attention_backend` falls back to ``native`` for those."""
    if name is None:
        return
    names = attention_backends()
    if name.lower() not in names:
        raise MoGe4DInputError(f"{option} {name}: unknown attention backend; choose one of {', '.join(names)}")


def set_attention_backend(model: nn.Module, name: str, *, label: str = "model",
                          report: Callable[[str], None] = print) -> str:
    """Use diffusers' attention backend ``name`` in ``model``'s attention layers only.

    Args:
        model: a diffusers model (our DiTs).
        name: an entry of :func:`attention_backends`.
        label: the model's name in the fallback message.
        report: where the one fallback message goes.

    Returns:
        the backend in use: ``name``, or ``"native"`` when ``name`` cannot run here (its package is missing).
    """
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    check_attention_backend(name)
    name = name.lower()
    previous = _AttentionBackendRegistry._active_backend
    try:
        model.set_attention_backend(name)
        used = name
    except (RuntimeError, ImportError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        report(f"attention backend '{name}' is not available for the {label} ({reason}); using 'native'")
        model.set_attention_backend("native")
        used = "native"
    finally:
        _AttentionBackendRegistry.set_active_backend(previous)     # per model, not process-wide
    return used


def compile_blocks(model: nn.Module, **compile_kwargs) -> nn.Module:
    """Regional ``torch.compile`` of ``model``'s repeated transformer blocks (diffusers' ``compile_repeated_blocks``;
    keyword arguments go to ``torch.compile``). Returns ``model``; the first forward pass compiles."""
    model.compile_repeated_blocks(**compile_kwargs)
    return model


def apply_speed_options(models, *, attention_backend: Optional[str] = None, compile: bool = False,
                        report: Callable[[str], None] = print) -> None:
    """Apply the CLI's ``--attention-backend`` and ``--compile`` to the DiTs of ``models``
    (:class:`~moge4d_core.pipeline.model_dir.LoadedModels`: ``strag`` and, when loaded, ``vism``)."""
    for label, model in (("4D-STraG", models.strag), ("4D-ViSM", getattr(models, "vism", None))):
        if model is None:
            continue
        if attention_backend is not None:
            set_attention_backend(model, attention_backend, label=label, report=report)
        if compile:
            compile_blocks(model)
