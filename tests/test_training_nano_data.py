"""The nano model's world (training.nano.data): directions tied to colours, larger objects, and the shipped demo
image is exactly scene 0 of its seed-3 stream."""
import json

import numpy as np
import pytest
from PIL import Image

from moge4d_core.errors import MoGe4DInputError
from training.datasets.synthetic import _COLOUR_NAMES, make_synthetic_sample
from training.nano.data import COLOUR_DIRECTIONS, ColourCodedObjects, nano_sample


def test_by_colour_rule_ties_direction_to_colour():
    for idx in range(3):
        s = make_synthetic_sample(idx, seed=4, height=16, width=24, frames=5, objects=ColourCodedObjects())
        assert s.meta["motion_rule"] == "by_colour"
        for prim in s.meta["objects"]:
            if prim["part"] != 0:
                continue
            name = [n for n, c in _COLOUR_NAMES.items() if np.allclose(c, prim["color"])][0]
            v = np.asarray(prim["motion"]["velocity"])
            d = np.asarray(COLOUR_DIRECTIONS[name])
            if prim["motion"]["kind"] == "nonrigid":
                d = d * 0.4
            cos = v @ d / (np.linalg.norm(v) * np.linalg.norm(d))
            assert cos > 0.999 and 0.8 * np.linalg.norm(d) - 1e-9 <= np.linalg.norm(v) <= np.linalg.norm(d) + 1e-9


def test_object_scale_only_grows_the_objects():
    kw = dict(seed=5, height=16, width=24, frames=5, novel_view="source")
    one = make_synthetic_sample(1, objects=ColourCodedObjects(), **kw)
    big = make_synthetic_sample(1, objects=ColourCodedObjects(object_scale=2.0), **kw)
    assert one.meta["scene"] == big.meta["scene"] and one.caption == big.caption
    for p1, p2 in zip(one.meta["objects"], big.meta["objects"], strict=True):
        assert p1["motion"]["velocity"] == p2["motion"]["velocity"]
        for key in ("radius", "half"):
            if key in p1:
                np.testing.assert_allclose(np.asarray(p2[key]), 2 * np.asarray(p1[key]), rtol=1e-12)
    on_object = lambda s: (np.linalg.norm(s.coords[-1] - s.coords[0], axis=-1) > 1e-6).mean()  # noqa: E731
    assert on_object(big) > on_object(one) > 0
    with pytest.raises(MoGe4DInputError, match="object_scale"):
        ColourCodedObjects(object_scale=0.0)


def test_the_shipped_demo_image_is_scene_0_of_the_nano_world(tmp_path):
    from training.nano.demo_assets import SCENE, write_demo_assets
    from training.nano.train_nano import INSTALL

    shipped = json.loads((INSTALL / "demo.json").read_text())
    s = nano_sample(SCENE["index"], seed=SCENE["seed"])
    assert s.caption == shipped["caption"]
    write_demo_assets(tmp_path)
    for name in ("demo_input.png", "demo_depth.npy"):
        read = (lambda p: np.asarray(Image.open(p))) if name.endswith(".png") else np.load  # noqa: E731
        assert np.array_equal(read(tmp_path / name), read(INSTALL / name)), name
