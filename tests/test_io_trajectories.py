"""Trajectory files: restricted unpickling, TrajScene / DELTA pkl reading, our .npz format."""
from __future__ import annotations

import os
import pickle
import uuid

import numpy as np
import pytest
import torch

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.io import (
    load_pickle,
    load_trajectories,
    load_trajectories_npz,
    read_trajectory_pkl,
    save_trajectories_npz,
)
from moge4d_core.types import Trajectories

H, W, T = 3, 4, 5
N = H * W


def _scene(seed: int = 0):
    rng = np.random.default_rng(seed)
    coords = rng.normal(size=(T, N, 3)).astype(np.float32)
    coords[..., 2] += 5.0
    colors = rng.integers(0, 256, size=(N, 3)).astype(np.uint8)
    vis = rng.random((T, N)) > 0.3
    return coords, colors, vis


def _write_with(writer: str, data, path) -> None:
    """Write ``data`` as a plain pickle, a torch zip file or a legacy (non-zip) torch file."""
    if writer == "pickle":
        with open(path, "wb") as fh:
            pickle.dump(data, fh)
    elif writer == "torch_zip":
        torch.save(data, path)
    else:
        torch.save(data, path, _use_new_zipfile_serialization=False)


def _check(traj: Trajectories, coords, colors, vis):
    assert isinstance(traj, Trajectories)
    assert (traj.height, traj.width) == (H, W)
    assert traj.points.dtype == torch.float32
    np.testing.assert_array_equal(traj.points.numpy(), coords.astype(np.float32))
    # independent recomputation in float64: colours / 255
    np.testing.assert_allclose(traj.colors.numpy().astype(np.float64), colors.astype(np.float64) / 255.0,
                               atol=1e-7)
    if vis is None:
        assert traj.visibility is None
    else:
        assert traj.visibility.dtype == torch.bool
        np.testing.assert_array_equal(traj.visibility.numpy(), vis)


# ---------------------------------------------------------------- pkl round trips

@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_pkl_numpy_roundtrip(tmp_path, batched, protocol):
    coords, colors, vis = _scene()
    data = {"coords": coords[None] if batched else coords,
            "colors": colors[None] if batched else colors,
            "vis": vis[None] if batched else vis}
    path = tmp_path / "s_dt3d_pred.pkl"
    with open(path, "wb") as fh:
        pickle.dump(data, fh, protocol=protocol)
    _check(read_trajectory_pkl(path, height=H, width=W), coords, colors, vis)


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("writer", ["pickle", "torch_zip", "torch_legacy"])
def test_pkl_torch_roundtrip(tmp_path, batched, writer):
    coords, colors, vis = _scene(1)
    c, k, v = torch.from_numpy(coords), torch.from_numpy(colors).float(), torch.from_numpy(vis)
    data = {"coords": c[None] if batched else c, "colors": k[None] if batched else k,
            "vis": v[None] if batched else v}
    path = tmp_path / "t_dt3d_pred.pkl"
    _write_with(writer, data, path)
    _check(read_trajectory_pkl(path, height=H, width=W), coords, colors, vis)


def test_pkl_torch_save_of_numpy_dict(tmp_path):
    coords, colors, _ = _scene(2)
    path = tmp_path / "n.pkl"
    torch.save({"coords": coords, "colors": colors}, path)
    _check(read_trajectory_pkl(path, height=H, width=W), coords, colors, None)


def test_float_visibility_thresholded_and_default_grid(tmp_path):
    rng = np.random.default_rng(3)
    n = 384 * 512
    coords = rng.normal(size=(2, n, 3)).astype(np.float32)
    colors = np.full((n, 3), 255.0, dtype=np.float32)
    vis_f = rng.random((2, n, 1)).astype(np.float32)
    path = tmp_path / "delta.pkl"
    with open(path, "wb") as fh:
        pickle.dump({"coords": coords, "colors": colors, "vis": vis_f}, fh)
    traj = read_trajectory_pkl(path)           # no height/width: the DELTA 384x512 grid
    assert (traj.height, traj.width) == (384, 512)
    np.testing.assert_array_equal(traj.visibility.numpy(), vis_f[..., 0] > 0.5)
    assert float(traj.colors.min()) == 1.0


def test_unit_range_colours_warn(tmp_path):
    coords, colors, _ = _scene()
    path = tmp_path / "unit.pkl"
    with open(path, "wb") as fh:
        pickle.dump({"coords": coords, "colors": colors / 255.0}, fh)
    with pytest.warns(UserWarning, match="all values are <= 1"):
        traj = read_trajectory_pkl(path, height=H, width=W)
    np.testing.assert_allclose(traj.colors.numpy(), colors / 255.0 / 255.0, atol=1e-7)


def test_height_only_derives_width(tmp_path):
    coords, colors, _ = _scene()
    path = tmp_path / "h.pkl"
    with open(path, "wb") as fh:
        pickle.dump({"coords": coords, "colors": colors}, fh)
    traj = read_trajectory_pkl(path, height=H)
    assert (traj.height, traj.width) == (H, W)


# ---------------------------------------------------------------- restricted unpickler

