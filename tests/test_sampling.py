"""Tests for moge4d_core.sampling: schedules vs diffusers, Euler/UniPC/DPM++ on analytic flows, CFG, seeds,
cancel, and the duck-typed ComfyUI adapter (driven by a k-diffusion style fake SAMPLER written here)."""
import math

import pytest
import torch

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.interop.comfy_sampler import ComfyFlowDenoiser, FlowModelSampling, sample_with_comfy_sampler
from moge4d_core.sampling import (batched_guided_velocity, cfg_combine, denoise_sigmas, euler_step, flow_sigmas,
                                  guided_velocity, make_noise, sample_flow, sigma_to_timestep, truncate_sigmas)

torch.set_num_threads(1)


# ---------------------------------------------------------------- independent helpers (float64, in the test)
def gaussian_flow(m: float, s: float):
    """Exact velocity of the straight-path flow for data x0 ~ N(m, s²) (per element), noise ε ~ N(0, 1).

    x_σ = (1−σ)x0 + σε; E[x0|x] = m + (1−σ)s²/((1−σ)²s²+σ²)·(x − (1−σ)m); v = E[ε − x0 | x].
    The ODE maps ε at σ=1 to m + s·ε at σ=0.
    """
    def v(x, sigma):
        sg = float(sigma)
        var = (1 - sg) ** 2 * s * s + sg * sg
        x0 = m + (1 - sg) * s * s / var * (x - (1 - sg) * m)
        return (x - (1 - sg) * x0) / sg - x0
    return v


def linear_field(x, sigma):
    """Toy velocity, linear in x with σ-dependent coefficients."""
    sg = float(sigma)
    return (0.3 + 0.2 * sg) * x - 0.5 * sg + 0.1


# ---------------------------------------------------------------- schedules
def test_flow_sigmas_equal_diffusers_shift5_50():
    from diffusers import FlowMatchEulerDiscreteScheduler
    sch = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=5.0)
    sch.set_timesteps(50)
    ours = flow_sigmas(50, 5.0)
    assert ours.shape == (51,) and ours.dtype == torch.float32
    assert torch.equal(ours, sch.sigmas.float())
    # timesteps the DiT sees = diffusers' timesteps (1000, 995.87, ..., 24.41)
    torch.testing.assert_close(sigma_to_timestep(ours[:-1]), sch.timesteps.float(), rtol=0, atol=1e-4)
    assert abs(float(sch.timesteps[1]) - 995.87) < 0.01 and abs(float(sch.timesteps[-1]) - 24.41) < 0.01


@pytest.mark.parametrize("steps,shift", [(20, 3.0), (7, 1.0)])
def test_flow_sigmas_equal_diffusers_other(steps, shift):
    from diffusers import FlowMatchEulerDiscreteScheduler
    sch = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    sch.set_timesteps(steps)
    torch.testing.assert_close(flow_sigmas(steps, shift), sch.sigmas.float(), rtol=0, atol=1e-7)


def test_flow_sigmas_independent_formula():
    # float64 recomputation: σ_min = 5·0.001/(1+4·0.001); t linear in [σ_min, 1]; shifted again
    smin = 5 * 0.001 / (1 + 4 * 0.001)
    for i, got in enumerate(flow_sigmas(50, 5.0)[:-1].tolist()):
        t = 1 - i * (1 - smin) / 49
        assert abs(got - 5 * t / (1 + 4 * t)) < 1e-6


def test_truncate_and_denoise():
    full = flow_sigmas(10, 5.0)
    part = truncate_sigmas(full, 2, 6)
    assert torch.equal(part, full[2:7])
    assert torch.equal(truncate_sigmas(full, 3), full[3:])
    with pytest.raises(MoGe4DInputError):
        truncate_sigmas(full, 5, 5)
    d = denoise_sigmas(10, 0.5, 5.0)
    assert d.shape == (11,) and torch.equal(d, flow_sigmas(20, 5.0)[-11:]) and float(d[0]) < 1.0
    assert torch.equal(denoise_sigmas(10, 1.0), full)
    with pytest.raises(MoGe4DInputError):
        flow_sigmas(0)


