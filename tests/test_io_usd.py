"""USD export / camera import, checked by reading the files back with usd-core itself (pxr), with the axis, unit,
film-back and colour conventions recomputed here from their written definitions."""
import math

import numpy as np
import pytest
import torch

pxr = pytest.importorskip("pxr")
from pxr import Gf, Sdf, Usd, UsdGeom  # noqa: E402

from moge4d_core.camera.scene import camera_path_for_scene  # noqa: E402
from moge4d_core.demo_scene import make_demo_scene  # noqa: E402
from moge4d_core.errors import MoGe4DInputError  # noqa: E402
from moge4d_core.io.usd import load_camera_path_usd, save_scene_usd  # noqa: E402
from moge4d_core.types import CameraPath, Trajectories  # noqa: E402

S = np.diag([1.0, -1.0, -1.0, 1.0])


def _to_srgb(c):
    c = np.asarray(c, dtype=np.float64)
    return np.where(c <= 0.0031308, 12.92 * c, 1.055 * np.power(np.clip(c, 0, None), 1 / 2.4) - 0.055)


@pytest.fixture(scope="module")
def scene():
    base = make_demo_scene(height=24, width=32, num_frames=5, fps=12.0)
    g = torch.Generator().manual_seed(0)
    vis = torch.rand(base.points.shape[:2], generator=g) > 0.3
    return Trajectories(points=base.points, colors=base.colors, height=base.height, width=base.width,
                        visibility=vis, K=base.K, fps=base.fps)


@pytest.fixture(scope="module")
def cameras(scene):
    orbit = camera_path_for_scene("orbit_left", scene)
    # a second path with an off-centre principal point and non-square pixels, so every lens value matters
    K = orbit.K.clone()
    K[:, 0, 0] *= 1.1
    K[:, 0, 2] += 3.0
    K[:, 1, 2] -= 2.0
    dolly = camera_path_for_scene("dolly_in", scene)
    return [orbit, CameraPath(c2w=dolly.c2w, K=K, width=dolly.width, height=dolly.height, name="dolly in!")]


def _checker_problems(path):
    """Errors and failed checks of usd-core's ComplianceChecker (its successor UsdValidation on usd-core >= 26,
    which removed the Python checker; it runs the same rules as `usdchecker`)."""
    try:
        from pxr.UsdUtils import ComplianceChecker
    except ImportError:
        from pxr import UsdValidation

        ctx = UsdValidation.ValidationContext(UsdValidation.ValidationRegistry().GetOrLoadAllValidators())
        return [f"{e.GetName()}: {e.GetMessage()}" for e in ctx.Validate(Usd.Stage.Open(str(path)))
                if e.GetType() == UsdValidation.ValidationErrorType.Error]
    checker = ComplianceChecker(arkit=False, skipARKitRootLayerCheck=False, rootPackageOnly=False,
                                skipVariants=False, verbose=False)
    checker.CheckCompliance(str(path))
    return list(checker.GetErrors()) + list(checker.GetFailedChecks())


