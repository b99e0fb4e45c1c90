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


class _Run:
    """One training run of ``task`` on a prepared ``accelerator``: the steps of :func:`run`, in order
    (:meth:`resolve_resume`, :meth:`build`, :meth:`prepare`, :meth:`restore`, :meth:`open_logs`, then :meth:`step`
    until the last one, :meth:`finish`), sharing the run's state."""

    def __init__(self, task: TrainTask, accelerator, callbacks: list) -> None:
        self.task, self.o, self.accelerator, self.callbacks = task, task.o, accelerator, callbacks
        self.out = Path(task.o.out)
        self.main = accelerator.is_main_process
        self.world, self.rank, self.device = accelerator.num_processes, accelerator.process_index, accelerator.device
        self.sharded = _sharded(accelerator)
        self.evals: list[dict] = []
        self.checkpoints: list[Path] = []
        self.step = self.epoch = self.bidx = self.samples_seen = 0
        self.losses: list[float] = []

    def say(self, msg: str) -> None:
        if self.main:
            print(f"[{self.task.name}] {msg}", file=sys.stderr, flush=True)

    # -- set-up steps
    def resolve_resume(self) -> None:
        """The ``--resume`` target and its validated state, before anything is built or written."""
        o = self.o
        self.resume_path = resolve_resume(o.resume, self.out, log=self.say)
        if o.resume == "latest" and self.resume_path is None:
            self.say(f"--resume latest: no checkpoint in {self.out}; starting from scratch")
        if self.resume_path is not None:
            refuse_resume_under_deepspeed(self.accelerator, self.resume_path)
        self.saved_state = validate_checkpoint(self.resume_path) if self.resume_path is not None else None

    def build(self) -> None:
        """The task's model and data (seeded), the batch plan, the step count and the compat record."""
        from accelerate.utils import set_seed

        o, task = self.o, self.task
        set_seed(o.seed)
        task.setup(self.device)
        self.model = task.model
        self.trainable_names = [n for n, p in self.model.named_parameters() if p.requires_grad]
        if not self.trainable_names:
            raise MoGe4DInputError(f"{task.name}: no trainable parameters (check the trainer's options)")
        self.train_ds, self.eval_ds = task.datasets()
        self.plan = BatchPlan(self.train_ds, o.batch_size, self.world, self.rank, o.seed)
        self.total = int(o.max_steps) if o.max_steps else max(1, (o.epochs * self.plan.batches_per_epoch) // o.grad_accum)
        self.compat = dict(task.compat())
        self.compat["data_order"] = {"seed": o.seed, "batch_size": o.batch_size, "grad_accum": o.grad_accum,
                                     "processes": self.world, "samples": len(self.train_ds)}
        if self.saved_state is not None:
            check_compatible(self.saved_state.get("compat", {}), self.compat, self.resume_path)

    def prepare(self) -> None:
        """Resumed weights (before wrapping, so DDP / FSDP start from them everywhere), optimizer, lr schedule and
        the accelerate wrapping."""
        from diffusers.optimization import get_scheduler

        o, acc = self.o, self.accelerator
        if self.resume_path is not None:
            load_trainable_weights(self.resume_path, self.model, self.trainable_names)
        optimizer = make_optimizer(self.task.param_groups(), o)
        self.scheduler = get_scheduler(o.lr_scheduler, optimizer, num_warmup_steps=o.warmup_steps,
                                       num_training_steps=self.total)
        _fill_deepspeed_auto(acc, o)
        self.model, self.optimizer = acc.prepare(self.model, optimizer)
        self.unwrapped = acc.unwrap_model(self.model)
        self.trainable_params = [p for p in self.unwrapped.parameters() if p.requires_grad]
        # FSDP clips through the wrapped module (its own clip_grad_norm_ over the shards); elsewhere the trainable tensors
        self.clip_params = list(self.model.parameters()) if self.sharded else self.trainable_params

    def restore(self) -> None:
        """The loss-spike guard and, on resume, the data position, loss history and optimizer / RNG states."""
        o = self.o
        self.guard = LossSpikeGuard(k=o.spike_k, window=o.spike_window, warmup=o.spike_warmup, max_loss=o.spike_max,
                                    abs_threshold=o.spike_abs, abs_after=o.spike_abs_after)
        if self.resume_path is None:
            return
        st = load_checkpoint(self.accelerator, self.resume_path, optimizer=self.optimizer, scheduler=self.scheduler,
                             model=self.model)
        self.step, self.epoch, self.bidx = int(st["step"]), int(st["epoch"]), int(st["batch_in_epoch"])
        self.samples_seen, self.losses = int(st.get("samples_seen", 0)), [float(x) for x in st.get("losses", [])]
        self.guard.load_state_dict(st.get("guard", {}))
        self.say(f"resumed from {self.resume_path} at step {self.step} (epoch {self.epoch}, batch {self.bidx})")

    def open_logs(self) -> None:
        """The run logger and the fixed evaluation batches."""
        o = self.o
        self.logger = RunLogger(self.out / "logs", enabled=self.main, tensorboard=o.tensorboard, echo=self.say)
        if self.logger.tensorboard_note:
            self.task.notes.append(self.logger.tensorboard_note)
        self.eval_batches = None
        if o.eval_every:
            self.eval_batches = _eval_batches(self.task, self.eval_ds if self.eval_ds is not None else self.train_ds, o)

    def emit(self, record: dict) -> None:
        self.logger.log(record)
        if self.main:
            for cb in self.callbacks:
                cb(dict(record))

    # -- evaluation, checkpoints, exports
    def evaluate(self, at: int) -> None:
        """The task's loss on the fixed evaluation batches with fixed draws (stream 1), logged at step ``at``."""
        self.model.eval()
        vals = []
        with torch.no_grad():
            for i, batch in enumerate(self.eval_batches):
                g = step_generator(self.o.seed, 0, i, 0, self.device, stream=1)
                loss, _ = self.task.loss(self.model, batch, g)
                vals.append(float(loss.detach().float().item()))
        self.model.train()
        rec = {"kind": "eval", "step": at, "loss": float(np.mean(vals)) if vals else float("nan"), "batches": len(vals)}
        self.evals.append(rec)
        self.emit(rec)

    def trainer_state(self) -> dict:
        e, b = (self.epoch + 1, 0) if self.bidx >= self.plan.batches_per_epoch else (self.epoch, self.bidx)
        return {"format": 1, "task": self.task.name, "step": self.step, "epoch": e, "batch_in_epoch": b,
                "sampler_seed": self.o.seed, "samples_seen": self.samples_seen, "losses": self.losses,
                "guard": self.guard.state_dict(), "compat": self.compat, "total_steps": self.total,
                "written": time.strftime("%Y-%m-%dT%H:%M:%S")}

    def trainable_state(self) -> Optional[dict]:
        if self.sharded:
            full = _full_state_dict(self.accelerator, self.model)
            return {k: full[k] for k in self.trainable_names} if self.main else None
        named = dict(self.unwrapped.named_parameters())
        return {k: named[k] for k in self.trainable_names} if self.main else None

    def export(self, folder: Path) -> dict[str, Path]:
        """The task's loader-ready exports of the current weights (gathered first when sharded; main process)."""
        if self.sharded:
            full = _full_state_dict(self.accelerator, self.model)
            if not self.main:
                return {}
            m = self.task.empty_model()
            m.load_state_dict(full, strict=True, assign=True)
            return self.task.export(m, folder)
        return self.task.export(self.unwrapped, folder) if self.main else {}

    def checkpoint(self) -> None:
        export_fn = self.export if self.o.export_checkpoints and not self.sharded else None
        path = save_checkpoint(self.accelerator, self.out, self.step, trainer_state=self.trainer_state(),
                               trainable=self.trainable_state(), keep=self.o.keep_checkpoints,
                               optimizer=self.optimizer, scheduler=self.scheduler, model=self.model, export_fn=export_fn)
        self.checkpoints.append(path)
        self.emit({"kind": "checkpoint", "step": self.step, "path": str(path)})

    # -- training
    def step_once(self, stream: Iterator) -> dict:
        """One optimizer step over ``--grad-accum`` micro-batches of ``stream``; loss spikes are skipped on every
        process. Returns the step's train record (before the log filter)."""
        o, acc = self.o, self.accelerator
        t0 = time.perf_counter()
        kept: list[float] = []
        backwarded = last_skipped = False
        metrics_acc: dict[str, list[float]] = {}
        grad_norm = None
        for micro in range(o.grad_accum):
            self.epoch, j, batch = next(stream)
            self.bidx = j + 1
            g = step_generator(o.seed, self.step, micro, self.rank, self.device)
            with acc.accumulate(self.model):
                loss, metrics = self.task.loss(self.model, batch, g)
                gathered = acc.gather(loss.detach().float().reshape(1)).mean().item()
                skip, reason = self.guard.check(gathered, self.step + 1)
                if skip:
                    self.emit({"kind": "skip", "step": self.step + 1, "micro": micro, "loss": gathered,
                               "reason": reason})
                else:
                    acc.backward(loss)
                    backwarded = True
                    kept.append(gathered)
                    for k, v in metrics.items():
                        metrics_acc.setdefault(k, []).append(float(v))
                last_skipped = skip
                if acc.sync_gradients:
                    if backwarded:
                        if last_skipped and o.grad_accum > 1 and _ddp_like(acc):
                            _all_reduce_grads(self.trainable_params, self.world)
                        if o.grad_clip:
                            grad_norm = acc.clip_grad_norm_(self.clip_params, o.grad_clip)
                        self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        self.samples_seen += self.per_step
        step_loss = float(np.mean(kept)) if kept else float("nan")
        self.losses.append(step_loss)
        dt = time.perf_counter() - t0
        self.train_time += dt
        self.steps_run += 1
        rec = {"kind": "train", "step": self.step, "epoch": self.epoch, "loss": step_loss,
               "lr": self.scheduler.get_last_lr()[0], "samples_per_s": self.per_step / dt if dt > 0 else float("nan"),
               "skipped_micro": o.grad_accum - len(kept)}
        if grad_norm is not None:
            rec["grad_norm"] = float(grad_norm)
        rec.update({k: float(np.mean(v)) for k, v in metrics_acc.items()})
        return rec

    def train(self) -> None:
        """Steps until ``total``, with logs, periodic checkpoints and evaluations."""
        from tqdm.auto import tqdm

        o = self.o
        if self.main:
            self.say(f"{len(self.train_ds)} samples, {self.plan.batches_per_epoch} batches/epoch/process, "
                     f"{self.world} process(es), {sum(p.numel() for p in self.trainable_params):,} trainable "
                     f"parameters, steps {self.step} -> {self.total}")
        if o.eval_every and self.resume_path is None:
            self.evaluate(0)
        bar = tqdm(total=self.total, initial=self.step, disable=not (self.main and o.progress), desc=self.task.name,
                   dynamic_ncols=True)
        stream = _micro_batches(self.train_ds, self.plan, self.task.collate, o.num_workers, self.epoch, self.bidx)
        self.per_step = o.batch_size * o.grad_accum * self.world
        self.train_time, self.steps_run = 0.0, 0
        self.model.train()
        while self.step < self.total:
            rec = self.step_once(stream)
            step = self.step
            if o.log_every and (step % o.log_every == 0 or step == self.total):
                self.emit(rec)
            bar.update(1)
            bar.set_postfix(loss=f"{rec['loss']:.4g}", sps=f"{rec['samples_per_s']:.2f}")
            if o.checkpoint_every and step % o.checkpoint_every == 0 and step < self.total:
                self.checkpoint()
            if o.eval_every and step % o.eval_every == 0 and step < self.total:
                self.evaluate(step)
        bar.close()

    def finish(self) -> TrainResult:
        """The final checkpoint, evaluation and exports (and weight digests on request); the run's result."""
        o, acc, out = self.o, self.accelerator, self.out
        if self.steps_run or not list_checkpoints(out):
            self.checkpoint()
        if o.eval_every and self.steps_run:
            self.evaluate(self.step)
        acc.wait_for_everyone()
        exports = self.export(out / "export")
        if o.report_digest and not self.sharded:
            (out / "logs").mkdir(parents=True, exist_ok=True)
            named = dict(self.unwrapped.named_parameters())
            (out / "logs" / f"digest-rank{self.rank}.txt").write_text(
                weights_digest({k: named[k] for k in self.trainable_names}))
        acc.wait_for_everyone()
        self.logger.close()
        t = self.train_time
        result = TrainResult(out=out, steps=self.step, losses=self.losses, skipped=self.guard.skipped, evals=self.evals,
                             exports=exports, checkpoints=self.checkpoints, resumed_from=self.resume_path,
                             steps_per_second=self.steps_run / t if t > 0 else float("nan"),
                             samples_per_second=self.steps_run * self.per_step / t if t > 0 else float("nan"),
                             notes=list(self.task.notes))
        self.say(f"done: {self.step} steps, {result.steps_per_second:.3g} steps/s, "
                 f"{result.samples_per_second:.3g} samples/s; "
                 f"exports: {', '.join(f'{k}={v}' for k, v in exports.items())}")
        return result


def _run(task: TrainTask, accelerator, callbacks: list) -> TrainResult:
    r = _Run(task, accelerator, callbacks)
    r.resolve_resume()                # a bad --resume fails before anything is built or written
    r.build()
    r.prepare()
    r.restore()
    r.open_logs()
    r.train()
    return r.finish()


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
