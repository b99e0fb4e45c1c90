"""Inpainting nodes: 4D-ViSM with its own sampler, or conditioning for ComfyUI's native Wan2.1-Fun-InP ``KSampler``.

Two ways to run the release's view-synthesis stage (reference §C, §J7):

* ``MoGe4DLoadViSM`` + ``MoGe4DInpaint``: our loader (Fun-InP base + the MoGe4D LoRA merged at strength 0.55)
  and our sampler (:func:`moge4d_core.pipeline.inpaint.inpaint`); the pixel VAE is ComfyUI's own ``VAE``
  (``VAELoader`` + ``wan_2.1_vae.safetensors``) through :class:`moge4d_core.interop.native_wan.ChannelLastVAE`.
* ``UNETLoader`` (Fun-InP) + ``MoGe4DApplyViSMLoRA`` + ``MoGe4DInpaintConditioning`` + the native ``KSampler``
  + ``VAEDecode``: the same model inputs through ComfyUI's Wan stack (``concat_latent_image`` /
  ``concat_mask``, see :func:`moge4d_core.interop.native_wan.fun_inp_concat_inputs`); ``MoGe4DKeepRendered``
  then does what ``MoGe4DInpaint``'s ``keep_rendered`` does.

The native path reproduces the release's 4D-ViSM with ``ModelSamplingSD3(shift=5)`` + ``KSampler(euler, scheduler
normal, 50 steps, cfg 6, denoise 1)``: ``normal`` with shift 5 is the release's σ grid, and one forward pass of
ComfyUI's Wan model fed by these nodes equals our ``ViSMDiT`` with the LoRA merged (checked in ComfyUI v0.21 on
CPU in fp32: max relative velocity difference 2e-6). What stays different: the noise (``KSampler`` draws it with
ComfyUI's own seeding, so one seed gives other samples than ``MoGe4DInpaint``) and, on a GPU, ComfyUI's dtypes and
attention kernels. ComfyUI's umT5 tokenizer pads prompts to 512 zero tokens, as Wan does. ComfyUI v0.21's own
``LoraLoaderModelOnly`` renames the release's ``lora_unet__`` keys only in some files;
``MoGe4DApplyViSMLoRA`` renames every key and stops on any module that finds no layer
(:mod:`moge4d_core.interop.comfy_lora`).
"""
from __future__ import annotations

import logging

import torch
from comfy_api.latest import io, ui

import comfy.lora
import comfy.model_management as mm
import comfy.utils
import folder_paths
import node_helpers

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.loading.lora import OFFICIAL_STRENGTH, merge_loras
from moge4d_core.loading.wan_dit import load_vism_base
from moge4d_core.models.conditioning import IMAGE_DIM, IMAGE_TOKENS
from moge4d_core.interop.comfy_lora import check_lora_fits, comfy_kohya_state
from moge4d_core.interop.native_wan import ChannelLastVAE, empty_latent, fun_inp_concat_inputs, raw_zero_latent
from moge4d_core.pipeline.inpaint import inpaint, keep_rendered_composite
from moge4d_core.pipeline.settings import SamplerSettings

from . import comfy_types as T
from .comfy_runtime import output_device, progress_callback
from .dit_runtime import dit_for_inference, image_context, load_dit, native_sampler, step_count, text_context
from .models import MODEL_FOLDER, model_files
from .nano import NANO_CHOICE, is_nano, nano_or, nano_path
from .validation import VISM_BASE, VISM_LORA, ModelFile, model_file_problem, resolve_model_file, result
from .widgets import (NONE, cache_input, clip_vision_input, fp8_input, memory_input, native_inputs, offload_input,
                      precision_input, sampler_inputs, speed_inputs, strength_input,
                      text_inputs)

log = logging.getLogger("moge4d")
LORAS_PREFIX = "loras/"
EXTRA_LORA = ModelFile("extra_lora", "second LoRA (e.g. a step-distilled Wan2.1 I2V / InP LoRA)",
                       "loras/<file>.safetensors (ComfyUI's loras folder)", "the LoRA's own page")


