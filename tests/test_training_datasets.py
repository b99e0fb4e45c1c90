"""TrajScene reader (training/datasets/trajscene.py) on synthetic TrajScene-layout samples.

Fixture: seeded synthetic samples written to a range .tar.gz (one pkl holding torch tensors) and to a
folder (plus one sample built to fail the ``coords.max() > 500`` rule). Expected values are recomputed
in float64 from the raw pkl arrays with the formulas of reference B / F written here.
"""
from __future__ import annotations

import dataclasses
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from moge4d_core.errors import MoGe4DInputError
from training.datasets import TrajSceneDataset
from training.datasets.synthetic import make_synthetic_sample, write_sample_files, write_synthetic_dataset

H, W, T = 32, 48, 6
CROP = (24, 48)
GRID = (H, W)


def official_fx_fy(h: int, w: int, h_ori: int = 720, w_ori: int = 960) -> tuple[float, float]:
    """Reference B: the axis that shrank most gets focal 1, the other is stretched by the aspect change."""
    if w_ori / w <= h_ori / h:
        return (h_ori / w_ori) / (h / w), 1.0
    return 1.0, (w_ori / h_ori) / (w / h)


def raw_pkl(path: Path) -> dict:
    with open(path, "rb") as fh:
        data = pickle.load(fh)
    return {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in data.items()}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("trajscene")
    archives = write_synthetic_dataset(root / "tar", 3, height=H, width=W, frames=T, seed=3, tar=True,
                                       torch_pkl_ids=(1,))
    write_synthetic_dataset(root / "dir", 2, height=H, width=W, frames=T, seed=5)
    big = make_synthetic_sample(7, seed=5, height=H, width=W, frames=T, sample_id="too_far")
    coords = big.coords.copy()
    coords[-1, 10, 2] = 501.0
    write_sample_files(dataclasses.replace(big, coords=coords), root / "dir")
    return {"root": root, "archive": archives[0]}


def test_tar_archive_shapes_padding_and_normalisation(data):
    ds = TrajSceneDataset(data["archive"], frames=T + 3, crop=CROP, grid=GRID)
    assert len(ds) == 3 and ds.ids == ["synth3_000000", "synth3_000001", "synth3_000002"]
    fx, fy = official_fx_fy(*CROP)
    assert (fx, fy) == (1.5, 1.0)
    with tarfile.open(data["archive"]) as tf:
        for i, sample in enumerate(ds):
            raw = pickle.load(tf.extractfile(f"synth3_{i:06d}_dt3d_pred.pkl"))
            caption = tf.extractfile(f"synth3_{i:06d}.txt").read().decode().strip()
            coords = np.asarray(raw["coords"], dtype=np.float64).reshape(T, H, W, 3)
            top = (H - CROP[0]) // 2
            crop = coords[:, top:top + CROP[0], :CROP[1]]
            crop = np.concatenate([crop, np.repeat(crop[-1:], 3, 0)])        # repeat the last frame
            assert sample.caption == caption and len(caption) > 20
            assert sample.points.shape == (T + 3, *CROP, 3) and sample.delta_hat.shape == (T + 3, *CROP, 3)
            assert sample.control.shape == (T + 3, *CROP, 3) and sample.first_frame_points.shape == (*CROP, 3)
            np.testing.assert_allclose(sample.points.numpy(), crop, rtol=0, atol=1e-6)
            assert torch.equal(sample.points[T - 1], sample.points[T + 2])
            assert torch.count_nonzero(sample.delta_hat[0]) == 0
            p0 = crop[0]
            d = crop - p0
            expect = np.stack([d[..., 0] * fx / p0[..., 2], d[..., 1] * fy / p0[..., 2], d[..., 2] / p0[..., 2]], -1)
            np.testing.assert_allclose(sample.delta_hat.numpy(), expect, rtol=1e-4, atol=1e-5)
            assert np.abs(expect).max() > 1e-2          # the scene really moves
            colors = np.asarray(raw["colors"], dtype=np.float64).reshape(H, W, 3)[top:top + CROP[0]]
            np.testing.assert_allclose(sample.control[4].numpy(), colors / 255 * 2 - 1, atol=1e-6)
            np.testing.assert_allclose(sample.colors.numpy(), colors / 255, atol=1e-6)
    assert isinstance(raw["coords"], np.ndarray)
    with tarfile.open(data["archive"]) as tf:     # sample 1 was pickled as torch tensors
        assert isinstance(pickle.load(tf.extractfile("synth3_000001_dt3d_pred.pkl"))["coords"], torch.Tensor)


