"""Camera-path presets: pose helpers, the preset registry ``CAMERA_PRESETS`` and each preset's maths.

Conventions
-----------
* OpenCV axes everywhere: camera x right, y down, z forward. The world frame is the first-frame camera
  of the scene, so "up" in the world is ``-y`` and "forward" (into the scene) is ``+z``.
* A pose is a camera-to-world matrix ``c2w (4,4)``: columns 0..2 of the rotation block are the camera
  x, y, z axes in world coordinates, column 3 is the camera centre.
* Everything here is computed in float64 on the CPU; :func:`moge4d_core.camera.paths.make_camera_path`
  casts to float32 at the end.

Scene statistics (from ``points0 (N,3)``, the first-frame points, world = first-frame camera):

* ``centre c`` = mean of the finite points (the official code uses the plain mean of all points;
  we drop NaN / inf so one bad pixel cannot poison the path).
* ``depth D`` = median z of the finite points with z > 0. Our own presets give every distance as a
  fraction of ``D`` so one preset works on any scene scale (metric or relative depth).

Time
----
Official presets use the official index ratio ``i / n`` (i = 0..n-1, so the last frame stops one step
short of the full motion, exactly as ``infer.py`` does). Our presets use ``t = i / (n-1)`` (``t = 0``
when n = 1), so the last frame reaches the full requested motion, and pass ``t`` through an easing
curve (``easing`` parameter):

* ``linear``: e(t) = t
* ``ease_in``: e(t) = t^2
* ``ease_out``: e(t) = 1 - (1-t)^2
* ``ease_in_out``: e(t) = 3t^2 - 2t^3 (cubic smoothstep: zero speed at both ends)

Official trajectories (``Zhangyr2022/MoGe4D`` ``scripts/inference/infer.py`` L275-430, HEAD 7e3b286)
--------------------------------------------------------------------------------------------------
Reproduced formula for formula; ``n`` = number of frames, ``i`` = frame index, ``c`` = centre:

* ``static``: identity.
* ``forward_backward``: r = 0.4 |c_z|; translation (0, 0, z_i) with z_i = r i/n if i < n//4,
  0.5 r - r i/n if i < 3n//4 (integer floor divisions ``n // 4`` and ``3 * n // 4`` as in the code, not
  n/4), else -r + r i/n. No rotation. (For n not divisible by 4 the path has a small jump at the
  switches; that is the official behaviour and is kept.)
* ``circle_rotating``: r = 0.05 |c_z|; eye = (r cos(2 pi i/n), r sin(2 pi i/n), 3 r i/n), looking at c.
  Frame 0 is NOT the identity: the camera starts at (r, 0, 0) and looks at c.
* ``surrounding``: radius rho = sqrt(c_x^2 + c_z^2); a_i = -(pi/4) i/n - atan2(c_z, c_x);
  eye = (c_x + rho cos a_i, 0, c_z + rho sin a_i), looking at c. A 45 degree sweep in total (the last
  frame reaches 45 (n-1)/n degrees). Frame 0 is NOT the identity: since cos(-atan2(c_z,c_x)) = c_x/rho
  and sin(...) = -c_z/rho, the first eye is (2 c_x, 0, 0) (at the origin only when c_x = 0), and it
  looks at c, which also tilts it when c_y != 0. Kept as coded.
* ``camera_rotate``: c2w rotation R_z(a_i) = [[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]] with
  a_i = 30 deg * sin(pi i/n); no translation (a roll about the optical axis and back).

Look-at basis of the official code (used by ``circle_rotating`` and ``surrounding``): with the
world "up" vector u = (0, 1, 0), forward f = normalise(c - eye), right = normalise(f x u),
up' = normalise(right x f), and ``R = [-right, up', f]`` (columns). In OpenCV axes (0, 1, 0) is world
*down*, so -right is the camera x (image right) and up' is the camera y (image down); the result is a
proper rotation (det +1) and equals :func:`look_at_c2w` with ``up = (0, -1, 0)``. For f = +z it is the
identity. Choices we made where the official code is silent: the official generators' optional
``z_progress`` switch (always True in ``render_trajectory``) is not exposed; a look-at direction
parallel to the up vector raises :class:`MoGe4DInputError` (the official code would produce NaN).

Our presets (frame 0 is always the identity)
--------------------------------------------
Orbits rotate the camera rigidly about a pivot, so the pivot stays at the same pixel on every frame
and the distance to it is constant. With the default ``pivot_mode="axis"`` the pivot is on the first
camera's optical axis at depth ``pivot * D`` (the scene centre as seen by the camera), so the camera
looks straight at it on every frame. ``pivot_mode="centroid"`` pivots about the mean of ``points0``
instead (the official "centre"). Positive angles / distances move in the direction of the preset's
name; negative values reverse it.

Hand-written because kornia has no camera-trajectory generators; rotations use plain 3x3 matrices.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping, Optional, Sequence

import torch

from ..errors import MoGe4DInputError, require

F64 = torch.float64
EASINGS = ("ease_in_out", "linear", "ease_in", "ease_out")


# ----------------------------------------------------------------------------------------------------------------------
# Pose helpers (float64)
# ----------------------------------------------------------------------------------------------------------------------
def _vec3(v: Any, name: str) -> torch.Tensor:
    """A 3-vector as float64 CPU tensor, with a readable error for anything else."""
    try:
        t = torch.as_tensor(v, dtype=F64).detach().cpu().reshape(-1)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise MoGe4DInputError(f"{name}: expected 3 numbers (x, y, z), got {v!r}") from exc
    require(t.numel() == 3, f"{name}: expected 3 numbers (x, y, z), got {t.numel()}")
    require(bool(torch.isfinite(t).all()), f"{name}: contains NaN or inf: {t.tolist()}")
    return t


def rot_x(a: float | torch.Tensor) -> torch.Tensor:
    """Rotation about +x by ``a`` radians, float64 (...,3,3): y -> z. In OpenCV axes, +a turns +z towards -y."""
    a = torch.as_tensor(a, dtype=F64)
    c, s, o, z = torch.cos(a), torch.sin(a), torch.ones_like(a), torch.zeros_like(a)
    return torch.stack([torch.stack([o, z, z], -1), torch.stack([z, c, -s], -1), torch.stack([z, s, c], -1)], -2)


def rot_y(a: float | torch.Tensor) -> torch.Tensor:
    """Rotation about +y by ``a`` radians, float64 (...,3,3): z -> x. In OpenCV axes, +a turns +z towards +x."""
    a = torch.as_tensor(a, dtype=F64)
    c, s, o, z = torch.cos(a), torch.sin(a), torch.ones_like(a), torch.zeros_like(a)
    return torch.stack([torch.stack([c, z, s], -1), torch.stack([z, o, z], -1), torch.stack([-s, z, c], -1)], -2)


def rot_z(a: float | torch.Tensor) -> torch.Tensor:
    """Rotation about +z by ``a`` radians, float64 (...,3,3): x -> y (the official ``R_z``)."""
    a = torch.as_tensor(a, dtype=F64)
    c, s, o, z = torch.cos(a), torch.sin(a), torch.ones_like(a), torch.zeros_like(a)
    return torch.stack([torch.stack([c, -s, z], -1), torch.stack([s, c, z], -1), torch.stack([z, z, o], -1)], -2)


def make_c2w(R: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Stack rotations ``R (...,3,3)`` and centres ``t (...,3)`` into camera-to-world ``(...,4,4)`` float64."""
    R = torch.as_tensor(R, dtype=F64)
    t = torch.as_tensor(t, dtype=F64)
    batch = torch.broadcast_shapes(R.shape[:-2], t.shape[:-1])
    out = torch.zeros(*batch, 4, 4, dtype=F64)
    out[..., :3, :3] = R
    out[..., :3, 3] = t
    out[..., 3, 3] = 1.0
    return out


