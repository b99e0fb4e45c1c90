"""training/prepare.py: quality filters, report, renders and read-back through TrajSceneDataset.

Fixtures are built here: a 16x24 point grid, 5 frames, points unprojected at the pixel centres with
DELTA's intrinsics K = [[W,0,W/2],[0,W,H/2]] (so the first render frame, seen from the first camera,
covers every pixel exactly once), plus one sample per filter made to fail exactly that filter, and
bad inputs. Expected values are recomputed here in float64 from the fixture arrays.
"""
from __future__ import annotations

import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.camera.paths import make_camera_path
from moge4d_core.io import write_mp4
from training.datasets import TrajSceneDataset
from training.prepare import FILTERS, PrepareOptions, main, prepare_dataset, quality_checks

H, W, T = 16, 24, 5
N = H * W
KEPT = ["clean", "clean_torch"]
DROPPED = {"bad_invalid": "invalid_depth", "bad_spread": "depth_spread", "bad_scale": "scale_drift",
           "bad_coords": "coord_limit"}


def scene() -> dict:
    """Smooth slanted surface, a block moving right; colours a smooth gradient (0..255)."""
    v, u = np.meshgrid(np.arange(H) + 0.5, np.arange(W) + 0.5, indexing="ij")
    z = 2.0 + u / W + 0.5 * v / H
    p0 = np.stack([(u - W / 2) * z / W, (v - H / 2) * z / W, z], -1).reshape(N, 3)
    coords = np.repeat(p0[None], T, 0)
    block = np.zeros((H, W), bool)
    block[4:9, 6:13] = True
    block = block.reshape(N)
    for t in range(T):
        coords[t, block, 0] += 0.04 * t
    colors = np.stack([255 * u / W, 255 * v / H, np.full_like(u, 128.0)], -1).reshape(N, 3)
    vis = np.ones((T, N), bool)
    vis[2:, :5] = False
    return {"coords": coords.astype(np.float32), "colors": colors.astype(np.float32), "vis": vis}


def write_sample(folder: Path, sid: str, data: dict, *, torch_pkl=False, batch=False, caption=True, pkl=True,
                 video=True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if video:
        img = (data["colors"].reshape(H, W, 3) / 255.0).astype(np.float32)
        write_mp4(np.repeat(img[None], T, 0), folder / f"{sid}.mp4", fps=10)
    if caption:
        (folder / f"{sid}.txt").write_text(f"a test scene called {sid}\n", encoding="utf-8")
    if pkl:
        out = dict(data)
        if batch:
            out = {"coords": out["coords"][None], "colors": out["colors"][None], "vis": out["vis"].astype(np.float32)}
        if torch_pkl:
            out = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}
        with open(folder / f"{sid}_dt3d_pred.pkl", "wb") as fh:
            pickle.dump(out, fh, protocol=4)


def make_inputs(root: Path) -> dict:
    base = scene()
    write_sample(root, "clean", base)
    write_sample(root, "clean_torch", base, torch_pkl=True, batch=True)

    inv = {k: v.copy() for k, v in base.items()}
    inv["coords"][0, :20, 2] = np.nan                 # 20 NaN + 20 zero depths: 40/384 = 0.104 > 0.05
    inv["coords"][0, 20:40, 2] = 0.0
    write_sample(root, "bad_invalid", inv, torch_pkl=True)

    spread = {k: v.copy() for k, v in base.items()}
    far = np.arange(N) % 10 < 3                        # 30 % of the points 40x further along their rays
    spread["coords"][:, far] *= 40.0
    write_sample(root, "bad_spread", spread)

    scale = {k: v.copy() for k, v in base.items()}
    scale["coords"][3:] *= 2.0                         # depth scale jumps x2 from frame 3 on
    write_sample(root, "bad_scale", scale)

    big = {k: v.copy() for k, v in base.items()}
    big["coords"][-1, 5, 0] = 501.0
    write_sample(root, "bad_coords", big)

    write_sample(root, "err_nocaption", base, caption=False)
    write_sample(root, "err_nopkl", base, pkl=False)
    shape = {k: v.copy() for k, v in base.items()}
    shape["coords"] = shape["coords"][..., :2]
    write_sample(root, "err_shape", shape)
    write_sample(root, "err_video", base, video=False)
    (root / "err_video.mp4").write_bytes(b"this is not an mp4 file" * 10)
    return {"base": base, "inv": inv, "spread": spread, "scale": scale, "big": big}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("prepare")
    arrays = make_inputs(root / "in")
    report = prepare_dataset(root / "in", root / "out")
    return {"root": root, "arrays": arrays, "report": report}


