"""Train the nano MoGe4D model shipped in ``moge4d_core/nano_model/`` (all four parts, our trainers, CPU).

    python -m training.nano.data --out DATA/train --count 400 --seed 100
    python -m training.nano.train_nano --data DATA/train --work RUNS
        [--stage all|pixel_vae|motion_vae|strag|motion_decoder|strag_tune|vism] [--install]

Data: the nano world (:mod:`.data`: 96×64, 17 frames, each object's direction set by its colour, objects 3× larger
and travelling 8× further than the generator's defaults). Stages (each a trainer run, resumable with the trainer's
own checkpoints; arguments in :data:`STAGES`, tasks in :func:`stage_task`): ``pixel_vae`` (plain Wan VAE on the
RGB videos, for the ViSM; :mod:`training.train_pixel_vae`) → ``motion_vae`` (a Wan VAE set to an exact 8×8
block-mean codec, :mod:`.block_codec`, with fresh ``NANO`` adapters, :func:`write_motion_init`; only the decoder
adapter trains, on full 17-frame grids with the L2 of the de-normalised motion, :mod:`.motion_vae`; then its
latent space is whitened exactly, :mod:`.whiten`) → ``strag`` (flow matching from scratch, full model, latents
cached per sample, :mod:`.cached`) → ``motion_decoder`` (the motion VAE's decoder trained again against latent
noise like the STraG's errors, posterior σ 0.3 in the whitened space; encoder and latent space unchanged, so the
STraG stays valid) → ``strag_tune`` (the STraG fine-tuned with the trajectory-space loss, ``--trajectory-loss``,
:mod:`.trajectory_loss`: eq. 7 in metres of its one-step estimate decoded by that final decoder, next to the flow
loss) → ``vism`` (full training from scratch on same-view render/mask/video triplets, latents cached likewise).
``--install`` copies the exports to ``moge4d_core/nano_model/`` under the names of
:data:`moge4d_core.pipeline.nano.NANO_FILES` (``motion_vae.safetensors`` is the ``motion_decoder`` stage's,
``strag.safetensors`` the ``strag_tune`` stage's; the pixel VAE and the ViSM go to ``vae/`` and
``diffusion_models/``, where ComfyUI's loaders find them), and
writes the demo image there (:mod:`.demo_assets`). Model sizes: :data:`moge4d_core.models.nano.NANO_STRAG`,
``NANO`` (motion VAE), ``NANO_VISM`` (ViSM + pixel VAE, shaped so ComfyUI's own loaders build them; configs in
``training/configs/nano/``). The nano model has no text encoder (zero text context): the DiT trainers then start
its text embedding's input weights at zero, so the exported files show that text has no effect
(:func:`moge4d_core.models.wan_dit.reads_text`).
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from moge4d_core.pipeline.nano import NANO_FILES

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "nano"
INSTALL = Path(__file__).resolve().parents[2] / "moge4d_core" / "nano_model"
COMMON = ["--crop", "none", "--grid", "64x96", "--seed", "0", "--no-progress", "--log-every", "10",
          "--checkpoint-every", "100", "--warmup-steps", "20", "--grad-clip", "1.0"]

TRAJECTORY_WEIGHT = 4.0     # weight of the strag_tune stage's trajectory loss (metres) next to the flow MSE

STAGES = {
    "pixel_vae": ["--frames", "5", "--crop", "32x48", "--model", "{pixel_init}",
                  "--batch-size", "4", "--max-steps", "300", "--lr", "5e-3"],
    # the Wan VAE starts as an exact 8×8 block-mean codec (write_motion_init) and stays frozen: only the decoder
    # adapter trains (it undoes the encoder adapter's sigmoid and sharpens block edges), on full 17-frame grids
    # (5-frame crops do not carry over to 17 frames, centre crops never show the borders), with the loss in metres
    # (the trajectory error's units), no gradient clipping (summed losses have gradient norms near 1e5)
    "motion_vae": ["--frames", "17", "--model", "{motion_init}", "--no-train-decoder",
                   "--batch-size", "1", "--max-steps", "400", "--lr", "1e-3",
                   "--lr-scheduler", "cosine", "--grad-clip", "0"],
    "strag": ["--frames", "17", "--init-config", str(CONFIGS / "strag.json"), "--motion-vae", "{motion_white}",
              "--batch-size", "8", "--max-steps", "3000", "--lr", "5e-4",
              "--weight-decay", "0.0", "--control-drop", "0.0", "--text-drop", "0.0", "--reference",
              "--lr-scheduler", "cosine"],
    # after the STraG: the motion decoder (adapter + Wan decoder; encoder, quant_conv, latent space unchanged) learns
    # to decode latents with an error like the STraG's: posterior σ set to 0.3 in the STraG's (whitened) space,
    # sampled there (--traj-norm) as the release samples it (write_noisy_posterior)
    "motion_decoder": ["--frames", "17", "--model", "{motion_noisy}", "--traj-norm",
                       "--decoder-lr-scale", "1.0", "--batch-size", "1", "--max-steps", "300",
                       "--lr", "5e-4", "--lr-scheduler", "cosine", "--grad-clip", "0"],
    # after the decoder: the STraG fine-tuned on the trajectory error itself (eq. 7 in metres of its one-step
    # estimate decoded by the final motion decoder, .trajectory_loss) besides the flow loss
    "strag_tune": ["--frames", "17", "--model", "{strag}", "--motion-vae", "{motion_decoder}",
                   "--trajectory-loss", str(TRAJECTORY_WEIGHT), "--batch-size", "4", "--max-steps", "600",
                   "--lr", "2e-4", "--weight-decay", "0.0", "--control-drop", "0.0", "--text-drop", "0.0",
                   "--reference", "--lr-scheduler", "cosine"],
    "vism": ["--frames", "17", "--init-config", str(CONFIGS / "vism.json"), "--full", "--vae", "{pixel_vae}",
             "--batch-size", "8", "--max-steps", "600", "--lr", "5e-4", "--weight-decay", "0.0"],
}
EXPORTS = {"pixel_vae": "export/wan_vae.safetensors", "motion_vae": "export/motion_vae.safetensors",
           "motion_decoder": "export/motion_vae.safetensors",
           "strag": "export/4D-STraG/diffusion_pytorch_model.safetensors",
           "strag_tune": "export/4D-STraG/diffusion_pytorch_model.safetensors",
           "vism": "export/4D-ViSM-base/diffusion_pytorch_model.safetensors"}
WHITE = "motion_vae/export/motion_vae_white.safetensors"     # the motion VAE export, latent space whitened
INSTALLED = {"pixel_vae": NANO_FILES["vae"], "motion_decoder": NANO_FILES["motion_vae"],
             "strag_tune": NANO_FILES["strag"], "vism": NANO_FILES["vism"]}
WHITEN_SAMPLES = 64
NOISY = "motion_noisy.safetensors"     # the whitened motion VAE with posterior σ = DECODER_SIGMA
DECODER_SIGMA = 0.3


def write_pixel_init(work: Path) -> Path:
    """The pixel VAE's starting point: ``NANO_VISM`` Wan VAE (ComfyUI's Wan2.1 layout), seed 0, with the posterior log-variance head set to
    −10 (weights 0, bias −10, so σ ≈ 0.007): the default random head gives σ ≈ 1 on near-zero means, and with the
    release's tiny KL weight the decoder would first have to wait for the encoder to shrink that noise."""
    from safetensors.torch import save_file

    from moge4d_core.loading.motion_vae import wan_vae_diffusers_to_original
    from moge4d_core.models.nano import NANO_VISM, build_wan_vae

    import torch
    vae = build_wan_vae(NANO_VISM, seed=0)
    z = vae.config.z_dim
    with torch.no_grad():
        vae.quant_conv.weight[z:] = 0
        vae.quant_conv.bias[z:] = -10.0
    path = work / "pixel_init.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    state = wan_vae_diffusers_to_original(vae.state_dict(), dict(vae.config))
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def write_motion_init(work: Path) -> Path:
    """The motion VAE's starting point: a ``NANO`` Wan VAE set to an exact per-frame 8×8 block-mean codec
    (:mod:`.block_codec`; a small Wan VAE trained here from random or pixel-VAE weights passes one motion channel
    of three) with fresh ``NANO`` trajectory adapters (32 channels; the release's 128 are 4× slower at full
    resolution) built as the loader does (encoder adapter = exact ``sigmoid``, seeded decoder adapter)."""
    import torch

    from moge4d_core.loading.motion_vae import save_motion_vae
    from moge4d_core.models.motion_vae import MotionVAE
    from moge4d_core.models.nano import NANO, motion_vae_config, wan_vae_kwargs

    from .block_codec import block_codec_wan_vae

    torch.manual_seed(0)
    model = MotionVAE(motion_vae_config(NANO))
    model.vae.load_state_dict(block_codec_wan_vae(**wan_vae_kwargs(NANO)).state_dict())
    return save_motion_vae(model, work / "motion_init.safetensors")


