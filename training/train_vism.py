"""4D-ViSM trainer: LoRA (or full) fine-tune of the Wan2.1-Fun-InP DiT for render inpainting (reference
``moge4d_official.md`` C, G).

Per sample (TrajScene reader with ``load_video=True, load_render=True``):

* input: the pre-rendered ``<id>_dt3d_render.mp4`` and its hole mask ``<id>_mask_render.mp4`` (1 = hole); target:
  the source video ``<id>.mp4`` (resized to the render's size when they differ; all three centre-cropped to
  ``--crop`` when it fits and down to multiples of 16);
* conditions: :func:`moge4d_core.pipeline.encode_vism_conditions` with the pixel Wan VAE ``--vae`` (packed "known"
  mask latent + VAE of the render with holes = 0). When every pixel is a hole, the condition latents are zero with
  p = 0.9 (``--inpaint-drop``) and otherwise encoded as usual (the release's rule; the mask latent is then 0 and the
  masked-video latent is the VAE of a mid-gray video);
* target ``x0 = VAE(target video)`` (posterior mean; the release samples the posterior, whose std is tiny);
* CLIP: zeros (what the release's inference feeds), or with ``--clip`` the CLIP tokens of the real target's first
  frame (the release's training), dropped to zeros with p = 0.1; text: umT5 (``--text-encoder``) of the caption,
  ``""`` with p = 0.1, zeros without a text encoder;
* the flow-matching objective of :mod:`training.flow` (shift-5 σ grid, ``ε − x0`` target, |err| > 50 masked).

Training: LoRA through PEFT on every nn.Linear of the DiT (the release's 488 modules at 14B; rank 128, alpha 64
by default) or ``--full``. Exports: ``export/4D-ViSM/lora_diffusion_pytorch_model.safetensors`` in the release's
kohya ``lora_unet__`` layout (bf16; :func:`moge4d_core.loading.lora.merge_lora` / ``apply_lora_peft`` read it),
the PEFT adapter folder ``export/4D-ViSM/peft/``, and with ``--full`` / ``--export-merged``
``export/4D-ViSM-base/diffusion_pytorch_model.safetensors`` (:func:`load_vism_base`).

CLI: ``python -m training.train_vism --data DIR --out DIR --vae WAN_VAE (--model BASE | --init-config C)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.models.wan_dit import ARCH_INP, ViSMDiT, drop_text_input_

from .contexts import ClipContexts, TextContexts
from .datasets import fit_video
from .dit_task import DIT_OPTION_HELP, DiTTask, cast_dit, load_init_config
from .engine import TrainResult, dataset_from_options, run
from .options import CommonOptions, cli_main, coerce_options, opt, parse_size

__all__ = ["VismOptions", "VismBatch", "VismTask", "vism_conditions", "train", "main"]

DESCRIPTION = "Train 4D-ViSM (Wan2.1-Fun-InP inpainting DiT): LoRA (release) or full fine-tune."


@dataclass
class VismOptions(CommonOptions):
    """Options of the ViSM trainer (defaults: the release's ``4D_ViSM_training/train.sh``, reference G)."""

    model: Optional[str] = opt(None, "Wan2.1-Fun-V1.1-14B-InP base (anything load_vism_base reads)")
    init_config: Optional[str] = opt(None, DIT_OPTION_HELP["init_config"])
    vae: Optional[str] = opt(None, "pixel Wan2.1 VAE (Wan2.1_VAE.pth, wan_2.1_vae.safetensors, our wan_vae.safetensors); required")
    text_encoder: Optional[str] = opt(None, "umT5 weights (without: zero text context)")
    tokenizer: Optional[str] = opt(None, "umT5 tokenizer folder (default: the one embedded in ComfyUI's file)")
    clip: Optional[str] = opt(None, "CLIP vision weights: context of the target's first frame (without: zeros)")
    lora_rank: int = opt(128, "LoRA rank (release 128)")
    lora_alpha: Optional[float] = opt(64.0, "LoRA alpha (release 64)")
    full: bool = opt(False, "full fine-tune instead of LoRA")
    inpaint_drop: float = opt(0.9, "probability of zero condition latents when every pixel is a hole")
    clip_drop: float = opt(0.1, "probability of zeroing the CLIP context")
    text_drop: float = opt(0.1, "probability of replacing the caption by the empty prompt")
    video_stride: int = opt(1, "keep every n-th source video frame")
    shift: float = opt(5.0, "shift of the training sigma grid")
    loss_threshold: float = opt(50.0, "elements with |pred - target| above this are left out of the MSE")
    export_merged: bool = opt(False, "LoRA runs: also export the base DiT with the LoRA merged")
    kohya_dtype: str = opt("bf16", "dtype of the exported kohya LoRA (release: bf16)", choices=["bf16", "fp16", "fp32"])

    lr: float = opt(1e-4, "learning rate")
    lr_scheduler: str = opt("constant", "diffusers lr schedule name (release: constant)",
                            choices=["constant", "constant_with_warmup", "linear", "cosine"])
    grad_clip: Optional[float] = opt(0.05, "max gradient norm (0 or None: no clipping)")
    checkpoint_every: int = opt(100, "write <out>/checkpoint-<step>/ every N optimizer steps (0: only at the end)")
    keep_checkpoints: int = opt(5, "keep the last K checkpoints")


@dataclass
class VismBatch:
    """One ViSM training batch (render, holes and target video cropped alike).

    Attributes:
        render: (B, T, H, W, 3) float32 pre-rendered frames in [0, 1].
        holes: (B, T, H, W) float32 hole mask (1 = hole).
        first_frame: (B, H, W, 3) float32 the target's first frame in [0, 1] (CLIP context).
        video: (B, 3, T, H, W) float32 target video in [-1, 1].
        caption: B captions.
        ids: B sample ids.
    """

    render: torch.Tensor
    holes: torch.Tensor
    first_frame: torch.Tensor
    video: torch.Tensor
    caption: list
    ids: list


def vism_conditions(vae, render: torch.Tensor, holes: torch.Tensor, u: float, inpaint_drop: float):
    """ViSM condition latents of one sample with the release's training rule for all-hole masks.

    render (T,H,W,3) [0,1], holes (T,H,W) (1 = hole); ``u`` a uniform draw. Returns ``(mask (1,4,F,h,w),
    masked_video (1,16,F,h,w))``: :func:`encode_vism_conditions` normally; for an all-hole mask zeros when
    ``u < inpaint_drop``, else the regular packing and VAE encoding (mask latent 0, VAE of mid-gray).
    """
    from moge4d_core.models.vism_mask import all_holes, pack_inpaint_inputs
    from moge4d_core.pipeline import encode_vism_conditions

    if all_holes(holes) and u >= inpaint_drop:
        masked, mask = pack_inpaint_inputs(render, holes)
        return mask, vae.encode(masked)
    c = encode_vism_conditions(vae, render, holes)          # zeros for an all-hole mask
    return c.mask, c.masked_video


def _resize_frames(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(T,H,W,3) float -> (T,h,w,3), bilinear with antialiasing."""
    if tuple(x.shape[1:3]) == tuple(size):
        return x
    y = F.interpolate(x.permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=False, antialias=True)
    return y.permute(0, 2, 3, 1)


class VismTask(DiTTask):
    name = "vism"
    adapter_name = "vism"
    full_subdir = "4D-ViSM-base"
    lora_subdir = "4D-ViSM"

    def setup(self, device: torch.device) -> None:
        from moge4d_core.loading.motion_vae import load_wan_vae
        from moge4d_core.loading.wan_dit import load_vism_base
        from moge4d_core.pipeline import WanImageVAE

        o = self.o
        self.device = device
        dt = self.weight_dtype
        if o.vae is None:
            raise MoGe4DInputError("--vae is required: the pixel Wan2.1 VAE (Wan2.1_VAE.pth / wan_2.1_vae.safetensors "
                                   "or a wan_vae.safetensors written by training.train_pixel_vae)")
        vae = o.vae if isinstance(o.vae, torch.nn.Module) else load_wan_vae(o.vae)
        self.vae = WanImageVAE(vae.to(device).eval().requires_grad_(False))
        sources = [s for s in ("model", "init_config") if getattr(o, s) is not None]
        if len(sources) != 1:
            raise MoGe4DInputError(f"give exactly one of --model, --init-config (got {sources or 'none'})")
        if o.model is not None:
            model = load_vism_base(o.model, dtype=dt, compute_dtype=dt)
        else:
            model = cast_dit(ViSMDiT(**load_init_config(o.init_config, ARCH_INP)), dt)
        cfg = model.config
        self.text = TextContexts(o.text_encoder, o.tokenizer, cfg.text_dim, device)
        if not self.text.enabled and o.init_config is not None:
            drop_text_input_(model)          # from scratch without text: the export shows text has no effect
        self.clip = ClipContexts(o.clip, cfg.image_dim, device)
        self.setup_training(model, 0 if o.full else o.lora_rank, o.lora_alpha)
        if not self.text.enabled:
            self.notes.append("no --text-encoder: the text context is all zeros")

    def datasets(self):
        if not hasattr(self, "_datasets"):
            kw = dict(load_video=True, load_render=True, video_stride=self.o.video_stride)
            train = dataset_from_options(self.o, self.o.data, **kw)
            ev = dataset_from_options(self.o, self.o.eval_data, **kw) if self.o.eval_data else None
            self._datasets = (train, ev)
        return self._datasets

    def collate(self, samples: list) -> VismBatch:
        crop = parse_size(self.o.crop, "crop")
        renders, holes, videos = [], [], []
        for s in samples:
            r = s.render.float() / 255.0
            size = tuple(r.shape[1:3])
            v = _resize_frames(s.video.float() / 255.0, size).clamp(0, 1)
            stacked = fit_video(torch.cat([r, v, s.mask.float()[..., None]], dim=-1), crop, multiple=16)
            renders.append(stacked[..., :3])
            videos.append(stacked[..., 3:6])
            holes.append(stacked[..., 6])
        if len({tuple(r.shape) for r in renders}) > 1:
            raise MoGe4DInputError(f"renders of different sizes in one batch ({[tuple(r.shape) for r in renders]}); "
                                   f"use --batch-size 1 or a --crop every render reaches")
        video = torch.stack(videos)                                                     # (B,T,H,W,3) [0,1]
        return VismBatch(render=torch.stack(renders), holes=torch.stack(holes), first_frame=video[:, 0].contiguous(),
                         video=(video.permute(0, 4, 1, 2, 3) * 2 - 1).contiguous(), caption=[s.caption for s in samples],
                         ids=[s.id for s in samples])

    def compat(self) -> dict:
        c = {"task": "vism", "clip": self.clip.enabled}
        c.update(self.training_compat())
        return c

    def loss(self, model, batch: VismBatch, g: torch.Generator):
        o, dev = self.o, self.device
        b = batch.render.shape[0]
        with torch.no_grad():
            x0 = self.vae.encode(batch.video).to(dev)
            u = torch.rand(b, 3, generator=g, device=dev)                   # all-hole zeroing, CLIP, text
            conds = [vism_conditions(self.vae, batch.render[i], batch.holes[i], float(u[i, 0]), o.inpaint_drop)
                     for i in range(b)]
            mask = torch.cat([c[0] for c in conds]).to(dev)
            masked_video = torch.cat([c[1] for c in conds]).to(dev)
            contexts = self.contexts(batch, u)
        return self.flow_loss(model, x0, g, **contexts, mask=mask, masked_video=masked_video)

    def contexts(self, batch: VismBatch, u: torch.Tensor) -> dict:
        """The CLIP and text contexts of ``batch`` with their drops (frozen encoders; call under ``no_grad``).

        Args:
            batch: the batch (``first_frame`` feeds CLIP, ``caption`` the text encoder).
            u: (B, 3) the step's uniform draws; columns 1 and 2 decide the CLIP and text drops.

        Returns:
            ``{"encoder_hidden_states": (B, L, text_dim), "encoder_hidden_states_image": (B, 257, image_dim) or
            None}`` keyword arguments of the DiT.
        """
        o, b = self.o, u.shape[0]
        clip = None
        if self.clip.enabled:
            clip = self.clip(batch.first_frame) * (u[:, 1] >= o.clip_drop).float().view(b, 1, 1)
        return {"encoder_hidden_states": self.text(batch.caption, u[:, 2] < o.text_drop),
                "encoder_hidden_states_image": clip}


def train(options: Any = None, callbacks=()) -> TrainResult:
    """Train 4D-ViSM. ``options``: :class:`VismOptions`, a dict of its fields, a Namespace or an argv list."""
    o = coerce_options(VismOptions, options, "python -m training.train_vism", DESCRIPTION)
    return run(VismTask(o), callbacks)


def main(argv: Optional[list[str]] = None) -> int:
    return cli_main(VismOptions, train, "python -m training.train_vism", DESCRIPTION, argv)


if __name__ == "__main__":
    raise SystemExit(main())
