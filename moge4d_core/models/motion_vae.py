"""The MoGe4D motion VAE: trajectory adapters around the Wan2.1 video VAE (reference §A2, §A3).

Data flow (shapes for the released setting, 49 frames at 368x512)::

    encode:  delta (B,3,T,H,W)  normalised relative motion dP_hat (x->R, y->G, z->B), frame 0 = 0, unbounded
             -> TrajectoryEncoderAdapter  = sigmoid(h + delta)              (B,3,T,H,W) in (0,1)
             -> x2 - 1                                                    (B,3,T,H,W) in (-1,1)
             -> Wan2.1 VAE encoder, posterior mean mu                      (B,16,(T-1)/4+1,H/8,W/8)
             -> stage 1: (mu - wan_mean) * (1/wan_std)
             -> stage 2 (traj_norm=True): (z - traj_mean) * (1/traj_std)   the DiT's latent space
    decode:  latent (B,16,F,h,w)
             -> stage 2 inverse (traj_norm=True): z / (1/traj_std) + traj_mean
             -> stage 1 inverse: z / (1/wan_std) + wan_mean
             -> Wan2.1 VAE decoder, clamped to [-1,1]                      (B,3,4(F-1)+1,8h,8w)
             -> TrajectoryDecoderAdapter (no output activation)            delta (B,3,T,H,W), unbounded

The normalisation arithmetic copies the official code operation for operation (multiply by the float32
reciprocal of the std when encoding, divide by that reciprocal when decoding; constants cast to the latent
dtype first), so results match the official implementation bit for bit in the same dtype.

Where the official code differs from the paper (reference §H5, §H6, §A3):

* The paper's learned "trajectory encoder" is never trained by the released script (the Wan encode runs under
  ``no_grad``) and its ``conv_out`` is zero-initialised, so the released encoder adapter is exactly the
  element-wise ``sigmoid(delta)``; the RGB motion map fed to the VAE is ``2*sigmoid(delta)-1 = tanh(delta/2)``.
  We still run the adapter layers, so a trained encoder adapter (ours) works too.
* The second-stage trajectory normalisation was added to the official code after training; official inference
  decodes STraG latents with both stages, the released training encodes targets with stage 1 only. Both are
  available here through ``traj_norm``.
* Official training samples the posterior with the *raw* log-variance around the *normalised* mean (a quirk
  inherited from VideoX-Fun). ``encode(sample=True)`` reproduces that; the default returns the mean (mode).

The Wan VAE itself is diffusers' :class:`~diffusers.AutoencoderKLWan` (maintained, with tiling and slicing),
not a re-implementation. The two adapters are small enough that we write them here (diffusers has no block
with these exact key names: ``conv_in``, ``down.0.block.0.{norm1,conv1,norm2,conv2}``, ``norm_out``, ``conv_out``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import MoGe4DInputError, require
from . import constants as C

GROUP_NORM_EPS = 1e-6


def _group_norm(channels: int, groups: int) -> nn.GroupNorm:
    if channels % groups:
        raise MoGe4DInputError(
            f"trajectory adapter: {channels} channels cannot be split into {groups} GroupNorm groups; "
            f"use a channel count that is a multiple of {groups}")
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=GROUP_NORM_EPS, affine=True)


class AdapterResBlock(nn.Module):
    """``x + conv2(drop(silu(norm2(conv1(silu(norm1(x)))))))`` with 3x3 convs; (N,C,H,W) -> (N,C,H,W).

    Same channels in and out, no time embedding, no shortcut conv (reference §A2).
    """

    def __init__(self, channels: int, groups: int = 32, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = _group_norm(channels, groups)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = _group_norm(channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (N, C, H, W)`` -> ``(N, C, H, W)``, same dtype."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return x + h


class _Level(nn.Module):
    """Holds ``block`` (the res blocks) and an empty ``attn`` list, so keys read ``down.0.block.0.*``."""

    def __init__(self, channels: int, num_blocks: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.block = nn.ModuleList(AdapterResBlock(channels, groups, dropout) for _ in range(num_blocks))
        self.attn = nn.ModuleList()


def _frames_to_batch(x: torch.Tensor) -> torch.Tensor:
    b, c, t, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)


def _batch_to_frames(x: torch.Tensor, b: int, t: int) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.reshape(b, t, c, h, w).permute(0, 2, 1, 3, 4)


def _per_frame_chunks(fn, x2: torch.Tensor, chunk: Optional[int]) -> torch.Tensor:
    """Run a per-frame function over (N,C,H,W) in chunks of ``chunk`` frames (None: all at once).

    The adapters act on each frame independently (GroupNorm statistics are per frame), so chunking changes
    only peak memory: at 49x368x512 one 128-channel activation of all frames is 4.7 GB in float32.
    """
    if not chunk or x2.shape[0] <= chunk:
        return fn(x2)
    return torch.cat([fn(part) for part in x2.split(chunk)], dim=0)


@dataclass
class AdapterConfig:
    """Trajectory adapter sizes. Official: 128 channels, 32 groups, 1 encoder / 2 decoder res blocks, 3 in/out."""

    channels: int = 128
    in_channels: int = 3
    groups: int = 32
    encoder_blocks: int = 1
    decoder_blocks: int = 2
    dropout: float = 0.0


class _FrameAdapter(nn.Module):
    """Shared trunk of both adapters, per frame: ``conv_out(silu(norm_out(res^n(conv_in(x)))))``.

    The res blocks live under ``<level_name>.0.block`` (``down`` for the encoder, ``up`` for the decoder),
    matching the official key names. Built in the official registration order, so seeded random
    initialisation is unchanged. ``frame_chunk``: frames processed at once (memory only; None = all).
    """

    level_name: str
    frame_chunk: Optional[int] = 8

    def __init__(self, cfg: AdapterConfig, num_blocks: int) -> None:
        super().__init__()
        ch, cin = cfg.channels, cfg.in_channels
        self.conv_in = nn.Conv2d(cin, ch, 3, padding=1)
        setattr(self, self.level_name, nn.ModuleList([_Level(ch, num_blocks, cfg.groups, cfg.dropout)]))
        self.norm_out = _group_norm(ch, cfg.groups)
        self.conv_out = nn.Conv2d(ch, cin, 3, padding=1)

    def _trunk(self, x2: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x2)
        for blk in getattr(self, self.level_name)[0].block:
            h = blk(h)
        return self.conv_out(F.silu(self.norm_out(h)))

    def _frames(self, x2: torch.Tensor) -> torch.Tensor:
        return self._trunk(x2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the adapter to every frame of ``x (B, 3, T, H, W)``; returns ``(B, 3, T, H, W)``."""
        b, _, t, _, _ = x.shape
        return _batch_to_frames(_per_frame_chunks(self._frames, _frames_to_batch(x), self.frame_chunk), b, t)


