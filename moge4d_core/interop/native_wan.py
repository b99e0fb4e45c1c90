"""ComfyUI-convention adapters for the Wan parts of MoGe4D (duck-typed: ComfyUI is never imported here).

Two bridges between the core pipeline and ComfyUI's native Wan stack:

* :class:`ChannelLastVAE` turns a VAE with ComfyUI's ``VAE`` calling convention into the core
  :class:`~moge4d_core.pipeline.image_vae.ImageVAE` protocol.  ComfyUI v0.21 (``comfy/sd.py``):

  - ``VAE.encode(pixels (T,H,W,3) float [0,1])`` -> the *raw* Wan posterior mean ``(1,16,F,H/8,W/8)``
    (it maps pixels to [-1,1] itself, and the Wan21 latent normalisation is applied later by the diffusion
    model's ``process_latent_in``);
  - ``VAE.decode(raw latent (1,16,F,h,w))`` -> ``(1,T,H,W,3)`` float [0,1].

  The core protocol is ``encode((B,3,T,H,W) [-1,1]) -> normalised latent`` and ``decode(normalised latent) ->
  (B,3,T,H,W) [-1,1]``; the adapter converts layout and range and applies the Wan2.1 normalisation
  ``z = (mu − mean)/std`` (:func:`~moge4d_core.models.motion_vae.normalize_latent`, ``traj_norm=False``).

* :func:`fun_inp_concat_inputs` gives the values ComfyUI's ``WAN21`` model (``comfy/model_base.py``,
  ``concat_cond``) needs to feed a Wan2.1-Fun-InP DiT exactly the 4D-ViSM inputs of the release
  (reference §C; :mod:`moge4d_core.models.vism_mask`):

  - the pixels to encode: the render with holes set to 0.5 (ComfyUI's encode maps them to 0 in [-1,1], the
    release's masked video ``(2r − 1)·(hole < 0.5)``);
  - ``concat_mask (1,4,F,h,w)`` = ``1 − known`` (ComfyUI's ``concat_cond`` computes ``1 − concat_mask``, so
    the model receives the release's packed "1 = known" mask latent);
  - when every pixel is a hole the release feeds all-zero latents: then the raw latent to use is the Wan
    mean (``process_latent_in`` of it is exactly 0), :func:`raw_zero_latent`.

Written by hand because these are conventions of two code bases (ComfyUI's VAE wrapper and the Fun-InP
mask packing), not something a library provides.
"""
from __future__ import annotations

from typing import Any

import torch

from ..errors import MoGe4DInputError, require
from ..models import constants as C
from ..models.motion_vae import denormalize_latent, normalize_latent
from ..models.vism_mask import all_holes, binarize_holes, pack_mask_latent

__all__ = ["ChannelLastVAE", "empty_latent", "fun_inp_concat_inputs", "raw_zero_latent",
           "masked_pixels"]


