"""`python -m moge4d_core generate` on tiny models in the release folder layout, and its error messages."""
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from moge4d_core.cli import main
from moge4d_core.io import load_trajectories, read_video_frames
from pipeline_models import write_tiny_models

torch.set_num_threads(1)
ARGS = ["--frames", "5", "--width", "16", "--height", "16", "--steps", "2", "--cfg", "2"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen")
    write_tiny_models(d / "models")
    Image.fromarray((np.random.default_rng(0).random((20, 24, 3)) * 255).astype(np.uint8)).save(d / "img.png")
    np.save(d / "depth.npy", np.full((16, 16), 3.0, np.float32))
    return d


def test_generate_writes_scene_renders_and_inpainted_videos(setup, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["generate", "--image", str(setup / "img.png"), "--models", str(setup / "models"), "--camera",
               "orbit_left", "--camera", "dolly_in", "--out", str(out), *ARGS])
    assert rc == 0
    names = {p.name for p in out.iterdir()}
    for cam in ("orbit_left", "dolly_in"):
        assert {f"render_{cam}.mp4", f"holes_{cam}.mp4", f"inpainted_{cam}.mp4"} <= names
    assert {"scene.npz", "ply", "contact_sheet.png", "timings.txt", "motion_preview.mp4"} <= names
    assert not [n for n in names if n.startswith(".partial")]
    scene = load_trajectories(out / "scene.npz")
    assert scene.points.shape == (5, 256, 3) and len(list((out / "ply").glob("*.ply"))) == 5
    frames = read_video_frames(out / "inpainted_dolly_in.mp4")
    assert tuple(frames.shape[:3]) == (5, 16, 16)
    sheet = np.asarray(Image.open(out / "contact_sheet.png"))
    assert sheet.shape == (2 * 3 * 16, 4 * 16, 3)
    text = capsys.readouterr().out
    assert "trajectories (4D-STraG)" in text and "peak MiB" in text and "depth (UniDepthV2)" in text


def test_generate_with_depth_and_fov_skips_unidepth(setup, tmp_path, capsys):
    rc = main(["generate", "--image", str(setup / "img.png"), "--models", str(setup / "models"), "--depth",
               str(setup / "depth.npy"), "--fov", "60", "--no-inpaint", "--out", str(tmp_path / "o"), *ARGS])
    assert rc == 0
    text = capsys.readouterr().out
    assert "UniDepth" not in text and not (tmp_path / "o" / "inpainted_orbit_left.mp4").exists()


def test_missing_model_file_is_named_and_nothing_is_written(setup, tmp_path, capsys):
    models = tmp_path / "models"
    shutil.copytree(setup / "models", models)
    shutil.rmtree(models / "VAE")
    rc = main(["generate", "--image", str(setup / "img.png"), "--models", str(models), "--out", str(tmp_path / "o"), *ARGS])
    err = capsys.readouterr().err
    assert rc == 2 and "motion VAE" in err and "VAE/" in err and not (tmp_path / "o").exists()


def test_bad_arguments_give_clear_errors(setup, tmp_path, capsys):
    common = ["--models", str(setup / "models"), "--out", str(tmp_path / "o")]
    assert main(["generate", "--image", str(setup / "img.png"), "--depth", str(setup / "depth.npy"), *common, *ARGS]) == 2
    assert "--fov" in capsys.readouterr().err
    assert main(["generate", "--image", str(setup / "nope.png"), *common, *ARGS]) == 2
    assert "no such file" in capsys.readouterr().err
    bad = [a if a != "5" else "6" for a in ARGS]
    assert main(["generate", "--image", str(setup / "img.png"), *common, *bad]) == 2
    assert "4k+1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