def look_at_R(eye: torch.Tensor, target: torch.Tensor, up: Sequence[float] | torch.Tensor = (0.0, -1.0, 0.0),
              name: str = "look_at") -> torch.Tensor:
    """Rotation (3,3) float64 of a camera at ``eye`` looking at ``target`` with no roll relative to ``up``.

    OpenCV axes: z = normalise(target - eye), x = normalise(z x up) (image right), y = z x x (image
    down). ``up`` is the world *up* direction, ``(0, -1, 0)`` in OpenCV world axes. Raises
    :class:`MoGe4DInputError` when eye == target or the view direction is parallel to ``up``.
    """
    eye, target, up = _vec3(eye, f"{name}.eye"), _vec3(target, f"{name}.target"), _vec3(up, f"{name}.up")
    d = target - eye
    dn = float(d.norm())
    require(dn > 1e-12, f"{name}: camera position and look-at target coincide ({eye.tolist()}); move one of them")
    z = d / dn
    x = torch.linalg.cross(z, up)
    xn = float(x.norm())
    require(xn > 1e-9 * max(1.0, float(up.norm())),
            f"{name}: view direction {z.tolist()} is parallel to the up vector {up.tolist()}; "
            "the roll is undefined. Use a different up vector or target.")
    x = x / xn
    y = torch.linalg.cross(z, x)
    return torch.stack([x, y, z], dim=1)


