"""generate --lora FILE:STRENGTH, --preset fast, --attention-backend: what reaches the models and the sampler."""
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import moge4d_core.pipeline.run as run_module
from moge4d_core.cli import main
from moge4d_core.errors import MoGe4DInputError
from moge4d_core.loading.lora import merge_lora
from moge4d_core.loading.wan_dit import load_vism_base
from pipeline_models import write_tiny_models

torch.set_num_threads(1)
ARGS = ["--frames", "5", "--width", "16", "--height", "16", "--steps", "2", "--cfg", "2"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("speed")
    paths = write_tiny_models(d / "models")
    Image.fromarray((np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)).save(d / "img.png")
    np.save(d / "depth.npy", np.full((16, 16), 3.0, np.float32))
    base = load_vism_base(paths["vism_base"], dtype=torch.float32, compute_dtype=torch.float32)
    w = base.blocks[0].attn1.to_q.weight
    g = torch.Generator().manual_seed(9)
    a, b = torch.randn(2, w.shape[1], generator=g), torch.randn(w.shape[0], 2, generator=g)
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_A.weight": a,
               "diffusion_model.blocks.0.self_attn.q.lora_B.weight": b}, str(d / "distill.safetensors"))
    merge_lora(base, paths["vism_lora"], 0.55)
    return d, base, a, b


def test_lora_preset_and_backend_reach_the_models(setup, tmp_path, monkeypatch, capsys):
    d, vism_ref, a, b = setup
    seen = {}

    def spy(**kw):
        seen.update(kw)
        raise MoGe4DInputError("spy: stop before sampling")

    monkeypatch.setattr(run_module, "run_pipeline", spy)
    rc = main(["generate", "--image", str(d / "img.png"), "--models", str(d / "models"), "--depth",
               str(d / "depth.npy"), "--fov", "60", "--out", str(tmp_path / "o"), "--lora",
               f"{d / 'distill.safetensors'}:0.5", "--preset", "fast", "--attention-backend", "sage", *ARGS])
    out = capsys.readouterr()
    assert rc == 2 and "spy: stop" in out.err
    inp, traj = seen["inpaint_settings"], seen["trajectory_settings"]
    assert (inp.steps, inp.cfg, inp.shift, inp.seed) == (4, 1.0, 5.0, 1)
    assert (traj.steps, traj.cfg) == (2, 2.0)
    got = seen["vism"].blocks[0].attn1.to_q.weight.detach()
    torch.testing.assert_close(got - vism_ref.blocks[0].attn1.to_q.weight.detach(), 0.5 * b @ a, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(seen["vism"].blocks[1].ffn.net[2].weight, vism_ref.blocks[1].ffn.net[2].weight)
    import importlib.util

    if importlib.util.find_spec("sageattention") is None:
        assert "attention backend 'sage' is not available for the 4D-STraG" in out.out
        assert "attention backend 'sage' is not available for the 4D-ViSM" in out.out


@pytest.mark.parametrize("extra,match", [
    (["--preset", "fast"], "--preset fast: few-step inpainting needs a step-distilled"),
    (["--lora", "missing.safetensors:1"], "--lora missing.safetensors:1: no such file"),
    (["--attention-backend", "flsh"], "unknown attention backend"),
])
def test_speed_options_are_checked_before_models_load(setup, tmp_path, capsys, monkeypatch, extra, match):
    import moge4d_core.pipeline.model_dir as md

    def no_load(*a, **k):
        raise AssertionError("models were loaded")

    monkeypatch.setattr(md, "load_models", no_load)
    d = setup[0]
    rc = main(["generate", "--image", str(d / "img.png"), "--models", str(d / "models"), "--out",
               str(tmp_path / "o"), *ARGS, *extra])
    assert rc == 2 and match in capsys.readouterr().err and not (tmp_path / "o").exists()
