"""Resumable training checkpoints, written atomically, with nothing pickled.

Layout of ``<out>/checkpoint-<step>/``::

    trainer_state.json        step, data position (epoch, batch index in the epoch, sampler seed), samples seen,
                              loss history, loss-spike guard state, ``compat`` (the task, architecture, model
                              config and the options that fix the data order; checked on resume) and ``files``
                              (every other file of the checkpoint, checked before a resume)
    trainable.safetensors     the trainable tensors only (full fine-tune: the whole model; LoRA: the adapter;
                              VAE: the trained parts), names of the unwrapped model
    optimizer.json/.safetensors   the optimizer state (structure + scalars in JSON, moments in safetensors); under
                              FSDP the full state gathered on process 0 (keys are parameter names) and re-sharded
                              on resume
    scheduler.json/.safetensors   the lr scheduler state
    scaler.json/.safetensors  the fp16 gradient scaler (only with --mixed-precision fp16)
    rng-<rank>.json/.safetensors  RNG states of every process: python ``random``, numpy, torch CPU, CUDA when present
    export/                   (optional, ``--export-checkpoints``) loader-ready exports

Every file is JSON or safetensors (:mod:`training.state_files`), read with ``json.loads`` and safetensors' own
parser: a crafted checkpoint cannot run code. Files of the old accelerate layout (``accelerate/optimizer.bin``,
``custom_checkpoint_0.pkl``, ``random_states_<rank>.pkl``, which are pickles) are never opened; a checkpoint that
has only those is refused. Under DeepSpeed the optimizer state exists only in DeepSpeed's pickled files, so its
checkpoints hold weights, trainer state and RNG only and cannot be resumed (refused with a message).

:func:`validate_checkpoint` checks a checkpoint cheaply (every listed file present, JSON parses, safetensors
headers parse and match the file sizes); ``--resume latest`` takes the newest checkpoint that passes and says which
newer ones it skipped and why (:func:`resolve_resume`).

Atomicity: everything is written into ``<out>/.tmp-checkpoint-<step>/``, every file and folder is fsync'ed, then
the folder is renamed to ``checkpoint-<step>`` (``os.replace``) and the parent folder fsync'ed. A crash at any
point leaves the earlier checkpoints untouched (a stale temp folder is removed by the next write); a write that
fails (e.g. a full disk: the error says "disk full") removes its temp folder before raising; only after the
rename are checkpoints beyond the last ``keep`` deleted. Multi-process runs need the output folder on a file
system shared by all processes.

:func:`check_compatible` compares the ``compat`` record of a checkpoint with the current run before anything is
loaded and raises :class:`MoGe4DInputError` naming every differing field with both values; nothing in the
checkpoint is modified by a refused resume.
"""
from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Callable, Mapping, Optional

import numpy as np
import torch

from moge4d_core.errors import MoGe4DInputError

from .state_files import (check_json_file, check_safetensors_file, read_checkpoint_tensors, read_state,
                          state_paths, write_safetensors, write_state)

__all__ = ["CHECKPOINT_PREFIX", "STATE_FILE", "WEIGHTS_FILE", "FORMAT", "list_checkpoints", "resolve_resume",
           "read_trainer_state", "check_compatible", "fsync_tree", "save_checkpoint", "load_checkpoint",
           "load_trainable_weights", "validate_checkpoint", "refuse_resume_under_deepspeed"]

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"
WEIGHTS_FILE = "trainable.safetensors"
LEGACY_DIR = "accelerate"              # the old layout (accelerate save_state, pickles): never read
FORMAT = 2
_CKPT_RE = re.compile(r"checkpoint-(\d+)")


def list_checkpoints(out: os.PathLike) -> list[tuple[int, Path]]:
    """Checkpoint folders in ``out`` (``checkpoint-N`` holding ``trainer_state.json``), oldest first."""
    out = Path(out)
    found = []
    if out.is_dir():
        for p in out.iterdir():
            m = _CKPT_RE.fullmatch(p.name)
            if m and p.is_dir() and (p / STATE_FILE).is_file():
                found.append((int(m.group(1)), p))
    return sorted(found)