def test_folder_truncation_videos_and_skip_rule(data):
    folder = data["root"] / "dir"
    ds = TrajSceneDataset(folder, frames=4, crop=CROP, grid=GRID, load_video=True, load_render=True)
    assert sorted(ds.ids) == ["synth5_000000", "synth5_000001", "too_far"]
    valid = list(ds)
    assert sorted(s.id for s in valid) == ["synth5_000000", "synth5_000001"]
    assert list(ds.skipped) == ["too_far"] and "501" in ds.skipped["too_far"] and "> 500" in ds.skipped["too_far"]
    s = valid[0]
    raw = raw_pkl(folder / f"{s.id}_dt3d_pred.pkl")["coords"].reshape(T, H, W, 3)
    np.testing.assert_allclose(s.points.numpy(), raw[:4, 4:28], atol=1e-6)   # truncated to 4 frames
    assert s.video.shape == (4, H, W, 3) and s.video.dtype == torch.uint8
    assert s.render.shape == (4, H, W, 3) and s.mask.shape == (4, H, W) and s.mask.dtype == torch.bool
    assert s.caption == (folder / f"{s.id}.txt").read_text().strip()
    assert s.visibility.shape == (4, *CROP) and s.visibility.float().mean() > 0.5
    j = ds.ids.index("too_far")
    assert ds.load(j) is None and ds[j].id != "too_far"                       # replaced by a valid one
    keep = TrajSceneDataset(folder, frames=4, crop=None, grid=GRID, skip_large_coords=False)
    assert keep[j].id == "too_far" and float(keep[j].points.max()) < 500       # 501 is in frame 5, truncated
    assert keep[j].points.shape == (4, H, W, 3)