def test_report_kept_dropped_and_errors(run):
    rep = run["report"]
    assert rep.kept == KEPT
    assert {sid: [c.name for c in checks] for sid, checks in rep.dropped.items()} == \
        {sid: [name] for sid, name in DROPPED.items()}
    assert sorted(rep.errors) == ["err_nocaption", "err_nopkl", "err_shape", "err_video"]
    assert "err_nocaption.txt" in rep.errors["err_nocaption"] and "missing" in rep.errors["err_nocaption"]
    assert "err_nopkl_dt3d_pred.pkl" in rep.errors["err_nopkl"]
    assert "['coords']" in rep.errors["err_shape"] and "(T,N,3)" in rep.errors["err_shape"]
    assert "err_video.mp4" in rep.errors["err_video"] and "decode" in rep.errors["err_video"]

    # measured values against float64 recomputation
    d = rep.dropped
    assert d["bad_invalid"][0].value == pytest.approx(40 / N) and d["bad_invalid"][0].threshold == 0.05
    z0 = run["arrays"]["spread"]["coords"][0, :, 2].astype(np.float64)
    assert d["bad_spread"][0].value == pytest.approx(np.sqrt(np.mean((z0 - z0.mean()) ** 2)) / np.median(z0), rel=1e-9)
    assert d["bad_spread"][0].value > 1.0
    assert d["bad_scale"][0].value == pytest.approx(2.0, rel=1e-6) and d["bad_scale"][0].threshold == 1.5
    assert d["bad_coords"][0].value == 501.0 and d["bad_coords"][0].threshold == 500.0
    clean = next(s for s in rep.samples if s.id == "clean")
    assert [c.name for c in clean.checks] == list(FILTERS) and all(c.passed for c in clean.checks)
    assert clean.grid == (H, W) and clean.frames == T

    saved = json.loads((run["root"] / "out" / "prepare_report.json").read_text())
    assert saved["kept"] == KEPT and sorted(saved["dropped"]) == sorted(DROPPED)
    assert saved["dropped"]["bad_scale"][0]["name"] == "scale_drift" and sorted(saved["errors"]) == sorted(rep.errors)
    out_files = sorted(p.name for p in (run["root"] / "out").iterdir())
    expect = sorted([f"{s}{suf}" for s in KEPT for suf in (".mp4", ".txt", "_dt3d_pred.pkl", "_dt3d_render.mp4",
                                                           "_mask_render.mp4")] + ["prepare_report.json"])
    assert out_files == expect                          # nothing for dropped / bad samples, no temp files
    assert "kept" in rep.summary() and "bad_scale" in rep.summary()