@pytest.mark.parametrize("suffix", [".usda", ".usd", ".usdz"])
def test_scene_reads_back_with_usd_core(tmp_path, scene, cameras, suffix):
    path = save_scene_usd(scene, cameras, tmp_path / f"scene{suffix}")
    stage = Usd.Stage.Open(str(path))
    assert UsdGeom.GetStageUpAxis(stage) == UsdGeom.Tokens.y
    assert UsdGeom.GetStageMetersPerUnit(stage) == 1.0
    assert stage.GetTimeCodesPerSecond() == 12.0 and stage.GetFramesPerSecond() == 12.0
    assert (stage.GetStartTimeCode(), stage.GetEndTimeCode()) == (0, scene.num_frames - 1)
    assert stage.GetDefaultPrim().GetPath() == Sdf.Path("/World")

    pts = UsdGeom.Points(stage.GetPrimAtPath("/World/Scene"))
    assert pts.GetPointsAttr().GetTimeSamples() == list(range(scene.num_frames))
    flip = np.array([1.0, -1.0, -1.0])
    fx = float(scene.K[0, 0])
    colors = _to_srgb(np.array(pts.GetDisplayColorAttr().Get()))
    assert pts.GetDisplayColorPrimvar().GetInterpolation() == UsdGeom.Tokens.vertex
    np.testing.assert_allclose(colors, scene.colors.double().numpy(), rtol=0, atol=2e-6)
    vis_pv = UsdGeom.PrimvarsAPI(pts).GetPrimvar("moge4d_visible")
    for t in range(scene.num_frames):
        p = np.array(pts.GetPointsAttr().Get(t), dtype=np.float64) * flip
        assert p.shape == (scene.num_points, 3)
        assert np.abs(p - scene.points[t].double().numpy()).max() <= 1e-6
        widths = np.array(pts.GetWidthsAttr().Get(t))
        np.testing.assert_allclose(widths, np.abs(scene.points[t, :, 2].double().numpy()) / fx, rtol=1e-6)
        assert np.array_equal(np.array(vis_pv.Get(t)), scene.visibility[t].numpy())

    for cam_path, prim_name in zip(cameras, ["orbit_left", "dolly_in_"]):
        prim = stage.GetPrimAtPath(f"/World/Cameras/{prim_name}")
        cam = UsdGeom.Camera(prim)
        assert prim.IsValid() and cam.GetProjectionAttr().Get() == UsdGeom.Tokens.perspective
        near, far = cam.GetClippingRangeAttr().Get()
        assert 0 < near < far
        for t in range(cam_path.num_frames):
            m = np.array(cam.ComputeLocalToWorldTransform(t)).T      # USD rows -> column-vector matrix
            expected = S @ cam_path.c2w[t].double().numpy() @ S
            assert np.abs(m - expected).max() <= 1e-6
            focal = cam.GetFocalLengthAttr().Get(t)
            h_ap, v_ap = cam.GetHorizontalApertureAttr().Get(t), cam.GetVerticalApertureAttr().Get(t)
            assert h_ap == pytest.approx(0.36)                        # 36 mm film back in tenths of a metre
            assert focal * cam_path.width / h_ap == pytest.approx(float(cam_path.K[t, 0, 0]), rel=1e-6)
            assert focal * cam_path.height / v_ap == pytest.approx(float(cam_path.K[t, 1, 1]), rel=1e-6)


def test_usd_camera_projects_like_K(tmp_path, scene, cameras):
    """usd-core's own frustum (GfCamera) puts scene points on the pixels K puts them: apertures, offsets and the
    camera-frame flip are right, independently of our importer."""
    path = save_scene_usd(scene, cameras, tmp_path / "scene.usd")
    stage = Usd.Stage.Open(str(path))
    cam_path = cameras[1]
    cam = UsdGeom.Camera(stage.GetPrimAtPath("/World/Cameras/dolly_in_"))
    pts = scene.points[:, ::37].double().numpy()
    for t in (0, cam_path.num_frames - 1):
        frustum = cam.GetCamera(t).frustum
        view_proj = frustum.ComputeViewMatrix() * frustum.ComputeProjectionMatrix()
        w2c = np.linalg.inv(cam_path.c2w[t].double().numpy())
        K = cam_path.K[t].double().numpy()
        for p in pts[t]:
            pc = w2c[:3, :3] @ p + w2c[:3, 3]
            if pc[2] <= 0.1:
                continue
            uv = (K @ pc)[:2] / pc[2]
            clip = Gf.Vec4d(p[0], -p[1], -p[2], 1.0) * view_proj
            ndc = np.array([clip[0], clip[1]]) / clip[3]
            usd_uv = np.array([(ndc[0] + 1) / 2 * cam_path.width, (1 - ndc[1]) / 2 * cam_path.height])
            np.testing.assert_allclose(usd_uv, uv, atol=1e-3)


@pytest.mark.parametrize("suffix", [".usd", ".usdz"])
def test_compliance_checker_reports_no_errors(tmp_path, scene, cameras, suffix):
    path = save_scene_usd(scene, cameras, tmp_path / f"scene{suffix}")
    assert _checker_problems(path) == []