class TrajectoryEncoderAdapter(_FrameAdapter):
    """Official ``VAEEncoderadaptor``: per frame, ``sigmoid(conv_out(silu(norm_out(res(conv_in(x))))) + x)``.

    Input (B,3,T,H,W) normalised motion (any real values); output (B,3,T,H,W) in (0,1).
    ``conv_out`` starts at zero (``zero_init=True``), which makes the adapter exactly ``sigmoid(x)``.
    ``frame_chunk``: frames processed at once (memory only; None = all).
    """

    level_name = "down"

    def __init__(self, cfg: AdapterConfig = AdapterConfig(), zero_init: bool = True) -> None:
        super().__init__(cfg, cfg.encoder_blocks)
        if zero_init:
            nn.init.zeros_(self.conv_out.weight)
            nn.init.zeros_(self.conv_out.bias)

    def _frames(self, x2: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self._trunk(x2) + x2)


class TrajectoryDecoderAdapter(_FrameAdapter):
    """Official ``VAEDecoderadaptor``: per frame ``conv_out(silu(norm_out(res(res(conv_in(x))))))``.

    Input (B,3,T,H,W) Wan VAE output in [-1,1]; output (B,3,T,H,W) normalised motion, no activation.
    ``frame_chunk``: frames processed at once (memory only; None = all).
    """

    level_name = "up"

    def __init__(self, cfg: AdapterConfig = AdapterConfig()) -> None:
        super().__init__(cfg, cfg.decoder_blocks)