def _tar_with(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, payload in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    return path


def _pkl(coords) -> bytes:
    n = coords.shape[1]
    return pickle.dumps({"coords": coords, "colors": np.full((n, 3), 100.0, np.float32)})


def test_corrupt_member_is_named(tmp_path):
    arc = _tar_with(tmp_path / "000000-000049.tar.gz", {"a1.txt": b"a caption", "a1_dt3d_pred.pkl": b"garbage!"})
    with pytest.raises(MoGe4DInputError, match=r"000000-000049\.tar\.gz::a1_dt3d_pred\.pkl"):
        TrajSceneDataset(arc, frames=2, crop=None, grid=(2, 3))[0]


def test_wrong_shape_pkl_is_named(tmp_path):
    bad = np.zeros((3, 6, 2), np.float32)                                    # xy only
    arc = _tar_with(tmp_path / "r.tar.gz", {"b2.txt": b"cap", "b2_dt3d_pred.pkl": _pkl(bad)})
    with pytest.raises(MoGe4DInputError, match=r"r\.tar\.gz::b2_dt3d_pred\.pkl.*\(T,N,3\)"):
        TrajSceneDataset(arc, frames=2, crop=None, grid=(2, 3))[0]
    wrong_n = np.ones((3, 7, 3), np.float32)                                 # N = 7 != 2*3
    arc2 = _tar_with(tmp_path / "r2.tar.gz", {"b3.txt": b"cap", "b3_dt3d_pred.pkl": _pkl(wrong_n)})
    with pytest.raises(MoGe4DInputError, match=r"r2\.tar\.gz::b3_dt3d_pred\.pkl.*N = 7"):
        TrajSceneDataset(arc2, frames=2, crop=None, grid=(2, 3))[0]


def test_missing_caption_is_named(tmp_path):
    good = np.ones((3, 6, 3), np.float32)
    arc = _tar_with(tmp_path / "c.tar.gz", {"c9_dt3d_pred.pkl": _pkl(good), "c9.mp4": b"x"})
    with pytest.raises(MoGe4DInputError, match=r"c\.tar\.gz::c9\.txt: missing caption"):
        TrajSceneDataset(arc, frames=2, crop=None, grid=(2, 3))[0]
    ok = _tar_with(tmp_path / "d.tar.gz", {"c9_dt3d_pred.pkl": _pkl(good), "c9.txt": b"fine"})
    s = TrajSceneDataset(ok, frames=5, crop=None, grid=(2, 3))[0]
    assert s.caption == "fine" and s.points.shape == (5, 2, 3, 3) and torch.count_nonzero(s.delta_hat) == 0


def test_truncated_archive_is_named(data, tmp_path):
    blob = Path(data["archive"]).read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(MoGe4DInputError, match=r"cut\.tar\.gz"):
        TrajSceneDataset(cut, frames=2, crop=CROP, grid=GRID)


def test_synthetic_is_seeded_and_exact_first_frame():
    a = make_synthetic_sample(2, seed=11, height=H, width=W, frames=T)
    b = make_synthetic_sample(2, seed=11, height=H, width=W, frames=T)
    c = make_synthetic_sample(2, seed=12, height=H, width=W, frames=T)
    assert np.array_equal(a.coords, b.coords) and a.caption == b.caption
    assert not np.array_equal(a.coords, c.coords)
    K = np.asarray(a.meta["K"], np.float64)
    v, u = np.meshgrid(np.arange(H) + 0.5, np.arange(W) + 0.5, indexing="ij")
    p0 = a.coords[0].astype(np.float64).reshape(H, W, 3)
    assert (p0[..., 2] > 0).all()
    np.testing.assert_allclose(p0[..., 0] / p0[..., 2], (u - K[0, 2]) / K[0, 0], atol=1e-5)
    np.testing.assert_allclose(p0[..., 1] / p0[..., 2], (v - K[1, 2]) / K[1, 1], atol=1e-5)
    moved = np.linalg.norm(a.coords[-1] - a.coords[0], axis=-1)
    assert (moved > 1e-3).mean() > 0.02 and (moved == 0).mean() > 0.3     # objects move, background static
    assert a.colors.min() >= 0 and a.colors.max() <= 255 and a.vis.dtype == bool and a.vis.shape == (T, H * W)


def _rot_y(a):
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def _rot_z(a):
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


def _on_surface(p, prim):
    c = np.asarray(prim["centre"])
    if prim["kind"] == "sphere":
        return np.abs(np.linalg.norm(p - c, axis=-1) - prim["radius"]) < 1e-4
    q = np.abs(p - c) / np.asarray(prim["half"])
    return (np.abs(q.max(-1) - 1) < 1e-4)


def test_synthetic_rigid_and_articulated_tracks_follow_their_motion():
    """Frame-t positions of points on a rigid / articulated part equal the motion written here."""
    checked = set()
    for seed in range(6):
        s = make_synthetic_sample(0, seed=seed, height=H, width=W, frames=T)
        p0 = s.coords[0].astype(np.float64)
        prims = s.meta["objects"]
        on = np.stack([_on_surface(p0, pr) for pr in prims])
        for k, pr in enumerate(prims):
            m = on[k] & (on.sum(0) == 1)
            mot = pr["motion"]
            if m.sum() < 5 or mot["kind"] == "nonrigid":
                continue
            c, v = np.asarray(pr["centre"]), np.asarray(mot["velocity"])
            for t in range(1, T):
                a = t / (T - 1)
                if mot["kind"] == "rigid":
                    want = c + v * a + (p0[m] - c) @ _rot_y(mot["spin"] * a).T
                elif pr["part"] == 0:
                    want = p0[m] + v * a
                else:
                    hinge = np.asarray(mot["hinge"])
                    want = hinge + v * a + (p0[m] - hinge) @ _rot_z(mot["swing"] * np.sin(np.pi * a)).T
                np.testing.assert_allclose(s.coords[t][m], want, atol=1e-4)
            checked.add((mot["kind"], pr["part"]))
    assert {("rigid", 0), ("articulated", 0), ("articulated", 1)} <= checked


def test_reader_survives_pickling_and_reads_in_order(data):
    ds = TrajSceneDataset(data["archive"], frames=T, crop=CROP, grid=GRID)
    first = ds[0]
    clone = pickle.loads(pickle.dumps(ds))           # as a DataLoader worker gets it
    assert clone._handle is None
    assert torch.equal(clone[0].delta_hat, first.delta_hat) and clone[2].id == "synth3_000002"
    assert torch.equal(ds[1].points, clone[1].points)
    ds.close()
    clone.close()


def test_synthetic_cli_writes_a_range_archive(tmp_path):
    from training.datasets.synthetic import main
    assert main(["--out", str(tmp_path), "--count", "2", "--height", "16", "--width", "24", "--frames", "3",
                 "--seed", "4", "--tar", "--per-archive", "1"]) == 0
    archives = sorted(p.name for p in tmp_path.glob("*.tar.gz"))
    assert archives == ["000000-000000.tar.gz", "000001-000001.tar.gz"]
    with tarfile.open(tmp_path / archives[1]) as tf:
        names = sorted(tf.getnames())
    assert names == sorted(f"synth4_000001{s}" for s in (".mp4", ".txt", "_dt3d_pred.pkl", "_dt3d_render.mp4",
                                                         "_mask_render.mp4", "_meta.json"))
    s = TrajSceneDataset(tmp_path, frames=3, crop=None, grid=(16, 24))
    assert len(s) == 2 and s[1].points.shape == (3, 16, 24, 3)


def test_collate_and_dataloader(data):
    from training.datasets import collate_samples
    ds = TrajSceneDataset(data["archive"], frames=T, crop=CROP, grid=GRID)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate_samples)
    batch = next(iter(loader))
    assert batch.delta_hat.shape == (2, T, *CROP, 3) and batch.control.shape == (2, T, *CROP, 3)
    assert batch.id == ["synth3_000000", "synth3_000001"] and batch.video is None
    assert torch.equal(batch.points[1], ds[1].points) and batch.spec == [ds[0].spec, ds[1].spec]
    with pytest.raises(MoGe4DInputError, match="different shapes"):
        collate_samples([ds[0], TrajSceneDataset(data["archive"], frames=T + 1, crop=CROP, grid=GRID)[0]])


