"""The training loop shared by every trainer, on HuggingFace ``accelerate``.

A trainer is a :class:`TrainTask` (what to build, how to compute one batch's loss, what to export); :func:`run`
does the rest:

* ``Accelerator`` setup: mixed precision (no / bf16 / fp16, default from the accelerate config), gradient
  accumulation (``accelerator.accumulate``), seed (``accelerate.utils.set_seed``), DDP / FSDP / DeepSpeed from
  the launch config; the number of local processes is checked against the CUDA devices first
  (:func:`training.launch.check_process_count`);
* AdamW (``torch.optim.AdamW``, or ``bitsandbytes.optim.AdamW8bit`` with ``--adam-8bit``), per-group lr scales,
  a diffusers lr schedule (default ``constant_with_warmup``), gradient clipping, optional gradient checkpointing;
* loss-spike skipping (:class:`training.spikes.LossSpikeGuard`) on the loss gathered over all processes, so every
  process skips together;
* data order: a ``torch.utils.data.DistributedSampler`` per process whose permutation is a function of
  ``(seed, epoch)``; the data position (epoch, batch index in the epoch) is checkpointed and the consumed batches
  are skipped on resume, so a resumed run sees exactly the batches of an uninterrupted one;
* randomness of each micro-batch (timesteps, noise, condition drops) comes from a generator seeded with
  ``(seed, step, micro-batch, process)``, independent of what ran before: on the CPU a resumed run is bit-exact;
* checkpoints (:mod:`training.checkpoint`: JSON + safetensors only, nothing pickled, written atomically) every
  ``--checkpoint-every`` steps and at the end, resume with ``--resume latest|PATH`` (latest = the newest intact
  one) after an integrity and architecture/config check;
* evaluation every ``--eval-every`` steps (and before the first step, and at the end): the task's loss on the
  first ``--eval-batches`` batches of the evaluation data with fixed noise, so values are comparable over time;
* logs: a tqdm progress bar (loss, samples/s, ETA), ``<out>/logs/train.jsonl`` and TensorBoard when installed
  (:mod:`training.logs`), plus optional Python callbacks receiving every record;
* exports at the end (and in every checkpoint with ``--export-checkpoints``) through the task, in formats the
  shared loaders read unchanged.

On the CPU, several processes run with ``accelerate launch --multi_gpu --num_processes N`` (gloo backend,
``DistributedType.MULTI_CPU``).
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch

from moge4d_core.errors import MoGe4DInputError

from .checkpoint import (load_checkpoint, load_trainable_weights, refuse_resume_under_deepspeed, resolve_resume,
                         save_checkpoint, check_compatible, list_checkpoints, validate_checkpoint)
from .launch import check_process_count
from .logs import RunLogger
from .options import CommonOptions, parse_size
from .spikes import LossSpikeGuard

__all__ = ["TrainTask", "TrainResult", "run", "step_generator", "BatchPlan", "make_optimizer", "DTYPES",
           "dataset_from_options", "weights_digest"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ------------------------------------------------------------------------------------------------ task API
class TrainTask:
    """What a trainer supplies to :func:`run`. Subclasses set ``self.model`` in :meth:`setup`.

    ``model``: the one ``nn.Module`` that is trained (prepared by accelerate: DDP / FSDP wraps it); the loss
    must run its trainable computation through a call of that module (not of its sub-modules) so DDP can
    synchronise gradients. Frozen helpers (VAEs, text / CLIP encoders) live on the task, outside it.
    """

    name = "task"

    def __init__(self, options: CommonOptions) -> None:
        self.o = options
        self.model: Optional[torch.nn.Module] = None
        self.notes: list[str] = []

    # -- building
    def setup(self, device: torch.device) -> None:
        raise NotImplementedError

    def datasets(self) -> tuple[torch.utils.data.Dataset, Optional[torch.utils.data.Dataset]]:
        """(training dataset, evaluation dataset or None = the training data)."""
        raise NotImplementedError

    def collate(self, samples: list) -> Any:
        from .datasets import collate_samples

        return collate_samples(samples)

    def param_groups(self) -> list[dict]:
        """``[{"params": [...], "lr_scale": 1.0, "name": ...}]``; default: every trainable parameter of the model."""
        return [{"params": [p for p in self.model.parameters() if p.requires_grad], "lr_scale": 1.0, "name": "all"}]

    def compat(self) -> dict:
        """What a checkpoint of this run must match to be resumed (architecture, config, trained parts)."""
        raise NotImplementedError

    # -- training
    def loss(self, model: torch.nn.Module, batch: Any, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        """Scalar loss of one micro-batch (float32) and extra float metrics; all randomness from ``generator``."""
        raise NotImplementedError

    # -- outputs
    def export(self, model: torch.nn.Module, folder: Path) -> dict[str, Path]:
        """Write loader-ready files for the (unwrapped) trained ``model`` into ``folder``; returns their paths."""
        raise NotImplementedError

    def empty_model(self) -> torch.nn.Module:
        """The trained module's structure without weights (meta device), for exports under FSDP / DeepSpeed."""
        raise MoGe4DInputError(f"{self.name}: exporting from sharded (FSDP / DeepSpeed) weights is not supported "
                               f"by this trainer; use DDP, or convert the checkpoint's trainable.safetensors")


