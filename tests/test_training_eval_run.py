"""`python -m training.eval` on tiny models and synthetic held-out scenes: scores are computed and consistent."""
import torch

from pipeline_models import write_tiny_models
from training.datasets.synthetic import write_synthetic_dataset
from training.eval.evaluate import evaluate

torch.set_num_threads(1)


def test_eval_reports_model_and_baseline(tmp_path, capsys):
    write_tiny_models(tmp_path / "models")
    write_synthetic_dataset(tmp_path / "data", 2, height=16, width=16, frames=5, seed=9, motion_rule="by_colour",
                            novel_view="source")
    rep = evaluate(tmp_path / "models", tmp_path / "data", count=2, steps=2, frames=5)
    assert len(rep.ids) == 2 and len(rep.model_error) == 2 and len(rep.psnr) == 2
    assert all(b > 0 for b in rep.baseline_error)           # the scenes move
    assert all(e > 0 and e == e for e in rep.model_error)
    assert "zero-motion baseline" in rep.summary()


def test_eval_cli_error_on_missing_data(tmp_path, capsys):
    from training.eval.evaluate import main as cli
    write_tiny_models(tmp_path / "models")
    assert cli(["--models", str(tmp_path / "models"), "--data", str(tmp_path / "nothing")]) == 2
    assert "not found" in capsys.readouterr().err
