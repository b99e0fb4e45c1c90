"""Compat mode matches the release at any working size: the motion is undone with the constants the released
STraG was trained with (368x512: alpha_x = 1.043478, alpha_y = 1), and preset cameras render with the official
renderer's intrinsics (fx * W, not the back-projection's fx * (W - 1)). Expected numbers are worked out here from
reference sections B and D, not taken from the code under test."""
import math

import pytest
import torch

from moge4d_core.geometry.normalization import official_spec, release_spec
from moge4d_core.geometry.sources import geometry_from_depth
from moge4d_core.pipeline.run import compat_options, run_pipeline
from moge4d_core.pipeline.trajectory import normalization_spec
from test_pipeline import _text, models  # noqa: F401  (module fixture: tiny models in the official layouts)

torch.set_num_threads(1)


def test_release_constants_at_any_size():
    for h, w in ((368, 512), (64, 96), (16, 32), (512, 512)):
        geom = geometry_from_depth(torch.rand(h, w, 3), torch.full((h, w, 3), 2.0), 60.0)
        spec = normalization_spec(geom, "release")
        assert spec.fx == pytest.approx(720 * 512 / (960 * 368)) and spec.fy == 1.0
    # the size-following rule differs away from 368x512 (e.g. the nano model's 64x96: 720*96/(960*64) = 1.125)
    assert official_spec(64, 96).fx == pytest.approx(1.125)
    assert official_spec(368, 512).fx == pytest.approx(release_spec().fx)
    assert compat_options().normalization == "release"


def test_compat_pipeline_at_16x32_uses_release_constants_and_official_render_K(models):  # noqa: F811
    h, w = 16, 32
    image = torch.rand(h, w, 3, generator=torch.Generator().manual_seed(2))
    depth = 1.0 + 3.0 * torch.rand(h, w, generator=torch.Generator().manual_seed(4))
    geom = geometry_from_depth(image, depth[..., None].expand(h, w, 3), 60.0)
    m = {k: v for k, v in models.items() if k not in ("paths", "unidepth", "vism")}
    res = run_pipeline(image=image, geometry=geom, positive=_text(), negative=_text(1), cameras=["static"],
                       options=compat_options(5), compat=True, **m)
    assert res.motion.norm.fx == pytest.approx(1.0434783, rel=1e-6) and res.motion.norm.fy == 1.0

    # Official inference intrinsics (540, 960) at 16x32: W_ori/W = 30 <= H_ori/H = 33.75 -> fx = 540*32/(960*16).
    fx_n, fy_n = 540 * 32 / (960 * 16), 1.0
    K = res.views[0].camera.K[0]
    assert torch.allclose(K, torch.tensor([[fx_n * w, 0, w / 2], [0, fy_n * h, h / 2], [0, 0, 1.0]]))

    # Frame 0 of the static camera: the official renderer hits pixel (floor(v H), floor(u W)) with
    # u = fx X / z + 0.5 for the points back-projected on u = linspace(0, 1, W). Point column j lands at
    # j W / (W - 1): the interior matches the input grid, and the last column / row (u = 1 -> pixel W) falls off
    # the image, where the back-projection's K (fx (W - 1)) would put it on pixel W - 1.
    p0 = res.trajectories.points[0].reshape(h, w, 3).double()
    u = fx_n * p0[..., 0] / p0[..., 2] + 0.5
    v = fy_n * p0[..., 1] / p0[..., 2] + 0.5
    cols, rows = torch.floor(u * w).long(), torch.floor(v * h).long()
    inside = (cols >= 0) & (cols < w) & (rows >= 0) & (rows < h)
    hit = torch.zeros(h, w, dtype=torch.bool)
    hit[rows[inside], cols[inside]] = True
    got = ~res.views[0].render.holes[0].bool()
    # the border points sit exactly on a pixel edge (u W = 0 or W), where float rounding decides: compare inside
    assert torch.equal(got[1:-1, 1:-1], hit[1:-1, 1:-1])
    assert float(got[:, -1].float().mean()) < 0.5 and float(got[-1, :].float().mean()) < 0.5
