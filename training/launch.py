"""Checked launcher for the trainers: ``python -m training.launch --config CFG TRAINER [trainer args]``.

It reads the accelerate config (``training/configs/*.yaml``), refuses one that asks for more processes per
machine than this machine has devices (:func:`check_accelerate_config`: CUDA GPUs, or CPU cores for CPU
configs), then runs ``accelerate launch --config_file CFG -m training.train_<TRAINER> ...``. Without the
check, accelerate would start the extra processes and fail later with a CUDA "invalid device ordinal" (or, on a
machine without CUDA, silently fall back to CPU processes).

Example::

    python -m training.launch --config training/configs/ddp.yaml strag -- --data DATA --out runs/strag ...

:func:`check_process_count` makes the same check from inside a launched process (the trainers call it before
creating the ``Accelerator``), using the ``LOCAL_WORLD_SIZE`` / ``WORLD_SIZE`` that the launcher exported.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

from moge4d_core.errors import MoGe4DInputError

__all__ = ["check_accelerate_config", "check_process_count", "main", "TRAINERS"]

TRAINERS = {"strag": "training.train_strag", "vae": "training.train_vae", "pixel_vae": "training.train_pixel_vae",
            "vism": "training.train_vism"}


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_accelerate_config(path: os.PathLike, *, cuda_devices: Optional[int] = None,
                            cpu_cores: Optional[int] = None, num_processes: Optional[int] = None) -> dict:
    """Read an accelerate YAML config and check its process count against this machine.

    ``cuda_devices`` / ``cpu_cores`` default to what this machine has; ``num_processes`` overrides the file's
    value (as ``accelerate launch --num_processes`` does). Returns the parsed config. Raises
    :class:`MoGe4DInputError` naming the file, the numbers and what to change.
    """
    import yaml

    p = Path(path)
    if not p.is_file():
        raise MoGe4DInputError(f"{p}: accelerate config not found (see training/configs/)")
    try:
        cfg = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise MoGe4DInputError(f"{p}: not a readable YAML accelerate config ({exc})") from None
    if not isinstance(cfg, dict):
        raise MoGe4DInputError(f"{p}: expected a mapping of accelerate settings, got {type(cfg).__name__}")
    n = int(num_processes if num_processes is not None else cfg.get("num_processes", 1) or 1)
    machines = max(1, int(cfg.get("num_machines", 1) or 1))
    per_machine = -(-n // machines)
    dist = str(cfg.get("distributed_type", "NO")).upper()
    use_cpu = bool(cfg.get("use_cpu", False)) or dist == "MULTI_CPU"
    if use_cpu:
        have = int(cpu_cores if cpu_cores is not None else (os.cpu_count() or 1))
        if per_machine > have:
            raise MoGe4DInputError(
                f"{p}: asks for {per_machine} CPU processes per machine (num_processes {n}, num_machines {machines}) "
                f"but this machine has {have} CPU cores; set num_processes: {have * machines} or less in {p} "
                f"(or pass --num-processes {have})")
        return cfg
    if dist == "NO" and per_machine <= 1:
        return cfg                      # one process: accelerate runs it on a GPU when there is one, else the CPU
    have = int(cuda_devices if cuda_devices is not None else _cuda_count())
    ids = cfg.get("gpu_ids", "all")
    if ids not in (None, "all", ""):
        listed = [s for s in str(ids).split(",") if s.strip() != ""]
        have = min(have, len(listed))
        where = f"the {len(listed)} GPUs listed in gpu_ids ({ids}) of which this machine has {min(have, len(listed))}"
    else:
        where = f"{have} CUDA device(s) on this machine"
    if per_machine > have:
        if have == 0:
            fix = (f"this machine has no CUDA device: use training/configs/single.yaml with use_cpu: true "
                   f"(or accelerate launch --cpu), or run on a GPU machine")
        else:
            fix = f"set num_processes: {have * machines} in {p} (or pass --num-processes {have})"
        raise MoGe4DInputError(
            f"{p}: asks for {per_machine} processes per machine ({dist}, num_processes {n}, num_machines {machines}) "
            f"but there are only {where}; {fix}")
    return cfg


def check_process_count(cpu: bool = False) -> None:
    """Inside a launched process: refuse more local processes than CUDA devices (when CUDA is used)."""
    local = os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("WORLD_SIZE")
    if not local or cpu or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        return
    n = int(local)
    have = _cuda_count()
    if have and n > have:
        raise MoGe4DInputError(
            f"accelerate launch started {n} processes on this machine but it has {have} CUDA device(s); set "
            f"num_processes: {have} in the accelerate config passed to --config_file (training/configs/*.yaml) or "
            f"pass --num_processes {have} to accelerate launch")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.launch",
                                 description="Check an accelerate config against this machine, then launch a trainer.")
    ap.add_argument("--config", required=True, help="accelerate config YAML (training/configs/*.yaml)")
    ap.add_argument("--num-processes", type=int, default=None, help="override the config's num_processes")
    ap.add_argument("--dry-run", action="store_true", help="check and print the command, do not run it")
    ap.add_argument("trainer", choices=sorted(TRAINERS))
    ap.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the trainer (after an optional --)")
    ns = ap.parse_args(argv)
    try:
        check_accelerate_config(ns.config, num_processes=ns.num_processes)
    except MoGe4DInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args = ns.args[1:] if ns.args[:1] == ["--"] else ns.args
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ns.config)]
    if ns.num_processes is not None:
        cmd += ["--num_processes", str(ns.num_processes)]
    cmd += ["-m", TRAINERS[ns.trainer], *args]
    print(" ".join(cmd), flush=True)
    if ns.dry_run:
        return 0
    return subprocess.call(cmd)


if __name__ == "__main__":
    raise SystemExit(main())
