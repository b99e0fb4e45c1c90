"""Nodes that bring 4D scenes in and out: load (pkl / npz), the demo scene, PLY / npz export, tracks."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from comfy_api.latest import io, ui

from moge4d_core.demo_scene import make_demo_scene
from moge4d_core.geometry.projection import trajectories_to_tracks
from moge4d_core.io import load_trajectories, save_trajectories_npz, write_ply_sequence, write_splat_sequence

from . import comfy_types as T
from .comfy_runtime import input_files, output_folder, output_device
from .validation import input_file_problem, output_prefix_problem, resolve_input_file, result

TRAJECTORY_EXTENSIONS = (".pkl", ".npz")
# The pack's own example scenes, offered after the input folder's files under this prefix and read from the pack
# folder (no copy into input/ needed). Only these exact names map there, and only .npz (never unpickled).
EXAMPLE_DIR = Path(__file__).resolve().parents[1] / "example_assets"
EXAMPLE_PREFIX = "[MoGe4D example] "


def example_scenes() -> dict[str, str]:
    """{listed name: absolute path} of the ``.npz`` scenes shipped in the pack's ``example_assets/``."""
    return {EXAMPLE_PREFIX + p.name: str(p) for p in sorted(EXAMPLE_DIR.glob("*.npz")) if p.is_file()}


def scene_file_problem(file) -> str | None:
    """None when :func:`scene_file_path` accepts ``file`` (a listed example or an input-folder file)."""
    if isinstance(file, str) and file in example_scenes():
        return None
    return input_file_problem(file, TRAJECTORY_EXTENSIONS)


def scene_file_path(file) -> str:
    """Path of a Load Trajectories choice: a pack example by its exact listed name, else an input-folder file
    (:func:`resolve_input_file`, which refuses names that leave the folder)."""
    examples = example_scenes()
    if isinstance(file, str) and file in examples:
        return examples[file]
    return resolve_input_file(file, TRAJECTORY_EXTENSIONS)


def first_frame_image(traj) -> torch.Tensor:
    """(1,H,W,3) IMAGE of the first-frame colours."""
    return traj.colors.reshape(1, traj.height, traj.width, 3).float().to(output_device())


class MoGe4DLoadTrajectories(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MoGe4DLoadTrajectories",
            display_name="MoGe4D Load Trajectories",
            category="MoGe4D/scene",
            description="Load a 4D scene: a TrajScene-60K / DELTA *_dt3d_pred.pkl or a MoGe4D .npz from the input folder.",
            search_aliases=["trajscene", "delta", "dt3d", "4d point cloud", "load 4d"],
            inputs=[
                io.Combo.Input("file", options=input_files(TRAJECTORY_EXTENSIONS) + list(example_scenes()),
                               tooltip="A .pkl (TrajScene / DELTA) or .npz (MoGe4D) file under ComfyUI's input folder; "
                                       "'[MoGe4D example] ...' entries are the pack's own example scenes "
                                       "(example_assets/), read from the pack folder."),
                io.Boolean.Input("allow_unsafe_pickle", default=False, advanced=True,
                                 tooltip="Allow arbitrary Python objects in .pkl files. Only for files you trust: "
                                         "unpickling can run code."),
            ],
            outputs=[
                T.Trajectories.Output(display_name="trajectories"),
                io.Image.Output(display_name="first_frame", tooltip="First-frame colours of the points."),
                io.Int.Output(display_name="frames", tooltip="Number of frames T."),
            ],
        )

    @classmethod
    def validate_inputs(cls, file):
        return result(scene_file_problem(file))

    @classmethod
    def fingerprint_inputs(cls, file, **kwargs):
        if scene_file_problem(file) is not None:
            return float("nan")
        return os.path.getmtime(scene_file_path(file))

    @classmethod
    def execute(cls, file, allow_unsafe_pickle=False) -> io.NodeOutput:
        traj = load_trajectories(scene_file_path(file), allow_unsafe=allow_unsafe_pickle)
        return io.NodeOutput(traj, first_frame_image(traj), traj.num_frames)


class MoGe4DDemoScene(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MoGe4DDemoScene",
            display_name="MoGe4D Demo Scene",
            category="MoGe4D/scene",
            description="A built-in procedural 4D scene (wall, floor, three moving spheres); no files needed.",
            search_aliases=["example 4d scene", "procedural scene"],
            inputs=[
                io.Int.Input("width", default=256, min=16, max=2048, step=16, tooltip="Grid width in pixels."),
                io.Int.Input("height", default=192, min=16, max=2048, step=16, tooltip="Grid height in pixels."),
                io.Int.Input("frames", default=25, min=1, max=401, tooltip="Number of frames T."),
            ],
            outputs=[
                T.Trajectories.Output(display_name="trajectories"),
                io.Image.Output(display_name="first_frame"),
            ],
        )

    @classmethod
    def execute(cls, width, height, frames) -> io.NodeOutput:
        traj = make_demo_scene(height=height, width=width, num_frames=frames)
        return io.NodeOutput(traj, first_frame_image(traj))