# ---------------------------------------------------------------- Euler, CFG
def test_euler_step_hand_formula():
    x = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    v = torch.tensor([0.25, 1.0, -3.0], dtype=torch.float64)
    out = euler_step(x, v, 0.8, 0.6)
    assert torch.allclose(out, torch.tensor([1.0 - 0.05, -2.0 - 0.2, 0.5 + 0.6], dtype=torch.float64))
    # one step of sample_flow == the same formula, and the model sees σ=0.8
    seen = []

    def fn(xx, s):
        seen.append(float(s))
        return v
    got = sample_flow(fn, x, torch.tensor([0.8, 0.6], dtype=torch.float64))
    assert seen == [pytest.approx(0.8)]
    assert torch.allclose(got, x * 0.8 + (0.6 - 0.8) * v)  # noise scaled to σ0=0.8 (no latent image)


def test_cfg_combine_and_modes():
    vc, vu = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    assert torch.allclose(cfg_combine(vc, vu, 6.0), torch.tensor([1.0 + 6.0, 1.0 - 6.0]))
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cond = lambda xx, s: 2.0 * xx + 1.0
    unc = lambda xx, s: -xx
    seq = guided_velocity(cond, unc, 6.0)(x, torch.tensor(0.5))
    expect = -x + 6.0 * (3.0 * x + 1.0)
    assert torch.allclose(seq, expect)
    calls = []

    def batched(x2, s):  # rows [0,B) uncond, [B,2B) cond
        calls.append(x2.shape[0])
        return torch.cat([unc(x2[:2], s), cond(x2[2:], s)])
    bat = batched_guided_velocity(batched, 6.0)(x, torch.tensor(0.5))
    assert calls == [4] and torch.allclose(bat, expect)
    # scale 1 never evaluates the uncond branch
    boom = lambda xx, s: (_ for _ in ()).throw(AssertionError("uncond called"))
    assert torch.allclose(guided_velocity(cond, boom, 1.0)(x, 0.5), cond(x, 0.5))
    # through sample_flow with uncond_fn == batched mode
    sig = flow_sigmas(4, 5.0).double()
    a = sample_flow(cond, x, sig, cfg=6.0, uncond_fn=unc)
    b = sample_flow(batched_guided_velocity(batched, 6.0), x, sig)
    assert torch.allclose(a, b)
    with pytest.raises(MoGe4DInputError):
        sample_flow(cond, x, sig, cfg=6.0)


def test_euler_exact_on_point_mass_flow():
    # data = a single point x0: exact v(x,σ) = (x − x0)/σ (= ε − x0 on the straight path); Euler is exact.
    x0 = torch.linspace(-1, 1, 24, dtype=torch.float64).reshape(1, 2, 12)
    eps = make_noise((1, 2, 12), 3).double()
    v = lambda x, s: (x - x0) / float(s)
    out = sample_flow(v, eps, flow_sigmas(50, 5.0))
    assert torch.allclose(out, x0, atol=1e-6)
    # and the constant field v = ε − x0 (straight path) lands on x0 too
    out2 = sample_flow(lambda x, s: eps - x0, eps, flow_sigmas(50, 5.0))
    assert torch.allclose(out2, x0, atol=1e-6)


