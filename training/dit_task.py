"""What the two DiT trainers (4D-STraG, 4D-ViSM) share: model init from a config, full / LoRA training set-up,
the flow-matching step and the exports.

Exports (all read unchanged by the shared loaders):

* full model: ``<folder>/<subdir>/diffusion_pytorch_model.safetensors`` via
  :func:`moge4d_core.loading.wan_dit.save_wan_dit` (original Wan names + our arch/config metadata;
  :func:`~moge4d_core.loading.wan_dit.load_strag` / :func:`~moge4d_core.loading.wan_dit.load_vism_base` read it);
* LoRA: the kohya file ``<folder>/<lora_subdir>/lora_diffusion_pytorch_model.safetensors``
  (:func:`moge4d_core.loading.lora.export_kohya_lora`, ``lora_unet__`` keys, bf16 by default as the release;
  :func:`~moge4d_core.loading.lora.parse_kohya_lora` / :func:`~moge4d_core.loading.lora.merge_lora` read it) and the
  PEFT adapter folder ``<folder>/<lora_subdir>/peft/`` (:func:`training.adapters.load_peft_adapter`);
  with ``--export-merged`` also the full model with the LoRA folded in.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.models.wan_dit import config_to_json, dit_config, shipped_config

from .adapters import add_lora, linear_module_names, merged_copy, save_peft_adapter
from .engine import DTYPES, TrainTask
from .flow import flow_matching_inputs, masked_mse, training_sigmas

__all__ = ["DiTTask", "load_init_config", "cast_dit", "DIT_OPTION_HELP"]

DIT_OPTION_HELP = {
    "init_config": "random init from a DiT config JSON file (the model's constructor arguments, or the original Wan "
                   "config.json names dim / num_heads / in_dim ...; with 'arch') or a shipped config name "
                   "(e.g. wan2.1_14b_moge4d_strag)",
}


def load_init_config(spec: str, expect_arch: str) -> Mapping[str, Any]:
    """A DiT config (:func:`~moge4d_core.models.wan_dit.config.dit_config`) from a JSON file or a shipped config
    name; its arch must be ``expect_arch``."""
    p = Path(spec)
    if p.is_file():
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise MoGe4DInputError(f"--init-config {p}: not valid JSON ({exc})") from None
        d.pop("description", None)
        if not isinstance(d, dict):
            raise MoGe4DInputError(f"--init-config {p}: expected a JSON object of config fields, got {type(d).__name__}")
        d.setdefault("arch", expect_arch)
        try:
            cfg = dit_config(d)
        except MoGe4DInputError as exc:
            raise MoGe4DInputError(f"--init-config {p}: {exc}") from None
    else:
        cfg = shipped_config(str(spec))
    if cfg.arch != expect_arch:
        raise MoGe4DInputError(f"--init-config {spec}: architecture {cfg.arch!r}, this trainer needs {expect_arch!r}")
    return cfg


def cast_dit(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast a freshly built DiT to ``dtype`` except the modules diffusers keeps in float32 (its
    ``_keep_in_fp32_modules``: timestep embedder, AdaLN tables, affine norms), as the loaders do."""
    if dtype == torch.float32:
        return model
    keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, p in model.named_parameters():
        if not any(k in name.split(".") for k in keep):
            p.data = p.data.to(dtype)
    for name, module in model.named_modules():
        for bname, b in module.named_buffers(recurse=False):
            full = f"{name}.{bname}" if name else bname
            if b.is_floating_point() and not any(k in full.split(".") for k in keep):
                setattr(module, bname, b.to(dtype))
    return model


