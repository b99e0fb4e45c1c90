"""The shipped nano model loads through the user loaders and `python -m moge4d_core demo` runs end to end."""
import json

import numpy as np
import torch
from PIL import Image

from moge4d_core.cli import main
from moge4d_core.pipeline.model_dir import find_model_files
from moge4d_core.pipeline.nano import NANO_DIR

torch.set_num_threads(1)


def test_demo_runs_on_the_shipped_nano_model(tmp_path, capsys):
    files = find_model_files(NANO_DIR)
    assert files.strag.name == "strag.safetensors" and files.vism_base.name == "vism.safetensors"
    spec = json.loads((NANO_DIR / "demo.json").read_text())
    assert spec["settings"]["camera"] == ["orbit_left", "dolly_in"]
    assert main(["demo", "--out", str(tmp_path), "--steps", "2"]) == 0
    for cam in spec["settings"]["camera"]:
        for kind in ("render", "holes", "inpainted"):
            assert (tmp_path / f"{kind}_{cam}.mp4").is_file()
    assert len(list((tmp_path / "ply").glob("*.ply"))) == spec["settings"]["frames"]
    sheet = np.asarray(Image.open(tmp_path / "contact_sheet.png"))
    assert sheet.shape == (2 * 3 * 64, 4 * 96, 3)
    assert "trajectories (4D-STraG)" in capsys.readouterr().out
