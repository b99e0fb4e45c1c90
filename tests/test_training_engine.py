"""Shared training machinery: σ grid and loss vs independent formulas, spike guard, data order, accelerate config
check, atomic checkpoints, and the bad-input errors (different architecture on resume, empty dataset)."""
import numpy as np
import pytest
import torch

from moge4d_core.errors import MoGe4DInputError
from training.checkpoint import list_checkpoints
from training.engine import BatchPlan, step_generator
from training.flow import flow_matching_inputs, masked_mse, training_sigmas
from training.launch import check_accelerate_config, check_process_count, main as launch_main
from training.spikes import LossSpikeGuard
from training_helpers import DATA_ARGS, STRAG_CFG, tiny_motion_vae, tree_snapshot, write_data, write_json

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------- objective
def test_training_sigmas_equal_diffusers_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    sch = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=5.0)
    s = training_sigmas(5.0)
    assert s.dtype == torch.float32 and s.shape == (1000,)
    assert torch.equal(s, sch.sigmas)
    assert torch.equal(s * 1000, sch.timesteps)
    # independent float64 formula: 5u/(1+4u), u = k/1000, k = 1000..1
    u = np.arange(1000, 0, -1) / 1000.0
    np.testing.assert_allclose(s.numpy(), 5 * u / (1 + 4 * u), rtol=1e-6)


def test_flow_inputs_and_masked_mse_against_float64():
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(3, 16, 2, 2, 4, generator=g)
    fb = flow_matching_inputs(x0, training_sigmas(), torch.Generator().manual_seed(9))
    sig = training_sigmas().double()[fb.index]
    noise = fb.target.double() + x0.double()                       # target = eps - x0
    np.testing.assert_allclose(fb.sigma.double().numpy(), sig.numpy())
    np.testing.assert_allclose(fb.timestep.double().numpy(), 1000 * sig.numpy(), rtol=1e-6)
    want = (1 - sig.view(3, 1, 1, 1, 1)) * x0.double() + sig.view(3, 1, 1, 1, 1) * noise
    np.testing.assert_allclose(fb.noisy.double().numpy(), want.numpy(), atol=1e-6)
    # same generator seed -> same draw
    fb2 = flow_matching_inputs(x0, training_sigmas(), torch.Generator().manual_seed(9))
    assert torch.equal(fb.noisy, fb2.noisy) and torch.equal(fb.index, fb2.index)

    pred = torch.tensor([[0.0, 1.0, 100.0, -60.0]])
    tgt = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    # elements with |diff| > 50 count as 0, mean over all 4: (1 + 0 + 0 + 0) / 4
    assert masked_mse(pred, tgt).item() == pytest.approx(0.25)
    assert masked_mse(pred, tgt, threshold=1000).item() == pytest.approx((1 + 0 + 10000 + 3600) / 4)


def test_spike_guard_rules_and_state_roundtrip():
    g = LossSpikeGuard(k=3.0, window=10, warmup=5, max_loss=100.0, abs_threshold=0.9, abs_after=20)
    assert g.check(float("nan"), 1)[0] and g.check(float("inf"), 1)[0]
    assert g.check(150.0, 1)[0]                                      # above the ceiling
    for v in [1.0, 1.1, 0.9, 1.0, 1.05]:                            # warm-up: everything finite is kept
        assert not g.check(v, 2)[0]
    vals = np.array([1.0, 1.1, 0.9, 1.0, 1.05])
    thr = vals.mean() + 3 * vals.std()                               # population std, as the release
    assert g.threshold() == pytest.approx(thr)
    assert g.check(thr + 0.01, 3)[0] and not g.check(thr - 0.01, 3)[0]
    assert not g.check(1.0, 20)[0] and g.check(1.0, 21)[0]           # 0.9 ceiling only after step 20
    assert g.skipped == 5
    h = LossSpikeGuard(k=3.0, window=10, warmup=5)
    h.load_state_dict(g.state_dict())
    assert list(h.history) == list(g.history) and h.skipped == g.skipped
    c = LossSpikeGuard(k=6.0, warmup=2)
    c.check(2.0, 1), c.check(2.0, 1)                                 # std 0 -> 10 x mean rule
    assert c.check(20.5, 2)[0] and not c.check(19.5, 2)[0]