def test_compliance_checker_is_live(tmp_path):
    """The checker used above does flag a stage that breaks its rules (no defaultPrim, no metersPerUnit)."""
    stage = Usd.Stage.CreateNew(str(tmp_path / "bad.usda"))
    UsdGeom.Points.Define(stage, "/A")
    UsdGeom.Points.Define(stage, "/B")
    stage.GetRootLayer().Save()
    assert _checker_problems(tmp_path / "bad.usda")


@pytest.mark.parametrize("suffix", [".usda", ".usdz"])
def test_camera_round_trip(tmp_path, scene, cameras, suffix):
    path = save_scene_usd(scene, cameras, tmp_path / f"scene{suffix}")
    for cam_path, prim in zip(cameras, ["/World/Cameras/orbit_left", "/World/Cameras/dolly_in_"]):
        back = load_camera_path_usd(path, prim)
        assert back.num_frames == cam_path.num_frames
        assert (back.width, back.height) == (cam_path.width, cam_path.height)
        assert torch.allclose(back.c2w.double(), cam_path.c2w.double(), rtol=0, atol=1e-6)
        assert torch.allclose(back.K.double(), cam_path.K.double(), rtol=1e-6, atol=1e-6)
    with pytest.raises(MoGe4DInputError, match="holds 2 cameras.*prim="):
        load_camera_path_usd(path)


def test_camera_only_file_round_trips_without_a_scene(tmp_path, cameras):
    path = save_scene_usd(None, cameras[0], tmp_path / "cam.usda", fps=24)
    back = load_camera_path_usd(path)
    assert back.name == "orbit_left"
    assert torch.allclose(back.c2w, cameras[0].c2w, atol=1e-6)
    assert Usd.Stage.Open(str(path)).GetTimeCodesPerSecond() == 24


def test_import_a_z_up_centimetre_camera_from_another_tool(tmp_path):
    """A Blender / Houdini style camera: Z-up stage in centimetres, translate + rotate ops, time samples, no image
    size. Standing 50 cm above the ground at x = 100 cm + 10 cm per frame, turned 90 degrees about X (looking
    horizontally along +Y, +Z up): in our convention that is an identity rotation at (1 + 0.1 t, -0.5, 0) m."""
    stage = Usd.Stage.CreateNew(str(tmp_path / "blender_cam.usda"))
    UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.z)
    UsdGeom.SetStageMetersPerUnit(stage, 0.01)
    cam = UsdGeom.Camera.Define(stage, "/rig/shot_cam")
    translate = cam.AddTranslateOp()
    cam.AddRotateXYZOp().Set(Gf.Vec3f(90.0, 0.0, 0.0))
    for t in range(3):
        translate.Set(Gf.Vec3d(100.0 + 10.0 * t, 0.0, 50.0), t + 1)
    cam.CreateFocalLengthAttr(35.0)
    cam.CreateHorizontalApertureAttr(36.0)
    cam.CreateVerticalApertureAttr(24.0)
    stage.GetRootLayer().Save()

    path = load_camera_path_usd(tmp_path / "blender_cam.usda")
    assert path.num_frames == 3 and path.name == "shot_cam"
    assert (path.width, path.height) == (512, round(512 * 24 / 36))
    for t in range(3):
        expected = np.eye(4)
        expected[:3, 3] = [1.0 + 0.1 * t, -0.5, 0.0]
        np.testing.assert_allclose(path.c2w[t].double().numpy(), expected, atol=1e-6)
    assert float(path.K[0, 0, 0]) == pytest.approx(35.0 * 512 / 36.0, rel=1e-6)
    assert float(path.K[0, 0, 2]) == pytest.approx(256.0)
    rel = load_camera_path_usd(tmp_path / "blender_cam.usda", width=640, height=480, relative_to_first=True)
    assert torch.allclose(rel.c2w[0], torch.eye(4), atol=1e-6)
    assert float(rel.c2w[2, 0, 3]) == pytest.approx(0.2, abs=1e-6)
    assert float(rel.K[0, 1, 1]) == pytest.approx(35.0 * 480 / 24.0, rel=1e-6)


