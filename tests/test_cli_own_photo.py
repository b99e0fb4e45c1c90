"""Your own photo on a CPU (issue 21 item 6): a model folder's demo.json settings are generate's defaults (the nano
model's, not the release's), a photo of another aspect is centre-cropped or padded (never stretched, said on stderr)
with --depth following the same cut and --fov converted."""
import json
import math
import shutil
from argparse import Namespace

import numpy as np
import pytest
import torch
from PIL import Image

from moge4d_core.cli import RELEASE_DEFAULTS, fill_generate_defaults, main
from moge4d_core.errors import MoGe4DInputError
from moge4d_core.io import load_trajectories
from moge4d_core.pipeline.fit import fit_to_aspect
from moge4d_core.pipeline.model_dir import folder_defaults
from moge4d_core.pipeline.nano import NANO_DIR
from pipeline_models import write_tiny_models

torch.set_num_threads(1)


def test_crop_keeps_the_centre_and_pad_adds_bars_with_the_fov_converted():
    img = torch.rand(512, 512, 3)
    depth = torch.rand(512, 512) + 1
    c = fit_to_aspect(img, depth, 60.0, 96, 64, "crop")
    assert tuple(c.image.shape) == (341, 512, 3) and torch.equal(c.image, img[85:426])
    assert torch.equal(c.depth, depth[85:426]) and c.fov == pytest.approx(60.0)     # rows cut: same width
    assert "--fit crop" in c.note and "512x341" in c.note
    p = fit_to_aspect(img, depth, 60.0, 96, 64, "pad")
    assert tuple(p.image.shape) == (512, 768, 3)
    assert torch.equal(p.image[:, 128:640], img) and float(p.image[:, :128].abs().max()) == 0.0
    assert torch.equal(p.depth[:, :128], depth[:, :1].expand(512, 128))              # the edge's depth, repeated
    fx = 256 / math.tan(math.radians(30))                                             # same focal, wider image
    assert p.fov == pytest.approx(math.degrees(2 * math.atan(384 / fx)))
    assert "--fit pad" in p.note and "768x512" in p.note
    # a tall image cropped to a wide size: the columns stay, the fov too; a depth map of another size follows
    t = fit_to_aspect(torch.rand(100, 60, 3), torch.rand(50, 30), 50.0, 96, 64, "crop")
    assert tuple(t.image.shape) == (40, 60, 3) and tuple(t.depth.shape) == (40, 60) and t.fov == pytest.approx(50.0)
    same = fit_to_aspect(img[:64, :96], None, None, 96, 64, "crop")
    assert same.note == "" and same.image.shape == (64, 96, 3)


def test_release_defaults_without_a_settings_file_and_bad_settings_refused(tmp_path):
    args = Namespace(**{k: None for k in RELEASE_DEFAULTS}, window=None, fit=None, command="generate")
    fill_generate_defaults(args, tmp_path)
    assert (args.width, args.height, args.frames, args.window, args.steps, args.cfg) == (512, 368, 49, 49, 50, 6.0)
    assert (args.render, args.keep_rendered, args.fit) == ("points", 0, "crop")
    (tmp_path / "demo.json").write_text('{"settings": [1, 2]}')
    with pytest.raises(MoGe4DInputError, match="demo.json: 'settings' must be an object"):
        folder_defaults(tmp_path)


def test_the_nano_folder_carries_its_own_defaults():
    own = folder_defaults(NANO_DIR)
    spec = json.loads((NANO_DIR / "demo.json").read_text())["settings"]
    assert own == {k: spec[k] for k in ("frames", "width", "height", "steps", "cfg", "shift", "render", "keep_rendered")}
    assert (own["width"], own["height"], own["frames"], own["render"]) == (96, 64, 17, "splats")
    assert own["keep_rendered"] > 0


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("own")
    write_tiny_models(d / "models")
    (d / "models" / "demo.json").write_text(json.dumps({"settings": {
        "frames": 5, "width": 16, "height": 16, "steps": 1, "cfg": 1.0, "render": "splats", "keep_rendered": 1}}))
    rng = np.random.default_rng(1)
    Image.fromarray((rng.random((16, 32, 3)) * 255).astype(np.uint8)).save(d / "wide.png")
    np.save(d / "wide_depth.npy", np.linspace(2, 4, 16 * 32, dtype=np.float32).reshape(16, 32))
    return d


def _run(folder, out, *extra):
    return main(["generate", "--models", str(folder / "models"), "--image", str(folder / "wide.png"), "--depth",
                 str(folder / "wide_depth.npy"), "--fov", "60", "--no-inpaint", "--out", str(out), *extra])


def test_generate_takes_the_folders_defaults_and_crops_a_wide_photo(folder, tmp_path, capsys):
    assert _run(folder, tmp_path / "o") == 0
    err = capsys.readouterr().err
    assert "this model's own defaults" in err and "--width 16 --height 16" in err and "--render splats" in err
    assert "--fit crop: the image is 32x16, the working size 16x16; using its centre 16x16" in err
    scene = load_trajectories(tmp_path / "o" / "scene.npz")
    assert scene.points.shape == (5, 256, 3)                                     # the folder's 5 frames at 16x16
    img = np.asarray(Image.open(folder / "wide.png"), dtype=np.float32) / 255
    assert np.allclose(scene.colors.numpy().reshape(16, 16, 3), img[:, 8:24], atol=1 / 255)   # the centre, unstretched
    depth = np.load(folder / "wide_depth.npy")
    assert np.allclose(scene.points[0, :, 2].numpy().reshape(16, 16), depth[:, 8:24], rtol=1e-5)


def test_pad_keeps_the_whole_photo(folder, tmp_path, capsys):
    assert _run(folder, tmp_path / "o", "--fit", "pad", "--width", "32", "--height", "32") == 0
    err = capsys.readouterr().err
    assert "--fit pad" in err and "padded to 32x32" in err
    line = next(l for l in err.splitlines() if "own defaults" in l)
    assert "--frames 5" in line and "--width" not in line                          # the command line wins
    colors = load_trajectories(tmp_path / "o" / "scene.npz").colors.numpy().reshape(32, 32, 3)
    img = np.asarray(Image.open(folder / "wide.png"), dtype=np.float32) / 255
    assert np.allclose(colors[8:24], img, atol=1 / 255) and colors[:8].max() == 0 and colors[24:].max() == 0


def test_generate_with_models_nano_uses_the_nano_settings(tmp_path, capsys):
    spec = json.loads((NANO_DIR / "demo.json").read_text())
    assert main(["generate", "--models", "nano", "--image", str(NANO_DIR / spec["image"]), "--depth",
                 str(NANO_DIR / spec["depth"]), "--fov", str(spec["fov_deg"]), "--steps", "1", "--no-inpaint",
                 "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "--width 96 --height 64" in err and "--fit" not in err                  # 96x64 photo: nothing cut
    assert load_trajectories(tmp_path / "o" / "scene.npz").points.shape == (17, 96 * 64, 3)


def test_the_small_unidepth_folder_is_found(folder, tmp_path):
    from moge4d_core.pipeline.model_dir import find_model_files

    models = tmp_path / "m"
    shutil.copytree(folder / "models", models)
    shutil.move(str(models / "unidepth"), str(models / "unidepth-v2-vits14"))
    assert find_model_files(models).unidepth == models / "unidepth-v2-vits14"