def look_at_c2w(eye: Any, target: Any, up: Sequence[float] | torch.Tensor = (0.0, -1.0, 0.0),
                name: str = "look_at") -> torch.Tensor:
    """Camera-to-world (4,4) float64 at ``eye`` looking at ``target`` (see :func:`look_at_R`).

    Args:
        eye: camera centre, 3 numbers in world coordinates (the scene's unit; OpenCV axes).
        target: the point the camera looks at (optical axis through it), same frame and unit.
        up: world up direction, 3 numbers; ``(0, -1, 0)`` is up in OpenCV world axes.
        name: prefix of error messages.

    Returns:
        (4, 4) float64 CPU tensor: rotation columns = camera x (image right), y (image down), z (forward) in world
        coordinates, last column = ``eye``.

    Raises:
        MoGe4DInputError: an input that is not 3 finite numbers, ``eye == target``, or a view direction parallel to
            ``up``.
    """
    return make_c2w(look_at_R(eye, target, up, name), _vec3(eye, f"{name}.eye"))


def ease(t: torch.Tensor, kind: str) -> torch.Tensor:
    """Easing curve on t in [0, 1] (see module docstring). ``kind`` in :data:`EASINGS`.

    Args:
        t: times in [0, 1], any shape (or a number).
        kind: ``"linear"``, ``"ease_in"``, ``"ease_out"`` or ``"ease_in_out"``.

    Returns:
        e(t) float64 of the shape of ``t``, in [0, 1], with e(0) = 0 and e(1) = 1.

    Raises:
        MoGe4DInputError: ``kind`` is not one of :data:`EASINGS`.
    """
    t = torch.as_tensor(t, dtype=F64)
    if kind == "linear":
        return t
    if kind == "ease_in":
        return t * t
    if kind == "ease_out":
        return 1.0 - (1.0 - t) ** 2
    if kind == "ease_in_out":
        return t * t * (3.0 - 2.0 * t)
    raise MoGe4DInputError(f"easing: unknown easing {kind!r}; choose one of {', '.join(EASINGS)}")


def path_time(n: int) -> torch.Tensor:
    """Our presets' time t_i = i/(n-1), float64 (n,); [0.] when n == 1."""
    if n == 1:
        return torch.zeros(1, dtype=F64)
    return torch.arange(n, dtype=F64) / (n - 1)


