"""Motion VAE trainer (reference ``moge4d_official.md`` A2, A3, G) and a plain pixel Wan VAE trainer.

``--mode motion`` (default), as the released ``train_vae.py``:

* input ``delta_hat`` (B,3,T,H,W) from the TrajScene reader; encode = trajectory encoder adapter -> ``x2-1`` ->
  frozen Wan VAE encoder -> stage-1 normalised posterior mean (``--traj-norm`` adds stage 2; the release
  trains without it) + posterior noise with the *raw* log-variance (the release's ``.sample()`` quirk, the same
  arithmetic as :meth:`MotionVAE.encode(sample=True) <moge4d_core.models.motion_vae.MotionVAE.encode>`);
  decode = :meth:`MotionVAE.decode` (Wan decoder clamped to [-1,1] -> trajectory decoder adapter);
* loss: ``L1(recon, delta)`` summed over all elements / batch size ``+ 1e-6 · KL``, with
  ``KL = ½ Σ(μ² + σ² − 1 − log σ²) / B`` of that posterior (normalised μ, raw log-variance, as the release);
  ``--rec-loss l1_balanced`` (ours) gives the moving and the static elements half the weight each (a small VAE
  trained from scratch on plain L1 learns to decode every sparse motion as 0);
* trained: the decoder adapter (lr) and the Wan VAE decoder (lr × ``--decoder-lr-scale`` = 0.1;
  ``--no-train-decoder`` freezes it); the Wan encoder, ``quant_conv`` and ``post_quant_conv`` stay frozen.
  The release runs the encoder under ``no_grad``, so its encoder adapter never learns (it stays exactly
  ``sigmoid``, H5). ``--train-encoder-adapter`` makes it really trainable: the gradient flows through the frozen
  Wan encoder into the adapter. ``--train-encoder`` (ours) also trains the Wan encoder and ``quant_conv`` at the
  decoder's lr: a small VAE trained here on RGB does not pass motion maps on well enough to stay frozen;
* init: ``--model`` (anything :func:`load_motion_vae` reads), ``--base-vae`` (a pixel Wan VAE; fresh adapters
  with the official init: encoder = sigmoid, decoder default init) or ``--init-config`` (a
  :class:`MotionVAEConfig` JSON ``{"vae": AutoencoderKLWan kwargs, "adapter": AdapterConfig fields}``);
* exports: ``export/motion_vae.safetensors`` (:func:`save_motion_vae`, read by :func:`load_motion_vae`) and the
  release folder layout ``export/VAE/`` (``encoder_prompt/``, ``decoder_prompt/``, ``vae/``, plus
  ``moge4d_config.json`` with every size the weights do not carry, GroupNorm groups included; read by
  :func:`load_motion_vae` and by the official scripts, which ignore the JSON).

``--mode pixel``: a plain Wan2.1 VAE (diffusers ``AutoencoderKLWan``, encoder and decoder) on the dataset's RGB
videos in [-1,1] (``<id>.mp4``, centre-cropped to ``--crop`` / multiples of 8), loss ``L1 sum / B + kl_scale ·
KL`` of the raw posterior. Init ``--model`` (:func:`load_wan_vae`) or ``--init-config`` (AutoencoderKLWan kwargs).
Export ``export/wan_vae.safetensors`` in the original Wan key layout (read by :func:`load_wan_vae`, ComfyUI's
VAE loader, and usable as ``--base-vae`` of a motion VAE run): the nano pipeline's pixel VAE.

CLI: ``python -m training.train_vae --data DIR --out DIR (--model P | --base-vae P | --init-config J)``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.geometry.normalization import motion_scale
from moge4d_core.models.motion_vae import MotionVAE, MotionVAEConfig

from .engine import DTYPES, TrainResult, TrainTask, dataset_from_options, run
from .options import CommonOptions, build_parser, coerce_options, opt, parse_size

__all__ = ["VaeOptions", "MotionVAETrainModule", "PixelVAETrainModule", "VaeTask", "train", "main", "kl_divergence",
           "fit_video"]

DESCRIPTION = "Train the MoGe4D motion VAE (trajectory adapters + Wan decoder) or a plain pixel Wan VAE."


@dataclass
class VaeOptions(CommonOptions):
    """Options of the VAE trainer (defaults: the release's ``train_vae.sh``, reference G)."""

    mode: str = opt("motion", "motion: the MoGe4D motion VAE; pixel: a plain Wan VAE on the RGB videos",
                    choices=["motion", "pixel"])
    model: Optional[str] = opt(None, "VAE to start from (motion: load_motion_vae; pixel: load_wan_vae)")
    base_vae: Optional[str] = opt(None, "motion mode: a pixel Wan VAE; the adapters start fresh (official init)")
    init_config: Optional[str] = opt(None, "random init from a JSON config (motion: MotionVAEConfig dict; pixel: "
                                           "AutoencoderKLWan kwargs)")
    train_decoder: bool = opt(True, "motion mode: also train the Wan VAE decoder (release --finetune_vae_decoder)")
    decoder_lr_scale: float = opt(0.1, "motion mode: lr factor of the Wan VAE decoder (release 0.1)")
    train_encoder_adapter: bool = opt(False, "motion mode: train the trajectory encoder adapter through the frozen "
                                             "Wan encoder (the release never does)")
    train_encoder: bool = opt(False, "motion mode: also train the Wan VAE encoder and quant_conv (lr × "
                                     "--decoder-lr-scale); the release keeps them frozen, which suits a strong "
                                     "pretrained encoder but not a small one trained here")
    traj_norm: bool = opt(False, "motion mode: sample the posterior in the two-stage normalised space (release: off)")
    kl_scale: float = opt(1e-6, "weight of the KL term")
    rec_loss: str = opt("l1", "reconstruction loss (summed over elements, divided by the batch); l1_balanced (motion "
                              "mode): moving and static elements weigh half each, so sparse small motions are not "
                              "traded for a sharper static background (plain L1 decodes them as 0); l2_metric "
                              "(motion mode): L2 of the de-normalised motion in metres (x z/fx, x z/fy, x z), the "
                              "units of the trajectory error, so far static background weighs as it does there",
                        choices=["l1", "l2", "l1_balanced", "l2_metric"])
    export_official: bool = opt(True, "motion mode: also export the release folder layout export/VAE/")

    lr: float = opt(5e-6, "learning rate")
    weight_decay: float = opt(1e-2, "AdamW weight decay")
    adam_eps: float = opt(1e-8, "AdamW epsilon")
    grad_clip: Optional[float] = opt(1.0, "max gradient norm (0 or None: no clipping)")
    checkpoint_every: int = opt(200, "write <out>/checkpoint-<step>/ every N optimizer steps (0: only at the end)")
    seed: int = opt(40, "seed of the model init, the data order (sampler) and every random draw")


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``½ Σ(mean² + exp(logvar) − 1 − logvar)`` over all elements, divided by the batch size (float32)."""
    mean, logvar = mean.float(), logvar.float()
    return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).sum() / mean.shape[0]


def _rec_loss(recon: torch.Tensor, target: torch.Tensor, kind: str,
              metric_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Summed over elements, divided by the batch. ``l1_balanced``: L1 where the moving elements (target ≠ 0) and
    the static ones together carry half of the total weight each (mean weight 1, so the scale matches ``l1``).
    ``l2_metric``: L2 of ``(recon - target) * metric_scale``, the de-normalisation factors (B,3,1,H,W)."""
    r, t = recon.float(), target.float()
    if kind == "l2_metric":
        return ((r - t) * metric_scale.float()).square().sum() / r.shape[0]
    per = (r - t).abs() if kind in ("l1", "l1_balanced") else (r - t).square()
    if kind == "l1_balanced":
        moving = t != 0
        frac = moving.float().mean()
        if 0 < frac < 1:
            per = torch.where(moving, per * (0.5 / frac), per * (0.5 / (1 - frac)))
    return per.sum() / r.shape[0]


class MotionVAETrainModule(nn.Module):
    """The trained computation of the motion VAE, as one module (so DDP sees one forward).

    ``forward(delta (B,3,T,H,W), noise (B,16,F,h,w)) -> (recon (B,3,T,H,W), mean, logvar)``: the release's
    encode (``sample`` with the given unit noise) and decode; ``mean`` is the normalised posterior mean the KL
    uses, ``logvar`` the raw clamped log-variance. ``train_encoder``: run the encode with gradients (the encoder
    adapter or the Wan encoder trains); otherwise it runs under ``no_grad`` as in the release.
    """

    def __init__(self, vae: MotionVAE, *, traj_norm: bool, train_encoder: bool) -> None:
        super().__init__()
        self.vae = vae
        self.traj_norm = traj_norm
        self.train_encoder = train_encoder

    def forward(self, delta: torch.Tensor, noise: torch.Tensor):
        m = self.vae
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.train_encoder):
            mean, logvar = m.posterior(delta, traj_norm=self.traj_norm)
        z = mean + torch.exp(0.5 * logvar) * noise.to(mean.dtype)
        return m.decode(z, traj_norm=self.traj_norm), mean, logvar


