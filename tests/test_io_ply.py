"""PLY export re-read with plyfile (an independent parser); splat transforms against the formulas."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from plyfile import PlyData

import moge4d_core.io.ply as ply_mod
from moge4d_core.errors import MoGe4DInputError
from moge4d_core.io import write_ply_points, write_ply_sequence, write_splat_ply, write_splat_sequence
from moge4d_core.types import Trajectories

SPLAT_FIELDS = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
                "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]


def _cloud(n=50, seed=0):
    rng = np.random.default_rng(seed)
    xyz = rng.normal(size=(n, 3)) * 3.0
    rgb = rng.random((n, 3))
    return xyz, rgb


def _read(path):
    data = PlyData.read(str(path))
    assert data.text is False and data.byte_order == "<"          # binary little-endian
    return data["vertex"]


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()} | \
        {"__dirs__": sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_dir())}


# ---------------------------------------------------------------- point clouds

def test_points_roundtrip_float_rgb(tmp_path):
    xyz, rgb = _cloud()
    rgb[0] = [-0.2, 1.3, 0.5]                                      # clipped
    path = write_ply_points(tmp_path / "c.ply", torch.from_numpy(xyz), torch.from_numpy(rgb))
    v = _read(path)
    assert [p.name for p in v.properties] == ["x", "y", "z", "red", "green", "blue"]
    assert [p.val_dtype for p in v.properties] == ["f4", "f4", "f4", "u1", "u1", "u1"]
    got_xyz = np.stack([v["x"], v["y"], v["z"]], 1)
    np.testing.assert_array_equal(got_xyz, xyz.astype(np.float32))
    want_rgb = np.floor(np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)   # round half up, in float64
    np.testing.assert_array_equal(np.stack([v["red"], v["green"], v["blue"]], 1), want_rgb)
    assert [p.name for p in tmp_path.iterdir()] == ["c.ply"]


def test_points_uint8_and_opengl_axes(tmp_path):
    xyz, _ = _cloud(7)
    rgb = np.arange(21, dtype=np.uint8).reshape(7, 3) * 12
    v = _read(write_ply_points(tmp_path / "g.ply", xyz, rgb, axes="opengl"))
    np.testing.assert_array_equal(np.stack([v["x"], v["y"], v["z"]], 1),
                                  (xyz * np.array([1, -1, -1])).astype(np.float32))
    np.testing.assert_array_equal(np.stack([v["red"], v["green"], v["blue"]], 1), rgb)


@pytest.mark.parametrize("xyz, rgb, pattern", [
    (np.zeros((0, 3)), np.zeros((0, 3)), r"empty \(N = 0\)"),
    (np.zeros((4, 2)), np.zeros((4, 3)), r"expected shape \(\*,3\)"),
    (np.zeros((4, 3)), np.zeros((5, 3)), r"expected shape \(4,3\)"),
    (np.array([[0, 0, 1], [np.nan, 0, 1]]), np.zeros((2, 3)), "1 of 2 points have NaN"),
    (np.zeros((2, 3)), np.array([[0, 0, np.nan], [0, 0, 0]]), "rgb contains NaN"),
])
def test_points_bad_input_creates_nothing(tmp_path, xyz, rgb, pattern):
    (tmp_path / "keep.txt").write_text("x")
    before = _snapshot(tmp_path)
    with pytest.raises(MoGe4DInputError, match=pattern):
        write_ply_points(tmp_path / "sub" / "bad.ply", xyz, rgb)
    assert _snapshot(tmp_path) == before


def test_failed_rename_leaves_existing_file(tmp_path, monkeypatch):
    xyz, rgb = _cloud(5)
    path = write_ply_points(tmp_path / "c.ply", xyz, rgb)
    original = path.read_bytes()

    def boom(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        write_ply_points(path, xyz * 2, rgb)
    assert path.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["c.ply"]      # temp file removed


# ---------------------------------------------------------------- splats

def _quat_to_matrix(q):
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def test_splat_fields_and_transforms(tmp_path):
    n = 6
    xyz, rgb = _cloud(n, seed=3)
    scale = np.array([[0.01, 0.02, 0.03]] * n) * np.arange(1, n + 1)[:, None]
    opacity = np.array([0.3, 0.5, 0.9, 1.0, 0.0, 0.75])
    rot = np.random.default_rng(4).normal(size=(n, 4))
    v = _read(write_splat_ply(tmp_path / "s.ply", xyz, rgb, scale=scale, opacity=opacity, rotation=rot))
    assert [p.name for p in v.properties] == SPLAT_FIELDS
    assert all(p.val_dtype == "f4" for p in v.properties)
    c0 = 1.0 / (2.0 * math.sqrt(math.pi))                        # = 0.28209479177387814
    got = {f: np.asarray(v[f], dtype=np.float64) for f in SPLAT_FIELDS}
    np.testing.assert_allclose(np.stack([got["x"], got["y"], got["z"]], 1), xyz, rtol=1e-6, atol=1e-6)
    for f in ("nx", "ny", "nz"):
        assert (got[f] == 0).all()
    for i in range(3):
        np.testing.assert_allclose(got[f"f_dc_{i}"], (rgb[:, i] - 0.5) / c0, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got[f"scale_{i}"], np.log(scale[:, i]), rtol=1e-6, atol=1e-6)
    # logit for interior opacities; saturated ones stay finite and map back close to 0 / 1
    for j in (0, 1, 2, 5):
        assert got["opacity"][j] == pytest.approx(math.log(opacity[j] / (1 - opacity[j])), abs=1e-5)
    sig = 1.0 / (1.0 + np.exp(-got["opacity"]))
    assert np.isfinite(got["opacity"]).all()
    assert sig[3] > 1 - 1e-5 and sig[4] < 1e-5
    q = np.stack([got[f"rot_{i}"] for i in range(4)], 1)
    np.testing.assert_allclose(q, rot / np.linalg.norm(rot, axis=1, keepdims=True), atol=1e-6)


def test_splat_defaults(tmp_path):
    xyz, rgb = _cloud(4)
    v = _read(write_splat_ply(tmp_path / "d.ply", xyz, (rgb * 255).astype(np.uint8)))
    np.testing.assert_allclose(np.asarray(v["scale_0"], np.float64), np.log(1e-4), rtol=1e-6)
    assert 1 / (1 + math.exp(-float(v["opacity"][0]))) > 1 - 1e-5
    assert (np.asarray(v["rot_0"]) == 1).all() and (np.asarray(v["rot_1"]) == 0).all()
    np.testing.assert_allclose(np.asarray(v["f_dc_0"], np.float64),
                               ((rgb[:, 0] * 255).astype(np.uint8) / 255.0 - 0.5) / 0.28209479177387814,
                               rtol=1e-6, atol=1e-6)


def test_splat_opengl_axes_preserve_covariance(tmp_path):
    n = 3
    xyz, rgb = _cloud(n, seed=5)
    scale = np.array([[0.1, 0.2, 0.05], [0.3, 0.01, 0.02], [0.05, 0.05, 0.2]])
    rot = np.array([[0.9, 0.1, -0.3, 0.2], [0.5, 0.5, 0.5, 0.5], [0.2, -0.7, 0.1, 0.6]])
    v = _read(write_splat_ply(tmp_path / "o.ply", xyz, rgb, scale=scale, rotation=rot, axes="opengl"))
    flip = np.diag([1.0, -1.0, -1.0])
    for i in range(n):
        r = _quat_to_matrix(rot[i])
        want = flip @ r @ np.diag(scale[i] ** 2) @ r.T @ flip.T          # covariance in the flipped frame
        q = np.array([float(v[f"rot_{k}"][i]) for k in range(4)])
        s = np.exp([float(v[f"scale_{k}"][i]) for k in range(3)])
        r2 = _quat_to_matrix(q)
        np.testing.assert_allclose(r2 @ np.diag(s ** 2) @ r2.T, want, atol=1e-6)
        np.testing.assert_allclose([float(v["x"][i]), float(v["y"][i]), float(v["z"][i])],
                                   xyz[i] * np.array([1, -1, -1]), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kw, pattern", [
    ({"scale": 0.0}, "scale must be > 0"),
    ({"scale": np.ones((4, 2))}, "scale must be a number"),
    ({"opacity": 1.5}, r"opacity must be in \[0,1\]"),
    ({"rotation": np.zeros(4)}, "zero-length quaternions"),
    ({"axes": "blender"}, "axes must be one of"),
])
def test_splat_bad_params_create_nothing(tmp_path, kw, pattern):
    xyz, rgb = _cloud(4)
    with pytest.raises(MoGe4DInputError, match=pattern):
        write_splat_ply(tmp_path / "bad.ply", xyz, rgb, **kw)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- sequences

def _traj(t=4, h=2, w=3, seed=0):
    rng = np.random.default_rng(seed)
    pts = torch.from_numpy(rng.normal(size=(t, h * w, 3)).astype(np.float32))
    cols = torch.from_numpy(rng.random((h * w, 3)).astype(np.float32))
    vis = torch.from_numpy(rng.random((t, h * w)) > 0.4)
    vis[:, 0] = True
    return Trajectories(points=pts, colors=cols, height=h, width=w, visibility=vis)


def test_ply_sequence(tmp_path):
    traj = _traj()
    out = tmp_path / "seq"
    paths = write_ply_sequence(traj, out, prefix="scene")
    assert [p.name for p in paths] == [f"scene_{t:05d}.ply" for t in range(4)]
    assert sorted(p.name for p in out.iterdir()) == [p.name for p in paths]     # no temp folder left
    for t, p in enumerate(paths):
        v = _read(p)
        np.testing.assert_array_equal(np.stack([v["x"], v["y"], v["z"]], 1), traj.points[t].numpy())
        want = np.floor(traj.colors.double().numpy() * 255 + 0.5).astype(np.uint8)
        np.testing.assert_array_equal(np.stack([v["red"], v["green"], v["blue"]], 1), want)
    vis_paths = write_ply_sequence(traj, tmp_path / "vis", visible_only=True)
    for t, p in enumerate(vis_paths):
        keep = traj.visibility[t].numpy()
        v = _read(p)
        assert len(v["x"]) == int(keep.sum())
        np.testing.assert_array_equal(np.asarray(v["z"]), traj.points[t, keep, 2].numpy())


def test_splat_sequence(tmp_path):
    traj = _traj(t=2)
    paths = write_splat_sequence(traj, tmp_path, scale=0.01, opacity=0.5)
    assert [p.name for p in paths] == ["splat_00000.ply", "splat_00001.ply"]
    v = _read(paths[1])
    assert [p.name for p in v.properties] == SPLAT_FIELDS
    np.testing.assert_allclose(np.asarray(v["y"]), traj.points[1, :, 1].numpy())
    np.testing.assert_allclose(np.asarray(v["opacity"]), 0.0, atol=1e-7)      # logit(0.5) = 0
    # per-point scales follow their points when invisible points are dropped; opengl axes flip y, z
    per_point = np.linspace(0.01, 0.06, traj.num_points)
    paths = write_splat_sequence(traj, tmp_path / "vis", scale=per_point, visible_only=True, axes="opengl")
    for t, p in enumerate(paths):
        keep = traj.visibility[t].numpy()
        v = _read(p)
        np.testing.assert_allclose(np.asarray(v["scale_2"], np.float64), np.log(per_point[keep]), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(v["z"]), -traj.points[t, keep, 2].numpy(), rtol=1e-6)


def test_sequence_failure_leaves_folder_unchanged(tmp_path, monkeypatch):
    traj = _traj(t=5)
    out = tmp_path / "seq"
    out.mkdir()
    (out / "frame_00000.ply").write_bytes(b"old frame")
    (out / "notes.txt").write_text("keep me")
    before = _snapshot(tmp_path)
    real = ply_mod._write_records
    calls = {"n": 0}

    def flaky(path, records):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("simulated failure on frame 2")
        real(path, records)
    monkeypatch.setattr(ply_mod, "_write_records", flaky)
    with pytest.raises(OSError, match="frame 2"):
        write_ply_sequence(traj, out)
    assert calls["n"] == 3
    assert _snapshot(tmp_path) == before

    # a missing output folder is not left behind either
    calls["n"] = 0
    with pytest.raises(OSError):
        write_ply_sequence(traj, tmp_path / "new" / "deeper")
    assert not (tmp_path / "new").exists()


def test_sequence_bad_inputs(tmp_path):
    traj = _traj()
    with pytest.raises(MoGe4DInputError, match="prefix must be a plain"):
        write_ply_sequence(traj, tmp_path / "a", prefix="../x")
    with pytest.raises(MoGe4DInputError, match="expected Trajectories"):
        write_ply_sequence(traj.points, tmp_path / "a")
    vis = torch.zeros_like(traj.visibility)
    empty_vis = Trajectories(points=traj.points, colors=traj.colors, height=2, width=3, visibility=vis)
    with pytest.raises(MoGe4DInputError, match="frame 0 has no visible points"):
        write_ply_sequence(empty_vis, tmp_path / "a", visible_only=True)
    assert list(tmp_path.iterdir()) == []
