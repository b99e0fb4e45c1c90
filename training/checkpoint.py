"""Resumable training checkpoints, written atomically.

Layout of ``<out>/checkpoint-<step>/``::

    trainer_state.json        step, data position (epoch, batch index in the epoch, sampler seed), samples seen,
                              loss history, loss-spike guard state, and ``compat``: the task, architecture, model
                              config and the options that fix the data order (checked on resume)
    trainable.safetensors     the trainable tensors only (full fine-tune: the whole model; LoRA: the adapter;
                              VAE: the trained parts), names of the unwrapped model
    accelerate/               ``Accelerator.save_state``: optimizer (``optimizer.bin``), lr scheduler
                              (``custom_checkpoint_0.pkl``), RNG states of every process (``random_states_<rank>.pkl``:
                              python, numpy, torch CPU, CUDA when present); under FSDP / DeepSpeed also their
                              sharded model and optimizer files
    export/                   (optional, ``--export-checkpoints``) loader-ready exports

Atomicity: everything is written into ``<out>/.tmp-checkpoint-<step>/``, every file and folder is fsync'ed, then
the folder is renamed to ``checkpoint-<step>`` (``os.replace``) and the parent folder fsync'ed. A crash at any
point leaves the earlier checkpoints untouched (a stale temp folder is removed by the next write); only after the
rename are checkpoints beyond the last ``keep`` deleted. Multi-process runs need the output folder on a file system
shared by all processes (as accelerate's own ``save_state`` does).

:func:`check_compatible` compares the ``compat`` record of a checkpoint with the current run before anything is
loaded and raises :class:`MoGe4DInputError` naming every differing field with both values; nothing in the
checkpoint is modified by a refused resume.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable, Mapping, Optional

import torch

from moge4d_core.errors import MoGe4DInputError

__all__ = ["CHECKPOINT_PREFIX", "STATE_FILE", "WEIGHTS_FILE", "ACCELERATE_DIR", "list_checkpoints", "resolve_resume",
           "read_trainer_state", "check_compatible", "fsync_tree", "save_checkpoint", "load_checkpoint",
           "install_accelerate_hooks"]

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"
WEIGHTS_FILE = "trainable.safetensors"
ACCELERATE_DIR = "accelerate"
_CKPT_RE = re.compile(r"checkpoint-(\d+)")


def list_checkpoints(out: os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints in ``out`` (folders ``checkpoint-N`` holding ``trainer_state.json``), oldest first."""
    out = Path(out)
    found = []
    if out.is_dir():
        for p in out.iterdir():
            m = _CKPT_RE.fullmatch(p.name)
            if m and p.is_dir() and (p / STATE_FILE).is_file():
                found.append((int(m.group(1)), p))
    return sorted(found)


def resolve_resume(spec: Optional[str], out: os.PathLike) -> Optional[Path]:
    """``None`` -> None; ``"latest"`` -> the newest checkpoint in ``out`` (None when there is none);
    a path -> that checkpoint folder (error when it is not one)."""
    if spec is None or str(spec).strip() == "":
        return None
    if str(spec) == "latest":
        ckpts = list_checkpoints(out)
        return ckpts[-1][1] if ckpts else None
    p = Path(spec)
    if not p.is_dir() or not (p / STATE_FILE).is_file():
        hint = ""
        if p.is_dir() and list_checkpoints(p):
            hint = f" It is an output folder; pass one of its checkpoints, e.g. {list_checkpoints(p)[-1][1]}, or --resume latest with --out {p}."
        raise MoGe4DInputError(f"--resume {spec}: not a checkpoint folder (expected a folder checkpoint-<step>/ with "
                               f"{STATE_FILE}).{hint}")
    return p


def read_trainer_state(ckpt: os.PathLike) -> dict:
    p = Path(ckpt) / STATE_FILE
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MoGe4DInputError(f"{p}: unreadable trainer state ({exc}); the checkpoint is damaged, resume from an "
                               f"earlier one") from None


