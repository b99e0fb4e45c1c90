"""4D-STraG trainer: flow matching on motion latents (reference ``moge4d_official.md`` A2-A7, G).

Per sample (TrajScene reader, :class:`training.datasets.TrajSceneSample`):

* target ``x0 = motion_vae.encode(delta_hat as (B,3,T,H,W), traj_norm=True, sample=True)``. The released
  ``train_wan.py`` encodes with stage-1 normalisation only (``traj_norm=False``), but the release's inference
  decodes STraG latents with both stages (H6), so a model trained on stage-1 latents would be decoded wrongly by
  the official pipeline and by ours. We train in the latent space inference uses (``--no-traj-norm`` gives the
  training script's behaviour). ``sample=True`` keeps the release's posterior-sampling quirk (raw-scale noise
  around the normalised mean, A3);
* conditions from :func:`moge4d_core.pipeline.encode_strag_conditions` with the pixel VAE (``--image-vae``, else
  the motion VAE's own encoder, which the release never changes: :meth:`WanImageVAE.from_motion_vae`):
  control latent of the frame-0 colours repeated over T, min-max depth latent of the frame-0 z,
  zero ref latent as the release trains (the ref tokens are then ``ref_conv.bias``, and ``ref_conv``'s weights
  never learn: right for a base whose ``ref_conv`` was trained, wrong from scratch, where inference would feed the
  image through untrained weights), or with ``--reference`` the image's ref latent, as inference feeds it.
  The condition latents are posterior means (the release samples them; the difference is the VAE's tiny
  posterior std). The control latent is zeroed with p = 0.02 per sample;
* CLIP context: CLIP (``--clip``) of the uniform gray-127 image (:func:`moge4d_core.pipeline.gray_image`, what
  the release feeds), dropped to zeros with p = 0.02; without ``--clip`` it is zeros;
* text: umT5 (``--text-encoder``) of the caption, replaced by ``""`` with p = 0.1; without a text encoder the
  text context is all zeros (no text conditioning is learned);
* MPM: OmniMAE features of the frame-0 colours when the DiT has a Motion Perception Module and an OmniMAE is
  available (``--omnimae``, else the ``omnimae_extractor.*`` weights inside ``--model``); without features the
  MPM weights get no gradient and are frozen;
* flow matching (:mod:`training.flow`): the 1000 shift-5 training sigmas, ``idx ~ U{0..999}``,
  ``x_t = (1−σ)x0 + σε``, ``timestep = 1000σ``, target ``ε − x0``, MSE with ``|pred − target| > 50`` masked.

Training modes: full fine-tune (every DiT parameter, MPM included; the release) or LoRA (``--lora-rank``,
``--lora-alpha``) through PEFT on every nn.Linear. Model: ``--model`` (any STraG checkpoint :func:`load_strag`
reads; ``--base`` fills missing keys from Wan2.1-Fun-V1.1-Control), ``--control-base`` (start from the Fun-Control
model alone: patch embedding widened 48 -> 64 with zero channels, the release's init), or ``--init-config``
(random init from a DiT config, e.g. a nano model trained from scratch).

CLI: ``python -m training.train_strag --data DIR --out DIR --motion-vae VAE (--model F | --init-config C) ...``;
Python: :func:`train`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.models.wan_dit import ARCH_CONTROL_V11, ARCH_STRAG, STraGDiT, dit_config, drop_text_input_

from .contexts import ClipContexts, MotionFeatureExtractor, TextContexts
from .datasets import TrajSceneBatch
from .dit_task import DIT_OPTION_HELP, DiTTask, cast_dit, load_init_config
from .engine import TrainResult, dataset_from_options, run
from .options import CommonOptions, cli_main, coerce_options, opt

__all__ = ["StragOptions", "StragTask", "train", "main", "control_base_model", "MPM_PREFIXES"]

MPM_PREFIXES = ("feature_adapter.", "spatial_guidance_self.", "spatial_guidance_ffn.")
DESCRIPTION = "Train 4D-STraG (flow matching on motion-VAE latents), full fine-tune or LoRA."


@dataclass
class StragOptions(CommonOptions):
    """Options of the STraG trainer (defaults: the release's ``train_wan.sh``, reference G)."""

    model: Optional[str] = opt(None, "4D-STraG checkpoint to start from (anything load_strag reads)")
    base: Optional[str] = opt(None, "Wan2.1-Fun-V1.1-Control weights filling keys missing from --model")
    control_base: Optional[str] = opt(None, "start from Wan2.1-Fun-V1.1-Control alone (patch embedding widened "
                                            "48->64, new channels zero: the release's init)")
    init_config: Optional[str] = opt(None, DIT_OPTION_HELP["init_config"])
    no_mpm: bool = opt(False, "drop the Motion Perception Module of --model")
    add_mpm: Optional[int] = opt(None, "add a fresh MPM of this feature width (768 = OmniMAE ViT-B) if the DiT has none")
    mpm_alignment: Optional[str] = opt(None, "official | corrected MPM token alignment (default: the model's)",
                                       choices=["official", "corrected"])
    motion_vae: Optional[str] = opt(None, "motion VAE (release VAE/ folder or our motion_vae.safetensors); required")
    base_vae: Optional[str] = opt(None, "Wan2.1_VAE.pth for a release VAE/ folder without vae/")
    image_vae: Optional[str] = opt(None, "pixel Wan2.1 VAE for the condition latents (default: the motion VAE's encoder)")
    traj_norm: bool = opt(True, "encode targets with the second-stage trajectory normalisation (inference's latent space)")
    text_encoder: Optional[str] = opt(None, "umT5 weights (without: zero text context)")
    tokenizer: Optional[str] = opt(None, "umT5 tokenizer folder (default: the one embedded in ComfyUI's file)")
    clip: Optional[str] = opt(None, "CLIP vision weights for the gray-image context (without: zeros)")
    omnimae: Optional[str] = opt(None, "OmniMAE weights for the MPM features (default: omnimae_extractor.* in --model)")
    lora_rank: int = opt(0, "LoRA rank (0: full fine-tune)")
    lora_alpha: Optional[float] = opt(None, "LoRA alpha (default: the rank)")
    reference: bool = opt(False, "feed the image's reference latent to ref_conv, as inference does (release: zeros, "
                                 "which never trains ref_conv's weights; use it when training from scratch)")
    control_drop: float = opt(0.02, "probability of zeroing the control latent")
    clip_drop: float = opt(0.02, "probability of zeroing the CLIP context")
    text_drop: float = opt(0.1, "probability of replacing the caption by the empty prompt")
    shift: float = opt(5.0, "shift of the training sigma grid")
    loss_threshold: float = opt(50.0, "elements with |pred - target| above this are left out of the MSE")
    export_merged: bool = opt(False, "LoRA runs: also export the full DiT with the LoRA merged")
    kohya_dtype: str = opt("bf16", "dtype of the exported kohya LoRA (release: bf16)", choices=["bf16", "fp16", "fp32"])

    lr: float = opt(2e-5, "learning rate")
    grad_clip: Optional[float] = opt(0.05, "max gradient norm (0 or None: no clipping)")
    checkpoint_every: int = opt(50, "write <out>/checkpoint-<step>/ every N optimizer steps (0: only at the end)")
    keep_checkpoints: int = opt(5, "keep the last K checkpoints")


def control_base_model(path: str, dtype: torch.dtype) -> STraGDiT:
    """A STraG DiT from a Wan2.1-Fun-V1.1-Control checkpoint: same weights, ``patch_embedding`` widened from 48
    to 64 input channels with zeros in channels 48..63 (release ``train_wan.py`` init, reference A1)."""
    from moge4d_core.loading.wan_dit import load_wan_dit

    base = load_wan_dit(path, dtype=dtype, compute_dtype=dtype, expect=(ARCH_CONTROL_V11,))
    state = base.state_dict()
    pe = state["patch_embedding.weight"]
    wide = pe.new_zeros(pe.shape[0], 64, *pe.shape[2:])
    wide[:, :pe.shape[1]] = pe
    state["patch_embedding.weight"] = wide
    cfg = dit_config(base.config, arch=ARCH_STRAG, in_channels=64, mpm_feature_dim=None)
    with torch.device("meta"):
        model = STraGDiT(**cfg)
    model.load_state_dict(state, strict=True, assign=True)
    model.reset_rope("cpu")
    return model


class StragTask(DiTTask):
    name = "strag"
    adapter_name = "strag"
    full_subdir = "4D-STraG"
    lora_subdir = "4D-STraG-lora"

    def setup(self, device: torch.device) -> None:
        from moge4d_core.loading.motion_vae import load_motion_vae, load_wan_vae
        from moge4d_core.loading.wan_dit import load_strag
        from moge4d_core.pipeline import WanImageVAE, gray_image

        o = self.o
        self.device = device
        dt = self.weight_dtype
        if o.motion_vae is None:
            raise MoGe4DInputError("--motion-vae is required: the motion VAE that encodes the training targets "
                                   "(release VAE/ folder or a motion_vae.safetensors written by training.train_vae)")
        mvae = o.motion_vae if isinstance(o.motion_vae, torch.nn.Module) else \
            load_motion_vae(o.motion_vae, base_vae=o.base_vae)
        self.motion_vae = mvae.to(device).eval().requires_grad_(False)
        if o.image_vae is not None:
            ivae = o.image_vae if isinstance(o.image_vae, torch.nn.Module) else load_wan_vae(o.image_vae)
            self.image_vae = WanImageVAE(ivae.to(device).eval().requires_grad_(False))
        else:
            self.image_vae = WanImageVAE.from_motion_vae(self.motion_vae)

        sources = [s for s in ("model", "control_base", "init_config") if getattr(o, s) is not None]
        if len(sources) != 1:
            raise MoGe4DInputError(f"give exactly one of --model, --control-base, --init-config (got {sources or 'none'})")
        omni_state: dict = {}
        if o.model is not None:
            model = load_strag(o.model, dtype=dt, compute_dtype=dt, base=o.base, mpm=not o.no_mpm,
                               mpm_alignment=o.mpm_alignment)
            omni_state = model.load_info.extras.pop("omnimae_state_dict", None) or {}
        elif o.control_base is not None:
            model = control_base_model(o.control_base, dt)
        else:
            model = cast_dit(STraGDiT(**load_init_config(o.init_config, ARCH_STRAG)), dt)
        if o.add_mpm and model.feature_adapter is None:
            model.add_mpm(int(o.add_mpm))
        if o.mpm_alignment:
            model.set_mpm_alignment(o.mpm_alignment)
        cfg = model.config

        self.text = TextContexts(o.text_encoder, o.tokenizer, cfg.text_dim, device)
        if not self.text.enabled and o.init_config is not None:
            drop_text_input_(model)          # from scratch without text: the export shows text has no effect
        clip = ClipContexts(o.clip, cfg.image_dim, device)
        self.clip_tokens = None
        if clip.enabled:
            h, w = self._image_size()
            self.clip_tokens = clip(gray_image(h, w)[None])              # constant: computed once
            clip.model = None
        self.features = None
        frozen: tuple[str, ...] = ()
        if model.feature_adapter is not None:
            src = o.omnimae if o.omnimae is not None else (omni_state or None)
            if src is not None:
                self.features = MotionFeatureExtractor(src, cfg.mpm_feature_dim, device)
                if o.omnimae is not None and not isinstance(o.omnimae, torch.nn.Module):
                    self.extra_tensors = self._raw_omnimae(o.omnimae)
                elif omni_state:
                    self.extra_tensors = {"omnimae_extractor." + k: v for k, v in omni_state.items()}
            else:
                frozen = MPM_PREFIXES
                self.notes.append("the DiT has a Motion Perception Module but no OmniMAE was given (--omnimae) "
                                  "and --model holds no omnimae_extractor weights: MPM off and frozen")
        self.setup_training(model, o.lora_rank, o.lora_alpha, frozen)
        if not self.text.enabled:
            self.notes.append("no --text-encoder: the text context is all zeros")

    def _image_size(self) -> tuple[int, int]:
        s = self.datasets()[0][0]
        return tuple(s.colors.shape[:2])

    @staticmethod
    def _raw_omnimae(path: str) -> dict:
        """The OmniMAE file's own tensors, stored in the STraG export as ``omnimae_extractor.*`` (release layout)."""
        from moge4d_core.loading.omnimae import read_omnimae_state

        _, raw = read_omnimae_state(path)
        return {("" if k.startswith("omnimae_extractor.") else "omnimae_extractor.") + k: v for k, v in raw.items()}

    def datasets(self):
        if not hasattr(self, "_datasets"):
            train = dataset_from_options(self.o, self.o.data)
            ev = dataset_from_options(self.o, self.o.eval_data) if self.o.eval_data else None
            self._datasets = (train, ev)
        return self._datasets

    def compat(self) -> dict:
        c = {"task": "strag", "traj_norm": self.o.traj_norm, "mpm_features": self.features is not None,
             "reference": self.o.reference}
        c.update(self.training_compat())
        return c

    def loss(self, model, batch: TrajSceneBatch, g: torch.Generator):
        from moge4d_core.pipeline import encode_strag_conditions

        o, dev = self.o, self.device
        delta = batch.delta_hat.permute(0, 4, 1, 2, 3).to(dev)              # (B,3,T,H,W)
        b, t = delta.shape[0], delta.shape[2]
        with torch.no_grad():
            x0 = self.motion_vae.encode(delta, traj_norm=o.traj_norm, sample=True, generator=g)
            conds = [encode_strag_conditions(self.image_vae, batch.colors[i], batch.first_frame_points[i][..., 2],
                                             t, reference=o.reference) for i in range(b)]
            control = torch.cat([c.control for c in conds]).to(dev)
            depth = torch.cat([c.depth for c in conds]).to(dev)
            ref = torch.cat([c.ref_latent for c in conds]).to(dev) if o.reference else None
        return self.loss_from_latents(model, batch, g, x0, control, depth, ref)

    def loss_from_latents(self, model, batch: TrajSceneBatch, g: torch.Generator, x0: torch.Tensor,
                          control: torch.Tensor, depth: torch.Tensor, ref: Optional[torch.Tensor] = None):
        """The flow loss once the target and condition latents exist (:meth:`dit_inputs`, then the flow draws)."""
        return self.flow_loss(model, x0, g, **self.dit_inputs(batch, g, control, depth, ref))

    def dit_inputs(self, batch: TrajSceneBatch, g: torch.Generator, control: torch.Tensor, depth: torch.Tensor,
                   ref: Optional[torch.Tensor] = None) -> dict:
        """The DiT's condition inputs of one batch: condition drops (one ``(B,3)`` uniform draw from ``g``), CLIP,
        text and MPM features.

        Args:
            batch: the batch (captions, frame-0 colours).
            g: the step's generator.
            control: (B,16,F,h,w) control latents; zeroed per sample with p = ``--control-drop``.
            depth: (B,16,F,h,w) depth latents.
            ref: (B,16,h,w) reference latents (``--reference``), None for the release's zero reference.

        Returns:
            keyword arguments of the DiT's forward (``encoder_hidden_states``, ``encoder_hidden_states_image``,
            ``control``, ``depth``, ``ref_latent``, ``motion_features``).
        """
        o, dev, b = self.o, self.device, control.shape[0]
        with torch.no_grad():
            u = torch.rand(b, 3, generator=g, device=dev)                      # control, CLIP, text drops
            control = control * (u[:, 0] >= o.control_drop).float().view(b, 1, 1, 1, 1)
            clip = None
            if self.clip_tokens is not None:
                clip = self.clip_tokens.expand(b, -1, -1) * (u[:, 1] >= o.clip_drop).float().view(b, 1, 1)
            text = self.text(batch.caption, u[:, 2] < o.text_drop)
            feats = self.features(batch.colors) if self.features is not None else None
        return dict(encoder_hidden_states=text, encoder_hidden_states_image=clip, control=control, depth=depth,
                    ref_latent=ref, motion_features=feats)


def train(options: Any = None, callbacks=()) -> TrainResult:
    """Train 4D-STraG. ``options``: :class:`StragOptions`, a dict of its fields, a Namespace or an argv list."""
    o = coerce_options(StragOptions, options, "python -m training.train_strag", DESCRIPTION)
    return run(StragTask(o), callbacks)


def main(argv: Optional[list[str]] = None) -> int:
    return cli_main(StragOptions, train, "python -m training.train_strag", DESCRIPTION, argv)


if __name__ == "__main__":
    raise SystemExit(main())
