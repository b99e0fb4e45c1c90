"""Stand-in for ``comfy.samplers`` (ComfyUI v0.21): ``KSAMPLER`` with an Euler sampler, ``sampler_object``,
the ``simple`` and ``normal`` schedulers and ``calculate_sigmas``. ``sampled`` records every sigma schedule a KSAMPLER ran."""
import torch

sampled = []


def _euler(model, x, sigmas, extra_args=None, callback=None, disable=None):
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        d = (x - denoised) / sigmas[i]
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x


class KSAMPLER:
    def __init__(self, sampler_function, extra_options={}, inpaint_options={}):
        self.sampler_function = sampler_function
        self.extra_options = extra_options
        self.inpaint_options = inpaint_options

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        sampled.append(sigmas.detach().clone())
        extra_args = dict(extra_args)
        ms = model_wrap.inner_model.model_sampling
        x = ms.noise_scaling(sigmas[0], noise, latent_image)
        total = len(sigmas) - 1
        k_cb = (lambda d: callback(d["i"], d["denoised"], d["x"], total)) if callback is not None else None

        def model_k(x, sigma, **kw):
            return model_wrap(x, sigma, model_options=kw.get("model_options", {}), seed=kw.get("seed"))

        out = self.sampler_function(model_k, x, sigmas, extra_args=extra_args, callback=k_cb, disable=disable_pbar)
        return ms.inverse_noise_scaling(sigmas[-1], out)


def sampler_object(name):
    if name not in ("euler", "uni_pc", "dpmpp_2m"):
        raise ValueError(f"stand-in: sampler {name!r} not available")
    return KSAMPLER(_euler)


def simple_scheduler(model_sampling, steps):
    s = model_sampling
    sigs = []
    ss = len(s.sigmas) / steps
    for x in range(steps):
        sigs += [float(s.sigmas[-(1 + int(x * ss))])]
    sigs += [0.0]
    return torch.FloatTensor(sigs)


def normal_scheduler(model_sampling, steps, sgm=False, floor=False):
    import math
    s = model_sampling
    start = s.timestep(s.sigma_max)
    end = s.timestep(s.sigma_min)
    append_zero = True
    if sgm:
        timesteps = torch.linspace(start, end, steps + 1)[:-1]
    else:
        if math.isclose(float(s.sigma(end)), 0, abs_tol=0.00001):
            steps += 1
            append_zero = False
        timesteps = torch.linspace(start, end, steps)
    sigs = [float(s.sigma(ts)) for ts in timesteps]
    if append_zero:
        sigs += [0.0]
    return torch.FloatTensor(sigs)


SCHEDULER_HANDLERS = {"simple": simple_scheduler, "normal": normal_scheduler}
SCHEDULER_NAMES = list(SCHEDULER_HANDLERS)


def calculate_sigmas(model_sampling, scheduler_name, steps):
    return SCHEDULER_HANDLERS[scheduler_name](model_sampling, steps)
