"""UniDepthV2 (2025) decoder: camera head, ray-conditioned depth head (reference ``encoders.md`` §1.3).

Notation: ``h x w`` the token grid (H/14, W/14) of the network input ``H x W``; ``D = hidden_dim``.

* Camera: the 4 adapted cls tokens ``(B, 4, D)`` -> ``project`` MLP -> two self-attention blocks (8 heads, no
  biases, ``latents_pos`` added to the *queries* only) -> ``out_pinhole`` -> ``x (B, 4)``;
  ``fx = exp(x0)·0.7·diag``, ``fy = exp(x1)·0.7·diag``, ``cx = sigmoid(x2)·W``, ``cy = sigmoid(x3)·H`` with
  ``diag = sqrt(H² + W²)``. Rays ``K⁻¹[u, v, 1]`` at pixel centres, unit length (clamp 1e-5).
* Depth: rays resampled to ``h x w`` (bilinear + antialias), renormalised (clamp 1e-4), polar/azimuth angles,
  log-spaced sine features (D channels); each of the 4 feature levels cross-attends to them (``prompt_camera``);
  level 0 -> ``to_latents`` -> three upsampling stages adding levels 1..3 through transposed convs; a
  LayerNorm+Linear head, a reflect-padded 3x3 conv, bilinear (align_corners=True) to ``H x W`` and a small conv
  head give log-radius and log-confidence.
* Outputs: ``radius = exp(clip(log, -8, 8) + 2)`` (distance along the ray, **not** z), ``confidence =
  exp(clip(logc, -8, 8))``.

The sine position embedding and ``level_embeds`` of the reference are computed there but never used by V2; only
the ``level_embeds`` parameter is kept so that the published key set loads strictly.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .camera import intrinsics_matrix, unit_rays
from .config import UniDepthConfig
from .layers import MLP, AttentionBlock, AttentionLayer, ListAdapter, ResUpsampleBil, flat_interpolate, fourier_features


class CameraHeadV2(nn.Module):
    def __init__(self, dim: int, num_heads: int, expansion: int, layer_scale: float) -> None:
        super().__init__()
        kw = dict(num_heads=num_heads, expansion=expansion, layer_scale=layer_scale, use_bias=False)
        self.aggregate1 = AttentionBlock(dim, **kw)
        self.aggregate2 = AttentionBlock(dim, **kw)
        self.latents_pos = nn.Parameter(torch.zeros(1, 4, dim))
        self.project = MLP(dim, expansion=1, output_dim=dim)
        self.out_pinhole = MLP(dim, expansion=1, output_dim=1)

    def raw(self, cls_tokens: torch.Tensor) -> torch.Tensor:
        """``cls_tokens (B, 4, D)`` -> the 4 raw camera scalars ``(B, 4)``."""
        tokens = self.project(cls_tokens)
        pos = self.latents_pos.expand(cls_tokens.shape[0], -1, -1)
        tokens = self.aggregate1(tokens, pos_embed=pos)
        tokens = self.aggregate2(tokens, pos_embed=pos)
        return self.out_pinhole(tokens).squeeze(-1)

    @staticmethod
    def intrinsics(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Raw scalars ``(B, 4)`` -> pixel K ``(B, 3, 3)`` of the ``height x width`` network input."""
        x = x.float()
        diag = math.sqrt(height ** 2 + width ** 2)
        return intrinsics_matrix(torch.exp(x[:, 0]) * 0.7 * diag, torch.exp(x[:, 1]) * 0.7 * diag,
                                 torch.sigmoid(x[:, 2]) * width, torch.sigmoid(x[:, 3]) * height)