def _per_channel(values, like: torch.Tensor) -> torch.Tensor:
    """float32 constants -> (1,16,1,1,1) in the dtype/device of ``like`` (as the official code casts them)."""
    return torch.tensor(values, dtype=torch.float32).to(like.device, like.dtype).view(1, -1, 1, 1, 1)


def _inv_per_channel(values, like: torch.Tensor) -> torch.Tensor:
    """``1/std`` computed in float32, then cast (official ``scale = [mean, 1.0/std]``)."""
    inv = 1.0 / torch.tensor(values, dtype=torch.float32)
    return inv.to(like.device, like.dtype).view(1, -1, 1, 1, 1)


def normalize_latent(mu: torch.Tensor, traj_norm: bool = True) -> torch.Tensor:
    """Raw Wan posterior mean (B,16,F,h,w) -> the DiT's latent space (reference §A3, encode order).

    Args:
        mu: the Wan VAE encoder's posterior mean ``(B, 16, F, h, w)``, any float dtype.
        traj_norm: also apply stage 2 (the MoGe4D trajectory normalisation) after the Wan stage.

    Returns:
        ``(B, 16, F, h, w)`` in the dtype and device of ``mu``.

    Raises:
        MoGe4DInputError: ``mu`` is not a 5-D tensor with 16 channels.
    """
    _check_latent("normalize_latent: mu", mu)
    z = (mu - _per_channel(C.WAN_LATENT_MEAN, mu)) * _inv_per_channel(C.WAN_LATENT_STD, mu)
    if traj_norm:
        z = (z - _per_channel(C.TRAJ_LATENT_MEAN, z)) * _inv_per_channel(C.TRAJ_LATENT_STD, z)
    return z


def denormalize_latent(z: torch.Tensor, traj_norm: bool = True) -> torch.Tensor:
    """Inverse of :func:`normalize_latent`, in the official decode order (traj stage first).

    Args:
        z: a latent in the DiT's latent space ``(B, 16, F, h, w)``.
        traj_norm: undo stage 2 too (must match how ``z`` was normalised).

    Returns:
        the raw Wan latent ``(B, 16, F, h, w)`` for the Wan VAE decoder, in the dtype and device of ``z``.

    Raises:
        MoGe4DInputError: ``z`` is not a 5-D tensor with 16 channels.
    """
    _check_latent("denormalize_latent: latent", z)
    if traj_norm:
        z = z / _inv_per_channel(C.TRAJ_LATENT_STD, z) + _per_channel(C.TRAJ_LATENT_MEAN, z)
    return z / _inv_per_channel(C.WAN_LATENT_STD, z) + _per_channel(C.WAN_LATENT_MEAN, z)


def _check_latent(name: str, z: torch.Tensor) -> None:
    if not isinstance(z, torch.Tensor) or z.ndim != 5 or z.shape[1] != C.LATENT_CHANNELS:
        shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise MoGe4DInputError(f"{name}: expected a latent of shape (B,{C.LATENT_CHANNELS},F,h,w), got {shape}")


