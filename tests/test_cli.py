"""The CLI main job at tiny size, and its bad-input behaviour (nothing written)."""
import re

import numpy as np
import pytest
import torch
from plyfile import PlyData

from moge4d_core.cli import main
from moge4d_core.demo_scene import make_demo_scene
from moge4d_core.io import read_video_frames, save_trajectories_npz
from moge4d_core.types import Trajectories

SMALL = ["--frames", "3", "--width", "32", "--height", "24"]


def test_render_demo_writes_videos_plys_and_scene(tmp_path):
    out = tmp_path / "out"
    assert main(["render", "--demo", *SMALL, "--camera", "orbit_left", "--camera", "dolly_in", "--out", str(out)]) == 0
    for cam in ("orbit_left", "dolly_in"):
        frames = read_video_frames(out / f"render_{cam}.mp4")
        assert frames.shape == (3, 24, 32, 3)
        holes = read_video_frames(out / f"holes_{cam}.mp4")
        assert holes.shape == (3, 24, 32, 3)
    # the first camera of every preset is the scene camera: frame 0 has no holes and shows the scene
    holes0 = read_video_frames(out / "holes_orbit_left.mp4")[0]
    assert holes0.max() < 40
    scene = make_demo_scene(height=24, width=32, num_frames=3)
    plys = sorted((out / "ply").glob("*.ply"))
    assert len(plys) == 3
    v = PlyData.read(str(plys[2]))["vertex"]
    xyz = np.stack([v["x"], v["y"], v["z"]], 1)
    assert np.allclose(xyz, scene.points[2].numpy(), atol=1e-6)
    assert (out / "scene.npz").is_file()


def test_unknown_preset_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["render", "--demo", *SMALL, "--camera", "orbit_sideways", "--out", str(out)]) == 2
    assert "orbit_sideways" in capsys.readouterr().err
    assert not out.exists()


def test_missing_source_is_explained(tmp_path, capsys):
    assert main(["render", "--out", str(tmp_path / "o")]) == 2
    assert "--demo" in capsys.readouterr().err


def test_single_frame_scene_renders(tmp_path):
    scene = make_demo_scene(height=24, width=32, num_frames=1)
    save_trajectories_npz(scene, tmp_path / "one.npz")
    out = tmp_path / "out"
    assert main(["render", "--trajectories", str(tmp_path / "one.npz"), "--camera", "static", "--out", str(out)]) == 0
    assert read_video_frames(out / "render_static.mp4").shape[0] == 1


@pytest.mark.parametrize("bad, match", [
    (dict(points=torch.zeros(2, 0, 3), colors=torch.zeros(0, 3), height=1, width=1), "empty"),
    (dict(points=torch.zeros(2, 12, 3), colors=torch.zeros(12, 3), height=3, width=5), "does not match"),
    (dict(points=torch.full((2, 6, 3), float("nan")), colors=torch.zeros(6, 3), height=2, width=3), "NaN"),
    (dict(points=torch.zeros(2, 6, 3), colors=torch.zeros(6, 3), height=0, width=3), "positive"),
    (dict(points=torch.zeros(0, 6, 3), colors=torch.zeros(6, 3), height=2, width=3), "at least one frame"),
])
def test_trajectories_reject_bad_input(bad, match):
    from moge4d_core.errors import MoGe4DInputError

    with pytest.raises(MoGe4DInputError, match=match):
        Trajectories(**bad)


# ---- outputs replace --out whole; cheap checks come before the scene is loaded or anything is rendered ----
def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_rerun_with_fewer_frames_and_other_cameras_replaces_the_output(tmp_path):
    out = tmp_path / "out"
    assert main(["render", "--demo", "--frames", "5", "--width", "32", "--height", "24", "--camera", "orbit_left",
                 "--camera", "dolly_in", "--out", str(out)]) == 0
    assert len(list((out / "ply").glob("*.ply"))) == 5
    assert main(["render", "--demo", *SMALL, "--camera", "dolly_in", "--out", str(out)]) == 0
    names = set(_snapshot(out))
    assert len(list((out / "ply").glob("*.ply"))) == 3
    assert not {"render_orbit_left.mp4", "holes_orbit_left.mp4"} & names
    from moge4d_core.io import load_trajectories

    assert load_trajectories(out / "scene.npz").num_frames == 3
    assert "moge4d_run.json" in names and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_render_into_an_unrelated_folder_is_refused_and_untouched(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("mine")
    assert main(["render", "--demo", *SMALL, "--out", str(out)]) == 2
    assert "not a MoGe4D output" in capsys.readouterr().err
    assert _snapshot(out) == {"thesis.tex": b"mine"}


def test_render_failure_mid_write_leaves_the_previous_output(tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert main(["render", "--demo", *SMALL, "--camera", "orbit_left", "--out", str(out)]) == 0
    before = _snapshot(out)

    def broken(*a, **k):
        raise OSError(5, "I/O error")

    monkeypatch.setattr("moge4d_core.io.write_ply_sequence", broken)
    with pytest.raises(OSError):
        main(["render", "--demo", "--frames", "4", "--width", "32", "--height", "24", "--camera", "orbit_left",
              "--out", str(out)])
    assert _snapshot(out) == before and [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.parametrize("extra, match", [
    (["--camera", "orbit_lfet"], "--camera orbit_lfet: unknown camera preset; did you mean orbit_left"),
    (["--camera", "orbit_left", "--camera", "spirl"], "--camera spirl.*did you mean spiral"),
    (["--fov", "200"], "--fov: field of view must be in"),
    (["--point-size", "0"], "--point-size"),
    (["--render-width", "-5"], "--render-width"),
])
def test_render_cheap_checks_come_before_the_scene_is_read(tmp_path, monkeypatch, capsys, extra, match):
    scene = make_demo_scene(height=24, width=32, num_frames=2)
    save_trajectories_npz(scene, tmp_path / "s.npz")

    def no_load(*a, **k):
        raise AssertionError("the scene was loaded before the arguments were checked")

    monkeypatch.setattr("moge4d_core.io.load_trajectories", no_load)
    out = tmp_path / "out"
    assert main(["render", "--trajectories", str(tmp_path / "s.npz"), *extra, "--out", str(out)]) == 2
    assert re.search(match, capsys.readouterr().err)
    assert not out.exists()


def test_render_refuses_when_the_disk_is_clearly_too_small(tmp_path, monkeypatch, capsys):
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr("moge4d_core.io.output_folder.shutil.disk_usage", lambda p: usage(10 ** 9, 0, 2 ** 20))

    def no_render(*a, **k):
        raise AssertionError("rendered before the free space was checked")

    monkeypatch.setattr("moge4d_core.render.render_trajectories", no_render)
    out = tmp_path / "out"
    assert main(["render", "--demo", "--frames", "9", "--width", "320", "--height", "240", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "MiB" in err and "only 1 MiB are free" in err and not out.exists()
