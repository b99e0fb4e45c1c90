"""Nodes that bring the rest of the shipped nano model (``moge4d_core/nano_model/``) into a graph.

* ``MoGe4DNanoDemoInput``: the nano demo's image and its shipped depth as ``IMAGE`` + ``MOGE4D_GEOMETRY``, built
  exactly as ``python -m moge4d_core demo`` builds them (``demo.json``: image, depth, field of view; metric depth).
* ``MoGe4DLoadWanVAE``: the nano pixel VAE (a diffusers ``AutoencoderKLWan`` at nano size, not a file ComfyUI's
  ``VAELoader`` can build) as a ``VAE`` with ComfyUI's calling convention, for MoGe4D Inpaint's ``vae`` input.
"""
from __future__ import annotations

import torch
from comfy_api.latest import io

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.interop.native_wan import ComfyStyleWanVAE
from moge4d_core.loading.motion_vae import load_wan_vae
from moge4d_core.pipeline.nano import demo_input

from . import comfy_types as T
from .comfy_runtime import output_device
from .nano import NANO_CHOICE, nano_path


class MoGe4DNanoDemoInput(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MoGe4DNanoDemoInput",
            display_name="MoGe4D Nano Demo Input",
            category="MoGe4D/geometry",
            description="The nano model's demo input (moge4d_core/nano_model/): its synthetic test image (96x64) and "
                        "the shipped metric depth with its field of view, as the CLI's `demo` uses them. No files "
                        "needed; for your own photo use LoadImage + MoGe4D Depth or Geometry from Depth.",
            search_aliases=["nano demo", "demo image", "example input", "cpu demo"],
            inputs=[],
            outputs=[
                io.Image.Output(display_name="image", tooltip="The demo image (1,64,96,3)."),
                T.Geometry.Output(display_name="geometry",
                                  tooltip="Image + metric depth + camera (demo.json's field of view)."),
            ],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        image, geometry = demo_input()
        return io.NodeOutput(image[None].to(output_device()), geometry)


class MoGe4DLoadWanVAE(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MoGe4DLoadWanVAE",
            display_name="MoGe4D Load Wan VAE",
            category="MoGe4D/loaders",
            description="The nano model's pixel VAE (a Wan2.1-architecture VAE at nano size) as a VAE for MoGe4D "
                        "Inpaint. For the released models load wan_2.1_vae.safetensors with ComfyUI's Load VAE.",
            search_aliases=["nano vae", "wan vae", "pixel vae"],
            inputs=[
                io.Combo.Input("file", options=[NANO_CHOICE],
                               tooltip="'nano (built-in)': the pack's nano pixel VAE (moge4d_core/nano_model/"
                                       "vae.safetensors), runs on a CPU. Use it with the nano 4D-ViSM only."),
            ],
            outputs=[io.Vae.Output(display_name="vae", tooltip="For MoGe4D Inpaint's vae input.")],
        )

    @classmethod
    def execute(cls, file=NANO_CHOICE) -> io.NodeOutput:
        if file != NANO_CHOICE:
            raise MoGe4DInputError(f"file: {file!r} is not offered; choose {NANO_CHOICE!r} (for the Wan2.1 VAE use "
                                   f"ComfyUI's Load VAE)")
        return io.NodeOutput(ComfyStyleWanVAE(load_wan_vae(nano_path("vae"), dtype=torch.float32)))


NANO_NODES = [MoGe4DNanoDemoInput, MoGe4DLoadWanVAE]