def test_batch_plan_order_is_a_function_of_seed_and_epoch():
    ds = list(range(10))
    a0 = BatchPlan(ds, 2, 1, 0, seed=4).epoch_batches(0)
    assert a0 == BatchPlan(ds, 2, 1, 0, seed=4).epoch_batches(0)
    assert a0 != BatchPlan(ds, 2, 1, 0, seed=4).epoch_batches(1)
    assert sorted(i for b in a0 for i in b) == list(range(10))
    r0, r1 = BatchPlan(ds, 1, 2, 0, seed=4), BatchPlan(ds, 1, 2, 1, seed=4)
    got = sorted(i for p in (r0, r1) for b in p.epoch_batches(3) for i in b)
    assert got == list(range(10)) and r0.batches_per_epoch == 5        # two processes split every epoch
    assert BatchPlan(ds, 2, 2, 0, seed=4).batches_per_epoch == 2       # 5 per process -> 2 full batches
    with pytest.raises(MoGe4DInputError, match="fewer than --batch-size"):
        BatchPlan(list(range(3)), 2, 4, 0, seed=0)
    g1, g2 = step_generator(1, 5, 0, 0, "cpu"), step_generator(1, 5, 0, 0, "cpu")
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))
    assert not torch.equal(torch.rand(4, generator=step_generator(1, 5, 0, 1, "cpu")),
                           torch.rand(4, generator=step_generator(1, 5, 0, 0, "cpu")))


# ------------------------------------------------------------------------------------- accelerate config
def test_accelerate_config_process_count_check(tmp_path, monkeypatch):
    gpu = tmp_path / "gpu8.yaml"
    gpu.write_text("distributed_type: MULTI_GPU\nnum_processes: 8\nnum_machines: 1\n")
    with pytest.raises(MoGe4DInputError) as e:
        check_accelerate_config(gpu, cuda_devices=2)
    msg = str(e.value)
    assert str(gpu) in msg and "8 processes" in msg and "num_processes: 2" in msg
    with pytest.raises(MoGe4DInputError, match="no CUDA device"):
        check_accelerate_config(gpu, cuda_devices=0)
    assert check_accelerate_config(gpu, cuda_devices=8)["num_processes"] == 8
    assert check_accelerate_config(gpu, cuda_devices=2, num_processes=2)
    ids = tmp_path / "ids.yaml"
    ids.write_text("distributed_type: MULTI_GPU\nnum_processes: 4\ngpu_ids: 0,1\n")
    with pytest.raises(MoGe4DInputError, match="gpu_ids"):
        check_accelerate_config(ids, cuda_devices=8)
    cpu = tmp_path / "cpu.yaml"
    cpu.write_text("distributed_type: MULTI_CPU\nuse_cpu: true\nnum_processes: 64\n")
    with pytest.raises(MoGe4DInputError, match="64 CPU processes"):
        check_accelerate_config(cpu, cpu_cores=2)
    assert launch_main(["--config", str(gpu), "--dry-run", "strag"]) == (0 if torch.cuda.device_count() >= 8 else 2)
    # inside a launched process
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setattr("training.launch._cuda_count", lambda: 2)
    with pytest.raises(MoGe4DInputError, match="4 processes .* 2 CUDA"):
        check_process_count()
    check_process_count(cpu=True)


def test_shipped_accelerate_configs_parse(tmp_path):
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "training" / "configs"
    names = sorted(p.name for p in folder.glob("*.yaml"))
    assert {"single.yaml", "ddp.yaml", "fsdp.yaml", "zero2.yaml", "zero3.yaml"} <= set(names)
    for name in names:
        cfg = check_accelerate_config(folder / name, cuda_devices=64, cpu_cores=64)
        assert "distributed_type" in cfg


# ------------------------------------------------------------------------------------- runs
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from moge4d_core.loading.motion_vae import save_motion_vae

    root = tmp_path_factory.mktemp("engine")
    data = write_data(root / "data", 2)
    vae = save_motion_vae(tiny_motion_vae(), root / "mvae.safetensors")
    cfg = write_json(root / "strag.json", STRAG_CFG)
    cfg2 = write_json(root / "strag_wide.json", dict(STRAG_CFG, dim=32, ffn_dim=64))
    return root, data, vae, cfg, cfg2


def _args(setup, out, cfg, *extra):
    root, data, vae, _, _ = setup
    return ["--data", str(data), "--out", str(out), "--motion-vae", str(vae), "--init-config", str(cfg),
            "--lr", "1e-3", *DATA_ARGS, *extra]


