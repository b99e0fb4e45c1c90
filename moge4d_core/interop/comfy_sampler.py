"""Drive a MoGe4D velocity model with a ComfyUI ``SAMPLER`` (duck-typed; ComfyUI is never imported here).

ComfyUI's ``KSAMPLER.sample(model_wrap, sigmas, extra_args, callback, noise, latent_image, denoise_mask,
disable_pbar)`` (comfy/samplers.py, v0.21) expects ``model_wrap`` to be a *denoiser*:
``model_wrap(x, sigma (B,), model_options=..., seed=...) -> denoised x0``, and touches

* ``model_wrap.inner_model.model_sampling`` — ``noise_scaling`` / ``inverse_noise_scaling`` / ``sigma_max``
  (KSAMPLER.sample, max_denoise), and, through ``KSamplerX0Inpaint``, ``model_wrap.inner_model.
  scale_latent_inpaint`` when a denoise mask is given;
* in the k-diffusion samplers ``model.inner_model.inner_model.model_sampling`` (an ``isinstance(...,
  comfy.model_sampling.CONST)`` test selects the rectified-flow variants of the ancestral/SDE samplers) and
  ``model.inner_model.model_patcher.get_model_object("model_sampling")`` (the log-SNR based samplers).

:class:`ComfyFlowDenoiser` provides all of these for the flow convention of ``comfy.model_sampling.CONST`` +
``ModelSamplingDiscreteFlow`` (``x = (1 − σ)·x0 + σ·ε``, ``denoised = x − σ·v``, ``timestep = 1000·σ``).  The
built-in :class:`FlowModelSampling` is a duck-typed copy of those two classes; because it is not a subclass of
``comfy.model_sampling.CONST``, the node layer (which may import ComfyUI) should pass a real instance, e.g.
``type("MS", (ModelSamplingDiscreteFlow, CONST), {})()`` with ``set_parameters(shift=5.0)``, as
``model_sampling=`` so ancestral/SDE samplers take their flow branch.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from ..errors import require
from ..sampling.schedules import time_shift

__all__ = ["FlowModelSampling", "ComfyFlowDenoiser", "sample_with_comfy_sampler"]

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _reshape_sigma(sigma, ndim: int):
    if isinstance(sigma, torch.Tensor) and sigma.numel() > 1:
        return sigma.reshape(sigma.shape[:1] + (1,) * (ndim - 1))
    return sigma


class FlowModelSampling(torch.nn.Module):
    """Duck-typed ``ModelSamplingDiscreteFlow`` + ``CONST`` (discrete flow, ``shift``, multiplier 1000).

    Args:
        shift: the σ shift ``shift·t / (1 + (shift − 1)·t)`` (1 = none; Wan / the release: 5).
        multiplier: timestep per unit σ (``timestep = multiplier·σ``).
        timesteps: size of the discrete grid: ``sigmas`` (timesteps,) float32 = shifted ``t = k / timesteps``,
            k = 1 .. timesteps, increasing to 1.
    """

    def __init__(self, shift: float = 5.0, multiplier: float = 1000.0, timesteps: int = 1000):
        super().__init__()
        self.shift = float(shift)
        self.multiplier = float(multiplier)
        t = torch.arange(1, timesteps + 1, dtype=torch.float32) / timesteps
        self.register_buffer("sigmas", time_shift(t, self.shift) if self.shift != 1.0 else t)

    @property
    def sigma_min(self) -> torch.Tensor:
        """The smallest σ of the grid (0-dim tensor)."""
        return self.sigmas[0]

    @property
    def sigma_max(self) -> torch.Tensor:
        """The largest σ of the grid, 1 (0-dim tensor)."""
        return self.sigmas[-1]

    def timestep(self, sigma):
        """σ in [0, 1] -> the model's timestep ``multiplier·σ`` (0 .. 1000)."""
        return sigma * self.multiplier

    def sigma(self, timestep):
        """Timestep -> σ: ``timestep / multiplier``, shifted."""
        t = timestep / self.multiplier
        return time_shift(t, self.shift) if self.shift != 1.0 else t

    def percent_to_sigma(self, percent: float) -> float:
        """Fraction of the schedule done (0 .. 1) -> σ: 1 at 0 or below, 0 at 1 or above, else the shifted
        ``1 − percent``."""
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return float(time_shift(1.0 - percent, self.shift))

    # CONST
    def calculate_input(self, sigma, noise):
        """The model input for ``noise`` at ``sigma``: unchanged (flow models take ``x`` as it is)."""
        return noise

    def calculate_denoised(self, sigma, model_output, model_input):
        """Velocity -> x0: ``model_input − σ·model_output``; ``sigma`` scalar or (B,), broadcast over the batch."""
        return model_input - model_output * _reshape_sigma(sigma, model_output.ndim)

    def noise_scaling(self, sigma, noise, latent_image, max_denoise: bool = False):
        """The sampler's start ``σ·noise + (1 − σ)·latent_image`` (``sigma`` scalar or (B,)); ``max_denoise``
        is ignored."""
        sigma = _reshape_sigma(sigma, noise.ndim)
        return sigma * noise + (1.0 - sigma) * latent_image

    def inverse_noise_scaling(self, sigma, latent):
        """The sampler's final latent divided by ``1 − σ`` (σ = the last sigma, 0 for a full schedule)."""
        return latent / (1.0 - _reshape_sigma(sigma, latent.ndim))


