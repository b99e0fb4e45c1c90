"""Wan2.1 DiTs of MoGe4D (4D-STraG, 4D-ViSM base) built on diffusers' ``WanTransformer3DModel``.

See :mod:`.model` for the architecture and channel layouts, :mod:`.config` for the configs (the constructor
arguments, ``model.config``), :mod:`.text_path` for models trained without text, and
:mod:`moge4d_core.loading.wan_dit` for the checkpoint loaders.
"""
from .config import (ARCH_CONTROL, ARCH_CONTROL_V11, ARCH_INP, ARCH_STRAG, ARCH_T2V, ARCHS, config_to_json,
                     dit_config, hidden_width, list_shipped_configs, shipped_config)
from .model import MAdaNorm, MoGe4DWanBlock, STraGDiT, ViSMDiT, WanDiT
from .text_path import drop_text_input_, reads_text

__all__ = ["dit_config", "config_to_json", "hidden_width", "shipped_config", "list_shipped_configs", "WanDiT", "STraGDiT", "ViSMDiT",
           "MoGe4DWanBlock", "MAdaNorm", "ARCHS", "ARCH_STRAG", "ARCH_CONTROL_V11", "ARCH_CONTROL",
           "ARCH_INP", "ARCH_T2V", "reads_text", "drop_text_input_"]