def write_whitened(data: str, work: Path) -> Path:
    """The motion VAE export with its latent space whitened (:mod:`.whiten`) on the first
    :data:`WHITEN_SAMPLES` training samples (full 17-frame grids, the STraG's latent space)."""
    import torch

    from moge4d_core.loading.motion_vae import load_motion_vae, save_motion_vae
    from training.datasets import TrajSceneDataset

    from .whiten import latent_moments, whiten_motion_vae

    vae = load_motion_vae(work / "motion_vae" / EXPORTS["motion_vae"]).eval()
    ds = TrajSceneDataset(data, frames=17, crop=None, grid=(64, 96))
    motions = (ds[i].delta_hat.permute(3, 0, 1, 2)[None] for i in range(min(WHITEN_SAMPLES, len(ds))))
    mean, std = latent_moments(vae, motions)
    whiten_motion_vae(vae, mean, std)
    print(f"whitened the motion VAE latents (per-channel mean {mean.abs().max():.2f} max |.|, std "
          f"{std.min():.2f}..{std.max():.2f}) -> {work / WHITE}", flush=True)
    with torch.no_grad():
        return save_motion_vae(vae, work / WHITE)


def write_noisy_posterior(data: str, work: Path) -> Path:
    """The whitened motion VAE with its posterior σ set to :data:`DECODER_SIGMA` in the STraG's latent space
    (:func:`~.whiten.set_posterior_sigma`): the noise the ``motion_decoder`` stage trains the decoder against."""
    import torch

    from moge4d_core.loading.motion_vae import load_motion_vae, save_motion_vae
    from training.datasets import TrajSceneDataset

    from .whiten import set_posterior_sigma

    vae = load_motion_vae(work / WHITE).eval()
    ds = TrajSceneDataset(data, frames=17, crop=None, grid=(64, 96))
    set_posterior_sigma(vae, DECODER_SIGMA, ds[0].delta_hat.permute(3, 0, 1, 2)[None])
    with torch.no_grad():
        return save_motion_vae(vae, work / NOISY)