# ----------------------------------------------------------------------------------------------------------------------
# Scene statistics
# ----------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SceneStats:
    """Scene centre ``centre (3,)`` (mean of finite points) and depth ``depth`` (median z of points with z > 0).

    Both in the unit of the points (metres for metric depth), world = first-frame camera, OpenCV axes; ``centre``
    is a float64 CPU tensor, ``depth`` a float > 0.
    """

    centre: torch.Tensor
    depth: float


def scene_stats(points0: Optional[torch.Tensor], preset: str = "") -> SceneStats:
    """Statistics of the first-frame points ``points0 (...,3)`` (world = first-frame camera, OpenCV axes).

    Args:
        points0: (N, 3) or (H, W, 3) points, any device and float dtype; NaN / inf points are ignored.
        preset: the preset's name, for error messages.

    Returns:
        :class:`SceneStats`: centre (3,) float64 = mean of the finite points, depth = median z of those with z > 0.

    Raises:
        MoGe4DInputError: ``points0`` is None, not a (..., 3) tensor, has no finite point, or none with z > 0.
    """
    what = f"camera preset {preset!r}: " if preset else ""
    require(points0 is not None,
            f"{what}points0 is required (the first-frame points (N,3), world = first-frame camera) because "
            "the path is sized to the scene; connect the trajectories / geometry")
    require(isinstance(points0, torch.Tensor), f"{what}points0: expected a torch.Tensor (N,3), got {type(points0).__name__}")
    require(points0.ndim >= 2 and points0.shape[-1] == 3,
            f"{what}points0: expected shape (N,3) (or (H,W,3)), got {tuple(points0.shape)}")
    p = points0.detach().reshape(-1, 3).to("cpu", F64)
    p = p[torch.isfinite(p).all(dim=1)]
    require(p.shape[0] > 0, f"{what}points0: no finite point; the scene is empty or all NaN / inf")
    z = p[:, 2]
    zpos = z[z > 0]
    require(zpos.numel() > 0,
            f"{what}points0: no point in front of the camera (z > 0); points must be in the first-frame "
            "camera frame, OpenCV axes (z forward)")
    return SceneStats(centre=p.mean(dim=0), depth=float(zpos.median()))


# ----------------------------------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PresetParam:
    """One tunable parameter of a preset (enough for a ComfyUI widget).

    ``kind`` is ``"float"``, ``"int"``, ``"bool"`` or ``"choice"`` (then ``choices`` lists the values);
    ``min`` / ``max`` are inclusive bounds for numbers; ``unit`` names the unit ("deg", "x scene depth",
    "x |c_z|", "turns", ...); ``doc`` says what it does and its sign convention.
    """

    name: str
    kind: str
    default: Any
    doc: str
    unit: str = ""
    min: Optional[float] = None
    max: Optional[float] = None
    step: Optional[float] = None
    choices: tuple = ()


@dataclass(frozen=True)
class CameraPreset:
    """A named camera path: ``generate(n, stats, params) -> (c2w (n,4,4) float64, focal_scale (n,) or None)``.

    ``uses_scene``: needs ``points0`` (centre / depth); ``official``: reproduces the official code;
    ``doc``: what the path does, for tooltips.
    """

    name: str
    doc: str
    params: tuple
    uses_scene: bool
    official: bool
    generate: Callable = field(repr=False, compare=False)

    @property
    def description(self) -> str:
        """Alias of ``doc`` (one-paragraph description for tooltips and ``python -m moge4d_core presets``)."""
        return self.doc

    def defaults(self) -> dict:
        """Parameter name -> default value."""
        return {p.name: p.default for p in self.params}

    def param(self, name: str) -> PresetParam:
        """The :class:`PresetParam` called ``name``; raises ``KeyError`` when the preset has none."""
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)


