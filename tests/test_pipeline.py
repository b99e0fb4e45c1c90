"""End-to-end MoGe4D pipeline on tiny models in the official file layouts (tests/pipeline_models.py), plus the
stage contracts: conditioning recipes, de-normalisation, bad input and cancel."""
import math

import pytest
import torch

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.geometry.normalization import normalize_motion, official_spec
from moge4d_core.geometry.sources import geometry_from_depth
from moge4d_core.loading.lora import merge_lora
from moge4d_core.loading.motion_vae import load_motion_vae, load_wan_vae
from moge4d_core.loading.omnimae import load_omnimae
from moge4d_core.loading.unidepth import load_unidepth
from moge4d_core.loading.wan_dit import load_strag, load_vism_base
from moge4d_core.models.conditioning import TextContext
from moge4d_core.pipeline import WanImageVAE, control_video, depth_video, encode_vism_conditions, gray_image
from moge4d_core.pipeline.inpaint import inpaint
from moge4d_core.pipeline.run import run_pipeline
from moge4d_core.pipeline.settings import COMPAT_TRAJECTORY, SamplerSettings, compat_settings
from moge4d_core.pipeline.trajectory import TrajectoryOptions, denormalize, generate_motion
from moge4d_core.sampling import flow_sigmas
from moge4d_core.types import Motion
from pipeline_models import write_tiny_models

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    p = write_tiny_models(tmp_path_factory.mktemp("models"))
    strag = load_strag(p["strag"], dtype=torch.float32)
    mvae = load_motion_vae(p["motion_vae"])
    vae = load_wan_vae(p["wan_vae"])
    vism = load_vism_base(p["vism_base"], dtype=torch.float32)
    merge_lora(vism, p["vism_lora"], 0.55)
    unidepth = load_unidepth(p["unidepth"])
    omni = load_omnimae(p["strag"])
    return dict(strag=strag, motion_vae=mvae, image_vae=WanImageVAE(vae), vism=vism, unidepth=unidepth, omnimae=omni,
                paths=p)


def _text(seed=0, width=16, tokens=7):
    return TextContext.from_embeddings(torch.randn(1, tokens, width, generator=torch.Generator().manual_seed(seed)))


IMAGE = torch.rand(16, 16, 3, generator=torch.Generator().manual_seed(5))


def _run(models, seed=3, progress=None, **kw):
    m = {k: v for k, v in models.items() if k != "paths"}
    return run_pipeline(image=IMAGE, positive=_text(), negative=_text(1), cameras=["orbit_left"],
                        trajectory_settings=SamplerSettings(steps=2, cfg=2.0, seed=seed),
                        inpaint_settings=SamplerSettings(steps=2, cfg=2.0, seed=seed + 1),
                        options=TrajectoryOptions(frames=5), size=(16, 16), progress=progress, **m, **kw)


def test_end_to_end_16px_5_frames(models):
    calls = []
    res = _run(models, progress=lambda stage, d, t: calls.append((stage, d, t)))
    g = res.geometry
    assert (g.height, g.width) == (16, 16) and g.depth.dtype == torch.float32 and bool((g.depth[g.valid] > 0).all())
    d = res.motion.delta
    assert d.shape == (5, 16, 16, 3) and d.dtype == torch.float32 and bool(torch.isfinite(d).all())
    assert bool((d[0] == 0).all()) and float(d[1:].abs().max()) > 0
    tr = res.trajectories
    assert tr.points.shape == (5, 256, 3) and tr.colors.shape == (256, 3) and tr.visibility.shape == (5, 256)
    assert torch.equal(tr.points[0], g.points.reshape(-1, 3))          # frame 0 is the first-frame cloud exactly
    assert torch.allclose(tr.colors, IMAGE.reshape(-1, 3))
    (view,) = res.views
    r = view.render
    assert r.rgb.shape == (5, 16, 16, 3) and r.holes.shape == (5, 16, 16)
    assert float(r.rgb.min()) >= 0 and float(r.rgb.max()) <= 1 and set(r.holes.unique().tolist()) <= {0.0, 1.0}
    f = view.frames
    assert f.shape == (5, 16, 16, 3) and f.dtype == torch.float32
    assert float(f.min()) >= 0 and float(f.max()) <= 1 and float(f.std()) > 0
    assert [c for c in calls if c[0] == "trajectories"] == [("trajectories", 1, 2), ("trajectories", 2, 2)]
    assert [c[1:] for c in calls if c[0].startswith("inpaint")] == [(1, 2), (2, 2)]
    assert [row[0] for row in res.times.rows] == ["depth (UniDepthV2)", "motion features (OmniMAE)",
                                                  "trajectories (4D-STraG)", "de-normalise", "render orbit_left",
                                                  "inpaint orbit_left (4D-ViSM)"]