class DiTTask(TrainTask):
    """Base of the STraG / ViSM tasks. Subclasses build ``self.model`` and call :meth:`setup_training`."""

    adapter_name = "lora"
    full_subdir = "DiT"
    lora_subdir = "DiT-lora"
    lora_file = "lora_diffusion_pytorch_model.safetensors"

    def __init__(self, options) -> None:
        super().__init__(options)
        self.lora_config = None
        self.cfg: Optional[Mapping[str, Any]] = None    # the model's config (model.config)
        self.extra_tensors: dict[str, torch.Tensor] = {}
        self.frozen_prefixes: tuple[str, ...] = ()
        self.sigmas: Optional[torch.Tensor] = None
        self.device = torch.device("cpu")

    @property
    def weight_dtype(self) -> torch.dtype:
        return DTYPES[self.o.weight_dtype]

    def setup_training(self, model: torch.nn.Module, lora_rank: int, lora_alpha: Optional[float],
                       frozen_prefixes: tuple[str, ...] = ()) -> None:
        """Full fine-tune (every parameter but ``frozen_prefixes``) or LoRA on every nn.Linear outside them."""
        from moge4d_core.pipeline.memory import set_gradient_checkpointing

        self.frozen_prefixes = tuple(frozen_prefixes)
        model.requires_grad_(True)
        if lora_rank:
            alpha = float(lora_alpha) if lora_alpha else float(lora_rank)
            targets = [n for n in linear_module_names(model) if not self._frozen(n)]
            self.lora_config = add_lora(model, lora_rank, alpha, targets=targets, adapter_name=self.adapter_name)
        else:
            for n, p in model.named_parameters():
                if self._frozen(n):
                    p.requires_grad_(False)
        if self.o.gradient_checkpointing:
            set_gradient_checkpointing(model, True)
        model.train()
        self.model = model
        self.cfg = model.config
        self.sigmas = training_sigmas(self.o.shift).to(self.device)

    def _frozen(self, name: str) -> bool:
        return any(name.startswith(p) or f".{p}" in name for p in self.frozen_prefixes)

    def training_compat(self) -> dict:
        if self.lora_config is not None:
            mode = {"mode": "lora", "rank": int(self.lora_config.r), "alpha": float(self.lora_config.lora_alpha),
                    "targets": len(self.lora_config.target_modules)}
        else:
            mode = {"mode": "full", "frozen": list(self.frozen_prefixes)}
        return {"arch": self.cfg.arch, "config": config_to_json(self.cfg), "training": mode,
                "frames": self.o.frames, "crop": self.o.crop, "grid": self.o.grid}

    # -- one flow-matching prediction
    def flow_loss(self, model, x0: torch.Tensor, generator: torch.Generator, **kwargs) -> tuple[torch.Tensor, dict]:
        loss, metrics, _, _ = self.flow_prediction(model, x0, generator, **kwargs)
        return loss, metrics

    def flow_prediction(self, model, x0: torch.Tensor, generator: torch.Generator, **kwargs):
        """The flow loss plus what it was computed from: ``(loss, metrics, pred (B,C,F,h,w), FlowBatch)``."""
        fb = flow_matching_inputs(x0, self.sigmas, generator)
        pred = model(hidden_states=fb.noisy, timestep=fb.timestep, **kwargs)
        loss = masked_mse(pred, fb.target, self.o.loss_threshold)
        return loss, {"sigma": float(fb.sigma.float().mean())}, pred, fb

    # -- exports
    def export(self, model, folder: Path) -> dict[str, Path]:
        from moge4d_core.loading.lora import export_kohya_lora
        from moge4d_core.loading.wan_dit import save_wan_dit

        folder = Path(folder)
        paths: dict[str, Path] = {}
        dit_file = folder / self.full_subdir / "diffusion_pytorch_model.safetensors"
        if self.lora_config is None:
            paths["dit"] = save_wan_dit(model, dit_file, extra_tensors=self.extra_tensors)
            return paths
        sub = folder / self.lora_subdir
        paths["kohya_lora"] = export_kohya_lora(model, sub / self.lora_file, adapter_name=self.adapter_name,
                                                dtype=DTYPES[self.o.kohya_dtype])
        paths["peft_adapter"] = save_peft_adapter(model, sub / "peft", self.lora_config, self.adapter_name)
        if self.o.export_merged:
            merged = merged_copy(model)
            paths["dit"] = save_wan_dit(merged, dit_file, extra_tensors=self.extra_tensors)
        return paths

    def empty_model(self) -> torch.nn.Module:
        with torch.device("meta"):
            m = type(self.model)(**self.cfg)
        m.reset_rope("cpu")
        if self.lora_config is not None:
            from peft import inject_adapter_in_model

            inject_adapter_in_model(self.lora_config, m, adapter_name=self.adapter_name)
        return m

