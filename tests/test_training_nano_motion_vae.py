"""The nano recipe's motion VAE task (training.nano.motion_vae): its reconstruction term is the squared error of the
de-normalised motion in metres, it trains, and the recipe's two motion VAE stages use it."""
import numpy as np
import pytest
import torch

from moge4d_core.geometry.normalization import denormalize_motion, motion_scale, official_spec
from moge4d_core.loading.motion_vae import save_motion_vae
from training.engine import run
from training.nano.motion_vae import MetricMotionVaeTask, MetricVaeBatch, metric_l2
from training.options import coerce_options
from training.train_vae import MotionVaeOptions
from training_helpers import DATA_ARGS, T, tiny_motion_vae, write_data

torch.set_num_threads(1)


def test_metric_l2_is_the_squared_error_of_the_denormalised_motion():
    g = torch.Generator().manual_seed(3)
    target, recon = torch.randn(2, 3, T, 4, 6, generator=g), torch.randn(2, 3, T, 4, 6, generator=g)
    points0 = torch.rand(2, 4, 6, 3, generator=g) * 5 + 1
    spec = official_spec(4, 6)
    ones = torch.ones(1, 4, 6, 3)
    scale = torch.stack([denormalize_motion(ones, p, spec)[0] for p in points0]).permute(0, 3, 1, 2)[:, :, None]
    metres = lambda d, p: denormalize_motion(d.permute(1, 2, 3, 0), p, spec)  # noqa: E731  (T,H,W,3)
    want = sum(float((metres(recon[i], points0[i]) - metres(target[i], points0[i])).double().square().sum())
               for i in range(2)) / 2
    assert metric_l2(recon, target, scale).item() == pytest.approx(want, rel=1e-5)
    # far points cost more than near ones for the same normalised error
    assert metric_l2(recon, target, scale * 3).item() == pytest.approx(9 * metric_l2(recon, target, scale).item(),
                                                                      rel=1e-5)


def test_metric_task_batches_carry_the_scale_and_the_loss_falls(tmp_path):
    data = write_data(tmp_path / "one", 1, seed=3)
    mvae = save_motion_vae(tiny_motion_vae(seed=7), tmp_path / "mvae.safetensors")
    argv = ["--data", str(data), "--out", str(tmp_path / "run"), *DATA_ARGS, "--model", str(mvae),
            "--max-steps", "12", "--lr", "1e-3", "--checkpoint-every", "0"]
    task = MetricMotionVaeTask(coerce_options(MotionVaeOptions, argv))
    s = task.datasets()[0][0]
    batch = task.collate([s])
    assert isinstance(batch, MetricVaeBatch) and batch.metric_scale.shape == (1, 3, 1, *s.delta_hat.shape[1:3])
    torch.testing.assert_close(batch.metric_scale[0, :, 0], motion_scale(s.first_frame_points, s.spec).permute(2, 0, 1))
    r = run(task)
    assert np.all(np.isfinite(r.losses)) and np.mean(r.losses[-4:]) < np.mean(r.losses[:4]), r.losses


@pytest.mark.parametrize("stage", ["motion_vae", "motion_decoder"])
def test_the_recipe_trains_its_motion_vae_stages_in_metres(tmp_path, stage):
    from training.nano.train_nano import stage_task

    task = stage_task(stage, "DATA", tmp_path)
    assert type(task) is MetricMotionVaeTask
    assert not task.o.train_encoder_adapter and task.o.traj_norm == (stage == "motion_decoder")
