"""Camera paths fitted to a 4D scene: frame count, image size and intrinsics default to the scene's.

Used by the CLI and the ``MoGe4D Camera Path`` node so both resolve "0 = match the scene" the same way.
"""
from __future__ import annotations

import json
from typing import Any, Optional

from ..errors import MoGe4DInputError, require
from ..types import CameraPath, Trajectories
from .paths import CAMERA_PRESETS, make_camera_path

DEFAULT_FOV_DEG = 60.0


def parse_params(text: str) -> dict:
    """Preset parameter overrides from JSON text (``""`` -> ``{}``), e.g. ``{"angle_deg": 45}``.

    Raises:
        MoGe4DInputError: the text is not JSON, or not a JSON object.
    """
    if not text or not text.strip():
        return {}
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MoGe4DInputError(f"params: not valid JSON ({exc.msg} at column {exc.colno}); "
                               f'write e.g. {{"angle_deg": 45}}') from None
    require(isinstance(obj, dict), f"params: expected a JSON object like {{\"angle_deg\": 45}}, got {type(obj).__name__}")
    return obj


def main_param(preset: str) -> Optional[str]:
    """Name of the preset's first numeric parameter (its "magnitude"), or None."""
    spec = CAMERA_PRESETS.get(preset)
    if spec is None:
        return None
    for p in spec.params:
        if p.kind in ("float", "int"):
            return p.name
    return None


def camera_path_for_scene(preset: str, scene: Optional[Trajectories], *, frames: int = 0, width: int = 0,
                          height: int = 0, fov_deg: float = 0.0, magnitude: float = 0.0,
                          params: Optional[dict[str, Any]] = None) -> CameraPath:
    """A preset camera path; zeros mean "match the scene".

    frames 0 -> the scene's T; width/height 0 -> the scene's grid; fov_deg 0 -> the scene's own K
    when the size matches (else 60 degrees horizontal); magnitude 0 -> the preset default of its main
    parameter (:func:`main_param`), otherwise that parameter's value in its own unit.
    """
    if scene is None:
        require(frames > 0, "camera path: set frames (> 0) or connect trajectories to match their frame count")
        require(width > 0 and height > 0,
                "camera path: set width and height (> 0) or connect trajectories to match their grid")
    frames = frames or scene.num_frames
    width = width or scene.width
    height = height or scene.height
    params = dict(params or {})
    if magnitude:
        name = main_param(preset)
        require(name is not None, f"camera path: preset {preset!r} has no magnitude parameter; set magnitude to 0")
        params[name] = magnitude
    K = None
    if not fov_deg and scene is not None and scene.K is not None and (width, height) == (scene.width, scene.height):
        K = scene.K
    fov = None if K is not None else (fov_deg or DEFAULT_FOV_DEG)
    points0 = scene.points[0] if scene is not None else None
    return make_camera_path(preset, frames, width, height, points0=points0, fov_deg=fov, K=K, **params)