class DepthHeadV2(nn.Module):
    def __init__(self, cfg: UniDepthConfig) -> None:
        super().__init__()
        dim, heads, exp = cfg.hidden_dim, cfg.decoder_heads, cfg.expansion
        self.hidden_dim = dim
        self.to_latents = nn.Linear(dim, dim)
        self.prompt_camera = nn.ModuleList([
            AttentionLayer(cfg.num_prompt_blocks, dim, num_heads=heads, expansion=exp, layer_scale=-1.0,
                           context_dim=dim, use_bias=False) for _ in range(4)])
        self.process_features = nn.ModuleList()
        self.ups = nn.ModuleList()
        self.depth_mlp = nn.ModuleList()
        n = len(cfg.decoder_depths)
        for i, depth in enumerate(cfg.decoder_depths):
            cur = min(dim, 2 * dim // 2 ** i)
            nxt = 2 * dim // 2 ** (i + 1)
            out = max(nxt, cfg.out_dim)
            k = max(1, 2 * i)
            self.process_features.append(nn.ConvTranspose2d(dim, cur, kernel_size=k, stride=k))
            self.ups.append(ResUpsampleBil(cur, out, num_layers=depth, kernel_size=cfg.kernel_size,
                                           layer_scale=cfg.layer_scale))
            self.depth_mlp.append(nn.Sequential(nn.LayerNorm(nxt), nn.Linear(nxt, out)) if i == n - 1
                                  else nn.Identity())
        self.confidence_mlp = nn.Sequential(nn.LayerNorm(nxt), nn.Linear(nxt, out))
        conv = dict(kernel_size=3, padding=1, padding_mode="reflect")
        self.to_depth_lr = nn.Conv2d(out, out // 2, **conv)
        self.to_confidence_lr = nn.Conv2d(out, out // 2, **conv)
        self.to_depth_hr = nn.Sequential(nn.Conv2d(out // 2, 32, **conv), nn.LeakyReLU(), nn.Conv2d(32, 1, 1))
        self.to_confidence_hr = nn.Sequential(nn.Conv2d(out // 2, 32, **conv), nn.LeakyReLU(), nn.Conv2d(32, 1, 1))

    def embed_rays(self, rays: torch.Tensor, full: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
        """Unit rays ``(B, H*W, 3)`` -> features ``(B, h*w, D)`` (float32)."""
        r = flat_interpolate(rays.float(), old=full, new=grid, antialias=True)
        r = r / r.norm(dim=-1, keepdim=True).clamp(min=1e-4)
        x, y, z = r.unbind(-1)
        polar = torch.acos(z.clamp(-1.0, 1.0))  # clamp only guards rounding above 1 (NaN in the reference)
        x_clipped = x.abs().clamp(min=1e-3) * torch.where(x >= 0, 1.0, -1.0)
        azimuth = torch.atan2(y, x_clipped)
        return fourier_features(torch.stack([polar, azimuth], dim=-1), dim=self.hidden_dim,
                                max_freq=max(grid) // 2, cat_orig=False)

    def forward(self, features: list[torch.Tensor], rays: torch.Tensor, full: tuple[int, int]):
        """``features``: 4 adapted maps ``(B, h, w, D)``; ``rays (B, H*W, 3)`` unit.
        Returns ``(log_radius (B,1,H,W), log_confidence (B,1,H,W), depth_features (B,D,h,w))``."""
        b, h, w, d = features[0].shape
        emb = self.embed_rays(rays, full, (h, w)).to(features[0].dtype)
        cond = [prompter(f.reshape(b, h * w, d), emb) for prompter, f in zip(self.prompt_camera, features)]
        init = self.to_latents(cond[0]).transpose(1, 2).reshape(b, d, h, w)
        cond = [c.transpose(1, 2).reshape(b, d, h, w) for c in cond]
        latents = init
        for i, up in enumerate(self.ups):
            latents = up(latents + self.process_features[i](cond[i + 1]))
        last = latents.permute(0, 2, 3, 1)
        logd = self.to_depth_lr(self.depth_mlp[-1](last).permute(0, 3, 1, 2))
        logd = self.to_depth_hr(F.interpolate(logd, size=full, mode="bilinear", align_corners=True))
        logc = self.to_confidence_lr(self.confidence_mlp(last).permute(0, 3, 1, 2))
        logc = self.to_confidence_hr(F.interpolate(logc, size=full, mode="bilinear", align_corners=True))
        return logd, logc, init


class DecoderV2(nn.Module):
    """``pixel_decoder`` of UniDepthV2. See the module docstring for the computation."""

    def __init__(self, cfg: UniDepthConfig) -> None:
        super().__init__()
        dims = [cfg.embed_dim] * 4
        self.input_adapter = ListAdapter(dims, cfg.hidden_dim, with_norm_act=False)
        self.camera_token_adapter = ListAdapter(dims, cfg.hidden_dim, with_norm_act=False)
        self.camera_layer = CameraHeadV2(cfg.hidden_dim, cfg.decoder_heads, cfg.expansion, cfg.layer_scale)
        self.depth_layer = DepthHeadV2(cfg)
        self.level_embeds = nn.Parameter(torch.zeros(1, 1, 4, cfg.hidden_dim), requires_grad=False)  # unused

    def forward(self, features: list[torch.Tensor], cls_tokens: list[torch.Tensor], full: tuple[int, int],
                rays_gt: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``features`` 4 x ``(B, h, w, C)``, ``cls_tokens`` 4 x ``(B, 1, C)``, ``full = (H, W)`` network input;
        ``rays_gt (B, H*W, 3)`` unit rays of a known camera (replace the predicted ones) or None.

        Returns float32 ``radius, confidence (B,1,H,W)``, ``rays (B,H*W,3)``, ``K (B,3,3)`` (predicted, network
        pixels) and ``depth_features (B,D,h,w)``.
        """
        H, W = full
        feats = self.input_adapter(features)
        tokens = torch.cat(self.camera_token_adapter(cls_tokens), dim=1)
        K = self.camera_layer.intrinsics(self.camera_layer.raw(tokens), H, W)
        if rays_gt is None:
            rays = unit_rays(K, H, W, eps=1e-5).reshape(K.shape[0], H * W, 3)
        else:
            rays = rays_gt.float()
        logd, logc, dfeat = self.depth_layer(feats, rays, full)
        return {
            "radius": torch.exp(logd.float().clamp(-8.0, 8.0) + 2.0),
            "confidence": torch.exp(logc.float().clamp(-8.0, 8.0)),
            "rays": rays, "K": K, "depth_features": dfeat,
        }
