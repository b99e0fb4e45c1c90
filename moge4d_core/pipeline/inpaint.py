"""Stage 6: 4D-ViSM inpainting of a render with its hole mask (reference §C, §J7).

Inputs: render (T,H,W,3) float [0,1], holes (T,H,W) (1 = no point landed), umT5 text, the ViSM DiT
(Wan2.1-Fun-InP + the MoGe4D LoRA) and the base Wan VAE.  CLIP context: zeros (the release), or tokens from
a CLIP vision output.  Output: frames (T,H,W,3) float [0,1] decoded by the base Wan VAE.

``keep_rendered`` (pixels, 0 = off, the release): the render is composited back over the decoded frames wherever a
point landed, feathered across that many pixels at hole edges (:func:`keep_weight`), so what the render knows is
kept exactly and only the holes are generated.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..errors import require
from ..models.conditioning import ImageContext, TextContext
from .conditioning import check_frames, check_size, encode_vism_conditions
from .denoise_loop import run_dit_sampling
from .image_vae import ImageVAE
from .settings import NativeSampler, SamplerSettings
from .trajectory import _clip_tokens, check_text

__all__ = ["inpaint", "keep_weight", "keep_rendered_composite"]


def keep_weight(holes: torch.Tensor, width: int) -> torch.Tensor:
    """Weight of the render when compositing it back over inpainted frames: 0 in holes, rising linearly with the
    distance to the nearest hole, 1 from ``width + 1`` pixels away.

    The distance is octagonal (dilations alternating a 3x3 square and a 3x3 cross, a close approximation of the
    Euclidean distance), measured per frame.

    Args:
        holes: (T,H,W) or (H,W) hole mask, 1 (or True) = no point landed.
        width: feather width in pixels, >= 0; 0 gives the hard mask ``1 - holes``.

    Returns:
        float32 weights of the shape of ``holes``, in [0, 1]: ``min(d, width + 1) / (width + 1)`` for a pixel ``d``
        dilation steps from the nearest hole (hole pixels: d = 0). With no hole in a frame, all 1.
    """
    require(isinstance(width, int) and not isinstance(width, bool) and width >= 0,
            f"keep_rendered: the feather width must be a whole number of pixels >= 0, got {width!r}")
    mask = (holes > 0.5).to(torch.float32)
    flat = mask.reshape(-1, 1, *mask.shape[-2:])
    steps = torch.zeros_like(flat)          # how many dilations a pixel stayed outside the grown holes
    grown = flat
    for k in range(width):
        if k % 2 == 0:                      # square: 8 neighbours
            grown = F.max_pool2d(grown, 3, stride=1, padding=1)
        else:                               # cross: 4 neighbours
            p = F.pad(grown, (1, 1, 1, 1))
            grown = torch.stack([grown, p[..., :-2, 1:-1], p[..., 2:, 1:-1], p[..., 1:-1, :-2],
                                 p[..., 1:-1, 2:]]).amax(0)
        steps += 1 - grown
    weight = torch.where(flat > 0, torch.zeros_like(flat), (steps + 1) / (width + 1))
    return weight.reshape(mask.shape)


def keep_rendered_composite(frames: torch.Tensor, render: torch.Tensor, holes: torch.Tensor,
                            width: int) -> torch.Tensor:
    """Composite the render back over inpainted frames wherever a point landed (see :func:`keep_weight`).

    Args:
        frames: (T,H,W,3) inpainted frames in [0,1].
        render: (T,H,W,3) the render they were made from, in [0,1].
        holes: (T,H,W) its hole mask, 1 = no point landed.
        width: feather width in pixels at hole edges (0: hard edges).

    Returns:
        (T,H,W,3) float32: ``w * render + (1 - w) * frames`` with ``w = keep_weight(holes, width)``.

    Raises:
        MoGe4DInputError: the three do not have the same frame count and size.
    """
    for name, t in (("frames", frames), ("render", render)):
        require(isinstance(t, torch.Tensor) and t.ndim == 4 and t.shape[-1] == 3,
                f"keep_rendered: {name} must be (T,H,W,3) frames, got "
                f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    require(tuple(frames.shape) == tuple(render.shape) and tuple(holes.shape) == tuple(render.shape[:3]),
            f"keep_rendered: the inpainted frames {tuple(frames.shape)}, the render {tuple(render.shape)} and its "
            f"holes {tuple(holes.shape)} must have the same frame count and size; connect the render and holes the "
            f"inpainting was conditioned on")
    w = keep_weight(holes, width).to(frames.device)[..., None]
    return (w * render.to(device=frames.device, dtype=torch.float32) + (1 - w) * frames.float()).clamp(0, 1)


def inpaint(model, vae: ImageVAE, render: torch.Tensor, holes: torch.Tensor, positive: TextContext,
            negative: Optional[TextContext] = None, *, settings: SamplerSettings = SamplerSettings(seed=1),
            clip: Optional[ImageContext] = None, native: Optional[NativeSampler] = None,
            callback: Optional[Callable[[int, int], None]] = None, keep_rendered: int = 0) -> torch.Tensor:
    """Render + holes -> inpainted frames (T,H,W,3) float32 in [0,1] (see module docstring).

    ``keep_rendered``: feather width in pixels for compositing the render back where points landed (0 = off: every
    pixel regenerated, as the release does).

    Args:
        model: the 4D-ViSM DiT; sampling runs on its device.
        vae: the base Wan pixel VAE (:class:`ImageVAE`): encodes the masked render, decodes the result.
        render: (T, H, W, 3) float in [0, 1], T = 4k+1, H and W multiples of 16.
        holes: (T, H, W) hole mask, 1 = no point landed (to be generated).
        positive, negative: umT5 text contexts (1, 512, D); ``negative`` None gives zeros.
        settings: sampler settings (the release: seed of the trajectory stage + 1).
        clip: CLIP-H tokens (1, 257, image_dim) or None (zeros, the release).
        native: a ComfyUI sampler instead of ours. callback: ``callback(done, total)`` per step.
        keep_rendered: feather width in pixels, >= 0.

    Returns:
        Frames (T, H, W, 3) float32 in [0, 1] on the CPU.

    Raises:
        MoGe4DInputError: render not (T, H, W, 3); holes not (T, H, W); T not 4k+1; H or W not a multiple of 16;
            a negative or non-integer ``keep_rendered``; text / CLIP widths the model does not take.
    """
    require(render.ndim == 4 and render.shape[-1] == 3,
            f"render: expected (T,H,W,3) frames in [0,1], got {tuple(render.shape)}")
    require(tuple(holes.shape) == tuple(render.shape[:3]),
            f"holes: mask {tuple(holes.shape)} does not match the render frames {tuple(render.shape[:3])}")
    keep_weight(holes[:1, :1, :1], keep_rendered)                 # checks the width before any sampling
    check_frames(int(render.shape[0]), "render frames")
    check_size(int(render.shape[1]), int(render.shape[2]), "render")
    device = next(model.parameters()).device
    pos = check_text(model, positive, "positive")
    neg = check_text(model, negative, "negative") if negative is not None else torch.zeros_like(pos)
    conds = encode_vism_conditions(vae, render.float(), holes)
    tokens = _clip_tokens(model, clip)
    cond = conds.dit_conditioning(pos.to(device), clip=None if tokens is None else tokens.to(device), device=device,
                                  dtype=torch.float32)
    latent = run_dit_sampling(model, (1, conds.masked_video.shape[1], *conds.mask.shape[2:]),
                              cond, cond.with_text(neg.to(device)), settings, native=native, callback=callback)
    video = vae.decode(latent)                                    # (1,3,T,H,W) [-1,1]
    frames = ((video[0].permute(1, 2, 3, 0) + 1) / 2).clamp(0, 1).float().cpu()
    if keep_rendered:
        frames = keep_rendered_composite(frames, render.cpu(), holes.cpu(), keep_rendered)
    return frames
