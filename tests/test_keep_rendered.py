"""keep_rendered (issue 21 item 4): the render composited back over the inpainted frames wherever a point landed,
feathered at hole edges. The feather weight is checked against a brute-force distance written here; the pipeline
keeps the render exactly away from holes, changes nothing inside them, and compat mode turns it off."""
import pytest
import torch

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.pipeline import run as run_mod
from moge4d_core.pipeline.inpaint import inpaint, keep_weight
from moge4d_core.pipeline.settings import SamplerSettings
from test_pipeline import _run, _text, models  # noqa: F401  (tiny models in the official layouts)

torch.set_num_threads(1)


def reference_weight(holes: torch.Tensor, width: int) -> torch.Tensor:
    """Brute force: d(p) = min over hole pixels q of the dilation count that reaches p from q when dilations alternate
    a 3x3 square and a 3x3 cross: the least k with max(|dx|,|dy|) <= k and |dx|+|dy| <= k + ceil(k/2)."""
    H, W = holes.shape
    out = torch.ones(H, W, dtype=torch.float64)
    hole_px = [(int(r), int(c)) for r, c in torch.nonzero(holes > 0.5)]
    for r in range(H):
        for c in range(W):
            best = width + 1
            for hr, hc in hole_px:
                dy, dx = abs(r - hr), abs(c - hc)
                k = max(dx, dy)
                while dx + dy > k + (k + 1) // 2:
                    k += 1
                best = min(best, k)
            out[r, c] = best / (width + 1)
    return out


@pytest.mark.parametrize("width", [0, 1, 2, 3, 5])
def test_keep_weight_matches_the_brute_force_distance(width):
    g = torch.Generator().manual_seed(width)
    holes = (torch.rand(2, 13, 17, generator=g) > 0.93).float()
    holes[1] = 0                                                   # a frame without holes: all kept
    w = keep_weight(holes, width)
    assert w.shape == holes.shape and w.dtype == torch.float32
    assert torch.allclose(w[0].double(), reference_weight(holes[0], width), atol=1e-6)
    assert torch.equal(w[1], torch.ones(13, 17))
    assert torch.equal(w[0][holes[0] > 0], torch.zeros(int(holes[0].sum())))


def test_keep_weight_refuses_a_bad_width():
    for bad in (-1, 1.5, True):
        with pytest.raises(MoGe4DInputError, match="keep_rendered"):
            keep_weight(torch.zeros(1, 4, 4), bad)


def test_pipeline_keeps_the_render_where_points_landed_and_nothing_else(models):  # noqa: F811
    off = _run(models)
    on = _run(models, keep_rendered=2)
    v_off, v_on = off.views[0], on.views[0]
    assert torch.equal(v_off.render.rgb, v_on.render.rgb)
    w = keep_weight(v_on.render.holes, 2)
    full, hole = w == 1, v_on.render.holes > 0.5
    assert int(full.sum()) > 0 and int(hole.sum()) > 0
    assert torch.equal(v_on.frames[full], v_on.render.rgb[full].clamp(0, 1))     # the render, exactly
    assert torch.equal(v_on.frames[hole], v_off.frames[hole])                     # generated, untouched
    ramp = ~full & ~hole
    expect = w[ramp][:, None] * v_on.render.rgb[ramp] + (1 - w[ramp][:, None]) * v_off.frames[ramp]
    assert torch.allclose(v_on.frames[ramp], expect, atol=1e-6)


def test_compat_regenerates_every_pixel(models, monkeypatch):  # noqa: F811
    fast = (SamplerSettings(steps=1, cfg=2.0, seed=3), SamplerSettings(steps=1, cfg=2.0, seed=4))
    monkeypatch.setattr(run_mod, "compat_settings", lambda seed: fast)
    off = _run(models, compat=True)
    on = _run(models, compat=True, keep_rendered=3)
    assert torch.equal(off.views[0].frames, on.views[0].frames)
    assert not torch.equal(_run(models, keep_rendered=3).views[0].frames, _run(models).views[0].frames)


def test_inpaint_checks_the_width_before_sampling(models):  # noqa: F811
    with pytest.raises(MoGe4DInputError, match="keep_rendered"):
        inpaint(models["vism"], models["image_vae"], torch.rand(5, 16, 16, 3), torch.zeros(5, 16, 16), _text(),
                settings=SamplerSettings(steps=1), keep_rendered=-2)
