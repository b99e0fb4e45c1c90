"""Wan2.1 14B DiTs of MoGe4D on diffusers' ``WanTransformer3DModel``: 4D-STraG and the 4D-ViSM base.

Everything Wan does (patch embedding, time/text/CLIP embedders, attention with RoPE and q/k RMSNorm,
I2V cross-attention, FFN, AdaLN modulation, head) is diffusers' code: :class:`WanDiT` subclasses
``WanTransformer3DModel`` and :class:`MoGe4DWanBlock` subclasses ``WanTransformerBlock``. What MoGe4D /
VideoX-Fun add on top, written here (reference ``moge4d_official.md`` §A1, §A4, §A6):

* **Reference tokens** (``ref_conv``, VideoX-Fun "V1.1 full ref"): the VAE latent of the reference
  image ``(B,16,h,w)`` goes through ``Conv2d(16, dim, k=2, s=2)`` into ``h/2*w/2`` tokens that are
  **prepended** to the video tokens. RoPE is computed for a grid of ``F+1`` frames, so the reference
  tokens sit at temporal position 0 and latent frame ``f`` at position ``f+1``. The reference tokens are
  removed after the head. ``ref_latent=None`` means a zero latent: the tokens are then ``ref_conv.bias``,
  exactly what the official training always saw and what the official pipeline does without a
  reference image. (The official *inference* passes the real image latent; pass it to match that.)
* **CLIP image context** through ``img_emb`` (= diffusers ``condition_embedder.image_embedder``): the
  257 CLIP tokens come **before** the 512 text tokens in the cross-attention context; I2V
  cross-attention attends to them with ``k_img``/``v_img``. ``encoder_hidden_states_image=None`` on an I2V model
  means zero CLIP features (what the official ViSM inference feeds).
* **Motion Perception Module** (MPM): ``feature_adapter`` (Conv3x3 -> SiLU -> Conv3x3 at the 14x14
  OmniMAE grid), bilinear resize (``align_corners=False``) to the token grid, repeated over latent
  frames; then per block two MAdaNorm (:class:`MAdaNorm`, ``spatial_guidance_self`` before
  self-attention and ``spatial_guidance_ffn`` before the FFN), applied **after** Wan's timestep
  modulation: ``x <- x * (1 + gamma*scale) + gamma*shift`` with ``[scale, shift] = Linear(SiLU(feat))``.

MPM token alignment (``mpm_alignment`` in the config):

* ``"official"`` (default, what the released code computes, reference §A6 / H10): the repeated
  features cover the first ``F*h'*w'`` positions of the *whole* sequence, reference tokens included.
  With reference tokens present this means: the reference tokens and latent frames ``0..F-2`` are
  modulated (each with the same spatial features) and the last latent frame ``F-1`` is not.
  Use it for the released checkpoint.
* ``"corrected"``: the features modulate the ``F*h'*w'`` video tokens, every latent frame; the
  reference tokens are not modulated. Only for checkpoints trained that way (our own training writes
  ``mpm_alignment`` into the checkpoint metadata; the loader reads it).

The scale/shift of each MAdaNorm are computed once per spatial position (``h'*w'`` tokens) and
broadcast over frames; this is the same arithmetic as the official code, which computes them for every
repeated token.

Input channel layouts (concatenated along channels, in this order):

* 4D-STraG (:class:`STraGDiT`, in 64): ``[hidden_states 0:16 | control 16:32 | start_image 32:48 | depth 48:64]``
  - ``hidden_states``: the noisy motion latent; ``control``: VAE latent of the input image repeated over
  the frames; ``start_image``: always zeros in the official recipe (``None`` = zeros); ``depth``: VAE
  latent of the min-max normalised depth map repeated over the frames.
* 4D-ViSM base (:class:`ViSMDiT`, Wan2.1-Fun-InP, in 36): ``[hidden_states 0:16 | mask 16:20 | masked_video 20:36]``.

All 5-D tensors are ``(B, C, F, h, w)`` latents (``F`` latent frames, ``h, w`` = H/8, W/8). The output is
the flow-matching velocity ``(B, 16, F, h, w)`` in the model's compute dtype.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import register_to_config
from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput
from diffusers.models.transformers.transformer_wan import (WanRotaryPosEmbed, WanTransformer3DModel,
                                                           WanTransformerBlock)

from ...errors import MoGe4DInputError, require
from .config import MPM_ALIGNMENTS, QK_NORM, derived_fields

CLIP_TOKENS = 257


class MAdaNorm(nn.Module):
    """Motion-aware AdaNorm (the official ``SpatialGuidanceModule``): ``x*(1+gate*scale)+gate*shift``.

    ``spatial_guide = Sequential(SiLU, Linear(feature_dim, 2*dim))`` gives ``[scale, shift]`` per token;
    ``gate`` is a learned ``(dim,)`` vector initialised to zero, so a new module is the identity.
    Parameter names match the official checkpoint (``spatial_guide.1.weight``, ``gate``).
    """

    def __init__(self, dim: int, feature_dim: int = 768):
        super().__init__()
        self.spatial_guide = nn.Sequential(nn.SiLU(), nn.Linear(feature_dim, 2 * dim))
        self.gate = nn.Parameter(torch.zeros(dim))
        # Effective official init: Linear xavier-uniform / bias 0 (init_weights() runs last), gate 0.
        if self.gate.device.type != "meta":
            nn.init.xavier_uniform_(self.spatial_guide[1].weight)
            nn.init.zeros_(self.spatial_guide[1].bias)

    def forward(self, x: torch.Tensor, features: torch.Tensor, start: int, frames: int,
                positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Modulate ``x (B, L, dim)`` at positions ``[start, start + frames*S)``; others pass unchanged.

        ``features (B, S, feature_dim)``: one feature per spatial token (``S = h'*w'``), the same for
        every frame. Computed in float32 (``x`` is the float32 output of Wan's AdaLN). ``positions (1, L)``
        (context parallel: ``x`` is one rank's part of the sequence): the index of each of ``x``'s tokens in the
        whole sequence; None = ``x`` is the whole sequence.
        """
        # gate dtype = compute dtype (the Linear may be held in fp8 storage, see models.fp8)
        params = self.spatial_guide(features.to(self.gate.dtype)).float()
        scale, shift = params.chunk(2, dim=-1)  # (B, S, dim) each
        gate = self.gate.float()
        s = features.shape[1]
        if positions is not None:                    # a part of the sequence: pick each token's spatial feature
            rel = positions.reshape(1, -1, 1).to(x.device) - start
            inside = (rel >= 0) & (rel < frames * s)
            idx = (rel.clamp(min=0) % s).expand(scale.shape[0], -1, scale.shape[-1])
            xf = x.float()
            mod = xf * (1 + scale.gather(1, idx) * gate) + shift.gather(1, idx) * gate
            return torch.where(inside, mod, xf).to(x.dtype)
        end = start + frames * s
        seg = x[:, start:end].float().unflatten(1, (frames, s))
        seg = seg * (1 + scale.unsqueeze(1) * gate) + shift.unsqueeze(1) * gate
        seg = seg.flatten(1, 2).to(x.dtype)
        return torch.cat([x[:, :start], seg, x[:, end:]], dim=1)


