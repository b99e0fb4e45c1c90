"""Motion VAE trainer (reference ``moge4d_official.md`` A2, A3, G), as the released ``train_vae.py``:

* input ``delta_hat`` (B,3,T,H,W) from the TrajScene reader; encode = trajectory encoder adapter -> ``x2-1`` ->
  frozen Wan VAE encoder -> stage-1 normalised posterior mean (``--traj-norm`` adds stage 2; the release
  trains without it) + posterior noise with the *raw* log-variance (the release's ``.sample()`` quirk, the same
  arithmetic as :meth:`MotionVAE.encode(sample=True) <moge4d_core.models.motion_vae.MotionVAE.encode>`);
  decode = :meth:`MotionVAE.decode` (Wan decoder clamped to [-1,1] -> trajectory decoder adapter);
* loss (:mod:`training.vae_task`): ``L1(recon, delta)`` summed over all elements / batch size ``+ 1e-6 · KL``, with
  ``KL = ½ Σ(μ² + σ² − 1 − log σ²) / B`` of that posterior (normalised μ, raw log-variance, as the release);
* trained: the decoder adapter (lr) and the Wan VAE decoder (lr × ``--decoder-lr-scale`` = 0.1;
  ``--no-train-decoder`` freezes it); the Wan encoder, ``quant_conv`` and ``post_quant_conv`` stay frozen.
  The release runs the encoder under ``no_grad``, so its encoder adapter never learns (it stays exactly
  ``sigmoid``, H5). ``--train-encoder-adapter`` makes it really trainable: the gradient flows through the frozen
  Wan encoder into the adapter;
* init: ``--model`` (anything :func:`load_motion_vae` reads), ``--base-vae`` (a pixel Wan VAE; fresh adapters
  with the official init: encoder = sigmoid, decoder default init) or ``--init-config`` (a
  :class:`MotionVAEConfig` JSON ``{"vae": AutoencoderKLWan kwargs, "adapter": AdapterConfig fields}``);
* exports: ``export/motion_vae.safetensors`` (:func:`save_motion_vae`, read by :func:`load_motion_vae`) and the
  release folder layout ``export/VAE/`` (``encoder_prompt/``, ``decoder_prompt/``, ``vae/``, plus
  ``moge4d_config.json`` with every size the weights do not carry, GroupNorm groups included; read by
  :func:`load_motion_vae` and by the official scripts, which ignore the JSON).

The plain pixel Wan VAE has its own trainer, :mod:`training.train_pixel_vae`.

CLI: ``python -m training.train_vae --data DIR --out DIR (--model P | --base-vae P | --init-config J)``.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.models.motion_vae import MotionVAE, MotionVAEConfig

from .engine import DTYPES, TrainResult, run
from .options import cli_main, coerce_options, opt
from .vae_task import VaeBatch, VaeOptions, VaeTask, kl_divergence, read_json_config

__all__ = ["MotionVaeOptions", "MotionVAETrainModule", "MotionVaeTask", "train", "main", "kl_divergence"]

PROG = "python -m training.train_vae"
DESCRIPTION = "Train the MoGe4D motion VAE (trajectory adapters + Wan decoder)."


@dataclass
class MotionVaeOptions(VaeOptions):
    """Options of the motion VAE trainer (defaults: the release's ``train_vae.sh``, reference G)."""

    model: Optional[str] = opt(None, "motion VAE to start from (anything load_motion_vae reads)")
    base_vae: Optional[str] = opt(None, "a pixel Wan VAE; the adapters start fresh (official init)")
    init_config: Optional[str] = opt(None, "random init from a MotionVAEConfig JSON {'vae': {...}, 'adapter': {...}}")
    train_decoder: bool = opt(True, "also train the Wan VAE decoder (release --finetune_vae_decoder)")
    decoder_lr_scale: float = opt(0.1, "lr factor of the Wan VAE decoder (release 0.1)")
    train_encoder_adapter: bool = opt(False, "train the trajectory encoder adapter through the frozen Wan encoder "
                                             "(the release never does)")
    traj_norm: bool = opt(False, "sample the posterior in the two-stage normalised space (release: off)")
    export_official: bool = opt(True, "also export the release folder layout export/VAE/")


class MotionVAETrainModule(nn.Module):
    """The trained computation of the motion VAE, as one module (so DDP sees one forward).

    ``forward(delta (B,3,T,H,W), noise (B,16,F,h,w)) -> (recon (B,3,T,H,W), mean, logvar)``: the release's
    encode (``sample`` with the given unit noise) and decode; ``mean`` is the normalised posterior mean the KL
    uses, ``logvar`` the raw clamped log-variance. ``train_encoder``: run the encode with gradients (the encoder
    adapter trains); otherwise it runs under ``no_grad`` as in the release.
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


class MotionVaeTask(VaeTask):
    mode = "motion"

    def setup(self, device: torch.device) -> None:
        o = self.o
        self.device = device
        vae = self._motion_vae()
        vae.requires_grad_(False)
        vae.decoder_adapter.requires_grad_(True)
        if o.train_decoder:
            vae.vae.decoder.requires_grad_(True)
        if o.train_encoder_adapter:
            vae.encoder_adapter.requires_grad_(True)
        self.vae = vae.to(DTYPES[o.weight_dtype])
        self.model = MotionVAETrainModule(self.vae, traj_norm=o.traj_norm, train_encoder=o.train_encoder_adapter)
        self.model.train()
        self.vae.vae.encoder.eval()
        if not o.train_encoder_adapter:
            self.vae.encoder_adapter.eval()
        if o.gradient_checkpointing and hasattr(self.vae.vae, "enable_gradient_checkpointing"):
            self.vae.vae.enable_gradient_checkpointing()
        if not o.train_encoder_adapter:
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
            raise MoGe4DInputError(f"give exactly one of --model, --base-vae, --init-config (got {sources or 'none'})")
        if o.model is not None:
            return load_motion_vae(o.model, base_vae=o.base_vae)
        if o.base_vae is not None:
            return load_motion_vae(o.base_vae, fresh_adapters=True)
        d = read_json_config(o.init_config, "MotionVAEConfig {'vae': {...}, 'adapter': {...}}")
        try:
            return MotionVAE(MotionVAEConfig.from_dict(d))
        except TypeError as exc:
            raise MoGe4DInputError(f"--init-config {o.init_config}: not a MotionVAEConfig ({exc})") from None

    def collate(self, samples: list) -> VaeBatch:
        return VaeBatch(target=torch.stack([s.delta_hat for s in samples]).permute(0, 4, 1, 2, 3).contiguous())

    def param_groups(self) -> list[dict]:
        groups = [{"params": list(self.vae.decoder_adapter.parameters()), "lr_scale": 1.0, "name": "decoder_adapter"}]
        if self.o.train_encoder_adapter:
            groups.append({"params": list(self.vae.encoder_adapter.parameters()), "lr_scale": 1.0,
                           "name": "encoder_adapter"})
        if self.o.train_decoder:
            groups.append({"params": list(self.vae.vae.decoder.parameters()), "lr_scale": self.o.decoder_lr_scale,
                           "name": "vae_decoder"})
        return groups

    def vae_config(self) -> dict:
        return self.vae.config.to_dict()

    def export(self, model, folder: Path) -> dict[str, Path]:
        from moge4d_core.loading.motion_vae import save_motion_vae, save_official_layout

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = {"motion_vae": save_motion_vae(model.vae, folder / "motion_vae.safetensors")}
        if self.o.export_official:
            paths["official_vae"] = save_official_layout(model.vae, folder / "VAE")
        return paths


def train(options: Any = None, callbacks=()) -> TrainResult:
    """Train a motion VAE. ``options``: :class:`MotionVaeOptions`, a dict of its fields, a Namespace or an argv list."""
    return run(MotionVaeTask(coerce_options(MotionVaeOptions, options, PROG, DESCRIPTION)), callbacks)


def main(argv: Optional[list[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if "--mode" in args or any(a.startswith("--mode=") for a in args):
        print(f"{PROG}: error: --mode is gone: this command trains the motion VAE; the pixel Wan VAE has its own "
              f"trainer, python -m training.train_pixel_vae (same options without --mode)", file=sys.stderr)
        return 2
    return cli_main(MotionVaeOptions, train, PROG, DESCRIPTION, args)


if __name__ == "__main__":
    raise SystemExit(main())