def _frames(image: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] < 3:
        raise MoGe4DInputError(f"{name}: expected an IMAGE batch (T,H,W,3), got "
                               f"{tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__}")
    return image[..., :3].float().cpu()


def _holes(mask: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    m = mask.float().cpu()
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise MoGe4DInputError(f"holes: expected a MASK (T,H,W), got {tuple(mask.shape)}")
    if m.shape[0] == 1 and frames.shape[0] > 1:
        m = m.expand(frames.shape[0], -1, -1)
    if tuple(m.shape) != tuple(frames.shape[:3]):
        raise MoGe4DInputError(f"holes: mask {tuple(m.shape)} does not match the render frames "
                               f"{tuple(frames.shape[:3])}; connect the 'holes' output of the same MoGe4D Render")
    return m


# ------------------------------------------------------------------------------------------------ own sampler
class MoGe4DLoadViSM(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MoGe4DLoadViSM",
            display_name="MoGe4D Load 4D-ViSM",
            category="MoGe4D/loaders",
            description="Load the 4D-ViSM inpainting DiT: a Wan2.1-Fun-(V1.1-)14B-InP base (VideoX-Fun or ComfyUI "
                        "repackage, fp8 too) with the MoGe4D LoRA (4D-ViSM/lora_diffusion_pytorch_model.safetensors) "
                        "merged into the weights.",
            search_aliases=["vism", "inpaint model", "fun inp", "4d-vism"],
            inputs=[
                io.Combo.Input("file", options=[NANO_CHOICE] + model_files("Wan2.1-Fun-V1.1-14B-InP"),
                               tooltip="The Wan2.1-Fun-InP base weights in models/moge4d (files under "
                                       "Wan2.1-Fun-V1.1-14B-InP/ first). 'nano (built-in)': the pack's nano 4D-ViSM "
                                       "(trained in full: set lora to 'none'; trained without text), runs on a CPU; "
                                       "ComfyUI's Load Diffusion Model reads the same file "
                                       "(moge4d_nano_vism.safetensors)."),
                io.Combo.Input("lora", options=[NONE] + model_files("4D-ViSM"), default=NONE,
                               tooltip="The 4D-ViSM LoRA (kohya lora_unet__ keys) in models/moge4d; 'none' runs the "
                                       "plain base model."),
                strength_input(),
                precision_input(),
                fp8_input(),
                offload_input(),
                io.Combo.Input("extra_lora", options=[NONE] + lora_choices(), default=NONE, optional=True,
                               tooltip="A second LoRA merged after the ViSM LoRA, e.g. a step-distilled Wan2.1 I2V / "
                                       "InP LoRA for few-step inpainting (then 4 steps, shift 5, CFG 1 on the "
                                       "Inpaint node); kohya, lora_A/lora_B and lora_down/lora_up layouts."),
                io.Float.Input("extra_strength", default=1.0, min=-4.0, max=4.0, step=0.01, optional=True,
                               tooltip="Strength of extra_lora."),
                memory_input(),
                *speed_inputs(),
            ],
            outputs=[T.ViSMModel.Output(display_name="vism_model")],
        )

    @classmethod
    def validate_inputs(cls, file):
        # lora is left to ComfyUI's own list check (a name here would report every problem twice)
        return result(nano_or(file, model_file_problem(file, VISM_BASE, model_files())))

    @classmethod
    def execute(cls, file, lora=NONE, strength=OFFICIAL_STRENGTH, precision="auto", fp8_storage=False,
                block_offload=False, extra_lora=NONE, extra_strength=1.0, memory="auto", attention_backend="native",
                compile=False) -> io.NodeOutput:
        files = model_files()
        path = nano_path("vism") if is_nano(file) else resolve_model_file(file, VISM_BASE, files)
        lora_path = None if lora in (None, "", NONE) else resolve_model_file(lora, VISM_LORA, files)

        def load(dtype, compute_dtype):
            return load_vism_base(path, dtype=dtype, compute_dtype=compute_dtype)

        stack = [(lora_path, float(strength))] if lora_path else []
        if extra_lora not in (None, "", NONE):
            folder, rel = _lora_target(extra_lora)
            stack.append((resolve_model_file(extra_lora, EXTRA_LORA, lora_choices(), folder=folder, display=rel),
                          float(extra_strength)))
        merge = (lambda m: merge_loras(m, stack)) if stack else None
        return io.NodeOutput(load_dit(load, precision=precision, fp8=fp8_storage, offload=block_offload, merge=merge,
                                      memory=memory, attention_backend=attention_backend, compile=compile))


class MoGe4DInpaint(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MoGe4DInpaint",
            display_name="MoGe4D Inpaint (4D-ViSM)",
            category="MoGe4D/inpaint",
            description="Fill the holes of a novel-view render with 4D-ViSM (flow matching with CFG) and decode the "
                        "frames with the Wan2.1 VAE. Frames T = 4k+1, size a multiple of 16.",
            search_aliases=["vism", "inpaint", "novel view", "fill holes", "view synthesis"],
            inputs=[
                T.ViSMModel.Input("vism_model", tooltip="From MoGe4D Load 4D-ViSM."),
                io.Vae.Input("vae", tooltip="The Wan2.1 VAE from VAELoader (wan_2.1_vae.safetensors)."),
                io.Image.Input("render", tooltip="Rendered frames (T,H,W,3) from MoGe4D Render."),
                io.Mask.Input("holes", tooltip="Hole mask (T,H,W), 1 = no point landed (MoGe4D Render 'holes')."),
                *text_inputs("Caption: CLIPTextEncode with CLIPLoader(type=wan)."),
                *sampler_inputs(seed_default=1),
                clip_vision_input("The release uses zero CLIP context for 4D-ViSM, i.e. leave it unconnected."),
                *native_inputs(),
                cache_input(),
                io.Int.Input("keep_rendered", default=0, min=0, max=64, optional=True,
                             tooltip="Keep what the render knows: composite the render back over the inpainted "
                                     "frames wherever a point landed, feathered across this many pixels at hole "
                                     "edges, so only the holes are generated. 0 = off (the release regenerates "
                                     "every pixel); the nano model's demo uses 2."),
            ],
            outputs=[io.Image.Output(display_name="frames", tooltip="Inpainted frames (T,H,W,3) in [0,1].")],
        )

    @classmethod
    def execute(cls, vism_model, vae, render, holes, positive=None, negative=None, steps=50, cfg=6.0, shift=5.0, seed=1,
                solver="euler", clip_vision_output=None, sampler=None, sigmas=None, cache="off",
                keep_rendered=0) -> io.NodeOutput:
        frames = _frames(render, "render")
        mask = _holes(holes, frames)
        settings = SamplerSettings(steps=int(steps), cfg=float(cfg), shift=float(shift), seed=int(seed), solver=solver,
                                   cache=cache)
        native = native_sampler(sampler, sigmas, solver, shift)
        mm.throw_exception_if_processing_interrupted()
        model = dit_for_inference(vism_model)
        out = inpaint(model, ChannelLastVAE(vae), frames, mask, text_context(positive, model, "positive"),
                      text_context(negative, model, "negative"), settings=settings,
                      clip=image_context(clip_vision_output, model), native=native,
                      callback=progress_callback(step_count(settings, native)), keep_rendered=int(keep_rendered))
        return io.NodeOutput(out.to(output_device()))


# ------------------------------------------------------------------------------------------------ native path
def _zero_clip_vision_output():
    """A ComfyUI CLIP vision output whose penultimate tokens are zeros (1,257,1280): the release's ViSM context."""
    import comfy.clip_vision

    out = comfy.clip_vision.Output()
    out.penultimate_hidden_states = torch.zeros(1, IMAGE_TOKENS, IMAGE_DIM)
    return out


class MoGe4DInpaintConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MoGe4DInpaintConditioning",
            display_name="MoGe4D Inpaint Conditioning",
            category="MoGe4D/inpaint",
            description="Conditioning for ComfyUI's KSampler with a native Wan2.1-Fun-InP MODEL (UNETLoader + "
                        "MoGe4D Apply ViSM LoRA): the render with its holes becomes concat_latent_image / concat_mask "
                        "exactly as the release feeds 4D-ViSM (holes mid-gray, packed 'known' mask). Release settings: "
                        "ModelSamplingSD3 shift 5, KSampler euler / normal / 50 steps / cfg 6. Decode the sampled "
                        "LATENT with VAEDecode.",
            search_aliases=["vism", "inpaint conditioning", "fun inp", "wan inpaint", "novel view"],
            inputs=[
                io.Conditioning.Input("positive", tooltip="Caption: CLIPTextEncode with CLIPLoader(type=wan)."),
                io.Conditioning.Input("negative", tooltip="Negative prompt (the release uses an empty one)."),
                io.Vae.Input("vae", tooltip="The Wan2.1 VAE from VAELoader (wan_2.1_vae.safetensors)."),
                io.Image.Input("render", tooltip="Rendered frames (T,H,W,3) from MoGe4D Render; T = 4k+1, size a "
                                                 "multiple of 16."),
                io.Mask.Input("holes", tooltip="Hole mask (T,H,W), 1 = no point landed (MoGe4D Render 'holes')."),
                io.Boolean.Input("zero_clip_vision", default=True,
                                 tooltip="With no clip_vision_output connected: on = all-zero CLIP tokens (the "
                                         "release's ViSM context); off = no CLIP context at all (ComfyUI then skips "
                                         "the image cross-attention, which the release never did)."),
                clip_vision_input("The release uses zero CLIP context for 4D-ViSM (zero_clip_vision on)."),
            ],
            outputs=[
                io.Conditioning.Output(display_name="positive"),
                io.Conditioning.Output(display_name="negative"),
                io.Latent.Output(display_name="latent", tooltip="Empty latent of the video's size for KSampler "
                                                                 "(denoise 1.0)."),
            ],
        )

    @classmethod
    def execute(cls, positive, negative, vae, render, holes, zero_clip_vision=True,
                clip_vision_output=None) -> io.NodeOutput:
        frames = _frames(render, "render")
        mask = _holes(holes, frames)
        pixels, concat_mask, every = fun_inp_concat_inputs(frames, mask)
        t, h, w = mask.shape
        if every:
            concat = raw_zero_latent(t, h, w)
        else:
            concat = vae.encode(pixels)
            if concat.ndim != 5 or concat.shape[1] != 16:
                raise MoGe4DInputError(f"vae: encoded to {tuple(concat.shape)}, expected (1,16,F,h,w); use the "
                                       f"Wan2.1 VAE (wan_2.1_vae.safetensors), not Wan2.2's")
        values = {"concat_latent_image": concat.to(output_device()), "concat_mask": concat_mask.to(output_device())}
        clip = clip_vision_output
        if clip is None and zero_clip_vision:
            clip = _zero_clip_vision_output()
        if clip is not None:
            values["clip_vision_output"] = clip
        positive = node_helpers.conditioning_set_values(positive, values)
        negative = node_helpers.conditioning_set_values(negative, values)
        latent = empty_latent(t, h, w).to(output_device())
        return io.NodeOutput(positive, negative, {"samples": latent})


