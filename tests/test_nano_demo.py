"""The shipped nano model loads through the user loaders and `python -m moge4d_core demo` runs end to end."""
import json
import math

import numpy as np
import torch
from PIL import Image

from moge4d_core.cli import main
from moge4d_core.pipeline.model_dir import find_model_files
from moge4d_core.pipeline.nano import NANO_DIR, NANO_FILES

torch.set_num_threads(1)


def _psnr(a, b) -> float:
    return 10 * math.log10(1 / float(((a.double() - b.double()) ** 2).mean()))


def _capture_results(monkeypatch):
    """The SceneResults the CLI writes (tensors, before the lossy MP4s)."""
    from moge4d_core.pipeline import outputs

    seen, write = [], outputs.write_outputs

    def spy(result, out, **kw):
        seen.append(result)
        return write(result, out, **kw)
    monkeypatch.setattr(outputs, "write_outputs", spy)
    return seen


def test_demo_runs_on_the_shipped_nano_model(tmp_path, capsys, monkeypatch):
    files = find_model_files(NANO_DIR)
    assert files.strag == NANO_DIR / NANO_FILES["strag"] and files.vism_base == NANO_DIR / NANO_FILES["vism"]
    assert files.wan_vae == NANO_DIR / NANO_FILES["vae"]
    spec = json.loads((NANO_DIR / "demo.json").read_text())
    assert spec["settings"]["camera"] == ["orbit_left", "dolly_in"]
    seen = _capture_results(monkeypatch)
    assert main(["demo", "--out", str(tmp_path), "--steps", "2"]) == 0
    for cam in spec["settings"]["camera"]:
        for kind in ("render", "holes", "inpainted"):
            assert (tmp_path / f"{kind}_{cam}.mp4").is_file()
    assert len(list((tmp_path / "ply").glob("*.ply"))) == spec["settings"]["frames"]
    sheet = np.asarray(Image.open(tmp_path / "contact_sheet.png"))
    label = sheet.shape[1] - 4 * 96
    assert sheet.shape[0] == 2 * 3 * 64 and label > 30                  # rows + a label column on the left
    rows = [sheet[64 * i:64 * (i + 1), :label] for i in range(6)]
    assert all((r > 200).any() for r in rows)                          # white text in every row's label
    assert not np.array_equal(rows[0], rows[1]) and not np.array_equal(rows[0], rows[3])
    assert "trajectories (4D-STraG)" in capsys.readouterr().out
    # the Done line of issue 21: with keep_rendered (the demo's setting) inpainted frame 0 of the first camera is
    # the input image at >= 30 dB (no point is missing there); the render is splats sized to the point spacing
    image = torch.from_numpy(np.array(Image.open(NANO_DIR / spec["image"]).convert("RGB"))).float() / 255
    view = seen[0].views[0]
    assert view.camera.name == "orbit_left" and spec["settings"]["keep_rendered"] > 0
    assert _psnr(view.frames[0], image) >= 30.0
    assert view.render.extras.get("alpha") is not None                 # gaussians mode
    assert float(view.render.holes[0].sum()) == 0


def test_demo_without_keep_rendered_regenerates_frame_0(tmp_path, monkeypatch):
    seen = _capture_results(monkeypatch)
    assert main(["demo", "--out", str(tmp_path), "--steps", "1", "--keep-rendered", "0", "--camera", "static"]) == 0
    image = seen[0].geometry.image
    assert _psnr(seen[0].views[0].frames[0], image) < 25.0             # the nano ViSM alone: blobs