def resolve_params(preset: CameraPreset, params: Mapping[str, Any]) -> dict:
    """Validate user ``params`` against ``preset`` and fill defaults; raises :class:`MoGe4DInputError`.

    Args:
        preset: the preset whose :class:`PresetParam` list applies.
        params: parameter name -> value (numbers in each parameter's ``unit``; a 1-element tensor is accepted).

    Returns:
        Every parameter of the preset by name: ints for ``int``, floats for ``float``, as given for ``bool`` and
        ``choice``.

    Raises:
        MoGe4DInputError: an unknown name, a value of the wrong kind, not finite, a non-whole ``int``, or outside
            ``[min, max]``.
    """
    valid = {p.name: p for p in preset.params}
    unknown = sorted(set(params) - set(valid))
    if unknown:
        listed = ", ".join(valid) if valid else "none"
        raise MoGe4DInputError(f"camera preset {preset.name!r}: unknown parameter(s) {', '.join(unknown)}; "
                               f"valid parameters: {listed}")
    out = {}
    for p in preset.params:
        v = params.get(p.name, p.default)
        where = f"camera preset {preset.name!r}: parameter {p.name!r}"
        if p.kind == "choice":
            require(isinstance(v, str) and v in p.choices, f"{where} must be one of {', '.join(p.choices)}, got {v!r}")
        elif p.kind == "bool":
            require(isinstance(v, bool), f"{where} must be true or false, got {v!r}")
        else:
            if isinstance(v, torch.Tensor) and v.numel() == 1:
                v = v.item()
            require(isinstance(v, numbers.Real) and not isinstance(v, bool),
                    f"{where} must be a number, got {type(v).__name__} {v!r}")
            if p.kind == "int":
                require(float(v).is_integer(), f"{where} must be a whole number, got {v!r}")
                v = int(v)
            else:
                v = float(v)
            require(math.isfinite(v), f"{where} must be finite, got {v}")
            lo = -math.inf if p.min is None else p.min
            hi = math.inf if p.max is None else p.max
            require(lo <= v <= hi, f"{where} must be in [{lo}, {hi}] {p.unit}, got {v}")
        out[p.name] = v
    return out


def _easing_param() -> PresetParam:
    return PresetParam("easing", "choice", "ease_in_out",
                       "Speed profile over the path: ease_in_out starts and stops smoothly; linear is constant speed.",
                       choices=EASINGS)


# ----------------------------------------------------------------------------------------------------------------------
# Official presets (formulas of the official infer.py; i/n time)
# ----------------------------------------------------------------------------------------------------------------------
def _official_static(n: int, stats: Optional[SceneStats], p: dict):
    return make_c2w(torch.eye(3, dtype=F64).expand(n, 3, 3), torch.zeros(n, 3, dtype=F64)), None


def _official_forward_backward(n: int, stats: SceneStats, p: dict):
    r = p["radius_scale"] * abs(float(stats.centre[2]))
    z = torch.zeros(n, dtype=F64)
    for i in range(n):
        if i < n // 4:
            z[i] = r * i / n
        elif i < 3 * n // 4:
            z[i] = 0.5 * r - r * i / n
        else:
            z[i] = -r + r * i / n
    t = torch.zeros(n, 3, dtype=F64)
    t[:, 2] = z
    return make_c2w(torch.eye(3, dtype=F64).expand(n, 3, 3), t), None


def _official_circle_rotating(n: int, stats: SceneStats, p: dict):
    r = p["radius_scale"] * abs(float(stats.centre[2]))
    c2w = []
    for i in range(n):
        a = 2.0 * math.pi * i / n
        eye = torch.tensor([r * math.cos(a), r * math.sin(a), 3.0 * r * i / n], dtype=F64)
        c2w.append(look_at_c2w(eye, stats.centre, name=f"circle_rotating frame {i}"))
    return torch.stack(c2w), None