class ChannelLastVAE:
    """Core ``ImageVAE`` over a VAE with ComfyUI's ``encode``/``decode`` conventions (module docstring).

    ``vae``: any object with ``encode(pixels (T,H,W,3) [0,1]) -> raw latent (1,16,F,h,w)`` and
    ``decode(raw latent) -> (1,T,H,W,3) [0,1]`` (ComfyUI's ``comfy.sd.VAE`` for a Wan2.1 VAE).
    """

    def __init__(self, vae: Any, name: str = "vae") -> None:
        """Wrap ``vae``; ``name`` is the input's name in error messages.

        Raises:
            MoGe4DInputError: ``vae`` has no ``encode`` / ``decode``.
        """
        require(hasattr(vae, "encode") and hasattr(vae, "decode"),
                f"{name}: expected a VAE with encode/decode (ComfyUI VAELoader), got {type(vae).__name__}")
        self.vae = vae
        self.name = name

    def _check_latent(self, z: torch.Tensor, what: str) -> torch.Tensor:
        if not isinstance(z, torch.Tensor) or z.ndim != 5 or z.shape[1] != C.LATENT_CHANNELS:
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise MoGe4DInputError(
                f"{self.name}: {what} a latent of shape (1,{C.LATENT_CHANNELS},F,h,w), got {shape}; this is not a "
                f"Wan2.1 VAE (wan_2.1_vae.safetensors). The Wan2.2 VAE (48 channels) does not fit these models.")
        return z

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """(B,3,T,H,W) in [-1,1] -> normalised latent (B,16,F,h,w) float32 (one VAE call per batch item).

        Args:
            video: (B, 3, T, H, W) in [-1, 1] (mapped to the wrapped VAE's (T, H, W, 3) [0, 1] frames).

        Returns:
            ``(mu − mean)/std`` (B, 16, (T-1)/4+1, H/8, W/8) float32 on the CPU.

        Raises:
            MoGe4DInputError: ``video`` is not (B, 3, T, H, W), or the VAE returns a latent that is not
                (1, 16, F, h, w) (not a Wan2.1 VAE).
        """
        require(isinstance(video, torch.Tensor) and video.ndim == 5 and video.shape[1] == 3,
                f"{self.name}: expected a (B,3,T,H,W) video, got "
                f"{tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__}")
        out = []
        for b in range(video.shape[0]):
            pixels = ((video[b].float().permute(1, 2, 3, 0) + 1) / 2).clamp(0, 1)        # (T,H,W,3) [0,1]
            raw = self._check_latent(self.vae.encode(pixels), "encode returned")
            out.append(normalize_latent(raw.float().cpu(), traj_norm=False))
        return torch.cat(out)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Normalised latent (B,16,F,h,w) -> (B,3,T,H,W) float32 in [-1,1].

        Args:
            latent: (B, 16, F, h, w) in the Wan-normalised space; de-normalised before the wrapped VAE's decode.

        Returns:
            (B, 3, T, H, W) float32 in [-1, 1] on the CPU, T = 4(F-1)+1, H = 8h, W = 8w for a Wan2.1 VAE.

        Raises:
            MoGe4DInputError: ``latent`` is not (B, 16, F, h, w), or the VAE's frames are not (B, T, H, W, 3).
        """
        raw = denormalize_latent(self._check_latent(latent, "decode takes").float().cpu(), traj_norm=False)
        frames = self.vae.decode(raw)
        if frames.ndim == 4:                                                            # (T,H,W,3)
            frames = frames[None]
        require(frames.ndim == 5 and frames.shape[-1] == 3,
                f"{self.name}: decode returned {tuple(frames.shape)}, expected (B,T,H,W,3) frames")
        return (frames.float().permute(0, 4, 1, 2, 3) * 2 - 1).clamp(-1, 1).cpu()


def masked_pixels(render: torch.Tensor, holes: torch.Tensor) -> torch.Tensor:
    """(T,H,W,3) [0,1] render + (T,H,W) holes -> (T,H,W,3) with hole pixels (>= 0.5) set to 0.5 (= 0 in [-1,1]).

    Args:
        render: (T, H, W, 3) float in [0, 1].
        holes: (T, H, W) hole mask, 1 = no point landed (binarised at 0.5).

    Returns:
        (T, H, W, 3) float32 in [0, 1]: the render where a point landed, 0.5 in the holes.
    """
    keep = (binarize_holes(holes) < 0.5).to(torch.float32)[..., None]
    return render.float() * keep + 0.5 * (1 - keep)


def raw_zero_latent(frames: int, height: int, width: int) -> torch.Tensor:
    """The raw Wan latent (1,16,F,H/8,W/8) whose Wan2.1 normalisation is exactly 0 (the per-channel mean).

    Args:
        frames: T (4k+1; F = (T-1)/4 + 1). height, width: image size in pixels (multiples of 8).

    Returns:
        (1, 16, F, height/8, width/8) float32, each channel filled with the Wan2.1 latent mean.
    """
    return denormalize_latent(empty_latent(frames, height, width), traj_norm=False)


def empty_latent(frames: int, height: int, width: int) -> torch.Tensor:
    """The all-zero LATENT ``(1,16,F,H/8,W/8)`` a native ``KSampler`` starts from at denoise 1 (its noise
    replaces it).

    Args:
        frames: T (4k+1; F = (T-1)/4 + 1). height, width: image size in pixels (multiples of 8).

    Returns:
        (1, 16, F, height/8, width/8) float32 zeros.
    """
    f = (frames - 1) // C.TEMPORAL_COMPRESSION + 1
    return torch.zeros(1, C.LATENT_CHANNELS, f, height // C.SPATIAL_COMPRESSION, width // C.SPATIAL_COMPRESSION)


def fun_inp_concat_inputs(render: torch.Tensor, holes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Render (T,H,W,3) [0,1] + holes (T,H,W) (1 = hole) -> ``(pixels, concat_mask, every_pixel_a_hole)``.

    ``pixels`` (T,H,W,3) [0,1]: what to give ComfyUI's ``VAE.encode`` for ``concat_latent_image``;
    ``concat_mask`` (1,4,F,H/8,W/8) float32: 1 − the release's packed known-mask (0 everywhere when nothing is a
    hole; all ones when everything is, where the release zeroes the mask latent too).
    T = 4k+1; H, W multiples of 8 (checked by :func:`~moge4d_core.models.vism_mask.pack_mask_latent`'s caller).
    """
    from ..models.vism_mask import _check

    _check(render, holes)
    known = pack_mask_latent(holes)
    every = all_holes(holes)
    if every:
        known = torch.zeros_like(known)
    return masked_pixels(render, holes), 1 - known, every

