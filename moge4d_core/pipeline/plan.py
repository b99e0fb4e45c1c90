"""``python -m moge4d_core plan``: a dry run of the whole pipeline that says what fits on a GPU, and how long it takes.

The planner builds **our own model classes** (``WanDiT``/``STraGDiT``/``ViSMDiT``, ``MotionVAE``, diffusers'
``AutoencoderKLWan``, UniDepthV2, OmniMAE, umT5, CLIP) on the meta device, moves them to ``FakeTensorMode``
(no weights, no compute, real shapes) and runs each stage of the pipeline through the pipeline's own functions
where they are free of data-dependent Python branches (condition encoding, ``dit_velocity`` with batched CFG,
the motion / image VAE, mask packing). A :class:`~.memory_accounting.LiveBytes` counter gives the peak of live
tensor storage per stage; ``FlopCounterMode`` the FLOPs.

Shortcuts, so that the release-size plan takes seconds on a 2-core CPU:

* **DiTs** run the whole stage with 2 transformer blocks, and one sampling step with 1 block. FLOPs per step are
  ``f1 + (L-1)·(f2-f1)``; the activation peak of a deeper model equals the 2-block one (between blocks only the
  running hidden state, the embedded input and the shared context live; ``tests/test_plan.py`` checks 3 blocks).
  Weights are counted on the full-depth model built on the meta device.
* **Render** (points z-buffer, PyTorch backend) runs for real on 1 and 2 frames of the full point count with the
  target device's batching, and is extrapolated linearly in frames (its inputs and outputs grow with the
  frames; its scratch with the frames per batch, which the target's batching keeps at or above the frame count
  of a GPU render of 49 frames at 188k points, so the estimate errs high there).
* **UniDepthV2** runs its network pass at the shape ``infer`` would use (``infer`` itself checks pixel values).

Memory modes (:func:`parse_memory_mode`; the names the residency code, CLI and nodes share):

* ``full``: every stage's weights resident at once;
* ``model_offload`` (default): a stage's own models only (text + CLIP → depth → motion features →
  STraG + motion VAE → render → ViSM + image VAE);
* ``block_swap:N``: per DiT, N transformer blocks resident plus its non-block weights plus the block being
  streamed in; other stages as ``model_offload``;
* ``fp8``: the DiTs' fp8-eligible ``nn.Linear`` weights (:func:`moge4d_core.models.fp8.fp8_eligible_linear_names`)
  stored as ``float8_e4m3fn``, bf16 compute; one dequantised weight transient (the largest eligible Linear as
  float32 then bf16, as ``ScaledFP8LinearHook`` computes it) on top of the stage's peak;
* combinations with ``+``: ``fp8+block_swap:N``, ``fp8+full``, ``fp8+model_offload`` (= ``fp8``).

Estimated peak of a stage = resident weights + the stage's activation peak (+ the fp8 transient). Weight bytes are
exact (parameters and buffers in their dtype); activation bytes count tensor storage as the dispatcher sees it
(the CUDA caching allocator's rounding and kernel workspaces come on top, typically a few hundred MiB).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import sys
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from ..errors import MoGe4DInputError
from ..types import DiTConditioning
from .memory import MEMORY_MODE_FORMS, MemoryMode, parse_memory_mode
from .memory_accounting import LiveBytes, count_flops, tensor_bytes

__all__ = ["GPU_BF16_PEAK_TFLOPS", "MemoryMode", "parse_memory_mode", "MEMORY_MODE_FORMS", "PipelineSizes",
           "release_sizes", "nano_sizes", "ModelWeights", "StageProfile", "PipelineProfile", "profile_pipeline",
           "StageEstimate", "estimate_stages", "Plan", "make_plan", "choose_memory_mode", "add_plan_arguments",
           "cmd_plan", "format_plan"]

GiB = float(2 ** 30)

#: Dense (no sparsity) bf16 tensor-core peak with fp32 accumulation, TFLOP/s. Sources: NVIDIA H100 datasheet
#: (SXM: 1,979 with sparsity -> 989), NVIDIA A100 datasheet (312 dense), Ada Lovelace whitepaper appendix
#: (RTX 4090: 165.2 dense bf16 with fp32 accumulate; 330.3 with sparsity), Blackwell RTX whitepaper
#: (RTX 5090: 209.5 dense bf16). Achieved throughput is lower (36-65 % on H100 for Wan, performance_anchors §2.4).
GPU_BF16_PEAK_TFLOPS = {"H100 SXM": 989.0, "A100": 312.0, "RTX 4090": 165.0, "RTX 5090": 209.5}

# ---------------------------------------------------------------------------------------------- sizes
@dataclass(frozen=True)
class PipelineSizes:
    """What the dry run builds and runs: model configs (None = that model is not part of the pipeline), dtypes
    and the run's size. The release and the nano pipeline are two instances (:func:`release_sizes`,
    :func:`nano_sizes`).

    The run's size: ``frames`` T (4k+1), ``width`` / ``height`` of the working grid in pixels (multiples of 16),
    ``steps`` sampling steps per DiT stage, ``cfg`` scale (!= 1 with ``batched_cfg`` doubles the DiT batch),
    ``text_tokens`` umT5 input tokens per prompt.

    Raises:
        MoGe4DInputError: frames not 4k+1, width or height not a multiple of 16, steps not an integer >= 1, cfg < 0.
    """

    strag: object                       # DiT config (models.wan_dit.config.dit_config)
    motion_vae: object                  # MotionVAEConfig
    image_vae: Optional[dict] = None    # AutoencoderKLWan kwargs (None: no ViSM stage)
    vism: object = None                 # DiT config
    text: Optional[dict] = None         # UMT5Config overrides of the umT5-XXL encoder
    clip: Optional[dict] = None         # CLIPVisionConfig overrides of ViT-H/14
    unidepth: object = None             # UniDepthConfig
    omnimae: Optional[dict] = None      # OmniMAEEncoder kwargs
    frames: int = 49
    width: int = 512
    height: int = 368
    steps: int = 50
    cfg: float = 6.0
    text_tokens: int = 512                         # umT5 input tokens per prompt (worst case: 512)
    dit_dtype: torch.dtype = torch.bfloat16
    encoder_dtype: torch.dtype = torch.bfloat16    # umT5, CLIP
    vae_dtype: torch.dtype = torch.float32         # motion VAE, image VAE (as the loaders load them)
    aux_dtype: torch.dtype = torch.float32         # UniDepth, OmniMAE
    batched_cfg: bool = True
    render_points_per_batch: Optional[int] = None  # None: the CUDA batching of render.points

    def __post_init__(self) -> None:
        from .conditioning import check_frames, check_size
        check_frames(int(self.frames), "--frames")
        check_size(int(self.height), int(self.width), "--height/--width")
        if not (isinstance(self.steps, int) and self.steps >= 1):
            raise MoGe4DInputError(f"--steps: expected an integer >= 1, got {self.steps!r}")
        if not self.cfg >= 0:
            raise MoGe4DInputError(f"--cfg: expected a value >= 0, got {self.cfg!r}")

    @property
    def cfg_batch(self) -> int:
        """Batch of one DiT forward: 2 with (batched) classifier-free guidance, else 1."""
        return 2 if float(self.cfg) != 1.0 and self.batched_cfg else 1


def release_sizes(frames: int = 49, width: int = 512, height: int = 368, steps: int = 50, cfg: float = 6.0,
                  ) -> PipelineSizes:
    """The released MoGe4D pipeline: STraG with MPM, ViSM (Fun-InP) + Wan VAE, umT5-XXL, CLIP ViT-H/14,
    UniDepthV2 ViT-L/14, OmniMAE ViT-B; DiTs, umT5, CLIP in bf16.

    Args:
        frames: T, 4k+1. width, height: working size in pixels, multiples of 16. steps: sampling steps per DiT
            stage. cfg: CFG scale (!= 1: DiT batch 2).

    Returns:
        the :class:`PipelineSizes` (validated on construction).
    """
    from ..models.motion_vae import MotionVAEConfig
    from ..models.unidepth import UniDepthConfig
    from ..models.wan_dit import shipped_config

    return PipelineSizes(strag=shipped_config("wan2.1_14b_moge4d_strag"), motion_vae=MotionVAEConfig(), image_vae={},
                         vism=shipped_config("wan2.1_14b_fun_inp"), text={}, clip={},
                         unidepth=UniDepthConfig.preset("v2", "vitl14"), omnimae={}, frames=frames, width=width,
                         height=height, steps=steps, cfg=cfg)


def nano_sizes(frames: int = 17, width: int = 96, height: int = 64, steps: int = 20, cfg: float = 6.0,
               dtype: torch.dtype = torch.float32) -> PipelineSizes:
    """The shipped nano pipeline (``moge4d_core/models/nano.py`` sizes, no text / CLIP / depth / OmniMAE models),
    everything in ``dtype``, render batched as on the CPU.

    Args:
        frames: T, 4k+1. width, height: working size in pixels, multiples of 16. steps: sampling steps per DiT
            stage. cfg: CFG scale. dtype: the dtype of every model.

    Returns:
        the :class:`PipelineSizes` (validated on construction).
    """
    from ..models import nano
    from ..render import points as render_points

    return PipelineSizes(strag=nano.strag_config(nano.NANO_STRAG), motion_vae=nano.motion_vae_config(nano.NANO),
                         image_vae=nano.wan_vae_kwargs(nano.NANO_VISM), vism=nano.vism_config(nano.NANO_VISM),
                         frames=frames, width=width, height=height, steps=steps, cfg=cfg,
                         dit_dtype=dtype, encoder_dtype=dtype, vae_dtype=dtype, aux_dtype=dtype,
                         render_points_per_batch=render_points.CPU_POINTS_PER_BATCH)


# ---------------------------------------------------------------------------------------------- builders
@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loggers = [logging.getLogger(n) for n in ("diffusers", "transformers")]
        levels = [lg.level for lg in loggers]
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, lv in zip(loggers, levels):
                lg.setLevel(lv)


def _on_meta(build: Callable[[], torch.nn.Module], dtype: torch.dtype) -> torch.nn.Module:
    with _quiet(), torch.device("meta"):
        return build().to(dtype).eval()


def _fake(model: torch.nn.Module) -> torch.nn.Module:
    """Meta model -> the same model with fake CPU tensors (call inside ``FakeTensorMode``; in place, and it unties
    tied weights, so count weights before)."""
    return model.to_empty(device="cpu")


def _dit_builder(cfg, cls_name: str):
    def build():
        from ..models import wan_dit
        return getattr(wan_dit, cls_name)(**cfg)
    return build


def _umt5_builder(overrides: dict):
    def build():
        from ..models.text import build_umt5_encoder, umt5_config
        return build_umt5_encoder(umt5_config(**overrides))
    return build


def _clip_builder(overrides: dict):
    def build():
        from ..models.clip import ClipVisionEncoder, clip_vision_config
        return ClipVisionEncoder(clip_vision_config(**overrides))
    return build


def _unidepth_builder(cfg):
    def build():
        from ..models.unidepth import build_unidepth
        return build_unidepth(cfg)
    return build


def _omnimae_builder(kwargs: dict):
    def build():
        from ..models.omnimae import OmniMAEEncoder
        return OmniMAEEncoder(**kwargs)
    return build


def _motion_vae_builder(cfg):
    def build():
        from ..models.motion_vae import MotionVAE
        return MotionVAE(cfg)
    return build


def _image_vae_builder(kwargs: dict):
    def build():
        from diffusers import AutoencoderKLWan
        return AutoencoderKLWan(**kwargs)
    return build


# ---------------------------------------------------------------------------------------------- weights
@dataclass(frozen=True)
class ModelWeights:
    """Weight bytes of one model. DiTs also give the per-block split and the fp8-eligible share.

    Attributes:
        name: e.g. ``"STraG DiT"``. params: parameter count. bytes: parameters + buffers in their dtype.
        block_bytes: bytes of one transformer block (0 for non-DiTs). num_blocks: blocks (0 for non-DiTs).
        elem_size: bytes per weight element (the compute dtype's). fp8_numel: elements of the fp8-eligible Linear
        weights, all blocks included; fp8_block_numel: those inside one block; fp8_max_numel: the largest one.
        gguf_bytes: DiTs: ``((type, bytes), ...)`` of the GGUF files ``python -m moge4d_core quantize`` writes.
    """

    name: str
    params: int
    bytes: int
    elem_size: int = 2
    block_bytes: int = 0
    num_blocks: int = 0
    fp8_numel: int = 0
    fp8_block_numel: int = 0
    fp8_max_numel: int = 0
    gguf_bytes: tuple = ()

    @property
    def is_dit(self) -> bool:
        """True for a DiT (a model with transformer blocks)."""
        return self.num_blocks > 0

    def resident(self, mode: MemoryMode) -> int:
        """Bytes on the device while this model's stage runs under ``mode`` (fp8: 1 byte per eligible element)."""
        if not self.is_dit:
            return self.bytes
        per = self.elem_size - 1 if mode.fp8 else 0          # bytes saved per fp8 element
        whole = self.bytes - per * self.fp8_numel
        if mode.residency != "block_swap" or int(mode.blocks) >= self.num_blocks:
            return whole
        block = self.block_bytes - per * self.fp8_block_numel
        non_block = whole - self.num_blocks * block
        return non_block + (int(mode.blocks) + 1) * block

    def fp8_transient(self, mode: MemoryMode) -> int:
        """The dequantised copy of one Linear weight that fp8 storage adds during a forward (float32 + bf16)."""
        return self.fp8_max_numel * (4 + 2) if (mode.fp8 and self.is_dit) else 0


def _weights_of(name: str, model: torch.nn.Module, dit: bool) -> ModelWeights:
    params = sum(p.numel() for p in model.parameters())
    nbytes = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    kw = {}
    elem = next(model.parameters()).element_size()
    if dit:
        from ..models.fp8 import fp8_eligible_linear_names
        blocks = model.blocks
        blk = blocks[0]
        kw["num_blocks"] = len(blocks)
        kw["block_bytes"] = sum(t.numel() * t.element_size() for t in list(blk.parameters()) + list(blk.buffers()))
        names = fp8_eligible_linear_names(model)
        mods = dict(model.named_modules())
        sizes = {n: mods[n].weight.numel() for n in names}
        kw["fp8_numel"] = sum(sizes.values())
        kw["fp8_block_numel"] = sum(v for n, v in sizes.items() if n.startswith("blocks.0."))
        kw["fp8_max_numel"] = max(sizes.values(), default=0)
        from ..loading.gguf import gguf_sizes
        kw["gguf_bytes"] = tuple(gguf_sizes(model).items())
    return ModelWeights(name=name, params=params, bytes=nbytes, elem_size=elem, **kw)


# ---------------------------------------------------------------------------------------------- profiling
@dataclass
class StageProfile:
    """One stage measured by the dry run.

    Attributes:
        name: stage name. models: the models it needs on the device. activation_bytes: peak live tensor bytes
        beyond the weights (inputs from earlier stages included). flops: FLOPs of one run of the stage without
        its DiT steps (encoders, VAE, render). dit: the DiT's weights entry for DiT stages, else None.
        dit_flops_per_forward / flops_per_step: DiT FLOPs of one forward (batch ``cfg_batch``) / per sampling step.
        steps: sampling steps of the stage (0 without a DiT).
    """

    name: str
    models: list
    activation_bytes: int
    flops: float = 0.0
    dit: Optional[ModelWeights] = None
    flops_per_step: Optional[float] = None
    steps: int = 0
    phases: dict = field(default_factory=dict)


@dataclass
class PipelineProfile:
    """The dry run of one pipeline (:func:`profile_pipeline`): ``sizes`` it was run for, ``stages`` a list of
    :class:`StageProfile` in pipeline order."""

    sizes: PipelineSizes
    stages: list

    @property
    def all_models(self) -> list:
        """Every stage's :class:`ModelWeights`, each model once (by name), in order of first use."""
        seen, out = set(), []
        for st in self.stages:
            for m in st.models:
                if m.name not in seen:
                    seen.add(m.name)
                    out.append(m)
        return out


class _Run:
    """One stage's fake run: a LiveBytes counter that starts with the stage's (fake) weights and inputs."""

    def __init__(self, models: Sequence[torch.nn.Module], inputs) -> None:
        self.models, self.inputs = models, inputs

    def __enter__(self):
        self.grad = torch.no_grad()
        self.grad.__enter__()
        self.lb = LiveBytes().__enter__()
        self.lb.track(*self.models, self.inputs)
        self.weight_bytes = sum(tensor_bytes(list(m.parameters()) + list(m.buffers())) for m in self.models)
        self.phases = {}
        self._mark = 0
        return self

    def phase(self, name: str) -> None:
        """Record the activation peak since the previous phase under ``name``."""
        self.phases[name] = self.lb.peak - self.weight_bytes
        self.lb.reset_peak()

    @property
    def activation(self) -> int:
        return max(self.phases.values(), default=self.lb.peak - self.weight_bytes)

    def __exit__(self, *exc):
        self.lb.__exit__(*exc)
        self.grad.__exit__(*exc)
        return False


def _empty(*shape, dtype=torch.float32):
    return torch.zeros(*shape, dtype=dtype)


def _dit_step(model, s: PipelineSizes, cond: DiTConditioning, latent_shape: tuple) -> torch.Tensor:
    """One sampling step's velocity through the pipeline's own CFG wrapper (batched CFG at cfg != 1)."""
    from ..sampling import dit_velocity
    x = _empty(*latent_shape)
    uncond = cond.with_text(torch.zeros_like(cond.encoder_hidden_states))
    fn = dit_velocity(model, cond, uncond if float(s.cfg) != 1.0 else None, s.cfg, batched=s.batched_cfg)
    return fn(x, torch.tensor(0.5))


def _text_shape(cfg, s: PipelineSizes) -> tuple:
    """The text context a DiT receives: (1, 512, text_dim) from umT5 (``TextContext`` pads to 512 tokens), or
    without a text encoder (the nano pipeline: models trained without text) the one zero token (1, 1, text_dim)
    the pipeline gives them."""
    return (1, int(cfg.text_len) if s.text is not None else 1, int(cfg.text_dim))


def _strag_stage(s: PipelineSizes, fm, strag_meta_factory, mvae_meta) -> tuple[dict, float, float]:
    """Run STraG conditions -> one step -> motion decode with a shallow DiT. Returns (phases, step flops, other)."""
    from .conditioning import encode_strag_conditions
    from .image_vae import WanImageVAE
    from .trajectory import decode_motion

    cfg = s.strag
    h, w = s.height, s.width
    with fm:
        dit, mvae = _fake(strag_meta_factory()), _fake(mvae_meta)
        dit.reset_rope()
        image, depth = _empty(h, w, 3), torch.ones(h, w)
        text = _empty(*_text_shape(cfg, s))
        clip = _empty(1, 257, int(cfg.image_dim)) if cfg.image_dim else None
        feats = _empty(1, 196, int(cfg.mpm_feature_dim)) if cfg.mpm_feature_dim else None
        with _Run([dit, mvae], [image, depth, text, clip, feats]) as run, count_flops() as fc:
            conds = encode_strag_conditions(WanImageVAE.from_motion_vae(mvae), image, depth, s.frames, reference=True)
            conds.clip, conds.motion_features = clip, feats
            run.phase("encode conditions")
            enc_flops = fc.get_total_flops()
            cond = conds.dit_conditioning(text, dtype=torch.float32)
            latent = _dit_step(dit, s, cond, tuple(conds.control.shape))
            run.phase("DiT step")
            step_flops = fc.get_total_flops() - enc_flops
            del cond
            delta = decode_motion(mvae, latent)
            run.phase("motion VAE decode")
            other = fc.get_total_flops() - step_flops
            del delta, latent, conds
        return run.phases, step_flops, other


def _vism_stage(s: PipelineSizes, fm, vism_meta_factory, vae_meta) -> tuple[dict, float, float]:
    from ..models.vism_mask import pack_inpaint_inputs
    from .image_vae import WanImageVAE

    cfg = s.vism
    with fm:
        dit, vae = _fake(vism_meta_factory()), WanImageVAE(_fake(vae_meta))
        dit.reset_rope()
        render = _empty(s.frames, s.height, s.width, 3)
        holes = _empty(s.frames, s.height, s.width)
        text = _empty(*_text_shape(cfg, s))
        with _Run([dit, vae.vae], [render, holes, text]) as run, count_flops() as fc:
            masked, mask = pack_inpaint_inputs(render, holes)
            masked_lat = vae.encode(masked)
            del masked
            run.phase("image VAE encode")
            enc_flops = fc.get_total_flops()
            cond = DiTConditioning(encoder_hidden_states=text, mask=mask, masked_video=masked_lat)
            latent = _dit_step(dit, s, cond, tuple(masked_lat.shape))
            run.phase("DiT step")
            step_flops = fc.get_total_flops() - enc_flops
            del cond, mask, masked_lat
            video = vae.decode(latent)
            frames = ((video[0].permute(1, 2, 3, 0) + 1) / 2).clamp(0, 1).float()
            run.phase("image VAE decode")
            other = fc.get_total_flops() - step_flops
            del video, frames, latent
        return run.phases, step_flops, other


def _step_flops(s: PipelineSizes, fm, meta: torch.nn.Module) -> float:
    """FLOPs of one sampling step of a (shallow) DiT, with conditions of the latent shape made directly (no VAE)."""
    from ..models import constants as C

    cfg = meta.config
    f, h, w = (s.frames - 1) // C.TEMPORAL_COMPRESSION + 1, s.height // C.SPATIAL_COMPRESSION, \
        s.width // C.SPATIAL_COMPRESSION
    lat = (1, C.LATENT_CHANNELS, f, h, w)
    with fm:
        dit = _fake(meta)
        dit.reset_rope()
        kw = dict(encoder_hidden_states=_empty(*_text_shape(cfg, s)))
        if cfg.arch == "wan2.1_fun_inp":
            kw.update(mask=_empty(1, cfg.in_channels - 2 * C.LATENT_CHANNELS, f, h, w), masked_video=_empty(*lat))
        else:
            kw.update(control=_empty(*lat), depth=_empty(*lat),
                      ref_latent=_empty(*lat[:2], h, w) if cfg.ref_conv_in_dim else None,
                      encoder_hidden_states_image=_empty(1, 257, int(cfg.image_dim)) if cfg.image_dim else None,
                      motion_features=_empty(1, 196, int(cfg.mpm_feature_dim)) if cfg.mpm_feature_dim else None)
        with torch.no_grad(), count_flops() as fc:
            out = _dit_step(dit, s, DiTConditioning(**kw), lat)
            del out
        return float(fc.get_total_flops())


def _dit_profile(stage_fn, s, fm, cfg, cls_name, other_meta):
    """Run ``stage_fn`` with a 2-block DiT and one step of a 1-block DiT; extrapolate the step's FLOPs to the
    config's depth. Returns (phases, FLOPs per step, FLOPs of the rest of the stage)."""
    meta2 = _on_meta(_dit_builder({**cfg, "num_layers": 2}, cls_name), s.dit_dtype)
    phases, f2, other = stage_fn(s, fm, lambda: meta2, other_meta())
    f1 = _step_flops(s, fm, _on_meta(_dit_builder({**cfg, "num_layers": 1}, cls_name), s.dit_dtype))
    return phases, float(f1 + (cfg.num_layers - 1) * (f2 - f1)), float(other)


def _encoder_stage(fm, metas: Sequence[torch.nn.Module], run_fn) -> tuple[dict, float]:
    with fm:
        models = [_fake(m) for m in metas]
        with _Run(models, []) as run, count_flops() as fc:
            run_fn(run, *models)
        return run.phases or {"run": run.activation}, float(fc.get_total_flops())


def _unidepth_pass(run, model, s: PipelineSizes) -> None:
    """UniDepthV2 network pass at the shape ``infer`` uses for an ``height x width`` image, plus its resize back."""
    import torch.nn.functional as F
    from ..models.unidepth.shapes import v2_network_shape, v2old_network_shape, v2old_token_budget

    cfg = model.config
    x = _empty(1, 3, s.height, s.width)
    if cfg.version == "v2":
        (pl, pr, pt, pb), (ph, pw), _, (nh, nw) = v2_network_shape(s.height, s.width, None, None, cfg.ratio_bounds,
                                                                   cfg.pixels_bounds)
        x = F.pad(x, (pl, pr, pt, pb))
    else:
        (nh, nw), _ = v2old_network_shape(s.height, s.width, v2old_token_budget(None, cfg.pixels_bounds, None))
        ph, pw = s.height, s.width
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
    out = model.forward_network(x)
    pts = F.interpolate((out["rays"].reshape(1, nh, nw, 3).permute(0, 3, 1, 2) * out["radius"]), size=(ph, pw),
                        mode="bilinear", align_corners=False)
    del out, x
    run.phase("network")
    del pts


def _render_profile(s: PipelineSizes) -> tuple[int, float]:
    """Real render of 1 and 2 frames (PyTorch z-buffer), extrapolated linearly to ``s.frames``."""
    from unittest import mock

    from ..render import points as render_points
    from ..render.api import render_trajectories
    from ..types import CameraPath, Trajectories

    h, w = s.height, s.width
    per_batch = s.render_points_per_batch or render_points.GPU_POINTS_PER_BATCH
    K = torch.tensor([[0.8 * w, 0.0, w / 2], [0.0, 0.8 * w, h / 2], [0.0, 0.0, 1.0]])
    v, u = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    z = torch.full((h, w), 2.0)
    grid = torch.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], dim=-1).reshape(-1, 3)
    peaks = {}
    for t in (1, 2):
        traj = Trajectories(points=grid[None].repeat(t, 1, 1), colors=torch.full((h * w, 3), 0.5), height=h,
                            width=w, K=K)
        cam = CameraPath(c2w=torch.eye(4)[None].repeat(t, 1, 1), K=K[None].repeat(t, 1, 1), width=w, height=h)
        with mock.patch.object(render_points, "CPU_POINTS_PER_BATCH", per_batch), LiveBytes() as lb:
            lb.track(traj.points, traj.colors, traj.K)
            out = render_trajectories(traj, cam, backend="torch")
            del out
        peaks[t] = lb.peak
    return peaks[1] + (s.frames - 1) * (peaks[2] - peaks[1]), 0.0


