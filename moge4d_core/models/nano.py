"""Small MoGe4D model configurations: the shipped *nano* model and the *tiny* ones used by tests.

They are the same classes as the 14B models (same module tree, hence the same checkpoint key names), only
narrower: a nano checkpoint goes through exactly the loaders the released files use.  ``strag_config`` /
``vism_config`` give DiT configs (:func:`~moge4d_core.models.wan_dit.config.dit_config`), ``wan_vae_kwargs`` the diffusers ``AutoencoderKLWan``
arguments, ``motion_vae_config`` a :class:`MotionVAEConfig`.  ``build_*`` make seeded random models.

Sizes (parameters): ``NANO_STRAG`` ≈ 2.0 M (STraG), ``NANO`` ≈ 0.3 M (motion VAE), ``NANO_VISM`` (ViSM and its
pixel VAE), for 96×64 pixels and 17 frames; ``TINY`` a few hundred thousand in all, for 16×16-pixel CPU tests.
``NANO_VISM`` has the shapes ComfyUI v0.21 builds a Wan2.1 model in (``comfy/model_detection.py``, ``comfy/sd.py``),
so its files load in ComfyUI's own ``UNETLoader`` / ``VAELoader``: DiT ``num_heads = dim // 128``, ``freq_dim`` 256,
text context 4096 wide (umT5-XXL's), CLIP tokens 1280 wide (``img_emb`` is fixed at ViT-H/14's width); pixel VAE
``dim_mult [1,2,4,4]`` with 2 res blocks (only its base width is read from the file).
The nano STraG is wider than the rest: at width 64 its tokens (16 channels × 2×2 patch = 64 noise values, plus
as many condition values) do not fit through the residual stream, and it cannot even carry its noisy input
through to the velocity (reproduced in session 7: its flow loss stalls and its estimate of the clean latent
misses even the first latent frame, which is the same for every motion).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from .motion_vae import AdapterConfig, MotionVAE, MotionVAEConfig
from .wan_dit import STraGDiT, ViSMDiT
from .wan_dit.config import ARCH_INP, ARCH_STRAG, dit_config

__all__ = ["ModelSize", "NANO", "NANO_STRAG", "NANO_VISM", "TINY", "strag_config", "vism_config", "wan_vae_kwargs", "motion_vae_config",
           "build_strag", "build_vism", "build_wan_vae", "build_motion_vae", "randomize_"]


@dataclass(frozen=True)
class ModelSize:
    """Widths of one small model family. ``text_dim``/``image_dim``: context widths (umT5 4096 / CLIP 1280
    in the real models); ``mpm_dim``: OmniMAE width for the Motion Perception Module (None = no MPM)."""

    dim: int = 64
    ffn_dim: int = 128
    num_heads: int = 4
    num_layers: int = 4
    text_dim: int = 32
    image_dim: int = 32
    freq_dim: int = 32
    mpm_dim: int | None = None
    vae_base_dim: int = 8
    vae_dim_mult: tuple[int, ...] = (1, 2, 2, 2)
    vae_res_blocks: int = 1
    adapter_channels: int = 32
    adapter_groups: int = 8       # 4 channels per GroupNorm group, as the release's 128/32 (1 per group is an
                                  # instance norm that erases each frame's motion magnitude)


NANO = ModelSize()
NANO_STRAG = ModelSize(dim=128, ffn_dim=512, num_layers=6)
NANO_VISM = ModelSize(dim=128, ffn_dim=256, num_heads=1, num_layers=4, text_dim=4096, image_dim=1280, freq_dim=256,
                      vae_dim_mult=(1, 2, 4, 4), vae_res_blocks=2)
TINY = ModelSize(dim=24, ffn_dim=48, num_heads=2, num_layers=2, text_dim=16, image_dim=16, freq_dim=16, mpm_dim=64,
                 vae_base_dim=4, adapter_channels=32)


def _common(s: ModelSize) -> dict:
    return dict(dim=s.dim, ffn_dim=s.ffn_dim, num_heads=s.num_heads, num_layers=s.num_layers, text_dim=s.text_dim,
                freq_dim=s.freq_dim, image_dim=s.image_dim)


def strag_config(s: ModelSize = NANO_STRAG) -> Mapping[str, Any]:
    """DiT config of a small 4D-STraG (64 input channels, ``ref_conv``, MPM of width ``s.mpm_dim`` or none,
    ``mpm_alignment="corrected"``), as :func:`~moge4d_core.models.wan_dit.config.dit_config` returns it."""
    return dit_config(_common(s), arch=ARCH_STRAG, in_channels=64, ref_conv_in_dim=16, mpm_feature_dim=s.mpm_dim,
                      mpm_alignment="corrected")


def vism_config(s: ModelSize = NANO_VISM) -> Mapping[str, Any]:
    """DiT config of a small 4D-ViSM (Wan2.1-Fun-InP layout: 36 input channels, CLIP context of width
    ``s.image_dim``), as :func:`~moge4d_core.models.wan_dit.config.dit_config` returns it."""
    return dit_config(_common(s), arch=ARCH_INP, in_channels=36)


def wan_vae_kwargs(s: ModelSize = NANO) -> dict:
    """diffusers ``AutoencoderKLWan`` arguments of the Wan VAE of size ``s`` (``NANO``: the motion VAE's;
    ``NANO_VISM``: the pixel VAE's, in ComfyUI's Wan2.1 layout)."""
    return dict(base_dim=s.vae_base_dim, z_dim=16, dim_mult=list(s.vae_dim_mult), num_res_blocks=s.vae_res_blocks,
                attn_scales=[], temperal_downsample=[False, True, True])


def motion_vae_config(s: ModelSize = NANO) -> MotionVAEConfig:
    """:class:`MotionVAEConfig` of a small motion VAE: the Wan VAE of :func:`wan_vae_kwargs` and adapters of
    ``s.adapter_channels`` channels in ``s.adapter_groups`` GroupNorm groups."""
    return MotionVAEConfig(vae=wan_vae_kwargs(s),
                           adapter=AdapterConfig(channels=s.adapter_channels, groups=s.adapter_groups))


def randomize_(model: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
    """Overwrite every parameter with seeded N(0, scale²) noise (1 + noise for norm weights); returns model.

    Args:
        model: any module; changed in place.
        seed: seed of the CPU generator (the same seed gives the same weights).
        scale: standard deviation of the noise.

    Returns:
        ``model``.
    """
    g = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * scale
            p.copy_((1 + noise) if name.endswith("norm.weight") or ".norm" in name and name.endswith("weight")
                    else noise)
    return model


def build_strag(s: ModelSize = NANO_STRAG, seed: int = 0, random: bool = True) -> STraGDiT:
    """A seeded small :class:`STraGDiT` of size ``s`` (float32, CPU); ``random=False`` keeps the constructor's
    initialisation instead of :func:`randomize_`."""
    torch.manual_seed(seed)
    m = STraGDiT(**strag_config(s))
    return randomize_(m, seed) if random else m


def build_vism(s: ModelSize = NANO_VISM, seed: int = 0, random: bool = True) -> ViSMDiT:
    """A seeded small :class:`ViSMDiT` of size ``s`` (float32, CPU); ``random=False`` keeps the constructor's
    initialisation instead of :func:`randomize_`."""
    torch.manual_seed(seed)
    m = ViSMDiT(**vism_config(s))
    return randomize_(m, seed) if random else m


def build_wan_vae(s: ModelSize = NANO_VISM, seed: int = 0):
    """A seeded diffusers ``AutoencoderKLWan`` of size ``s`` (:func:`wan_vae_kwargs`; default: the nano pixel VAE)."""
    from diffusers import AutoencoderKLWan
    torch.manual_seed(seed)
    return AutoencoderKLWan(**wan_vae_kwargs(s))


def build_motion_vae(s: ModelSize = NANO, seed: int = 0) -> MotionVAE:
    """A seeded :class:`MotionVAE` of size ``s`` (:func:`motion_vae_config`), constructor initialisation."""
    torch.manual_seed(seed)
    return MotionVAE(motion_vae_config(s))
