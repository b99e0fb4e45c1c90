"""Camera paths as JSON: our own schema and nerfstudio's ``camera_path.json``, both directions.

Our schema (``format = "moge4d_camera_path"``, ``version = 1``)::

    {
      "format": "moge4d_camera_path", "version": 1, "name": "orbit_left",
      "width": 512, "height": 368, "fps": 8.0,
      "convention": "opencv_c2w",
      "frames": [ {"c2w": [[r00, r01, r02, tx], [..], [..], [0, 0, 0, 1]],
                   "K":   [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]}, ... ]
    }

``c2w`` is camera-to-world with OpenCV camera axes (x right, y down, z forward) and world = the
first-frame camera of the scene; ``K`` is in pixels of a ``width`` x ``height`` image (pixel centres at
integer + 0.5). ``name``, ``fps`` and ``convention`` are optional on reading. The numbers are written
as float64 renderings of the float32 tensors, so a write/read round trip is exact.

nerfstudio ``camera_path.json`` (as read by ``nerfstudio/cameras/camera_paths.py::get_path_from_json``
and ``scripts/render.py``)::

    {"camera_type": "perspective", "render_height": H, "render_width": W, "fps": fps, "seconds": T / fps,
     "camera_path": [{"camera_to_world": [16 floats, row-major 4x4], "fov": vertical_deg, "aspect": W / H}]}

* ``camera_to_world`` uses OpenGL / Blender camera axes (x right, y up, z back). Ours (OpenCV) ->
  theirs: ``c2w_gl = c2w_cv @ diag(1, -1, -1, 1)`` (negate the camera y and z columns); the same
  matrix converts back. nerfstudio reads only the top 3 rows; so do we.
* World frame: by default kept as ours (the first-frame OpenCV camera), so the path lines up with a
  point cloud exported in our world. ``flip_world=True`` also expresses the world in y-up / z-back axes
  (``c2w_gl = diag(1,-1,-1,1) @ c2w_cv @ diag(1,-1,-1,1)``), matching a cloud exported with y and z
  negated (glTF style). Use the same flag to read it back.
* ``fov`` is the *vertical* field of view in degrees; nerfstudio uses ``fx = fy = H / (2 tan(fov/2))``
  and the principal point at the image centre, and ignores ``aspect``. Writing therefore keeps only
  ``fy`` (from which the fov is computed) and drops ``fx`` / ``cx`` / ``cy`` when they differ from that
  model (lossy for non-square pixels or an off-centre principal point).

Every reading error is a :class:`MoGe4DInputError` naming the frame index and the key.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, Union

import torch

from ..errors import MoGe4DInputError, require
from ..types import CameraPath

FORMAT = "moge4d_camera_path"
VERSION = 1
_FLIP = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))


# ----------------------------------------------------------------------------------------------------------------------
# Validation helpers
# ----------------------------------------------------------------------------------------------------------------------
def _load(obj: Union[Mapping, str], what: str) -> Mapping:
    if isinstance(obj, str):
        try:
            obj = json.loads(obj)
        except json.JSONDecodeError as exc:
            raise MoGe4DInputError(f"{what}: not valid JSON text ({exc})") from exc
    require(isinstance(obj, Mapping), f"{what}: expected a JSON object (dict), got {type(obj).__name__}")
    return obj


def _get(obj: Mapping, key: str, where: str) -> Any:
    if key not in obj:
        raise MoGe4DInputError(f"{where}: missing key {key!r}")
    return obj[key]


def _size(obj: Mapping, key: str, what: str) -> int:
    v = _get(obj, key, what)
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer() and v > 0
    require(ok, f"{what}: {key!r} must be a positive whole number of pixels, got {v!r}")
    return int(v)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _matrix(value: Any, rows: int, cols: int, where: str) -> torch.Tensor:
    """Nested list ``rows x cols`` of finite numbers -> float64 tensor."""
    ok = isinstance(value, (list, tuple)) and len(value) == rows and all(
        isinstance(r, (list, tuple)) and len(r) == cols for r in value)
    if not ok:
        got = (f"{len(value)} rows" if isinstance(value, (list, tuple)) else type(value).__name__)
        raise MoGe4DInputError(f"{where}: expected a {rows}x{cols} matrix (list of {rows} rows of {cols} numbers), "
                               f"got {got}")
    flat = [x for r in value for x in r]
    require(all(_number(x) for x in flat), f"{where}: all {rows * cols} entries must be finite numbers")
    return torch.tensor(flat, dtype=torch.float64).reshape(rows, cols)


def _check_pose(M: torch.Tensor, where: str, check_last_row: bool = True) -> None:
    """A rigid camera-to-world: invertible, orthonormal rotation with det +1, last row [0,0,0,1]."""
    R = M[:3, :3]
    det = float(torch.linalg.det(R))
    require(abs(det) > 1e-6, f"{where}: pose is not invertible (rotation block determinant {det:.3g}); "
            "every frame needs a rigid camera-to-world matrix")
    err = float((R.T @ R - torch.eye(3, dtype=torch.float64)).abs().max())
    require(err < 1e-3 and det > 0, f"{where}: pose is not a rigid transform (rotation block not orthonormal with "
            f"det +1: max |R^T R - I| = {err:.3g}, det = {det:.4g}); scale or mirroring is not supported")
    if check_last_row:
        last = M[3]
        require(torch.allclose(last, torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64), atol=1e-6),
                f"{where}: last row must be [0, 0, 0, 1], got {last.tolist()}")


def _check_K(K: torch.Tensor, where: str) -> None:
    require(float(K[0, 0]) > 0 and float(K[1, 1]) > 0, f"{where}: focal lengths must be positive, got "
            f"fx={float(K[0, 0])}, fy={float(K[1, 1])}")
    require(torch.allclose(K[2], torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), atol=1e-9),
            f"{where}: last row must be [0, 0, 1], got {K[2].tolist()}")


def _frames(obj: Mapping, key: str, what: str) -> list:
    frames = _get(obj, key, what)
    require(isinstance(frames, (list, tuple)) and len(frames) > 0, f"{what}: {key!r} must be a non-empty list")
    for i, fr in enumerate(frames):
        require(isinstance(fr, Mapping), f"{what}: {key}[{i}] must be an object, got {type(fr).__name__}")
    return list(frames)


def _fps(fps: Any, where: str) -> float:
    require(_number(fps) and fps > 0, f"{where}: fps must be a positive number, got {fps!r}")
    return float(fps)


# ----------------------------------------------------------------------------------------------------------------------
# Our schema
# ----------------------------------------------------------------------------------------------------------------------
def camera_path_to_json(path: CameraPath, fps: float = 8.0) -> dict:
    """:class:`CameraPath` -> dict in our schema (see module docstring); ``json.dumps`` it to save."""
    fps = _fps(fps, "camera_path_to_json")
    c2w = path.c2w.detach().to("cpu", torch.float64)
    K = path.K.detach().to("cpu", torch.float64)
    return {
        "format": FORMAT, "version": VERSION, "name": str(path.name),
        "width": int(path.width), "height": int(path.height), "fps": fps, "convention": "opencv_c2w",
        "frames": [{"c2w": c2w[i].tolist(), "K": K[i].tolist()} for i in range(c2w.shape[0])],
    }


def camera_path_from_json(obj: Union[Mapping, str]) -> CameraPath:
    """Our schema (dict or JSON text) -> :class:`CameraPath` (float32). The fps stays in ``obj["fps"]``."""
    what = "camera path JSON"
    obj = _load(obj, what)
    fmt = _get(obj, "format", what)
    require(fmt == FORMAT, f"{what}: 'format' must be {FORMAT!r}, got {fmt!r} (for a nerfstudio camera_path.json "
            "use camera_path_from_nerfstudio)")
    ver = _get(obj, "version", what)
    require(ver == VERSION, f"{what}: unsupported version {ver!r}; this reader understands version {VERSION}")
    w, h = _size(obj, "width", what), _size(obj, "height", what)
    if "fps" in obj:
        _fps(obj["fps"], what)
    conv = obj.get("convention", "opencv_c2w")
    require(conv == "opencv_c2w", f"{what}: 'convention' must be 'opencv_c2w', got {conv!r}")
    c2ws, Ks = [], []
    for i, fr in enumerate(_frames(obj, "frames", what)):
        where = f"{what}: frames[{i}]"
        M = _matrix(_get(fr, "c2w", where), 4, 4, f"{where}.c2w")
        _check_pose(M, f"{where}.c2w")
        K = _matrix(_get(fr, "K", where), 3, 3, f"{where}.K")
        _check_K(K, f"{where}.K")
        c2ws.append(M)
        Ks.append(K)
    name = obj.get("name", "json")
    return CameraPath(c2w=torch.stack(c2ws).float(), K=torch.stack(Ks).float(), width=w, height=h,
                      name=str(name) if name is not None else "json")


# ----------------------------------------------------------------------------------------------------------------------
# nerfstudio camera_path.json
# ----------------------------------------------------------------------------------------------------------------------
def _cv_to_gl(c2w: torch.Tensor, flip_world: bool) -> torch.Tensor:
    out = c2w @ _FLIP
    return _FLIP @ out if flip_world else out


def camera_path_to_nerfstudio(path: CameraPath, fps: float = 8.0, flip_world: bool = False) -> dict:
    """:class:`CameraPath` -> nerfstudio ``camera_path.json`` dict (see module docstring for the axes).

    ``fov`` per frame is the vertical field of view from ``fy``: ``2 atan(H / (2 fy))`` in degrees.
    """
    fps = _fps(fps, "camera_path_to_nerfstudio")
    c2w = path.c2w.detach().to("cpu", torch.float64)
    K = path.K.detach().to("cpu", torch.float64)
    w, h = int(path.width), int(path.height)
    cams = []
    for i in range(c2w.shape[0]):
        gl = _cv_to_gl(c2w[i], flip_world)
        fov = math.degrees(2.0 * math.atan(0.5 * h / float(K[i, 1, 1])))
        cams.append({"camera_to_world": gl.reshape(-1).tolist(), "fov": fov, "aspect": w / h})
    return {"camera_type": "perspective", "render_height": h, "render_width": w, "fps": fps,
            "seconds": c2w.shape[0] / fps, "camera_path": cams}


def camera_path_from_nerfstudio(obj: Union[Mapping, str], flip_world: bool = False,
                                name: str = "nerfstudio") -> CameraPath:
    """nerfstudio ``camera_path.json`` (dict or JSON text) -> :class:`CameraPath` (float32, OpenCV axes).

    K per frame: ``fx = fy = render_height / (2 tan(fov/2))``, principal point at the image centre.
    ``flip_world`` must match the writer (see module docstring).
    """
    what = "nerfstudio camera path"
    obj = _load(obj, what)
    w, h = _size(obj, "render_width", what), _size(obj, "render_height", what)
    ctype = obj.get("camera_type", "perspective")
    require(ctype == "perspective", f"{what}: camera_type {ctype!r} is not supported; only 'perspective'")
    c2ws, Ks = [], []
    for i, cam in enumerate(_frames(obj, "camera_path", what)):
        where = f"{what}: camera_path[{i}]"
        m = _get(cam, "camera_to_world", where)
        if isinstance(m, (list, tuple)) and len(m) == 4 and all(isinstance(r, (list, tuple)) for r in m):
            M = _matrix(m, 4, 4, f"{where}.camera_to_world")
        else:
            ok = isinstance(m, (list, tuple)) and len(m) == 16
            require(ok, f"{where}.camera_to_world: expected 16 numbers (row-major 4x4), got "
                    f"{len(m) if isinstance(m, (list, tuple)) else type(m).__name__}")
            M = _matrix([list(m[r * 4:(r + 1) * 4]) for r in range(4)], 4, 4, f"{where}.camera_to_world")
        M = M.clone()
        M[3] = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)  # nerfstudio reads the top 3 rows only
        _check_pose(M, f"{where}.camera_to_world")
        fov = _get(cam, "fov", where)
        require(_number(fov) and 0.0 < fov < 180.0,
                f"{where}.fov: vertical field of view must be a number in (0, 180) degrees, got {fov!r}")
        f = 0.5 * h / math.tan(math.radians(fov) / 2.0)
        c2ws.append(_cv_to_gl(M, flip_world))  # the flips are their own inverses
        Ks.append(torch.tensor([[f, 0.0, w / 2.0], [0.0, f, h / 2.0], [0.0, 0.0, 1.0]], dtype=torch.float64))
    return CameraPath(c2w=torch.stack(c2ws).float(), K=torch.stack(Ks).float(), width=w, height=h, name=name)


# ----------------------------------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------------------------------
def save_camera_path_file(path: CameraPath, file: Union[str, os.PathLike], fmt: str = "moge4d", fps: float = 8.0,
                          flip_world: bool = False) -> str:
    """Write ``path`` to ``file`` as ``fmt`` = ``"moge4d"`` (our schema) or ``"nerfstudio"``; returns the path."""
    if fmt == "moge4d":
        obj = camera_path_to_json(path, fps)
    elif fmt == "nerfstudio":
        obj = camera_path_to_nerfstudio(path, fps, flip_world)
    else:
        raise MoGe4DInputError(f"camera path file format: unknown {fmt!r}; choose 'moge4d' or 'nerfstudio'")
    file = os.fspath(file)
    with open(file, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=1)
    return file


def load_camera_path_file(file: Union[str, os.PathLike], flip_world: bool = False) -> CameraPath:
    """Read a camera path JSON file, detecting our schema (``"format"`` key) or nerfstudio (``"camera_path"``)."""
    file = os.fspath(file)
    require(os.path.isfile(file), f"camera path file {file!r} does not exist")
    try:
        with open(file, "r", encoding="utf-8") as fh:
            obj = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MoGe4DInputError(f"camera path file {file!r}: cannot read it as JSON ({exc})") from exc
    require(isinstance(obj, Mapping), f"camera path file {file!r}: expected a JSON object at the top level")
    if "format" in obj:
        return camera_path_from_json(obj)
    if "camera_path" in obj:
        return camera_path_from_nerfstudio(obj, flip_world=flip_world, name=os.path.splitext(os.path.basename(file))[0])
    raise MoGe4DInputError(f"camera path file {file!r}: neither our format (needs 'format': {FORMAT!r}) nor a "
                           "nerfstudio camera_path.json (needs 'camera_path')")
