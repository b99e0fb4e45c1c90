"""Pixel Wan VAE trainer: a plain Wan2.1 VAE (diffusers ``AutoencoderKLWan``, encoder and decoder) on the dataset's
RGB videos in [-1,1] (``<id>.mp4``, centre-cropped to ``--crop`` / multiples of 8).

Loss (:mod:`training.vae_task`): ``L1 sum / B + kl_scale · KL`` of the raw posterior, sampled as diffusers'
``DiagonalGaussianDistribution.sample`` (``mean + std · noise``). Init ``--model`` (:func:`load_wan_vae`) or
``--init-config`` (AutoencoderKLWan keyword arguments). Export ``export/wan_vae.safetensors`` in the original Wan
key layout (read by :func:`load_wan_vae`, ComfyUI's VAE loader, and usable as ``--base-vae`` of a motion VAE run,
:mod:`training.train_vae`): the nano pipeline's pixel VAE.

CLI: ``python -m training.train_pixel_vae --data DIR --out DIR (--model P | --init-config J)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from moge4d_core.errors import MoGe4DInputError

from .datasets import fit_video
from .engine import DTYPES, TrainResult, run
from .options import cli_main, coerce_options, opt, parse_size
from .vae_task import VaeBatch, VaeOptions, VaeTask, read_json_config

__all__ = ["PixelVaeOptions", "PixelVAETrainModule", "PixelVaeTask", "train", "main"]

PROG = "python -m training.train_pixel_vae"
DESCRIPTION = "Train a plain pixel Wan2.1 VAE on the dataset's RGB videos."


@dataclass
class PixelVaeOptions(VaeOptions):
    """Options of the pixel VAE trainer."""

    model: Optional[str] = opt(None, "Wan VAE to start from (anything load_wan_vae reads)")
    init_config: Optional[str] = opt(None, "random init from a JSON object of AutoencoderKLWan keyword arguments")


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


class PixelVaeTask(VaeTask):
    mode = "pixel"
    dataset_kwargs = {"load_video": True}

    def setup(self, device: torch.device) -> None:
        o = self.o
        self.device = device
        self.vae = self._pixel_vae().to(DTYPES[o.weight_dtype])
        self.vae.requires_grad_(True)
        self.model = PixelVAETrainModule(self.vae).train()
        if o.gradient_checkpointing and hasattr(self.vae, "enable_gradient_checkpointing"):
            self.vae.enable_gradient_checkpointing()

    def _pixel_vae(self):
        from diffusers import AutoencoderKLWan

        from moge4d_core.loading.motion_vae import load_wan_vae

        o = self.o
        if isinstance(o.model, nn.Module):
            return o.model
        sources = [s for s in ("model", "init_config") if getattr(o, s) is not None]
        if len(sources) != 1:
            raise MoGe4DInputError(f"give exactly one of --model, --init-config (got {sources or 'none'})")
        if o.model is not None:
            return load_wan_vae(o.model)
        d = read_json_config(o.init_config, "AutoencoderKLWan keyword arguments")
        try:
            return AutoencoderKLWan(**d)
        except TypeError as exc:
            raise MoGe4DInputError(f"--init-config {o.init_config}: not AutoencoderKLWan arguments ({exc})") from None

    def collate(self, samples: list) -> VaeBatch:
        crop = parse_size(self.o.crop, "crop")
        vids = [fit_video(s.video, crop) for s in samples]
        if len({tuple(v.shape) for v in vids}) > 1:
            raise MoGe4DInputError(f"videos of different sizes in one batch ({[tuple(v.shape) for v in vids]}); use "
                                   f"--batch-size 1 or a --crop all videos reach")
        v = torch.stack(vids).permute(0, 4, 1, 2, 3).float() / 255.0 * 2 - 1           # (B,3,T,H,W) in [-1,1]
        return VaeBatch(target=v.contiguous())

    def param_groups(self) -> list[dict]:
        return [{"params": list(self.vae.parameters()), "lr_scale": 1.0, "name": "wan_vae"}]

    def vae_config(self) -> dict:
        return dict(self.vae.config)

    def export(self, model, folder: Path) -> dict[str, Path]:
        from safetensors.torch import save_file

        from moge4d_core.loading.motion_vae import wan_vae_diffusers_to_original

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = wan_vae_diffusers_to_original(model.vae.state_dict(), dict(model.vae.config))
        path = folder / "wan_vae.safetensors"
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path), metadata={"format": "pt"})
        return {"wan_vae": path}


def train(options: Any = None, callbacks=()) -> TrainResult:
    """Train a pixel Wan VAE. ``options``: :class:`PixelVaeOptions`, a dict of its fields, a Namespace or an argv
    list."""
    return run(PixelVaeTask(coerce_options(PixelVaeOptions, options, PROG, DESCRIPTION)), callbacks)


def main(argv: Optional[list[str]] = None) -> int:
    return cli_main(PixelVaeOptions, train, PROG, DESCRIPTION, argv)


if __name__ == "__main__":
    raise SystemExit(main())
