"""Encoder nodes: UniDepth depth + camera, geometry from MoGe or any depth image, OmniMAE motion features.

Models come from the ``moge4d`` model folder (``models/moge4d``, sub-folders ``unidepth/`` and ``omnimae/``
are listed first) and run under ComfyUI's model management (``ModelPatcher`` + ``load_models_gpu``).
All maths lives in ``moge4d_core.geometry.sources`` and the core models.

Batches: ``MoGe4DDepth`` runs every image of an IMAGE batch (progress bar, Cancel between images) and returns
the depth previews / confidences of all of them, but the ``MOGE4D_GEOMETRY`` output is the *first* image's
geometry (MoGe4D animates one first frame; pick another frame with ComfyUI's image batch nodes).
``MoGe4DMotionFeatures`` likewise encodes the first image.
"""
from __future__ import annotations

import torch
from comfy_api.latest import io

from moge4d_core.geometry.sources import (DEFAULT_HEIGHT, DEFAULT_WIDTH, DEPTH_KINDS, as_rgb, geometry_from_depth,
                                          geometry_from_moge, resize_geometry, with_official_intrinsics)
from moge4d_core.preview import depth_preview, token_norm_preview
from moge4d_core.loading.omnimae import load_omnimae
from moge4d_core.loading.unidepth import load_unidepth
from moge4d_core.pipeline.run import estimate_geometry, motion_features_of

import comfy.model_management as mm

from . import comfy_types as T
from .comfy_runtime import compute_device, output_device, progress_callback
from .models import PRECISIONS, model_files, model_for_inference, resolve_dtype, wrap_model
from .validation import (OMNIMAE, UNIDEPTH, ModelFile, model_file_problem, resolve_model_file, result, widget_problem,
                         working_size_problem)

INTRINSICS = ["predicted", "official_pseudo"]


def _size_inputs():
    return [
        io.Int.Input("width", default=DEFAULT_WIDTH, min=0, max=4096, step=16,
                     tooltip="Working width (multiple of 16; the release uses 512). 0 with height 0 keeps the "
                             "input size. Depth is min-pooled so edges do not create flying points."),
        io.Int.Input("height", default=DEFAULT_HEIGHT, min=0, max=4096, step=16,
                     tooltip="Working height (multiple of 16; the release uses 368). 0 with width 0 keeps the "
                             "input size."),
    ]


def _validate_size(cls, width, height):
    return result(widget_problem(cls, width=width, height=height) or working_size_problem(width, height))


def _working_size(geom, width: int, height: int):
    if width == 0 and height == 0:
        return geom
    return resize_geometry(geom, width, height)


def _preview(geom) -> torch.Tensor:
    return depth_preview(geom.depth, geom.valid)[None].to(output_device())


def _loader_inputs(subfolder: str, what: str):
    return [
        io.Combo.Input("file", options=model_files(subfolder),
                       tooltip=f"{what} weights in ComfyUI's models/moge4d folder (or a 'moge4d' path of "
                               f"extra_model_paths.yaml); files under {subfolder}/ are listed first."),
        io.Combo.Input("precision", options=PRECISIONS, default="auto",
                       tooltip="Weight dtype. auto = what ComfyUI's model management picks for this device."),
    ]


def _load(loader, file: str, precision: str, spec: ModelFile):
    path = resolve_model_file(file, spec, model_files())
    load_device = compute_device()
    offload = mm.unet_offload_device()
    dtype = resolve_dtype(precision, load_device)
    model = loader(path, dtype, offload)
    return wrap_model(model, load_device, offload)


class MoGe4DLoadUniDepth(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MoGe4DLoadUniDepth",
            display_name="MoGe4D Load UniDepth",
            category="MoGe4D/loaders",
            description="Load UniDepthV2 / V2old (metric depth + camera) from models/moge4d.",
            search_aliases=["unidepth", "metric depth", "depth model"],
            inputs=_loader_inputs("unidepth", "UniDepth"),
            outputs=[T.UniDepth.Output(display_name="unidepth")],
        )

    @classmethod
    def validate_inputs(cls, file):
        return result(model_file_problem(file, UNIDEPTH, model_files()))

    @classmethod
    def execute(cls, file, precision="auto") -> io.NodeOutput:
        return io.NodeOutput(_load(lambda p, dt, dev: load_unidepth(p, dtype=dt, device=dev), file, precision,
                                   UNIDEPTH))


