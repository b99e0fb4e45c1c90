"""Trajectory nodes: load 4D-STraG and the motion VAE, sample the motion, de-normalise it to 4D trajectories.

All maths is in :mod:`moge4d_core.pipeline.trajectory` (conditions, sampling, motion VAE decode,
de-normalisation).  Text comes from ComfyUI's native ``CLIPLoader(type=wan)`` + ``CLIPTextEncode``; an optional
``CLIP_VISION_OUTPUT`` gives the CLIP context (not connected = zeros; the released inference used the CLIP
features of a uniform gray-127 image: feed ``CLIPVisionEncode`` of a gray image to reproduce it exactly).
A ComfyUI ``SAMPLER`` (``KSamplerSelect`` ...) and/or ``SIGMAS`` (``BasicScheduler`` needs a MODEL; use
``MoGe4D Flow Scheduler`` or ``OptimalStepsScheduler``) replace the built-in solver and schedule.
"""
from __future__ import annotations

import dataclasses

import torch
from comfy_api.latest import io

import comfy.samplers
import comfy.model_management as mm

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.interop.comfy_sampler import scheduled_sigmas
from moge4d_core.loading.motion_vae import load_motion_vae
from moge4d_core.loading.wan_dit import load_strag
from moge4d_core.pipeline.chain import DEFAULT_OVERLAP, chained_frames, generate_chained
from moge4d_core.pipeline.image_vae import WanImageVAE
from moge4d_core.pipeline.settings import SamplerSettings
from moge4d_core.pipeline.trajectory import NORMALIZATIONS, TrajectoryOptions, denormalize, generate_motion
from moge4d_core.preview import motion_preview

from . import comfy_types as T
from .comfy_runtime import compute_device, output_device, progress_callback
from .dit_runtime import (dit_for_inference, flow_model_sampling, image_context, load_dit, native_sampler, step_count,
                          text_context)
from .models import model_files, model_for_inference, resolve_dtype, wrap_model
from .nano import NANO_CHOICE, is_nano, nano_or, nano_path
from .widgets import (NONE, cache_input, clip_vision_input, fp8_input, memory_input, native_inputs, offload_input,
                      precision_input, sampler_inputs, speed_inputs, text_inputs)
from .validation import (MOTION_VAE, STRAG, STRAG_BASE, frames_problem, model_file_problem, resolve_model_file,
                         result, widget_problem)

VAE_PARTS = ("encoder_prompt", "decoder_prompt", "vae")


def _optional_path(name: str, spec, choices: list[str]):
    """None for 'none' (or no value), else the resolved listed model file."""
    return None if name in (None, "", NONE) else resolve_model_file(name, spec, choices)


# ------------------------------------------------------------------------------------------------ loaders
class MoGe4DLoadSTraG(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MoGe4DLoadSTraG",
            display_name="MoGe4D Load 4D-STraG",
            category="MoGe4D/loaders",
            description="Load the 4D-STraG trajectory DiT (4D-STraG/diffusion_pytorch_model.safetensors of the "
                        "release, a ComfyUI repackage incl. fp8, or a MoGe4D training output) from models/moge4d.",
            search_aliases=["strag", "trajectory model", "moge4d model", "4d-strag"],
            inputs=[
                io.Combo.Input("file", options=[NANO_CHOICE] + model_files("4D-STraG"),
                               tooltip="The 4D-STraG checkpoint in ComfyUI's models/moge4d folder (files under "
                                       "4D-STraG/ first). 'nano (built-in)': the pack's nano model (96x64, 17 "
                                       "frames, trained without text), runs on a CPU with no download."),
                io.Combo.Input("base_control", options=[NONE] + model_files("Wan2.1-Fun-V1.1-14B-Control"),
                               default=NONE, advanced=True,
                               tooltip="Optional Wan2.1-Fun-V1.1-14B-Control weights: tensors missing from the STraG "
                                       "file are taken from it (as the official loader does). 'none' for a full file."),
                precision_input(),
                fp8_input(),
                offload_input(),
                io.Boolean.Input("mpm", default=True,
                                 tooltip="Keep the Motion Perception Module when the file has its weights (needs "
                                         "MoGe4D Motion Features). Off drops it (the official inference runs without)."),
                memory_input(),
                *speed_inputs(),
            ],
            outputs=[T.StragModel.Output(display_name="strag_model")],
        )

    @classmethod
    def validate_inputs(cls, file):
        # base_control is left to ComfyUI's own list check (a name here would report every problem twice)
        return result(nano_or(file, model_file_problem(file, STRAG, model_files())))

    @classmethod
    def execute(cls, file, base_control=NONE, precision="auto", fp8_storage=False, block_offload=False,
                mpm=True, memory="auto", attention_backend="native",
                compile=False) -> io.NodeOutput:
        files = model_files()
        path = nano_path("strag") if is_nano(file) else resolve_model_file(file, STRAG, files)
        base = _optional_path(base_control, STRAG_BASE, files)

        def load(dtype, compute_dtype):
            # the OmniMAE loader node reads the omnimae_extractor.* tensors from the file itself
            return load_strag(path, dtype=dtype, compute_dtype=compute_dtype, base=base, mpm=mpm,
                              keep_omnimae=False)

        return io.NodeOutput(load_dit(load, precision=precision, fp8=fp8_storage, offload=block_offload,
                                      memory=memory, attention_backend=attention_backend, compile=compile))