class MoGe4DWanBlock(WanTransformerBlock):
    """diffusers ``WanTransformerBlock`` + optional MAdaNorm before self-attention and before the FFN.

    Without motion features (or without MPM modules) the forward is diffusers' own. With them, the
    block is diffusers' formula with the two MAdaNorm inserted after the timestep modulation:

    1. ``h = LN(x)*(1+e1)+e0 -> MAdaNorm_self -> self-attn(RoPE)``; ``x += y*e2``
    2. ``x += cross_attn(LN_affine(x), [clip | text])``
    3. ``h = LN(x)*(1+e4)+e3 -> MAdaNorm_ffn -> FFN``; ``x += y*e5``
    """

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, qk_norm: str = "rms_norm_across_heads",
                 cross_attn_norm: bool = False, eps: float = 1e-6, added_kv_proj_dim: Optional[int] = None,
                 mpm_feature_dim: Optional[int] = None):
        super().__init__(dim, ffn_dim, num_heads, qk_norm, cross_attn_norm, eps, added_kv_proj_dim)
        self.spatial_guidance_self: Optional[MAdaNorm] = None
        self.spatial_guidance_ffn: Optional[MAdaNorm] = None
        if mpm_feature_dim:
            self.add_mpm(mpm_feature_dim)

    def add_mpm(self, feature_dim: int) -> None:
        """Add the two MAdaNorm (``spatial_guidance_self`` / ``_ffn``), identity at start (zero gates).

        Args:
            feature_dim: width ``C`` of the motion tokens (768 for OmniMAE ViT-B).
        """
        dim = self.scale_shift_table.shape[-1]
        self.spatial_guidance_self = MAdaNorm(dim, feature_dim)
        self.spatial_guidance_ffn = MAdaNorm(dim, feature_dim)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, temb: torch.Tensor,
                rotary_emb, motion: Optional[torch.Tensor] = None, motion_start: int = 0,
                motion_frames: int = 0, motion_positions: Optional[torch.Tensor] = None) -> torch.Tensor:
        """One DiT block over the token sequence, with the MAdaNorm when ``motion`` is given.

        Args:
            hidden_states: tokens ``(B, L, dim)``, ``L`` = reference tokens (if any) + ``F'*h'*w'`` video tokens.
            encoder_hidden_states: cross-attention context ``(B, 257+text_len, dim)`` (I2V: CLIP tokens
                first) or ``(B, text_len, dim)``, already through the condition embedder.
            temb: timestep projection ``(B, 6, dim)`` (shift/scale/gate of self-attention and FFN).
            rotary_emb: diffusers' RoPE ``(cos, sin)`` pair for the ``L`` tokens.
            motion: ``(B, h'*w', feature_dim)`` adapted motion tokens (:meth:`WanDiT.motion_tokens`); None = no MPM.
            motion_start: sequence index of the first modulated token.
            motion_frames: number of frames of ``h'*w'`` tokens modulated from ``motion_start`` on.
            motion_positions: ``(1, L)`` sequence index of each token under context parallel; None otherwise.

        Returns:
            the tokens ``(B, L, dim)`` in the dtype of ``hidden_states``.

        Raises:
            MoGe4DInputError: ``motion`` given with per-token timesteps (``temb`` not 3-D, Wan2.2 style).
        """
        if motion is None or self.spatial_guidance_self is None:
            return super().forward(hidden_states, encoder_hidden_states, temb, rotary_emb)
        if temb.ndim != 3:
            raise MoGe4DInputError("MPM: per-token timesteps (Wan2.2 style) are not supported with motion features")
        shift_msa, scale_msa, gate_msa, c_shift_msa, c_scale_msa, c_gate_msa = (
            self.scale_shift_table + temb.float()).chunk(6, dim=1)

        norm_hs = self.norm1(hidden_states.float()) * (1 + scale_msa) + shift_msa
        norm_hs = self.spatial_guidance_self(norm_hs, motion, motion_start, motion_frames,
                                             motion_positions).type_as(hidden_states)
        attn_output = self.attn1(norm_hs, None, None, rotary_emb)
        hidden_states = (hidden_states.float() + attn_output * gate_msa).type_as(hidden_states)

        norm_hs = self.norm2(hidden_states.float()).type_as(hidden_states)
        hidden_states = hidden_states + self.attn2(norm_hs, encoder_hidden_states, None, None)

        norm_hs = self.norm3(hidden_states.float()) * (1 + c_scale_msa) + c_shift_msa
        norm_hs = self.spatial_guidance_ffn(norm_hs, motion, motion_start, motion_frames,
                                            motion_positions).type_as(hidden_states)
        ff_output = self.ffn(norm_hs)
        return (hidden_states.float() + ff_output.float() * c_gate_msa).type_as(hidden_states)


