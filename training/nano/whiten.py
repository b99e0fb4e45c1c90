"""Whiten a small motion VAE's latent space, exactly, by folding a per-channel affine map into its 1×1×1 convs.

The motion VAE maps its raw posterior mean to the DiT's latent space with the *real* Wan2.1 constants
(:func:`~moge4d_core.models.motion_vae.normalize_latent`: ``z = A·raw + B`` per channel, ``A = 1/(std_wan·std_traj)``).
A 14B-release VAE lands near zero mean and unit spread there; a nano VAE trained here does not (per-channel means
of ±6 and spreads of 0.4–4 after the nano recipe), which hurts a flow-matching DiT whose noise is N(0,1).
:func:`whiten_motion_vae` changes the VAE, not the constants, so every loader and the official arithmetic stay
as they are: with ``m``, ``s`` the per-channel mean and std of ``z`` over some motions, it rewrites

* ``quant_conv`` mean rows: ``raw' = a·raw + b`` with ``a = 1/s``, ``b = ((B − m)/s − B)/A``, so that
  ``z' = A·raw' + B = (z − m)/s``;
* ``quant_conv`` log-variance biases: ``− 2·ln s`` (the posterior σ, which the release adds in normalised space,
  shrinks by the same ``1/s``);
* ``post_quant_conv``: ``W' = W·diag(1/a)``, ``c' = c − W·(b/a)``, so the decoder sees the same ``raw``.

Decoding ``z'`` therefore gives exactly (up to float rounding) what decoding ``z`` gave; only the coordinates of
the latent space change.  No library does this (it is specific to the Wan VAE's two 1×1×1 convs and the
MoGe4D normalisation), hence the hand-written code.  ``traj_norm``: which normalisation the whitened space is
the one of (the STraG trainer's default, True).
"""
from __future__ import annotations

import math

import torch

from moge4d_core.errors import require
from moge4d_core.models import constants as C
from moge4d_core.models.motion_vae import MotionVAE

__all__ = ["latent_moments", "set_posterior_sigma", "whiten_motion_vae"]


def _affine(traj_norm: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) float64 (16,) with ``normalize_latent(raw) = A·raw + B`` per channel."""
    wm, ws = torch.tensor(C.WAN_LATENT_MEAN, dtype=torch.float64), torch.tensor(C.WAN_LATENT_STD, dtype=torch.float64)
    a, b = 1 / ws, -wm / ws
    if traj_norm:
        tm, ts = torch.tensor(C.TRAJ_LATENT_MEAN, dtype=torch.float64), torch.tensor(C.TRAJ_LATENT_STD, dtype=torch.float64)
        a, b = a / ts, (b - tm) / ts
    return a, b


@torch.no_grad()
def latent_moments(vae: MotionVAE, motions, *, traj_norm: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (float64, (16,)) of the normalised posterior means of ``motions``, an iterable of
    (B,3,T,H,W) normalised-motion tensors."""
    total = count = sq = 0
    for d in motions:
        z, _ = vae.posterior(d, traj_norm=traj_norm)
        z = z.double()
        total = total + z.sum((0, 2, 3, 4))
        sq = sq + z.square().sum((0, 2, 3, 4))
        count += z.numel() // z.shape[1]
    require(count > 0, "latent_moments: no motions given")
    mean = total / count
    return mean, (sq / count - mean.square()).clamp_min(0).sqrt()


@torch.no_grad()
def whiten_motion_vae(vae: MotionVAE, mean: torch.Tensor, std: torch.Tensor, *, traj_norm: bool = True) -> MotionVAE:
    """Fold ``z' = (z − mean)/std`` (per channel, (16,) each) into ``vae`` in place; returns it. See the module doc."""
    require(bool((std > 0).all()), "whiten_motion_vae: every channel needs a positive std (a constant channel "
                                   "cannot be whitened); use more or more varied motions")
    A, B = _affine(traj_norm)
    m, s = mean.double(), std.double()
    a = 1 / s
    b = ((B - m) / s - B) / A
    q, p = vae.vae.quant_conv, vae.vae.post_quant_conv
    z = C.LATENT_CHANNELS
    require(q.weight.shape[2:] == (1, 1, 1) and p.weight.shape[2:] == (1, 1, 1),
            "whiten_motion_vae: expected the Wan VAE's 1x1x1 quant_conv / post_quant_conv")
    dt = q.weight.dtype
    qw, qb = q.weight.double(), q.bias.double()
    qw[:z] *= a.view(-1, 1, 1, 1, 1)
    qb[:z] = qb[:z] * a + b
    qb[z:] -= 2 * torch.log(s)
    pw, pb = p.weight.double(), p.bias.double()
    w2 = pw[:, :, 0, 0, 0]
    pb = pb - w2 @ (b / a)
    pw = pw / a.view(1, -1, 1, 1, 1)
    q.weight.copy_(qw.to(dt)); q.bias.copy_(qb.to(dt))
    p.weight.copy_(pw.to(dt)); p.bias.copy_(pb.to(dt))
    return vae



@torch.no_grad()
def set_posterior_sigma(vae: MotionVAE, sigma: float, delta: torch.Tensor) -> MotionVAE:
    """Shift ``vae``'s ``quant_conv`` log-variance biases so that, on the motion ``delta`` (B,3,T,H,W), the mean
    log-variance of every channel is ``2·ln sigma``; in place, returns ``vae``. The release adds the posterior
    noise ``exp(logvar/2)·ε`` in the DiT's latent space, so after whitening this is the noise σ in that space
    (exactly σ everywhere when the encoder's log-variance is constant, as for the block codec)."""
    require(sigma > 0, f"set_posterior_sigma: sigma must be positive, got {sigma}")
    _, logvar = vae.posterior(delta)
    q = vae.vae.quant_conv
    q.bias[C.LATENT_CHANNELS:] += 2 * math.log(sigma) - logvar.mean((0, 2, 3, 4)).to(q.bias.dtype)
    return vae
