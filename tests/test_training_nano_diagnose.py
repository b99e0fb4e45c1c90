"""The nano diagnostics (`python -m training.nano.diagnose`): the motion gain tells carried from collapsed motion,
the motion VAE round trip is scored as by hand, and the 8x8 block floor is exact at stride 1."""
import pytest
import torch

from pipeline_models import write_tiny_models
from training.nano.data import ColourCodedObjects, write_nano_dataset

torch.set_num_threads(1)


def test_motion_gain_tells_carried_from_collapsed_motion():
    from training.nano.diagnose import motion_gain
    true = torch.zeros(3, 4, 5, 3)
    true[1:, 1:3, 2:4] = torch.tensor([0.1, -0.05, 0.02])
    assert abs(motion_gain(true.clone(), true) - 1.0) < 1e-12
    assert abs(motion_gain(0.5 * true, true) - 0.5) < 1e-12
    static_noise = torch.where(true.abs().sum(-1, keepdim=True) > 0, torch.zeros_like(true), torch.full_like(true, 0.3))
    assert motion_gain(static_noise, true) == 0.0          # errors off the moving points do not count
    assert motion_gain(true, torch.zeros_like(true)) != motion_gain(true, torch.zeros_like(true))   # nan


def test_channel_gain_finds_a_dropped_channel():
    from training.nano.diagnose import MotionCodecReport, channel_gain_terms, motion_gain
    true = torch.zeros(3, 4, 5, 3)
    true[1:, 1:3, 2:4] = torch.tensor([0.9, -0.05, 0.3])
    only_x = true.clone()
    only_x[..., 1:] = 0                                    # a decoder that carries x and drops y and z
    assert motion_gain(only_x, true) > 0.85                # the pooled gain hides it ...
    rep = MotionCodecReport(channel_terms=[channel_gain_terms(only_x, true), channel_gain_terms(true * 0.5, true)],
                     model_error=[1.0], baseline_error=[1.0], ids=["a"])
    num, den = torch.stack(rep.channel_terms).sum(0)
    torch.testing.assert_close(num / den, torch.tensor([0.75, 0.25, 0.25], dtype=torch.float64))
    assert "x / y / z (pooled over the samples): 0.750 / 0.250 / 0.250" in rep.summary()   # ... this does not


def test_roundtrip_cli_scores_the_motion_vae_by_hand(tmp_path, capsys):
    from moge4d_core.geometry.normalization import apply_motion
    from moge4d_core.loading.motion_vae import load_motion_vae
    from moge4d_core.pipeline.model_dir import find_model_files
    from training.datasets.trajscene import TrajSceneDataset
    from training.nano.diagnose import main as cli, motion_vae_roundtrip
    from training.eval.metrics import trajectory_error
    write_tiny_models(tmp_path / "models")
    write_nano_dataset(tmp_path / "data", 1, height=16, width=16, frames=5, seed=9, motion_scale=1.0,
                       objects=ColourCodedObjects())
    rt = motion_vae_roundtrip(tmp_path / "models", tmp_path / "data", count=1, frames=5)
    s = TrajSceneDataset(tmp_path / "data", frames=5, crop=None, grid=(16, 16))[0]
    mvae = load_motion_vae(find_model_files(tmp_path / "models").motion_vae)
    with torch.no_grad():
        dec = mvae.decode(mvae.encode(s.delta_hat.permute(3, 0, 1, 2)[None]))[0].permute(1, 2, 3, 0)
    dec[0] = 0
    pred = apply_motion(dec, s.first_frame_points, s.spec).reshape(5, -1, 3)
    want = trajectory_error(pred, s.points.reshape(5, -1, 3), s.visibility.reshape(5, -1))
    assert abs(rt.model_error[0] - want) < 1e-9 and rt.baseline_error[0] > 0
    assert cli(["roundtrip", "--models", str(tmp_path / "models"), "--data", str(tmp_path / "data"), "--count", "1",
                "--frames", "5"]) == 0
    out = capsys.readouterr().out
    assert "motion gain" in out and "motion gain per channel x / y / z" in out


def test_block_floor_is_exact_at_stride_1_and_loses_motion_at_stride_8(tmp_path, capsys):
    from training.nano.diagnose import block_average_floor, main as cli
    write_nano_dataset(tmp_path / "data", 2, height=16, width=24, frames=5, seed=9, motion_scale=4.0,
                       objects=ColourCodedObjects(object_scale=2.0))
    exact = block_average_floor(tmp_path / "data", factor=1, count=2, frames=5)
    coarse = block_average_floor(tmp_path / "data", factor=8, count=2, frames=5)
    assert max(exact.model_error) < 1e-4 and all(abs(g - 1) < 1e-4 for g in exact.gain)
    assert min(exact.baseline_error) > 0.1
    assert exact.baseline_error == coarse.baseline_error
    assert all(c > 10 * e for c, e in zip(coarse.model_error, exact.model_error))
    assert all(g < 1 for g in coarse.gain)
    assert cli(["block-floor", "--data", str(tmp_path / "data"), "--count", "2", "--frames", "5"]) == 0
    assert "8x8 block-average latent" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli(["roundtrip", "--data", str(tmp_path / "data")])         # the round trip needs the model folder
    assert "--models" in capsys.readouterr().err