class MoGe4DDepth(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MoGe4DDepth",
            display_name="MoGe4D Depth (UniDepth)",
            category="MoGe4D/geometry",
            description="Metric depth and camera of the first frame with UniDepth, resampled to the working "
                        "resolution. A batch is processed image by image; the geometry output is the first "
                        "image's, the previews and confidences cover the whole batch.",
            search_aliases=["depth", "unidepth", "geometry", "point cloud"],
            inputs=[
                T.UniDepth.Input("unidepth", tooltip="A model from MoGe4D Load UniDepth."),
                io.Image.Input("image", tooltip="Image batch (B,H,W,3); the first image becomes the geometry."),
                io.Int.Input("resolution_level", default=-1, min=-1, max=10,
                             tooltip="UniDepth's network resolution (V2 0..9, V2old 0..10); -1 = the model default."),
                io.Float.Input("fov_override", default=0.0, min=0.0, max=179.0, step=0.5,
                               tooltip="Known horizontal field of view in degrees; 0 = use the predicted camera."),
                *_size_inputs(),
                io.Combo.Input("intrinsics", options=INTRINSICS, default="predicted",
                               tooltip="predicted: the camera UniDepth predicts (or fov_override). official_pseudo: "
                                       "the released MoGe4D checkpoint's fixed pseudo-intrinsics (matches the "
                                       "official demo)."),
            ],
            outputs=[
                T.Geometry.Output(display_name="geometry"),
                io.Image.Output(display_name="depth_preview", tooltip="Inverse depth, near = bright, per image."),
                io.Mask.Output(display_name="confidence", tooltip="UniDepth confidence scaled to [0,1], per image."),
            ],
        )

    @classmethod
    def validate_inputs(cls, width=DEFAULT_WIDTH, height=DEFAULT_HEIGHT):
        return _validate_size(cls, width, height)

    @classmethod
    def execute(cls, unidepth, image, resolution_level=-1, fov_override=0.0, width=DEFAULT_WIDTH,
                height=DEFAULT_HEIGHT, intrinsics="predicted") -> io.NodeOutput:
        model = model_for_inference(unidepth)
        images = image if image.ndim == 4 else image[None]
        n = int(images.shape[0])
        progress = progress_callback(n)
        first, previews, confs = None, [], []
        for b in range(n):
            progress(b, n)
            est = estimate_geometry(model, as_rgb(images[b], "image"), width, height, fov_deg=fov_override,
                                    resolution_level=None if resolution_level < 0 else int(resolution_level))
            geom = with_official_intrinsics(est.geometry) if intrinsics == "official_pseudo" else est.geometry
            first = geom if first is None else first
            previews.append(depth_preview(geom.depth, geom.valid))
            confs.append(est.confidence)
        progress(n, n)
        out = output_device()
        return io.NodeOutput(first, torch.stack(previews).to(out), torch.stack(confs).to(out))


class MoGe4DGeometryFromMoGe(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MoGe4DGeometryFromMoGe",
            display_name="MoGe4D Geometry from MoGe",
            category="MoGe4D/geometry",
            description="Use ComfyUI's MoGe output (MOGE_GEOMETRY) as the first-frame geometry.",
            search_aliases=["moge", "moge geometry", "depth"],
            inputs=[
                T.MoGeGeometry.Input("moge_geometry", tooltip="MOGE_GEOMETRY from ComfyUI's MoGe nodes."),
                io.Int.Input("index", default=0, min=0, max=4096, tooltip="Which image of the batch to use."),
                io.Boolean.Input("metric", default=True,
                                 tooltip="On for MoGe-2 (metric depth), off for MoGe-1 (relative depth)."),
                *_size_inputs(),
            ],
            outputs=[T.Geometry.Output(display_name="geometry"),
                     io.Image.Output(display_name="depth_preview", tooltip="Inverse depth, near = bright.")],
        )

    @classmethod
    def validate_inputs(cls, width=DEFAULT_WIDTH, height=DEFAULT_HEIGHT):
        return _validate_size(cls, width, height)

    @classmethod
    def execute(cls, moge_geometry, index=0, metric=True, width=DEFAULT_WIDTH, height=DEFAULT_HEIGHT) -> io.NodeOutput:
        geom = _working_size(geometry_from_moge(moge_geometry, index, metric=metric), width, height)
        return io.NodeOutput(geom, _preview(geom))