def profile_pipeline(s: PipelineSizes) -> PipelineProfile:
    """Dry-run every stage of the pipeline described by ``s`` (see the module docstring).

    Args:
        s: model configs, dtypes and sizes (:func:`release_sizes`, :func:`nano_sizes`).

    Returns:
        a :class:`PipelineProfile` with one :class:`StageProfile` per stage, in pipeline order.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    fm = FakeTensorMode(allow_non_fake_inputs=True)
    stages = []
    # text + CLIP
    if s.text is not None or s.clip is not None:
        metas, names = [], []
        if s.text is not None:
            metas.append(_on_meta(_umt5_builder(s.text), s.encoder_dtype))
            names.append("umT5-XXL")
        if s.clip is not None:
            metas.append(_on_meta(_clip_builder(s.clip), s.encoder_dtype))
            names.append("CLIP ViT-H/14")

        def run_text(run, *models):
            i = 0
            if s.text is not None:
                m = models[i]
                i += 1
                ids = torch.zeros(2, s.text_tokens, dtype=torch.long)
                hid = m(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state.float()
                run.phase("umT5")
                del hid
            if s.clip is not None:
                m = models[i]
                px = _empty(1, 3, m.image_size, m.image_size, dtype=s.encoder_dtype)
                tok = m(px).float()
                run.phase("CLIP")
                del tok

        # count before faking (to_empty unties tied weights)
        weights = [_weights_of(n, m, False) for n, m in zip(names, metas)]
        phases, flops = _encoder_stage(fm, metas, run_text)
        stages.append(StageProfile("text + CLIP", weights, max(phases.values()), flops, phases=phases))
    # depth
    if s.unidepth is not None:
        meta = _on_meta(_unidepth_builder(s.unidepth), s.aux_dtype)
        weights = [_weights_of(f"UniDepth {s.unidepth.name}", meta, False)]
        phases, flops = _encoder_stage(fm, [meta], lambda run, m: _unidepth_pass(run, m, s))
        stages.append(StageProfile("depth (UniDepthV2)", weights, max(phases.values()), flops, phases=phases))
    # motion features
    if s.omnimae is not None:
        from ..models.omnimae import preprocess
        meta = _on_meta(_omnimae_builder(s.omnimae), s.aux_dtype)

        def run_omni(run, m):
            # extract_motion_features minus its value checks (they read pixel values)
            x = preprocess(_empty(1, 3, s.height, s.width))
            feats = m(x)[0].float()
            del x
            run.phase("OmniMAE")
            del feats

        weights = [_weights_of("OmniMAE ViT-B", meta, False)]
        phases, flops = _encoder_stage(fm, [meta], run_omni)
        stages.append(StageProfile("motion features (OmniMAE)", weights, max(phases.values()), flops,
                                   phases=phases))
    # STraG + motion VAE
    strag_full = _on_meta(_dit_builder(s.strag, "STraGDiT"), s.dit_dtype)
    mvae_meta = _on_meta(_motion_vae_builder(s.motion_vae), s.vae_dtype)     # counted only, never faked
    phases, step, other = _dit_profile(_strag_stage, s, fm, s.strag, "STraGDiT",
                                       lambda: _on_meta(_motion_vae_builder(s.motion_vae), s.vae_dtype))
    dit_w = _weights_of("STraG DiT", strag_full, True)
    stages.append(StageProfile("trajectories (4D-STraG)", [dit_w, _weights_of("motion VAE", mvae_meta, False)],
                               max(phases.values()), other, dit=dit_w, flops_per_step=step, steps=s.steps,
                               phases=phases))
    del strag_full
    # render
    act, _ = _render_profile(s)
    stages.append(StageProfile("render (points z-buffer)", [], act, 0.0, phases={"render": act}))
    # ViSM + image VAE
    if s.vism is not None:
        vism_full = _on_meta(_dit_builder(s.vism, "ViSMDiT"), s.dit_dtype)
        vae_meta = _on_meta(_image_vae_builder(s.image_vae or {}), s.vae_dtype)
        phases, step, other = _dit_profile(_vism_stage, s, fm, s.vism, "ViSMDiT",
                                           lambda: _on_meta(_image_vae_builder(s.image_vae or {}), s.vae_dtype))
        dit_w = _weights_of("ViSM DiT", vism_full, True)
        stages.append(StageProfile("inpaint (4D-ViSM)", [dit_w, _weights_of("Wan image VAE", vae_meta, False)],
                                   max(phases.values()), other, dit=dit_w, flops_per_step=step,
                                   steps=s.steps, phases=phases))
    return PipelineProfile(sizes=s, stages=stages)


# ---------------------------------------------------------------------------------------------- estimates
@dataclass(frozen=True)
class StageEstimate:
    """Estimated device memory of one stage under one mode (bytes) and its DiT time per GPU (seconds).

    Attributes:
        name: the stage. mode: the memory mode's name. weights_bytes: weights resident during the stage.
        activation_bytes: the stage's activation peak. transient_bytes: the fp8 dequantisation transient (0 without
        fp8). flops_per_step: DiT FLOPs per sampling step, or None without a DiT. steps: sampling steps.
    """

    name: str
    mode: str
    weights_bytes: int
    activation_bytes: int
    transient_bytes: int
    flops_per_step: Optional[float]
    steps: int

    @property
    def peak_bytes(self) -> int:
        """Estimated peak device memory of the stage, bytes: weights + activations + fp8 transient."""
        return self.weights_bytes + self.activation_bytes + self.transient_bytes

    def seconds(self, tflops: float) -> Optional[float]:
        """DiT time of the whole stage (all steps) at ``tflops`` TFLOP/s; None without a DiT."""
        if self.flops_per_step is None:
            return None
        return self.flops_per_step * self.steps / (tflops * 1e12)

    def to_dict(self) -> dict:
        """JSON-ready dict: the fields with bytes as GiB (2**30 bytes) and ``seconds`` per GPU of
        :data:`GPU_BF16_PEAK_TFLOPS` (None without a DiT)."""
        return {"name": self.name, "mode": self.mode, "weights_gib": self.weights_bytes / GiB,
                "activation_gib": self.activation_bytes / GiB, "transient_gib": self.transient_bytes / GiB,
                "peak_gib": self.peak_bytes / GiB, "flops_per_step": self.flops_per_step, "steps": self.steps,
                "seconds": {g: self.seconds(p) for g, p in GPU_BF16_PEAK_TFLOPS.items()}}


def estimate_stages(profile: PipelineProfile, mode) -> list:
    """Per stage of ``profile``: resident weights, activation peak and fp8 transient under ``mode``.

    Args:
        profile: from :func:`profile_pipeline`.
        mode: a :class:`MemoryMode` or its string (not ``auto``).

    Returns:
        list of :class:`StageEstimate`, in pipeline order.
    """
    mode = parse_memory_mode(mode, allow_auto=False)
    everything = profile.all_models
    out = []
    for st in profile.stages:
        resident = everything if mode.residency == "full" else st.models
        weights = sum(m.resident(mode) for m in resident)
        transient = max((m.fp8_transient(mode) for m in st.models), default=0)
        out.append(StageEstimate(st.name, mode.name, int(weights), int(st.activation_bytes), int(transient),
                                 st.flops_per_step, st.steps))
    return out


@dataclass
class Plan:
    """A profile with the estimates of the modes the planner compares. ``peak(mode)``: the largest stage peak."""

    profile: PipelineProfile
    estimates: dict = field(default_factory=dict)   # mode name -> list[StageEstimate]

    def stages(self, mode) -> list:
        """The :class:`StageEstimate` list of ``mode`` (a :class:`MemoryMode` or its string, not ``auto``), computed
        once and kept in :attr:`estimates`.

        Raises:
            MoGe4DInputError: ``mode`` is not a valid memory mode, or is ``auto``.
        """
        name = parse_memory_mode(mode, allow_auto=False).name
        if name not in self.estimates:
            self.estimates[name] = estimate_stages(self.profile, name)
        return self.estimates[name]

    def peak_bytes(self, mode) -> int:
        """The largest stage peak under ``mode``, bytes."""
        return max(e.peak_bytes for e in self.stages(mode))

    @property
    def max_blocks(self) -> int:
        """The most transformer blocks of the pipeline's DiTs (0 without a DiT)."""
        return max((st.dit.num_blocks for st in self.profile.stages if st.dit is not None), default=0)

    def candidate_modes(self) -> list:
        """Cheapest first: full, model_offload, fp8, block_swap:N (N high to low), fp8+block_swap:N (high to low)."""
        n = self.max_blocks
        modes = ["full", "model_offload", "fp8"]
        modes += [f"block_swap:{k}" for k in range(n - 1, -1, -1)]
        modes += [f"fp8+block_swap:{k}" for k in range(n - 1, -1, -1)]
        return modes


