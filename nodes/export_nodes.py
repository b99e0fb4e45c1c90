"""Export nodes for VFX tools and ComfyUI's own 3D viewer: the 4D scene as USD and as one animated glTF."""
from __future__ import annotations

from comfy_api.latest import io, ui

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.io.gltf import DEFAULT_GLB_POINTS, check_gltf_available, save_scene_glb
from moge4d_core.io.usd import check_usd_available, save_scene_usd

from . import comfy_types as T
from .comfy_runtime import output_folder, relative_to_output
from .validation import output_prefix_problem, result

USD_FORMATS = ["usd", "usda", "usdz"]


def _checked_prefix(prefix) -> None:
    problem = output_prefix_problem(prefix)
    if problem is not None:
        raise MoGe4DInputError(problem)


class MoGe4DSaveUSD(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MoGe4DSaveUSD",
            display_name="MoGe4D Save USD",
            category="MoGe4D/export",
            description="Write the 4D scene (time-sampled UsdGeomPoints) and an optional camera path (time-sampled "
                        "UsdGeomCamera) as one USD file for Blender, Houdini, Nuke, Omniverse or usdview. Metres, "
                        "Y-up, one time code per frame at the scene's frame rate.",
            search_aliases=["usd export", "usdz", "vfx export", "houdini", "blender", "omniverse", "4d export"],
            is_output_node=True,
            inputs=[
                T.Trajectories.Input("trajectories", tooltip="The 4D scene to export."),
                io.String.Input("filename_prefix", default="moge4d/scene",
                                tooltip="Folder and name under the output folder; a counter is appended."),
                io.Combo.Input("format", options=USD_FORMATS, default="usd",
                               tooltip="usd: binary (crate) file. usda: text, readable but larger. usdz: a "
                                       "single-file package."),
                io.Int.Input("max_points", default=0, min=0, max=100_000_000, advanced=True,
                             tooltip="Keep an even sub-grid of at most this many points (0: every point)."),
                T.CameraPath.Input("camera_path", optional=True,
                                   tooltip="A camera path to include as a time-sampled USD camera."),
            ],
            outputs=[io.String.Output(display_name="path",
                                      tooltip="The written file, relative to ComfyUI's output folder.")],
        )

    @classmethod
    def validate_inputs(cls, filename_prefix):
        return result(output_prefix_problem(filename_prefix))

    @classmethod
    def execute(cls, trajectories, filename_prefix, format="usd", max_points=0, camera_path=None) -> io.NodeOutput:
        if format not in USD_FORMATS:
            raise MoGe4DInputError(f"format: {format!r} is not one of {', '.join(USD_FORMATS)}")
        _checked_prefix(filename_prefix)
        check_usd_available()
        folder, stem, _ = output_folder(filename_prefix)
        path = save_scene_usd(trajectories, camera_path, folder / f"{stem}.{format}", max_points=max_points or None)
        rel = relative_to_output(path)
        return io.NodeOutput(rel, ui=ui.PreviewText(f"saved {rel}"))


class MoGe4DSaveAnimatedGLB(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        outputs = []
        if T.File3DAny is not None:
            outputs.append(T.File3DAny.Output(display_name="model_3d",
                                              tooltip="The animated .glb: connect it to Preview 3D & Animation and "
                                                      "play the animation to scrub the 4D scene."))
        return io.Schema(
            node_id="MoGe4DSaveAnimatedGLB",
            display_name="MoGe4D Save Animated GLB",
            category="MoGe4D/export",
            description="Write the 4D scene as one animated .glb (one point set per frame, stepped on and off by a "
                        "glTF animation) under the output folder, for ComfyUI's Preview 3D & Animation, Blender "
                        "or any glTF viewer. Y-up, metres.",
            search_aliases=["glb", "gltf", "animated point cloud", "4d preview", "preview 3d"],
            is_output_node=True,
            inputs=[
                T.Trajectories.Input("trajectories", tooltip="The 4D scene to export."),
                io.String.Input("filename_prefix", default="moge4d/scene_anim",
                                tooltip="Folder and name under the output folder; a counter is appended."),
                io.Int.Input("max_points", default=DEFAULT_GLB_POINTS, min=1, max=10_000_000,
                             tooltip="Points per frame at most (an even sub-grid of the image), so the file stays "
                                     "small: about frames x max_points x 12 bytes."),
            ],
            outputs=outputs,
        )

    @classmethod
    def validate_inputs(cls, filename_prefix):
        return result(output_prefix_problem(filename_prefix))

    @classmethod
    def execute(cls, trajectories, filename_prefix, max_points=DEFAULT_GLB_POINTS) -> io.NodeOutput:
        _checked_prefix(filename_prefix)
        check_gltf_available()
        folder, stem, _ = output_folder(filename_prefix)
        path = save_scene_glb(trajectories, folder / f"{stem}.glb", max_points=max_points)
        rel = relative_to_output(path)
        text = ui.PreviewText(f"saved {rel} ({trajectories.num_frames} frames)")
        if T.File3DAny is None:
            return io.NodeOutput(ui=text)
        from comfy_api.latest import Types

        return io.NodeOutput(Types.File3D(str(path)), ui=text)


EXPORT_NODES = [MoGe4DSaveUSD, MoGe4DSaveAnimatedGLB]
