"""Inputs of the 4D-ViSM inpainting model (Wan2.1-Fun-InP): the masked video and the packed mask latent.

Conventions (reference §C, official ``pipeline_wan_fun_inpaint.py`` L611-676):

* ``holes`` (T,H,W): **1 = hole** (no projected point, to be generated), 0 = known. Values are binarised at 0.5
  (the official mask processor's ``do_binarize``: ``>= 0.5`` is a hole). The official inference reads its
  mask mp4 as 0-255 without dividing by 255, so any grey value >= 1/255 counts as a hole there; pass
  ``holes > 0`` yourself to reproduce that.
* Masked video: the video mapped to [-1,1] (``2*v - 1``), multiplied by ``(hole < 0.5)``: holes become **0**
  (mid-grey), not -1. It is then VAE-encoded (posterior mean) to the 16-channel masked-video latent.
* Mask latent: the official code packs ``1 - mask`` (so in the latent **1 = known**, 0 = hole):

  1. the first frame is repeated 4 times (T = 4k+1 frames -> 4k+4 = 4F frames),
  2. ``view(B, F, 4, H, W)`` then ``transpose(1, 2)`` -> (B,4,F,H,W): channel c of latent frame f is mask frame
     ``4f + c - 3`` (clamped to 0), i.e. each latent frame carries the 4 video frames it compresses,
  3. ``1 - mask``,
  4. trilinear resize (``align_corners=False``) to (F, H/8, W/8), the first latent frame separately from the
     others; temporally this is the identity, spatially each latent pixel is the mean of the 2x2 centre
     pixels of its 8x8 cell (source coordinate ``8i + 3.5``).

* The transformer input is then ``cat([noise(16), mask_latent(4), masked_video_latent(16)])`` = 36 channels.
* When every pixel of every frame is a hole the official pipeline skips the VAE and uses an all-zero
  masked-video latent (and an all-zero mask latent); :func:`all_holes` tells a caller when that applies.

Written by hand: this packing is the Fun-InP model's own convention; no library exposes it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import MoGe4DInputError, require

TEMPORAL = 4
SPATIAL = 8


def _check(video: torch.Tensor, holes: torch.Tensor) -> None:
    if not isinstance(video, torch.Tensor) or video.ndim != 4 or video.shape[-1] != 3:
        shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
        raise MoGe4DInputError(f"pack_inpaint_inputs: video must be (T,H,W,3) float in [0,1], got {shape}")
    if not isinstance(holes, torch.Tensor) or tuple(holes.shape) != tuple(video.shape[:3]):
        shape = tuple(holes.shape) if isinstance(holes, torch.Tensor) else type(holes).__name__
        raise MoGe4DInputError(f"pack_inpaint_inputs: holes must be (T,H,W) = {tuple(video.shape[:3])} matching "
                               f"the video, got {shape}")
    t, h, w = holes.shape
    require((t - 1) % TEMPORAL == 0,
            f"pack_inpaint_inputs: the number of frames T={t} must be 4k+1 (e.g. 49) for the Wan VAE; trim the video")
    require(h % SPATIAL == 0 and w % SPATIAL == 0,
            f"pack_inpaint_inputs: height and width must be multiples of 8, got {h}x{w}; resize or crop")


def binarize_holes(holes: torch.Tensor) -> torch.Tensor:
    """(…) any float/bool -> float32 {0,1}, 1 where ``holes >= 0.5`` (official ``do_binarize``).

    Args:
        holes: hole mask of any shape, float in [0, 1] or bool (1 = hole).

    Returns:
        float32 tensor of the same shape and device, values in {0, 1}.
    """
    return (holes.to(torch.float32) >= 0.5).to(torch.float32)


def pack_mask_latent(holes: torch.Tensor) -> torch.Tensor:
    """Hole mask (T,H,W) (1 = hole) -> mask latent (1,4,(T-1)/4+1,H/8,W/8), float32, 1 = known.

    Args:
        holes: ``(T, H, W)`` float / bool, 1 = hole (binarised at 0.5); ``T`` 4k+1, ``H``/``W`` in pixels,
            multiples of 8 (not checked here: :func:`pack_inpaint_inputs` checks them).

    Returns:
        ``(1, 4, (T-1)/4+1, H/8, W/8)`` float32 in [0, 1] on ``holes``' device, 1 = known (the ViSM ``mask`` input).
    """
    t, h, w = holes.shape
    m = binarize_holes(holes).view(1, 1, t, h, w)
    m = torch.cat([m[:, :, :1].repeat_interleave(TEMPORAL, dim=2), m[:, :, 1:]], dim=2)   # (1,1,4F,H,W)
    f = m.shape[2] // TEMPORAL
    m = m.view(1, f, TEMPORAL, h, w).transpose(1, 2)                                      # (1,4,F,H,W)
    known = 1 - m
    lat = (h // SPATIAL, w // SPATIAL)
    first = F.interpolate(known[:, :, :1], size=(1, *lat), mode="trilinear", align_corners=False)
    if f == 1:
        return first
    rest = F.interpolate(known[:, :, 1:], size=(f - 1, *lat), mode="trilinear", align_corners=False)
    return torch.cat([first, rest], dim=2)


def pack_inpaint_inputs(video: torch.Tensor, holes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rendered video and hole mask -> ``(masked_video, mask_latent)`` for the Fun-InP transformer.

    Args:
        video: ``(T, H, W, 3)`` float in [0, 1] (channel-last, as ComfyUI IMAGE frames).
        holes: ``(T, H, W)``, 1 = hole (binarised at 0.5).

    Returns:
        ``(masked_video, mask_latent)``: masked_video ``(1, 3, T, H, W)`` float32 in [-1, 1] with holes = 0 (encode
        it with the Wan VAE), mask_latent ``(1, 4, (T-1)/4+1, H/8, W/8)`` float32 in [0, 1], 1 = known.

    Raises:
        MoGe4DInputError: ``video`` not ``(T, H, W, 3)``, ``holes`` not ``(T, H, W)`` matching it, ``T`` not 4k+1,
            or ``H``/``W`` not multiples of 8.
    """
    _check(video, holes)
    v = video.to(torch.float32).permute(3, 0, 1, 2).unsqueeze(0) * 2 - 1                 # (1,3,T,H,W)
    keep = (binarize_holes(holes) < 0.5).to(torch.float32).unsqueeze(0).unsqueeze(0)    # (1,1,T,H,W)
    masked = v * keep
    return masked, pack_mask_latent(holes)


def all_holes(holes: torch.Tensor) -> bool:
    """True when every pixel is a hole: the official pipeline then uses zero latents instead of encoding.

    Args:
        holes: hole mask of any shape (1 = hole, binarised at 0.5).
    """
    return bool((binarize_holes(holes) == 1).all())