def test_output_reads_back_through_trajscene_dataset(run):
    out, base = run["root"] / "out", run["arrays"]["base"]
    ds = TrajSceneDataset(out, frames=T, crop=None, grid=(H, W), load_video=True, load_render=True)
    assert ds.ids == KEPT
    for s in ds:
        np.testing.assert_allclose(s.points.numpy().reshape(T, N, 3), base["coords"], atol=1e-6)
        np.testing.assert_allclose(s.colors.numpy().reshape(N, 3), base["colors"] / 255.0, atol=1e-6)
        np.testing.assert_array_equal(s.visibility.numpy().reshape(T, N), base["vis"])
        assert s.caption == f"a test scene called {s.id}"
        assert (out / f"{s.id}.mp4").read_bytes() == (run["root"] / "in" / f"{s.id}.mp4").read_bytes()
        assert s.render.shape == (T, H, W, 3) and s.mask.shape == (T, H, W)
        # frame 0 = the first camera with DELTA's K: every pixel gets its own point, colours in place
        assert not s.mask[0].any()
        render0 = s.render[0].numpy().astype(np.float64)
        assert np.abs(render0 - base["colors"].reshape(H, W, 3)).mean() < 8.0      # yuv420 at 16x24 blurs colour
        # the source video holds the same image through the same encoder: close frame 0
        assert np.abs(render0 - s.video[0].numpy()).mean() < 3.0
    with open(out / "clean_dt3d_pred.pkl", "rb") as fh:
        raw = pickle.load(fh)
    assert raw["coords"].shape == (T, N, 3) and raw["coords"].dtype == np.float32
    assert raw["colors"].shape == (N, 3) and raw["vis"].dtype == np.bool_ and raw["vis"].shape == (T, N)


def test_render_holes_follow_the_orbit_camera(run):
    """Holes of the last frame = pixels no point projects to, projected here in float64."""
    base = run["arrays"]["base"]
    K = np.array([[W, 0, W / 2], [0, W, H / 2], [0, 0, 1.0]])
    cam = make_camera_path("orbit_left", T, W, H, points0=torch.from_numpy(base["coords"][0]),
                           K=torch.from_numpy(K).float(), angle_deg=15.0)
    c2w = cam.c2w[-1].double().numpy()
    R, c = c2w[:3, :3], c2w[:3, 3]
    pc = (base["coords"][-1].astype(np.float64) - c) @ R            # world -> camera (R^T (p - c))
    u = K[0, 0] * pc[:, 0] / pc[:, 2] + K[0, 2]
    v = K[1, 1] * pc[:, 1] / pc[:, 2] + K[1, 2]
    ok = (pc[:, 2] > 1e-3) & (u >= 0) & (u < W) & (v >= 0) & (v < H)
    covered = np.zeros((H, W), bool)
    covered[np.floor(v[ok]).astype(int), np.floor(u[ok]).astype(int)] = True
    ds = TrajSceneDataset(run["root"] / "out", frames=T, crop=None, grid=(H, W), load_render=True)
    mask = ds[0].mask[-1].numpy()
    assert (~covered).sum() >= 10                                    # the orbit really opens holes
    assert (mask != ~covered).sum() <= 3                             # mp4 / float32 boundary slack


def test_quality_checks_match_reference_formulas():
    rng = np.random.default_rng(0)
    t, n = 6, 500
    coords = rng.uniform(1.0, 5.0, (t, n, 3))
    coords[0, :7, 2] = np.inf
    coords[0, 7:12, 2] = 5e3
    coords[2:, :, 2] *= rng.uniform(1.1, 1.3, n)                     # depth grows by ~1.2 from frame 2
    coords[4, 100:140] = np.nan
    vis = rng.random((t, n)) > 0.2
    o = PrepareOptions(max_scale_drift=1.1)
    checks = {c.name: c for c in quality_checks(coords, vis, o)}
    z = coords[..., 2]
    valid = np.isfinite(coords).all(-1) & (z > 1e-3) & (z < 1e3)
    assert checks["invalid_depth"].value == pytest.approx(12 / n) and checks["invalid_depth"].passed
    z0 = z[0][valid[0]]
    assert checks["depth_spread"].value == pytest.approx(z0.std() / np.median(z0), rel=1e-12)
    drift = []
    for k in range(1, t):
        sel = valid[0] & vis[0] & vis[k] & valid[k]
        s = np.median(z[k][sel] / z[0][sel])
        drift.append(max(s, 1 / s))
    assert checks["scale_drift"].value == pytest.approx(max(drift), rel=1e-12)
    assert max(drift) > 1.1 and not checks["scale_drift"].passed
    assert checks["coord_limit"].value == pytest.approx(np.nanmax(coords[np.isfinite(coords).all(-1)]))
    assert not checks["coord_limit"].passed                         # the 5e3 depths
    # torch input and no visibility: all points count
    checks_t = {c.name: c for c in quality_checks(torch.from_numpy(coords).float(), None, o)}
    ref = max(max(m, 1 / m) for m in (np.median(z[k][valid[0] & valid[k]] / z[0][valid[0] & valid[k]])
                                      for k in range(1, t)))
    assert checks_t["scale_drift"].value == pytest.approx(ref, rel=1e-5)


