"""Stage 3–4: 4D-STraG sampling → motion VAE decode → :class:`Motion`, then de-normalisation → :class:`Trajectories`.

``generate_motion`` runs the released recipe (reference §A4–A8, §J): conditions from
:mod:`.conditioning`, flow-matching sampling with CFG on the text only (the negative prompt's context
replaces the text, everything else is shared), the motion VAE decode with both latent normalisations, giving
the normalised relative motion ΔP̂ (T,H,W,3) with frame 0 = 0.

``denormalize`` applies the depth-guided inverse the released inference omits (reference §B):
``ΔX = Δx̂·z0/αx, ΔY = Δŷ·z0/αy, ΔZ = Δẑ·z0``, ``P_t = P0 + ΔP_t`` with ``P0`` the geometry's first-frame
points (OpenCV camera, world = first-frame camera).  ``normalization="release"`` uses the constants the
released checkpoints were trained with (αx = 1.043478, αy = 1) at any working size (compat mode);
``"official"`` the release's pseudo-intrinsics rule at the working size (equal to ``release`` at 368×512; what our
trainers use at their size, so models trained here, e.g. the nano model, get their own constants back);
``"real_k"`` the geometry's own K (the paper's formulation; for checkpoints trained that way).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from ..errors import MoGe4DInputError, require
from ..geometry.normalization import apply_motion, official_spec, real_k_spec, release_spec
from ..models.conditioning import ImageContext, TextContext
from ..types import Geometry, Motion, MotionFeatures, NormalizationSpec, Trajectories
from ..models.wan_dit.text_path import reads_text
from .conditioning import StragConditions, check_frames, check_size, encode_strag_conditions
from .denoise_loop import model_device_dtype, run_dit_sampling
from .image_vae import ImageVAE
from .settings import NativeSampler, SamplerSettings

__all__ = ["NORMALIZATIONS", "TrajectoryOptions", "normalization_spec", "check_text", "strag_inputs",
           "sample_motion_latent", "decode_motion", "generate_motion", "denormalize"]

NORMALIZATIONS = ("official", "real_k", "release")


@dataclass(frozen=True)
class TrajectoryOptions:
    """frames: T = 4k+1 (release 49); normalization: ``official`` | ``real_k`` | ``release`` (module docstring);
    reference: feed the image to ``ref_conv`` (official inference) — False gives the zero reference of
    official training; mpm: use the Motion Perception Module when features are given (needs its weights)."""

    frames: int = 49
    normalization: str = "official"
    reference: bool = True
    mpm: bool = True

    def __post_init__(self) -> None:
        check_frames(self.frames)
        require(self.normalization in NORMALIZATIONS,
                f"normalization: expected one of {NORMALIZATIONS}, got {self.normalization!r}")


def normalization_spec(geometry: Geometry, mode: str) -> NormalizationSpec:
    """The constants that undo the STraG's normalisation (see the module docstring).

    Args:
        geometry: the first-frame geometry (its size for ``official``, its K for ``real_k``).
        mode: one of :data:`NORMALIZATIONS`.

    Returns:
        :class:`NormalizationSpec` with normalised focal lengths ``fx`` (pixels / width), ``fy`` (pixels / height).
    """
    if mode == "release":
        return release_spec()
    if mode == "official":
        return official_spec(geometry.height, geometry.width)
    return real_k_spec(geometry.K.float(), geometry.width, geometry.height)


def check_text(model: torch.nn.Module, ctx: TextContext, name: str) -> torch.Tensor:
    """Text context (1,512,D) checked against the DiT's text width -> embeddings tensor.

    A DiT that does not read text (:func:`~moge4d_core.models.wan_dit.reads_text`) gets the all-zero context
    (1,1,D) it was trained with, whatever ``ctx`` is: no text can change its output.

    Args:
        model: the DiT (its ``config.text_dim`` is D).
        ctx: a :class:`TextContext` with embeddings (1, L, D), L = 512 for umT5.
        name: the input's name in error messages (e.g. ``"positive"``).

    Returns:
        ``ctx.embeddings`` (1, L, D) as given (dtype and device unchanged), or float32 zeros (1, 1, D) on the CPU.

    Raises:
        MoGe4DInputError: ``ctx`` is not a :class:`TextContext`, its width is not D, or it holds several prompts.
    """
    if not reads_text(model):
        return torch.zeros(1, 1, int(model.config.text_dim))
    if not isinstance(ctx, TextContext):
        raise MoGe4DInputError(f"{name}: expected text conditioning (umT5 embeddings), got {type(ctx).__name__}")
    want = int(model.config.text_dim)
    if ctx.dim != want:
        raise MoGe4DInputError(
            f"{name}: text embeddings are {ctx.dim} wide but this model takes {want} (umT5-XXL gives 4096); "
            f"encode the prompt with ComfyUI's CLIPLoader(type=wan) + umt5_xxl, not a CLIP/T5 of another model")
    require(ctx.batch_size == 1, f"{name}: one prompt expected, got a batch of {ctx.batch_size}")
    return ctx.embeddings


def _clip_tokens(model: torch.nn.Module, clip: Optional[ImageContext]) -> Optional[torch.Tensor]:
    if clip is None:
        return None
    want = model.config.image_dim
    if want is None:
        raise MoGe4DInputError("clip_vision_output: this model has no CLIP image input; disconnect it")
    if clip.dim != int(want):
        raise MoGe4DInputError(f"clip_vision_output: features are {clip.dim} wide, the model takes {want} "
                               f"(CLIP ViT-H/14 penultimate tokens, clip_vision_h.safetensors)")
    return clip.tokens[:1]


def _features(model: torch.nn.Module, features: Optional[MotionFeatures], use: bool) -> Optional[torch.Tensor]:
    if features is None or not use:
        return None
    if getattr(model, "feature_adapter", None) is None:
        raise MoGe4DInputError("motion_features: this STraG checkpoint has no Motion Perception Module weights "
                               "(feature_adapter / spatial_guidance_*); disconnect the features or turn mpm off")
    return features.tokens[None]


def strag_inputs(model, image_vae: ImageVAE, geometry: Geometry, options: TrajectoryOptions, *,
                 clip: Optional[ImageContext] = None,
                 motion_features: Optional[MotionFeatures] = None) -> StragConditions:
    """Latent conditions for ``geometry`` (image + depth) plus CLIP tokens and OmniMAE features.

    Args:
        model: the STraG DiT (checked for a CLIP input and MPM weights).
        image_vae: the encoder of the conditions (the base Wan encoder, e.g. ``WanImageVAE.from_motion_vae``).
        geometry: the first-frame geometry (H, W), H and W multiples of 16.
        options: frames T = 4k+1, ``reference`` (image or zero reference latent), ``mpm`` (use the features).
        clip: CLIP-H tokens (B, 257, image_dim) or None (zeros); the first row is kept.
        motion_features: OmniMAE :class:`MotionFeatures` (196, 768) or None; ignored when ``options.mpm`` is off.

    Returns:
        :class:`StragConditions`, float32: control and depth (1, 16, F, H/8, W/8) with F = (T-1)/4 + 1, ref_latent
        (1, 16, H/8, W/8) or None, clip (1, 257, image_dim) or None, motion_features (1, 196, 768) or None.

    Raises:
        MoGe4DInputError: a size that is not a multiple of 16; CLIP tokens for a model without a CLIP input or of
            the wrong width; features for a checkpoint without MPM weights.
    """
    check_size(geometry.height, geometry.width, "geometry")
    conds = encode_strag_conditions(image_vae, geometry.image, geometry.depth, options.frames,
                                    reference=options.reference)
    conds.clip = _clip_tokens(model, clip)
    conds.motion_features = _features(model, motion_features, options.mpm)
    return conds


def sample_motion_latent(model, conds: StragConditions, positive: TextContext, negative: Optional[TextContext],
                         settings: SamplerSettings, *, native: Optional[NativeSampler] = None,
                         callback: Optional[Callable[[int, int], None]] = None) -> torch.Tensor:
    """Sample the STraG latent (CFG on the text only; negative None = zeros).

    Args:
        model: the STraG DiT; sampling runs on its device.
        conds: the latent conditions (:func:`strag_inputs`); their ``control`` shape is the latent shape.
        positive, negative: umT5 text contexts (1, 512, D); ``negative`` None gives an all-zero context.
        settings: seed, steps, shift, CFG scale, solver. native: a ComfyUI sampler to use instead of ours.
        callback: ``callback(done, total)`` per step.

    Returns:
        The latent (1, 16, F, h, w) float32 on the model's device, in the Wan-normalised space.
    """
    device, _ = model_device_dtype(model)
    pos = check_text(model, positive, "positive")
    neg = check_text(model, negative, "negative") if negative is not None else torch.zeros_like(pos)
    cond = conds.dit_conditioning(pos.to(device), device=device, dtype=torch.float32)
    return run_dit_sampling(model, tuple(conds.control.shape), cond, cond.with_text(neg.to(device)), settings,
                            native=native, callback=callback)


def decode_motion(motion_vae, latent: torch.Tensor) -> torch.Tensor:
    """Decode a motion latent to the normalised motion, with frame 0 set to 0.

    Args:
        motion_vae: the motion VAE; the latent is cast to its device and dtype.
        latent: (1, 16, F, h, w) in the Wan-normalised space (both latent normalisations are undone).

    Returns:
        Normalised relative motion ΔP̂ (T, H, W, 3) float32 on the VAE's device, T = 4(F-1)+1, H = 8h, W = 8w;
        unbounded, channels (Δx̂, Δŷ, Δẑ) as in the module docstring.
    """
    p = next(motion_vae.parameters())
    with torch.no_grad():
        delta = motion_vae.decode(latent.to(p.device, p.dtype), traj_norm=True)
    delta = delta[0].float().permute(1, 2, 3, 0).contiguous()
    delta[0] = 0
    return delta


def generate_motion(model, motion_vae, image_vae: ImageVAE, geometry: Geometry, positive: TextContext,
                    negative: Optional[TextContext] = None, *, settings: SamplerSettings = SamplerSettings(),
                    options: TrajectoryOptions = TrajectoryOptions(), clip: Optional[ImageContext] = None,
                    motion_features: Optional[MotionFeatures] = None, native: Optional[NativeSampler] = None,
                    callback: Optional[Callable[[int, int], None]] = None) -> Motion:
    """Image + geometry -> :class:`Motion` (normalised ΔP̂ (T,H,W,3), the spec to undo it, the geometry).

    Args:
        model: the STraG DiT. motion_vae: the motion VAE (decodes the latent).
        image_vae: the encoder of the conditions (the base Wan encoder, e.g. ``WanImageVAE.from_motion_vae``).
        geometry: the first-frame geometry: image (H, W, 3) in [0, 1], depth (H, W); H, W multiples of 16.
        positive, negative: umT5 text contexts (1, 512, D); ``negative`` None gives zeros.
        settings: sampler settings. options: frames T = 4k+1, normalisation, reference, MPM.
        clip: CLIP-H tokens (1, 257, image_dim) or None. motion_features: OmniMAE features or None.
        native: a ComfyUI sampler instead of ours. callback: ``callback(done, total)`` per step.

    Returns:
        :class:`Motion` with delta (T, H, W, 3) float32 on the CPU, frame 0 = 0; ``norm`` from
        :func:`normalization_spec`; ``geometry`` as given.

    Raises:
        MoGe4DInputError: as :func:`strag_inputs` and :func:`check_text`.
    """
    conds = strag_inputs(model, image_vae, geometry, options, clip=clip, motion_features=motion_features)
    latent = sample_motion_latent(model, conds, positive, negative, settings, native=native, callback=callback)
    delta = decode_motion(motion_vae, latent)
    return Motion(delta=delta.cpu(), norm=normalization_spec(geometry, options.normalization), geometry=geometry)


def denormalize(motion: Motion, fps: float = 8.0) -> Trajectories:
    """:class:`Motion` -> :class:`Trajectories` (T, H·W points, row-major; colours from the image).

    Points whose first-frame depth is invalid keep their de-normalised motion but are marked not visible.
    A chained motion (:class:`~.chain.ChainedMotion`) gives back its own trajectories (tracked visibility), at ``fps``.
    A point whose de-normalised position is not finite at some frame stays at its first-frame position there and is
    marked not visible at that frame.

    Args:
        motion: normalised motion delta (T, H, W, 3), its spec and its first-frame geometry.
        fps: frame rate stored in the result (frames per second).

    Returns:
        :class:`Trajectories`: points (T, H*W, 3) float32 in the first-frame camera frame (OpenCV axes; the depth's
        unit, metres for metric depth), colours (H*W, 3) float32 in [0, 1], visibility (T, H*W) bool, K (3, 3).
    """
    chained = getattr(motion, "trajectories", None)
    if chained is not None:
        return dataclasses.replace(chained, fps=fps)
    g = motion.geometry
    p0 = g.points.float()
    pts = apply_motion(motion.delta.float(), p0, motion.norm, time_dim=0)          # (T,H,W,3)
    t = pts.shape[0]
    bad = ~torch.isfinite(pts).all(dim=-1)
    if bool(bad.any()):
        pts = torch.where(bad[..., None], p0.expand_as(pts), pts)
    vis = (g.valid[None] & ~bad).reshape(t, -1)
    return Trajectories(points=pts.reshape(t, -1, 3).contiguous(), colors=g.image.reshape(-1, 3).float().clamp(0, 1),
                        height=g.height, width=g.width, visibility=vis, K=g.K.float(), fps=fps)