def _official_surrounding(n: int, stats: SceneStats, p: dict):
    cx, cz = float(stats.centre[0]), float(stats.centre[2])
    rho = math.sqrt(cx * cx + cz * cz)
    sweep = math.radians(p["sweep_deg"])
    c2w = []
    for i in range(n):
        a = -sweep * i / n - math.atan2(cz, cx)
        eye = torch.tensor([cx + rho * math.cos(a), 0.0, cz + rho * math.sin(a)], dtype=F64)
        c2w.append(look_at_c2w(eye, stats.centre, name=f"surrounding frame {i}"))
    return torch.stack(c2w), None


def _official_camera_rotate(n: int, stats: Optional[SceneStats], p: dict):
    i = torch.arange(n, dtype=F64)
    a = math.radians(p["max_deg"]) * torch.sin(math.pi * i / n)
    return make_c2w(rot_z(a), torch.zeros(n, 3, dtype=F64)), None


# ----------------------------------------------------------------------------------------------------------------------
# Our presets (t = i/(n-1), eased; frame 0 = identity)
# ----------------------------------------------------------------------------------------------------------------------
def _pivot(stats: SceneStats, p: dict) -> torch.Tensor:
    if p["pivot_mode"] == "centroid":
        return stats.centre.clone()
    return torch.tensor([0.0, 0.0, p["pivot"] * stats.depth], dtype=F64)


def _rotate_about(R: torch.Tensor, pivot: torch.Tensor) -> torch.Tensor:
    """Rigid rotation(s) ``R (n,3,3)`` of the identity camera about ``pivot``: c2w = [R, pivot - R pivot]."""
    return make_c2w(R, pivot - R @ pivot)


def _orbit(axis: str, sign: float):
    def gen(n: int, stats: SceneStats, p: dict):
        a = sign * math.radians(p["angle_deg"]) * ease(path_time(n), p["easing"])
        R = rot_y(a) if axis == "y" else rot_x(a)
        return _rotate_about(R, _pivot(stats, p)), None
    return gen


def _translate(axis: int, sign: float):
    def gen(n: int, stats: SceneStats, p: dict):
        t = torch.zeros(n, 3, dtype=F64)
        t[:, axis] = sign * p["distance"] * stats.depth * ease(path_time(n), p["easing"])
        return make_c2w(torch.eye(3, dtype=F64).expand(n, 3, 3), t), None
    return gen


def _rotate_in_place(axis: str, sign: float):
    def gen(n: int, stats: Optional[SceneStats], p: dict):
        a = sign * math.radians(p["angle_deg"]) * ease(path_time(n), p["easing"])
        R = rot_y(a) if axis == "y" else rot_x(a)
        return make_c2w(R, torch.zeros(n, 3, dtype=F64)), None
    return gen


def _zoom(sign: float):
    def gen(n: int, stats: Optional[SceneStats], p: dict):
        scale = p["factor"] ** (sign * ease(path_time(n), p["easing"]))
        return make_c2w(torch.eye(3, dtype=F64).expand(n, 3, 3), torch.zeros(n, 3, dtype=F64)), scale
    return gen


def _spiral(n: int, stats: SceneStats, p: dict):
    D = stats.depth
    require(p["forward"] < p["pivot"],
            f"camera preset 'spiral': forward ({p['forward']}) must be smaller than pivot ({p['pivot']}), "
            "otherwise the camera would pass through the point it looks at")
    t = path_time(n)
    e = ease(t, p["easing"])
    theta = 2.0 * math.pi * p["turns"] * t
    r = p["radius"] * D * e
    eyes = torch.stack([r * torch.cos(theta), r * torch.sin(theta), p["forward"] * D * e], dim=-1)
    target = torch.tensor([0.0, 0.0, p["pivot"] * D], dtype=F64)
    return torch.stack([look_at_c2w(eyes[i], target, name=f"spiral frame {i}") for i in range(n)]), None