class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["pickle", "torch_zip", "torch_legacy"])
def test_refuses_code_execution(tmp_path, writer):
    marker = tmp_path / f"pwned_{uuid.uuid4().hex}"
    coords, colors, _ = _scene()
    data = {"coords": coords, "colors": colors, "evil": _Exploit(marker)}
    path = tmp_path / "evil.pkl"
    _write_with(writer, data, path)
    with pytest.raises(MoGe4DInputError) as err:
        read_trajectory_pkl(path, height=H, width=W)
    msg = str(err.value)
    assert str(path) in msg and "refusing to unpickle" in msg and "allow_unsafe=True" in msg
    assert "system" in msg                       # names the refused global (posix.system / os.system)
    assert not marker.exists()                   # the side effect did not happen


def test_refuses_arbitrary_class(tmp_path):
    path = tmp_path / "cls.pkl"
    with open(path, "wb") as fh:
        pickle.dump({"coords": _Exploit("x")}, fh, protocol=0)   # protocol 0 uses GLOBAL opcodes
    with pytest.raises(MoGe4DInputError, match="refusing to unpickle posix.system|refusing to unpickle os.system"):
        load_pickle(path)


def test_refuses_builtins_eval(tmp_path):
    # hand-written protocol-0 pickle calling builtins.eval
    path = tmp_path / "eval.pkl"
    path.write_bytes(b"cbuiltins\neval\n(S'1+1'\ntR.")
    with pytest.raises(MoGe4DInputError, match="refusing to unpickle builtins.eval"):
        load_pickle(path)


def test_allow_unsafe_loads_trusted_object(tmp_path):
    path = tmp_path / "od.pkl"
    import fractions
    with open(path, "wb") as fh:
        pickle.dump({"f": fractions.Fraction(1, 3)}, fh)
    with pytest.raises(MoGe4DInputError, match="fractions.Fraction"):
        load_pickle(path)
    assert load_pickle(path, allow_unsafe=True)["f"] == fractions.Fraction(1, 3)


# ---------------------------------------------------------------- malformed files

def _dump(tmp_path, obj, name="bad.pkl"):
    path = tmp_path / name
    with open(path, "wb") as fh:
        pickle.dump(obj, fh)
    return path


@pytest.mark.parametrize("case, pattern", [
    ("not_dict", "expected a dict"),
    ("missing_coords", "missing key 'coords'"),
    ("missing_colors", "missing key 'colors'"),
    ("coords_2d", r"expected \(T,N,3\)"),
    ("coords_last_not_3", r"expected \(T,N,3\)"),
    ("batch_2", "batch axis of size 2"),
    ("t_zero", r"no frames \(T = 0\)"),
    ("n_zero", r"empty \(N = 0\)"),
    ("n_mismatch", r"does not match height\*width"),
    ("colors_shape", r"expected shape \(12,3\)"),
    ("colors_range", "expected 0..255"),
    ("vis_shape", r"expected shape \(5,12\)"),
    ("coords_string", "expected a numpy array or torch tensor"),
])
def test_malformed_pkl(tmp_path, case, pattern):
    coords, colors, vis = _scene()
    data = {"coords": coords, "colors": colors, "vis": vis}
    kw = {"height": H, "width": W}
    if case == "not_dict":
        data = [coords, colors]
    elif case == "missing_coords":
        del data["coords"]
    elif case == "missing_colors":
        del data["colors"]
    elif case == "coords_2d":
        data["coords"] = coords[0]
    elif case == "coords_last_not_3":
        data["coords"] = coords[..., :2]
    elif case == "batch_2":
        data["coords"] = np.stack([coords, coords])
    elif case == "t_zero":
        data["coords"] = coords[:0]
    elif case == "n_zero":
        data["coords"] = coords[:, :0]
    elif case == "n_mismatch":
        kw = {"height": 2, "width": 2}
    elif case == "colors_shape":
        data["colors"] = colors[:5]
    elif case == "colors_range":
        data["colors"] = colors.astype(np.float32) * 4.0 - 2.0 + 500
    elif case == "vis_shape":
        data["vis"] = vis[:2]
    elif case == "coords_string":
        data["coords"] = "hello"
    path = _dump(tmp_path, data)
    with pytest.raises(MoGe4DInputError, match=pattern) as err:
        read_trajectory_pkl(path, **kw)
    assert str(path) in str(err.value)


def test_unknown_grid_needs_height_width(tmp_path):
    coords, colors, _ = _scene()
    path = _dump(tmp_path, {"coords": coords, "colors": colors})
    with pytest.raises(MoGe4DInputError, match="pass height= and width="):
        read_trajectory_pkl(path)


