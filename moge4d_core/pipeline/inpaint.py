"""Stage 6: 4D-ViSM inpainting of a render with its hole mask (reference §C, §J7).

Inputs: render (T,H,W,3) float [0,1], holes (T,H,W) (1 = no point landed), umT5 text, the ViSM DiT
(Wan2.1-Fun-InP + the MoGe4D LoRA) and the base Wan VAE.  CLIP context: zeros (the release), or tokens from
a CLIP vision output.  Output: frames (T,H,W,3) float [0,1] decoded by the base Wan VAE.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from ..errors import require
from ..models.conditioning import ImageContext, TextContext
from .conditioning import check_frames, check_size, encode_vism_conditions
from .denoise_loop import run_dit_sampling
from .image_vae import ImageVAE
from .settings import NativeSampler, SamplerSettings
from .trajectory import _clip_tokens, check_text

__all__ = ["inpaint"]


def inpaint(model, vae: ImageVAE, render: torch.Tensor, holes: torch.Tensor, positive: TextContext,
            negative: Optional[TextContext] = None, *, settings: SamplerSettings = SamplerSettings(seed=1),
            clip: Optional[ImageContext] = None, native: Optional[NativeSampler] = None,
            callback: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
    """Render + holes -> inpainted frames (T,H,W,3) float32 in [0,1] (see module docstring)."""
    require(render.ndim == 4 and render.shape[-1] == 3,
            f"render: expected (T,H,W,3) frames in [0,1], got {tuple(render.shape)}")
    require(tuple(holes.shape) == tuple(render.shape[:3]),
            f"holes: mask {tuple(holes.shape)} does not match the render frames {tuple(render.shape[:3])}")
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
    return ((video[0].permute(1, 2, 3, 0) + 1) / 2).clamp(0, 1).float().cpu()