class _Patcher:
    """The one ``ModelPatcher`` method the k-diffusion samplers call."""

    def __init__(self, owner: "ComfyFlowDenoiser"):
        self._owner = owner

    def get_model_object(self, name: str) -> Any:
        return getattr(self._owner, name)


class ComfyFlowDenoiser:
    """Flow denoiser ``(x, sigma (B,) or scalar) -> x − σ·v(x, σ)`` with the attributes ComfyUI samplers use.

    ``model_fn(x (B, ...), sigma) -> v`` is our velocity model; it receives a 0-dim σ tensor when all batch
    items share one σ (always, for ComfyUI's samplers) and the ``(B,)`` tensor otherwise.  ``progress`` is
    not handled here (see :func:`sample_with_comfy_sampler`).
    """

    def __init__(self, model_fn: VelocityFn, *, shift: float = 5.0, model_sampling: Optional[Any] = None):
        """Wrap ``model_fn``.

        Args:
            model_fn: our velocity model ``model_fn(x, sigma) -> v`` of the shape of ``x``.
            shift: σ shift of the built-in :class:`FlowModelSampling` (used when ``model_sampling`` is None).
            model_sampling: a ComfyUI ``ModelSamplingDiscreteFlow + CONST`` instance, or None.
        """
        self.model_fn = model_fn
        self.model_sampling = model_sampling if model_sampling is not None else FlowModelSampling(shift)
        self.inner_model = self          # KSAMPLER: model_wrap.inner_model.model_sampling
        self.model_patcher = _Patcher(self)
        self.model_options: dict = {}

    def __call__(self, x: torch.Tensor, sigma, model_options: Optional[dict] = None, seed=None, **_: Any):
        """Denoise: ``x`` (B, ...) at ``sigma`` (scalar or (B,)) -> x0 estimate ``x − σ·v`` in the dtype of ``x``.

        ``model_fn`` gets σ as float32 (0-dim when all batch items share it); ``model_options`` and ``seed``
        are ignored.
        """
        sigma = torch.as_tensor(sigma, device=x.device)
        flat = sigma.reshape(-1)
        s = flat[0] if bool((flat == flat[0]).all()) else flat
        v = self.model_fn(x, s.to(torch.float32)).to(x.dtype)
        return self.model_sampling.calculate_denoised(sigma.to(x.dtype), v, x)

    def scale_latent_inpaint(self, sigma, noise, latent_image, **_: Any):
        """``KSamplerX0Inpaint``'s noised latent: ``σ·noise + (1 − σ)·latent_image`` with the first σ of
        ``sigma``."""
        return self.model_sampling.noise_scaling(torch.as_tensor(sigma).reshape(-1)[:1].to(noise), noise,
                                                 latent_image)

    def process_latent_in(self, latent):
        """Identity (our latents are already in the model's space)."""
        return latent

    def process_latent_out(self, latent):
        """Identity (our latents stay in the model's space)."""
        return latent