def test_seeds_reproduce_and_differ(models):
    a, b, c = _run(models, seed=3), _run(models, seed=3), _run(models, seed=4)
    assert torch.equal(a.motion.delta, b.motion.delta) and torch.equal(a.views[0].frames, b.views[0].frames)
    assert not torch.equal(a.motion.delta, c.motion.delta)


def test_denormalize_inverts_normalisation_on_random_data():
    g = torch.Generator().manual_seed(0)
    depth = torch.rand(16, 32, generator=g) * 5 + 0.5
    geom = geometry_from_depth(torch.rand(16, 32, 3, generator=g), depth[..., None].expand(16, 32, 3), 60.0)
    pts = geom.points[None] + torch.randn(9, 16, 32, 3, generator=g, dtype=torch.float64).float() * 0.3
    pts[0] = geom.points
    spec = official_spec(16, 32)
    delta = normalize_motion(pts.double(), spec).float()
    back = denormalize(Motion(delta=delta, norm=spec, geometry=geom)).points.reshape(9, 16, 32, 3)
    assert torch.allclose(back.double(), pts.double(), atol=1e-6 * float(pts.abs().max()), rtol=0)
    # and the hand formula for one point: dX = dx_hat*z0/fx, dY = dy_hat*z0/fy, dZ = dz_hat*z0
    i, j, t = 3, 7, 5
    z0 = float(geom.points[i, j, 2])
    want = geom.points[i, j].double() + torch.tensor([delta[t, i, j, 0] * z0 / spec.fx, delta[t, i, j, 1] * z0 / spec.fy,
                                                      delta[t, i, j, 2] * z0], dtype=torch.float64)
    assert torch.allclose(back[t, i, j].double(), want, atol=1e-5)


def test_condition_videos_follow_the_release_recipe():
    z = torch.tensor([[2.0, float("nan")], [0.0, 4.0]])
    v = depth_video(z, 5)
    assert v.shape == (1, 3, 5, 2, 2)
    # invalid -> 1, then min-max: values {2, 1, 1, 4} -> 2(z-1)/(3+1e-8)-1
    want = torch.tensor([[2.0, 1.0], [1.0, 4.0]])
    want = 2 * (want - 1) / (3 + 1e-8) - 1
    assert torch.allclose(v[0, 1, 3], want) and torch.equal(v[0, 0], v[0, 2])
    img = torch.rand(4, 6, 3)
    c = control_video(img, 9)
    assert c.shape == (1, 3, 9, 4, 6) and torch.allclose(c[0, :, 8].permute(1, 2, 0), img * 2 - 1)
    assert torch.allclose(gray_image(2, 3), torch.full((2, 3, 3), 127 / 255))


def test_vism_all_holes_skips_the_vae(models):
    render = torch.rand(5, 16, 16, 3)
    c = encode_vism_conditions(models["image_vae"], render, torch.ones(5, 16, 16))
    assert c.mask.abs().sum() == 0 and c.masked_video.abs().sum() == 0 and c.masked_video.shape == (1, 16, 2, 2, 2)
    c2 = encode_vism_conditions(models["image_vae"], render, torch.zeros(5, 16, 16))
    assert torch.allclose(c2.mask, torch.ones_like(c2.mask)) and c2.masked_video.abs().sum() > 0