def stage_argv(stage: str, data: str, work: Path) -> list[str]:
    paths = {k: str(work / k / v) for k, v in EXPORTS.items()}
    paths["pixel_init"] = str(work / "pixel_init.safetensors")
    paths["motion_init"] = str(work / "motion_init.safetensors")
    paths["motion_white"] = str(work / WHITE)
    paths["motion_noisy"] = str(work / NOISY)
    args = [a.format(**paths) for a in STAGES[stage]]
    return ["--data", data, "--out", str(work / stage), *COMMON, *args]


def stage_task(stage: str, data: str, work: Path):
    """The trainer task of ``stage`` with its :data:`STAGES` arguments (built, not set up)."""
    from training.train_pixel_vae import PixelVaeOptions, PixelVaeTask
    from training.train_vae import MotionVaeOptions
    from training.train_vism import VismOptions
    from training.options import coerce_options

    from .cached import CachedStragTask, CachedVismTask
    from .motion_vae import MetricMotionVaeTask
    from .trajectory_loss import TrajectoryStragOptions

    task_cls, options_cls = {"pixel_vae": (PixelVaeTask, PixelVaeOptions),
                             "motion_vae": (MetricMotionVaeTask, MotionVaeOptions),
                             "motion_decoder": (MetricMotionVaeTask, MotionVaeOptions),
                             "strag": (CachedStragTask, TrajectoryStragOptions),
                             "strag_tune": (CachedStragTask, TrajectoryStragOptions),
                             "vism": (CachedVismTask, VismOptions)}[stage]
    return task_cls(coerce_options(options_cls, stage_argv(stage, data, work), f"train_nano {stage}"))


def run_stage(stage: str, data: str, work: Path) -> None:
    from training.engine import run

    if stage == "pixel_vae":
        write_pixel_init(work)
    if stage == "motion_vae":
        write_motion_init(work)
    if stage == "motion_decoder":
        write_noisy_posterior(data, work)
    print(f"== {stage}: {' '.join(stage_argv(stage, data, work))}", flush=True)
    run(stage_task(stage, data, work))
    if stage == "motion_vae":
        write_whitened(data, work)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.nano.train_nano", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--stage", default="all", choices=["all", "none", *STAGES], help="'none': only --install")
    ap.add_argument("--install", action="store_true")
    a = ap.parse_args(argv)
    work = Path(a.work)
    from moge4d_core.errors import MoGe4DInputError
    try:
        for stage in (STAGES if a.stage == "all" else [] if a.stage == "none" else [a.stage]):
            run_stage(stage, a.data, work)
        if a.install:
            for path in install(work):
                print(f"installed {path}")
    except MoGe4DInputError as exc:
        ap.exit(2, f"error: {exc}\n")
    return 0


def install(work: Path, target: Path = INSTALL) -> list[Path]:
    """Copy the four installed exports of ``work`` to ``target`` under :data:`INSTALLED` names and write the demo files
    (:mod:`.demo_assets`). All or nothing: a missing export is reported before anything is written, and the
    files are moved in only once all of them were written."""
    from moge4d_core.errors import MoGe4DInputError
    from moge4d_core.io._atomic import atomic_dir

    from .demo_assets import write_demo_assets

    sources = {name: work / stage / EXPORTS[stage] for stage, name in INSTALLED.items()}
    missing = [str(p) for p in sources.values() if not p.is_file()]
    if missing:
        raise MoGe4DInputError(f"install: missing exports {missing}; train those stages first "
                               f"(python -m training.nano.train_nano --data DATA --work {work} --stage STAGE)")
    with atomic_dir(target) as tmp:
        for name, src in sources.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, tmp / name)
        names = [p.name for p in write_demo_assets(tmp)]
    return [target / n for n in [*sources, *names]]


if __name__ == "__main__":
    sys.exit(main())