def sample_with_comfy_sampler(sampler: Any, sigmas: torch.Tensor, model_fn: VelocityFn, noise: torch.Tensor, *,
                              latent_image: Optional[torch.Tensor] = None,
                              denoise_mask: Optional[torch.Tensor] = None,
                              callback: Optional[Callable[[int, int], None]] = None, seed: int = 0,
                              shift: float = 5.0, model_sampling: Optional[Any] = None,
                              disable_pbar: bool = True) -> torch.Tensor:
    """Run a ComfyUI ``SAMPLER`` (anything with KSAMPLER's ``.sample``) on our velocity model.

    ``sigmas`` 1-D (ComfyUI ``SIGMAS``), ``noise``/``latent_image`` (B, ...); the sampler itself starts from
    ``σ0·noise + (1 − σ0)·latent_image`` (latent defaults to zeros).  ``callback(done, total)`` is called after
    each step (ComfyUI's callback ``(i, denoised, x, total)`` is adapted) and may raise to cancel.

    Args:
        sampler: a ComfyUI ``SAMPLER`` (e.g. from ``KSamplerSelect``).
        sigmas: (S+1,) decreasing σ in [0, 1] for S steps.
        model_fn: our velocity model ``model_fn(x, sigma) -> v``.
        noise: (B, ...) the initial noise, e.g. a latent (1, 16, F, h, w); sigmas move to its device.
        latent_image: (B, ...) the clean latent to start from (None: zeros). denoise_mask: ComfyUI's denoise mask.
        callback: ``callback(done, total)``. seed: passed to the sampler (its own noise for ancestral / SDE steps).
        shift: σ shift of the built-in model sampling. model_sampling: a real ComfyUI model sampling, or None.
        disable_pbar: hide ComfyUI's progress bar.

    Returns:
        the sampler's final latent, the shape of ``noise``.

    Raises:
        MoGe4DInputError: ``sigmas`` not 1-D with at least 2 values; ``sampler`` without a ``.sample`` method.
    """
    sigmas = torch.as_tensor(sigmas)
    require(sigmas.ndim == 1 and sigmas.shape[0] >= 2,
            f"SIGMAS: expected a 1-D tensor with >= 2 values, got shape {tuple(sigmas.shape)}")
    require(hasattr(sampler, "sample"), f"SAMPLER: expected a ComfyUI sampler object with .sample(...), got "
                                        f"{type(sampler).__name__}")
    # some ComfyUI samplers edit SIGMAS in place (e.g. the first σ offset of the log-SNR samplers): work on a copy
    sigmas = sigmas.to(noise.device).clone()
    if latent_image is None:
        latent_image = torch.zeros_like(noise)
    denoiser = ComfyFlowDenoiser(model_fn, shift=shift, model_sampling=model_sampling)
    extra_args = {"model_options": {"transformer_options": {"sample_sigmas": sigmas}}, "seed": seed}
    k_cb = None
    if callback is not None:
        def k_cb(i, denoised, x, total):
            callback(int(i) + 1, int(total))
    return sampler.sample(denoiser, sigmas, extra_args, k_cb, noise, latent_image, denoise_mask, disable_pbar)


def scheduled_sigmas(calculate: Callable[[int], torch.Tensor], steps: int, denoise: float) -> torch.Tensor:
    """ComfyUI's ``BasicScheduler`` rule for a partial denoise: a schedule of ``steps / denoise`` steps, of which
    the last ``steps + 1`` sigmas are kept.

    Args:
        calculate: ``calculate(n) -> sigmas (n + 1,)`` for ``n`` steps (e.g. ``comfy.samplers.calculate_sigmas``).
        steps: steps to run.
        denoise: in (0, 1].

    Returns:
        ``(steps + 1,)`` sigmas, CPU.
    """
    require(0.0 < float(denoise) <= 1.0, f"denoise: expected a value in (0, 1], got {denoise}")
    total = int(steps / denoise) if denoise < 1.0 else int(steps)
    return calculate(total).cpu()[-(int(steps) + 1):]
