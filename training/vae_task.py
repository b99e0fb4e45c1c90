"""What the two VAE trainers share (:mod:`training.train_vae`, the motion VAE; :mod:`training.train_pixel_vae`, a
plain Wan VAE): options, the batch, the loss and the model init from a JSON config.

Loss of one batch: ``rec(recon, target) + kl_scale · KL``, where ``rec`` is the L1 (``--rec-loss l1``, the
release) or the squared error (``l2``) summed over all elements and divided by the batch size, and
``KL = ½ Σ(μ² + σ² − 1 − log σ²) / B`` of the posterior the trained module returns. The posterior sample uses unit
noise drawn from the step's generator, of the Wan VAE's latent shape.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from moge4d_core.errors import MoGe4DInputError

from .engine import TrainTask, dataset_from_options
from .options import CommonOptions, opt

__all__ = ["VaeOptions", "VaeBatch", "VaeTask", "kl_divergence", "reconstruction_loss", "read_json_config"]


@dataclass
class VaeOptions(CommonOptions):
    """Options both VAE trainers have (defaults: the release's ``train_vae.sh``, reference G)."""

    model: Optional[str] = opt(None, "VAE to start from")
    init_config: Optional[str] = opt(None, "random init from a JSON config")
    kl_scale: float = opt(1e-6, "weight of the KL term")
    rec_loss: str = opt("l1", "reconstruction loss, summed over elements and divided by the batch (release: l1)",
                        choices=["l1", "l2"])

    lr: float = opt(5e-6, "learning rate")
    weight_decay: float = opt(1e-2, "AdamW weight decay")
    adam_eps: float = opt(1e-8, "AdamW epsilon")
    grad_clip: Optional[float] = opt(1.0, "max gradient norm (0 or None: no clipping)")
    checkpoint_every: int = opt(200, "write <out>/checkpoint-<step>/ every N optimizer steps (0: only at the end)")
    seed: int = opt(40, "seed of the model init, the data order (sampler) and every random draw")


@dataclass
class VaeBatch:
    """One VAE training batch.

    Attributes:
        target: (B, 3, T, H, W) float32, what the VAE encodes and must give back: the normalised motion
            ``delta_hat`` (motion VAE) or the RGB video in [-1, 1] (pixel VAE).
    """

    target: torch.Tensor


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL divergence of a diagonal Gaussian posterior from the unit Gaussian, per sample.

    Args:
        mean: (B, ...) posterior mean.
        logvar: (B, ...) posterior log-variance, same shape.

    Returns:
        scalar float32: ``½ Σ(mean² + exp(logvar) − 1 − logvar)`` over all elements, divided by B.
    """
    mean, logvar = mean.float(), logvar.float()
    return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).sum() / mean.shape[0]


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Reconstruction error summed over all elements, divided by the batch size.

    Args:
        recon: (B, ...) the VAE's output.
        target: (B, ...) what it should give back.
        kind: ``"l1"`` (absolute error, the release) or ``"l2"`` (squared error).

    Returns:
        scalar float32.
    """
    r, t = recon.float(), target.float()
    per = (r - t).abs() if kind == "l1" else (r - t).square()
    return per.sum() / r.shape[0]


def read_json_config(spec: str, what: str) -> dict:
    """The JSON object in the ``--init-config`` file ``spec`` (``what``: the expected content, for messages)."""
    p = Path(spec)
    if not p.is_file():
        raise MoGe4DInputError(f"--init-config {spec}: file not found (expected a JSON {what})")
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise MoGe4DInputError(f"--init-config {p}: not valid JSON ({exc})") from None
    if not isinstance(d, dict):
        raise MoGe4DInputError(f"--init-config {p}: expected a JSON object ({what})")
    return d


class VaeTask(TrainTask):
    """Base of the VAE tasks. Subclasses build ``self.vae`` and ``self.model`` (a module whose
    ``forward(target, noise) -> (recon, mean, logvar)``) in ``setup`` and turn samples into a :class:`VaeBatch`."""

    name = "vae"
    mode = ""                      # recorded in the checkpoints' compat record ("motion" / "pixel")
    dataset_kwargs: dict = {}

    def datasets(self):
        if not hasattr(self, "_datasets"):
            train = dataset_from_options(self.o, self.o.data, **self.dataset_kwargs)
            ev = dataset_from_options(self.o, self.o.eval_data, **self.dataset_kwargs) if self.o.eval_data else None
            self._datasets = (train, ev)
        return self._datasets

    def vae_config(self) -> dict:
        raise NotImplementedError

    def compat(self) -> dict:
        cfg = json.loads(json.dumps(self.vae_config(), default=list))
        return {"task": "vae", "mode": self.mode, "config": cfg, "groups": [g["name"] for g in self.param_groups()],
                "traj_norm": getattr(self.o, "traj_norm", False), "frames": self.o.frames, "crop": self.o.crop,
                "grid": self.o.grid}

    def reconstruction(self, recon: torch.Tensor, batch: VaeBatch) -> torch.Tensor:
        """The reconstruction term of ``batch``'s loss (``--rec-loss``); ``recon`` is on the task's device."""
        return reconstruction_loss(recon, batch.target.to(recon.device), self.o.rec_loss)

    def loss(self, model, batch: VaeBatch, g: torch.Generator):
        from moge4d_core.models.motion_vae import MotionVAE

        x = batch.target.to(self.device)
        b, _, t, h, w = x.shape
        noise = torch.randn(MotionVAE.latent_shape(b, t, h, w), generator=g, device=self.device, dtype=torch.float32)
        recon, mean, logvar = model(x, noise)
        rec = self.reconstruction(recon, batch)
        kl = kl_divergence(mean, logvar)
        return rec + self.o.kl_scale * kl, {"rec": float(rec.detach()), "kl": float(kl.detach())}
