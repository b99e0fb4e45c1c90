"""Conditioning latents of the two DiTs, built from one image (reference §A4, §A5, §C, §J).

4D-STraG (``STraGDiT``), per the released checkpoint's recipe:

* control latent: VAE(the input image in [-1,1] repeated over all T frames)          (B,16,F,h,w)
* start-image slot: zeros (the official line that fills it is commented out)         (None here)
* depth latent: VAE(the first-frame depth, clamped to [0, 1e4], NaN/inf/<1e-5 -> 1, min-max to [-1,1]
  per sample, 3 channels, repeated over T frames)                                      (B,16,F,h,w)
* reference latent: VAE(the image as a 1-frame video), frame 0 -> ``ref_conv`` tokens  (B,16,h,w)
  (official training zeroes it, official inference feeds the image; ``reference=False`` gives zeros)
* CLIP context: features of a uniform gray-127 image (:func:`gray_image`)
* text: umT5 (from the caller).

4D-ViSM (``ViSMDiT``): packed "known" mask (B,4,F,h,w) and VAE(render with holes = 0) (B,16,F,h,w)
(:mod:`moge4d_core.models.vism_mask`); zero CLIP context.

Shapes: image (H,W,3) float [0,1] channel-last, depth (H,W); T = 4k+1 frames, H and W multiples of 16
(VAE ×8, DiT patch ×2).  Latents are float32 in the Wan-normalised space.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..errors import MoGe4DInputError, require
from ..models import constants as C
from ..models.vism_mask import all_holes, pack_inpaint_inputs
from ..types import DiTConditioning
from .image_vae import ImageVAE

__all__ = ["DEPTH_CLAMP", "control_video", "depth_video", "gray_image", "check_frames", "check_size",
           "StragConditions", "encode_strag_conditions", "ViSMConditions", "encode_vism_conditions"]

DEPTH_CLAMP = 1.0e4
GRAY = 127.0 / 255.0


def check_frames(frames: int, name: str = "frames") -> int:
    """Check a frame count against the Wan models' 4k+1 rule.

    Args:
        frames: frame count T (an int).
        name: the input's name in the error message.

    Returns:
        ``frames`` unchanged.

    Raises:
        MoGe4DInputError: ``frames`` is not an int >= 1 with ``(frames - 1) % 4 == 0``.
    """
    require(isinstance(frames, int) and frames >= 1 and (frames - 1) % C.TEMPORAL_COMPRESSION == 0,
            f"{name}: {frames!r}; the Wan models need 4k+1 frames (e.g. 5, 17, 49 — the release uses 49)")
    return frames


def check_size(height: int, width: int, name: str = "image") -> None:
    """Check an image size in pixels against the DiTs' grid (VAE x8, patch x2).

    Raises:
        MoGe4DInputError: ``height`` or ``width`` is not a multiple of 16.
    """
    m = 2 * C.SPATIAL_COMPRESSION
    require(height % m == 0 and width % m == 0,
            f"{name}: size {height}x{width}; height and width must be multiples of {m} (VAE x8, DiT patch x2); "
            f"resize the image (the release works at 368x512)")


def _image(image: torch.Tensor, name: str = "image") -> torch.Tensor:
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[-1] != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise MoGe4DInputError(f"{name}: expected an (H,W,3) image in [0,1], got {shape}")
    return image.float()


def control_video(image: torch.Tensor, frames: int) -> torch.Tensor:
    """The image repeated over ``frames`` frames, as a video for the VAE.

    Args:
        image: (H, W, 3) float in [0, 1].
        frames: T, the number of frames.

    Returns:
        (1, 3, T, H, W) float32 in [-1, 1], contiguous.

    Raises:
        MoGe4DInputError: ``image`` is not an (H, W, 3) tensor.
    """
    img = _image(image) * 2 - 1
    return img.permute(2, 0, 1)[None, :, None].expand(1, 3, frames, *img.shape[:2]).contiguous()


def depth_video(depth: torch.Tensor, frames: int) -> torch.Tensor:
    """The depth map as a 3-channel video for the VAE: clamp [0, 1e4], NaN/±inf/<1e-5 -> 1, min-max to [-1,1].

    Args:
        depth: (H, W) z-depth (any unit: the min-max normalisation removes it).
        frames: T, the number of frames.

    Returns:
        (1, 3, T, H, W) float32 in [-1, 1] (all -1 for a constant depth), the same map in every channel and frame.

    Raises:
        MoGe4DInputError: ``depth`` is not an (H, W) tensor.
    """
    if not isinstance(depth, torch.Tensor) or depth.ndim != 2:
        shape = tuple(depth.shape) if isinstance(depth, torch.Tensor) else type(depth).__name__
        raise MoGe4DInputError(f"depth: expected an (H,W) depth map, got {shape}")
    z = depth.float()
    z = torch.nan_to_num(z, nan=1.0, posinf=1.0, neginf=1.0).clamp(0.0, DEPTH_CLAMP)
    z = torch.where(z < 1e-5, torch.ones_like(z), z)
    z = 2 * (z - z.min()) / (z.max() - z.min() + 1e-8) - 1
    return z[None, None, None].expand(1, 3, frames, *z.shape).contiguous()


def gray_image(height: int, width: int) -> torch.Tensor:
    """The uniform gray-127 image whose CLIP features STraG was trained with.

    Returns:
        (height, width, 3) float32, every value 127/255.
    """
    return torch.full((height, width, 3), GRAY)


@dataclass
class StragConditions:
    """Latent conditions of :class:`~moge4d_core.models.wan_dit.STraGDiT` (batch 1, float32).

    control, depth (1,16,F,h,w); ref_latent (1,16,h,w) or None (= zeros); clip (1,257,D) or None (= zeros);
    motion_features (1,196,768) or None (MPM off).
    """

    control: torch.Tensor
    depth: torch.Tensor
    ref_latent: Optional[torch.Tensor] = None
    clip: Optional[torch.Tensor] = None
    motion_features: Optional[torch.Tensor] = None

    def dit_conditioning(self, text: torch.Tensor, *, device=None,
                         dtype: Optional[torch.dtype] = None) -> DiTConditioning:
        """The STraG's inputs: ``text`` (1,L,D) as given, the latents moved to ``device`` / ``dtype``."""
        def mv(t):
            return None if t is None else t.to(device=device, dtype=dtype)
        return DiTConditioning(encoder_hidden_states=text, control=mv(self.control), depth=mv(self.depth),
                               ref_latent=mv(self.ref_latent), encoder_hidden_states_image=mv(self.clip),
                               motion_features=mv(self.motion_features))