class PixelVAETrainModule(nn.Module):
    """``forward(video (B,3,T,H,W) in [-1,1], noise) -> (recon, mean, logvar)`` of a plain ``AutoencoderKLWan``
    (posterior sample ``mean + std · noise``, diffusers' ``DiagonalGaussianDistribution.sample`` arithmetic)."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, video: torch.Tensor, noise: torch.Tensor):
        posterior = self.vae.encode(video).latent_dist
        z = posterior.mean + posterior.std * noise.to(posterior.mean.dtype)
        return self.vae.decode(z).sample, posterior.mean, posterior.logvar


def fit_video(frames: torch.Tensor, crop: Optional[tuple[int, int]], multiple: int = 8) -> torch.Tensor:
    """(T,H,W,C) frames -> centre crop to ``crop`` (when it fits), then down to multiples of ``multiple``."""
    t, h, w = frames.shape[:3]
    th, tw = (min(crop[0], h), min(crop[1], w)) if crop is not None else (h, w)
    th, tw = th - th % multiple, tw - tw % multiple
    if th < multiple or tw < multiple:
        raise MoGe4DInputError(f"video frames {h}x{w} are too small (need at least {multiple}x{multiple})")
    top, left = (h - th) // 2, (w - tw) // 2
    return frames[:, top:top + th, left:left + tw]


def _read_json(spec: str, what: str) -> dict:
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
    name = "vae"

    def setup(self, device: torch.device) -> None:
        o = self.o
        self.device = device
        if o.mode not in ("motion", "pixel"):
            raise MoGe4DInputError(f"--mode must be motion or pixel, got {o.mode!r}")
        if o.mode == "pixel" and o.rec_loss in ("l1_balanced", "l2_metric"):
            raise MoGe4DInputError(f"--rec-loss {o.rec_loss} weighs motion elements: it is for --mode motion; use l1 "
                                   f"or l2 in pixel mode")
        dt = DTYPES[o.weight_dtype]
        if o.mode == "motion":
            vae = self._motion_vae()
            vae.requires_grad_(False)
            vae.decoder_adapter.requires_grad_(True)
            if o.train_decoder:
                vae.vae.decoder.requires_grad_(True)
            if o.train_encoder_adapter:
                vae.encoder_adapter.requires_grad_(True)
            if o.train_encoder:
                vae.vae.encoder.requires_grad_(True)
                vae.vae.quant_conv.requires_grad_(True)
            self.vae = vae.to(dt)
            self.model = MotionVAETrainModule(self.vae, traj_norm=o.traj_norm,
                                              train_encoder=o.train_encoder_adapter or o.train_encoder)
            self.model.train()
            if not o.train_encoder:
                self.vae.vae.encoder.eval()
            if not o.train_encoder_adapter:
                self.vae.encoder_adapter.eval()
        else:
            self.vae = self._pixel_vae().to(dt)
            self.vae.requires_grad_(True)
            self.model = PixelVAETrainModule(self.vae).train()
        if o.gradient_checkpointing:
            target = self.vae.vae if o.mode == "motion" else self.vae
            if hasattr(target, "enable_gradient_checkpointing"):
                target.enable_gradient_checkpointing()
        if o.mode == "motion" and not o.train_encoder_adapter:
            self.notes.append("encoder adapter frozen (release behaviour: it stays sigmoid); "
                              "--train-encoder-adapter trains it")

    def _motion_vae(self) -> MotionVAE:
        from moge4d_core.loading.motion_vae import load_motion_vae

        o = self.o
        if isinstance(o.model, MotionVAE):
            return o.model
        sources = [s for s in ("model", "init_config") if getattr(o, s) is not None]
        if o.base_vae is not None and o.model is None:
            sources.append("base_vae")
        if len(sources) != 1:
            raise MoGe4DInputError(f"motion mode: give exactly one of --model, --base-vae, --init-config "
                                   f"(got {sources or 'none'})")
        if o.model is not None:
            return load_motion_vae(o.model, base_vae=o.base_vae)[0]
        if o.base_vae is not None:
            return load_motion_vae(o.base_vae, fresh_adapters=True)[0]
        d = _read_json(o.init_config, "MotionVAEConfig {'vae': {...}, 'adapter': {...}}")
        try:
            return MotionVAE(MotionVAEConfig.from_dict(d))
        except TypeError as exc:
            raise MoGe4DInputError(f"--init-config {o.init_config}: not a MotionVAEConfig ({exc})") from None

    def _pixel_vae(self):
        from diffusers import AutoencoderKLWan

        from moge4d_core.loading.motion_vae import load_wan_vae

        o = self.o
        if isinstance(o.model, nn.Module):
            return o.model
        sources = [s for s in ("model", "init_config") if getattr(o, s) is not None]
        if len(sources) != 1 or o.base_vae is not None:
            raise MoGe4DInputError(f"pixel mode: give exactly one of --model, --init-config (got "
                                   f"{sources + (['base_vae'] if o.base_vae else []) or 'none'})")
        if o.model is not None:
            return load_wan_vae(o.model)[0]
        d = _read_json(o.init_config, "AutoencoderKLWan keyword arguments")
        try:
            return AutoencoderKLWan(**d)
        except TypeError as exc:
            raise MoGe4DInputError(f"--init-config {o.init_config}: not AutoencoderKLWan arguments ({exc})") from None

    def datasets(self):
        if not hasattr(self, "_datasets"):
            kw = {"load_video": True} if self.o.mode == "pixel" else {}
            train = dataset_from_options(self.o, self.o.data, **kw)
            ev = dataset_from_options(self.o, self.o.eval_data, **kw) if self.o.eval_data else None
            self._datasets = (train, ev)
        return self._datasets

    def collate(self, samples: list):
        if self.o.mode == "motion":
            batch = {"delta": torch.stack([s.delta_hat for s in samples]).permute(0, 4, 1, 2, 3).contiguous()}
            if self.o.rec_loss == "l2_metric":
                batch["metric_scale"] = torch.stack([motion_scale(s.first_frame_points, s.spec) for s in samples]
                                                    ).permute(0, 3, 1, 2)[:, :, None].contiguous()
            return batch
        crop = parse_size(self.o.crop, "crop")
        vids = [fit_video(s.video, crop) for s in samples]
        if len({tuple(v.shape) for v in vids}) > 1:
            raise MoGe4DInputError(f"videos of different sizes in one batch ({[tuple(v.shape) for v in vids]}); use "
                                   f"--batch-size 1 or a --crop all videos reach")
        v = torch.stack(vids).permute(0, 4, 1, 2, 3).float() / 255.0 * 2 - 1           # (B,3,T,H,W) in [-1,1]
        return {"video": v.contiguous()}

    def param_groups(self) -> list[dict]:
        if self.o.mode == "pixel":
            return [{"params": list(self.vae.parameters()), "lr_scale": 1.0, "name": "wan_vae"}]
        groups = [{"params": list(self.vae.decoder_adapter.parameters()), "lr_scale": 1.0, "name": "decoder_adapter"}]
        if self.o.train_encoder_adapter:
            groups.append({"params": list(self.vae.encoder_adapter.parameters()), "lr_scale": 1.0,
                           "name": "encoder_adapter"})
        if self.o.train_encoder:
            groups.append({"params": [*self.vae.vae.encoder.parameters(), *self.vae.vae.quant_conv.parameters()],
                           "lr_scale": self.o.decoder_lr_scale, "name": "vae_encoder"})
        if self.o.train_decoder:
            groups.append({"params": list(self.vae.vae.decoder.parameters()), "lr_scale": self.o.decoder_lr_scale,
                           "name": "vae_decoder"})
        return groups

    def compat(self) -> dict:
        cfg = self.vae.config.to_dict() if self.o.mode == "motion" else dict(self.vae.config)
        cfg = json.loads(json.dumps(cfg, default=list))
        return {"task": "vae", "mode": self.o.mode, "config": cfg, "groups": [g["name"] for g in self.param_groups()],
                "traj_norm": self.o.traj_norm, "frames": self.o.frames, "crop": self.o.crop, "grid": self.o.grid}

    def loss(self, model, batch: dict, g: torch.Generator):
        from moge4d_core.models.motion_vae import MotionVAE as _MV

        x = (batch["delta"] if self.o.mode == "motion" else batch["video"]).to(self.device)
        b, _, t, h, w = x.shape
        noise = torch.randn(_MV.latent_shape(b, t, h, w), generator=g, device=self.device, dtype=torch.float32)
        recon, mean, logvar = model(x, noise)
        scale = batch.get("metric_scale")
        rec = _rec_loss(recon, x, self.o.rec_loss, None if scale is None else scale.to(self.device))
        kl = kl_divergence(mean, logvar)
        return rec + self.o.kl_scale * kl, {"rec": float(rec.detach()), "kl": float(kl.detach())}

    def export(self, model, folder: Path) -> dict[str, Path]:
        from safetensors.torch import save_file

        from moge4d_core.loading.motion_vae import (save_motion_vae, save_official_layout,
                                                    wan_vae_diffusers_to_original)

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.o.mode == "pixel":
            vae = model.vae
            state = wan_vae_diffusers_to_original(vae.state_dict(), dict(vae.config))
            path = folder / "wan_vae.safetensors"
            save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path),
                      metadata={"format": "pt"})
            return {"wan_vae": path}
        paths = {"motion_vae": save_motion_vae(model.vae, folder / "motion_vae.safetensors")}
        if self.o.export_official:
            paths["official_vae"] = save_official_layout(model.vae, folder / "VAE")
        return paths


def train(options: Any = None, callbacks=()) -> TrainResult:
    """Train a VAE. ``options``: :class:`VaeOptions`, a dict of its fields, a Namespace or an argv list."""
    o = coerce_options(VaeOptions, options, "python -m training.train_vae", DESCRIPTION)
    return run(VaeTask(o), callbacks)


def main(argv: Optional[list[str]] = None) -> int:
    ap = build_parser(VaeOptions, "python -m training.train_vae", DESCRIPTION)
    ns = ap.parse_args(argv)
    try:
        train(VaeOptions(**vars(ns)))
    except MoGe4DInputError as exc:
        ap.exit(2, f"error: {exc}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
