"""In-memory latent caches for small-model training on CPU (used to train the nano model).

The VAE encodings a DiT trainer needs per sample are deterministic functions of the sample (the motion VAE's
posterior mean / log-variance, the control and depth latents; ViSM's condition latents and target latent), so
for a dataset that fits in memory they are computed once per sample id and reused every epoch.  The random
parts stay per step and use the trainer's generator exactly as the uncached code does: the posterior sample
``z = normalize(mean) + exp(logvar/2)·ε`` (``MotionVAE.encode(sample=True)``), the condition drops and the flow
noise.  At nano size this turns a step from seconds (three VAE passes over 17 frames) into milliseconds.
"""
from __future__ import annotations

import torch

from moge4d_core.models.motion_vae import normalize_latent
from moge4d_core.pipeline import encode_strag_conditions

from ..datasets import TrajSceneBatch
from ..train_vism import VismBatch, VismTask, vism_conditions
from .trajectory_loss import TrajectoryStragTask

__all__ = ["CachedStragTask", "CachedVismTask"]


class CachedStragTask(TrajectoryStragTask):
    """:class:`~.trajectory_loss.TrajectoryStragTask` (options :class:`~.trajectory_loss.TrajectoryStragOptions`)
    with the per-sample VAE encodings cached by sample id."""

    def _encoded(self, sample_id: str, delta: torch.Tensor, colors: torch.Tensor, z0: torch.Tensor) -> tuple:
        cache = self.__dict__.setdefault("_latent_cache", {})
        if sample_id not in cache:
            mvae = self.motion_vae
            with torch.no_grad():
                rgb = mvae.encoder_adapter(delta[None]) * 2 - 1
                post = mvae.vae.encode(rgb).latent_dist
                mean = normalize_latent(post.mean, traj_norm=self.o.traj_norm)
                std = torch.exp(0.5 * post.logvar)
                c = encode_strag_conditions(self.image_vae, colors, z0, delta.shape[1], reference=self.o.reference)
            cache[sample_id] = (mean, std, c.control, c.depth, c.ref_latent)
        return cache[sample_id]

    def loss(self, model, batch: TrajSceneBatch, g: torch.Generator):
        dev = self.device
        delta = batch.delta_hat.permute(0, 4, 1, 2, 3).to(dev)              # (B,3,T,H,W)
        b = delta.shape[0]
        enc = [self._encoded(batch.id[i], delta[i], batch.colors[i], batch.first_frame_points[i][..., 2])
               for i in range(b)]
        with torch.no_grad():
            mean = torch.cat([e[0] for e in enc]).to(dev)
            std = torch.cat([e[1] for e in enc]).to(dev)
            x0 = mean + std * torch.randn(mean.shape, generator=g, device=dev, dtype=mean.dtype)
            control = torch.cat([e[2] for e in enc]).to(dev)
            depth = torch.cat([e[3] for e in enc]).to(dev)
            ref = torch.cat([e[4] for e in enc]).to(dev) if self.o.reference else None
        return self.loss_from_latents(model, batch, g, x0, control, depth, ref)


class CachedVismTask(VismTask):
    """:class:`~training.train_vism.VismTask` with the target latent and the condition latents cached by sample id.

    All-hole masks keep the per-step random rule of the uncached task (their conditions are not cached)."""

    def loss(self, model, batch: VismBatch, g: torch.Generator):
        from moge4d_core.models.vism_mask import all_holes

        o, dev = self.o, self.device
        b = batch.render.shape[0]
        cache = self.__dict__.setdefault("_latent_cache", {})
        with torch.no_grad():
            u = torch.rand(b, 3, generator=g, device=dev)                   # all-hole zeroing, CLIP, text
            x0, masks, videos = [], [], []
            for i in range(b):
                sid, render, holes = batch.ids[i], batch.render[i], batch.holes[i]
                if sid not in cache:
                    cache[sid] = (self.vae.encode(batch.video[i:i + 1]),
                                  None if all_holes(holes) else vism_conditions(self.vae, render, holes, 1.0, 0.0))
                target, conds = cache[sid]
                if conds is None:
                    conds = vism_conditions(self.vae, render, holes, float(u[i, 0]), o.inpaint_drop)
                x0.append(target)
                masks.append(conds[0])
                videos.append(conds[1])
            x0 = torch.cat(x0).to(dev)
            mask = torch.cat(masks).to(dev)
            masked_video = torch.cat(videos).to(dev)
            contexts = self.contexts(batch, u)
        return self.flow_loss(model, x0, g, **contexts, mask=mask, masked_video=masked_video)
