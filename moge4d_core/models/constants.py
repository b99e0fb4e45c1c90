"""Latent normalisation constants of the Wan2.1 VAE and of the MoGe4D motion latents.

Both are per-channel (16 latent channels) and are *not* stored in any checkpoint: the official code keeps
them as plain tensors (reference ``moge4d_official.md`` §A3, ``MoGe4D/models/wan_vae.py`` L770-800).

Stage 1 (standard Wan2.1): ``z = (mu - WAN_LATENT_MEAN) / WAN_LATENT_STD``; the same 16 numbers are the
``latents_mean`` / ``latents_std`` defaults of diffusers' ``AutoencoderKLWan`` config.

Stage 2 (MoGe4D trajectory normalisation, ``use_traj_norm=True``): ``z' = (z - TRAJ_LATENT_MEAN) / TRAJ_LATENT_STD``.
``TRAJ_LATENT_MEAN`` is the full-precision list of the official code (``wan_vae.py`` L788);
``TRAJ_LATENT_STD`` is the active 4-decimal list (an older, commented-out std list is not used).
"""
from __future__ import annotations

WAN_LATENT_MEAN: tuple[float, ...] = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)
WAN_LATENT_STD: tuple[float, ...] = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)

TRAJ_LATENT_MEAN: tuple[float, ...] = (
    0.9336646795272827, -1.5638998746871948, 0.09716760367155075, -0.0003718015505000949,
    -0.4085753560066223, 2.252105474472046, -1.7826536893844604, 1.4354853630065918,
    -0.9819669127464294, -0.7372986078262329, 1.0731526613235474, -1.6012202501296997,
    -1.4650976657867432, -0.640479326248169, -0.23738965392112732, -1.252833604812622,
)
TRAJ_LATENT_STD: tuple[float, ...] = (
    0.4107, 0.5508, 0.2565, 0.3021, 0.2372, 0.5350, 0.3000, 0.4359,
    0.2033, 0.4194, 0.2107, 0.3985, 0.3314, 0.4098, 0.3906, 0.2863,
)

LATENT_CHANNELS = 16
TEMPORAL_COMPRESSION = 4
SPATIAL_COMPRESSION = 8