def test_nonfinite_points_raise_or_are_sanitised(tmp_path):
    coords = np.ones((3, 6, 3), np.float32)
    coords[1, 2, 0] = np.nan
    arc = _tar_with(tmp_path / "n.tar.gz", {"n1.txt": b"cap", "n1_dt3d_pred.pkl": _pkl(coords)})
    with pytest.raises(MoGe4DInputError, match=r"n\.tar\.gz::n1_dt3d_pred\.pkl.*NaN"):
        TrajSceneDataset(arc, frames=3, crop=None, grid=(2, 3))[0]
    s = TrajSceneDataset(arc, frames=3, crop=None, grid=(2, 3), sanitize=True)[0]
    assert torch.isfinite(s.points).all() and not bool(s.visibility[1, 0, 2]) and bool(s.visibility[1, 0, 1])


def test_missing_caption_in_a_folder_names_the_file(tmp_path):
    (tmp_path / "f1_dt3d_pred.pkl").write_bytes(_pkl(np.ones((2, 6, 3), np.float32)))
    with pytest.raises(MoGe4DInputError, match=r"f1\.txt: missing caption") as err:
        TrajSceneDataset(tmp_path, frames=2, crop=None, grid=(2, 3))[0]
    assert str(tmp_path) in str(err.value)


def test_synthetic_motion_scale_only_stretches_the_translation():
    from training.datasets.synthetic import make_synthetic_sample
    kw = dict(seed=5, height=16, width=24, frames=5, novel_view="source")
    one = make_synthetic_sample(1, **kw)
    two = make_synthetic_sample(1, motion_scale=2.0, **kw)
    np.testing.assert_array_equal(one.coords[0], two.coords[0])
    np.testing.assert_array_equal(one.colors, two.colors)
    assert one.caption.split(",")[0] == two.caption.split(",")[0]
    # every motion kind is c0 + v*s + f(p0, s): doubling v adds exactly v*s to each point of the object
    extra = np.zeros_like(one.coords, dtype=np.float64)
    moved = np.zeros(one.coords.shape[1], dtype=bool)
    for p1, p2 in zip(one.meta["objects"], two.meta["objects"]):
        v1, v2 = np.asarray(p1["motion"]["velocity"]), np.asarray(p2["motion"]["velocity"])
        np.testing.assert_allclose(v2, 2 * v1, rtol=1e-12)
        # which first-frame points belong to this primitive: their frame-1 offset differs from the others'
        for i in range(1, 5):
            s = i / 4
            diff = two.coords[i].astype(np.float64) - one.coords[i]
            hit = np.isclose(diff, v1 * s, atol=2e-5).all(-1) & (np.abs(v1).sum() > 0)
            extra[i, hit] = v1 * s
            moved |= hit
    assert moved.any()
    np.testing.assert_allclose(two.coords - one.coords, extra, atol=2e-5)
    with pytest.raises(MoGe4DInputError, match="motion_scale"):
        make_synthetic_sample(0, motion_scale=-1.0)