# ---------------------------------------------------------------- multistep solvers
@pytest.mark.parametrize("solver", ["unipc", "dpmpp_2m"])
def test_multistep_solvers_converge(solver):
    m, s = 0.7, 0.6
    v = gaussian_flow(m, s)
    eps = torch.linspace(-3, 3, 42, dtype=torch.float64).reshape(2, 3, 7)
    target = m + s * eps
    err = {}
    for n in (20, 40):
        out = sample_flow(v, eps, flow_sigmas(n, 1.0), solver=solver)
        assert out.shape == eps.shape and torch.isfinite(out).all()
        err[n] = float((out - target).abs().max())
    e_euler = float((sample_flow(v, eps, flow_sigmas(40, 1.0)) - target).abs().max())
    assert err[40] < 0.035
    assert err[40] < err[20] / 3.0          # better than first order
    assert err[40] < e_euler / 2.0          # beats Euler at equal steps
    # point-mass flow: the x0 prediction is exact, so every solver lands on x0
    x0 = torch.full((1, 2, 5), 0.3, dtype=torch.float64)
    e2 = make_noise((1, 2, 5), 0).double()
    out = sample_flow(lambda x, sg: (x - x0) / float(sg), e2, flow_sigmas(10, 5.0), solver=solver)
    assert torch.allclose(out, x0, atol=1e-5)


def test_euler_converges_first_order():
    m, s = 0.7, 0.6
    v = gaussian_flow(m, s)
    eps = torch.linspace(-3, 3, 42, dtype=torch.float64).reshape(2, 3, 7)
    target = m + s * eps
    e20 = float((sample_flow(v, eps, flow_sigmas(20, 1.0)) - target).abs().max())
    e80 = float((sample_flow(v, eps, flow_sigmas(80, 1.0)) - target).abs().max())
    assert e80 < e20 / 3.0 and e80 < 0.04


# ---------------------------------------------------------------- seeds, progress, cancel
def test_make_noise_seeded():
    a = make_noise((2, 3, 4), 42)
    b = make_noise((2, 3, 4), 42)
    c = make_noise((2, 3, 4), 43)
    assert torch.equal(a, b) and not torch.equal(a, c)
    ref = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(42))
    assert torch.equal(a, ref)
    bf = make_noise((2, 3, 4), 42, "cpu", torch.bfloat16)
    assert bf.dtype == torch.bfloat16 and torch.equal(bf, ref.to(torch.bfloat16))
    if torch.cuda.is_available():
        assert torch.equal(make_noise((2, 3, 4), 42, "cuda").cpu(), ref)
    with pytest.raises(MoGe4DInputError):
        make_noise((2,), -1)


@pytest.mark.parametrize("solver", ["euler", "unipc", "dpmpp_2m"])
def test_progress_cancel_and_rerun(solver):
    sig = flow_sigmas(8, 5.0)
    noise = make_noise((1, 2, 6), 7)
    ticks = []
    fresh = sample_flow(linear_field, noise, sig, solver=solver, callback=lambda d, t: ticks.append((d, t)))
    assert ticks == [(i, 8) for i in range(1, 9)]

    class Stop(Exception):
        pass

    def cancel(done, total):
        if done == 3:
            raise Stop()
    with pytest.raises(Stop):
        sample_flow(linear_field, noise, sig, solver=solver, callback=cancel)
    again = sample_flow(linear_field, noise, sig, solver=solver)
    assert torch.equal(again, fresh)
    assert torch.equal(noise, make_noise((1, 2, 6), 7))  # input not modified in place


# ---------------------------------------------------------------- ComfyUI adapter
class FakeKSampler:
    """Mimics comfy.samplers.KSAMPLER.sample + KSamplerX0Inpaint + k_diffusion.sample_euler (v0.21)."""

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        ms = model_wrap.inner_model.model_sampling
        max_denoise = math.isclose(float(ms.sigma_max), float(sigmas[0]), rel_tol=1e-5)
        x = ms.noise_scaling(sigmas[0], noise, latent_image, max_denoise)
        s_in = x.new_ones([x.shape[0]])
        # the attribute chains the k-diffusion samplers use
        assert model_wrap.model_patcher.get_model_object("model_sampling") is ms
        total = len(sigmas) - 1
        for i in range(total):
            denoised = model_wrap(x, sigmas[i] * s_in, model_options=extra_args["model_options"],
                                  seed=extra_args.get("seed"))
            d = (x - denoised) / sigmas[i]
            if callback is not None:
                callback(i, denoised, x, total)
            x = x + d * (sigmas[i + 1] - sigmas[i])
        return ms.inverse_noise_scaling(sigmas[-1], x)


