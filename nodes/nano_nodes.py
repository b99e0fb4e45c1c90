"""Nodes that bring the rest of the shipped nano model (``moge4d_core/nano_model/``) into a graph.

* ``MoGe4DNanoDemoInput``: the nano demo's image and its shipped depth as ``IMAGE`` + ``MOGE4D_GEOMETRY``, built
  exactly as ``python -m moge4d_core demo`` builds them (``demo.json``: image, depth, field of view; metric depth).
* ``MoGe4DLoadWanVAE``: the nano pixel VAE (a diffusers ``AutoencoderKLWan`` at nano size, not a file ComfyUI's
  ``VAELoader`` can build) as a ``VAE`` with ComfyUI's calling convention, for MoGe4D Inpaint's ``vae`` input.
"""
from __future__ import annotations

import json

import torch
from comfy_api.latest import io

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.geometry.sources import geometry_from_depth
from moge4d_core.io.images import read_depth, read_image
from moge4d_core.loading.motion_vae import load_wan_vae
from moge4d_core.pipeline.nano import NANO_DIR

from . import comfy_types as T
from .comfy_runtime import output_device
from .nano import NANO_CHOICE, nano_path


def nano_demo_spec() -> dict:
    """The nano demo's ``demo.json`` (image and depth file names, ``fov_deg``, settings)."""
    spec_file = NANO_DIR / "demo.json"
    if not spec_file.is_file():
        raise MoGe4DInputError(f"{spec_file}: the nano model files are missing; reinstall the pack")
    spec = json.loads(spec_file.read_text())
    missing = [k for k in ("image", "depth", "fov_deg") if k not in spec]
    if missing:
        raise MoGe4DInputError(f"{spec_file}: no {', '.join(missing)}; reinstall the pack")
    return spec


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
        spec = nano_demo_spec()
        image = read_image(NANO_DIR / spec["image"], "nano demo image")
        depth = read_depth(NANO_DIR / spec["depth"], metric=True, what="nano demo depth")
        geometry = geometry_from_depth(image, depth[..., None].expand(*depth.shape, 3), float(spec["fov_deg"]),
                                       depth_kind="metric")
        return io.NodeOutput(image[None].to(output_device()), geometry)


class ComfyStyleWanVAE:
    """A diffusers ``AutoencoderKLWan`` behind ComfyUI's ``VAE`` calling convention (``comfy/sd.py``, v0.21).

    ``encode(pixels (T,H,W,3) [0,1])`` -> raw posterior mean ``(1,16,F,H/8,W/8)``;
    ``decode(raw latent (1,16,F,h,w))`` -> ``(1,T,H,W,3)`` in [0,1]. Runs where the VAE's weights are (CPU).
    """

    def __init__(self, vae: torch.nn.Module) -> None:
        self.vae = vae
        self.load_info = getattr(vae, "load_info", None)

    def _param(self) -> torch.Tensor:
        return next(self.vae.parameters())

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        if not isinstance(pixels, torch.Tensor) or pixels.ndim != 4 or pixels.shape[-1] < 3:
            raise MoGe4DInputError(f"vae: encode takes IMAGE frames (T,H,W,3), got "
                                   f"{tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__}")
        p = self._param()
        video = (pixels[..., :3].float() * 2 - 1).permute(3, 0, 1, 2)[None]            # (1,3,T,H,W) [-1,1]
        return self.vae.encode(video.to(p.device, p.dtype)).latent_dist.mode().float().cpu()

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        p = self._param()
        video = self.vae.decode(latent.to(p.device, p.dtype)).sample.float().clamp(-1, 1)
        return ((video + 1) / 2).permute(0, 2, 3, 4, 1).cpu()                          # (1,T,H,W,3) [0,1]


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
