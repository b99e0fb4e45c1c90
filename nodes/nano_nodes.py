"""Nodes that bring the rest of the shipped nano model (``moge4d_core/nano_model/``) into a graph.

* ``MoGe4DNanoDemoInput``: the nano demo's image and its shipped depth as ``IMAGE`` + ``MOGE4D_GEOMETRY``, built
  exactly as ``python -m moge4d_core demo`` builds them (``demo.json``: image, depth, field of view; metric depth).
* ``MoGe4DEmptyText``: the all-zero text CONDITIONING a model trained without text runs on
  (:func:`moge4d_core.interop.conditioning.empty_text_conditioning`), for ComfyUI's own ``KSampler`` with the nano
  4D-ViSM, without the umT5 download. The nano ViSM and pixel VAE themselves load in ComfyUI's ``UNETLoader`` /
  ``VAELoader`` (:mod:`.nano`).
"""
from __future__ import annotations

from comfy_api.latest import io

from moge4d_core.interop.conditioning import empty_text_conditioning
from moge4d_core.pipeline.nano import demo_input

from . import comfy_types as T
from .comfy_runtime import output_device


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


class MoGe4DEmptyText(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MoGe4DEmptyText",
            display_name="MoGe4D Empty Text",
            category="MoGe4D/conditioning",
            description="An all-zero text CONDITIONING (one token, 4096 wide: umT5-XXL's width) for models trained "
                        "without text, such as the nano 4D-ViSM in ComfyUI's KSampler: no text changes such a "
                        "model's output, and this needs no umT5 download. Models that read text (the release) "
                        "need CLIPTextEncode with CLIPLoader(type=wan).",
            search_aliases=["empty text", "zero conditioning", "no prompt", "nano text"],
            inputs=[],
            outputs=[io.Conditioning.Output(display_name="conditioning",
                                            tooltip="For KSampler / MoGe4D Inpaint Conditioning positive and "
                                                    "negative with a model trained without text.")],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        return io.NodeOutput(empty_text_conditioning())


NANO_NODES = [MoGe4DNanoDemoInput, MoGe4DEmptyText]