def read_trainer_state(ckpt: os.PathLike) -> dict:
    p = Path(ckpt) / STATE_FILE
    state = check_json_file(p)
    if not isinstance(state, dict):
        raise MoGe4DInputError(f"{p}: unreadable trainer state (not a JSON object); the checkpoint is damaged, "
                               f"resume from an earlier one")
    return state


def _expected_files(ckpt: Path, state: dict) -> list[Path]:
    files = state.get("files")
    if int(state.get("format", 1)) < FORMAT or not isinstance(files, list):
        legacy = ckpt / LEGACY_DIR
        raise MoGe4DInputError(
            f"{ckpt}: written by an older version of the trainer in accelerate's pickle format "
            f"({legacy}/optimizer.bin, custom_checkpoint_0.pkl, random_states_*.pkl); pickles in a checkpoint are "
            f"never loaded. Start a new run (another --out, or no --resume); its {WEIGHTS_FILE} can be used with "
            f"--model / --lora-init where the trainer offers them")
    out = []
    for f in files:
        if not isinstance(f, str) or "/" in f or "\\" in f or f.startswith("."):
            raise MoGe4DInputError(f"{ckpt / STATE_FILE}: invalid file entry {f!r} in 'files'; the checkpoint is "
                                   f"damaged, resume from an earlier one")
        out.append(ckpt / f)
    return out


def validate_checkpoint(ckpt: os.PathLike) -> dict:
    """Cheap integrity check of a checkpoint folder (no tensor data is read).

    Every file listed in ``trainer_state.json`` must be present; JSON files must parse; safetensors headers must
    parse and describe exactly the file's size (a truncated file fails).

    Args:
        ckpt: a ``checkpoint-<step>`` folder.

    Returns:
        The trainer state. Raises :class:`MoGe4DInputError` naming the first bad file.
    """
    ckpt = Path(ckpt)
    state = read_trainer_state(ckpt)
    for f in _expected_files(ckpt, state):
        if f.suffix == ".json":
            check_json_file(f)
        elif f.suffix == ".safetensors":
            check_safetensors_file(f)
        elif not f.exists():
            raise MoGe4DInputError(f"{f}: missing; the checkpoint is incomplete, resume from an earlier one")
    return state


def resolve_resume(spec: Optional[str], out: os.PathLike, log: Optional[Callable[[str], None]] = None
                   ) -> Optional[Path]:
    """The checkpoint to resume from.

    Args:
        spec: ``None`` / empty -> None; ``"latest"`` -> the newest intact checkpoint in ``out`` (None when there is
            no checkpoint at all; newer damaged ones are skipped and reported through ``log``; an error when every
            checkpoint is damaged); a path -> that checkpoint folder, which must pass :func:`validate_checkpoint`.
        out: the run's output folder.
        log: receives one line per skipped checkpoint and one naming the one taken.

    Returns:
        The checkpoint folder, or None.
    """
    if spec is None or str(spec).strip() == "":
        return None
    if str(spec) == "latest":
        ckpts = list_checkpoints(out)
        skipped = []
        for _step, p in reversed(ckpts):
            try:
                validate_checkpoint(p)
            except MoGe4DInputError as exc:
                skipped.append(f"{p.name}: {exc}")
                if log is not None:
                    log(f"--resume latest: skipping {p}: {exc}")
                continue
            if log is not None and skipped:
                log(f"--resume latest: resuming from {p}, the newest intact checkpoint ({len(skipped)} newer "
                    f"one(s) skipped as damaged)")
            return p
        if skipped:
            raise MoGe4DInputError(f"--resume latest: no intact checkpoint in {out}: " + " | ".join(skipped))
        return None
    p = Path(spec)
    if not p.is_dir() or not (p / STATE_FILE).is_file():
        hint = ""
        if p.is_dir() and list_checkpoints(p):
            hint = f" It is an output folder; pass one of its checkpoints, e.g. {list_checkpoints(p)[-1][1]}, or --resume latest with --out {p}."
        raise MoGe4DInputError(f"--resume {spec}: not a checkpoint folder (expected a folder checkpoint-<step>/ with "
                               f"{STATE_FILE}).{hint}")
    validate_checkpoint(p)
    return p


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