# ----------------------------------------------------------------------------------------------------------------------
# Parameter specs
# ----------------------------------------------------------------------------------------------------------------------
def _orbit_params(direction: str) -> tuple:
    return (
        PresetParam("angle_deg", "float", 90.0,
                    f"Total orbit angle; positive moves the camera {direction} around the pivot, negative reverses.",
                    unit="deg", min=-360.0, max=360.0, step=1.0),
        PresetParam("pivot", "float", 1.0,
                    "Pivot depth on the first camera's optical axis, as a fraction of the scene depth "
                    "(median z of the first-frame points). Used when pivot_mode is 'axis'.",
                    unit="x scene depth", min=0.01, max=100.0, step=0.01),
        PresetParam("pivot_mode", "choice", "axis",
                    "'axis': pivot on the optical axis at pivot x depth (the camera keeps looking at it); "
                    "'centroid': pivot at the mean of the first-frame points (it keeps its pixel position).",
                    choices=("axis", "centroid")),
        _easing_param(),
    )


def _distance_param(direction: str, default: float) -> PresetParam:
    return PresetParam("distance", "float", default,
                       f"How far the camera moves {direction}, as a fraction of the scene depth "
                       "(median z of the first-frame points); negative reverses.",
                       unit="x scene depth", min=-10.0, max=10.0, step=0.01)


def _angle_param(direction: str, default: float) -> PresetParam:
    return PresetParam("angle_deg", "float", default,
                       f"Total rotation; positive turns the view {direction}, negative reverses.",
                       unit="deg", min=-180.0, max=180.0, step=1.0)


def _zoom_param(direction: str) -> PresetParam:
    return PresetParam("factor", "float", 1.5,
                       f"Focal length multiplier reached on the last frame ({direction}); the principal point is kept.",
                       unit="x focal", min=1.0, max=20.0, step=0.05)