_PROFILES: dict = {}


def make_plan(sizes: Optional[PipelineSizes] = None) -> Plan:
    """Profile ``sizes`` (default: the release at 49 x 368 x 512, 50 steps, CFG 6) into a :class:`Plan`.

    Profiles are deterministic and kept for the process (a second plan of the same sizes costs nothing).

    Args:
        sizes: model configs, dtypes and run size; None = :func:`release_sizes` with its defaults.

    Returns:
        a :class:`Plan` over the (cached) :class:`PipelineProfile`, with no estimates yet (computed per mode on use).
    """
    sizes = sizes or release_sizes()
    key = repr(sizes)
    if key not in _PROFILES:
        _PROFILES[key] = profile_pipeline(sizes)
    return Plan(_PROFILES[key])


def choose_memory_mode(plan: Plan, gpu_memory_gib: float) -> MemoryMode:
    """The cheapest memory mode whose estimated peak fits ``gpu_memory_gib`` (what ``--memory auto`` resolves to).

    Args:
        plan: from :func:`make_plan`.
        gpu_memory_gib: device memory available to the pipeline, GiB (2**30 bytes).

    Returns:
        the chosen :class:`MemoryMode` (order: :meth:`Plan.candidate_modes`).

    Raises:
        MoGe4DInputError: when no mode fits, naming the smallest peak.
    """
    if not (isinstance(gpu_memory_gib, (int, float)) and math.isfinite(gpu_memory_gib) and gpu_memory_gib > 0):
        raise MoGe4DInputError(f"--gpu-memory: expected a positive number of GiB, got {gpu_memory_gib!r}")
    budget = float(gpu_memory_gib) * GiB
    for name in plan.candidate_modes():
        if plan.peak_bytes(name) <= budget:
            return parse_memory_mode(name)
    smallest = min(plan.candidate_modes(), key=plan.peak_bytes)
    raise MoGe4DInputError(
        f"--gpu-memory {gpu_memory_gib:g}: no memory mode fits; the smallest estimated peak is "
        f"{plan.peak_bytes(smallest) / GiB:.1f} GiB ({smallest}). Use a GPU with more memory, or fewer frames / a "
        f"smaller size (--frames, --width, --height)")


