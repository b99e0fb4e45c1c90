"""Nodes executed against the ComfyUI stand-in: outputs, files, progress, Cancel, bad input."""
import math

import pytest
import torch

from conftest import load_nodes
from moge4d_core.demo_scene import make_demo_scene
from moge4d_core.errors import MoGe4DInputError
from moge4d_core.io import save_trajectories_npz


@pytest.fixture()
def nodes(tmp_path):
    return load_nodes(tmp_path)


@pytest.fixture()
def scene():
    return make_demo_scene(height=24, width=32, num_frames=5)


def _by_id(nodes, node_id):
    return next(n for n in nodes.NODE_LIST if n.define_schema().node_id == node_id)


def test_load_trajectories_lists_and_loads_input_files(nodes, scene, tmp_path):
    save_trajectories_npz(scene, tmp_path / "input" / "sub" / "scene.npz")
    node = _by_id(nodes, "MoGe4DLoadTrajectories")
    combo = node.define_schema().inputs[0]
    assert combo.options == ["sub/scene.npz", "[MoGe4D example] moge4d_example_scene.npz"]   # input/ first
    assert node.validate_inputs(file="sub/scene.npz") is True
    assert "not found" in node.validate_inputs(file="missing.npz")
    traj, image, frames = node.execute(file="sub/scene.npz").args
    assert frames == 5 and traj.num_points == 24 * 32
    assert torch.equal(traj.points, scene.points)
    assert image.shape == (1, 24, 32, 3) and float(image.max()) <= 1.0


def test_camera_path_matches_the_scene_and_previews(nodes, scene):
    node = _by_id(nodes, "MoGe4DCameraPath")
    path, preview = node.execute(preset="orbit_left", trajectories=scene).args
    assert path.num_frames == 5 and (path.width, path.height) == (32, 24)
    assert torch.allclose(path.K[0], scene.K)
    assert preview.ndim == 4 and preview.shape[0] == 1 and preview.shape[-1] == 3
    # magnitude sets the orbit angle: the last camera is rotated by that many degrees about y
    path30, _ = node.execute(preset="orbit_left", trajectories=scene, magnitude=30.0, easing="linear").args
    R = path30.c2w[-1, :3, :3].double()
    angle = math.degrees(math.acos(max(-1.0, min(1.0, (float(torch.trace(R)) - 1) / 2))))
    assert angle == pytest.approx(30.0, abs=1e-3)


def test_camera_path_without_scene_needs_sizes(nodes):
    node = _by_id(nodes, "MoGe4DCameraPath")
    with pytest.raises(MoGe4DInputError, match="frames"):
        node.execute(preset="pan_left")
    path, _ = node.execute(preset="pan_left", frames=7, width=64, height=48, fov=50.0).args
    assert path.num_frames == 7
    with pytest.raises(MoGe4DInputError, match="JSON"):
        node.execute(preset="pan_left", frames=7, width=64, height=48, params="{angle: 3")


def test_render_node_outputs_and_progress(nodes, scene):
    import comfy.utils

    comfy.utils.updates.clear()
    path, _ = _by_id(nodes, "MoGe4DCameraPath").execute(preset="static", trajectories=scene).args
    frames, holes, depth = _by_id(nodes, "MoGe4DRender").execute(trajectories=scene, camera_path=path).args
    assert frames.shape == (5, 24, 32, 3) and holes.shape == (5, 24, 32) and depth.shape == (5, 24, 32, 3)
    assert 0.0 <= float(frames.min()) and float(frames.max()) <= 1.0
    # the static camera sees every first-frame point where it was: frame 0 has no holes
    assert float(holes[0].sum()) == 0.0
    assert torch.allclose(frames[0], scene.colors.reshape(24, 32, 3), atol=1e-6)
    assert comfy.utils.updates and comfy.utils.updates[-1][0] == comfy.utils.updates[-1][1]


def test_render_node_honours_cancel(nodes, scene):
    import comfy.model_management as mm

    path, _ = _by_id(nodes, "MoGe4DCameraPath").execute(preset="orbit_left", trajectories=scene).args
    mm.interrupt_after_calls = 2
    with pytest.raises(mm.InterruptProcessingException):
        _by_id(nodes, "MoGe4DRender").execute(trajectories=scene, camera_path=path)
    mm.reset_interrupt()
    frames, _, _ = _by_id(nodes, "MoGe4DRender").execute(trajectories=scene, camera_path=path).args
    assert frames.shape[0] == 5


def test_save_ply_sequence_writes_under_output(nodes, scene, tmp_path):
    node = _by_id(nodes, "MoGe4DSavePLYSequence")
    out = node.execute(trajectories=scene, filename_prefix="moge4d/test", format="points")
    files = sorted((tmp_path / "output" / "moge4d").rglob("*.ply"))
    assert len(files) == 5
    assert out.args and str(out.args[0].source).endswith("frame_00000.ply")
    node.execute(trajectories=scene, filename_prefix="moge4d/test", format="splat")
    assert len(sorted((tmp_path / "output" / "moge4d").rglob("*.ply"))) == 10


def test_save_refuses_paths_outside_output(nodes, scene, tmp_path):
    with pytest.raises(Exception, match="outside"):
        _by_id(nodes, "MoGe4DSavePLYSequence").execute(trajectories=scene, filename_prefix="../../escape")
    assert not list(tmp_path.rglob("*.ply"))


def test_to_tracks_layout(nodes, scene):
    path, _ = _by_id(nodes, "MoGe4DCameraPath").execute(preset="static", trajectories=scene).args
    (tracks,) = _by_id(nodes, "MoGe4DToTracks").execute(trajectories=scene, camera_path=path, num_tracks=12).args
    tp, vis = tracks["track_path"], tracks["track_visibility"]
    assert tp.ndim == 3 and tp.shape[0] == 5 and tp.shape[2] == 2 and vis.shape == tp.shape[:2]
    assert vis.dtype == torch.bool and bool(vis[0].all())
    # static camera, frame 0: tracks sit at their pixel centres
    assert float((tp[0] - tp[0].round(decimals=0)).abs().max()) == pytest.approx(0.5, abs=1e-4)


def test_load3d_converters_round_trip(nodes, scene):
    path, _ = _by_id(nodes, "MoGe4DCameraPath").execute(preset="orbit_right", trajectories=scene).args
    (cam0,) = _by_id(nodes, "MoGe4DCameraToLoad3D").execute(camera_path=path, frame=0).args
    (cam1,) = _by_id(nodes, "MoGe4DCameraToLoad3D").execute(camera_path=path, frame=-1).args
    back, _ = _by_id(nodes, "MoGe4DCameraFromLoad3D").execute(start=cam0, end=cam1, frames=5, width=32,
                                                                height=24, mode="linear").args
    assert torch.allclose(back.c2w[0], path.c2w[0], atol=1e-5)
    assert torch.allclose(back.c2w[-1], path.c2w[-1], atol=1e-5)
    with pytest.raises(MoGe4DInputError, match="outside"):
        _by_id(nodes, "MoGe4DCameraToLoad3D").execute(camera_path=path, frame=9)