class MoGe4DKeepRendered(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MoGe4DKeepRendered",
            display_name="MoGe4D Keep Rendered",
            category="MoGe4D/inpaint",
            description="Keep what the render knows after native inpainting (KSampler + VAEDecode): composite the "
                        "render back over the inpainted frames wherever a point landed, feathered at hole edges, so "
                        "only the holes come from the model. The same as MoGe4D Inpaint's keep_rendered. The release "
                        "regenerates every pixel (leave this node out to reproduce it).",
            search_aliases=["keep rendered", "composite render", "paste back", "inpaint composite"],
            inputs=[
                io.Image.Input("images", tooltip="The inpainted frames (T,H,W,3), e.g. from VAEDecode."),
                io.Image.Input("render", tooltip="The render they were conditioned on (MoGe4D Render 'frames')."),
                io.Mask.Input("holes", tooltip="Its hole mask (MoGe4D Render 'holes'), 1 = no point landed."),
                io.Int.Input("width", default=2, min=0, max=64,
                             tooltip="Feather width in pixels at hole edges (0: hard edges). The nano demo uses 2."),
            ],
            outputs=[io.Image.Output(display_name="images", tooltip="Render where points landed, inpainting in "
                                                                   "the holes, blended across the feather.")],
        )

    @classmethod
    def execute(cls, images, render, holes, width=2) -> io.NodeOutput:
        frames = _frames(render, "render")
        out = keep_rendered_composite(_frames(images, "images"), frames, _holes(holes, frames), int(width))
        return io.NodeOutput(out.to(output_device()))


