"""The nano recipe's trajectory-space loss (training.nano.trajectory_loss, ``--trajectory-loss`` of its STraG task): it is
the evaluation's eq. 7 in metres, differentiable, and it adds to the flow loss without changing the flow draws."""
import json

import numpy as np
import torch

from moge4d_core.geometry.normalization import NormalizationSpec, apply_motion
from moge4d_core.loading.motion_vae import save_motion_vae
from training.eval.metrics import trajectory_error
from training.engine import run
from training.nano.trajectory_loss import TrajectoryStragOptions, TrajectoryStragTask, trajectory_loss
from training.options import coerce_options
from training.train_strag import train
from training_helpers import DATA_ARGS, STRAG_CFG, tiny_motion_vae, write_data, write_json

torch.set_num_threads(1)


def _scene(seed, b=2, t=5, h=4, w=6):
    g = torch.Generator().manual_seed(seed)
    p0 = torch.randn(b, h, w, 3, generator=g)
    p0[..., 2] = 2 + 6 * torch.rand(b, h, w, generator=g)                       # depth 2..8 m
    points = p0[:, None] + torch.randn(b, t, h, w, 3, generator=g)
    points[:, 0] = p0
    vis = torch.rand(b, t, h, w, generator=g) > 0.3
    specs = [NormalizationSpec(fx=0.8 + 0.1 * i, fy=1.1, mode="real_k") for i in range(b)]
    return p0, points, vis, specs


def test_trajectory_loss_is_the_eval_metric_of_the_denormalised_points():
    p0, points, vis, specs = _scene(0)
    delta = torch.randn(points.shape, generator=torch.Generator().manual_seed(1), requires_grad=True)
    loss = trajectory_loss(delta, points, p0, specs, vis)
    pred = torch.stack([apply_motion(delta[i].detach(), p0[i], s) for i, s in enumerate(specs)])     # (B,T,H,W,3)
    b, t = points.shape[:2]
    flat = lambda x: x.transpose(0, 1).reshape(t, b * x.shape[2] * x.shape[3], *x.shape[4:])  # noqa: E731
    want = trajectory_error(flat(pred), flat(points), flat(vis))
    assert abs(float(loss.detach()) - want) < 1e-5 * want
    unmasked = float(trajectory_loss(delta, points, p0, specs).detach())
    assert abs(unmasked - trajectory_error(flat(pred), flat(points))) < 1e-4
    loss.backward()
    assert torch.isfinite(delta.grad).all() and float(delta.grad[:, 1:].abs().sum()) > 0
    assert float(delta.grad[:, 0].abs().sum()) == 0                         # frame 0 is given, never scored


def test_trajectory_loss_is_zero_for_the_true_motion():
    p0, points, vis, specs = _scene(2)
    scale = torch.stack([torch.stack([p0[i, ..., 2] / s.fx, p0[i, ..., 2] / s.fy, p0[i, ..., 2]], -1)
                         for i, s in enumerate(specs)])
    true = (points - p0[:, None]) / scale[:, None]
    assert float(trajectory_loss(true, points, p0, specs, vis)) < 1e-5
    assert float(trajectory_loss(true + 0.1, points, p0, specs, vis)) > 0.1


def test_strag_trainer_adds_the_trajectory_term_to_the_same_flow_draws(tmp_path):
    data = write_data(tmp_path / "data", 2, seed=0)
    vae = save_motion_vae(tiny_motion_vae(), tmp_path / "mvae.safetensors")
    cfg = write_json(tmp_path / "strag.json", STRAG_CFG)
    common = ["--data", str(data), "--motion-vae", str(vae), *DATA_ARGS, "--init-config", str(cfg),
              "--max-steps", "3", "--lr", "1e-3", "--checkpoint-every", "0", "--log-every", "1"]
    plain = train([*common, "--out", str(tmp_path / "plain")])
    weighted = run(TrajectoryStragTask(coerce_options(TrajectoryStragOptions, [*common, "--out", str(tmp_path / "traj"),
                                                                         "--trajectory-loss", "2.0"])))
    recs = [json.loads(l) for l in (tmp_path / "traj/logs/train.jsonl").read_text().splitlines()]
    recs = [r for r in recs if r["kind"] == "train"]
    assert len(recs) == 3 and all(r["trajectory"] > 0 for r in recs)
    for r, total in zip(recs, weighted.losses):
        assert np.isclose(total, r["flow"] + 2.0 * r["trajectory"], rtol=1e-5)
    assert np.isclose(recs[0]["flow"], plain.losses[0], rtol=1e-6)          # same model, same draws at step 1
    assert not np.isclose(recs[1]["flow"], plain.losses[1], rtol=1e-6)      # the extra term changed the update


def test_the_recipe_fine_tunes_with_the_trajectory_loss_and_trains_the_first_strag_without(tmp_path):
    from training.nano.cached import CachedStragTask
    from training.nano.train_nano import TRAJECTORY_WEIGHT, stage_task

    tune, first = stage_task("strag_tune", "DATA", tmp_path), stage_task("strag", "DATA", tmp_path)
    assert isinstance(tune, TrajectoryStragTask) and isinstance(tune, CachedStragTask)
    assert tune.o.trajectory_loss == TRAJECTORY_WEIGHT > 0 and first.o.trajectory_loss == 0