def motion_vae_choices() -> list[str]:
    """Release-layout folders (holding encoder_prompt/, decoder_prompt/, vae/) as ``<folder>/``, then our
    motion-VAE safetensors."""
    files = model_files()
    folders = []
    for f in files:
        parts = f.split("/")
        for i, p in enumerate(parts[:-1]):
            if p in VAE_PARTS and i > 0:
                folders.append("/".join(parts[:i]) + "/")
                break
    folders = sorted(set(folders), key=lambda s: (not s.lower().startswith("vae"), s))
    singles = [f for f in files if f.endswith(".safetensors") and not any(f.startswith(d) for d in folders)]
    singles.sort(key=lambda s: ("vae" not in s.lower(), s))
    return folders + singles


def _motion_vae_path(name: str) -> str:
    return resolve_model_file(name, MOTION_VAE, motion_vae_choices())


class MoGe4DLoadMotionVAE(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MoGe4DLoadMotionVAE",
            display_name="MoGe4D Load Motion VAE",
            category="MoGe4D/loaders",
            description="Load the motion-sensitive VAE: the release's VAE/ folder (encoder_prompt/, decoder_prompt/, "
                        "vae/) or a MoGe4D motion-VAE safetensors. Its encoder (the base Wan2.1 one) also encodes "
                        "the trajectory sampler's image and depth conditions.",
            search_aliases=["motion vae", "trajectory vae", "moge4d vae"],
            inputs=[
                io.Combo.Input("vae", options=[NANO_CHOICE] + motion_vae_choices(),
                               tooltip="A folder in models/moge4d holding encoder_prompt/, decoder_prompt/ and vae/ "
                                       "(listed as 'VAE/'), or a motion-VAE safetensors of ours. 'nano (built-in)': "
                                       "the pack's nano motion VAE (goes with the nano 4D-STraG)."),
                precision_input(),
            ],
            outputs=[T.MotionVAE.Output(display_name="motion_vae")],
        )

    @classmethod
    def validate_inputs(cls, vae):
        return result(nano_or(vae, model_file_problem(vae, MOTION_VAE, motion_vae_choices())))

    @classmethod
    def execute(cls, vae, precision="auto") -> io.NodeOutput:
        path = nano_path("motion_vae") if is_nano(vae) else _motion_vae_path(vae)
        device, offload = compute_device(), mm.unet_offload_device()
        dtype = resolve_dtype(precision, device)
        model = load_motion_vae(path, dtype=dtype, device=offload)
        return io.NodeOutput(wrap_model(model, device, offload))


