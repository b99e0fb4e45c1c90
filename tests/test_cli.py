"""The CLI main job at tiny size, and its bad-input behaviour (nothing written)."""
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