def lora_choices() -> list[str]:
    found = model_files("4D-ViSM")
    try:
        found += [LORAS_PREFIX + f for f in folder_paths.get_filename_list("loras")]
    except KeyError:
        pass
    return found


def _lora_target(name) -> tuple[str, str]:
    """(folder, name inside it) of a LoRA choice: ``loras/x`` is ``x`` in ComfyUI's loras folder unless the
    moge4d folder itself holds ``loras/x``."""
    if isinstance(name, str) and name.startswith(LORAS_PREFIX) and folder_paths.get_full_path(MODEL_FOLDER, name) is None:
        return "loras", name[len(LORAS_PREFIX):]
    return MODEL_FOLDER, name


def _lora_problem(name):
    folder, rel = _lora_target(name)
    return model_file_problem(name, VISM_LORA, lora_choices(), folder=folder, display=rel)


def _lora_path(name: str) -> str:
    folder, rel = _lora_target(name)
    return resolve_model_file(name, VISM_LORA, lora_choices(), folder=folder, display=rel)


class MoGe4DApplyViSMLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MoGe4DApplyViSMLoRA",
            display_name="MoGe4D Apply ViSM LoRA",
            category="MoGe4D/inpaint",
            description="Patch a native Wan2.1-Fun-InP MODEL with the 4D-ViSM LoRA through ComfyUI's LoRA patching "
                        "(the official kohya keys 'lora_unet__…' with a double underscore). Every LoRA module must "
                        "find its layer, else the node stops and names the ones that do not.",
            search_aliases=["vism lora", "moge4d lora", "lora", "fun inp lora"],
            inputs=[
                io.Model.Input("model", tooltip="A Wan2.1-Fun-(V1.1-)14B-InP MODEL from UNETLoader."),
                io.Combo.Input("lora", options=lora_choices(),
                               tooltip="The LoRA file: models/moge4d (4D-ViSM/ first) or models/loras ('loras/…')."),
                strength_input(),
            ],
            outputs=[io.Model.Output(display_name="model")],
        )

    @classmethod
    def validate_inputs(cls, lora):
        return result(_lora_problem(lora))

    @classmethod
    def execute(cls, model, lora, strength=OFFICIAL_STRENGTH) -> io.NodeOutput:
        path = _lora_path(lora)
        renamed, stems = comfy_kohya_state(comfy.utils.load_torch_file(path, safe_load=True), path)
        key_map = comfy.lora.model_lora_keys_unet(model.model, {})
        check_lora_fits(renamed, stems, key_map, model.model_state_dict(), path)
        loaded = comfy.lora.load_lora(renamed, key_map, log_missing=False)
        patched = model.clone()
        applied = patched.add_patches(loaded, float(strength))
        msg = f"MoGe4D ViSM LoRA: {len(applied)} of {len(stems)} modules patched at strength {float(strength):g}"
        log.info("%s (%s)", msg, path)
        return io.NodeOutput(patched, ui=ui.PreviewText(msg))


VISM_NODES = [MoGe4DLoadViSM, MoGe4DInpaint, MoGe4DInpaintConditioning, MoGe4DKeepRendered, MoGe4DApplyViSMLoRA]