class MoGe4DSavePLYSequence(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        outputs = []
        if T.File3DAny is not None:
            outputs.append(T.File3DAny.Output(display_name="first_frame_3d",
                                              tooltip="The first frame as a 3D file, for Preview3D."))
        return io.Schema(
            node_id="MoGe4DSavePLYSequence",
            display_name="MoGe4D Save PLY Sequence",
            category="MoGe4D/export",
            description="Write one binary PLY per frame (points xyz+rgb, or 3D Gaussian splats) under the output folder.",
            search_aliases=["export point cloud", "ply", "splat export", "4d export"],
            is_output_node=True,
            inputs=[
                T.Trajectories.Input("trajectories", tooltip="The 4D scene to export."),
                io.String.Input("filename_prefix", default="moge4d/scene",
                                tooltip="Folder and name under the output folder; a counter is appended."),
                io.Combo.Input("format", options=["points", "splat"], default="points",
                               tooltip="points: xyz + rgb per point. splat: the 3D Gaussian Splatting layout."),
                io.Float.Input("splat_scale", default=0.01, min=1e-5, max=10.0, step=0.001, advanced=True,
                               tooltip="splat format: Gaussian radius in scene units."),
                io.Combo.Input("axes", options=["opengl", "opencv"], default="opengl", advanced=True,
                               tooltip="opengl: (x, -y, -z), upright in Y-up viewers such as Preview3D and Blender's "
                                       "glTF import. opencv: the raw camera frame (y down, z forward)."),
            ],
            outputs=outputs,
        )

    @classmethod
    def validate_inputs(cls, filename_prefix):
        return result(output_prefix_problem(filename_prefix))

    @classmethod
    def execute(cls, trajectories, filename_prefix, format="points", splat_scale=0.01,
                axes="opengl") -> io.NodeOutput:
        folder, stem, subfolder = output_folder(filename_prefix)
        target = folder / stem
        if format == "splat":
            files = write_splat_sequence(trajectories, target, prefix="frame", scale=splat_scale, axes=axes)
        else:
            files = write_ply_sequence(trajectories, target, prefix="frame", axes=axes)
        text = ui.PreviewText(f"wrote {len(files)} PLY files to {os.path.join(subfolder, stem)}")
        if T.File3DAny is None:
            return io.NodeOutput(ui=text)
        from comfy_api.latest import Types

        return io.NodeOutput(Types.File3D(str(files[0])), ui=text)


class MoGe4DSaveTrajectories(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MoGe4DSaveTrajectories",
            display_name="MoGe4D Save Trajectories (npz)",
            category="MoGe4D/export",
            description="Save the 4D scene as a MoGe4D .npz (points, colours, visibility, grid, K) that Load Trajectories reads.",
            is_output_node=True,
            inputs=[
                T.Trajectories.Input("trajectories", tooltip="The 4D scene to save."),
                io.String.Input("filename_prefix", default="moge4d/trajectories",
                                tooltip="Folder and name under the output folder; a counter is appended."),
            ],
            outputs=[],
        )

    @classmethod
    def validate_inputs(cls, filename_prefix):
        return result(output_prefix_problem(filename_prefix))

    @classmethod
    def execute(cls, trajectories, filename_prefix) -> io.NodeOutput:
        folder, stem, subfolder = output_folder(filename_prefix)
        path = save_trajectories_npz(trajectories, folder / f"{stem}.npz")
        return io.NodeOutput(ui=ui.PreviewText(f"saved {os.path.join(subfolder, path.name)}"))


class MoGe4DToTracks(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MoGe4DToTracks",
            display_name="MoGe4D To Tracks",
            category="MoGe4D/export",
            description="Project a sub-grid of the 4D points through a camera path into 2D pixel tracks (TRACKS, as the WanMove nodes use).",
            search_aliases=["wanmove", "2d tracks", "point tracks"],
            inputs=[
                T.Trajectories.Input("trajectories", tooltip="The 4D scene."),
                T.CameraPath.Input("camera_path", tooltip="Camera per frame; its image size sets the pixel frame."),
                io.Int.Input("num_tracks", default=256, min=1, max=65536,
                             tooltip="About this many points, taken on an even sub-grid of the first frame."),
            ],
            outputs=[T.Tracks.Output(display_name="tracks")],
        )

    @classmethod
    def execute(cls, trajectories, camera_path, num_tracks) -> io.NodeOutput:
        path, vis = trajectories_to_tracks(trajectories, camera_path, num_tracks)
        dev = output_device()
        return io.NodeOutput({"track_path": path.to(dev), "track_visibility": vis.to(dev)})


SCENE_NODES = [MoGe4DLoadTrajectories, MoGe4DDemoScene, MoGe4DSavePLYSequence, MoGe4DSaveTrajectories]
if T.Tracks is not None:
    SCENE_NODES.append(MoGe4DToTracks)
