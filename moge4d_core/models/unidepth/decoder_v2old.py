"""UniDepthV2old (2024, "V2" until Feb 2025) decoder (reference ``encoders.md`` §1.6; ``decoder_old.py``).

This is the model MoGe4D's ``infer.py`` builds. Notation: ``h x w`` token grid, ``H x W`` network input,
``D = hidden_dim`` (512 for S and L), 4 feature levels (the last four encoder blocks).

* Adapters: per level ``LN -> Linear -> GELU`` for the patch features (``input_adapter``), for 4 cls tokens
  (``camera_token_adapter``: blocks -3, -2, -1 and the level-3 tap, which for the published configs is block
  -2 again) and for 2 cls tokens (``global_token_adapter``: blocks -2, -1).
* Position: DETR sine embedding of the ``h x w`` grid (D channels) repeated per level, plus a learned level
  embedding ``level_embed_layer(level_embeds)``.
* Camera head (1-head blocks with biases and LayerScale): the projected cls tokens cross-attend (queries +
  ``latents_pos``) to ``in_features(features + pos + level)`` concatenated with themselves; ``out`` gives
  ``x (B, 4)``: ``fx = exp(x0)·max(H,W)/2``, ``fy = exp(x1)·max(H,W)/2``, ``cx = sigmoid(x2)·W``,
  ``cy = sigmoid(x3)·H``. Rays: unit ``K⁻¹[u+0.5, v+0.5, 1]``.
* Global head: 2 cls tokens cross-attend to ``in_features(features + project_rays(ray features))`` ->
  ``scale = exp(s)``, ``shift``.
* Ray features: rays resampled to a grid (bilinear + antialias), unit-normalised, 32 log-spaced sine bands per
  component (96) plus the ray itself (99).
* Depth head: ``features_channel_cat`` of the 4 levels + ``to_latents``; ``aggregate_16`` attends to all level
  tokens (keys + position + level), ``prompt_camera`` to the level-0 ray features; then per stage i = 0, 1, 2
  ``decoder_depths[i]`` "Nystrom" blocks (see :class:`~.layers.AttentionBlock` ``attend_over="heads"``: the
  published model attends across the heads of each token, reproduced exactly) with ray features as query
  position, ``+ ray features``, ConvNeXt upsampler x2. Three 16-channel heads per output, bilinear to ``H x W``,
  concatenated (finest first), 7x7 reflect conv -> log-depth and confidence logits.
* Output: ``depth = softplus((exp(layer_norm_HW(logdepth)) + shift) · scale, beta=10)`` (**z-depth**),
  ``confidence = sigmoid(logits)``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .camera import intrinsics_matrix, unit_rays
from .config import UniDepthConfig
from .layers import (MLP, AttentionBlock, ConvUpsampleShuffleResidual, ListAdapter, flat_interpolate,
                     fourier_features, sine_position_embedding)


def ray_features(rays: torch.Tensor, full: tuple[int, int], grid: tuple[int, int], camera_dim: int) -> torch.Tensor:
    """Unit rays ``(B, H*W, 3)`` -> ``(B, gh*gw, camera_dim + 3)`` (float32)."""
    r = flat_interpolate(rays.float(), old=full, new=grid, antialias=True)
    r = F.normalize(r, dim=-1)
    return fourier_features(r, dim=camera_dim, max_freq=max(grid) // 2, cat_orig=True)


class CameraHeadV2old(nn.Module):
    def __init__(self, dim: int, expansion: int) -> None:
        super().__init__()
        self.aggregate1 = AttentionBlock(dim, num_heads=1, expansion=expansion)
        self.aggregate2 = AttentionBlock(dim, num_heads=1, expansion=expansion)
        self.latents_pos = nn.Parameter(torch.zeros(1, 4, dim))
        self.in_features = MLP(dim, expansion=2)
        self.project_cls = MLP(dim)
        self.out = MLP(dim, expansion=2, output_dim=1)

    def raw(self, features: torch.Tensor, cls_tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """``features (B, 4hw, D)`` level-major, ``cls_tokens (B, 4, D)``, ``pos (B, 4hw, D)`` -> ``(B, 4)``."""
        cls_tokens = self.project_cls(cls_tokens)
        lpos = self.latents_pos.expand(cls_tokens.shape[0], -1, -1)
        ctx = torch.cat([self.in_features(features + pos), cls_tokens], dim=1)
        cls_tokens = self.aggregate1(cls_tokens, context=ctx, pos_embed=lpos)
        cls_tokens = self.aggregate2(cls_tokens, context=ctx, pos_embed=lpos)
        return self.out(cls_tokens).squeeze(-1)

    @staticmethod
    def intrinsics(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = x.float()
        half = max(height, width) / 2
        return intrinsics_matrix(torch.exp(x[:, 0]) * half, torch.exp(x[:, 1]) * half,
                                 torch.sigmoid(x[:, 2]) * width, torch.sigmoid(x[:, 3]) * height)


class GlobalHeadV2old(nn.Module):
    def __init__(self, dim: int, camera_dim: int, expansion: int) -> None:
        super().__init__()
        self.camera_dim = camera_dim
        self.in_features = nn.Linear(dim, dim)
        self.project_rays = nn.Linear(camera_dim + 3, dim)
        self.aggregate1 = AttentionBlock(dim, num_heads=1, expansion=expansion)
        self.aggregate2 = AttentionBlock(dim, num_heads=1, expansion=expansion)
        self.project_cls = MLP(dim)
        self.out = MLP(dim, expansion=2, output_dim=1)

    def forward(self, features: torch.Tensor, cls_tokens: torch.Tensor, rays: torch.Tensor,
                full: tuple[int, int], grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> ``scale (B,1,1,1) = exp(s)``, ``shift (B,1,1,1)``."""
        cls_tokens = self.project_cls(cls_tokens)
        emb = self.project_rays(ray_features(rays, full, grid, self.camera_dim).to(features.dtype))
        emb = emb.repeat(1, features.shape[1] // emb.shape[1], 1)
        ctx = torch.cat([self.in_features(features + emb), cls_tokens], dim=1)
        cls_tokens = self.aggregate1(cls_tokens, context=ctx)
        cls_tokens = self.aggregate2(cls_tokens, context=ctx)
        x = self.out(cls_tokens).squeeze(-1).float()
        return x[:, 0].exp().reshape(-1, 1, 1, 1), x[:, 1].reshape(-1, 1, 1, 1)


class DepthHeadV2old(nn.Module):
    def __init__(self, cfg: UniDepthConfig) -> None:
        super().__init__()
        dim, exp, levels = cfg.hidden_dim, cfg.expansion, len(cfg.output_idx)
        self.camera_dim = cfg.camera_dim
        self.to_latents = MLP(dim, expansion=2)
        self.features_channel_cat = nn.Linear(dim * levels, dim)
        self.aggregate_16 = AttentionBlock(dim, num_heads=1, expansion=exp, context_dim=dim)
        self.prompt_camera = AttentionBlock(dim, num_heads=1, expansion=exp, context_dim=dim)
        self.rays_layers = nn.ModuleList()
        self.ups = nn.ModuleList()
        self.process_layers = nn.ModuleList()
        self.depth_mlp = nn.ModuleList()
        self.confidence_mlp = nn.ModuleList()
        for i, depth in enumerate(cfg.decoder_depths):
            d_i = dim // 2 ** i
            self.process_layers.append(nn.ModuleList([
                AttentionBlock(d_i, num_heads=cfg.decoder_heads // 2 ** i, expansion=exp, attend_over="heads")
                for _ in range(depth)]))
            self.rays_layers.append(nn.Linear(cfg.camera_dim + 3, d_i))
            self.ups.append(ConvUpsampleShuffleResidual(d_i, num_layers=2, expansion=exp, kernel_size=7))
            self.depth_mlp.append(MLP(dim // 2 ** (i + 1), expansion=1, output_dim=16))
            self.confidence_mlp.append(MLP(dim // 2 ** (i + 1), expansion=1, output_dim=16))
        n = len(cfg.decoder_depths)
        self.to_depth = nn.Conv2d(16 * n, 1, 7, padding=3, padding_mode="reflect")
        self.to_confidence = nn.Conv2d(16 * n, 1, 7, padding=3, padding_mode="reflect")

    def forward(self, features: list[torch.Tensor], rays: torch.Tensor, pos: torch.Tensor,
                full: tuple[int, int], grid: tuple[int, int]):
        """``features`` 4 x ``(B, hw, D)``; ``pos (B, 4hw, D)`` sine + level embedding; ``rays (B, H*W, 3)``.
        Returns ``(logdepth (B,1,H,W), confidence (B,1,H,W) in (0,1), latents (B, hw, D))``."""
        dtype = features[0].dtype
        h, w = grid
        ray_emb = [layer(ray_features(rays, full, (h * 2 ** i, w * 2 ** i), self.camera_dim).to(dtype))
                   for i, layer in enumerate(self.rays_layers)]
        f16 = self.features_channel_cat(torch.cat(features, dim=-1))
        latents = f16 + self.to_latents(f16)
        latents = self.aggregate_16(latents, context=torch.cat(features, dim=1), pos_embed_context=pos)
        latents = self.prompt_camera(latents, context=ray_emb[0])
        depth_features = latents
        outs = []
        for i, (up, blocks, emb) in enumerate(zip(self.ups, self.process_layers, ray_emb)):
            for blk in blocks:
                latents = blk(latents, pos_embed=emb)
            gh, gw = h * 2 ** i, w * 2 ** i
            x = (latents + emb).transpose(1, 2).reshape(latents.shape[0], -1, gh, gw)
            latents = up(x)
            outs.append(latents.reshape(latents.shape[0], 2 * gh, 2 * gw, -1))

        def head(mlps, conv):
            maps = [F.interpolate(mlp(f).permute(0, 3, 1, 2), size=full, mode="bilinear", align_corners=False)
                    for mlp, f in zip(list(mlps)[::-1], outs[::-1])]
            return conv(torch.cat(maps, dim=1))

        logdepth = head(self.depth_mlp, self.to_depth)
        confidence = torch.sigmoid(head(self.confidence_mlp, self.to_confidence))
        return logdepth, confidence, depth_features


class DecoderV2old(nn.Module):
    """``pixel_decoder`` of UniDepthV2old. See the module docstring for the computation."""

    def __init__(self, cfg: UniDepthConfig) -> None:
        super().__init__()
        dim, levels = cfg.hidden_dim, len(cfg.output_idx)
        self.hidden_dim = dim
        self.camera_layer = CameraHeadV2old(dim, cfg.expansion)
        self.global_layer = GlobalHeadV2old(dim, cfg.camera_dim, cfg.expansion)
        enc = [cfg.embed_dim] * levels
        self.input_adapter = ListAdapter(enc, dim, with_norm_act=True)
        self.camera_token_adapter = ListAdapter(enc, dim, with_norm_act=True)
        self.global_token_adapter = ListAdapter(enc[:2], dim, with_norm_act=True)
        self.depth_layer = DepthHeadV2old(cfg)
        self.level_embeds = nn.Parameter(torch.zeros(levels, dim))
        self.level_embed_layer = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim), nn.LayerNorm(dim))

    def forward(self, features: list[torch.Tensor], camera_tokens: list[torch.Tensor],
                global_tokens: list[torch.Tensor], full: tuple[int, int],
                rays_gt: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``features`` 4 x ``(B, h, w, C)``; ``camera_tokens`` 4 x ``(B,1,C)``; ``global_tokens`` 2 x ``(B,1,C)``;
        ``full = (H, W)``; ``rays_gt (B, H*W, 3)`` unit rays of a known camera or None.

        Returns float32 ``depth (B,1,H,W)`` z-depth, ``confidence (B,1,H,W)``, ``K (B,3,3)`` predicted (network
        pixels), ``rays (B,H*W,3)``, ``depth_features (B,hw,D)``.
        """
        b, h, w, _ = features[0].shape
        H, W = full
        dtype = features[0].dtype
        feats = [f.reshape(b, h * w, -1) for f in self.input_adapter(features)]
        flat = torch.cat(feats, dim=1)                                        # (B, 4hw, D) level-major
        level = self.level_embed_layer(self.level_embeds)                     # (4, D)
        level = level[:, None, :].expand(-1, h * w, -1).reshape(1, -1, self.hidden_dim)
        sine = sine_position_embedding(b, h, w, self.hidden_dim // 2, device=flat.device)
        sine = sine.flatten(2).transpose(1, 2).repeat(1, len(feats), 1).to(dtype)
        pos = sine + level.to(dtype)

        cam_tokens = torch.cat(self.camera_token_adapter(camera_tokens), dim=1)
        K = self.camera_layer.intrinsics(self.camera_layer.raw(flat, cam_tokens, pos), H, W)
        rays = unit_rays(K, H, W, eps=1e-12).reshape(b, H * W, 3) if rays_gt is None else rays_gt.float()

        glob_tokens = torch.cat(self.global_token_adapter(global_tokens), dim=1)
        scale, shift = self.global_layer(flat, glob_tokens, rays, full, (h, w))

        logdepth, confidence, dfeat = self.depth_layer(feats, rays, pos, full, (h, w))
        logdepth = logdepth.float()
        depth = F.layer_norm(logdepth, logdepth.shape[-2:]).exp()
        depth = F.softplus((depth + shift) * scale, beta=10.0)
        return {"depth": depth, "confidence": confidence.float(), "K": K, "rays": rays, "depth_features": dfeat}