@dataclass
class TrainResult:
    """What :func:`run` returns (on every process; exports / checkpoints are written by the main process).

    ``losses``: the loss of every optimizer step so far (gathered over processes, mean of the kept micro-batches;
    NaN for a step whose micro-batches were all skipped), including the steps before a resume.
    """

    out: Path
    steps: int
    losses: list[float]
    skipped: int
    evals: list[dict]
    exports: dict[str, Path]
    checkpoints: list[Path]
    resumed_from: Optional[Path]
    steps_per_second: float
    samples_per_second: float
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ helpers
def step_generator(seed: int, step: int, micro: int, rank: int, device, stream: int = 0) -> torch.Generator:
    """A generator on ``device`` seeded from ``(seed, stream, step, micro, rank)`` (numpy ``SeedSequence``)."""
    s = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, stream, step, micro, rank]).generate_state(2, dtype=np.uint32)
    g = torch.Generator(device=device)
    g.manual_seed(int(s[0]) << 31 ^ int(s[1]))
    return g


class BatchPlan:
    """Per-process batches of an epoch: ``DistributedSampler(shuffle=True, seed)`` order, cut into full batches.

    The permutation depends only on ``(seed, epoch)``; each process takes every ``world``-th index (the sampler
    pads with repeats to a multiple of ``world``). Incomplete trailing batches are dropped.
    """

    def __init__(self, dataset, batch_size: int, world: int, rank: int, seed: int, shuffle: bool = True) -> None:
        from torch.utils.data import DistributedSampler

        self.batch_size = int(batch_size)
        self.sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed,
                                          drop_last=False)
        self.batches_per_epoch = len(self.sampler) // self.batch_size
        if self.batches_per_epoch < 1:
            raise MoGe4DInputError(
                f"the dataset has {len(dataset)} samples: fewer than --batch-size {batch_size} x {world} processes; "
                f"lower the batch size or add samples")

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        self.sampler.set_epoch(epoch)
        idx = list(self.sampler)
        b = self.batch_size
        return [idx[i * b:(i + 1) * b] for i in range(self.batches_per_epoch)]


def _micro_batches(dataset, plan: BatchPlan, collate, num_workers: int, epoch: int,
                   start: int) -> Iterator[tuple[int, int, Any]]:
    from torch.utils.data import DataLoader

    while True:
        batches = plan.epoch_batches(epoch)[start:]
        if batches:
            loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=num_workers)
            for j, batch in enumerate(loader):
                yield epoch, start + j, batch
        epoch, start = epoch + 1, 0


