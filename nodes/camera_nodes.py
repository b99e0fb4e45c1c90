"""Camera-path nodes: presets, JSON import, and converters to / from ComfyUI's LOAD3D_CAMERA."""
from __future__ import annotations

import json

from comfy_api.latest import io

from moge4d_core.io.camera_json import camera_path_from_json, camera_path_from_nerfstudio
from moge4d_core.camera.load3d import load3d_camera_path, load3d_from_c2w
from moge4d_core.camera.paths import CAMERA_PRESETS, preset_names
from moge4d_core.preview.camera_plot import frustum_plot
from moge4d_core.camera.scene import camera_path_for_scene, parse_params
from moge4d_core.errors import MoGe4DInputError, require

from . import comfy_types as T
from .comfy_runtime import output_device
from .validation import camera_params_problem, problem_of, result, widget_problem

EASINGS = ["ease_in_out", "linear", "ease_in", "ease_out"]


def _preview(path, scene=None):
    pts = scene.points[0] if scene is not None else None
    cols = scene.colors if scene is not None else None
    return frustum_plot(path, pts, point_colors=cols)[None].float().to(output_device())


JSON_EXPECTED = ('expected MoGe4D\'s format {"format": "moge4d_camera_path", "version": 1, "width": W, "height": H, '
                 '"frames": [{"c2w": 4x4 camera-to-world rows (OpenCV axes), "K": 3x3 pixel intrinsics rows}, ...]} '
                 'or a nerfstudio camera_path.json {"render_width": W, "render_height": H, "camera_path": '
                 '[{"camera_to_world": 16 numbers (row-major 4x4), "fov": vertical degrees}, ...]}')


def camera_path_from_text(text: str, input_name: str = "json_text"):
    """A :class:`~moge4d_core.types.CameraPath` from pasted JSON text (MoGe4D or nerfstudio format).

    Args:
        text: the JSON text.
        input_name: the node input, for messages.

    Returns:
        The camera path (``c2w (T,4,4)``, ``K (T,3,3)`` float32, OpenCV axes).

    Raises:
        MoGe4DInputError: empty text, a JSON syntax error (with line and column), not an object, or a missing /
            wrong field (named by the core reader); every message names ``input_name`` and the expected format.
    """
    if not isinstance(text, str) or not text.strip():
        raise MoGe4DInputError(f"{input_name}: empty; paste a camera path: {JSON_EXPECTED}")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MoGe4DInputError(f"{input_name}: not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}; "
                               f"{JSON_EXPECTED}") from None
    if not isinstance(obj, dict):
        raise MoGe4DInputError(f"{input_name}: the JSON is a {type(obj).__name__}, not an object; {JSON_EXPECTED}")
    try:
        return camera_path_from_nerfstudio(obj) if "camera_path" in obj else camera_path_from_json(obj)
    except MoGe4DInputError as exc:
        raise MoGe4DInputError(f"{input_name}: {exc}; {JSON_EXPECTED}") from None


def _preset_help() -> str:
    lines = []
    for name in preset_names():
        spec = CAMERA_PRESETS[name]
        params = ", ".join(f"{p.name}={p.default}{(' ' + p.unit) if p.unit else ''}" for p in spec.params)
        lines.append(f"{name}: {params}" if params else name)
    return "; ".join(lines)


class MoGe4DCameraPath(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MoGe4DCameraPath",
            display_name="MoGe4D Camera Path",
            category="MoGe4D/camera",
            description="A camera per frame from a preset: the official MoGe4D paths, the paper's 90-degree orbits, "
                        "dolly, truck, pedestal, pan, tilt, zoom and spiral. Distances are fractions of the scene depth, "
                        "so one preset fits any scene.",
            search_aliases=["camera trajectory", "orbit", "dolly", "camera motion", "novel view path"],
            inputs=[
                io.Combo.Input("preset", options=preset_names(), default="orbit_left",
                               tooltip="Camera move. Official: static, forward_backward, circle_rotating, surrounding, "
                                       "camera_rotate. Parameters: " + _preset_help()),
                io.Int.Input("frames", default=0, min=0, max=1024,
                             tooltip="Number of cameras; 0 = the trajectories' frame count."),
                io.Int.Input("width", default=0, min=0, max=8192, step=8,
                             tooltip="Image width in pixels; 0 = the trajectories' grid width."),
                io.Int.Input("height", default=0, min=0, max=8192, step=8,
                             tooltip="Image height in pixels; 0 = the trajectories' grid height."),
                io.Float.Input("fov", default=0.0, min=0.0, max=179.0, step=0.5,
                               tooltip="Horizontal field of view in degrees; 0 = the scene's own intrinsics "
                                       "(or 60 when unknown or the size differs)."),
                io.Float.Input("magnitude", default=0.0, min=-1000.0, max=1000.0, step=0.01,
                               tooltip="Size of the move in the preset's own unit (degrees for orbits, pan, tilt; "
                                       "x scene depth for dolly, truck, pedestal; x focal for zoom); 0 = preset default."),
                io.Combo.Input("easing", options=EASINGS, default="ease_in_out", advanced=True,
                               tooltip="Speed profile of our presets (the official ones keep their own timing)."),
                io.String.Input("params", default="", multiline=True, advanced=True,
                                tooltip='Extra preset parameters as JSON, e.g. {"pivot": 0.8}. See the preset tooltip.'),
                T.Trajectories.Input("trajectories", optional=True,
                                     tooltip="The scene: sets the centre, depth scale, frame count, size and intrinsics."),
            ],
            outputs=[
                T.CameraPath.Output(display_name="camera_path"),
                io.Image.Output(display_name="preview", tooltip="Top and side views of the camera frustums and points."),
            ],
        )

    @classmethod
    def validate_inputs(cls, preset, params=""):
        return result(camera_params_problem(preset, params) or widget_problem(cls, preset=preset))

    @classmethod
    def execute(cls, preset, frames=0, width=0, height=0, fov=0.0, magnitude=0.0, easing="ease_in_out",
                params="", trajectories=None) -> io.NodeOutput:
        extra = parse_params(params)
        spec = CAMERA_PRESETS.get(preset)
        if spec is not None and any(p.name == "easing" for p in spec.params):
            extra.setdefault("easing", easing)
        path = camera_path_for_scene(preset, trajectories, frames=frames, width=width, height=height,
                                     fov_deg=fov, magnitude=magnitude, params=extra)
        return io.NodeOutput(path, _preview(path, trajectories))


