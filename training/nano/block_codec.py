"""A Wan2.1 VAE set by hand to an exact per-frame 8×8 block-mean codec: the nano motion VAE's starting point.

Why by hand: a small Wan VAE trained from random weights on this CPU learns one input channel at a time, each
after a plateau of hundreds of steps (sessions 6–10, ``benchmarks/RESULTS.md``): the nano motion VAE trained from
the nano pixel VAE carried only x of the three motion channels, and its encoder, which also encodes the STraG's
image conditions, kept almost no green. No library initialises a Wan VAE as a known linear codec, so this module
writes the weights of diffusers' :class:`~diffusers.AutoencoderKLWan` (the original key layout once exported)
such that, for a video ``v`` (B,3,T,H,W) in [-1,1] with T = 4k+1::

    encoder mean, latent frame 0   = 8×8 block means of frame 0 (channels 0-2), the rest 0
    encoder mean, latent frame j≥1 = 8×8 block means of frames 4j-3 .. 4j (channels 3·i + c for frame i, colour
                                     c; 12 channels), channels 12-14 their mean over the 4 frames, 15 the mean
                                     of all 12
    decode(encode(v))              = each frame's 8×8 block means, upsampled by repetition (nearest)

up to a relative error of about 1e-3 (the two RMS-norm + SiLU heads are the only non-linear steps; a constant
"carrier" channel of value :data:`CARRIER` in front of each keeps them in their linear range). Every residual
branch and the mid-block attention start at zero output (``conv2`` / ``proj`` weights 0) with their other
weights random, so training can grow non-linear refinements from this point. The posterior log-variance is
−10 everywhere (σ ≈ 0.007).

Channel plan (C = content, K = carrier)::

    encoder: conv_in 3→8 (C 0-2) → 2×2 means (down2d) → shortcut 8→16 → 2×2 means + time pairs (down3d: frames
             a,b → C 0-5) → 2×2 means + time pairs (down3d: (a,b),(c,d) → C 0-11, K 15) → norm_out, SiLU → conv_out
    decoder: conv_in → time split (up3d: C 0-5 | 6-11) ×2 nearest → time split (up3d: C 0-2 | 3-5) ×2 nearest →
             ×2 nearest (K 7) → norm_out, SiLU → conv_out (C 0-2)

Only the nano layout is supported: ``dim_mult [1, 2, 2, 2]``, ``num_res_blocks 1``, temporal downsampling
``[False, True, True]``, no attention scales, ``z_dim 16`` and a base width of at least 8.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from moge4d_core.errors import MoGe4DInputError

__all__ = ["CARRIER", "block_codec_wan_vae"]

CARRIER = 100.0        # value of the constant channel that keeps each RMS norm + SiLU head linear
HEAD_GAMMA = 0.05      # RMS-norm gain of the content channels: SiLU inputs stay below ~0.002 · |content|
LOGVAR = -10.0


def _zero_(module: nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()


def _route(conv: nn.Module, pairs, tap: tuple, weight: float = 1.0) -> None:
    """Zero ``conv`` and set ``weight[out, in, *tap] = weight`` for each (out, in) pair."""
    _zero_(conv)
    with torch.no_grad():
        for o, i in pairs:
            conv.weight[(o, i, *tap)] = weight


def _add(conv: nn.Module, pairs, tap: tuple, weight: float = 1.0) -> None:
    with torch.no_grad():
        for o, i in pairs:
            conv.weight[(o, i, *tap)] += weight


def _mean2x2(conv: nn.Conv2d, channels: range) -> None:
    """Stride-2 3×3 conv after a right/bottom zero pad -> the mean of each 2×2 block, per channel."""
    _zero_(conv)
    with torch.no_grad():
        for c in channels:
            conv.weight[c, c, 0:2, 0:2] = 0.25


def _same(n: range):
    return [(c, c) for c in n]


def block_codec_wan_vae(**vae_kwargs):
    """A diffusers ``AutoencoderKLWan(**vae_kwargs)`` whose weights form the block-mean codec described above.

    Args: the AutoencoderKLWan keyword arguments of :func:`moge4d_core.models.nano.wan_vae_kwargs` (the nano
    layout; others raise :class:`MoGe4DInputError`). Random weights (torch's current seed) stay in the parts
    that start at zero output."""
    from diffusers import AutoencoderKLWan
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanAttentionBlock, WanResample, WanResidualBlock

    vae = AutoencoderKLWan(**vae_kwargs)
    cfg = vae.config
    if (list(cfg.dim_mult) != [1, 2, 2, 2] or cfg.num_res_blocks != 1 or list(cfg.temperal_downsample) !=
            [False, True, True] or list(cfg.attn_scales) or cfg.z_dim != 16 or cfg.base_dim < 8):
        raise MoGe4DInputError(
            "block_codec_wan_vae: only the nano Wan VAE layout is supported (dim_mult [1,2,2,2], num_res_blocks 1, "
            f"temperal_downsample [False,True,True], no attention, z_dim 16, base_dim >= 8); got {dict(cfg)}")
    wide = 2 * cfg.base_dim
    centre3, centre2 = (2, 1, 1), (1, 1)          # causal conv: time tap 2 is the current frame

    for m in vae.modules():                       # residual branches and attention start at zero output
        if isinstance(m, WanResidualBlock):
            _zero_(m.conv2)
            if not isinstance(m.conv_shortcut, nn.Identity):
                _route(m.conv_shortcut, _same(range(6)), (0, 0, 0))
        elif isinstance(m, WanAttentionBlock):
            _zero_(m.proj)

    enc = vae.encoder
    _route(enc.conv_in, _same(range(3)), centre3)
    down = [m for m in enc.down_blocks if isinstance(m, WanResample)]
    _mean2x2(down[0].resample[1], range(3))                                   # down2d, 8 channels
    _mean2x2(down[1].resample[1], range(3))                                   # down3d: frames a,b -> C 0-5
    _route(down[1].time_conv, _same(range(3)), (1, 0, 0))
    _add(down[1].time_conv, [(3 + c, c) for c in range(3)], (2, 0, 0))
    _mean2x2(down[2].resample[1], range(6))                                   # down3d: (a,b),(c,d) -> C 0-11
    _route(down[2].time_conv, _same(range(6)), (1, 0, 0))
    _add(down[2].time_conv, [(6 + c, c) for c in range(6)], (2, 0, 0))
    with torch.no_grad():
        down[2].resample[1].bias[wide - 1] = CARRIER                           # K for the first chunk (no time conv)
        down[2].time_conv.bias[wide - 1] = CARRIER
        enc.norm_out.gamma.fill_(HEAD_GAMMA)
        enc.norm_out.gamma[wide - 1] = 1.0
    gain = 2 * CARRIER / (wide ** 0.5 * HEAD_GAMMA)                           # undo norm (÷K·√C·γ) and SiLU'(0)=½
    _route(enc.conv_out, _same(range(12)), centre3, gain)
    _add(enc.conv_out, [(12 + c, 3 * f + c) for c in range(3) for f in range(4)], centre3, gain / 4)
    _add(enc.conv_out, [(15, i) for i in range(12)], centre3, gain / 12)
    with torch.no_grad():
        enc.conv_out.bias[16:] = LOGVAR
    _route(vae.quant_conv, _same(range(32)), (0, 0, 0))
    _route(vae.post_quant_conv, _same(range(16)), (0, 0, 0))

    dec = vae.decoder
    _route(dec.conv_in, _same(range(12)), centre3)
    ups = [b.upsamplers[0] for b in dec.up_blocks if b.upsamplers is not None]
    _route(ups[0].time_conv, _same(range(6)), (2, 0, 0))                      # frame A: C 0-5, frame B: C 6-11
    _add(ups[0].time_conv, [(wide + c, 6 + c) for c in range(6)], (2, 0, 0))
    _route(ups[0].resample[1], _same(range(6)), centre2)
    _route(ups[1].time_conv, _same(range(3)), (2, 0, 0))                      # frame A: C 0-2, frame B: C 3-5
    _add(ups[1].time_conv, [(wide + c, 3 + c) for c in range(3)], (2, 0, 0))
    _route(ups[1].resample[1], _same(range(3)), centre2)
    _route(ups[2].resample[1], _same(range(3)), centre2)
    narrow = dec.norm_out.gamma.shape[0]
    with torch.no_grad():
        ups[2].resample[1].bias[narrow - 1] = CARRIER
        dec.norm_out.gamma.fill_(HEAD_GAMMA)
        dec.norm_out.gamma[narrow - 1] = 1.0
    _route(dec.conv_out, _same(range(3)), centre3, 2 * CARRIER / (narrow ** 0.5 * HEAD_GAMMA))
    return vae
