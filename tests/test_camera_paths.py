"""Camera paths: official presets vs the official formulas, our presets' geometry, keyframes, JSON, LOAD3D, plot.

References are recomputed here in float64 with numpy, independently of the code under test. The
official formulas follow ``Zhangyr2022/MoGe4D`` ``scripts/inference/infer.py`` (generate_*_trajectory).
"""
import json
import math

import numpy as np
import pytest
import torch

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.camera.paths import (
    CAMERA_PRESETS,
    Keyframe,
    c2w_from_load3d,
    keyframe_path,
    load3d_camera_path,
    load3d_from_c2w,
    make_camera_path,
)
from moge4d_core.io.camera_json import (
    camera_path_from_json,
    camera_path_from_nerfstudio,
    camera_path_to_json,
    camera_path_to_nerfstudio,
    load_camera_path_file,
    save_camera_path_file,
)
from moge4d_core.preview.camera_plot import frustum_plot
from moge4d_core.types import CameraPath

W, H = 64, 48


@pytest.fixture(scope="module")
def pts():
    g = torch.Generator().manual_seed(1)
    p = torch.randn(3000, 3, generator=g, dtype=torch.float64) * torch.tensor([1.0, 0.6, 0.4], dtype=torch.float64)
    p = p + torch.tensor([0.3, -0.2, 2.5], dtype=torch.float64)
    p[5] = float("nan")  # ignored by the scene statistics
    return p.float()


def _np(p):
    a = p.double().numpy()
    return a[np.isfinite(a).all(1)]


def _centre(p):
    return _np(p).mean(0)


def _depth(p):
    z = _np(p)[:, 2]
    return float(np.median(z[z > 0]))


def _official_lookat(cam_pos, target):
    """The official look-at, literally: R = [-right, up_corrected, forward].T with up (0,1,0)."""
    up = np.array([0, 1, 0])
    forward = target - cam_pos
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, up)
    right = right / np.linalg.norm(right)
    up_c = np.cross(right, forward)
    up_c = up_c / np.linalg.norm(up_c)
    M = np.eye(4)
    M[:3, :3] = np.array([-right, up_c, forward]).T
    M[:3, 3] = cam_pos
    return M


def _rigid(c2w, tol=1e-5):
    c = c2w.double()
    R = c[:, :3, :3]
    assert (R.transpose(1, 2) @ R - torch.eye(3, dtype=torch.float64)).abs().max() < tol
    assert (torch.linalg.det(R) - 1).abs().max() < tol
    assert torch.allclose(c[:, 3], torch.tensor([0, 0, 0, 1.0], dtype=torch.float64).expand(c.shape[0], 4))


def _rot_angle(Ra, Rb):
    c = (np.trace(Ra.T @ Rb) - 1) / 2
    return math.degrees(math.acos(max(-1.0, min(1.0, c))))


# ------------------------------------------------------------------------------------------------------------------
# Official presets vs the official formulas
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [49, 10, 7])
def test_official_forward_backward(pts, n):
    c = _centre(pts)
    for scale in (0.4, 0.25):
        r = scale * abs(c[2])
        path = make_camera_path("forward_backward", n, W, H, points0=pts, radius_scale=scale)
        for i in range(n):
            if i < n // 4:
                z = r * i / n
            elif i < 3 * n // 4:
                z = 0.5 * r - r * i / n
            else:
                z = -r + r * i / n
            ref = np.eye(4)
            ref[2, 3] = z
            np.testing.assert_allclose(path.c2w[i].double().numpy(), ref, atol=1e-6)


@pytest.mark.parametrize("n", [49, 7])
def test_official_circle_rotating(pts, n):
    c = _centre(pts)
    r = 0.05 * abs(c[2])
    path = make_camera_path("circle_rotating", n, W, H, points0=pts)
    for i in range(n):
        a = 2 * math.pi * i / n
        ref = _official_lookat(np.array([r * math.cos(a), r * math.sin(a), 3 * r * i / n]), c)
        np.testing.assert_allclose(path.c2w[i].double().numpy(), ref, atol=2e-6)
    _rigid(path.c2w)


@pytest.mark.parametrize("n", [49, 7])
def test_official_surrounding(pts, n):
    c = _centre(pts)
    for sweep in (45.0, 90.0):
        path = make_camera_path("surrounding", n, W, H, points0=pts, sweep_deg=sweep)
        for i in range(n):
            # official: angle = -math.pi * i / n_frames / 4 - atan2(c_z, c_x) (sweep 45 deg)
            a = -math.radians(sweep) * i / n - math.atan2(c[2], c[0])
            if sweep == 45.0:
                assert a == pytest.approx(-math.pi * i / n / 4 - math.atan2(c[2], c[0]), abs=1e-12)
            rad = math.sqrt(c[0] ** 2 + c[2] ** 2)
            ref = _official_lookat(np.array([c[0] + rad * math.cos(a), 0.0, c[2] + rad * math.sin(a)]), c)
            np.testing.assert_allclose(path.c2w[i].double().numpy(), ref, atol=3e-6)
        # the first eye is (2 c_x, 0, 0): a documented property of the official formula
        np.testing.assert_allclose(path.c2w[0, :3, 3].double().numpy(), [2 * c[0], 0, 0], atol=1e-6)