class MoGe4DGeometryFromDepth(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MoGe4DGeometryFromDepth",
            display_name="MoGe4D Geometry from Depth",
            category="MoGe4D/geometry",
            description="Geometry from an image, any depth image (channel 0) and a field of view. Relative "
                        "inverse depth (DepthAnything: bright = near) is mapped to z in [near, far].",
            search_aliases=["depth anything", "depth map", "geometry"],
            inputs=[
                io.Image.Input("image", tooltip="The colour image (first of the batch)."),
                io.Image.Input("depth", tooltip="Depth image; channel 0 is read (first of the batch)."),
                io.Float.Input("fov", default=60.0, min=1.0, max=179.0, step=0.5,
                               tooltip="Horizontal field of view of the camera in degrees."),
                io.Combo.Input("depth_kind", options=list(DEPTH_KINDS), default="relative_inverse",
                               tooltip="metric: values are z in scene units. relative_inverse: disparity, bright = "
                                       "near (DepthAnything). relative: bright = far."),
                io.Float.Input("near", default=1.0, min=0.001, max=10000.0, step=0.1,
                               tooltip="Depth of the nearest pixel for relative kinds."),
                io.Float.Input("far", default=10.0, min=0.002, max=100000.0, step=0.1,
                               tooltip="Depth of the farthest pixel for relative kinds."),
                *_size_inputs(),
            ],
            outputs=[T.Geometry.Output(display_name="geometry"),
                     io.Image.Output(display_name="depth_preview", tooltip="Inverse depth, near = bright.")],
        )

    @classmethod
    def validate_inputs(cls, width=DEFAULT_WIDTH, height=DEFAULT_HEIGHT):
        return _validate_size(cls, width, height)

    @classmethod
    def execute(cls, image, depth, fov=60.0, depth_kind="relative_inverse", near=1.0, far=10.0,
                width=DEFAULT_WIDTH, height=DEFAULT_HEIGHT) -> io.NodeOutput:
        geom = geometry_from_depth(image[:1] if image.ndim == 4 else image, depth[:1] if depth.ndim == 4 else depth,
                                   fov, depth_kind=depth_kind, near=near, far=far)
        geom = _working_size(geom, width, height)
        return io.NodeOutput(geom, _preview(geom))


class MoGe4DLoadOmniMAE(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MoGe4DLoadOmniMAE",
            display_name="MoGe4D Load OmniMAE",
            category="MoGe4D/loaders",
            description="Load the OmniMAE ViT-B motion encoder: omnimae/vitb_pretrain.torch, or a 4D-STraG file "
                        "to use its trained omnimae_extractor (what the released model was trained with).",
            search_aliases=["omnimae", "motion encoder", "mpm"],
            inputs=_loader_inputs("omnimae", "OmniMAE"),
            outputs=[T.OmniMAE.Output(display_name="omnimae")],
        )

    @classmethod
    def validate_inputs(cls, file):
        return result(model_file_problem(file, OMNIMAE, model_files()))

    @classmethod
    def execute(cls, file, precision="auto") -> io.NodeOutput:
        return io.NodeOutput(_load(lambda p, dt, dev: load_omnimae(p, dtype=dt, device=dev), file, precision,
                                   OMNIMAE))


class MoGe4DMotionFeatures(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MoGe4DMotionFeatures",
            display_name="MoGe4D Motion Features",
            category="MoGe4D/geometry",
            description="OmniMAE patch tokens (14x14) of the first image for the Motion Perception Module, with a "
                        "heat map of the per-token feature norm.",
            search_aliases=["omnimae", "motion features"],
            inputs=[
                T.OmniMAE.Input("omnimae", tooltip="A model from MoGe4D Load OmniMAE."),
                io.Image.Input("image", tooltip="The first frame (first image of the batch is used)."),
            ],
            outputs=[T.MotionFeatures.Output(display_name="motion_features"),
                     io.Image.Output(display_name="preview", tooltip="Per-token feature norm, upsampled.")],
        )

    @classmethod
    def execute(cls, omnimae, image) -> io.NodeOutput:
        model = model_for_inference(omnimae)
        rgb = as_rgb(image[:1] if image.ndim == 4 else image, "image")
        feats = motion_features_of(model, rgb)
        heat = token_norm_preview(feats.tokens.cpu(), feats.grid, rgb.shape[0], rgb.shape[1])
        return io.NodeOutput(feats, heat[None].to(output_device()))


ENCODER_NODES = [MoGe4DLoadUniDepth, MoGe4DDepth, MoGe4DGeometryFromMoGe, MoGe4DGeometryFromDepth,
                 MoGe4DLoadOmniMAE, MoGe4DMotionFeatures]
