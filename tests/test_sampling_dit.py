"""sampling x DiT: the velocity wrapper feeds timestep 1000σ, batched CFG == sequential CFG on a tiny STraG
DiT, and our Euler loop == diffusers' FlowMatchEulerDiscreteScheduler stepping on the same model; the DiT's
conditioning inputs are one checked dataclass."""
import dataclasses

import pytest
import torch

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.models.wan_dit import STraGDiT, dit_config
from moge4d_core.sampling import dit_velocity, flow_sigmas, make_noise, sample_flow
from moge4d_core.types import DiTConditioning

torch.set_num_threads(1)

TINY = dict(dim=24, ffn_dim=48, num_heads=2, num_layers=2, text_dim=32, freq_dim=16)


@pytest.fixture(scope="module")
def dit():
    torch.manual_seed(0)
    cfg = dit_config(arch="moge4d_strag", in_dim=64, image_dim=16, ref_conv_in_dim=16, mpm_feature_dim=0,
                       **TINY)
    m = STraGDiT(**cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)
    return m


def conds(seed, b=1, f=2, h=4, w=4):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return DiTConditioning(encoder_hidden_states=r(b, 5, 32), encoder_hidden_states_image=r(b, 257, 16),
                           control=r(b, 16, f, h, w),
                           depth=r(b, 16, f, h, w), ref_latent=r(b, 16, h, w))


def test_timestep_is_1000_sigma(dit):
    c = conds(1)
    x = make_noise((1, 16, 2, 4, 4), 5)
    with torch.no_grad():
        got = dit_velocity(dit, c)(x, torch.tensor(0.37))
        ref = dit(x, torch.tensor([370.0]), **c.forward_kwargs())
    assert torch.equal(got, ref)
    seen = []
    fake = lambda hidden_states, timestep, **k: (seen.append(timestep.clone()), hidden_states)[1]  # noqa: E731
    dit_velocity(fake, DiTConditioning(encoder_hidden_states=torch.zeros(3, 1, 1)))(torch.zeros(3, 2),
                                                                                  torch.tensor(0.25))
    assert seen[0].shape == (3,) and torch.allclose(seen[0], torch.full((3,), 250.0))


def test_batched_cfg_equals_sequential_and_formula(dit):
    c = conds(1)
    u = c.with_text(torch.zeros_like(c.encoder_hidden_states))  # only the text differs, as in the official pipeline
    x = make_noise((1, 16, 2, 4, 4), 5)
    s = torch.tensor(0.8)
    with torch.no_grad():
        vb = dit_velocity(dit, c, u, 6.0, batched=True)(x, s)
        vs = dit_velocity(dit, c, u, 6.0, batched=False)(x, s)
        vc = dit(x, torch.tensor([800.0]), **c.forward_kwargs()).double()
        vu = dit(x, torch.tensor([800.0]), **u.forward_kwargs()).double()
    expect = vu + 6.0 * (vc - vu)
    torch.testing.assert_close(vs.double(), expect, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(vb.double(), expect, rtol=1e-4, atol=1e-4)
    bad = dataclasses.replace(u, encoder_hidden_states_image=None)
    with pytest.raises(MoGe4DInputError, match="same tensors"):
        dit_velocity(dit, c, bad, 6.0)(x, s)


def test_euler_equals_diffusers_flowmatch_on_dit(dit):
    from diffusers import FlowMatchEulerDiscreteScheduler
    c = conds(2)
    noise = make_noise((1, 16, 2, 4, 4), 9)
    steps = 4
    with torch.no_grad():
        ours = sample_flow(dit_velocity(dit, c), noise, flow_sigmas(steps, 5.0))
        sch = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=5.0)
        sch.set_timesteps(steps)
        x = noise.clone()
        for t in sch.timesteps:
            v = dit(x, t.reshape(1), **c.forward_kwargs())
            x = sch.step(v, t, x, return_dict=False)[0]
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5)


def test_dit_conditioning_kwargs_cfg_batch_and_checks():
    """forward_kwargs names the set inputs only; cfg_batch stacks [uncond; cond]; a wrong batch is refused."""
    c = conds(3)
    assert list(c.forward_kwargs()) == ["encoder_hidden_states", "encoder_hidden_states_image", "control", "depth",
                                        "ref_latent"]
    u = c.with_text(torch.zeros_like(c.encoder_hidden_states))
    # latents shared, only the text replaced
    assert u.control is c.control and u.encoder_hidden_states is not c.encoder_hidden_states
    both = DiTConditioning.cfg_batch(u, c)
    assert both.batch_size == 2 and torch.equal(both.encoder_hidden_states[0], u.encoder_hidden_states[0])
    assert torch.equal(both.encoder_hidden_states[1], c.encoder_hidden_states[0])
    assert torch.equal(both.control, torch.cat([c.control, c.control])) and both.mask is None
    with pytest.raises(MoGe4DInputError, match=r"DiTConditioning\.depth: batch \(2,\)"):
        DiTConditioning(encoder_hidden_states=c.encoder_hidden_states, depth=torch.zeros(2, 16, 2, 4, 4))
    with pytest.raises(MoGe4DInputError, match="DiTConditioning.encoder_hidden_states"):
        DiTConditioning(encoder_hidden_states=torch.zeros(5, 32))
    with pytest.raises(MoGe4DInputError, match="CFG input 'encoder_hidden_states_image'"):
        DiTConditioning.cfg_batch(
            dataclasses.replace(u, encoder_hidden_states_image=c.encoder_hidden_states_image[:, :10]), c)