# ---------------------------------------------------------------------------------------------- CLI
def add_plan_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``python -m moge4d_core plan`` (see :func:`cmd_plan`)."""
    parser.add_argument("--gpu-memory", type=float, default=None, metavar="GiB",
                        help="device memory to plan for; names the cheapest memory mode that fits")
    parser.add_argument("--frames", type=int, default=49, help="frames, 4k+1 (release 49)")
    parser.add_argument("--width", type=int, default=512, help="working width, multiple of 16 (release 512)")
    parser.add_argument("--height", type=int, default=368, help="working height, multiple of 16 (release 368)")
    parser.add_argument("--steps", type=int, default=50, help="sampling steps per DiT stage (release 50)")
    parser.add_argument("--cfg", type=float, default=6.0, help="CFG scale; != 1 doubles the DiT batch (release 6)")
    parser.add_argument("--memory", default=None, metavar="MODE",
                        help="also show this mode (" + ", ".join(MEMORY_MODE_FORMS) + "); 'auto' = the cheapest "
                             "that fits --gpu-memory (or the CUDA device's total memory)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    return parser


def _gib(b: float) -> str:
    return f"{b / GiB:8.2f}"


def format_plan(plan: Plan, modes: Sequence[str], choice: Optional[tuple[str, float]], note: str = "",
                given: Optional[str] = None) -> str:
    """Human-readable tables: one per mode in ``modes``, the DiT times per GPU, then the choice line (``choice``:
    (mode, peak GiB) or None; ``given``: a ``--memory`` mode to report beside it)."""
    s = plan.profile.sizes
    lines = [f"MoGe4D plan: {s.frames} frames at {s.width}x{s.height}, {s.steps} steps per DiT stage, CFG {s.cfg:g} "
             f"(DiT batch {s.cfg_batch}); DiTs {str(s.dit_dtype).replace('torch.', '')}"]
    lines.append("weights: " + ", ".join(f"{m.name} {m.params / 1e9:.2f} B params {m.bytes / GiB:.2f} GiB"
                                         for m in plan.profile.all_models))
    lines += [f"GGUF file of the {m.name} (python -m moge4d_core quantize --gguf TYPE): "
              + ", ".join(f"{t} {b / GiB:.2f} GiB" for t, b in m.gguf_bytes) for m in plan.profile.all_models
              if m.gguf_bytes]
    for mode in modes:
        rows = plan.stages(mode)
        lines.append("")
        lines.append(f"mode {mode}: estimated peak {plan.peak_bytes(mode) / GiB:.2f} GiB")
        lines.append(f"  {'stage':<28}{'weights':>9}{'activ.':>9}{'fp8 tmp':>9}{'peak GiB':>9}{'TFLOP/step':>12}")
        for e in rows:
            fl = "-" if e.flops_per_step is None else f"{e.flops_per_step / 1e12:.1f}"
            lines.append(f"  {e.name:<28}{_gib(e.weights_bytes)} {_gib(e.activation_bytes)} "
                         f"{_gib(e.transient_bytes)} {_gib(e.peak_bytes)}{fl:>12}")
    dits = [e for e in plan.stages("model_offload") if e.flops_per_step is not None]
    if dits:
        lines.append("")
        lines.append("DiT time at dense bf16 peak (a floor; real runs reach 35-65 % of it):")
        lines.append(f"  {'stage':<36}" + "".join(f"{g:>12}" for g in GPU_BF16_PEAK_TFLOPS))
        for e in dits:
            lines.append(f"  {e.name + ' s/step':<36}" + "".join(
                f"{e.flops_per_step / (p * 1e12):>12.2f}" for p in GPU_BF16_PEAK_TFLOPS.values()))
            lines.append(f"  {e.name + f' s/{e.steps} steps':<36}" + "".join(
                f"{e.seconds(p):>12.1f}" for p in GPU_BF16_PEAK_TFLOPS.values()))
    lines.append("")
    if given is not None and (choice is None or given != choice[0]):
        lines.append(f"given --memory {given}: estimated peak {plan.peak_bytes(given) / GiB:.2f} GiB")
    if choice is not None:
        lines.append(f"choice: {choice[0]} (estimated peak {choice[1]:.2f} GiB){note}")
    else:
        lines.append(f"choice: none{note}")
    return "\n".join(lines)


def _cuda_total_gib() -> Optional[float]:
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory / GiB
    return None


def cmd_plan(args: argparse.Namespace) -> int:
    """Run the planner for parsed :func:`add_plan_arguments` arguments; prints tables or JSON. Returns 0, or 1
    when ``--gpu-memory`` is given and no mode fits.

    Raises:
        MoGe4DInputError: an invalid ``--memory`` mode, a ``--gpu-memory`` that is not a positive number,
            ``--memory auto`` without ``--gpu-memory`` and without a CUDA device, or invalid sizes.
    """
    mode = parse_memory_mode(args.memory) if args.memory is not None else None
    gpu = args.gpu_memory
    if gpu is not None and not (math.isfinite(gpu) and gpu > 0):
        raise MoGe4DInputError(f"--gpu-memory: expected a positive number of GiB, got {gpu!r}")
    if mode is not None and mode.is_auto and gpu is None:
        gpu = _cuda_total_gib()
        if gpu is None:
            raise MoGe4DInputError("--memory auto: no CUDA device here to read the memory of; give --gpu-memory GiB")
    plan = make_plan(release_sizes(frames=args.frames, width=args.width, height=args.height, steps=args.steps,
                                   cfg=args.cfg))
    rc, note, choice = 0, "", None
    if gpu is not None:
        try:
            chosen = choose_memory_mode(plan, gpu).name
            note = f" = the cheapest mode that fits {gpu:g} GiB"
        except MoGe4DInputError as exc:
            chosen, rc, note = None, 1, f" ({exc})"
    else:
        chosen = mode.name if mode is not None else "model_offload"
        note = " (the given --memory)" if mode is not None else " (the default; give --gpu-memory to choose)"
    if chosen is not None:
        choice = (chosen, plan.peak_bytes(chosen) / GiB)
    modes = ["full", "model_offload", "fp8"]
    for extra in (chosen, None if mode is None or mode.is_auto else mode.name):
        if extra is not None and extra not in modes:
            modes.append(extra)
    if args.json:
        obj = {"settings": {"frames": args.frames, "width": args.width, "height": args.height, "steps": args.steps,
                            "cfg": args.cfg, "gpu_memory_gib": gpu},
               "choice": {"mode": choice[0] if choice else None, "peak_gib": choice[1] if choice else None},
               "gpu_bf16_peak_tflops": dict(GPU_BF16_PEAK_TFLOPS),
               "models": [{"name": m.name, "params": m.params, "gib": m.bytes / GiB,
                           "dtype_bytes": m.elem_size, "gguf_gib": {t: b / GiB for t, b in m.gguf_bytes}}
                          for m in plan.profile.all_models],
               "modes": [{"mode": m, "peak_gib": plan.peak_bytes(m) / GiB} for m in modes],
               "stages": [e.to_dict() for m in modes for e in plan.stages(m)]}
        if rc:
            obj["error"] = note.strip(" ()")
        print(json.dumps(obj, indent=1))
    else:
        print(format_plan(plan, modes, choice, note, given=None if mode is None or mode.is_auto else mode.name))
    return rc


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m moge4d_core.pipeline.plan``: parse ``argv`` (None: ``sys.argv[1:]``) and run :func:`cmd_plan`.

    Returns:
        the exit status: 0, 1 when no mode fits ``--gpu-memory``, 2 on invalid input (message on stderr).
    """
    parser = add_plan_arguments(argparse.ArgumentParser(prog="python -m moge4d_core.pipeline.plan",
                                                        description=__doc__.split("\n")[0]))
    try:
        return cmd_plan(parser.parse_args(argv))
    except MoGe4DInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