def _flat(d: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def check_compatible(saved: Mapping, current: Mapping, ckpt: os.PathLike) -> None:
    """Raise when the checkpoint's ``compat`` record differs from the current run's (names both values)."""
    a = _flat(json.loads(json.dumps(saved)))
    b = _flat(json.loads(json.dumps(current)))
    diffs = [(k, a.get(k, "<absent>"), b.get(k, "<absent>")) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if diffs:
        shown = "; ".join(f"{k}: checkpoint {x!r} vs this run {y!r}" for k, x, y in diffs[:8])
        more = f" (+{len(diffs) - 8} more)" if len(diffs) > 8 else ""
        raise MoGe4DInputError(
            f"{ckpt}: cannot resume: the checkpoint was written by a different model or setup. {shown}{more}. "
            f"Resume with the same architecture, config and data-order options, or start a new run "
            f"(another --out, no --resume). The checkpoint was not modified.")


def fsync_tree(root: os.PathLike) -> None:
    """fsync every file and folder below ``root`` (and ``root`` itself)."""
    root = Path(root)
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(dirpath)


def _fsync_dir(path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def install_accelerate_hooks(accelerator) -> None:
    """Keep ``Accelerator.save_state`` / ``load_state`` away from the model weights (we store the trainable
    tensors ourselves, under unwrapped names) except under FSDP / DeepSpeed, whose sharded model files
    accelerate must write and read itself."""
    from accelerate.utils import DistributedType

    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)

    def save_hook(models, weights, output_dir):
        if not sharded:
            weights.clear()

    def load_hook(models, input_dir):
        if not sharded:
            models.clear()

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def save_checkpoint(accelerator, out: os.PathLike, step: int, *, trainer_state: dict,
                    trainable: Optional[Mapping[str, torch.Tensor]], keep: int,
                    export_fn: Optional[Callable[[Path], None]] = None) -> Path:
    """Write ``<out>/checkpoint-<step>/`` atomically (see the module docstring); every process must call it.

    ``trainable``: the tensors to store (main process; ignored elsewhere). ``export_fn(folder)``: main process
    only, writes loader-ready exports into ``folder``. Returns the final folder.
    """
    from safetensors.torch import save_file

    out = Path(out)
    final = out / f"{CHECKPOINT_PREFIX}{step}"
    tmp = out / f".tmp-{CHECKPOINT_PREFIX}{step}"
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp / ACCELERATE_DIR), safe_serialization=True)
    if accelerator.is_main_process:
        if trainable is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in trainable.items()}, str(tmp / WEIGHTS_FILE),
                      metadata={"step": str(step)})
        if export_fn is not None:
            export_fn(tmp / "export")
        (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=1, sort_keys=True), encoding="utf-8")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        fsync_tree(tmp)
        trash = None
        if final.exists():                      # re-writing a step (resumed from an older checkpoint)
            trash = out / f".old-{CHECKPOINT_PREFIX}{step}"
            if trash.exists():
                shutil.rmtree(trash)
            os.replace(final, trash)
        os.replace(tmp, final)
        _fsync_dir(out)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        if keep and keep > 0:
            for s, p in list_checkpoints(out)[:-keep]:
                if p != final:
                    shutil.rmtree(p, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, ckpt: os.PathLike, model: torch.nn.Module, trainable_names: list[str]) -> dict:
    """Restore optimizer / scheduler / RNG (accelerate) and the trainable tensors into the unwrapped ``model``.

    Returns the trainer state. The trainable tensors must match ``trainable_names`` exactly.
    """
    from accelerate.utils import DistributedType
    from safetensors.torch import load_file

    ckpt = Path(ckpt)
    state = read_trainer_state(ckpt)
    accelerator.load_state(str(ckpt / ACCELERATE_DIR))
    if accelerator.distributed_type not in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        wfile = ckpt / WEIGHTS_FILE
        if not wfile.is_file():
            raise MoGe4DInputError(f"{ckpt}: missing {WEIGHTS_FILE}; the checkpoint is incomplete")
        tensors = load_file(str(wfile))
        missing = sorted(set(trainable_names) - set(tensors))
        unexpected = sorted(set(tensors) - set(trainable_names))
        if missing or unexpected:
            raise MoGe4DInputError(f"{wfile}: trainable tensors do not match this run ({len(missing)} missing, first "
                                   f"{missing[:3]}; {len(unexpected)} unexpected, first {unexpected[:3]})")
        own = dict(model.named_parameters())
        with torch.no_grad():
            for k, v in tensors.items():
                own[k].copy_(v.to(own[k].dtype))
    return state
