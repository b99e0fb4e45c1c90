"""The nano demo's test image: a held-out synthetic scene drawn like the nano training set, written as the files
``python -m moge4d_core demo`` reads from ``moge4d_core/nano_model/``.

* ``demo_input.png``  the first frame (H,W,3) 8-bit RGB;
* ``demo_depth.npy``  its metric z-depth (H,W) float32 (OpenCV camera, metres along the optical axis);
* ``demo.json``       the horizontal field of view (degrees), the generator call that made the scene, its caption
  and the demo's settings (frames, size, sampler, camera presets).

The scene comes from a seed outside the training (100) and evaluation (7) streams, with the training set's
generator options (:data:`SCENE`), so the demo shows the world the nano model learned.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from .data import NANO_SCENES, nano_sample

__all__ = ["SCENE", "SETTINGS", "write_demo_assets"]

SCENE = dict(index=0, seed=3)
SETTINGS = dict(frames=17, width=96, height=64, steps=20, cfg=1.0, shift=5.0, camera=["orbit_left", "dolly_in"])


def write_demo_assets(folder: Path) -> list[Path]:
    """Write the three demo files into ``folder`` (the installer passes a temporary folder, see
    :func:`training.nano.train_nano.install`); returns their paths."""
    folder = Path(folder)
    s = nano_sample(SCENE["index"], seed=SCENE["seed"])
    h, w = s.height, s.width
    image = np.clip(np.rint(s.colors.reshape(h, w, 3)), 0, 255).astype(np.uint8)
    depth = s.coords[0, :, 2].reshape(h, w).astype(np.float32)
    call = ", ".join([str(SCENE["index"]), f"seed={SCENE['seed']}"] + [f"{k}={v!r}" for k, v in NANO_SCENES.items()])
    spec = {"image": "demo_input.png", "depth": "demo_depth.npy", "fov_deg": round(float(s.meta["fov_x_deg"]), 4),
            "source": f"training.datasets.synthetic.make_synthetic_sample({call})", "caption": s.caption,
            "settings": SETTINGS}
    paths = [folder / "demo_input.png", folder / "demo_depth.npy", folder / "demo.json"]
    Image.fromarray(image).save(paths[0], format="PNG")
    np.save(paths[1], depth)
    paths[2].write_text(json.dumps(spec, indent=2) + "\n")
    return paths
