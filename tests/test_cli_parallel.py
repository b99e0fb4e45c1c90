"""`generate` / `demo --parallel`: one video on two processes (torchrun, gloo on the CPU) writes the scene the
one-process run writes (rank 0 writes; CFG branches on two ranks); without torchrun the flag is refused."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

from moge4d_core.cli import main

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--cfg", "2", "--no-inpaint", "--steps", "3", "--camera", "orbit_left"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_demo_cfg_parallel_on_two_processes_matches_one(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="")
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    one = subprocess.run([sys.executable, "-m", "moge4d_core", "demo", *ARGS, "--out", str(tmp_path / "one")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                          str(_free_port()), "-m", "moge4d_core", "demo", *ARGS, "--parallel", "cfg",
                          "--out", str(tmp_path / "two")], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-2000:]
    assert "rank 1: done; rank 0 writes the outputs" in two.stdout
    a, b = np.load(tmp_path / "one" / "scene.npz"), np.load(tmp_path / "two" / "scene.npz")
    assert a["points"].shape == b["points"].shape
    assert np.abs(a["points"] - b["points"]).max() < 1e-5


def test_parallel_without_torchrun_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert main(["demo", *ARGS, "--parallel", "cfg", "--out", str(tmp_path / "o")]) == 2
    assert "torchrun --nproc-per-node 2" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