@pytest.mark.parametrize("n", [49, 8])
def test_official_camera_rotate(n):
    path = make_camera_path("camera_rotate", n, W, H)  # no points needed
    for i in range(n):
        a = math.radians(30) * math.sin(math.pi * i / n)
        ref = np.eye(4)
        ref[:3, :3] = [[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]]
        np.testing.assert_allclose(path.c2w[i].double().numpy(), ref, atol=1e-6)


def test_official_static():
    path = make_camera_path("static", 5, W, H, fov_deg=50.0)
    assert torch.equal(path.c2w, torch.eye(4).expand(5, 4, 4))
    fx = 0.5 * W / math.tan(math.radians(25.0))
    np.testing.assert_allclose(path.K[:, 0, 0].numpy(), fx, rtol=1e-6)
    np.testing.assert_allclose(path.K[:, 1, 1].numpy(), fx, rtol=1e-6)
    np.testing.assert_allclose(path.K[:, :2, 2].numpy(), np.tile([W / 2, H / 2], (5, 1)), rtol=1e-6)


# ------------------------------------------------------------------------------------------------------------------
# Every preset: rigid poses, shapes, identity first frame, registry metadata
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CAMERA_PRESETS))
def test_every_preset_is_rigid(pts, name):
    n = 13
    path = make_camera_path(name, n, W, H, points0=pts)
    assert isinstance(path, CameraPath) and path.name == name
    assert path.c2w.shape == (n, 4, 4) and path.K.shape == (n, 3, 3)
    assert path.c2w.dtype == torch.float32 and path.K.dtype == torch.float32
    _rigid(path.c2w)
    if name not in ("circle_rotating", "surrounding"):
        assert torch.allclose(path.c2w[0], torch.eye(4), atol=1e-7)
    one = make_camera_path(name, 1, W, H, points0=pts)
    assert one.c2w.shape == (1, 4, 4)
    spec = CAMERA_PRESETS[name]
    assert spec.description == spec.doc and len(spec.doc) > 10  # the CLI prints `description`
    assert set(spec.defaults()) == {p.name for p in spec.params}
    for p in spec.params:
        assert p.doc and p.kind in ("float", "int", "bool", "choice")
        if p.kind == "choice":
            assert p.default in p.choices


def test_registry_lists_required_presets():
    required = {"static", "forward_backward", "circle_rotating", "surrounding", "camera_rotate", "orbit_left",
                "orbit_right", "orbit_up", "orbit_down", "dolly_in", "dolly_out", "pan_left", "pan_right",
                "tilt_up", "tilt_down", "truck_left", "truck_right", "pedestal_up", "pedestal_down", "zoom_in",
                "zoom_out", "spiral"}
    assert required <= set(CAMERA_PRESETS)
    assert {k for k, v in CAMERA_PRESETS.items() if v.official} == {
        "static", "forward_backward", "circle_rotating", "surrounding", "camera_rotate"}


# ------------------------------------------------------------------------------------------------------------------
# Orbits
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,angle,moves", [("orbit_left", 90.0, (0, -1)), ("orbit_right", 90.0, (0, +1)),
                                              ("orbit_up", 90.0, (1, -1)), ("orbit_down", 60.0, (1, +1))])
