"""Two-process STraG training on the CPU (accelerate launch over gloo). DDP: both processes end with identical
weights, the checkpoint holds both RNG states (no pickles), and the export loads with load_strag. FSDP (the shipped
training/configs/fsdp.yaml): sharded for real, gathered optimizer state, bit-identical resume."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from moge4d_core.loading.motion_vae import save_motion_vae
from moge4d_core.loading.wan_dit import load_strag
from moge4d_core.models.wan_dit import STraGDiT, dit_config, hidden_width
from training.engine import weights_digest
from training_helpers import DATA_ARGS, STRAG_CFG, tiny_motion_vae, write_data, write_json

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_processes_end_with_identical_weights(tmp_path):
    data = write_data(tmp_path / "data", 4, seed=1)
    vae = save_motion_vae(tiny_motion_vae(), tmp_path / "mvae.safetensors")
    cfg = write_json(tmp_path / "strag.json", STRAG_CFG)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()),
           "-m", "training.train_strag", "--data", str(data), "--out", str(out), "--motion-vae", str(vae),
           "--init-config", str(cfg), "--max-steps", "3", "--checkpoint-every", "2", "--lr", "1e-3", "--cpu",
           "--report-digest", *DATA_ARGS]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 process(es)" in proc.stderr

    d0 = (out / "logs" / "digest-rank0.txt").read_text()
    d1 = (out / "logs" / "digest-rank1.txt").read_text()
    assert len(d0) == 64 and d0 == d1                         # both replicas hold the same weights

    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["step"] == 3 and state["compat"]["data_order"]["processes"] == 2
    ck = out / "checkpoint-3"
    for rank in (0, 1):                                       # every process's RNG states, JSON + safetensors
        assert (ck / f"rng-{rank}.json").is_file() and (ck / f"rng-{rank}.safetensors").is_file()
    assert not (ck / "accelerate").exists() and not list(ck.rglob("*.pkl")) and not list(ck.rglob("*.bin"))
    assert set(state["files"]) >= {"optimizer.json", "optimizer.safetensors", "scheduler.json", "rng-1.json"}
    assert (out / "checkpoint-2").is_dir()

    model = load_strag(out / "export" / "4D-STraG" / "diffusion_pytorch_model.safetensors", dtype=torch.float32)
    assert hidden_width(model.config) == STRAG_CFG["dim"]
    trained = load_file(str(out / "checkpoint-3" / "trainable.safetensors"))
    own = dict(model.named_parameters())
    assert all(torch.equal(own[k], trained[k]) for k in trained)
    assert weights_digest(trained) == d0                      # the saved weights are the replicas' weights
    records = [json.loads(l) for l in (out / "logs" / "train.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3]


def test_shipped_fsdp_config_trains_checkpoints_and_resumes_on_two_cpu_processes(tmp_path):
    """training/configs/fsdp.yaml as shipped (CPU overrides on the command line): the model is really sharded
    (each process holds half of the parameters), the checkpoint holds the full optimizer state gathered by name
    (no pickles), a resume from it ends bit-identical to the uninterrupted run, and the export loads."""
    data = write_data(tmp_path / "data", 4, seed=1)
    vae = save_motion_vae(tiny_motion_vae(), tmp_path / "mvae.safetensors")
    cfg = write_json(tmp_path / "strag.json", STRAG_CFG)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    env.pop("WORLD_SIZE", None)

    def launch(out, *extra):
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "training/configs/fsdp.yaml",
               "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(_free_port()),
               "-m", "training.train_strag", "--data", str(data), "--out", str(out), "--motion-vae", str(vae),
               "--init-config", str(cfg), "--max-steps", "3", "--checkpoint-every", "2", "--lr", "1e-3", "--cpu",
               *DATA_ARGS, *extra]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc

    a = launch(tmp_path / "a")
    full = sum(p.numel() for p in STraGDiT(**dit_config(STRAG_CFG)).parameters())
    assert f"{(full + 1) // 2:,} trainable parameters" in a.stderr      # FSDP: this process's shard, not DDP
    ck = tmp_path / "a" / "checkpoint-2"
    state = json.loads((ck / "trainer_state.json").read_text())
    assert state["optimizer_layout"] == "by_name" and not list(ck.rglob("*.pkl")) and not (ck / "accelerate").exists()
    opt = json.loads((ck / "optimizer.json").read_text())["tree"]["state"]
    assert "proj_out.weight" in opt and len(opt) == len(load_file(str(ck / "trainable.safetensors")))

    b = launch(tmp_path / "b", "--resume", str(ck))
    assert f"resumed from {ck} at step 2" in b.stderr
    sa, sb = (json.loads((tmp_path / r / "checkpoint-3" / "trainer_state.json").read_text()) for r in "ab")
    assert sa["losses"] == sb["losses"] and len(sa["losses"]) == 3
    wa, wb = (load_file(str(tmp_path / r / "checkpoint-3" / "trainable.safetensors")) for r in "ab")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    model = load_strag(tmp_path / "a" / "export" / "4D-STraG" / "diffusion_pytorch_model.safetensors",
                             dtype=torch.float32)
    assert all(torch.equal(p, wa[n]) for n, p in model.named_parameters())