def _build_registry() -> dict:
    P = PresetParam
    presets = [
        CameraPreset("static", "Official: the first camera on every frame (identity pose).", (), False, True,
                     _official_static),
        CameraPreset("forward_backward",
                     "Official: moves forward along the optical axis, back behind the start, then returns "
                     "(z = r i/n, 0.5r - r i/n, -r + r i/n; switches at n//4 and 3n//4).",
                     (P("radius_scale", "float", 0.4, "r = radius_scale x |c_z| (c = mean of the first-frame points).",
                        unit="x |c_z|", min=0.0, max=10.0, step=0.01),), True, True, _official_forward_backward),
        CameraPreset("circle_rotating",
                     "Official: circles in the image plane while moving forward, always looking at the scene centre "
                     "(eye = (r cos 2pi i/n, r sin 2pi i/n, 3r i/n)); frame 0 is not the identity.",
                     (P("radius_scale", "float", 0.05, "r = radius_scale x |c_z| (c = mean of the first-frame points).",
                        unit="x |c_z|", min=0.0, max=10.0, step=0.01),), True, True, _official_circle_rotating),
        CameraPreset("surrounding",
                     "Official: orbit in the x-z plane around the scene centre (45 deg by default), looking at it; "
                     "frame 0 is at (2 c_x, 0, 0), not the identity.",
                     (P("sweep_deg", "float", 45.0,
                        "Total sweep over n frames (angle_i = -sweep i/n - atan2(c_z, c_x)); 45 is the official value.",
                        unit="deg", min=-360.0, max=360.0, step=1.0),), True, True, _official_surrounding),
        CameraPreset("camera_rotate",
                     "Official: roll about the optical axis, angle = max_deg sin(pi i/n) (out and nearly back).",
                     (P("max_deg", "float", 30.0, "Peak roll; positive applies R_z(+angle) to the camera (the official sign).",
                        unit="deg", min=-180.0, max=180.0, step=1.0),), False, True, _official_camera_rotate),
        CameraPreset("orbit_left", "Paper: orbit to the left around the scene centre (90 deg by default).",
                     _orbit_params("left"), True, False, _orbit("y", +1.0)),
        CameraPreset("orbit_right", "Paper: orbit to the right around the scene centre (90 deg by default).",
                     _orbit_params("right"), True, False, _orbit("y", -1.0)),
        CameraPreset("orbit_up", "Paper: orbit upwards around the scene centre (90 deg by default).",
                     _orbit_params("up"), True, False, _orbit("x", -1.0)),
        CameraPreset("orbit_down", "Paper: orbit downwards around the scene centre (90 deg by default).",
                     _orbit_params("down"), True, False, _orbit("x", +1.0)),
        CameraPreset("dolly_in", "Move forward along the optical axis (into the scene).",
                     (_distance_param("forward", 0.3), _easing_param()), True, False, _translate(2, +1.0)),
        CameraPreset("dolly_out", "Move backward along the optical axis (away from the scene).",
                     (_distance_param("backward", 0.3), _easing_param()), True, False, _translate(2, -1.0)),
        CameraPreset("truck_left", "Slide the camera left, keeping its orientation.",
                     (_distance_param("left", 0.2), _easing_param()), True, False, _translate(0, -1.0)),
        CameraPreset("truck_right", "Slide the camera right, keeping its orientation.",
                     (_distance_param("right", 0.2), _easing_param()), True, False, _translate(0, +1.0)),
        CameraPreset("pedestal_up", "Raise the camera, keeping its orientation.",
                     (_distance_param("up", 0.2), _easing_param()), True, False, _translate(1, -1.0)),
        CameraPreset("pedestal_down", "Lower the camera, keeping its orientation.",
                     (_distance_param("down", 0.2), _easing_param()), True, False, _translate(1, +1.0)),
        CameraPreset("pan_left", "Turn the camera left in place (yaw).",
                     (_angle_param("left", 20.0), _easing_param()), False, False, _rotate_in_place("y", -1.0)),
        CameraPreset("pan_right", "Turn the camera right in place (yaw).",
                     (_angle_param("right", 20.0), _easing_param()), False, False, _rotate_in_place("y", +1.0)),
        CameraPreset("tilt_up", "Tilt the camera up in place (pitch).",
                     (_angle_param("up", 15.0), _easing_param()), False, False, _rotate_in_place("x", +1.0)),
        CameraPreset("tilt_down", "Tilt the camera down in place (pitch).",
                     (_angle_param("down", 15.0), _easing_param()), False, False, _rotate_in_place("x", -1.0)),
        CameraPreset("zoom_in", "Static camera, focal length grows to factor x (geometric interpolation).",
                     (_zoom_param("zoom in"), _easing_param()), False, False, _zoom(+1.0)),
        CameraPreset("zoom_out", "Static camera, focal length shrinks to 1/factor (geometric interpolation).",
                     (_zoom_param("zoom out"), _easing_param()), False, False, _zoom(-1.0)),
        CameraPreset("spiral",
                     "Spiral: the camera circles the optical axis with a radius growing from 0 while moving "
                     "forward, always looking at a point on the axis.",
                     (P("radius", "float", 0.1, "Final circle radius as a fraction of the scene depth.",
                        unit="x scene depth", min=0.0, max=10.0, step=0.01),
                      P("turns", "float", 1.0, "Number of turns; negative turns the other way.",
                        unit="turns", min=-20.0, max=20.0, step=0.1),
                      P("forward", "float", 0.2, "Forward travel as a fraction of the scene depth (negative: backward).",
                        unit="x scene depth", min=-10.0, max=10.0, step=0.01),
                      P("pivot", "float", 1.0, "Depth of the look-at point on the optical axis, fraction of the scene depth.",
                        unit="x scene depth", min=0.01, max=100.0, step=0.01),
                      _easing_param()), True, False, _spiral),
    ]
    return {p.name: p for p in presets}


#: name -> :class:`CameraPreset`, in display order (official first). Read-only.
CAMERA_PRESETS: Mapping[str, CameraPreset] = MappingProxyType(_build_registry())