@dataclass
class MotionVAEConfig:
    """Everything needed to rebuild a :class:`MotionVAE` (stored in our safetensors metadata)."""

    vae: dict = field(default_factory=dict)       # AutoencoderKLWan constructor kwargs
    adapter: AdapterConfig = field(default_factory=AdapterConfig)

    def to_dict(self) -> dict:
        """JSON-ready ``{"vae": {...}, "adapter": {...}}`` (what :meth:`from_dict` reads)."""
        return {"vae": dict(self.vae), "adapter": asdict(self.adapter)}

    @classmethod
    def from_dict(cls, d: dict) -> "MotionVAEConfig":
        """Inverse of :meth:`to_dict`; missing sections take the defaults."""
        return cls(vae=dict(d.get("vae", {})), adapter=AdapterConfig(**d.get("adapter", {})))


class MotionVAE(nn.Module):
    """Trajectory encoder adapter + Wan2.1 VAE + trajectory decoder adapter.

    Sub-modules (and state-dict prefixes): ``encoder_adapter``, ``vae`` (diffusers ``AutoencoderKLWan`` names),
    ``decoder_adapter``. Temporal compression 4 (causal: ``F = (T-1)/4 + 1``), spatial 8, 16 latent channels.

    Args:
        config: the sizes; None = the released setting (diffusers' default ``AutoencoderKLWan`` = Wan2.1 VAE,
            official adapters). Weights are random; load them with :mod:`moge4d_core.loading.motion_vae`.

    Raises:
        MoGe4DInputError: the Wan VAE of ``config.vae`` does not have 16 latent channels, or the adapter's
            channels are not a multiple of its GroupNorm groups.
    """

    def __init__(self, config: Optional[MotionVAEConfig] = None) -> None:
        super().__init__()
        from diffusers import AutoencoderKLWan

        self.config = config or MotionVAEConfig()
        self.encoder_adapter = TrajectoryEncoderAdapter(self.config.adapter)
        self.vae = AutoencoderKLWan(**self.config.vae)
        self.decoder_adapter = TrajectoryDecoderAdapter(self.config.adapter)
        require(self.vae.config.z_dim == C.LATENT_CHANNELS,
                f"MotionVAE: the Wan VAE must have {C.LATENT_CHANNELS} latent channels, got {self.vae.config.z_dim}")

    # -- encode ---------------------------------------------------------------------------------
    def encode(self, delta: torch.Tensor, *, traj_norm: bool = True, sample: bool = False,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Normalised motion ``delta`` (B,3,T,H,W) -> latent (B,16,(T-1)/4+1,H/8,W/8).

        ``T`` must be 4k+1 and ``H``, ``W`` multiples of 8. ``sample=True`` adds posterior noise
        ``exp(0.5*clamp(logvar,-30,20)) * N(0,1)`` to the *normalised* mean, as official training does.

        Args:
            delta: normalised relative motion ``dP_hat`` ``(B, 3, T, H, W)`` (x, y, z; frame 0 = 0), unbounded,
                on the model's device.
            traj_norm: apply the stage-2 trajectory normalisation (official inference: True).
            sample: add posterior noise instead of returning the mean.
            generator: the random generator for ``sample=True``.

        Returns:
            the latent ``(B, 16, (T-1)/4+1, H/8, W/8)`` in the DiT's latent space, in the VAE's dtype.

        Raises:
            MoGe4DInputError: ``delta`` is not ``(B, 3, T, H, W)``, ``T`` is not 4k+1, or ``H``/``W`` are not
                multiples of 8.
        """
        z, logvar = self.posterior(delta, traj_norm=traj_norm)
        if sample:
            std = torch.exp(0.5 * logvar)
            noise = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
            z = z + std * noise
        return z

    def posterior(self, delta: torch.Tensor, *, traj_norm: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised motion (B,3,T,H,W) -> (normalised posterior mean, raw log-variance), both (B,16,F,h,w).

        The mean is in the DiT's latent space (:func:`normalize_latent`); the log-variance is the Wan encoder's,
        clamped to [-30, 20] and *not* rescaled (the release pairs the two as they are, reference §A3).

        Args:
            delta: ``(B, 3, T, H, W)`` as in :meth:`encode`.
            traj_norm: apply the stage-2 trajectory normalisation to the mean.

        Returns:
            ``(mean, logvar)``, each ``(B, 16, (T-1)/4+1, H/8, W/8)``.

        Raises:
            MoGe4DInputError: as :meth:`encode`.
        """
        self._check_motion(delta)
        rgb = self.encoder_adapter(delta) * 2 - 1
        dist = self.vae.encode(rgb).latent_dist
        return normalize_latent(dist.mean, traj_norm=traj_norm), dist.logvar

    # -- decode ---------------------------------------------------------------------------------
    def decode_rgb(self, latent: torch.Tensor, *, traj_norm: bool = True) -> torch.Tensor:
        """Latent (B,16,F,h,w) -> the Wan VAE's motion map (B,3,4(F-1)+1,8h,8w) in [-1,1] (before the adapter).

        Args:
            latent: ``(B, 16, F, h, w)`` in the DiT's latent space (e.g. the sampler's output).
            traj_norm: undo the stage-2 normalisation (must match :meth:`encode`'s).

        Returns:
            the RGB motion map ``(B, 3, 4(F-1)+1, 8h, 8w)`` in [-1, 1].

        Raises:
            MoGe4DInputError: ``latent`` is not a 5-D tensor with 16 channels.
        """
        z = denormalize_latent(latent, traj_norm=traj_norm)
        return self.vae.decode(z).sample                        # diffusers clamps to [-1,1] like the official code

    def decode(self, latent: torch.Tensor, *, traj_norm: bool = True) -> torch.Tensor:
        """Latent (B,16,F,h,w) -> normalised motion ``delta`` (B,3,4(F-1)+1,8h,8w), unbounded.

        Args:
            latent: ``(B, 16, F, h, w)`` in the DiT's latent space.
            traj_norm: undo the stage-2 normalisation (must match :meth:`encode`'s).

        Returns:
            normalised relative motion ``dP_hat`` ``(B, 3, 4(F-1)+1, 8h, 8w)`` (x, y, z), unbounded (depth-guided
            normalisation, see :class:`~moge4d_core.types.NormalizationSpec`).

        Raises:
            MoGe4DInputError: ``latent`` is not a 5-D tensor with 16 channels.
        """
        return self.decoder_adapter(self.decode_rgb(latent, traj_norm=traj_norm))

    @staticmethod
    def _check_motion(delta: torch.Tensor) -> None:
        if not isinstance(delta, torch.Tensor) or delta.ndim != 5 or delta.shape[1] != 3:
            shape = tuple(delta.shape) if isinstance(delta, torch.Tensor) else type(delta).__name__
            raise MoGe4DInputError(f"MotionVAE.encode: expected motion of shape (B,3,T,H,W), got {shape}")
        t, h, w = delta.shape[2:]
        require((t - 1) % C.TEMPORAL_COMPRESSION == 0,
                f"MotionVAE.encode: the number of frames T={t} must be 4k+1 (e.g. 5, 9, 49) for the causal "
                f"Wan VAE; trim or pad the clip")
        require(h % C.SPATIAL_COMPRESSION == 0 and w % C.SPATIAL_COMPRESSION == 0,
                f"MotionVAE.encode: height and width must be multiples of 8, got {h}x{w}; resize or crop the input")

    @staticmethod
    def latent_shape(batch: int, frames: int, height: int, width: int) -> tuple[int, int, int, int, int]:
        """Latent shape ``(batch, 16, (frames-1)//4+1, height//8, width//8)`` for a (batch,3,frames,height,width)
        motion tensor (``frames`` 4k+1, ``height``/``width`` in pixels, multiples of 8)."""
        return (batch, C.LATENT_CHANNELS, (frames - 1) // C.TEMPORAL_COMPRESSION + 1,
                height // C.SPATIAL_COMPRESSION, width // C.SPATIAL_COMPRESSION)
