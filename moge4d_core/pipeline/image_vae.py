"""Pixel-space Wan VAE used for every *image/video* latent of the pipeline (not for motion latents).

The Wan DiTs take Wan2.1 VAE latents in the normalised space ``z = (mu − mean)/std`` (reference §A3,
stage 1, posterior mean = ``.mode()`` for conditions).  :class:`WanImageVAE` wraps diffusers'
``AutoencoderKLWan`` and does exactly that:

* ``encode(video (B,3,T,H,W) in [-1,1]) -> (B,16,(T-1)/4+1,H/8,W/8)`` normalised latent, float32;
* ``decode(latent (B,16,F,h,w)) -> (B,3,4(F-1)+1,8h,8w)`` in [-1,1], float32.

Which VAE to use where (reference §A2, §A4, §C):

* STraG conditions (control video, depth video, reference image) are encoded by the *base* Wan VAE
  encoder.  The released motion VAE keeps that encoder frozen, so ``WanImageVAE(motion_vae.vae)`` is an
  exact encoder for them (:meth:`WanImageVAE.from_motion_vae`); its decoder is the fine-tuned motion
  decoder, so such a wrapper refuses to decode images.
* ViSM needs the base Wan VAE for both directions (masked video in, final frames out).

Any object with the same two methods can stand in (the ComfyUI nodes adapt ComfyUI's own ``VAE``).
"""
from __future__ import annotations

from typing import Protocol

import torch

from ..errors import MoGe4DInputError, require
from ..models import constants as C
from ..models.motion_vae import denormalize_latent, normalize_latent

__all__ = ["ImageVAE", "WanImageVAE", "check_video"]


class ImageVAE(Protocol):
    """What the pipeline needs from a pixel VAE (see the module docstring for shapes)."""

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Video (B, 3, T, H, W) in [-1, 1] -> normalised latent (B, 16, (T-1)/4+1, H/8, W/8) float32."""
        ...

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Normalised latent (B, 16, F, h, w) -> video (B, 3, 4(F-1)+1, 8h, 8w) float32 in [-1, 1]."""
        ...


def check_video(video: torch.Tensor, name: str = "video") -> None:
    """Raise a readable error unless ``video`` is (B,3,T,H,W) with T = 4k+1 and H, W multiples of 8.

    Raises:
        MoGe4DInputError: ``video`` is not a 5-D tensor with 3 channels, T is not 4k+1, or H or W is not a
            multiple of 8 (pixels).
    """
    if not isinstance(video, torch.Tensor) or video.ndim != 5 or video.shape[1] != 3:
        shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
        raise MoGe4DInputError(f"{name}: expected a (B,3,T,H,W) video in [-1,1], got {shape}")
    t, h, w = video.shape[2:]
    require((t - 1) % C.TEMPORAL_COMPRESSION == 0,
            f"{name}: {t} frames; the Wan VAE needs 4k+1 frames (e.g. 5, 17, 49)")
    require(h % C.SPATIAL_COMPRESSION == 0 and w % C.SPATIAL_COMPRESSION == 0,
            f"{name}: size {h}x{w}; height and width must be multiples of 8")


class WanImageVAE:
    """diffusers ``AutoencoderKLWan`` with the Wan latent normalisation (stage 1 only).

    Args:
        vae: the diffusers ``AutoencoderKLWan`` (or a module with its ``encode`` / ``decode``); inputs are cast to
            its device and dtype.
        can_decode: False for an encoder-only view (the motion VAE, whose decoder is not the image one).
    """

    def __init__(self, vae: torch.nn.Module, *, can_decode: bool = True) -> None:
        self.vae = vae
        self.can_decode = can_decode

    @classmethod
    def from_motion_vae(cls, motion_vae) -> "WanImageVAE":
        """Encoder-only view of a :class:`~moge4d_core.models.motion_vae.MotionVAE` (its encoder is the base one)."""
        return cls(motion_vae.vae, can_decode=False)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the wrapped VAE's parameters."""
        return next(self.vae.parameters()).dtype

    @property
    def device(self) -> torch.device:
        """The device of the wrapped VAE's parameters."""
        return next(self.vae.parameters()).device

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Encode a video to the Wan-normalised latent (posterior mean), without gradients.

        Args:
            video: (B, 3, T, H, W) in [-1, 1], T = 4k+1, H and W multiples of 8.

        Returns:
            ``(mu - mean) / std``: (B, 16, (T-1)/4+1, H/8, W/8) float32 on the VAE's device.

        Raises:
            MoGe4DInputError: a video of another shape (:func:`check_video`).
        """
        check_video(video)
        mu = self.vae.encode(video.to(self.device, self.dtype)).latent_dist.mode()
        return normalize_latent(mu.float(), traj_norm=False)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Decode a Wan-normalised latent to a video, without gradients.

        Args:
            latent: (B, 16, F, h, w) in the normalised space.

        Returns:
            (B, 3, 4(F-1)+1, 8h, 8w) float32 in [-1, 1] on the VAE's device.

        Raises:
            MoGe4DInputError: this wrapper is an encoder-only view of the motion VAE (``can_decode`` False).
        """
        require(self.can_decode, "this VAE wraps the motion VAE, whose decoder is fine-tuned for motion maps; "
                                 "decode images with the base Wan2.1 VAE (Wan2.1_VAE.pth / wan_2.1_vae.safetensors)")
        z = denormalize_latent(latent.float(), traj_norm=False)
        return self.vae.decode(z.to(self.device, self.dtype)).sample.float().clamp(-1, 1)
