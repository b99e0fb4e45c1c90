"""`python -m training.eval` on tiny models and synthetic held-out scenes: scores are computed and consistent."""
import pytest
import torch

from pipeline_models import write_tiny_models
from training.nano.data import ColourCodedObjects, write_nano_dataset
from training.eval.evaluate import evaluate, main as cli

torch.set_num_threads(1)


def test_eval_reports_model_and_baseline(tmp_path, capsys):
    write_tiny_models(tmp_path / "models")
    write_nano_dataset(tmp_path / "data", 2, height=16, width=16, frames=5, seed=9, motion_scale=1.0,
                       objects=ColourCodedObjects())
    rep = evaluate(tmp_path / "models", tmp_path / "data", count=2, steps=2, frames=5)
    assert len(rep.ids) == 2 and len(rep.model_error) == 2 and len(rep.psnr) == 2
    assert all(b > 0 for b in rep.baseline_error)           # the scenes move
    assert all(e > 0 and e == e for e in rep.model_error)
    assert "zero-motion baseline" in rep.summary()
    with pytest.raises(SystemExit):
        cli(["--data", str(tmp_path / "data")])                    # the model folder is required


def test_eval_cli_error_on_missing_data(tmp_path, capsys):
    write_tiny_models(tmp_path / "models")
    assert cli(["--models", str(tmp_path / "models"), "--data", str(tmp_path / "nothing")]) == 2
    assert "not found" in capsys.readouterr().err


def test_axis_error_names_the_wrong_axis():
    from training.eval.evaluate import EvalReport
    from training.eval.metrics import axis_squared_error
    g = torch.Generator().manual_seed(0)
    gt = torch.randn(4, 6, 3, generator=g, dtype=torch.float64)
    vis = torch.rand(4, 6, generator=g) > 0.3
    vis[1, 0] = True
    pred = gt.clone()
    pred[1:, :, 0] += 0.5                                 # right in y and z, 0.5 off in x
    sums, n = axis_squared_error(pred, gt, vis)
    assert n == int(vis[1:].sum())
    torch.testing.assert_close(torch.from_numpy(sums), torch.tensor([0.25 * n, 0.0, 0.0], dtype=torch.float64))
    rep = EvalReport()
    rep.add("a", pred, gt, vis)
    rep.add("b", gt.clone(), gt, None)                    # exact, all 18 pairs visible
    model, base = rep.axis_rms()
    torch.testing.assert_close(torch.from_numpy(model), torch.tensor([(0.25 * n / (n + 18)) ** 0.5, 0, 0],
                                                                    dtype=torch.float64))
    still = (gt[:1] - gt)[1:]                             # the zero-motion baseline's error
    want = torch.sqrt((still[vis[1:]].square().sum(0) + still.reshape(-1, 3).square().sum(0)) / (n + 18))
    torch.testing.assert_close(torch.from_numpy(base), want)
    assert "RMS error per axis x / y / z (model): " + f"{model[0]:.3f} / 0.000 / 0.000" in rep.summary()


def test_eval_keep_rendered_reports_masked_unmasked_and_hole_psnr(tmp_path):
    write_tiny_models(tmp_path / "models")
    write_nano_dataset(tmp_path / "data", 2, height=16, width=16, frames=5, seed=9, motion_scale=1.0,
                       objects=ColourCodedObjects())
    off = evaluate(tmp_path / "models", tmp_path / "data", count=2, steps=1, frames=5)
    on = evaluate(tmp_path / "models", tmp_path / "data", count=2, steps=1, frames=5, keep_rendered=2)
    assert len(on.psnr_all) == 2 and len(off.psnr_all) == 2 and on.psnr_holes
    assert sum(on.psnr) > sum(off.psnr) + 2 * 3.0          # the render's known pixels are kept
    assert on.psnr_holes == off.psnr_holes                 # the holes are generated the same way
    text = on.summary()
    assert "unmasked PSNR on every pixel" in text and "keep_rendered 2" in text and "on the holes" in text