def make_optimizer(groups: Sequence[dict], o: CommonOptions) -> torch.optim.Optimizer:
    """AdamW over ``groups`` (each group's lr = ``o.lr * lr_scale``), 8-bit through bitsandbytes on request."""
    param_groups = []
    for g in groups:
        params = [p for p in g["params"] if p.requires_grad]
        if params:
            param_groups.append({"params": params, "lr": o.lr * float(g.get("lr_scale", 1.0)),
                                 "name": g.get("name", "")})
    if not param_groups:
        raise MoGe4DInputError("nothing to train: no parameter requires a gradient (check the trainer's options)")
    kw = dict(lr=o.lr, betas=(o.adam_beta1, o.adam_beta2), weight_decay=o.weight_decay, eps=o.adam_eps)
    if o.adam_8bit:
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise MoGe4DInputError("--adam-8bit needs the bitsandbytes package, which is not installed "
                                   "(pip install bitsandbytes -c constraints.txt), or drop --adam-8bit") from None
        return bnb.optim.AdamW8bit(param_groups, **kw)
    return torch.optim.AdamW(param_groups, **kw)


def dataset_from_options(o: CommonOptions, root: str, **kw):
    """:class:`training.datasets.TrajSceneDataset` for ``root`` with the common data options."""
    from .datasets import TrajSceneDataset

    if not root:
        raise MoGe4DInputError("--data: no dataset folder given (a TrajScene folder or range .tar.gz)")
    return TrajSceneDataset(root, frames=o.frames, crop=parse_size(o.crop, "crop"), grid=parse_size(o.grid, "grid"),
                            allow_unsafe_pickle=o.allow_unsafe_pickle, skip_large_coords=o.skip_large_coords, **kw)