class MoGe4DCameraPathFromJSON(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MoGe4DCameraPathFromJSON",
            display_name="MoGe4D Camera Path From JSON",
            category="MoGe4D/camera",
            description="A camera path from JSON text: MoGe4D's own format (c2w + K per frame, OpenCV axes) or "
                        "nerfstudio's camera_path.json (OpenGL axes, converted).",
            search_aliases=["nerfstudio camera path", "import camera"],
            inputs=[
                io.String.Input("json_text", default="", multiline=True,
                                tooltip="Paste the JSON. MoGe4D format has \"format\": \"moge4d_camera_path\"; "
                                        "anything with a \"camera_path\" list is read as nerfstudio."),
            ],
            outputs=[T.CameraPath.Output(display_name="camera_path"), io.Image.Output(display_name="preview")],
        )

    @classmethod
    def validate_inputs(cls, json_text):
        if json_text is None:  # linked: checked in execute
            return True
        return result(problem_of(lambda: camera_path_from_text(json_text)))

    @classmethod
    def execute(cls, json_text) -> io.NodeOutput:
        path = camera_path_from_text(json_text)
        return io.NodeOutput(path, _preview(path))


class MoGe4DCameraFromLoad3D(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MoGe4DCameraFromLoad3D",
            display_name="MoGe4D Camera From Load3D",
            category="MoGe4D/camera",
            description="A camera path between two LOAD3D_CAMERA views (from Load3D / Preview3D / CreateCameraInfo). "
                        "three.js world (Y up) -> OpenCV world (y down): (x, y, z) -> (x, -y, -z).",
            search_aliases=["load3d camera", "viewer camera"],
            inputs=[
                T.Load3DCamera.Input("start", tooltip="Camera of the first frame."),
                io.Int.Input("frames", default=25, min=1, max=1024, tooltip="Number of cameras."),
                io.Int.Input("width", default=512, min=8, max=8192, step=8, tooltip="Image width in pixels."),
                io.Int.Input("height", default=368, min=8, max=8192, step=8, tooltip="Image height in pixels."),
                io.Combo.Input("mode", options=["orbit", "linear"], default="orbit",
                               tooltip="orbit: keep looking at the moving target; linear: lerp position, slerp rotation."),
                io.Combo.Input("easing", options=EASINGS, default="ease_in_out", advanced=True,
                               tooltip="Speed profile between the two views."),
                T.Load3DCamera.Input("end", optional=True, tooltip="Camera of the last frame; unset = a static camera."),
            ],
            outputs=[T.CameraPath.Output(display_name="camera_path"), io.Image.Output(display_name="preview")],
        )

    @classmethod
    def execute(cls, start, frames, width, height, mode="orbit", easing="ease_in_out", end=None) -> io.NodeOutput:
        path = load3d_camera_path(start, end if end is not None else start, frames, width, height,
                                  mode=mode, easing=easing)
        return io.NodeOutput(path, _preview(path))


class MoGe4DCameraToLoad3D(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="MoGe4DCameraToLoad3D",
            display_name="MoGe4D Camera To Load3D",
            category="MoGe4D/camera",
            description="One frame of a camera path as a LOAD3D_CAMERA (for Preview3D / RenderSplat).",
            inputs=[
                T.CameraPath.Input("camera_path", tooltip="The path to take a camera from."),
                io.Int.Input("frame", default=0, min=-1024, max=1024,
                             tooltip="Frame index; negative counts from the end (-1 = last)."),
                io.Float.Input("target_distance", default=1.0, min=1e-3, max=1e4, step=0.1,
                               tooltip="Distance along the view axis to the orbit target, in scene units."),
            ],
            outputs=[T.Load3DCamera.Output(display_name="camera_info")],
        )

    @classmethod
    def execute(cls, camera_path, frame=0, target_distance=1.0) -> io.NodeOutput:
        n = camera_path.num_frames
        require(-n <= frame < n, f"frame: {frame} is outside the path's {n} frames")
        K = camera_path.K[frame]
        from moge4d_core.geometry.intrinsics import fov_from_focal

        fov_v = fov_from_focal(float(K[1, 1]), camera_path.height)
        return io.NodeOutput(load3d_from_c2w(camera_path.c2w[frame], fov_v, target_distance))


CAMERA_NODES = [MoGe4DCameraPath, MoGe4DCameraPathFromJSON]
if T.Load3DCamera is not None:
    CAMERA_NODES += [MoGe4DCameraFromLoad3D, MoGe4DCameraToLoad3D]