def test_compat_settings_are_the_release_schedule():
    traj, inp = compat_settings(7)
    assert (traj.steps, traj.cfg, traj.shift, traj.solver, traj.seed, inp.seed) == (50, 6.0, 5.0, "euler", 7, 8)
    from diffusers import FlowMatchEulerDiscreteScheduler
    sch = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=5.0)
    sch.set_timesteps(50)
    assert torch.allclose(COMPAT_TRAJECTORY.sigmas(), sch.sigmas.float(), atol=1e-6)


# ------------------------------------------------------------------------------------------------ bad input
def _geom(h=16, w=16):
    return geometry_from_depth(IMAGE if (h, w) == (16, 16) else torch.rand(h, w, 3), torch.full((h, w, 3), 2.0), 60.0)


def test_text_from_another_encoder_is_refused(models):
    import copy

    reading = copy.deepcopy(models["strag"])            # the tiny STraG with a text path (non-zero input weights)
    torch.nn.init.normal_(reading.condition_embedder.text_embedder.linear_1.weight, std=0.02)
    run = dict(settings=SamplerSettings(steps=1), options=TrajectoryOptions(frames=5))
    with pytest.raises(MoGe4DInputError, match="umT5"):
        generate_motion(reading, models["motion_vae"], models["image_vae"], _geom(), _text(width=768), **run)
    # a model trained without text (the tiny files, like the nano model) runs on the zero context whatever it is given
    a = generate_motion(models["strag"], models["motion_vae"], models["image_vae"], _geom(), _text(width=768), **run)
    b = generate_motion(models["strag"], models["motion_vae"], models["image_vae"], _geom(), _text(), **run)
    assert torch.equal(a.delta, b.delta)


def test_frames_must_be_4k_plus_1():
    with pytest.raises(MoGe4DInputError, match="4k\\+1"):
        TrajectoryOptions(frames=6)


def test_image_and_geometry_size_mismatch(models):
    with pytest.raises(MoGe4DInputError, match="multiples of 16"):
        generate_motion(models["strag"], models["motion_vae"], models["image_vae"], _geom(16, 24), _text(),
                        settings=SamplerSettings(steps=1), options=TrajectoryOptions(frames=5))
    m = {k: v for k, v in models.items() if k not in ("paths", "unidepth")}
    with pytest.raises(MoGe4DInputError, match="multiples of 16"):
        run_pipeline(image=IMAGE, geometry=_geom(), positive=_text(), size=(16, 20),
                     options=TrajectoryOptions(frames=5), **m)


def test_render_and_mask_mismatch(models):
    with pytest.raises(MoGe4DInputError, match="does not match the render"):
        inpaint(models["vism"], models["image_vae"], torch.rand(5, 16, 16, 3), torch.zeros(5, 16, 8), _text())


def test_vism_lora_that_does_not_fit_the_base(models, tmp_path):
    from moge4d_core.models.nano import ModelSize, build_vism
    wider = build_vism(ModelSize(dim=32, ffn_dim=48, num_heads=2, num_layers=2, text_dim=16, image_dim=16, freq_dim=16))
    before = {k: v.clone() for k, v in wider.state_dict().items()}
    with pytest.raises(MoGe4DInputError, match="shape"):
        merge_lora(wider, models["paths"]["vism_lora"], 0.55)
    assert all(torch.equal(before[k], v) for k, v in wider.state_dict().items())   # nothing merged half-way


def test_cancel_mid_sampling_leaves_nothing_behind(models):
    class Cancelled(Exception):
        pass

    def cancel(stage, done, total):
        if stage == "trajectories" and done == 1:
            raise Cancelled()

    before = _run(models)
    with pytest.raises(Cancelled):
        _run(models, progress=cancel)
    assert not any(p.grad is not None for p in models["strag"].parameters())
    after = _run(models)
    assert torch.equal(before.motion.delta, after.motion.delta)
    assert torch.equal(before.views[0].frames, after.views[0].frames)
