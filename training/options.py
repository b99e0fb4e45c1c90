"""Training options: one dataclass per trainer, turned into an argparse CLI automatically.

Every trainer describes its options once, as a dataclass whose fields carry ``metadata={"help": ...}``;
:func:`build_parser` turns the fields into ``--kebab-case`` flags (``bool`` fields become
``--flag/--no-flag``), and :func:`coerce_options` accepts the dataclass itself, a dict, an
``argparse.Namespace`` or an argv list, so ``train(...)`` and the CLI share one code path.

:class:`CommonOptions` holds what the shared loop (:mod:`training.engine`) needs: data, output folder,
batch size, optimiser, schedule, precision, loss-spike skipping, checkpoints, evaluation and logging.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from moge4d_core.errors import MoGe4DInputError

__all__ = ["CommonOptions", "opt", "build_parser", "coerce_options", "parse_size", "cli_main"]


def opt(default: Any, help: str, **kw: Any):
    """A dataclass field with a help string (``kw``: extra argparse arguments such as ``choices``)."""
    return field(default=default, metadata={"help": help, **kw})


def parse_size(text: Optional[Union[str, tuple, list]], name: str) -> Optional[tuple[int, int]]:
    """``"368x512"`` / ``(368, 512)`` -> ``(368, 512)``; None / ``"none"`` -> None."""
    if text is None:
        return None
    if isinstance(text, (tuple, list)):
        if len(text) != 2:
            raise MoGe4DInputError(f"--{name}: expected HxW, got {text!r}")
        return int(text[0]), int(text[1])
    s = str(text).strip().lower()
    if s in ("", "none", "full"):
        return None
    try:
        h, w = s.split("x")
        out = int(h), int(w)
    except ValueError:
        raise MoGe4DInputError(f"--{name}: expected HxW (e.g. 368x512) or 'none', got {text!r}") from None
    if min(out) < 1:
        raise MoGe4DInputError(f"--{name}: sizes must be positive, got {text!r}")
    return out


@dataclass
class CommonOptions:
    """Options of the shared training loop (defaults follow reference ``moge4d_official.md`` G where it applies)."""

    data: str = opt("", "TrajScene folder or range .tar.gz (the dataset reader: training.datasets.TrajSceneDataset)")
    out: str = opt("", "output folder: checkpoint-<step>/, logs/, export/")
    frames: int = opt(49, "frames per sample (4k+1; official 49)")
    crop: Optional[str] = opt("368x512", "centre crop HxW of the point grid / videos, or 'none' (official 368x512)")
    grid: Optional[str] = opt(None, "HxW of the point grid in the pkl files (default: the DELTA grid 384x512)")
    allow_unsafe_pickle: bool = opt(False, "unpickle the trajectory files without restriction (trusted data only)")
    skip_large_coords: bool = opt(True, "apply the official coords.max() > 500 sample filter")
    num_workers: int = opt(0, "DataLoader worker processes")

    batch_size: int = opt(1, "samples per process and micro-batch")
    grad_accum: int = opt(1, "micro-batches per optimizer step (gradient accumulation)")
    max_steps: Optional[int] = opt(None, "optimizer steps to run (default: --epochs worth of steps)")
    epochs: int = opt(1, "epochs (used when --max-steps is not given)")
    seed: int = opt(42, "seed of the model init, the data order (sampler) and every random draw")

    lr: float = opt(1e-4, "learning rate")
    lr_scheduler: str = opt("constant_with_warmup", "diffusers lr schedule name",
                            choices=["constant", "constant_with_warmup", "linear", "cosine"])
    warmup_steps: int = opt(100, "lr warm-up steps (optimizer steps)")
    weight_decay: float = opt(3e-2, "AdamW weight decay")
    adam_beta1: float = opt(0.9, "AdamW beta1")
    adam_beta2: float = opt(0.999, "AdamW beta2")
    adam_eps: float = opt(1e-10, "AdamW epsilon")
    adam_8bit: bool = opt(False, "8-bit AdamW from bitsandbytes (must be installed)")
    grad_clip: Optional[float] = opt(0.05, "max gradient norm (0 or None: no clipping)")
    mixed_precision: Optional[str] = opt(None, "no | fp16 | bf16 (default: the accelerate config / launch flag)",
                                         choices=["no", "fp16", "bf16"])
    weight_dtype: str = opt("fp32", "dtype of the loaded model weights (bf16 = pure-bf16 training as the release)",
                            choices=["fp32", "bf16", "fp16"])
    gradient_checkpointing: bool = opt(False, "recompute activations in backward (less memory, ~30% slower)")
    ddp_find_unused: bool = opt(False, "DDP find_unused_parameters (only if some trainable weights get no gradient)")
    cpu: bool = opt(False, "force the CPU even when CUDA is available")

    spike_k: float = opt(6.0, "skip a batch whose loss > mean + k*std of the recent losses")
    spike_window: int = opt(1000, "number of recent (kept) losses in that statistic")
    spike_warmup: int = opt(100, "kept losses needed before the mean + k*std rule applies")
    spike_max: float = opt(1e7, "skip a batch whose loss exceeds this (release: 1e7)")
    spike_abs: Optional[float] = opt(None, "also skip losses above this after --spike-abs-after steps (STraG release: 0.25)")
    spike_abs_after: int = opt(50, "optimizer steps before --spike-abs applies (STraG release: 50)")

    checkpoint_every: int = opt(500, "write <out>/checkpoint-<step>/ every N optimizer steps (0: only at the end)")
    keep_checkpoints: int = opt(3, "keep the last K checkpoints")
    export_checkpoints: bool = opt(False, "also write the loader-ready exports into every checkpoint")
    resume: Optional[str] = opt(None, "'latest' (newest checkpoint in --out) or a checkpoint folder")

    eval_every: int = opt(0, "evaluate every N optimizer steps (0: never); also before the first step and at the end")
    eval_batches: int = opt(1, "batches of the evaluation set (first ones, fixed noise)")
    eval_data: Optional[str] = opt(None, "evaluation dataset (default: the training data)")
    log_every: int = opt(1, "write a log record every N optimizer steps")
    progress: bool = opt(True, "show a progress bar (main process)")
    tensorboard: bool = opt(True, "also write TensorBoard events when the tensorboard package is installed")
    report_digest: bool = opt(False, "each process writes logs/digest-rank<k>.txt, a SHA-256 of its final trainable "
                                     "weights (check that all processes hold the same model)")


def _field_type(cls, f: dataclasses.Field):
    hints = typing.get_type_hints(cls)
    t = hints[f.name]
    if typing.get_origin(t) is Union:
        args = [a for a in typing.get_args(t) if a is not type(None)]
        t = args[0] if len(args) == 1 else str
    return t


def build_parser(options_cls: type, prog: str, description: str) -> argparse.ArgumentParser:
    """argparse parser with one ``--kebab-case`` flag per dataclass field (``bool``: ``--x/--no-x``); flags are
    never abbreviated (``--mode`` must not silently mean ``--model``)."""
    ap = argparse.ArgumentParser(prog=prog, description=description, allow_abbrev=False,
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(options_cls):
        meta = dict(f.metadata)
        help_ = meta.pop("help", "")
        flag = "--" + f.name.replace("_", "-")
        t = _field_type(options_cls, f)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if t is bool:
            ap.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=help_)
        else:
            ap.add_argument(flag, dest=f.name, type=t if t in (int, float, str) else str, default=default,
                            help=help_, **meta)
    return ap


def coerce_options(options_cls: type, value: Any, prog: str = "train", description: str = ""):
    """The trainer's options from a dataclass instance, a dict, an ``argparse.Namespace`` or an argv list."""
    if isinstance(value, options_cls):
        return value
    if value is None or isinstance(value, (list, tuple)):
        ns = build_parser(options_cls, prog, description).parse_args(list(value or []))
        return options_cls(**vars(ns))
    if isinstance(value, argparse.Namespace):
        value = vars(value)
    if isinstance(value, dict):
        names = {f.name for f in dataclasses.fields(options_cls)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise MoGe4DInputError(f"{options_cls.__name__}: unknown options {unknown}; known: {sorted(names)}")
        return options_cls(**value)
    raise MoGe4DInputError(f"{options_cls.__name__}: expected options, a dict or an argv list, got {type(value).__name__}")


def cli_main(options_cls: type, train, prog: str, description: str, argv: Optional[list[str]] = None) -> int:
    """A trainer's command line: parse ``argv`` into ``options_cls``, run ``train(options)``; an input error
    (:class:`MoGe4DInputError`) ends the program with its message and exit status 2."""
    ap = build_parser(options_cls, prog, description)
    ns = ap.parse_args(argv)
    try:
        train(options_cls(**vars(ns)))
    except MoGe4DInputError as exc:
        ap.exit(2, f"error: {exc}\n")
    return 0