def _reset_accelerate_state() -> None:
    """Forget a previous ``Accelerator`` of this (single) process, so a new run can pick other settings."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def _ddp_like(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.num_processes > 1 and accelerator.distributed_type not in (
        DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.NO)


# ------------------------------------------------------------------------------------------------ the loop
def run(task: TrainTask, callbacks: Iterable[Callable[[dict], None]] = ()) -> TrainResult:
    """Train ``task`` with its options (``task.o``); see the module docstring."""
    o = task.o
    if not o.out:
        raise MoGe4DInputError("--out: no output folder given")
    if o.grad_accum < 1 or o.batch_size < 1:
        raise MoGe4DInputError(f"--batch-size and --grad-accum must be >= 1 (got {o.batch_size}, {o.grad_accum})")
    check_process_count(o.cpu)
    _reset_accelerate_state()
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed

    # several processes without CUDA: accelerate only forms the gloo process group (MULTI_CPU) when told cpu=True
    cpu = o.cpu or (not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1)
    accelerator = Accelerator(mixed_precision=o.mixed_precision, gradient_accumulation_steps=o.grad_accum,
                              cpu=cpu, kwargs_handlers=[DistributedDataParallelKwargs(
                                  find_unused_parameters=o.ddp_find_unused)])
    _fsdp_on_cpu_processes(accelerator)
    try:
        return _run(task, accelerator, list(callbacks))
    finally:
        _reset_accelerate_state()


def _run(task: TrainTask, accelerator, callbacks: list) -> TrainResult:
    from diffusers.optimization import get_scheduler
    from accelerate.utils import set_seed

    o = task.o
    out = Path(o.out)
    main = accelerator.is_main_process
    world, rank, device = accelerator.num_processes, accelerator.process_index, accelerator.device

    def say(msg: str) -> None:
        if main:
            print(f"[{task.name}] {msg}", file=sys.stderr, flush=True)

    # -- resume target first: a bad --resume fails before anything is built or written
    resume_path = resolve_resume(o.resume, out, log=say)
    if o.resume == "latest" and resume_path is None:
        say(f"--resume latest: no checkpoint in {out}; starting from scratch")
    if resume_path is not None:
        refuse_resume_under_deepspeed(accelerator, resume_path)
    saved_state = validate_checkpoint(resume_path) if resume_path is not None else None

    set_seed(o.seed)
    task.setup(device)
    model = task.model
    trainable_names = [n for n, p in model.named_parameters() if p.requires_grad]
    if not trainable_names:
        raise MoGe4DInputError(f"{task.name}: no trainable parameters (check the trainer's options)")
    train_ds, eval_ds = task.datasets()
    plan = BatchPlan(train_ds, o.batch_size, world, rank, o.seed)
    total = int(o.max_steps) if o.max_steps else max(1, (o.epochs * plan.batches_per_epoch) // o.grad_accum)
    compat = dict(task.compat())
    compat["data_order"] = {"seed": o.seed, "batch_size": o.batch_size, "grad_accum": o.grad_accum,
                            "processes": world, "samples": len(train_ds)}
    if saved_state is not None:
        check_compatible(saved_state.get("compat", {}), compat, resume_path)

    if resume_path is not None:          # before prepare: DDP / FSDP then start from the restored weights everywhere
        load_trainable_weights(resume_path, model, trainable_names)
    optimizer = make_optimizer(task.param_groups(), o)
    scheduler = get_scheduler(o.lr_scheduler, optimizer, num_warmup_steps=o.warmup_steps, num_training_steps=total)
    _fill_deepspeed_auto(accelerator, o)
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    trainable_params = [p for p in unwrapped.parameters() if p.requires_grad]
    # FSDP clips through the wrapped module (its own clip_grad_norm_ over the shards); elsewhere the trainable tensors
    clip_params = list(model.parameters()) if _sharded(accelerator) else trainable_params

    guard = LossSpikeGuard(k=o.spike_k, window=o.spike_window, warmup=o.spike_warmup, max_loss=o.spike_max,
                           abs_threshold=o.spike_abs, abs_after=o.spike_abs_after)
    step, epoch, bidx, samples_seen, losses = 0, 0, 0, 0, []
    if resume_path is not None:
        st = load_checkpoint(accelerator, resume_path, optimizer=optimizer, scheduler=scheduler, model=model)
        step, epoch, bidx = int(st["step"]), int(st["epoch"]), int(st["batch_in_epoch"])
        samples_seen, losses = int(st.get("samples_seen", 0)), [float(x) for x in st.get("losses", [])]
        guard.load_state_dict(st.get("guard", {}))
        say(f"resumed from {resume_path} at step {step} (epoch {epoch}, batch {bidx})")

    logger = RunLogger(out / "logs", enabled=main, tensorboard=o.tensorboard, echo=say)
    if logger.tensorboard_note:
        task.notes.append(logger.tensorboard_note)
    evals: list[dict] = []
    checkpoints: list[Path] = []

    def emit(record: dict) -> None:
        logger.log(record)
        if main:
            for cb in callbacks:
                cb(dict(record))

    eval_batches = None
    if o.eval_every:
        eval_batches = _eval_batches(task, eval_ds if eval_ds is not None else train_ds, o)

    def evaluate(at: int) -> None:
        model.eval()
        vals = []
        with torch.no_grad():
            for i, batch in enumerate(eval_batches):
                g = step_generator(o.seed, 0, i, 0, device, stream=1)
                loss, _ = task.loss(model, batch, g)
                vals.append(float(loss.detach().float().item()))
        model.train()
        rec = {"kind": "eval", "step": at, "loss": float(np.mean(vals)) if vals else float("nan"),
               "batches": len(vals)}
        evals.append(rec)
        emit(rec)

    def trainer_state() -> dict:
        e, b = (epoch + 1, 0) if bidx >= plan.batches_per_epoch else (epoch, bidx)
        return {"format": 1, "task": task.name, "step": step, "epoch": e, "batch_in_epoch": b,
                "sampler_seed": o.seed, "samples_seen": samples_seen, "losses": losses,
                "guard": guard.state_dict(), "compat": compat, "total_steps": total,
                "written": time.strftime("%Y-%m-%dT%H:%M:%S")}

    def trainable_state() -> Optional[dict]:
        if _sharded(accelerator):
            full = _full_state_dict(accelerator, model)
            return {k: full[k] for k in trainable_names} if main else None
        named = dict(unwrapped.named_parameters())
        return {k: named[k] for k in trainable_names} if main else None

    def do_export(folder: Path) -> dict[str, Path]:
        if _sharded(accelerator):
            full = _full_state_dict(accelerator, model)
            if not main:
                return {}
            m = task.empty_model()
            m.load_state_dict(full, strict=True, assign=True)
            return task.export(m, folder)
        return task.export(unwrapped, folder) if main else {}

    def checkpoint() -> None:
        export_fn = None
        if o.export_checkpoints:
            export_fn = (lambda f: do_export(f)) if not _sharded(accelerator) else None
        path = save_checkpoint(accelerator, out, step, trainer_state=trainer_state(), trainable=trainable_state(),
                               keep=o.keep_checkpoints, optimizer=optimizer, scheduler=scheduler, model=model,
                               export_fn=export_fn)
        checkpoints.append(path)
        emit({"kind": "checkpoint", "step": step, "path": str(path)})

    if main:
        say(f"{len(train_ds)} samples, {plan.batches_per_epoch} batches/epoch/process, {world} process(es), "
            f"{sum(p.numel() for p in trainable_params):,} trainable parameters, steps {step} -> {total}")
    if o.eval_every and resume_path is None:
        evaluate(0)

    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=step, disable=not (main and o.progress), desc=task.name, dynamic_ncols=True)
    stream = _micro_batches(train_ds, plan, task.collate, o.num_workers, epoch, bidx)
    per_step = o.batch_size * o.grad_accum * world
    train_time, steps_run = 0.0, 0
    model.train()
    while step < total:
        t0 = time.perf_counter()
        kept: list[float] = []
        backwarded = last_skipped = False
        metrics_acc: dict[str, list[float]] = {}
        grad_norm = None
        for micro in range(o.grad_accum):
            epoch, j, batch = next(stream)
            bidx = j + 1
            g = step_generator(o.seed, step, micro, rank, device)
            with accelerator.accumulate(model):
                loss, metrics = task.loss(model, batch, g)
                gathered = accelerator.gather(loss.detach().float().reshape(1)).mean().item()
                skip, reason = guard.check(gathered, step + 1)
                if skip:
                    emit({"kind": "skip", "step": step + 1, "micro": micro, "loss": gathered, "reason": reason})
                else:
                    accelerator.backward(loss)
                    backwarded = True
                    kept.append(gathered)
                    for k, v in metrics.items():
                        metrics_acc.setdefault(k, []).append(float(v))
                last_skipped = skip
                if accelerator.sync_gradients:
                    if backwarded:
                        if last_skipped and o.grad_accum > 1 and _ddp_like(accelerator):
                            _all_reduce_grads(trainable_params, world)
                        if o.grad_clip:
                            grad_norm = accelerator.clip_grad_norm_(clip_params, o.grad_clip)
                        optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        step += 1
        samples_seen += per_step
        step_loss = float(np.mean(kept)) if kept else float("nan")
        losses.append(step_loss)
        dt = time.perf_counter() - t0
        train_time += dt
        steps_run += 1
        sps = per_step / dt if dt > 0 else float("nan")
        if o.log_every and (step % o.log_every == 0 or step == total):
            rec = {"kind": "train", "step": step, "epoch": epoch, "loss": step_loss, "lr": scheduler.get_last_lr()[0],
                   "samples_per_s": sps, "skipped_micro": o.grad_accum - len(kept)}
            if grad_norm is not None:
                rec["grad_norm"] = float(grad_norm)
            rec.update({k: float(np.mean(v)) for k, v in metrics_acc.items()})
            emit(rec)
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4g}", sps=f"{sps:.2f}")
        if o.checkpoint_every and step % o.checkpoint_every == 0 and step < total:
            checkpoint()
        if o.eval_every and step % o.eval_every == 0 and step < total:
            evaluate(step)
    bar.close()
    if steps_run or not list_checkpoints(out):
        checkpoint()
    if o.eval_every and steps_run:
        evaluate(step)
    accelerator.wait_for_everyone()
    exports = do_export(out / "export")
    if o.report_digest and not _sharded(accelerator):
        (out / "logs").mkdir(parents=True, exist_ok=True)
        named = dict(unwrapped.named_parameters())
        (out / "logs" / f"digest-rank{rank}.txt").write_text(weights_digest({k: named[k] for k in trainable_names}))
    accelerator.wait_for_everyone()
    logger.close()
    result = TrainResult(out=out, steps=step, losses=losses, skipped=guard.skipped, evals=evals, exports=exports,
                         checkpoints=checkpoints, resumed_from=resume_path,
                         steps_per_second=steps_run / train_time if train_time > 0 else float("nan"),
                         samples_per_second=steps_run * per_step / train_time if train_time > 0 else float("nan"),
                         notes=list(task.notes))
    if main:
        say(f"done: {step} steps, {result.steps_per_second:.3g} steps/s, {result.samples_per_second:.3g} samples/s; "
            f"exports: {', '.join(f'{k}={v}' for k, v in exports.items())}")
    return result


def weights_digest(tensors: dict) -> str:
    """SHA-256 over the names, shapes, dtypes and bytes of ``tensors`` (sorted by name)."""
    import hashlib

    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(f"{k}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _fill_deepspeed_auto(accelerator, o: CommonOptions) -> None:
    """DeepSpeed "auto" values accelerate can only infer from a prepared DataLoader (we prepare none)."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    if ds.get("train_micro_batch_size_per_gpu", "auto") == "auto":
        ds["train_micro_batch_size_per_gpu"] = o.batch_size
    if ds.get("train_batch_size", "auto") == "auto":
        ds["train_batch_size"] = o.batch_size * o.grad_accum * accelerator.num_processes
    if ds.get("gradient_clipping", "auto") == "auto":
        ds["gradient_clipping"] = float(o.grad_clip or 0.0)


