"""Sampler settings of the two diffusion stages, and the release's ``compat`` preset (reference §A8, §C, §J).

:class:`SamplerSettings` holds what a user picks on a sampler node (steps, CFG, shift, seed, solver, partial
schedules); :class:`NativeSampler` carries a ComfyUI ``SAMPLER`` (+ optional ``SIGMAS``) that replaces our
solver.  ``COMPAT_TRAJECTORY`` / ``COMPAT_INPAINT``: Euler flow, shift 5, 50 steps, CFG 6, empty negative
prompt, seeds ``seed`` and ``seed + 1`` as the released ``infer.py`` uses them.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Optional

import torch

from ..errors import require
from ..sampling import SOLVERS, denoise_sigmas, truncate_sigmas
from ..sampling.step_cache import parse_step_cache

__all__ = ["SamplerSettings", "NativeSampler", "COMPAT_TRAJECTORY", "COMPAT_INPAINT", "compat_settings"]


@dataclass(frozen=True)
class SamplerSettings:
    """steps ≥ 1; cfg (1 = no guidance, the negative branch is skipped); shift of the σ grid; seed (noise is
    drawn on the CPU, so a seed gives the same result on every device); solver in ``SOLVERS``;
    denoise ∈ (0,1] (partial schedule, KSampler style); start_step/end_step cut the schedule;
    batched_cfg: one 2B forward pass (official) instead of two B passes (less memory); cache: a step-cache setting
    (``"first_block:0.1"``, ``"mag"``, ``"taylorseer"``, ``"pab"``, ``"faster"``; None / ``"off"`` = off, the
    default and the release's), see :mod:`moge4d_core.sampling.step_cache`; parallel: None (one process) or ``"cfg"``
    (the two guidance branches on two ``torch.distributed`` ranks, :mod:`moge4d_core.sampling.parallel`)."""

    steps: int = 50
    cfg: float = 6.0
    shift: float = 5.0
    seed: int = 0
    solver: str = "euler"
    denoise: float = 1.0
    start_step: int = 0
    end_step: Optional[int] = None
    batched_cfg: bool = True
    cache: Optional[str] = None
    parallel: Optional[str] = None

    def __post_init__(self) -> None:
        require(isinstance(self.steps, int) and self.steps >= 1, f"steps: expected an integer >= 1, got {self.steps!r}")
        require(self.cfg >= 0, f"cfg: expected a value >= 0, got {self.cfg!r} (the release uses 6.0)")
        require(self.solver in SOLVERS, f"solver: expected one of {SOLVERS}, got {self.solver!r}")
        cache = parse_step_cache(self.cache)                      # refuses unknown settings, listing the valid ones
        object.__setattr__(self, "cache", None if cache is None else str(cache))
        from ..sampling.parallel import PARALLEL_MODES
        require(self.parallel is None or self.parallel in PARALLEL_MODES,
                f"parallel: expected None or one of {PARALLEL_MODES}, got {self.parallel!r}")

    def sigmas(self) -> torch.Tensor:
        """σ schedule (float32, decreasing) after denoise and start/end steps.

        Returns:
            (S+1,) float32 σ in [0, 1] on the CPU, S = the steps that run: ``steps``, fewer after the start/end
            cut.
        """
        s = denoise_sigmas(self.steps, self.denoise, self.shift)
        if self.start_step or self.end_step is not None:
            s = truncate_sigmas(s, self.start_step, self.end_step)
        return s

    def replace(self, **changes: Any) -> "SamplerSettings":
        """A copy with ``changes`` (field name -> value), validated again."""
        return replace(self, **changes)


@dataclass
class NativeSampler:
    """A ComfyUI ``SAMPLER`` object (from ``KSamplerSelect`` etc.) and optional ``SIGMAS`` (else ours).

    ``model_sampling``: a real ComfyUI ``ModelSamplingDiscreteFlow + CONST`` instance (the node layer builds it)
    so ancestral / SDE samplers take their flow branch; None uses the duck-typed copy.
    """

    sampler: Any
    sigmas: Optional[torch.Tensor] = None
    model_sampling: Any = None


COMPAT_TRAJECTORY = SamplerSettings(steps=50, cfg=6.0, shift=5.0, seed=0, solver="euler")
COMPAT_INPAINT = COMPAT_TRAJECTORY.replace(seed=1)


def compat_settings(seed: int = 0) -> tuple[SamplerSettings, SamplerSettings]:
    """The released settings for a seed: (trajectory stage with ``seed``, inpainting stage with ``seed + 1``)."""
    return COMPAT_TRAJECTORY.replace(seed=seed), COMPAT_INPAINT.replace(seed=seed + 1)