# ------------------------------------------------------------------------------------------------ sampling
class MoGe4DTrajectorySampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MoGe4DTrajectorySampler",
            display_name="MoGe4D Trajectory Sampler",
            category="MoGe4D/trajectory",
            description="Generate the normalised 3D motion of every pixel of the first frame with 4D-STraG "
                        "(flow matching with CFG on the text), decoded by the motion VAE. Output: MOGE4D_MOTION "
                        "(de-normalise it with MoGe4D Denormalize) and a motion preview.",
            search_aliases=["strag", "trajectories", "4d motion", "animate image", "point trajectories"],
            inputs=[
                T.StragModel.Input("strag_model", tooltip="From MoGe4D Load 4D-STraG."),
                T.MotionVAE.Input("motion_vae", tooltip="From MoGe4D Load Motion VAE."),
                T.Geometry.Input("geometry", tooltip="First-frame image + depth + camera (MoGe4D Depth, Geometry "
                                                     "from MoGe / Depth); size a multiple of 16 (release 512x368)."),
                *text_inputs("Caption of the scene and its motion: CLIPTextEncode with CLIPLoader(type=wan, umt5_xxl)."),
                io.Int.Input("frames", default=49, min=5, max=401, step=4,
                             tooltip="Number of frames T = 4k+1 (release 49); with windows > 1, the frames of each "
                                     "window."),
                *sampler_inputs(),
                io.Combo.Input("normalization", options=list(NORMALIZATIONS), default="official",
                               tooltip="How the motion is (de)normalised by depth: official = the release's fixed "
                                       "pseudo-intrinsics (what the released weights learned); real_k = the "
                                       "geometry's own camera (the paper's formula)."),
                io.Boolean.Input("reference", default=True,
                                 tooltip="Feed the image to the reference tokens (official inference). Off = zero "
                                         "reference, as in official training."),
                io.Image.Input("image", optional=True,
                               tooltip="Optional colour image replacing the geometry's (same size as the geometry, "
                                       "first of the batch)."),
                T.MotionFeatures.Input("motion_features", optional=True,
                                       tooltip="Optional OmniMAE features (MoGe4D Motion Features) for the Motion "
                                               "Perception Module; needs a checkpoint with MPM weights."),
                clip_vision_input("The release used the CLIP features of a uniform gray (127) image: connect "
                                  "CLIPVisionEncode of a gray image of the working size to reproduce it."),
                *native_inputs(),
                io.Int.Input("windows", default=1, min=1, max=64, optional=True,
                             tooltip="Chained generation: run this many windows of `frames` one after another, each "
                                     "started from the previous window's points drawn from the first camera (image "
                                     "and depth), for a scene of frames + (windows-1)*(frames-1-overlap) frames. "
                                     "1 = one window (as before). Connect the motion to MoGe4D Denormalize as usual."),
                io.Int.Input("overlap", default=DEFAULT_OVERLAP, min=0, max=200, optional=True,
                             tooltip="Chained generation: frames after each seam in which the two windows' motions "
                                     "are cross-faded (0 .. (frames-1)/2). Ignored for one window."),
                cache_input(),
            ],
            outputs=[
                T.Motion.Output(display_name="motion"),
                io.Image.Output(display_name="preview", tooltip="Motion direction as colour, brightness = magnitude "
                                                                "(T frames)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, frames=49):
        return result(widget_problem(cls, frames=frames) or frames_problem(frames))

    @classmethod
    def execute(cls, strag_model, motion_vae, geometry, positive=None, negative=None, frames=49, steps=50, cfg=6.0, shift=5.0,
                seed=0, solver="euler", normalization="official", reference=True, image=None, motion_features=None,
                clip_vision_output=None, sampler=None, sigmas=None, windows=1,
                overlap=DEFAULT_OVERLAP, cache="off") -> io.NodeOutput:
        if image is not None:
            img = image[0] if image.ndim == 4 else image
            if tuple(img.shape[:2]) != (geometry.height, geometry.width):
                raise MoGe4DInputError(
                    f"image: size {img.shape[1]}x{img.shape[0]} (WxH) differs from the geometry "
                    f"{geometry.width}x{geometry.height}; resize the image (e.g. ImageScale) or the geometry "
                    f"(width/height of the depth node) so both match")
            geometry = dataclasses.replace(geometry, image=img[..., :3].float().cpu())
        options = TrajectoryOptions(frames=int(frames), normalization=normalization, reference=bool(reference),
                                    mpm=True)
        settings = SamplerSettings(steps=int(steps), cfg=float(cfg), shift=float(shift), seed=int(seed), solver=solver,
                                   cache=cache)
        native = native_sampler(sampler, sigmas, solver, shift)
        mm.throw_exception_if_processing_interrupted()
        model = dit_for_inference(strag_model)
        pos = text_context(positive, model, "positive")
        neg = text_context(negative, model, "negative")
        clip = image_context(clip_vision_output, model)
        mvae = model_for_inference(motion_vae)
        if int(windows) > 1:
            # every window gets the first image's OmniMAE features (the sampler has no OmniMAE model to redo them)
            total = chained_frames(int(frames), int(windows), int(overlap))    # refuses an overlap too long
            steps_per = step_count(settings, native)
            bar = progress_callback(int(windows) * steps_per)
            motion = generate_chained(model, mvae, WanImageVAE.from_motion_vae(mvae), geometry, pos, neg,
                                      frames=total, overlap=int(overlap), settings=settings, options=options,
                                      clip=clip, native=native,
                                      motion_features=None if motion_features is None else lambda g: motion_features,
                                      callback=lambda k, n, d, t: bar((k - 1) * steps_per + d, n * steps_per))
        else:
            motion = generate_motion(model, mvae, WanImageVAE.from_motion_vae(mvae), geometry, pos, neg,
                                     settings=settings, options=options, clip=clip, motion_features=motion_features,
                                     native=native, callback=progress_callback(step_count(settings, native)))
        return io.NodeOutput(motion, motion_preview(motion).to(output_device()))


class MoGe4DDenormalize(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MoGe4DDenormalize",
            display_name="MoGe4D Denormalize",
            category="MoGe4D/trajectory",
            description="Turn the sampled normalised motion into metric 4D trajectories: P_t = P0 + ΔP_t with "
                        "ΔX = Δx̂·z0/fx, ΔY = Δŷ·z0/fy, ΔZ = Δẑ·z0 (the step the official inference omits). World = "
                        "first-frame camera (OpenCV axes).",
            search_aliases=["denormalize", "trajectories", "4d points", "motion to points"],
            inputs=[
                T.Motion.Input("motion", tooltip="From MoGe4D Trajectory Sampler."),
                io.Float.Input("fps", default=8.0, min=0.1, max=240.0, step=0.1,
                               tooltip="Frame rate stored with the trajectories (the release's videos are 8 fps)."),
            ],
            outputs=[T.Trajectories.Output(display_name="trajectories")],
        )

    @classmethod
    def execute(cls, motion, fps=8.0) -> io.NodeOutput:
        return io.NodeOutput(denormalize(motion, fps=float(fps)))


class MoGe4DFlowScheduler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MoGe4DFlowScheduler",
            display_name="MoGe4D Flow Scheduler",
            category="MoGe4D/sampling",
            description="ComfyUI's schedulers (simple, beta, normal, ...) for a flow-matching model with a shift, "
                        "without a MODEL input: BasicScheduler for the MoGe4D samplers' SIGMAS input.",
            search_aliases=["sigmas", "scheduler", "flow schedule", "shift"],
            inputs=[
                io.Combo.Input("scheduler", options=list(comfy.samplers.SCHEDULER_NAMES), default="normal",
                               tooltip="ComfyUI scheduler; 'normal' with shift 5 is exactly the release's σ grid "
                                       "(diffusers FlowMatchEuler, shift 5)."),
                io.Int.Input("steps", default=50, min=1, max=1000, tooltip="Number of steps."),
                io.Float.Input("shift", default=5.0, min=0.01, max=100.0, step=0.1,
                               tooltip="Flow sigma shift (release 5.0)."),
                io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the schedule to run (1 = from pure noise)."),
            ],
            outputs=[io.Sigmas.Output(display_name="sigmas")],
        )

    @classmethod
    def execute(cls, scheduler="normal", steps=50, shift=5.0, denoise=1.0) -> io.NodeOutput:
        if denoise <= 0.0:
            return io.NodeOutput(torch.FloatTensor([]))
        model_sampling = flow_model_sampling(shift)
        return io.NodeOutput(scheduled_sigmas(
            lambda n: comfy.samplers.calculate_sigmas(model_sampling, scheduler, n), steps, denoise))


STRAG_NODES = [MoGe4DLoadSTraG, MoGe4DLoadMotionVAE, MoGe4DTrajectorySampler, MoGe4DDenormalize, MoGe4DFlowScheduler]