def _distributed_kind(accelerator) -> str:
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return "deepspeed"
    if accelerator.distributed_type == DistributedType.FSDP:
        return "fsdp"
    return "plain"


def refuse_resume_under_deepspeed(accelerator, ckpt: os.PathLike) -> None:
    """DeepSpeed keeps the optimizer state only in its own pickled files, which are never loaded here."""
    if _distributed_kind(accelerator) == "deepspeed":
        raise MoGe4DInputError(
            f"--resume {ckpt}: resuming under DeepSpeed is not supported: DeepSpeed stores its optimizer state only as "
            f"pickles (torch.save), and this project never unpickles a checkpoint. Resume with a DDP or FSDP "
            f"config (training/configs/ddp.yaml, fsdp.yaml), or start a new run initialised from the checkpoint's "
            f"{WEIGHTS_FILE}")


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def _set_rng_state(state, where: Path) -> None:
    if not isinstance(state, dict):
        raise MoGe4DInputError(f"{where}: not an RNG state; the checkpoint is damaged, resume from an earlier one")
    try:
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.set_rng_state(state["torch_cpu"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise MoGe4DInputError(f"{where}: unusable RNG state ({exc}); the checkpoint is damaged, resume from an "
                               f"earlier one") from None
    cuda = state.get("torch_cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _optimizer_state(accelerator, optimizer, model) -> Optional[dict]:
    """The full optimizer state on the main process (None elsewhere); a collective under FSDP."""
    kind = _distributed_kind(accelerator)
    if optimizer is None or kind == "deepspeed":
        return None
    if kind == "fsdp":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        # CPU offload of tensors already on the CPU crashes in torch's FSDP: only offload from accelerators
        sd = get_optimizer_state_dict(model, optimizer.optimizer, options=StateDictOptions(
            full_state_dict=True, cpu_offload=accelerator.device.type != "cpu"))
        return sd if accelerator.is_main_process else None
    return optimizer.state_dict() if accelerator.is_main_process else None


def _disk_full(exc: BaseException, folder: Path) -> bool:
    e: Optional[BaseException] = exc
    while e is not None:
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        text = str(e)
        if "No space left" in text or "StorageFull" in text or "os error 28" in text:
            return True
        e = e.__cause__ or e.__context__
    try:
        return shutil.disk_usage(folder).free < (1 << 20)
    except OSError:
        return False


def _any_process_failed(accelerator, failed: bool) -> bool:
    if accelerator.num_processes <= 1:
        return failed
    flags = accelerator.gather(torch.tensor([1.0 if failed else 0.0], device=accelerator.device))
    return bool(flags.sum().item() > 0)


def _check_written(accelerator, error: Optional[BaseException], tmp: Path, out: Path, step: int) -> None:
    """Collective: when any process failed, remove ``tmp`` and raise on every process."""
    if not _any_process_failed(accelerator, error is not None):
        return
    full = False
    if accelerator.is_main_process:
        full = error is not None and _disk_full(error, out)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    if error is None:
        raise RuntimeError(f"{tmp}: another process failed while writing the checkpoint; the partial folder was "
                           f"removed")
    if full:
        raise MoGe4DInputError(
            f"{tmp}: disk full while writing checkpoint {step} ({error}); the partial folder was removed and the "
            f"earlier checkpoints are intact. Free space on {out} (or lower --keep-checkpoints), then continue "
            f"with --resume latest") from error
    error.add_note(f"while writing the checkpoint folder {tmp}; the partial folder was removed")
    raise error


def save_checkpoint(accelerator, out: os.PathLike, step: int, *, trainer_state: dict,
                    trainable: Optional[Mapping[str, torch.Tensor]], keep: int, optimizer=None, scheduler=None,
                    model: Optional[torch.nn.Module] = None,
                    export_fn: Optional[Callable[[Path], None]] = None) -> Path:
    """Write ``<out>/checkpoint-<step>/`` atomically (see the module docstring); every process must call it.

    Args:
        trainable: the tensors to store (main process; ignored elsewhere).
        optimizer / scheduler: the prepared optimizer and the lr scheduler (their states are stored).
        model: the prepared model (needed under FSDP to gather the optimizer state).
        export_fn: ``export_fn(folder)``, main process only, writes loader-ready exports into ``folder``.

    Returns:
        The final folder. A failed write removes the temp folder; a full disk raises
        :class:`MoGe4DInputError` saying "disk full" and naming the folder.
    """
    out = Path(out)
    final = out / f"{CHECKPOINT_PREFIX}{step}"
    tmp = out / f".tmp-{CHECKPOINT_PREFIX}{step}"
    main, rank, world = accelerator.is_main_process, accelerator.process_index, accelerator.num_processes
    if main:
        out.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    opt_state = _optimizer_state(accelerator, optimizer, model)          # collective under FSDP
    error: Optional[BaseException] = None
    try:
        write_state(tmp / f"rng-{rank}", _rng_state(), "rng")
        if main:
            files = [n for r in range(world) for n in (f"rng-{r}.json", f"rng-{r}.safetensors")]
            state = dict(trainer_state)
            if opt_state is not None:
                write_state(tmp / "optimizer", opt_state, "optimizer")
                files += ["optimizer.json", "optimizer.safetensors"]
                state["optimizer_layout"] = "by_name" if _distributed_kind(accelerator) == "fsdp" else "by_index"
            elif optimizer is not None:
                state["optimizer_layout"] = "absent (DeepSpeed keeps it only in pickles, which are not written)"
            if scheduler is not None:
                write_state(tmp / "scheduler", scheduler.state_dict(), "scheduler")
                files += ["scheduler.json", "scheduler.safetensors"]
            scaler = getattr(accelerator, "scaler", None)
            if scaler is not None:
                write_state(tmp / "scaler", scaler.state_dict(), "scaler")
                files += ["scaler.json", "scaler.safetensors"]
            if trainable is not None:
                write_safetensors({k: v.detach().cpu().contiguous() for k, v in trainable.items()},
                                  tmp / WEIGHTS_FILE, metadata={"step": str(step)})
                files.append(WEIGHTS_FILE)
            if export_fn is not None:
                export_fn(tmp / "export")
            state.update(format=FORMAT, files=sorted(files))
            with open(tmp / STATE_FILE, "w", encoding="utf-8") as fh:
                fh.write(json.dumps(state, indent=1, sort_keys=True))
    except Exception as exc:  # noqa: BLE001 - cleaned up and re-raised by _check_written
        error = exc
    _check_written(accelerator, error, tmp, out, step)
    if main:                      # every rank's files are in place (the check above is a collective)
        try:
            fsync_tree(tmp)
        except Exception as exc:  # noqa: BLE001
            error = exc
    _check_written(accelerator, error, tmp, out, step)
    if main:
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


def load_trainable_weights(ckpt: os.PathLike, model: torch.nn.Module, trainable_names: list[str]) -> None:
    """Copy the checkpoint's ``trainable.safetensors`` into the (not yet prepared) ``model``.

    The tensors must match ``trainable_names`` exactly. Called before ``accelerator.prepare``, so DDP and FSDP
    start from the restored weights on every process.
    """
    wfile = Path(ckpt) / WEIGHTS_FILE
    tensors = read_checkpoint_tensors(wfile)
    missing = sorted(set(trainable_names) - set(tensors))
    unexpected = sorted(set(tensors) - set(trainable_names))
    if missing or unexpected:
        raise MoGe4DInputError(f"{wfile}: trainable tensors do not match this run ({len(missing)} missing, first "
                               f"{missing[:3]}; {len(unexpected)} unexpected, first {unexpected[:3]})")
    own = dict(model.named_parameters())
    for k, v in tensors.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise MoGe4DInputError(f"{wfile}: tensor {k} has shape {tuple(v.shape)}, this run's model "
                                   f"{tuple(own[k].shape)}")
    with torch.no_grad():
        for k, v in tensors.items():
            own[k].copy_(v.to(own[k].dtype))


def load_checkpoint(accelerator, ckpt: os.PathLike, *, optimizer, scheduler, model: torch.nn.Module) -> dict:
    """Restore the optimizer, lr scheduler, grad scaler and this process's RNG states (after ``prepare``).

    Args:
        ckpt: a checkpoint folder (validated here again).
        optimizer / scheduler / model: the prepared optimizer, the lr scheduler and the prepared model.

    Returns:
        The trainer state. Raises :class:`MoGe4DInputError` naming the file that is damaged or does not fit.
    """
    ckpt = Path(ckpt)
    refuse_resume_under_deepspeed(accelerator, ckpt)
    state = validate_checkpoint(ckpt)
    files = set(state["files"])
    if optimizer is not None:
        if "optimizer.json" not in files:
            raise MoGe4DInputError(
                f"{ckpt}: holds no optimizer state ({state.get('optimizer_layout', 'absent')}), so it cannot be "
                f"resumed; start a new run initialised from its {WEIGHTS_FILE}")
        where = ckpt / "optimizer.json"
        osd = read_state(ckpt / "optimizer", "optimizer")
        fsdp = _distributed_kind(accelerator) == "fsdp"
        layout = state.get("optimizer_layout", "by_index")
        if layout != ("by_name" if fsdp else "by_index"):
            raise MoGe4DInputError(
                f"{where}: written {'under' if layout == 'by_name' else 'without'} FSDP; resume it with the same "
                f"kind of accelerate config")
        try:
            if fsdp:
                from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

                set_optimizer_state_dict(model, optimizer.optimizer, osd, options=StateDictOptions(full_state_dict=True))
            else:
                optimizer.load_state_dict(osd)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as exc:
            raise MoGe4DInputError(f"{where}: the optimizer state does not fit this run ({str(exc)[:200]})") from None
    if scheduler is not None:
        where = ckpt / "scheduler.json"
        sd = read_state(ckpt / "scheduler", "scheduler")
        want = set(scheduler.state_dict())
        if not isinstance(sd, dict) or set(sd) != want:
            raise MoGe4DInputError(f"{where}: not a state of this run's lr scheduler (keys "
                                   f"{sorted(sd) if isinstance(sd, dict) else type(sd).__name__}, expected "
                                   f"{sorted(want)}); use the same --lr-scheduler")
        try:
            scheduler.load_state_dict(sd)
        except (KeyError, TypeError, ValueError) as exc:
            raise MoGe4DInputError(f"{where}: unusable lr scheduler state ({exc})") from None
    scaler = getattr(accelerator, "scaler", None)
    if scaler is not None:
        if "scaler.json" not in files:
            raise MoGe4DInputError(f"{ckpt}: holds no fp16 gradient-scaler state; resume with the mixed precision "
                                   f"of the run that wrote it")
        try:
            scaler.load_state_dict(read_state(ckpt / "scaler", "scaler"))
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise MoGe4DInputError(f"{ckpt / 'scaler.json'}: unusable gradient-scaler state ({exc})") from None
    stem = ckpt / f"rng-{accelerator.process_index}"
    _set_rng_state(read_state(stem, "rng"), state_paths(stem)[0])
    return state
