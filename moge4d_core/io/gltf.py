"""Animated glTF (``.glb``) of a 4D scene, for ComfyUI's "Preview 3D & Animation" and any glTF viewer.

Written with ``pygltflib``. Layout:

* one root node ``moge4d_scene`` with one child node ``frame_XXXX`` per frame; each holds a ``POINTS`` mesh (the
  frame's points, at most ``max_points``: an even sub-grid of the pixel grid) with vertex colours ``COLOR_0``
  (linear RGB, one accessor shared by every frame);
* one animation ``moge4d_frames`` that steps through the frames: per frame node a ``scale`` channel with ``STEP``
  interpolation, 1 while its frame is on and 0 otherwise. Key times are ``k / fps`` for ``k = 0 .. T``: the T
  frames each last ``1 / fps`` s and the final key (``T / fps``, repeating the last frame) closes the last one, so a
  looping player shows every frame equally long. Before the animation runs, frame 0 is shown (scale 1, the others 0);
* each frame node is translated to its own first point and its positions are stored relative to it, so a hidden
  (scale 0) frame collapses onto a point of the scene instead of drawing a stray dot elsewhere.

Axes and units: glTF is Y-up, metres. A point ``(x, y, z)`` of our world (the first-frame OpenCV camera) is written as
``(x, -y, -z)``, the same world as the USD export: the first-frame camera at the origin looking down -Z, +Y up.
Colours: the scene's sRGB colours are converted to linear (glTF vertex colours are linear).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from ..errors import MoGe4DInputError
from ..types import Trajectories
from ._atomic import atomic_path, check_output_path
from ._export_common import grid_subsample, points_yup, srgb_to_linear

__all__ = ["DEFAULT_GLB_POINTS", "save_scene_glb", "check_gltf_available"]

#: default point budget per frame of the animated .glb
DEFAULT_GLB_POINTS = 50_000
_ARRAY_BUFFER = 34962
_FLOAT = 5126
_POINTS_MODE = 0


def check_gltf_available(what: str = "glTF export") -> None:
    """Raise a :class:`MoGe4DInputError` saying how to install ``pygltflib`` when it cannot be imported."""
    try:
        import pygltflib  # noqa: F401
    except ImportError as exc:
        raise MoGe4DInputError(f"{what}: pygltflib is not installed ({exc}); run `pip install pygltflib` in the "
                               f"Python environment that runs MoGe4D") from None


class _Blob:
    """Collects float32 arrays into one binary buffer, one buffer view and accessor each."""

    def __init__(self, gltf):
        self.gltf, self.parts, self.offset = gltf, [], 0

    def add(self, array: np.ndarray, kind: str, *, target: Optional[int] = None, bounds: bool = False) -> int:
        import pygltflib as g

        data = np.ascontiguousarray(array, dtype="<f4")
        raw = data.tobytes()
        self.gltf.bufferViews.append(g.BufferView(buffer=0, byteOffset=self.offset, byteLength=len(raw),
                                                  target=target))
        self.parts.append(raw)
        self.offset += len(raw)             # float32 data: every view stays 4-byte aligned
        count = data.shape[0]
        acc = g.Accessor(bufferView=len(self.gltf.bufferViews) - 1, componentType=_FLOAT, count=count, type=kind)
        if bounds:
            flat = data.reshape(count, -1)
            acc.min = [float(v) for v in flat.min(axis=0)]
            acc.max = [float(v) for v in flat.max(axis=0)]
        self.gltf.accessors.append(acc)
        return len(self.gltf.accessors) - 1

    def bytes(self) -> bytes:
        return b"".join(self.parts)


def save_scene_glb(traj: Trajectories, path: Union[str, os.PathLike], *, max_points: int = DEFAULT_GLB_POINTS,
                   fps: Optional[float] = None) -> Path:
    """Write the scene as one animated ``.glb`` (layout in the module docstring), atomically.

    Args:
        traj: the scene: points (T,N,3) metres, colours (N,3) sRGB in [0,1].
        path: the ``.glb`` file.
        max_points: points per frame at most (an even sub-grid; 0 keeps all). The file holds about
            ``T * max_points * 12`` bytes of positions.
        fps: playback rate; default the scene's ``fps``.

    Returns:
        ``path`` as a Path.
    """
    check_gltf_available()
    import pygltflib as g

    path = check_output_path(path, "glTF export")
    if path.suffix.lower() != ".glb":
        raise MoGe4DInputError(f"glTF export {path}: the file name must end in .glb (binary glTF)")
    rate = float(fps if fps is not None else traj.fps)
    if not np.isfinite(rate) or rate <= 0:
        raise MoGe4DInputError(f"glTF export {path}: fps must be a positive number, got {rate!r}")
    index, stride = grid_subsample(traj, max_points)
    pts = points_yup(traj, index)                                         # (T,M,3)
    t_count = traj.num_frames
    colors = srgb_to_linear(traj.colors.detach().to("cpu", torch.float64).numpy()[index]).astype(np.float32)

    gltf = g.GLTF2(asset=g.Asset(version="2.0", generator="MoGe4D-for-ComfyUI"), scene=0)
    blob = _Blob(gltf)
    color_acc = blob.add(colors, g.VEC3, target=_ARRAY_BUFFER)
    frame_nodes = []
    for t in range(t_count):
        anchor = pts[t, 0].copy()
        local = pts[t] - anchor
        pos_acc = blob.add(local, g.VEC3, target=_ARRAY_BUFFER, bounds=True)
        gltf.meshes.append(g.Mesh(name=f"frame_{t:04d}", primitives=[
            g.Primitive(attributes=g.Attributes(POSITION=pos_acc, COLOR_0=color_acc), mode=_POINTS_MODE)]))
        gltf.nodes.append(g.Node(name=f"frame_{t:04d}", mesh=len(gltf.meshes) - 1,
                                 translation=[float(v) for v in anchor],
                                 scale=[1.0, 1.0, 1.0] if t == 0 else [0.0, 0.0, 0.0]))
        frame_nodes.append(len(gltf.nodes) - 1)
    gltf.nodes.append(g.Node(name="moge4d_scene", children=frame_nodes))
    gltf.scenes.append(g.Scene(name="moge4d", nodes=[len(gltf.nodes) - 1]))

    times = np.arange(t_count + 1, dtype=np.float64) / rate
    time_acc = blob.add(times[:, None], g.SCALAR, bounds=True)
    anim = g.Animation(name="moge4d_frames", samplers=[], channels=[])
    for t, node in enumerate(frame_nodes):
        on = np.zeros((t_count + 1, 3), dtype=np.float32)
        on[t] = 1.0
        if t == t_count - 1:
            on[t_count] = 1.0
        anim.samplers.append(g.AnimationSampler(input=time_acc, output=blob.add(on, g.VEC3), interpolation="STEP"))
        anim.channels.append(g.AnimationChannel(sampler=len(anim.samplers) - 1,
                                                target=g.AnimationChannelTarget(node=node, path="scale")))
    gltf.animations.append(anim)
    gltf.extras = {"moge4d": {"frames": t_count, "fps": rate, "points_per_frame": int(index.size),
                              "grid_stride": int(stride), "source_points": traj.num_points,
                              "axes": "Y-up metres: (x, -y, -z) of the first-frame OpenCV camera"}}
    data = blob.bytes()
    gltf.buffers.append(g.Buffer(byteLength=len(data)))
    gltf.set_binary_blob(data)
    payload = b"".join(gltf.save_to_bytes())
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)
    return path
