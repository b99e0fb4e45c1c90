"""Widget and input definitions shared by several MoGe4D nodes (one definition each, so the loaders and samplers
of both diffusion stages offer the same options with the same tooltips)."""
from __future__ import annotations

from comfy_api.latest import io

from moge4d_core.loading.lora import OFFICIAL_STRENGTH
from moge4d_core.pipeline.speed import attention_backends
from moge4d_core.sampling import SOLVERS
from moge4d_core.sampling.step_cache import CACHE_PRESETS

from .models import PRECISIONS

NONE = "none"


def precision_input():
    return io.Combo.Input("precision", options=PRECISIONS, default="auto",
                          tooltip="Compute dtype. auto = what ComfyUI's model management picks for this device "
                                  "(bf16/fp16 on GPUs, fp32 on the CPU).")


def fp8_input():
    return io.Boolean.Input("fp8_storage", default=False,
                            tooltip="Store the big Linear weights as scaled fp8 (about half the memory of bf16) and "
                                    "upcast them layer by layer; no speed-up. For 14B models on 24-48 GB GPUs.")


def offload_input():
    return io.Boolean.Input("block_offload", default=False, advanced=True,
                            tooltip="Keep the transformer blocks in CPU memory and move one block at a time to the GPU "
                                    "(slow, but a 14B model then needs only a few GB of VRAM).")


def sampler_inputs(seed_default: int = 0):
    """Widgets shared by the trajectory and inpainting samplers (in saved-workflow order)."""
    return [
        io.Int.Input("steps", default=50, min=1, max=1000,
                     tooltip="Denoising steps (the release uses 50). Ignored when SIGMAS are connected."),
        io.Float.Input("cfg", default=6.0, min=0.0, max=30.0, step=0.1, round=0.01,
                       tooltip="Classifier-free guidance on the text (release 6.0; 1.0 skips the negative pass)."),
        io.Float.Input("shift", default=5.0, min=0.01, max=100.0, step=0.1,
                       tooltip="Flow-matching sigma shift (release 5.0). Also used by SAMPLER inputs."),
        io.Int.Input("seed", default=seed_default, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                     tooltip="Noise seed; the noise is drawn on the CPU, so a seed gives the same result on any "
                             "device (the release uses seed for the trajectories and seed + 1 for inpainting)."),
        io.Combo.Input("solver", options=list(SOLVERS), default="euler",
                       tooltip="Built-in flow solver (release: euler). With SIGMAS but no SAMPLER, ComfyUI's sampler "
                               "of the same name is used."),
    ]


def native_inputs():
    return [
        io.Sampler.Input("sampler", optional=True,
                         tooltip="Optional ComfyUI SAMPLER (KSamplerSelect, SamplerEulerAncestral, ...) replacing "
                                 "the built-in solver."),
        io.Sigmas.Input("sigmas", optional=True,
                        tooltip="Optional SIGMAS schedule (MoGe4D Flow Scheduler, OptimalStepsScheduler, ...) "
                                "replacing steps/shift; first value ~1, last 0."),
    ]


def clip_vision_input(release: str):
    return io.ClipVisionOutput.Input("clip_vision_output", optional=True,
                                     tooltip=f"Optional CLIPVisionEncode output (clip_vision_h.safetensors). "
                                             f"Not connected = zero CLIP context. {release}")


def strength_input():
    return io.Float.Input("strength", default=OFFICIAL_STRENGTH, min=-4.0, max=4.0, step=0.01,
                          tooltip="LoRA strength (the release infers with 0.55 = --stage2_lora_weight; the file's "
                                  "alpha/rank = 0.5 is applied on top).")


def cache_input():
    """The step-cache widget of the two samplers (appended last: widget order is part of saved workflows)."""
    return io.Combo.Input("cache", options=list(CACHE_PRESETS), default="off", optional=True, advanced=True,
                          tooltip="Step cache (diffusers' cache hooks): skip DiT work that barely changes between "
                                  "steps. first_block:T = skip the other blocks while the first block's change stays "
                                  "under T; mag = MagCache (the first run with a model calibrates it and skips "
                                  "nothing); taylorseer:N = full blocks every N-th step, extrapolated in between; "
                                  "pab:K = reuse self-attention K steps; faster = FasterCache (batched CFG only). "
                                  "off = the release's sampling.")


def memory_input():
    return io.String.Input("memory", default="auto", optional=True, advanced=True,
                           tooltip="Memory mode, named as the CLI's --memory: auto = ComfyUI's model management plus "
                                   "the fp8_storage / block_offload switches above; fp8 = weights stored as float8; "
                                   "block_swap:N = N transformer blocks stay on the GPU, the rest stream in one at a "
                                   "time; combinable as fp8+block_swap:N; full / model_offload = ComfyUI's own model "
                                   "management (it keeps or unloads models as memory demands).")


def speed_inputs():
    """The CLI's ``--attention-backend`` and ``--compile`` for a DiT loader (:mod:`moge4d_core.pipeline.speed`)."""
    return [
        io.Combo.Input("attention_backend", options=attention_backends(), default="native", optional=True,
                       advanced=True,
                       tooltip="diffusers' attention kernel for this DiT only: native = PyTorch SDPA; flash, sage, "
                               "xformers ... need their package (a missing one falls back to native with a message)."),
        io.Boolean.Input("compile", default=False, optional=True, advanced=True,
                         tooltip="torch.compile the repeated transformer blocks (one graph for all 40; the first run "
                                 "compiles, later ones are faster). Needs a working compiler toolchain."),
    ]


def text_inputs(caption: str):
    """Optional positive / negative CONDITIONING (required by models that read umT5 text; the nano model has none)."""
    return [
        io.Conditioning.Input("positive", optional=True,
                              tooltip=f"{caption} Required by the released model. A model trained without text "
                                      f"(the nano model) ignores it: leave it unconnected."),
        io.Conditioning.Input("negative", optional=True,
                              tooltip="Negative prompt (the release uses an empty one). Required by the released "
                                      "model; ignored by a model trained without text (the nano model)."),
    ]
