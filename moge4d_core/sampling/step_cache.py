"""Step caching for the MoGe4D DiTs: diffusers' cache hooks, chosen by one setting string.

A step cache skips DiT work that barely changes from one sampling step to the next. The hooks are diffusers'
(``CacheMixin.enable_cache``; our DiTs subclass ``WanTransformer3DModel``); this module picks them from one
string, points them at our modules and runs them for one sampling run (:func:`step_cache`):

* ``first_block[:T]`` (``FirstBlockCacheConfig``, T = 0.05): the first block always runs; when its residual changed
  by less than T (relative L1) since the last full step, the other blocks are skipped and their cached residual
  added.
* ``mag[:T]`` (``MagCacheConfig``, T = 0.06): skips all blocks while the accumulated error predicted from the
  model's residual-magnitude ratios stays under T (at most 3 steps in a row, never in the first 20 % of steps). The
  ratios are model-dependent: the first run of a model with ``mag`` calibrates them (it skips nothing and records
  them on the model, :func:`mag_ratios`); later runs use them (diffusers interpolates to another step count).
* ``taylorseer[:N]`` (``TaylorSeerCacheConfig``, N = 3): the blocks run fully on the first 3 steps and then every
  N-th step; in between, the block stack's output is extrapolated (first-order Taylor) and no block runs.
  diffusers' default identifiers match no Wan module name (``blocks.0.attn1`` is not ``^blocks.*attn``), so the
  hooks are pointed at our blocks here.
* ``pab[:K]`` (``PyramidAttentionBroadcastConfig``, K = 2): self-attention is recomputed every K-th step for
  timesteps in (100, 800) and reused in between (the blocks themselves run).
* ``faster`` (``FasterCacheConfig``): attention reuse plus skipping the unconditional half of a batched CFG pass;
  needs batched CFG (the default) with cfg != 1. Our conditioning inputs are added to the names it splits.

Off (``None`` / ``""`` / ``"off"``) is the default and runs the model exactly as without this module. Each model
call runs inside ``model.cache_context(name)`` (``"cfg"`` for a batched CFG pass, ``"cond"`` / ``"uncond"`` for two
passes), which every diffusers cache needs to keep its per-branch state.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator, Optional

import torch

from ..errors import MoGe4DInputError

__all__ = ["CACHE_KINDS", "CACHE_PRESETS", "StepCache", "parse_step_cache", "CacheRun", "step_cache", "mag_ratios",
           "BlockCounter"]

#: kind -> (value meaning, default value, value type)
CACHE_KINDS = {
    "first_block": ("threshold", 0.05, float),
    "mag": ("threshold", 0.06, float),
    "taylorseer": ("interval", 3, int),
    "pab": ("skip", 2, int),
    "faster": (None, None, None),
}
_OFF = ("", "off", "none")
#: the settings a node's ``cache`` widget offers (any :func:`parse_step_cache` string works in the CLI / settings)
#: (nano held-out set, 20 steps: taylorseer:3 and first_block:0.15 skip about half the block evaluations for
#: at most ~1 % trajectory-error change; see RESULTS.md)
CACHE_PRESETS = ("off", "first_block:0.05", "first_block:0.1", "first_block:0.15", "first_block:0.2", "mag",
                 "taylorseer:2", "taylorseer:3", "taylorseer:4", "pab:2", "faster")

# FasterCache splits these inputs of a batched CFG pass (diffusers' names plus our conditioning inputs).
_CFG_SPLIT_INPUTS = ("hidden_states", "encoder_hidden_states", "encoder_hidden_states_image", "timestep",
                     "control", "start_image", "depth", "ref_latent", "motion_features", "mask", "masked_video")


def _valid() -> str:
    parts = ["off"] + [k if v[0] is None else f"{k}[:{v[0].upper()}] (default {v[1]})" for k, v in CACHE_KINDS.items()]
    return ", ".join(parts)


@dataclass(frozen=True)
class StepCache:
    """One parsed cache setting: ``kind`` in :data:`CACHE_KINDS`, ``value`` its threshold / interval / skip."""

    kind: str
    value: Optional[float] = None

    def __str__(self) -> str:
        return self.kind if self.value is None else f"{self.kind}:{self.value:g}"


def parse_step_cache(text) -> Optional[StepCache]:
    """``"first_block:0.1"`` / ``"mag"`` / ``"taylorseer:4"`` / ``"pab"`` / ``"faster"`` / ``"off"`` -> setting.

    Args:
        text: the setting string (None, ``""``, ``"off"`` = no cache) or a :class:`StepCache`.

    Returns:
        the :class:`StepCache`, or None for off.

    Raises:
        MoGe4DInputError: an unknown kind or a bad value; the message lists the valid settings.
    """
    if text is None or isinstance(text, StepCache):
        return text
    s = str(text).strip().lower()
    if s in _OFF:
        return None
    kind, sep, raw = s.partition(":")
    kind = kind.strip().replace("-", "_")
    if kind not in CACHE_KINDS:
        raise MoGe4DInputError(f"cache {text!r}: unknown setting; valid: {_valid()}")
    what, default, typ = CACHE_KINDS[kind]
    if not sep:
        return StepCache(kind, default)
    if what is None:
        raise MoGe4DInputError(f"cache {text!r}: '{kind}' takes no value; valid: {_valid()}")
    try:
        value = typ(raw.strip())
    except ValueError:
        raise MoGe4DInputError(f"cache {text!r}: the {what} must be a{'n integer' if typ is int else ' number'}; "
                               f"valid: {_valid()}") from None
    if not (value > 0 and (typ is float or value >= 1)) or value != value:
        raise MoGe4DInputError(f"cache {text!r}: the {what} must be > 0; valid: {_valid()}")
    return StepCache(kind, value)


# ---------------------------------------------------------------------------------------------- MagCache ratios
def mag_ratios(model: torch.nn.Module) -> Optional[torch.Tensor]:
    """The MagCache magnitude ratios calibrated on ``model`` (one per model call of the calibrating run), or None."""
    return getattr(model, "_moge4d_mag_ratios", None)


class _MagCalibration:
    """Records ``mean_token(|r_t| / |r_{t-1}|)`` of the block-stack residual ``r = out(last) - in(first)`` per
    cache context (MagCache's calibration formula), with plain forward hooks on the first and last block."""

    def __init__(self, model: torch.nn.Module, run: "CacheRun"):
        self.run, self.model = run, model
        self.inputs: dict = {}
        self.prev: dict = {}
        self.ratios: dict = {}
        blocks = model.blocks
        self.handles = [blocks[0].register_forward_pre_hook(self._pre, with_kwargs=True),
                        blocks[-1].register_forward_hook(self._post)]

    def _pre(self, module, args, kwargs):
        self.inputs[self.run.name] = args[0] if args else kwargs["hidden_states"]

    def _post(self, module, args, output):
        name = self.run.name
        res = (output - self.inputs.pop(name)).float()
        prev = self.prev.get(name)
        ratio = 1.0 if prev is None else float((res.norm(dim=-1) / (prev.norm(dim=-1) + 1e-8)).mean())
        self.ratios.setdefault(name, []).append(ratio)
        self.prev[name] = res

    def finish(self) -> None:
        for h in self.handles:
            h.remove()
        if self.ratios:
            longest = max(self.ratios.values(), key=len)
            if len(longest) >= 2:
                self.model._moge4d_mag_ratios = torch.tensor(longest)


# ---------------------------------------------------------------------------------------------- one run
@dataclass
class CacheRun:
    """The cache of one sampling run: enter :meth:`context` around every model call."""

    model: torch.nn.Module
    setting: Optional[StepCache] = None
    name: str = "cond"
    timestep: float = 1000.0
    calibrating: bool = False
    _calibration: Optional[_MagCalibration] = field(default=None, repr=False)

    @contextlib.contextmanager
    def context(self, name: str, timestep: torch.Tensor) -> Iterator[None]:
        """Run one model call as cache branch ``name`` (``"cfg"``, ``"cond"``, ``"uncond"``) at ``timestep``."""
        self.name = name
        self.timestep = float(timestep.reshape(-1)[0])
        if getattr(self.model, "is_cache_enabled", False):
            with self.model.cache_context(name):
                yield
        else:
            yield


def _config(setting: StepCache, model: torch.nn.Module, calls: int, run: CacheRun):
    from diffusers import (FasterCacheConfig, FirstBlockCacheConfig, MagCacheConfig,
                           PyramidAttentionBroadcastConfig, TaylorSeerCacheConfig)

    def clock() -> float:
        return run.timestep

    kind, v = setting.kind, setting.value
    if kind == "first_block":
        return FirstBlockCacheConfig(threshold=float(v))
    if kind == "mag":
        return MagCacheConfig(threshold=float(v), num_inference_steps=calls, mag_ratios=mag_ratios(model).clone())
    if kind == "taylorseer":
        n = len(model.blocks)
        # the block stack's output is extrapolated (last block, Taylor), the blocks before it return nothing
        return TaylorSeerCacheConfig(cache_interval=int(v), disable_cache_before_step=3, max_order=1,
                                     taylor_factors_dtype=torch.float32,
                                     skip_predict_identifiers=[rf"blocks\.{i}" for i in range(n - 1)],
                                     cache_identifiers=[rf"blocks\.{n - 1}"])
    if kind == "pab":
        return PyramidAttentionBroadcastConfig(spatial_attention_block_skip_range=int(v),
                                               spatial_attention_timestep_skip_range=(100, 800),
                                               current_timestep_callback=clock)
    config = FasterCacheConfig(spatial_attention_block_skip_range=2, spatial_attention_timestep_skip_range=(-1, 681),
                               unconditional_batch_skip_range=5, unconditional_batch_timestep_skip_range=(-1, 781),
                               tensor_format="BCFHW", current_timestep_callback=clock,
                               attention_weight_callback=lambda _: 0.5)
    config._unconditional_conditional_input_kwargs_identifiers = list(_CFG_SPLIT_INPUTS)
    return config


def _count_hooks(model: torch.nn.Module) -> int:
    from diffusers.hooks import HookRegistry

    n = 0
    for m in model.modules():
        reg = getattr(m, "_diffusers_hook", None)
        if isinstance(reg, HookRegistry):
            n += len(reg.hooks)
    return n


@contextlib.contextmanager
def step_cache(model: torch.nn.Module, setting, *, calls: int, batched_cfg: Optional[bool] = None
               ) -> Iterator[CacheRun]:
    """Enable the cache ``setting`` on ``model`` for one sampling run, then remove it.

    Args:
        model: the DiT (a diffusers ``CacheMixin``, e.g. ``STraGDiT`` / ``ViSMDiT``).
        setting: a setting string or :class:`StepCache` (:func:`parse_step_cache`); off runs the model untouched.
        calls: model calls per branch in the run (the number of steps for our solvers).
        batched_cfg: True when the run passes ``[uncond; cond]`` in one batch, False for two passes, None without
            CFG (``faster`` needs True).

    Yields:
        the :class:`CacheRun` whose :meth:`CacheRun.context` wraps each model call.
    """
    setting = parse_step_cache(setting)
    run = CacheRun(model, setting)
    if setting is None:
        yield run
        return
    if not hasattr(model, "enable_cache") or not hasattr(model, "blocks"):
        raise MoGe4DInputError(f"cache {setting}: the model ({type(model).__name__}) is not a diffusers DiT with "
                               f"cache support; use cache 'off'")
    if setting.kind == "faster" and batched_cfg is not True:
        raise MoGe4DInputError(f"cache {setting}: FasterCache needs batched classifier-free guidance (cfg != 1 and "
                               f"batched CFG on); pick another cache or turn CFG batching on")
    if getattr(model, "is_cache_enabled", False):
        raise MoGe4DInputError(f"cache {setting}: the model already has a cache enabled; disable it first")
    if setting.kind == "mag" and mag_ratios(model) is None:
        # first run with MagCache: calibrate the model's ratios (nothing skipped), keep them on the model
        run.calibrating = True
        run._calibration = _MagCalibration(model, run)
        try:
            yield run
        finally:
            run._calibration.finish()
        return
    model.enable_cache(_config(setting, model, max(int(calls), 1), run))
    try:
        if _count_hooks(model) == 0:
            raise MoGe4DInputError(f"cache {setting}: no cache hook attached to {type(model).__name__}")
        model._reset_stateful_cache()
        yield run
    finally:
        model.disable_cache()


# ---------------------------------------------------------------------------------------------- measuring
class BlockCounter:
    """Counts the DiT blocks and attention layers that really run (cached / skipped ones are not counted).

    A block counts when its first norm runs (``norm1``; a skipped block returns before it); an attention layer
    when its query projection runs. Each counts once per batch item, so a batched CFG pass counts 2 and a
    skipped unconditional half (``faster``) is seen. Use as a context manager around sampling::

        with BlockCounter(model) as c:
            ...
        c.blocks, c.attention
    """

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.blocks = 0
        self.attention = 0
        self._handles: list = []

    def __enter__(self) -> "BlockCounter":
        for block in self.model.blocks:
            self._handles.append(block.norm1.register_forward_hook(self._block))
            for attn in (block.attn1, block.attn2):
                self._handles.append(attn.to_q.register_forward_hook(self._attn))
        return self

    def _block(self, module, args, output):
        self.blocks += int(output.shape[0])

    def _attn(self, module, args, output):
        self.attention += int(output.shape[0])

    def __exit__(self, *exc) -> bool:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        return False