def test_comfy_adapter_reproduces_euler():
    sig = flow_sigmas(12, 5.0).double()
    noise = make_noise((2, 3, 5), 11).double()
    ours = sample_flow(linear_field, noise, sig)
    ticks = []
    theirs = sample_with_comfy_sampler(FakeKSampler(), sig, linear_field, noise,
                                       callback=lambda d, t: ticks.append((d, t)))
    assert (theirs - ours).abs().max() < 1e-6
    assert ticks == [(i, 12) for i in range(1, 13)]
    # partial denoise from a latent image: both start at σ0·noise + (1−σ0)·latent
    lat = make_noise((2, 3, 5), 12).double()
    sig2 = denoise_sigmas(6, 0.5, 5.0).double()
    a = sample_flow(linear_field, noise, sig2, latent_image=lat)
    b = sample_with_comfy_sampler(FakeKSampler(), sig2, linear_field, noise, latent_image=lat)
    assert (a - b).abs().max() < 1e-6


def test_comfy_denoiser_and_model_sampling():
    den = ComfyFlowDenoiser(lambda x, s: 2.0 * x)
    x = torch.ones(2, 3, dtype=torch.float64)
    out = den(x, torch.tensor([0.25, 0.25], dtype=torch.float64))
    assert torch.allclose(out, x - 0.25 * 2.0 * x)
    assert den.inner_model.model_sampling is den.model_sampling
    ms = FlowModelSampling(5.0)
    assert float(ms.sigma_max) == 1.0
    assert abs(float(ms.sigma_min) - 5 * 0.001 / (1 + 4 * 0.001)) < 1e-7
    assert float(ms.timestep(torch.tensor(0.5))) == 500.0
    assert abs(float(ms.sigma(torch.tensor(500.0))) - 2.5 / 3.0) < 1e-6
    assert ms.percent_to_sigma(0.0) == 1.0 and ms.percent_to_sigma(1.0) == 0.0
    assert abs(ms.percent_to_sigma(0.5) - 2.5 / 3.0) < 1e-9
    with pytest.raises(MoGe4DInputError):
        sample_with_comfy_sampler(object(), flow_sigmas(2), linear_field, x)


@pytest.mark.parametrize("solver", ["unipc", "dpmpp_2m"])
def test_multistep_stepping_matches_native_diffusers_loop(solver):
    # our σ-override must not change the algorithm: on the scheduler's own σ grid, sample_flow == the plain
    # diffusers loop (which starts from σ0·noise here, as sample_flow does when σ0 < 1)
    from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler
    kw = dict(num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0,
              final_sigmas_type="zero", solver_order=2)
    sch = (UniPCMultistepScheduler(**kw) if solver == "unipc"
           else DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", **kw))
    sch.set_timesteps(12)
    v = gaussian_flow(0.7, 0.6)
    noise = make_noise((1, 4, 6), 2)
    x = noise * sch.sigmas[0]
    for i, t in enumerate(sch.timesteps):
        x = sch.step(v(x, sch.sigmas[i]), t, x, return_dict=False)[0]
    ours = sample_flow(v, noise, sch.sigmas.clone(), solver=solver)
    assert (ours - x).abs().max() < 1e-5


def test_comfy_adapter_protects_caller_sigmas():
    class Mutating(FakeKSampler):
        def sample(self, model_wrap, sigmas, *a, **k):
            sigmas[0] = 0.9999  # like ComfyUI's log-SNR samplers may do
            return super().sample(model_wrap, sigmas, *a, **k)
    sig = flow_sigmas(3, 5.0)
    before = sig.clone()
    sample_with_comfy_sampler(Mutating(), sig, linear_field, make_noise((1, 2, 3), 0))
    assert torch.equal(sig, before)