def test_orbit_geometry(pts, name, angle, moves):
    n = 25
    D = _depth(pts)
    path = make_camera_path(name, n, W, H, points0=pts, angle_deg=angle, pivot=0.8)
    c2w = path.c2w.double().numpy()
    pivot = np.array([0.0, 0.0, 0.8 * D])
    off = pivot[None] - c2w[:, :3, 3]
    dist = np.linalg.norm(off, axis=1)
    np.testing.assert_allclose(dist, 0.8 * D, rtol=1e-5)  # constant distance
    # looks at the pivot on every frame: the camera z axis is the direction to the pivot
    np.testing.assert_allclose(c2w[:, :3, 2], off / dist[:, None], atol=1e-5)
    # sweeps exactly the requested angle (between first and last offsets and orientations)
    sweep = math.degrees(math.acos(np.clip(off[0] @ off[-1] / dist[0] / dist[-1], -1, 1)))
    assert sweep == pytest.approx(angle, abs=1e-3)
    assert _rot_angle(c2w[0, :3, :3], c2w[-1, :3, :3]) == pytest.approx(angle, abs=1e-3)
    # moves in the named direction and stays in its plane
    axis, sign = moves
    assert np.sign(c2w[-1, axis, 3]) == sign
    other = 1 - axis
    np.testing.assert_allclose(c2w[:, other, 3], 0.0, atol=1e-6)
    # eased: symmetric, the middle frame is at half the angle, the first step is slower than linear
    mid = math.degrees(math.acos(np.clip(off[0] @ off[n // 2] / dist[0] / dist[n // 2], -1, 1)))
    assert mid == pytest.approx(angle / 2, abs=1e-3)
    lin = make_camera_path(name, n, W, H, points0=pts, angle_deg=angle, pivot=0.8, easing="linear")
    a_eased = _rot_angle(c2w[0, :3, :3], c2w[1, :3, :3])
    a_lin = _rot_angle(lin.c2w[0, :3, :3].double().numpy(), lin.c2w[1, :3, :3].double().numpy())
    assert a_lin == pytest.approx(angle / (n - 1), abs=1e-3) and a_eased < 0.5 * a_lin


def test_orbit_centroid_keeps_centre_pixel(pts):
    c = _centre(pts)
    path = make_camera_path("orbit_left", 9, W, H, points0=pts, pivot_mode="centroid", angle_deg=70)
    c2w, K = path.c2w.double().numpy(), path.K.double().numpy()
    uv = []
    for i in range(9):
        pc = np.linalg.inv(c2w[i]) @ np.append(c, 1.0)
        pr = K[i] @ pc[:3]
        uv.append(pr[:2] / pr[2])
    np.testing.assert_allclose(np.array(uv), np.tile(uv[0], (9, 1)), atol=1e-3)
    d = np.linalg.norm(c2w[:, :3, 3] - c, axis=1)
    np.testing.assert_allclose(d, d[0], rtol=1e-5)


# ------------------------------------------------------------------------------------------------------------------
# Translations, rotations in place, zoom, spiral
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,axis,sign", [("dolly_in", 2, 1), ("dolly_out", 2, -1), ("truck_left", 0, -1),
                                            ("truck_right", 0, 1), ("pedestal_up", 1, -1), ("pedestal_down", 1, 1)])
def test_translations(pts, name, axis, sign):
    D = _depth(pts)
    path = make_camera_path(name, 11, W, H, points0=pts, distance=0.25, easing="linear")
    c2w = path.c2w.double().numpy()
    exp = np.zeros((11, 3))
    exp[:, axis] = sign * 0.25 * D * np.arange(11) / 10
    np.testing.assert_allclose(c2w[:, :3, 3], exp, atol=1e-5)
    np.testing.assert_allclose(c2w[:, :3, :3], np.tile(np.eye(3), (11, 1, 1)), atol=1e-7)


@pytest.mark.parametrize("name,axis,sign", [("pan_left", 0, -1), ("pan_right", 0, 1), ("tilt_up", 1, -1),
                                            ("tilt_down", 1, 1)])
def test_rotations_in_place(name, axis, sign):
    path = make_camera_path(name, 9, W, H, angle_deg=24.0)
    c2w = path.c2w.double().numpy()
    assert _rot_angle(c2w[0, :3, :3], c2w[-1, :3, :3]) == pytest.approx(24.0, abs=1e-3)
    fwd = c2w[-1, :3, 2]
    assert np.sign(fwd[axis]) == sign and abs(fwd[1 - axis]) < 1e-7
    assert fwd[axis] == pytest.approx(sign * math.sin(math.radians(24.0)), abs=1e-6)
    np.testing.assert_allclose(c2w[:, :3, 3], 0.0)


def test_zoom():
    zi = make_camera_path("zoom_in", 5, W, H, fov_deg=60.0, factor=2.0)
    zo = make_camera_path("zoom_out", 5, W, H, fov_deg=60.0, factor=2.0, easing="linear")
    f0 = 0.5 * W / math.tan(math.radians(30.0))
    assert zi.K[0, 0, 0].item() == pytest.approx(f0, rel=1e-6)
    assert zi.K[-1, 0, 0].item() == pytest.approx(2 * f0, rel=1e-6)
    assert zi.K[-1, 1, 1].item() == pytest.approx(2 * f0, rel=1e-6)
    np.testing.assert_allclose(zo.K[:, 0, 0].numpy(), f0 * 2.0 ** (-np.arange(5) / 4), rtol=1e-6)
    np.testing.assert_allclose(zi.K[:, :2, 2].numpy(), np.tile([W / 2, H / 2], (5, 1)))
    assert torch.equal(zi.c2w, torch.eye(4).expand(5, 4, 4))


def test_spiral_looks_at_pivot(pts):
    D = _depth(pts)
    path = make_camera_path("spiral", 17, W, H, points0=pts, radius=0.1, forward=0.2, pivot=1.0)
    c2w = path.c2w.double().numpy()
    off = np.array([0, 0, D])[None] - c2w[:, :3, 3]
    np.testing.assert_allclose(c2w[:, :3, 2], off / np.linalg.norm(off, axis=1, keepdims=True), atol=1e-5)
    assert np.hypot(c2w[-1, 0, 3], c2w[-1, 1, 3]) == pytest.approx(0.1 * D, rel=1e-5)
    assert c2w[-1, 2, 3] == pytest.approx(0.2 * D, rel=1e-5)


def test_user_K_is_used(pts):
    K = torch.tensor([[300.0, 0, 30.0], [0, 310.0, 25.0], [0, 0, 1]])
    path = make_camera_path("orbit_left", 3, W, H, points0=pts, K=K)
    assert torch.allclose(path.K, K.expand(3, 3, 3))


# ------------------------------------------------------------------------------------------------------------------
# Keyframes
# ------------------------------------------------------------------------------------------------------------------
def _ref_lookat(eye, target, up=(0.0, -1.0, 0.0)):
    """Independent look-at: z to the target, x = z x up, y = z x x (OpenCV, up = world up)."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    z = (target - eye) / np.linalg.norm(target - eye)
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    M = np.eye(4)
    M[:3, :3] = np.stack([x, y, z], 1)
    M[:3, 3] = eye
    return M


def test_keyframe_path_passes_through_keys():
    keys = [Keyframe([0, 0, 0], [0, 0, 3], 60.0),
            Keyframe([1.0, -0.3, 0.5], [0, 0, 3], 50.0),
            {"position": [0.5, -0.6, 1.2], "look_at": [0.2, 0, 3], "fov_deg": 40.0},
            Keyframe([-0.4, 0.1, 0.8], [0, 0.2, 3], 70.0, roll_deg=10.0)]
    for interp in ("catmull_rom", "linear"):
        for kf in (None, [0, 3, 11, 20]):
            path = keyframe_path(keys, 21, W, H, interpolation=interp, key_frames=kf)
            frames = kf or [0, 7, 13, 20]
            _rigid(path.c2w)
            for j, f in enumerate(frames):
                k = keys[j] if isinstance(keys[j], dict) else keys[j].__dict__
                ref = _ref_lookat(k["position"], k["look_at"])
                roll = math.radians(k.get("roll_deg", 0.0))
                ref[:3, :3] = ref[:3, :3] @ np.array([[math.cos(roll), -math.sin(roll), 0],
                                                      [math.sin(roll), math.cos(roll), 0], [0, 0, 1]])
                np.testing.assert_allclose(path.c2w[f].double().numpy(), ref, atol=1e-6)
                fx = 0.5 * W / math.tan(math.radians(k["fov_deg"]) / 2)
                assert path.K[f, 0, 0].item() == pytest.approx(fx, rel=1e-6)


def test_keyframe_linear_midpoint_and_slerp():
    a, b = Keyframe([0, 0, 0], [0, 0, 2], 60.0), Keyframe([2, 0, 0], [0, 0, 2], 40.0)
    path = keyframe_path([a, b], 5, W, H, interpolation="linear", easing="linear")
    c2w = path.c2w.double().numpy()
    np.testing.assert_allclose(c2w[2, :3, 3], [1, 0, 0], atol=1e-6)
    total = _rot_angle(c2w[0, :3, :3], c2w[4, :3, :3])
    assert _rot_angle(c2w[0, :3, :3], c2w[2, :3, :3]) == pytest.approx(total / 2, abs=1e-3)
    assert _rot_angle(c2w[2, :3, :3], c2w[4, :3, :3]) == pytest.approx(total / 2, abs=1e-3)
    fx_mid = 0.5 * W / math.tan(math.radians(50.0) / 2)
    assert path.K[2, 0, 0].item() == pytest.approx(fx_mid, rel=1e-6)
    # Catmull-Rom through collinear, evenly spaced keys stays on the line
    keys = [Keyframe([i * 0.5, 0, 0], [i * 0.5, 0, 3]) for i in range(4)]
    cr = keyframe_path(keys, 13, W, H, easing="linear").c2w.double().numpy()
    np.testing.assert_allclose(cr[:, 1:3, 3], 0.0, atol=1e-7)
    np.testing.assert_allclose(cr[:, 0, 3], np.arange(13) * 1.5 / 12, atol=1e-6)


# ------------------------------------------------------------------------------------------------------------------
# JSON
# ------------------------------------------------------------------------------------------------------------------
def test_own_json_round_trip(pts, tmp_path):
    path = make_camera_path("circle_rotating", 9, W, H, points0=pts)
    obj = json.loads(json.dumps(camera_path_to_json(path, fps=12.0)))
    assert obj["format"] == "moge4d_camera_path" and obj["version"] == 1 and obj["fps"] == 12.0
    assert obj["width"] == W and obj["height"] == H and len(obj["frames"]) == 9
    back = camera_path_from_json(obj)
    assert torch.allclose(back.c2w, path.c2w, atol=1e-6) and torch.allclose(back.K, path.K, atol=1e-6)
    assert back.name == "circle_rotating"
    f = save_camera_path_file(path, tmp_path / "p.json")
    again = load_camera_path_file(f)
    assert torch.allclose(again.c2w, path.c2w, atol=1e-6)


@pytest.mark.parametrize("flip_world", [False, True])
def test_nerfstudio_round_trip(pts, flip_world, tmp_path):
    path = make_camera_path("orbit_up", 7, W, H, points0=pts, fov_deg=55.0)
    ns = json.loads(json.dumps(camera_path_to_nerfstudio(path, fps=8.0, flip_world=flip_world)))
    assert ns["render_width"] == W and ns["render_height"] == H and ns["seconds"] == pytest.approx(7 / 8)
    back = camera_path_from_nerfstudio(ns, flip_world=flip_world)
    assert torch.allclose(back.c2w, path.c2w, atol=1e-6)
    assert torch.allclose(back.K, path.K, atol=1e-4 * path.K.abs().max())
    f = save_camera_path_file(path, tmp_path / "ns.json", fmt="nerfstudio", flip_world=flip_world)
    assert torch.allclose(load_camera_path_file(f, flip_world=flip_world).c2w, path.c2w, atol=1e-6)


def test_nerfstudio_axes_are_opengl():
    c2w = np.eye(4)
    c2w[:3, 3] = [1.0, 2.0, 3.0]
    K = torch.tensor([[50.0, 0, W / 2], [0, 50.0, H / 2], [0, 0, 1]])
    path = CameraPath(c2w=torch.tensor(c2w, dtype=torch.float32)[None], K=K[None], width=W, height=H)
    cam = camera_path_to_nerfstudio(path)["camera_path"][0]
    # OpenGL camera: y up, z back -> the y and z columns are negated; row-major 16 floats
    exp = np.diag([1.0, -1.0, -1.0, 1.0])
    exp[:3, 3] = [1.0, 2.0, 3.0]
    np.testing.assert_allclose(np.array(cam["camera_to_world"]).reshape(4, 4), exp, atol=1e-7)
    assert cam["fov"] == pytest.approx(math.degrees(2 * math.atan(H / 2 / 50.0)), rel=1e-6)
    assert cam["aspect"] == pytest.approx(W / H)
    cam_w = camera_path_to_nerfstudio(path, flip_world=True)["camera_path"][0]
    exp_w = np.eye(4)
    exp_w[:3, 3] = [1.0, -2.0, -3.0]  # world y/z negated, camera axes flipped twice -> identity rotation
    np.testing.assert_allclose(np.array(cam_w["camera_to_world"]).reshape(4, 4), exp_w, atol=1e-7)


# ------------------------------------------------------------------------------------------------------------------
# LOAD3D_CAMERA
# ------------------------------------------------------------------------------------------------------------------
def _d(x, y, z):
    return {"x": x, "y": y, "z": z}


def test_load3d_axes_against_threejs_convention():
    # three.js camera at +Z looking at the origin with +Y up: in our (x,-y,-z) world it sits at z = -5
    # and looks down +z with no rotation.
    c2w, fov = c2w_from_load3d({"position": _d(0, 0, 5), "target": _d(0, 0, 0), "zoom": 1, "cameraType": "perspective",
                                "fov": 40.0})
    exp = np.eye(4)
    exp[2, 3] = -5.0
    np.testing.assert_allclose(c2w.double().numpy(), exp, atol=1e-6)
    assert fov == pytest.approx(40.0)
    # three.js camera at +X looking at the origin: view dir -X, right = view x up = (0,0,-1) in three.js
    c2w, _ = c2w_from_load3d({"position": _d(5, 1, 0), "target": _d(0, 1, 0), "zoom": 2.0, "cameraType": "perspective"})
    R = c2w.double().numpy()[:3, :3]
    np.testing.assert_allclose(R[:, 2], [-1, 0, 0], atol=1e-6)       # forward (OpenCV z)
    np.testing.assert_allclose(R[:, 0], [0, 0, 1], atol=1e-6)        # right: (x,-y,-z) of (0,0,-1)
    np.testing.assert_allclose(R[:, 1], [0, 1, 0], atol=1e-6)        # image down = world down = -(three +Y)
    np.testing.assert_allclose(c2w.double().numpy()[:3, 3], [5, -1, 0], atol=1e-6)


def _quat_to_R(q):
    x, y, z, w = q["x"], q["y"], q["z"], q["w"]
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def test_load3d_matches_comfyui_conventions():
    """ComfyUI RenderSplat without a quaternion: world->splat (x,-y,-z), yaw/pitch basis W = Rx(pitch) Ry(yaw)
    with rows (right, down, forward); CreateCameraInfo's quaternion: three.js lookAt (z = eye - target,
    x = +Y x z, y = z x x, columns)."""
    rng = np.random.default_rng(3)
    for _ in range(4):
        pos, tgt = rng.normal(size=3) * 3, rng.normal(size=3)
        cam = {"position": dict(zip("xyz", pos.tolist())), "target": dict(zip("xyz", tgt.tolist())), "fov": 35.0}
        c2w, _ = c2w_from_load3d(cam)
        c2w = c2w.double().numpy()
        eye, target = pos * [1, -1, -1], tgt * [1, -1, -1]
        fwd = (target - eye) / np.linalg.norm(target - eye)
        yaw, pitch = math.atan2(-fwd[0], fwd[2]), math.asin(fwd[1])
        cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
        Wm = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]]) @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        np.testing.assert_allclose(c2w[:3, :3].T, Wm, atol=1e-6)
        np.testing.assert_allclose(c2w[:3, 3], eye, atol=1e-5)
        # our quaternion is the three.js lookAt rotation
        out = load3d_from_c2w(torch.tensor(c2w), 35.0, target_distance=float(np.linalg.norm(tgt - pos)))
        z = (pos - tgt) / np.linalg.norm(pos - tgt)
        x = np.cross([0.0, 1.0, 0.0], z)
        x /= np.linalg.norm(x)
        R3 = np.stack([x, np.cross(z, x), z], 1)
        np.testing.assert_allclose(_quat_to_R(out["quaternion"]), R3, atol=1e-5)


def test_load3d_round_trips(pts):
    path = make_camera_path("spiral", 5, W, H, points0=pts)
    for i in range(5):
        cam = load3d_from_c2w(path.c2w[i], 42.0, target_distance=2.5)
        assert cam["cameraType"] == "perspective" and cam["zoom"] == 1.0 and cam["fov"] == 42.0
        c2w, fov = c2w_from_load3d(cam)
        assert torch.allclose(c2w, path.c2w[i], atol=1e-6) and fov == pytest.approx(42.0)
        # target is 2.5 units along the view axis
        p, t = np.array([cam["position"][k] for k in "xyz"]), np.array([cam["target"][k] for k in "xyz"])
        assert np.linalg.norm(t - p) == pytest.approx(2.5, rel=1e-6)
        # without the quaternion (look-at from target, world up) the rotation is the same: roll-free spiral
        no_q = {k: v for k, v in cam.items() if k != "quaternion"}
        c2w2, _ = c2w_from_load3d(no_q)
        assert torch.allclose(c2w2, path.c2w[i], atol=1e-5)
    # dict -> c2w -> dict
    cam = {"position": _d(1.0, 2.0, 3.0), "target": _d(0.5, 0.0, -1.0), "zoom": 1.0, "cameraType": "perspective",
           "fov": 35.0}
    c2w, fov = c2w_from_load3d(cam)
    t = math.dist((1, 2, 3), (0.5, 0, -1))
    back = load3d_from_c2w(c2w, fov, target_distance=t)
    for key in ("position", "target"):
        np.testing.assert_allclose([back[key][k] for k in "xyz"], [cam[key][k] for k in "xyz"], atol=1e-5)


def test_load3d_zoom_is_focal_multiplier():
    _, fov = c2w_from_load3d({"position": _d(0, 0, 5), "target": _d(0, 0, 0), "fov": 50.0, "zoom": 2.0})
    assert math.tan(math.radians(fov) / 2) == pytest.approx(math.tan(math.radians(25.0)) / 2.0, rel=1e-9)


@pytest.mark.parametrize("mode", ["orbit", "linear"])
def test_load3d_camera_path(mode):
    a = {"position": _d(0, 1, 4), "target": _d(0, 0.5, 0), "zoom": 1, "cameraType": "perspective", "fov": 40.0}
    b = {"position": _d(3, 2, 1), "target": _d(0.2, 0.5, 0), "zoom": 1, "cameraType": "perspective", "fov": 30.0}
    path = load3d_camera_path(a, b, 9, W, H, mode=mode)
    _rigid(path.c2w)
    assert torch.allclose(path.c2w[0], c2w_from_load3d(a)[0], atol=1e-6)
    assert torch.allclose(path.c2w[-1], c2w_from_load3d(b)[0], atol=1e-6)
    f = lambda fov: 0.5 * H / math.tan(math.radians(fov) / 2)  # noqa: E731
    assert path.K[0, 1, 1].item() == pytest.approx(f(40.0), rel=1e-6)
    assert path.K[-1, 0, 0].item() == pytest.approx(f(30.0), rel=1e-6)
    if mode == "orbit":
        # the interpolated target projects to the image centre on every frame
        c2w, K = path.c2w.double().numpy(), path.K.double().numpy()
        ta, tb = np.array([0, -0.5, 0.0]), np.array([0.2, -0.5, 0.0])  # (x,-y,-z) of the targets
        e = (lambda t: t * t * (3 - 2 * t))(np.arange(9) / 8)
        for i in range(9):
            tg = ta + e[i] * (tb - ta)
            pc = np.linalg.inv(c2w[i]) @ np.append(tg, 1)
            uv = (K[i] @ pc[:3])[:2] / pc[2]
            np.testing.assert_allclose(uv, [W / 2, H / 2], atol=1e-3)


# ------------------------------------------------------------------------------------------------------------------
# Plot
# ------------------------------------------------------------------------------------------------------------------
def test_frustum_plot(pts):
    static = make_camera_path("static", 9, W, H)
    orbit = make_camera_path("orbit_left", 9, W, H, points0=pts)
    a = frustum_plot(static, pts, size=(128, 192))
    b = frustum_plot(orbit, pts, size=(128, 192))
    assert a.shape == (128, 192, 3) and a.dtype == torch.float32
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert (a - b).abs().sum() > 10.0  # different paths draw differently
    grey = ((b - 150 / 255).abs() < 1e-3).all(-1).sum()
    assert grey > 50  # the points are drawn
    c = frustum_plot(orbit, None, size=(64, 64))
    assert c.shape == (64, 64, 3)
    with pytest.raises(MoGe4DInputError):
        frustum_plot(orbit, pts, size=(10, 10))


# ------------------------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------------------------
def test_bad_preset_inputs(pts):
    with pytest.raises(MoGe4DInputError, match="orbit_left"):  # the message lists the valid presets
        make_camera_path("orbit_sideways", 5, W, H, points0=pts)
    for n in (0, -2, 2.5, True):
        with pytest.raises(MoGe4DInputError, match="num_frames"):
            make_camera_path("static", n, W, H)
    with pytest.raises(MoGe4DInputError):
        make_camera_path("static", 5, 0, H)
    with pytest.raises(MoGe4DInputError):
        make_camera_path("static", 5, W, -3)
    for fov in (0.0, 180.0, 200.0, -5.0, float("nan")):
        with pytest.raises(MoGe4DInputError, match="fov"):
            make_camera_path("static", 5, W, H, fov_deg=fov)
    with pytest.raises(MoGe4DInputError, match="valid parameters: distance, easing"):
        make_camera_path("dolly_in", 5, W, H, points0=pts, angle=3.0)
    with pytest.raises(MoGe4DInputError, match="angle_deg"):
        make_camera_path("orbit_left", 5, W, H, points0=pts, angle_deg=1000.0)
    with pytest.raises(MoGe4DInputError, match="pivot_mode"):
        make_camera_path("orbit_left", 5, W, H, points0=pts, pivot_mode="centre")
    with pytest.raises(MoGe4DInputError, match="easing"):
        make_camera_path("pan_left", 5, W, H, easing="bouncy")
    with pytest.raises(MoGe4DInputError, match="number"):
        make_camera_path("pan_left", 5, W, H, angle_deg="20")
    with pytest.raises(MoGe4DInputError, match="static"):
        make_camera_path("static", 5, W, H, radius_scale=0.1)
    with pytest.raises(MoGe4DInputError, match="points0"):
        make_camera_path("orbit_left", 5, W, H)
    with pytest.raises(MoGe4DInputError, match="z > 0"):
        make_camera_path("orbit_left", 5, W, H, points0=-pts.abs())
    with pytest.raises(MoGe4DInputError, match="points0"):
        make_camera_path("orbit_left", 5, W, H, points0=torch.randn(10, 2))
    with pytest.raises(MoGe4DInputError, match="either K"):
        make_camera_path("static", 5, W, H, fov_deg=50.0, K=torch.eye(3))
    with pytest.raises(MoGe4DInputError, match="K"):
        make_camera_path("static", 5, W, H, K=torch.eye(4))
    with pytest.raises(MoGe4DInputError, match="forward"):
        make_camera_path("spiral", 5, W, H, points0=pts, forward=1.5, pivot=1.0)


def test_bad_keyframes():
    keys = [Keyframe([0, 0, 0], [0, 0, 1]), Keyframe([1, 0, 0], [0, 0, 1]), Keyframe([2, 0, 0], [0, 0, 1])]
    with pytest.raises(MoGe4DInputError, match="at least 3 frames"):
        keyframe_path(keys, 2, W, H)
    with pytest.raises(MoGe4DInputError, match="increasing"):
        keyframe_path(keys, 10, W, H, key_frames=[0, 5, 5])
    with pytest.raises(MoGe4DInputError, match="key_frames"):
        keyframe_path(keys, 10, W, H, key_frames=[0, 5, 10])
    with pytest.raises(MoGe4DInputError, match="interpolation"):
        keyframe_path(keys, 10, W, H, interpolation="cubic")
    with pytest.raises(MoGe4DInputError, match="parallel"):
        keyframe_path([Keyframe([0, 0, 0], [0, -1, 0])], 3, W, H)
    with pytest.raises(MoGe4DInputError, match="coincide"):
        keyframe_path([Keyframe([0, 0, 0], [0, 0, 0])], 3, W, H)
    with pytest.raises(MoGe4DInputError, match=r"keyframes\[0\]"):
        keyframe_path([{"position": [0, 0, 0]}], 3, W, H)
    with pytest.raises(MoGe4DInputError, match="fov"):
        keyframe_path([Keyframe([0, 0, 0], [0, 0, 1], fov_deg=190.0)], 3, W, H)


def test_bad_json(pts):
    good = camera_path_to_json(make_camera_path("orbit_left", 4, W, H, points0=pts))

    def broken(fn):
        obj = json.loads(json.dumps(good))
        fn(obj)
        return obj

    cases = [
        (broken(lambda o: o.pop("frames")), "missing key 'frames'"),
        (broken(lambda o: o.pop("width")), "width"),
        (broken(lambda o: o.update(format="other")), "format"),
        (broken(lambda o: o.update(version=2)), "version"),
        (broken(lambda o: o["frames"][2].pop("K")), r"frames\[2\]: missing key 'K'"),
        (broken(lambda o: o["frames"][2].update(c2w=[[1, 0, 0], [0, 1, 0], [0, 0, 1]])), r"frames\[2\]\.c2w.*4x4"),
        (broken(lambda o: o["frames"][1].update(c2w=[[0.0] * 4] * 3 + [[0, 0, 0, 1.0]])), r"frames\[1\]\.c2w.*not invertible"),
        (broken(lambda o: o["frames"][3].update(c2w=[[2.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 1]])),
         r"frames\[3\]\.c2w.*rigid"),
        (broken(lambda o: o["frames"][0].update(K=[[1, 0], [0, 1]])), r"frames\[0\]\.K"),
        (broken(lambda o: o["frames"][0].update(K=[[-5.0, 0, 1], [0, 5.0, 1], [0, 0, 1]])), r"frames\[0\]\.K.*positive"),
        (broken(lambda o: o.update(frames=[])), "non-empty"),
    ]
    for obj, msg in cases:
        with pytest.raises(MoGe4DInputError, match=msg):
            camera_path_from_json(obj)
    with pytest.raises(MoGe4DInputError, match="JSON"):
        camera_path_from_json("{not json")

    ns = camera_path_to_nerfstudio(make_camera_path("static", 3, W, H))
    bad = json.loads(json.dumps(ns))
    bad["camera_path"][1].pop("fov")
    with pytest.raises(MoGe4DInputError, match=r"camera_path\[1\]: missing key 'fov'"):
        camera_path_from_nerfstudio(bad)
    bad = json.loads(json.dumps(ns))
    bad["camera_path"][2]["camera_to_world"] = bad["camera_path"][2]["camera_to_world"][:12]
    with pytest.raises(MoGe4DInputError, match=r"camera_path\[2\]\.camera_to_world.*16"):
        camera_path_from_nerfstudio(bad)
    bad = json.loads(json.dumps(ns))
    bad["camera_path"][0]["camera_to_world"] = [0.0] * 16
    with pytest.raises(MoGe4DInputError, match=r"camera_path\[0\]\.camera_to_world.*not invertible"):
        camera_path_from_nerfstudio(bad)
    bad = json.loads(json.dumps(ns))
    bad.pop("render_height")
    with pytest.raises(MoGe4DInputError, match="render_height"):
        camera_path_from_nerfstudio(bad)
    with pytest.raises(MoGe4DInputError, match="does not exist"):
        load_camera_path_file("/nonexistent/camera.json")


def test_bad_load3d():
    ok = {"position": _d(0, 0, 5), "target": _d(0, 0, 0), "zoom": 1, "cameraType": "perspective"}
    with pytest.raises(MoGe4DInputError, match="orthographic"):
        c2w_from_load3d({**ok, "cameraType": "orthographic"})
    with pytest.raises(MoGe4DInputError, match="target"):
        c2w_from_load3d({"position": _d(0, 0, 5)})
    with pytest.raises(MoGe4DInputError, match="position"):
        c2w_from_load3d({**ok, "position": {"x": 1, "y": 2}})
    with pytest.raises(MoGe4DInputError, match="coincide"):
        c2w_from_load3d({**ok, "target": _d(0, 0, 5)})
    with pytest.raises(MoGe4DInputError, match="zoom"):
        c2w_from_load3d({**ok, "zoom": 0})
    with pytest.raises(MoGe4DInputError, match="fov"):
        load3d_from_c2w(torch.eye(4), 0.0)
    with pytest.raises(MoGe4DInputError, match="target_distance"):
        load3d_from_c2w(torch.eye(4), 40.0, target_distance=-1.0)
    # a camera not aimed at its target cannot orbit
    q = {"x": 0.0, "y": math.sin(0.2), "z": 0.0, "w": math.cos(0.2)}
    with pytest.raises(MoGe4DInputError, match="linear"):
        load3d_camera_path({**ok, "quaternion": q}, ok, 5, W, H, mode="orbit")
    load3d_camera_path({**ok, "quaternion": q}, ok, 5, W, H, mode="linear")