def test_strict_raises_and_leaves_no_partial_files(run, tmp_path):
    out = tmp_path / "strict"
    with pytest.raises(MoGe4DInputError, match="err_nocaption"):
        prepare_dataset(run["root"] / "in", out, options=PrepareOptions(strict=True, tar=50))
    assert [p.name for p in out.iterdir()] == []                    # no staging folder, no half archive
    out2 = tmp_path / "strict_dir"
    with pytest.raises(MoGe4DInputError, match="err_nocaption"):
        prepare_dataset(run["root"] / "in", out2, options=PrepareOptions(strict=True))
    # the samples before the bad one are complete, nothing else (no temp folders)
    assert sorted(p.name for p in out2.iterdir()) == sorted(
        f"{s}{suf}" for s in KEPT for suf in (".mp4", ".txt", "_dt3d_pred.pkl", "_dt3d_render.mp4", "_mask_render.mp4"))


def test_cli_tar_archives_read_back(run, tmp_path, capsys):
    out = tmp_path / "tar"
    rc = main(["--input", str(run["root"] / "in"), "--out", str(out), "--tar", "1", "--grid", f"{H}x{W}",
               "--max-scale-drift", "2.5"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "3 kept, 3 dropped, 4 errors" in printed                  # bad_scale now passes (2.0 <= 2.5)
    archives = sorted(p.name for p in out.glob("*.tar.gz"))
    assert archives == ["000000-000000.tar.gz", "000001-000001.tar.gz", "000002-000002.tar.gz"]
    with tarfile.open(out / archives[0]) as tf:
        assert sorted(tf.getnames()) == sorted(f"bad_scale{s}" for s in (".mp4", ".txt", "_dt3d_pred.pkl",
                                                                        "_dt3d_render.mp4", "_mask_render.mp4"))
    ds = TrajSceneDataset(out, frames=T, crop=None, grid=(H, W), load_render=True)
    assert ds.ids == ["bad_scale", "clean", "clean_torch"]
    s = ds[0]
    np.testing.assert_allclose(s.points.numpy().reshape(T, N, 3), run["arrays"]["scale"]["coords"], atol=1e-6)
    assert not s.mask[0].any()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_grid_inference_and_bad_options(tmp_path):
    base = scene()
    src = tmp_path / "in"
    write_sample(src, "a", base)
    # the video is 16x24, so N = 384 is inferred from it; a wrong explicit grid is a per-sample error
    assert prepare_dataset(src, tmp_path / "o1").kept == ["a"]
    rep = prepare_dataset(src, tmp_path / "o2", options=PrepareOptions(grid=(10, 30)))
    assert "does not match --grid 10x30" in rep.errors["a"]
    img = np.zeros((T, 8, 8, 3), np.float32)
    write_mp4(img, src / "a.mp4")                                   # video size no longer matches N
    rep = prepare_dataset(src, tmp_path / "o3")
    assert "--grid" in rep.errors["a"]
    assert prepare_dataset(src, tmp_path / "o4", options=PrepareOptions(grid=(H, W))).kept == ["a"]
    with pytest.raises(MoGe4DInputError, match="is the input folder"):
        prepare_dataset(src, src)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MoGe4DInputError, match="no samples"):
        prepare_dataset(tmp_path / "empty", tmp_path / "o5")
    with pytest.raises(MoGe4DInputError, match="camera preset"):
        prepare_dataset(src, tmp_path / "o6", options=PrepareOptions(camera="nope"))
    with pytest.raises(MoGe4DInputError, match="max_scale_drift"):
        prepare_dataset(src, tmp_path / "o7", options=PrepareOptions(max_scale_drift=0.5))
