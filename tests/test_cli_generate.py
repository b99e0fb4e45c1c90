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
    assert sheet.shape[0] == 2 * 3 * 16 and sheet.shape[1] > 4 * 16 + 20        # + the label column
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
    # any scene length is fine (windows are chained); the model's window must be 4k+1
    assert main(["generate", "--image", str(setup / "img.png"), *common, *ARGS, "--window", "6"]) == 2
    assert "4k+1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ---- cheap checks before any model loads; inputs read by their bit depth; outputs replace --out whole ----
@pytest.fixture
def no_models(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("models were loaded before the cheap checks")

    monkeypatch.setattr("moge4d_core.pipeline.model_dir.load_models", boom)


def _files(setup):
    d = setup / "bad"
    if not d.exists():
        d.mkdir()
        (d / "empty.npy").write_bytes(b"")
        (d / "garbage.npy").write_bytes(b"\x93NUMPY\x01\x00garbage")
        (d / "garbage.png").write_bytes(b"not a png")
        np.save(d / "negative.npy", np.full((16, 16), -2.0, np.float32))
        np.save(d / "nan.npy", np.full((16, 16), np.nan, np.float32))
        Image.fromarray(np.full((16, 16), 3000, np.uint16)).save(d / "mm.png")
        (d / "unrelated").mkdir()
        (d / "unrelated" / "keep.txt").write_text("mine")
    return d


@pytest.mark.parametrize("extra, match", [
    (["--camera", "orbit_lfet"], r"--camera orbit_lfet: unknown camera preset; did you mean orbit_left"),
    (["--camera", "orbit_left", "--camera", "dolly_inn"], r"--camera dolly_inn.*did you mean dolly_in"),
    (["--width", "20"], r"--width/--height: size 16x20; .*multiples of 16"),
    (["--steps", "0"], r"steps: expected an integer >= 1"),
    (["--fps", "0"], r"--fps"),
    (["--depth", "{bad}/empty.npy", "--fov", "60"], r"--depth .*empty\.npy: the file is empty"),
    (["--depth", "{bad}/garbage.npy", "--fov", "60"], r"--depth .*garbage\.npy: cannot read it as a \.npy"),
    (["--depth", "{bad}/garbage.png", "--fov", "60"], r"--depth .*garbage\.png: cannot read it as an image"),
    (["--depth", "{bad}/negative.npy", "--fov", "60"], r"negative\.npy: no positive depth value"),
    (["--depth", "{bad}/nan.npy", "--fov", "60"], r"nan\.npy: 256 of 256 depth values are NaN"),
    (["--depth", "{bad}/mm.png", "--fov", "60"], r"mm\.png: 16-bit integer depth .*--depth-scale"),
    (["--depth", "{setup}/depth.npy", "--fov", "200"], r"--fov: field of view"),
    (["--depth-scale", "0.001"], r"--depth-scale: only used with --depth"),
    (["--out", "{bad}/unrelated"], r"unrelated: the folder is not empty and is not a MoGe4D output"),
])
def test_generate_cheap_checks_come_before_any_model_loads(setup, tmp_path, capsys, no_models, extra, match):
    import re

    bad = _files(setup)
    extra = [e.format(bad=bad, setup=setup) for e in extra]
    out = ["--out", str(tmp_path / "o")] if "--out" not in extra else []
    rc = main(["generate", "--image", str(setup / "img.png"), "--models", str(setup / "models"), *out, *ARGS,
               *extra])
    assert rc == 2
    assert re.search(match, capsys.readouterr().err)
    assert not (tmp_path / "o").exists()
    assert (bad / "unrelated" / "keep.txt").read_text() == "mine"


def test_generate_garbage_image_and_cuda_without_gpu(setup, tmp_path, capsys, no_models):
    bad = _files(setup)
    common = ["--models", str(setup / "models"), "--out", str(tmp_path / "o"), *ARGS]
    assert main(["generate", "--image", str(bad / "garbage.png"), *common]) == 2
    assert "--image" in (err := capsys.readouterr().err) and "garbage.png: cannot read it as an image" in err
    if not torch.cuda.is_available():
        assert main(["generate", "--image", str(setup / "img.png"), *common, "--device", "cuda"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err


def test_generate_refuses_a_clearly_too_small_disk(setup, tmp_path, capsys, monkeypatch, no_models):
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr("moge4d_core.io.output_folder.shutil.disk_usage", lambda p: usage(10 ** 9, 0, 1000))
    assert main(["generate", "--image", str(setup / "img.png"), "--models", str(setup / "models"),
                 "--out", str(tmp_path / "o"), *ARGS]) == 2
    err = capsys.readouterr().err
    assert "the outputs need about" in err and "5 frames at 16x16, 1 camera(s)" in err
    assert "only 0 MiB are free" in err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("extra, match", [
    (["--width", "20"], "multiples of 16"),
    (["--camera", "orbit_left", "--camera", "spirl"], "spirl"),
])
def test_demo_cheap_checks_come_before_any_model_loads(tmp_path, capsys, no_models, extra, match):
    assert main(["demo", "--out", str(tmp_path / "o"), *extra]) == 2
    assert match in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_16bit_image_and_millimetre_depth_are_read_by_their_units(setup, tmp_path):
    from moge4d_core.cli import build_parser, preflight

    grey = np.full((16, 16), 32768, np.uint16)
    Image.fromarray(grey).save(tmp_path / "grey16.png")
    Image.fromarray(np.full((16, 16), 2500, np.uint16)).save(tmp_path / "mm.png")
    args = build_parser().parse_args(["generate", "--image", str(tmp_path / "grey16.png"), "--models",
                                      str(setup / "models"), "--depth", str(tmp_path / "mm.png"), "--fov", "60",
                                      "--depth-scale", "0.001", "--out", str(tmp_path / "o"), *ARGS])
    args.camera = ["orbit_left"]
    checked = preflight(args, "generate", models_dir=args.models, image_path=args.image, depth_path=args.depth,
                        fov=args.fov)
    assert torch.allclose(checked.image, torch.full((16, 16, 3), 32768 / 65535))      # not 99.6 % white
    assert torch.allclose(checked.depth, torch.full((16, 16), 2.5))                    # metres, not 2500


def test_generate_rerun_with_other_cameras_replaces_the_output(setup, tmp_path):
    out = tmp_path / "out"
    common = ["--image", str(setup / "img.png"), "--models", str(setup / "models"), "--depth",
              str(setup / "depth.npy"), "--fov", "60", "--no-inpaint", "--out", str(out), *ARGS]
    assert main(["generate", *common, "--camera", "orbit_left", "--camera", "dolly_in"]) == 0
    assert (out / "render_orbit_left.mp4").is_file()
    assert main(["generate", *common, "--camera", "dolly_in"]) == 0
    names = {p.name for p in out.iterdir()}
    assert "render_dolly_in.mp4" in names and not {"render_orbit_left.mp4", "holes_orbit_left.mp4"} & names
    assert "moge4d_run.json" in names and [p.name for p in tmp_path.iterdir()] == ["out"]