def test_resume_with_another_architecture_is_refused_and_leaves_checkpoints_intact(setup):
    from training.train_strag import train

    root, _, _, cfg, cfg_wide = setup
    out = root / "arch"
    train(_args(setup, out, cfg, "--max-steps", "2", "--checkpoint-every", "1", "--keep-checkpoints", "5"))
    assert [s for s, _ in list_checkpoints(out)] == [1, 2]
    before = tree_snapshot(out)
    for resume, where in ((str(out / "checkpoint-1"), root / "other"), ("latest", out)):
        with pytest.raises(MoGe4DInputError) as e:
            train(_args(setup, where, cfg_wide, "--max-steps", "3", "--resume", resume))
        msg = str(e.value)
        assert "cannot resume" in msg and "config.attention_head_dim: checkpoint 12 vs this run 16" in msg
        assert "config.ffn_dim" in msg and "checkpoint" in msg
    assert tree_snapshot(out) == before                     # bytes, sizes and mtimes unchanged
    with pytest.raises(MoGe4DInputError, match="not a checkpoint folder"):
        train(_args(setup, root / "other2", cfg, "--resume", str(root)))


def test_interrupted_checkpoint_write_keeps_earlier_checkpoints(setup, monkeypatch):
    import training.checkpoint as ck
    from training.train_strag import train

    root, _, _, cfg, _ = setup
    out = root / "crash"
    real = ck.fsync_tree
    calls, before = [], {}

    def crash_on_second(path):
        calls.append(path)
        if len(calls) == 2:             # checkpoint-2 fully written to its temp folder, not yet renamed
            before.update(tree_snapshot(out / "checkpoint-1"))
            raise OSError("simulated power loss while writing the checkpoint")
        real(path)

    monkeypatch.setattr(ck, "fsync_tree", crash_on_second)
    with pytest.raises(OSError, match="simulated"):
        train(_args(setup, out, cfg, "--max-steps", "4", "--checkpoint-every", "1"))
    assert [s for s, _ in list_checkpoints(out)] == [1]
    assert before and tree_snapshot(out / "checkpoint-1") == before
    assert not (out / ".tmp-checkpoint-2").exists()         # a failed write removes its temp folder
    # a real power loss runs no clean-up: the half-written folder stays until the next checkpoint write
    (out / ".tmp-checkpoint-2").mkdir()
    (out / ".tmp-checkpoint-2" / "optimizer.safetensors").write_bytes(b"half")
    monkeypatch.setattr(ck, "fsync_tree", real)
    r = train(_args(setup, out, cfg, "--max-steps", "4", "--checkpoint-every", "1", "--keep-checkpoints", "2",
                    "--resume", "latest"))
    assert r.resumed_from == out / "checkpoint-1" and r.steps == 4
    assert [s for s, _ in list_checkpoints(out)] == [3, 4]  # keep the last 2
    assert not (out / ".tmp-checkpoint-2").exists()


def test_empty_dataset_and_missing_inputs_are_named(setup, tmp_path):
    from training.train_strag import train

    _, _, vae, cfg, _ = setup
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("nothing here")
    with pytest.raises(MoGe4DInputError, match="no TrajScene samples found"):
        train(["--data", str(empty), "--out", str(tmp_path / "o"), "--motion-vae", str(vae),
               "--init-config", str(cfg), *DATA_ARGS])
    with pytest.raises(MoGe4DInputError, match="--motion-vae is required"):
        train(["--data", str(empty), "--out", str(tmp_path / "o"), "--init-config", str(cfg), *DATA_ARGS])
    with pytest.raises(MoGe4DInputError, match="exactly one of --model, --control-base, --init-config"):
        train(["--data", str(empty), "--out", str(tmp_path / "o"), "--motion-vae", str(vae), *DATA_ARGS])
    from training.engine import make_optimizer
    from training.options import CommonOptions

    params = [{"params": [torch.nn.Parameter(torch.zeros(1))]}]
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        with pytest.raises(MoGe4DInputError, match="bitsandbytes"):
            make_optimizer(params, CommonOptions(adam_8bit=True))
    else:
        assert "8bit" in type(make_optimizer(params, CommonOptions(adam_8bit=True))).__name__
    with pytest.raises(MoGe4DInputError, match="nothing to train"):
        make_optimizer([{"params": [torch.nn.Parameter(torch.zeros(1), requires_grad=False)]}], CommonOptions())
