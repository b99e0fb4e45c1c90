"""Motion VAE model: adapter key layout and formulas, two-stage latent normalisation, shapes.

References are written here independently (functional float64 re-computations, the normalisation formulas
typed from reference §A3), never taken from the code under test.
"""
import inspect

import pytest
import torch
import torch.nn.functional as F

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.models import constants as C
from moge4d_core.models.motion_vae import (AdapterConfig, MotionVAE, MotionVAEConfig, TrajectoryDecoderAdapter,
                                           TrajectoryEncoderAdapter, denormalize_latent, normalize_latent)

torch.set_num_threads(1)  # tiny convolutions: one thread is fastest on a shared 2-core machine

TINY_VAE = dict(base_dim=4, dim_mult=[1, 2, 4, 4], num_res_blocks=2)
TINY_ADAPTER = AdapterConfig(channels=32)


def _randomise(module, std=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


# --- adapters ---------------------------------------------------------------------------------

def test_official_adapter_keys_and_parameter_counts():
    enc, dec = TrajectoryEncoderAdapter(), TrajectoryDecoderAdapter()
    res = ["norm1.weight", "norm1.bias", "conv1.weight", "conv1.bias", "norm2.weight", "norm2.bias",
           "conv2.weight", "conv2.bias"]
    ends = ["conv_in.weight", "conv_in.bias", "norm_out.weight", "norm_out.bias", "conv_out.weight", "conv_out.bias"]
    assert set(enc.state_dict()) == set(ends + [f"down.0.block.0.{r}" for r in res])
    assert set(dec.state_dict()) == set(ends + [f"up.0.block.{i}.{r}" for i in (0, 1) for r in res])
    # reference §A2: 302,979 and 598,659 parameters, conv_in [128,3,3,3], conv_out [3,128,3,3]
    assert sum(p.numel() for p in enc.parameters()) == 302_979
    assert sum(p.numel() for p in dec.parameters()) == 598_659
    assert tuple(enc.state_dict()["conv_in.weight"].shape) == (128, 3, 3, 3)
    assert tuple(dec.state_dict()["conv_out.weight"].shape) == (3, 128, 3, 3)
    assert all(m.eps == 1e-6 and m.num_groups == 32 for m in enc.modules() if isinstance(m, torch.nn.GroupNorm))


def test_encoder_with_zero_conv_out_is_exactly_sigmoid():
    enc = TrajectoryEncoderAdapter()                 # official size; conv_out zero-initialised
    with torch.no_grad():
        for name, p in enc.named_parameters():
            if not name.startswith("conv_out"):
                p.normal_(0, 0.5)
    x = torch.randn(2, 3, 3, 8, 8) * 3
    with torch.no_grad():
        out = enc(x)
    assert torch.equal(out, torch.sigmoid(x))


def _ref_res(x, sd, p):
    h = F.group_norm(x, 32, sd[p + "norm1.weight"], sd[p + "norm1.bias"], 1e-6)
    h = F.conv2d(h * torch.sigmoid(h), sd[p + "conv1.weight"], sd[p + "conv1.bias"], padding=1)
    h = F.group_norm(h, 32, sd[p + "norm2.weight"], sd[p + "norm2.bias"], 1e-6)
    h = F.conv2d(h * torch.sigmoid(h), sd[p + "conv2.weight"], sd[p + "conv2.bias"], padding=1)
    return x + h


def _ref_adapter(x5, sd, blocks, encoder):
    b, c, t, hh, ww = x5.shape
    x = x5.permute(0, 2, 1, 3, 4).reshape(b * t, c, hh, ww)
    h = F.conv2d(x, sd["conv_in.weight"], sd["conv_in.bias"], padding=1)
    for blk in blocks:
        h = _ref_res(h, sd, blk)
    h = F.group_norm(h, 32, sd["norm_out.weight"], sd["norm_out.bias"], 1e-6)
    h = F.conv2d(h * torch.sigmoid(h), sd["conv_out.weight"], sd["conv_out.bias"], padding=1)
    if encoder:
        h = 1.0 / (1.0 + torch.exp(-(h + x)))
    return h.reshape(b, t, c, hh, ww).permute(0, 2, 1, 3, 4)


@pytest.mark.parametrize("encoder", [True, False])
def test_adapter_matches_functional_float64_reference(encoder):
    cls = TrajectoryEncoderAdapter if encoder else TrajectoryDecoderAdapter
    m = _randomise(cls(TINY_ADAPTER), std=0.3, seed=1).double().eval()
    sd = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randn(2, 3, 5, 8, 16, dtype=torch.float64)
    blocks = ["down.0.block.0."] if encoder else ["up.0.block.0.", "up.0.block.1."]
    with torch.no_grad():
        got = m(x)
    want = _ref_adapter(x, sd, blocks, encoder)
    assert got.shape == x.shape
    assert torch.allclose(got, want, atol=1e-12, rtol=0)
    if encoder:
        assert bool(((got > 0) & (got < 1)).all())


@pytest.mark.parametrize("encoder", [True, False])
def test_frame_chunking_changes_nothing(encoder):
    cls = TrajectoryEncoderAdapter if encoder else TrajectoryDecoderAdapter
    m = _randomise(cls(TINY_ADAPTER), std=0.3, seed=2).double().eval()
    x = torch.randn(2, 3, 5, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        m.frame_chunk = None
        whole = m(x)
        m.frame_chunk = 3                                  # 10 frames in chunks of 3, 3, 3, 1
        chunked = m(x)
    assert torch.allclose(whole, chunked, atol=1e-13, rtol=0)


# --- latent normalisation ---------------------------------------------------------------------

def test_constants_are_the_reference_values():
    assert len(C.WAN_LATENT_MEAN) == len(C.WAN_LATENT_STD) == len(C.TRAJ_LATENT_MEAN) == len(C.TRAJ_LATENT_STD) == 16
    assert C.WAN_LATENT_MEAN[0] == -0.7571 and C.WAN_LATENT_STD[15] == 1.9160
    assert C.TRAJ_LATENT_STD[0] == 0.4107 and C.TRAJ_LATENT_STD[15] == 0.2863
    assert abs(C.TRAJ_LATENT_MEAN[0] - 0.93366) < 1e-5 and abs(C.TRAJ_LATENT_MEAN[15] + 1.25283) < 1e-5
    # diffusers' AutoencoderKLWan defaults hold the same Wan statistics
    from diffusers import AutoencoderKLWan
    sig = inspect.signature(AutoencoderKLWan.__init__)
    assert list(sig.parameters["latents_mean"].default) == list(C.WAN_LATENT_MEAN)
    assert list(sig.parameters["latents_std"].default) == list(C.WAN_LATENT_STD)


def _stats(vals):
    return torch.tensor(vals, dtype=torch.float64).view(1, 16, 1, 1, 1)


def test_two_stage_normalisation_against_formulas():
    mu = torch.randn(2, 16, 3, 4, 5, dtype=torch.float64) * 3
    m, s, tm, ts = (_stats(v) for v in (C.WAN_LATENT_MEAN, C.WAN_LATENT_STD, C.TRAJ_LATENT_MEAN, C.TRAJ_LATENT_STD))
    want_both = ((mu - m) / s - tm) / ts
    want_wan = (mu - m) / s
    got_both = normalize_latent(mu.float(), traj_norm=True).double()
    got_wan = normalize_latent(mu.float(), traj_norm=False).double()
    assert torch.allclose(got_both, want_both, rtol=2e-6, atol=2e-5)
    assert torch.allclose(got_wan, want_wan, rtol=2e-6, atol=2e-6)
    # inverse, in the official decode order: traj stage first, then Wan stage
    z = torch.randn(2, 16, 3, 4, 5, dtype=torch.float64)
    want_raw = (z * ts + tm) * s + m
    got_raw = denormalize_latent(z.float(), traj_norm=True).double()
    assert torch.allclose(got_raw, want_raw, rtol=2e-6, atol=2e-5)
    assert torch.allclose(denormalize_latent(z.float(), traj_norm=False).double(), z * s + m, rtol=2e-6, atol=2e-5)
    # round trip
    assert torch.allclose(denormalize_latent(normalize_latent(mu.float())).double(), mu, atol=5e-5)


def test_normalisation_uses_official_reciprocal_arithmetic():
    # the official code multiplies by the float32 reciprocal (encode) and divides by it (decode)
    mu = torch.randn(1, 16, 2, 3, 3)
    inv = (1.0 / torch.tensor(C.WAN_LATENT_STD, dtype=torch.float32)).view(1, 16, 1, 1, 1)
    mean = torch.tensor(C.WAN_LATENT_MEAN, dtype=torch.float32).view(1, 16, 1, 1, 1)
    assert torch.equal(normalize_latent(mu, traj_norm=False), (mu - mean) * inv)
    assert torch.equal(denormalize_latent(mu, traj_norm=False), mu / inv + mean)


def test_normalisation_rejects_wrong_channel_count():
    with pytest.raises(MoGe4DInputError, match=r"\(B,16,F,h,w\)"):
        normalize_latent(torch.zeros(1, 4, 2, 3, 3))


# --- MotionVAE --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_motion_vae():
    torch.manual_seed(0)
    m = MotionVAE(MotionVAEConfig(vae=TINY_VAE, adapter=TINY_ADAPTER))
    _randomise(m.decoder_adapter, 0.2, 3)
    with torch.no_grad():                      # a trained-looking encoder adapter (non-zero conv_out)
        _randomise(m.encoder_adapter, 0.05, 4)
    return m.eval()


@pytest.mark.parametrize("t,h,w", [(5, 16, 24), (9, 32, 16)])
def test_encode_decode_shapes(tiny_motion_vae, t, h, w):
    x = torch.randn(1, 3, t, h, w)
    with torch.no_grad():
        z = tiny_motion_vae.encode(x)
        y = tiny_motion_vae.decode(z)
        rgb = tiny_motion_vae.decode_rgb(z)
    assert z.shape == (1, 16, (t - 1) // 4 + 1, h // 8, w // 8) == MotionVAE.latent_shape(1, t, h, w)
    assert y.shape == (1, 3, t, h, w)
    assert rgb.min() >= -1 and rgb.max() <= 1


def test_encode_is_adapter_then_wan_mean_then_two_stage_norm(tiny_motion_vae):
    m = tiny_motion_vae
    x = torch.randn(1, 3, 5, 16, 16)
    with torch.no_grad():
        rgb = m.encoder_adapter(x) * 2 - 1
        mu = m.vae.encode(rgb).latent_dist.mean.double()
        got = m.encode(x).double()
        got_wan = m.encode(x, traj_norm=False).double()
    s, mm, ts, tm = (_stats(v) for v in (C.WAN_LATENT_STD, C.WAN_LATENT_MEAN, C.TRAJ_LATENT_STD, C.TRAJ_LATENT_MEAN))
    assert torch.allclose(got, ((mu - mm) / s - tm) / ts, atol=1e-4)
    assert torch.allclose(got_wan, (mu - mm) / s, atol=1e-5)


def test_decode_is_two_stage_inverse_then_wan_decoder_then_adapter(tiny_motion_vae):
    m = tiny_motion_vae
    z = torch.randn(1, 16, 2, 2, 3)
    s, mm, ts, tm = (_stats(v) for v in (C.WAN_LATENT_STD, C.WAN_LATENT_MEAN, C.TRAJ_LATENT_STD, C.TRAJ_LATENT_MEAN))
    raw = ((z.double() * ts + tm) * s + mm).float()
    with torch.no_grad():
        want = m.decoder_adapter(m.vae.decode(raw).sample.clamp(-1, 1))
        got = m.decode(z)
    assert torch.allclose(got, want, atol=1e-5)


def test_sample_adds_raw_scale_noise_to_normalised_mean(tiny_motion_vae):
    m = tiny_motion_vae
    x = torch.randn(1, 3, 5, 16, 16)
    with torch.no_grad():
        mode = m.encode(x)
        sampled = m.encode(x, sample=True, generator=torch.Generator().manual_seed(7))
        logvar = m.vae.encode(m.encoder_adapter(x) * 2 - 1).latent_dist.logvar
    noise = torch.randn(mode.shape, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(sampled, mode + torch.exp(0.5 * logvar.clamp(-30, 20)) * noise, atol=1e-5)


@pytest.mark.parametrize("shape,msg", [((1, 3, 6, 16, 16), "4k\\+1"), ((1, 3, 5, 12, 16), "multiples of 8"),
                                       ((1, 4, 5, 16, 16), "\\(B,3,T,H,W\\)")])
def test_encode_rejects_bad_shapes(tiny_motion_vae, shape, msg):
    with pytest.raises(MoGe4DInputError, match=msg):
        tiny_motion_vae.encode(torch.zeros(shape))


def test_adapter_rejects_channels_not_divisible_by_groups():
    with pytest.raises(MoGe4DInputError, match="GroupNorm"):
        TrajectoryEncoderAdapter(AdapterConfig(channels=24))