def test_refusals_name_the_file_and_write_nothing(tmp_path, scene, cameras):
    with pytest.raises(MoGe4DInputError, match="unknown extension '.abc'"):
        save_scene_usd(scene, cameras, tmp_path / "scene.abc")
    with pytest.raises(MoGe4DInputError, match="nothing to write"):
        save_scene_usd(None, [], tmp_path / "empty.usd")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(MoGe4DInputError, match="no such file"):
        load_camera_path_usd(tmp_path / "missing.usd")
    stage = Usd.Stage.CreateNew(str(tmp_path / "ortho.usda"))
    UsdGeom.Camera.Define(stage, "/cam").CreateProjectionAttr(UsdGeom.Tokens.orthographic)
    stage.GetRootLayer().Save()
    with pytest.raises(MoGe4DInputError, match="orthographic"):
        load_camera_path_usd(tmp_path / "ortho.usda")
    with pytest.raises(MoGe4DInputError, match="no prim '/nope'"):
        load_camera_path_usd(tmp_path / "ortho.usda", "/nope")


def test_max_points_keeps_an_even_sub_grid_with_wider_splats(tmp_path, scene):
    path = save_scene_usd(scene, None, tmp_path / "small.usda", max_points=60)
    stage = Usd.Stage.Open(str(path))
    pts = UsdGeom.Points(stage.GetPrimAtPath("/World/Scene"))
    stride = next(s for s in range(1, 100) if math.ceil(24 / s) * math.ceil(32 / s) <= 60)
    grid = scene.points[0].reshape(24, 32, 3)[::stride, ::stride].reshape(-1, 3).double().numpy()
    got = np.array(pts.GetPointsAttr().Get(0), dtype=np.float64) * np.array([1.0, -1.0, -1.0])
    assert got.shape == grid.shape and np.abs(got - grid).max() <= 1e-6
    widths = np.array(pts.GetWidthsAttr().Get(0))
    np.testing.assert_allclose(widths, stride * np.abs(grid[:, 2]) / float(scene.K[0, 0]), rtol=1e-6)


def test_cli_export_writes_into_the_output_folder_all_or_nothing(tmp_path, monkeypatch):
    import json

    from moge4d_core import cli
    from moge4d_core.io import gltf

    out = tmp_path / "out"
    args = ["render", "--demo", "--frames", "3", "--width", "32", "--height", "24", "--camera", "orbit_left",
            "--camera", "static", "--out", str(out)]
    assert cli.main(args + ["--export", "usdz", "--export", "glb", "--export", "usdz"]) == 0
    listed = json.loads((out / "moge4d_run.json").read_text())["files"]
    assert {"scene.usdz", "scene.glb", "scene.npz"} <= set(listed)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]         # no temporary left behind
    back = load_camera_path_usd(out / "scene.usdz", "/World/Cameras/static")
    assert back.num_frames == 3 and torch.allclose(back.c2w, torch.eye(4).expand(3, 4, 4), atol=1e-6)

    def broken(*a, **k):
        raise OSError("disk trouble")

    monkeypatch.setattr(gltf, "save_scene_glb", broken)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(OSError, match="disk trouble"):
        cli.main(args[:-2] + ["--camera", "dolly_in", "--out", str(out), "--export", "usda", "--export", "glb"])
    assert sorted(p.name for p in out.iterdir()) == before and not (out / "scene.usda").exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_missing_libraries_are_named_before_any_work(monkeypatch, tmp_path):
    import sys

    from moge4d_core import cli
    from moge4d_core.io.exports import check_exports

    monkeypatch.setitem(sys.modules, "pxr", None)          # as if usd-core were not installed
    monkeypatch.setitem(sys.modules, "pygltflib", None)
    with pytest.raises(MoGe4DInputError, match=r"pip install usd-core"):
        check_exports(["usdz"])
    with pytest.raises(MoGe4DInputError, match=r"pip install pygltflib"):
        check_exports(["glb"])
    assert check_exports([]) == []
    out = tmp_path / "out"
    assert cli.main(["render", "--demo", "--frames", "3", "--width", "32", "--height", "24", "--out", str(out),
                     "--export", "glb"]) == 2
    assert not out.exists()