def _register_block_for_diffusers_hooks() -> None:
    """Let diffusers' cache hooks (FirstBlockCache, MagCache, ...) recognise our block class."""
    try:
        from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry

        TransformerBlockRegistry.register(
            model_class=MoGe4DWanBlock,
            metadata=TransformerBlockMetadata(return_hidden_states_index=0, return_encoder_hidden_states_index=None))
    except Exception:  # private diffusers API; the model works without it
        pass


_register_block_for_diffusers_hooks()


class WanDiT(WanTransformer3DModel):
    """Wan2.1 DiT with optional reference tokens, CLIP context and Motion Perception Module.

    Parameter names are diffusers' (``blocks.N.attn1.to_q``); :mod:`moge4d_core.loading.wan_keys`
    maps them to and from the original Wan names. The constructor arguments are the config
    (``model.config``, diffusers' ``@register_to_config``): diffusers' ``WanTransformer3DModel`` arguments plus
    ``text_len``, ``ref_conv_in_dim`` (reference tokens), ``mpm_feature_dim`` / ``mpm_alignment`` (Motion
    Perception Module) and ``arch`` (the architecture name, inferred from the channel layout when None).
    ``added_kv_proj_dim`` defaults to the hidden width when ``image_dim`` is given (the Wan2.1 I2V layout).
    Build one from any config with ``cls(**dit_config(cfg))`` (:func:`~moge4d_core.models.wan_dit.config.dit_config`);
    load weights with :mod:`moge4d_core.loading.wan_dit`.

    Generic forward, diffusers' keyword names: ``forward(hidden_states, timestep, encoder_hidden_states,
    encoder_hidden_states_image=None, cond=None, ref_latent=None, motion_features=None, attention_kwargs=None,
    return_dict=None)``, where ``cond (B, in_channels-16, F, h, w)`` is concatenated after the latents
    (``return_dict=None`` gives the tensor). :class:`STraGDiT` and :class:`ViSMDiT` give the named conditioning
    inputs.
    """

    _no_split_modules = ["MoGe4DWanBlock"]
    _repeated_blocks = ["MoGe4DWanBlock"]
    _skip_layerwise_casting_patterns = ["patch_embedding", "condition_embedder", "norm", "ref_conv",
                                        "feature_adapter"]
    # Context parallel (diffusers' ``enable_parallelism``, see :mod:`moge4d_core.sampling.parallel`): the whole token
    # sequence (reference tokens first, then the video) and its RoPE are split at the first block, gathered after
    # ``proj_out``; each block's MAdaNorm gets the sequence index of its rank's tokens (``motion_positions``).
    _cp_plan = {
        "rope": {0: ContextParallelInput(split_dim=1, expected_dims=4, split_output=True),
                 1: ContextParallelInput(split_dim=1, expected_dims=4, split_output=True)},
        "blocks.0": {"hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False)},
        "blocks.*": {"motion_positions": ContextParallelInput(split_dim=1, expected_dims=2, split_output=False)},
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
    }

    @register_to_config
    def __init__(self, patch_size: tuple = (1, 2, 2), num_attention_heads: int = 40, attention_head_dim: int = 128,
                 in_channels: int = 16, out_channels: int = 16, text_dim: int = 4096, freq_dim: int = 256,
                 ffn_dim: int = 13824, num_layers: int = 40, cross_attn_norm: bool = True,
                 qk_norm: Optional[str] = QK_NORM, eps: float = 1e-6,
                 image_dim: Optional[int] = None, added_kv_proj_dim: Optional[int] = None,
                 rope_max_seq_len: int = 1024, pos_embed_seq_len: Optional[int] = None, text_len: int = 512,
                 ref_conv_in_dim: Optional[int] = None, mpm_feature_dim: Optional[int] = None,
                 mpm_alignment: str = "official", arch: Optional[str] = None):
        derived = derived_fields(num_attention_heads, attention_head_dim, in_channels, image_dim, ref_conv_in_dim,
                                 added_kv_proj_dim, arch, qk_norm, text_len, mpm_alignment)
        added_kv_proj_dim = derived["added_kv_proj_dim"]
        # diffusers builds its own block class; build none there and ours here (no double allocation).
        super().__init__(patch_size=patch_size, num_attention_heads=num_attention_heads,
                         attention_head_dim=attention_head_dim, in_channels=in_channels,
                         out_channels=out_channels, text_dim=text_dim, freq_dim=freq_dim, ffn_dim=ffn_dim,
                         num_layers=0, cross_attn_norm=cross_attn_norm, qk_norm=qk_norm, eps=eps,
                         image_dim=image_dim, added_kv_proj_dim=added_kv_proj_dim,
                         rope_max_seq_len=rope_max_seq_len, pos_embed_seq_len=pos_embed_seq_len)
        self.register_to_config(num_layers=num_layers, **derived)
        inner_dim = num_attention_heads * attention_head_dim
        self.blocks = nn.ModuleList([
            MoGe4DWanBlock(inner_dim, ffn_dim, num_attention_heads, qk_norm, cross_attn_norm, eps,
                           added_kv_proj_dim, mpm_feature_dim)
            for _ in range(num_layers)])
        self.ref_conv = (nn.Conv2d(ref_conv_in_dim, inner_dim, kernel_size=tuple(patch_size[1:]),
                                   stride=tuple(patch_size[1:])) if ref_conv_in_dim else None)
        self.feature_adapter = self._make_feature_adapter(mpm_feature_dim) if mpm_feature_dim else None

    # ------------------------------------------------------------------ construction helpers
    @staticmethod
    def _make_feature_adapter(c: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1))

    def add_mpm(self, feature_dim: int = 768) -> None:
        """Add a fresh Motion Perception Module (identity at start: gates are zero) for training.

        Builds ``feature_adapter`` and every block's two MAdaNorm on the device / dtype of ``patch_embedding``
        and records ``mpm_feature_dim`` in ``model.config``.

        Args:
            feature_dim: width of the motion tokens (768 for OmniMAE ViT-B/16).

        Raises:
            MoGe4DInputError: the model already has a Motion Perception Module.
        """
        require(self.feature_adapter is None, "this model already has a Motion Perception Module")
        ref = self.patch_embedding.weight
        self.feature_adapter = self._make_feature_adapter(feature_dim).to(device=ref.device, dtype=ref.dtype)
        for block in self.blocks:
            block.add_mpm(feature_dim)
            block.spatial_guidance_self.to(device=ref.device, dtype=ref.dtype)
            block.spatial_guidance_ffn.to(device=ref.device, dtype=ref.dtype)
        self.register_to_config(mpm_feature_dim=feature_dim)

    def set_mpm_alignment(self, mode: str) -> None:
        """Set ``config.mpm_alignment``, the tokens the MPM modulates (see the module docstring).

        Args:
            mode: ``"official"`` (the released checkpoint) or ``"corrected"``.

        Raises:
            MoGe4DInputError: ``mode`` is neither.
        """
        require(mode in MPM_ALIGNMENTS, f"mpm_alignment must be one of {MPM_ALIGNMENTS}, got {mode!r}")
        self.register_to_config(mpm_alignment=mode)

    def reset_rope(self, device=None) -> None:
        """(Re)build the RoPE tables (non-persistent buffers; needed after building on the meta device).

        Args:
            device: where to put the tables; None leaves them on torch's default device.
        """
        c = self.config
        self.rope = WanRotaryPosEmbed(c.attention_head_dim, tuple(c.patch_size), c.rope_max_seq_len)
        if device is not None:
            self.rope.to(device)

    # ------------------------------------------------------------------ forward
    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                encoder_hidden_states_image: Optional[torch.Tensor] = None, cond: Optional[torch.Tensor] = None,
                ref_latent: Optional[torch.Tensor] = None, motion_features: Optional[torch.Tensor] = None,
                attention_kwargs: Optional[dict] = None, return_dict: Optional[bool] = None):
        """Velocity ``(B, 16, F, h, w)`` for ``hidden_states (B,16,F,h,w)`` with ``cond`` concatenated after them.

        The keyword names are diffusers' ``WanTransformer3DModel`` ones, so diffusers' hooks (caches, FasterCache's
        CFG batch split, context parallel) find the inputs by name.

        Args:
            hidden_states: the noisy latents ``(B, 16, F, h, w)``.
            timestep: ``(B,)`` or a scalar in [0, 1000].
            encoder_hidden_states: ``(B, L<=512, text_dim)`` umT5 embeddings cut to the true token count
                (zero-padded here to 512, as the official code does).
            encoder_hidden_states_image: ``(B, 257, 1280)`` CLIP-H penultimate features (I2V models only;
                None = zeros).
            cond: ``(B, in_channels-16, F, h, w)`` concatenated after the latents.
            ref_latent: ``(B,16,h,w)`` or ``(B,16,F',h,w)`` (frame 0 used; ref_conv models only; None = zeros).
            motion_features: ``(B,196,768)`` OmniMAE patch tokens, row-major 14x14 (MPM models only; None = off).
            attention_kwargs: accepted for diffusers compatibility; must be None or empty (no LoRA scale here).
            return_dict: None (default) returns the tensor; True a diffusers ``Transformer2DModelOutput``;
                False a 1-tuple, as in diffusers.

        Returns:
            the velocity ``(B, 16, F, h, w)`` in the compute dtype (wrapped as ``return_dict`` says).

        Raises:
            MoGe4DInputError: latents+``cond`` not 5-D or not ``in_channels`` wide, ``h``/``w`` not divisible by
                the patch size, a timestep count other than 1 or B, text / CLIP / reference / motion inputs of
                the wrong shape or given to a model without that input, or a non-empty ``attention_kwargs``.
        """
        x = hidden_states if cond is None else torch.cat([hidden_states, cond.to(hidden_states.dtype)], dim=1)
        return self._wrap(self._run(x, timestep, encoder_hidden_states, encoder_hidden_states_image, ref_latent,
                                    motion_features, attention_kwargs), return_dict)

    @staticmethod
    def _wrap(out: torch.Tensor, return_dict: Optional[bool]):
        """diffusers' return convention; ``None`` (ours) is the plain tensor."""
        if return_dict is None:
            return out
        if not return_dict:
            return (out,)
        from diffusers.models.modeling_outputs import Transformer2DModelOutput
        return Transformer2DModelOutput(sample=out)

    def _check5(self, name: str, t: torch.Tensor, like: torch.Tensor, channels: int) -> None:
        if not isinstance(t, torch.Tensor) or t.ndim != 5:
            raise MoGe4DInputError(f"{name}: expected a (B,{channels},F,h,w) tensor, got "
                                   f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
        want = (like.shape[0], channels, *like.shape[2:])
        if tuple(t.shape) != want:
            raise MoGe4DInputError(f"{name}: expected shape {want} (matching the latents), got {tuple(t.shape)}")

    def _run(self, x: torch.Tensor, timestep, text: torch.Tensor, clip: Optional[torch.Tensor],
             ref_latent: Optional[torch.Tensor], motion_features: Optional[torch.Tensor],
             attention_kwargs: Optional[dict] = None) -> torch.Tensor:
        cfg = self.config
        if attention_kwargs:
            raise MoGe4DInputError(f"attention_kwargs: not supported by the MoGe4D DiTs (got "
                                   f"{sorted(attention_kwargs)}); merge LoRAs into the weights instead")
        if x.ndim != 5:
            raise MoGe4DInputError(f"hidden_states: expected (B,C,F,h,w) latents, got {tuple(x.shape)}")
        b, c, f, h, w = x.shape
        require(c == cfg.in_channels, f"hidden_states+conditions: the model takes {cfg.in_channels} channels, got {c}")
        p_t, p_h, p_w = cfg.patch_size
        require(f % p_t == 0 and h % p_h == 0 and w % p_w == 0,
                f"hidden_states: spatial size {h}x{w} must be divisible by the patch size {p_h}x{p_w}")
        dtype = self.patch_embedding.weight.dtype
        ppf, pph, ppw = f // p_t, h // p_h, w // p_w
        s = pph * ppw

        tokens = self.patch_embedding(x.to(dtype)).flatten(2).transpose(1, 2)
        n_ref, rope_frames = 0, f
        if self.ref_conv is not None:
            ref = self._ref_input(ref_latent, x)
            ref_tokens = self.ref_conv(ref.to(dtype)).flatten(2).transpose(1, 2)
            tokens = torch.cat([ref_tokens, tokens], dim=1)
            n_ref, rope_frames = ref_tokens.shape[1], f + p_t
        elif ref_latent is not None:
            raise MoGe4DInputError("ref_latent: this model has no ref_conv (no reference tokens); pass None")
        hidden = tokens.contiguous()
        # RoPE over (F+1, h', w') with reference tokens (frame position 0), else (F, h', w').
        rotary_emb = self.rope(x[:1, :1, :1].expand(1, 1, rope_frames, h, w))

        timestep = torch.as_tensor(timestep, device=x.device)
        timestep = timestep.reshape(-1).expand(b) if timestep.numel() == 1 else timestep.reshape(-1)
        require(timestep.shape[0] == b, f"timestep: expected {b} values (one per batch item), got {timestep.shape[0]}")
        text = self._pad_text(text, b)
        clip_in = self._clip_input(clip, b, x.device)
        temb, timestep_proj, context, context_img = self.condition_embedder(
            timestep, text.to(dtype), None if clip_in is None else clip_in.to(dtype))
        timestep_proj = timestep_proj.unflatten(1, (6, -1))
        if context_img is not None:
            context = torch.cat([context_img, context], dim=1)

        motion, m_start, m_frames, m_pos = None, 0, 0, None
        if motion_features is not None:
            motion = self.motion_tokens(motion_features, pph, ppw, b)
            m_start = 0 if cfg.mpm_alignment == "official" else n_ref
            m_frames = ppf
            if getattr(self, "_parallel_config", None) is not None:   # context parallel splits these per rank
                m_pos = torch.arange(hidden.shape[1], device=x.device).unsqueeze(0)

        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden = self._gradient_checkpointing_func(block, hidden, context, timestep_proj, rotary_emb,
                                                           motion, m_start, m_frames, m_pos)
            else:
                hidden = block(hidden, context, timestep_proj, rotary_emb, motion, m_start, m_frames, m_pos)

        shift, scale = (self.scale_shift_table.to(temb.device) + temb.unsqueeze(1)).chunk(2, dim=1)
        hidden = (self.norm_out(hidden.float()) * (1 + scale) + shift).type_as(hidden)
        hidden = self.proj_out(hidden)[:, n_ref:]
        hidden = hidden.reshape(b, ppf, pph, ppw, p_t, p_h, p_w, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return hidden.flatten(6, 7).flatten(4, 5).flatten(2, 3)

    def _ref_input(self, ref_latent: Optional[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        b, _, _, h, w = x.shape
        cin = self.ref_conv.in_channels
        if ref_latent is None:
            return x.new_zeros(b, cin, h, w)
        if ref_latent.ndim == 5:
            ref_latent = ref_latent[:, :, 0]
        if ref_latent.ndim != 4 or tuple(ref_latent.shape[1:]) != (cin, h, w) or ref_latent.shape[0] not in (1, b):
            raise MoGe4DInputError(f"ref_latent: expected (B,{cin},{h},{w}) or (B,{cin},F,{h},{w}), "
                                   f"got {tuple(ref_latent.shape)}")
        return ref_latent.expand(b, -1, -1, -1)

    def _pad_text(self, text: torch.Tensor, b: int) -> torch.Tensor:
        cfg = self.config
        if not isinstance(text, torch.Tensor) or text.ndim != 3 or text.shape[-1] != cfg.text_dim:
            raise MoGe4DInputError(f"encoder_hidden_states: expected (B, L, {cfg.text_dim}) umT5 embeddings, got "
                                   f"{tuple(text.shape) if isinstance(text, torch.Tensor) else type(text).__name__}")
        require(text.shape[0] in (1, b),
                f"encoder_hidden_states: batch {text.shape[0]} does not match the latents' batch {b}")
        require(text.shape[1] <= cfg.text_len,
                f"encoder_hidden_states: {text.shape[1]} text tokens; at most {cfg.text_len} are allowed")
        text = text.expand(b, -1, -1)
        if text.shape[1] < cfg.text_len:
            text = F.pad(text, (0, 0, 0, cfg.text_len - text.shape[1]))
        return text

    def _clip_input(self, clip: Optional[torch.Tensor], b: int, device) -> Optional[torch.Tensor]:
        cfg = self.config
        if cfg.image_dim is None:
            if clip is not None:
                raise MoGe4DInputError("encoder_hidden_states_image: this model has no CLIP image input (not an I2V "
                                       "layout); pass None")
            return None
        if clip is None:
            return torch.zeros(b, CLIP_TOKENS, cfg.image_dim, device=device)
        if clip.ndim != 3 or clip.shape[-1] != cfg.image_dim or clip.shape[0] not in (1, b):
            raise MoGe4DInputError(f"encoder_hidden_states_image: expected (B, {CLIP_TOKENS}, {cfg.image_dim}) CLIP "
                                   f"features, got {tuple(clip.shape)}")
        return clip.expand(b, -1, -1)

    def motion_tokens(self, features: torch.Tensor, pph: int, ppw: int, b: int) -> torch.Tensor:
        """OmniMAE tokens ``(B, N=g*g, C)`` -> adapter -> bilinear to ``(pph, ppw)`` -> ``(B, pph*ppw, C)``.

        Args:
            features: ``(B, g*g, C)`` or ``(1, g*g, C)`` OmniMAE patch tokens, row-major (``g = 14`` for 224 px);
                ``C = mpm_feature_dim``.
            pph, ppw: the token grid, ``h / 2`` x ``w / 2`` for the ``(1, 2, 2)`` patch.
            b: batch size to expand to.

        Returns:
            ``(b, pph*ppw, C)`` adapted motion tokens, row-major, in the adapter's weight dtype.

        Raises:
            MoGe4DInputError: the model has no MPM weights, or ``features`` has the wrong shape or a
                non-square token count.
        """
        if self.feature_adapter is None:
            raise MoGe4DInputError("motion_features: this checkpoint has no Motion Perception Module weights "
                                   "(feature_adapter / spatial_guidance_*); pass None")
        c = self.feature_adapter[0].in_channels
        if features.ndim != 3 or features.shape[-1] != c or features.shape[0] not in (1, b):
            raise MoGe4DInputError(f"motion_features: expected (B, 196, {c}) OmniMAE patch tokens, got {tuple(features.shape)}")
        g = math.isqrt(features.shape[1])
        require(g * g == features.shape[1], f"motion_features: {features.shape[1]} tokens is not a square grid")
        conv = self.feature_adapter[0]
        grid = features.to(conv.weight.dtype).reshape(features.shape[0], g, g, c).permute(0, 3, 1, 2)
        grid = self.feature_adapter(grid)
        grid = F.interpolate(grid, size=(pph, ppw), mode="bilinear", align_corners=False)
        return grid.flatten(2).transpose(1, 2).expand(b, -1, -1)


class STraGDiT(WanDiT):
    """4D-STraG: Wan2.1-Fun-V1.1-14B-Control widened to 64 input channels + ref tokens + CLIP + MPM."""

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                encoder_hidden_states_image: Optional[torch.Tensor] = None, control: Optional[torch.Tensor] = None,
                start_image: Optional[torch.Tensor] = None, depth: Optional[torch.Tensor] = None,
                ref_latent: Optional[torch.Tensor] = None, motion_features: Optional[torch.Tensor] = None,
                attention_kwargs: Optional[dict] = None, return_dict: Optional[bool] = None):
        """Velocity ``(B,16,F,h,w)``. Channels: ``[hidden_states | control | start_image | depth]`` (16 each).

        Args:
            hidden_states: the noisy motion latent ``(B,16,F,h,w)``; timestep, encoder_hidden_states (text),
                encoder_hidden_states_image (CLIP; official: of a gray-127 image; None = zeros),
                attention_kwargs and return_dict as in :meth:`WanDiT.forward`.
            control: VAE latent of the input image repeated over the frames (required).
            start_image: the start-image slot, zeros in the official recipe (None = zeros).
            depth: VAE latent of the min-max [-1,1] depth map repeated over the frames (required).
            ref_latent: VAE latent of the reference image (None = zeros, as in official training).
            motion_features: ``(B,196,768)`` OmniMAE tokens for the MPM (None = MPM off, official inference).

        All latents are ``(B, 16, F, h, w)`` like ``hidden_states`` (``F`` latent frames, ``h, w = H/8, W/8``).

        Returns:
            the velocity ``(B, 16, F, h, w)`` in the compute dtype (wrapped as ``return_dict`` says).

        Raises:
            MoGe4DInputError: ``control`` or ``depth`` missing, a conditioning latent whose shape differs from
                ``hidden_states``, or any input :meth:`WanDiT.forward` refuses.
        """
        latents = hidden_states
        n = latents.shape[1]
        if control is None or depth is None:
            raise MoGe4DInputError("STraG forward: 'control' and 'depth' latents are required")
        self._check5("control", control, latents, n)
        self._check5("depth", depth, latents, n)
        if start_image is None:
            start_image = torch.zeros_like(latents)
        self._check5("start_image", start_image, latents, n)
        dt = latents.dtype
        x = torch.cat([latents, control.to(dt), start_image.to(dt), depth.to(dt)], dim=1)
        return self._wrap(self._run(x, timestep, encoder_hidden_states, encoder_hidden_states_image, ref_latent,
                                    motion_features, attention_kwargs), return_dict)


class ViSMDiT(WanDiT):
    """4D-ViSM base: Wan2.1-Fun-V1.1-14B-InP (in 36, I2V cross-attention with CLIP)."""

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                encoder_hidden_states_image: Optional[torch.Tensor] = None, mask: Optional[torch.Tensor] = None,
                masked_video: Optional[torch.Tensor] = None, attention_kwargs: Optional[dict] = None,
                return_dict: Optional[bool] = None):
        """Velocity ``(B,16,F,h,w)``. Channels: ``[hidden_states 16 | mask 4 | masked_video 16]``.

        Args:
            hidden_states, timestep, encoder_hidden_states, attention_kwargs, return_dict: as in
                :meth:`WanDiT.forward`; encoder_hidden_states_image: CLIP features (None = zeros, the official
                ViSM inference).
            mask: ``(B,4,F,h,w)`` packed "known" mask (1 = known pixel, see the mask packing helper).
            masked_video: ``(B,16,F,h,w)`` VAE latent of the render with holes set to 0.

        Returns:
            the velocity ``(B, 16, F, h, w)`` in the compute dtype (wrapped as ``return_dict`` says).

        Raises:
            MoGe4DInputError: ``mask`` or ``masked_video`` missing or not matching ``hidden_states``'s batch,
                frames and size, or any input :meth:`WanDiT.forward` refuses.
        """
        latents = hidden_states
        if mask is None or masked_video is None:
            raise MoGe4DInputError("ViSM forward: 'mask' (B,4,F,h,w) and 'masked_video' (B,16,F,h,w) are required")
        self._check5("mask", mask, latents, 4)
        self._check5("masked_video", masked_video, latents, latents.shape[1])
        dt = latents.dtype
        x = torch.cat([latents, mask.to(dt), masked_video.to(dt)], dim=1)
        return self._wrap(self._run(x, timestep, encoder_hidden_states, encoder_hidden_states_image, None, None,
                                    attention_kwargs), return_dict)
