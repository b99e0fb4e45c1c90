"""The render node: a 4D scene along a camera path -> frames, hole mask, depth."""
from __future__ import annotations

import dataclasses

import torch
from comfy_api.latest import io

from moge4d_core.render import render_points, render_trajectories
from moge4d_core.preview import depth_preview

from . import comfy_types as T
from .comfy_runtime import compute_device, output_device, progress_callback


SPLATS = "gaussians (spacing)"
"""Render mode: Gaussians sized to the point spacing (:data:`moge4d_core.pipeline.run.SPLAT_RENDER`)."""


class MoGe4DRender(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MoGe4DRender",
            display_name="MoGe4D Render",
            category="MoGe4D/render",
            description="Render the moving point cloud along a camera path. Holes (pixels no point reaches) "
                        "come out as a MASK for the inpainter.",
            search_aliases=["point cloud render", "splat render", "novel view", "reproject"],
            inputs=[
                T.Trajectories.Input("trajectories", tooltip="The 4D scene (T frames of N points)."),
                T.CameraPath.Input("camera_path", tooltip="One camera per frame (T must match, or be 1)."),
                io.Combo.Input("mode", options=["points", "gaussians", SPLATS], default="points",
                               tooltip="points: hard z-buffer, one splat per point (the official projection "
                                       "renderer). gaussians: each point an isotropic 3D Gaussian of gaussian_scale, "
                                       "alpha-composited. gaussians (spacing): Gaussians sized to the point spacing "
                                       "(first-frame depth / focal), so neighbours touch and holes are real "
                                       "disocclusions (the CLI's --render splats; gaussian_scale unused)."),
                io.Int.Input("point_size", default=1, min=1, max=9,
                             tooltip="points mode: each point covers a k x k pixel footprint."),
                io.Float.Input("gaussian_scale", default=1e-4, min=1e-6, max=1.0, step=1e-5, advanced=True,
                               tooltip="gaussians mode: Gaussian radius in scene units (official 1e-4)."),
                io.Float.Input("opacity", default=1.0, min=0.01, max=1.0, step=0.01, advanced=True,
                               tooltip="gaussians mode: opacity of every Gaussian (official 1.0)."),
            ],
            outputs=[
                io.Image.Output(display_name="frames", tooltip="Rendered colour frames (T,H,W,3)."),
                io.Mask.Output(display_name="holes", tooltip="1 where no point landed (T,H,W)."),
                io.Image.Output(display_name="depth", tooltip="Depth preview: near bright, far dark, holes black."),
            ],
        )

    @classmethod
    def execute(cls, trajectories, camera_path, mode="points", point_size=1, gaussian_scale=1e-4,
                opacity=1.0) -> io.NodeOutput:
        device = compute_device()
        frames = max(trajectories.num_frames, camera_path.num_frames)
        if mode == SPLATS:
            moved = dataclasses.replace(trajectories, points=trajectories.points.to(device),
                                        colors=trajectories.colors.to(device))
            result = render_trajectories(moved, camera_path, mode="gaussians", gaussian_scale="spacing",
                                         opacity=opacity, progress=progress_callback(frames))
        else:
            result = render_points(trajectories.points.to(device), trajectories.colors.to(device), camera_path,
                                   mode=mode, point_size=point_size, gaussian_scale=gaussian_scale, opacity=opacity,
                                   progress=progress_callback(frames))
        out = output_device()
        return io.NodeOutput(result.rgb.float().to(out), result.holes.float().to(out),
                             depth_preview(result.depth, result.holes < 0.5).to(out))


RENDER_NODES = [MoGe4DRender]