@pytest.mark.parametrize("content, pattern", [
    (b"", "empty"),
    (b"this is not a pickle at all", "not a readable pickle"),
    (None, "not a readable pickle"),              # truncated
])
def test_corrupt_files(tmp_path, content, pattern):
    path = tmp_path / "c.pkl"
    if content is None:
        coords, colors, _ = _scene()
        full = pickle.dumps({"coords": coords, "colors": colors})
        content = full[: len(full) // 2]
    path.write_bytes(content)
    with pytest.raises(MoGe4DInputError, match=pattern):
        read_trajectory_pkl(path, height=H, width=W)


def test_missing_file(tmp_path):
    with pytest.raises(MoGe4DInputError, match="file not found"):
        read_trajectory_pkl(tmp_path / "nope.pkl")


def test_nan_points_error_names_count(tmp_path):
    coords, colors, vis = _scene()
    coords[2, 3, 0] = np.nan
    coords[4, 7, 2] = np.inf
    coords[4, 8, 1] = -np.inf
    path = _dump(tmp_path, {"coords": coords, "colors": colors, "vis": vis})
    with pytest.raises(MoGe4DInputError, match=r"3 of 60 point positions \(in 2 of 5 frames\)"):
        read_trajectory_pkl(path, height=H, width=W)


def test_nan_points_sanitized(tmp_path):
    coords, colors, _ = _scene()
    coords[2, 3, 0] = np.nan          # frame-0 position of point 3 is finite -> replaced by it
    coords[0, 5, 1] = np.nan          # frame 0 bad: first finite frame (1) is used
    coords[:, 6, :] = np.inf          # never finite: median of all finite positions
    path = _dump(tmp_path, {"coords": coords, "colors": colors})
    traj = read_trajectory_pkl(path, height=H, width=W, sanitize=True)
    pts = traj.points.numpy()
    assert np.isfinite(pts).all()
    np.testing.assert_array_equal(pts[2, 3], coords[0, 3])
    np.testing.assert_array_equal(pts[0, 5], coords[1, 5])
    finite = np.isfinite(coords).all(-1)
    med = np.median(coords[finite].astype(np.float64), axis=0)
    np.testing.assert_allclose(pts[:, 6], np.broadcast_to(med, (T, 3)), rtol=1e-6)
    expected_vis = finite.copy()
    np.testing.assert_array_equal(traj.visibility.numpy(), expected_vis)
    # everything that was finite is unchanged
    np.testing.assert_array_equal(pts[finite], coords[finite])


# ---------------------------------------------------------------- npz

def _traj(with_optional: bool) -> Trajectories:
    coords, colors, vis = _scene(5)
    K = torch.tensor([[4.0, 0, 2.0], [0, 4.0, 1.5], [0, 0, 1]])
    return Trajectories(points=torch.from_numpy(coords), colors=torch.from_numpy(colors).float() / 255,
                        height=H, width=W, visibility=torch.from_numpy(vis) if with_optional else None,
                        K=K if with_optional else None, fps=12.5)


@pytest.mark.parametrize("with_optional", [True, False])
@pytest.mark.parametrize("compress", [False, True])
def test_npz_roundtrip_exact(tmp_path, with_optional, compress):
    traj = _traj(with_optional)
    path = save_trajectories_npz(traj, tmp_path / "scene.npz", compress=compress)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.npz"]       # no temp file left
    back = load_trajectories(path)
    assert torch.equal(back.points, traj.points) and torch.equal(back.colors, traj.colors)
    assert (back.height, back.width, back.fps) == (H, W, 12.5)
    if with_optional:
        assert torch.equal(back.visibility, traj.visibility) and torch.equal(back.K, traj.K)
    else:
        assert back.visibility is None and back.K is None
    with np.load(path, allow_pickle=False) as npz:        # the documented layout
        assert str(npz["format"]) == "moge4d_trajectories" and int(npz["version"]) == 1
        assert npz["points"].dtype == np.float32 and npz["points"].shape == (T, N, 3)
        assert npz["colors"].dtype == np.float32


def test_npz_rejects_foreign_and_newer(tmp_path):
    other = tmp_path / "other.npz"
    np.savez(other, points=np.zeros((1, 1, 3), np.float32))
    with pytest.raises(MoGe4DInputError, match="not a MoGe4D trajectory"):
        load_trajectories_npz(other)
    traj = _traj(False)
    newer = tmp_path / "newer.npz"
    np.savez(newer, points=traj.points.numpy(), colors=traj.colors.numpy(), height=H, width=W,
             format="moge4d_trajectories", version=99)
    with pytest.raises(MoGe4DInputError, match="version 99"):
        load_trajectories_npz(newer)
    objs = tmp_path / "obj.npz"
    np.savez(objs, points=np.array([{"a": 1}], dtype=object), format="moge4d_trajectories", version=1)
    with pytest.raises(MoGe4DInputError, match="not a readable .npz"):
        load_trajectories_npz(objs)


def test_load_trajectories_dispatch(tmp_path):
    coords, colors, vis = _scene()
    pkl = _dump(tmp_path, {"coords": coords, "colors": colors, "vis": vis}, "a.pkl")
    _check(load_trajectories(pkl, height=H, width=W), coords, colors, vis)
    with pytest.raises(MoGe4DInputError, match="unknown trajectory file type '.txt'"):
        load_trajectories(tmp_path / "a.txt")


def test_npz_save_validates_before_writing(tmp_path):
    with pytest.raises(MoGe4DInputError, match="expected Trajectories"):
        save_trajectories_npz({"points": 1}, tmp_path / "x.npz")
    assert list(tmp_path.iterdir()) == []