def _fsdp_on_cpu_processes(accelerator) -> None:
    """Run an FSDP config on CPU processes as FSDP (gloo), not as the DDP accelerate falls back to.

    accelerate only selects FSDP for accelerator devices; on CPU processes (``MULTI_CPU``) it silently trains
    with DDP instead. PyTorch's FSDP runs on the CPU over gloo, so the run is switched to FSDP here: the config
    means the same on every machine, and the sharded code paths (gathered checkpoints and exports, re-sharded
    optimizer state) run in the CPU tests.
    """
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if (os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
            and accelerator.distributed_type == DistributedType.MULTI_CPU):
        if os.environ.get("FSDP_SYNC_MODULE_STATES", "false").lower() == "true":
            raise MoGe4DInputError(
                "the FSDP config sets fsdp_sync_module_states: true, which accelerate does not support on CPU "
                "processes; set it to false (every process loads the same weights, so nothing needs syncing)")
        from accelerate.state import PartialState

        accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin()
        # both singletons: AcceleratorState() re-reads PartialState's values whenever it is constructed again
        for state in (PartialState(), accelerator.state):
            state.distributed_type = DistributedType.FSDP
            state.device = torch.device("cpu")              # FSDP wants "cpu", accelerate says "cpu:0"


def _full_state_dict(accelerator, model) -> dict:
    """The unsharded model state on the main process (``accelerator.get_state_dict``), except FSDP on CPU
    processes: there the gathered tensors are already on the CPU, and torch's CPU offload of them crashes."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP and accelerator.device.type == "cpu":
        from torch.distributed.fsdp import FullStateDictConfig, FullyShardedDataParallel as FSDP, StateDictType

        with FSDP.state_dict_type(model, StateDictType.FULL_STATE_DICT,
                                  FullStateDictConfig(offload_to_cpu=False, rank0_only=True)):
            return model.state_dict()
    return accelerator.get_state_dict(model)


def _sharded(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def _all_reduce_grads(params: list[torch.nn.Parameter], world: int) -> None:
    """Average gradients over processes by hand (the window's last micro-batch, which would have synchronised
    them under DDP, was skipped as a loss spike)."""
    import torch.distributed as dist

    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(world)


def _eval_batches(task: TrainTask, dataset, o: CommonOptions) -> list:
    n = min(len(dataset), max(1, o.eval_batches) * o.batch_size)
    batches = [list(range(i, min(i + o.batch_size, n))) for i in range(0, n, o.batch_size)]
    return [task.collate([dataset[i] for i in b]) for b in batches]
