"""Tiny models and synthetic data shared by the trainer tests (CPU, seconds)."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

H, W, T = 16, 32, 5
TINY_DIT = dict(dim=24, ffn_dim=48, num_heads=2, num_layers=2, text_dim=32, freq_dim=16)
STRAG_CFG = dict(arch="moge4d_strag", in_dim=64, image_dim=16, ref_conv_in_dim=16, **TINY_DIT)
VISM_CFG = dict(arch="wan2.1_fun_inp", in_dim=36, image_dim=16, **TINY_DIT)
TINY_VAE = dict(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, attn_scales=[],
                temperal_downsample=[False, True, True])
TINY_ADAPTER = dict(channels=32)   # GroupNorm 32 groups: the release layout stores no group count
DATA_ARGS = ["--frames", str(T), "--crop", "none", "--grid", f"{H}x{W}", "--no-progress", "--warmup-steps", "0"]


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


def write_data(folder: Path, count: int, seed: int = 0) -> Path:
    from training.datasets.synthetic import write_synthetic_dataset

    write_synthetic_dataset(folder, count, height=H, width=W, frames=T, seed=seed)
    return folder


def tiny_motion_vae(seed: int = 0):
    from moge4d_core.models.motion_vae import AdapterConfig, MotionVAE, MotionVAEConfig

    torch.manual_seed(seed)
    return MotionVAE(MotionVAEConfig(vae=dict(TINY_VAE), adapter=AdapterConfig(**TINY_ADAPTER)))


def tiny_pixel_vae(seed: int = 0):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    return AutoencoderKLWan(**TINY_VAE)


def save_pixel_vae(vae, path: Path) -> Path:
    """Write a diffusers AutoencoderKLWan in the original Wan key layout (what load_wan_vae reads)."""
    from safetensors.torch import save_file

    from moge4d_core.loading.motion_vae import wan_vae_diffusers_to_original

    state = wan_vae_diffusers_to_original(vae.state_dict(), dict(vae.config))
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def tree_snapshot(folder: Path) -> dict:
    """{relative path: (sha256, size, mtime_ns)} of every file below ``folder``."""
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            p = Path(dirpath) / name
            st = p.stat()
            out[str(p.relative_to(folder))] = (hashlib.sha256(p.read_bytes()).hexdigest(), st.st_size, st.st_mtime_ns)
    return out