def encode_strag_conditions(vae: ImageVAE, image: torch.Tensor, depth: torch.Tensor, frames: int, *,
                            reference: bool = True) -> StragConditions:
    """Encode control, depth and reference latents for one image and its depth.

    Args:
        vae: the encoder (:class:`ImageVAE`; for STraG the base Wan encoder).
        image: (H, W, 3) float in [0, 1]; H and W multiples of 16.
        depth: (H, W) z-depth of the image.
        frames: T = 4k+1.
        reference: encode the image as the reference latent (official inference); False leaves it None (zeros).

    Returns:
        :class:`StragConditions` with control and depth (1, 16, F, H/8, W/8) float32, F = (T-1)/4 + 1, ref_latent
        (1, 16, H/8, W/8) or None; clip and motion_features None.

    Raises:
        MoGe4DInputError: image not (H, W, 3); depth not (H, W) or of another size; T not 4k+1; H or W not a
            multiple of 16.
    """
    img = _image(image)
    check_frames(frames)
    require(tuple(depth.shape) == tuple(img.shape[:2]),
            f"depth: size {tuple(depth.shape)} does not match the image {tuple(img.shape[:2])}; "
            f"resize the geometry to the image size")
    check_size(*img.shape[:2])
    control = vae.encode(control_video(img, frames))
    depth_lat = vae.encode(depth_video(depth, frames))
    ref = vae.encode(control_video(img, 1))[:, :, 0] if reference else None
    return StragConditions(control=control, depth=depth_lat, ref_latent=ref)


@dataclass
class ViSMConditions:
    """Latent conditions of :class:`~moge4d_core.models.wan_dit.ViSMDiT`: mask (1,4,F,h,w) 1 = known,
    masked_video (1,16,F,h,w)."""

    mask: torch.Tensor
    masked_video: torch.Tensor

    def dit_conditioning(self, text: torch.Tensor, *, clip: Optional[torch.Tensor] = None, device=None,
                         dtype: Optional[torch.dtype] = None) -> DiTConditioning:
        """The ViSM's inputs: ``text`` (1,L,D) and ``clip`` (1,257,D) or None as given, the latents moved to
        ``device`` / ``dtype``."""
        return DiTConditioning(encoder_hidden_states=text, encoder_hidden_states_image=clip,
                               mask=self.mask.to(device=device, dtype=dtype),
                               masked_video=self.masked_video.to(device=device, dtype=dtype))


def encode_vism_conditions(vae: ImageVAE, render: torch.Tensor, holes: torch.Tensor) -> ViSMConditions:
    """Render (T,H,W,3) [0,1] + holes (T,H,W) (1 = hole) -> ViSM conditions (reference §C).

    When every pixel is a hole the VAE is skipped and both latents are zero, as the official pipeline does.

    Args:
        vae: the base Wan pixel VAE (:class:`ImageVAE`).
        render: (T, H, W, 3) float in [0, 1], T = 4k+1, H and W multiples of 8.
        holes: (T, H, W) hole mask, 1 = no point landed.

    Returns:
        :class:`ViSMConditions`: mask (1, 4, F, H/8, W/8), 1 = known, and masked_video (1, 16, F, H/8, W/8)
        float32, F = (T-1)/4 + 1.
    """
    masked, mask = pack_inpaint_inputs(render, holes)
    if all_holes(holes):
        f, h, w = mask.shape[2:]
        return ViSMConditions(mask=torch.zeros_like(mask), masked_video=torch.zeros(1, C.LATENT_CHANNELS, f, h, w))
    return ViSMConditions(mask=mask, masked_video=vae.encode(masked))
