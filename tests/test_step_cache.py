"""Step caching (diffusers' cache hooks) on the MoGe4D DiTs: every setting skips DiT work on tiny models (counted by
BlockCounter) and stays close to the uncached output; off is bit-identical; compat mode ignores the setting; unknown
settings are refused with the valid ones listed."""
import pytest
import torch

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.models.wan_dit import STraGDiT, ViSMDiT, dit_config
from moge4d_core.pipeline.denoise_loop import run_dit_sampling
from moge4d_core.pipeline.settings import SamplerSettings, compat_settings
from moge4d_core.sampling import dit_velocity, make_noise, sample_flow
from moge4d_core.sampling.step_cache import (CACHE_KINDS, CACHE_PRESETS, BlockCounter, StepCache, mag_ratios,
                                             parse_step_cache, step_cache)
from moge4d_core.types import DiTConditioning

torch.set_num_threads(1)

TINY = dict(dim=24, ffn_dim=48, num_heads=2, num_layers=4, text_dim=32, freq_dim=16)
STEPS = 12
SHAPE = (1, 16, 2, 4, 4)


def _randomise(m, std=0.1):
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, std)
    return m.eval()


@pytest.fixture(scope="module")
def strag():
    torch.manual_seed(0)
    return _randomise(STraGDiT(**dit_config(arch="moge4d_strag", in_dim=64, image_dim=16, ref_conv_in_dim=16,
                                            mpm_feature_dim=8, **TINY)))


@pytest.fixture(scope="module")
def vism():
    torch.manual_seed(1)
    return _randomise(ViSMDiT(**dit_config(arch="wan2.1_fun_inp", in_dim=36, image_dim=16, **TINY)))


def _strag_cond():
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return DiTConditioning(encoder_hidden_states=r(1, 5, 32), encoder_hidden_states_image=r(1, 257, 16),
                           control=r(*SHAPE), depth=r(*SHAPE), ref_latent=r(1, 16, 4, 4),
                           motion_features=r(1, 196, 8))


def _vism_cond():
    g = torch.Generator().manual_seed(2)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return DiTConditioning(encoder_hidden_states=r(1, 5, 32), mask=(r(1, 4, 2, 4, 4) > 0).float(),
                           masked_video=r(*SHAPE))


def _sample(model, cond, cache=None, cfg=3.0, batched=True):
    settings = SamplerSettings(steps=STEPS, cfg=cfg, seed=0, cache=cache, batched_cfg=batched)
    uncond = cond.with_text(torch.zeros_like(cond.encoder_hidden_states))
    with BlockCounter(model) as counter:
        out = run_dit_sampling(model, SHAPE, cond, uncond, settings)
    return out, counter


def _hooks(model) -> int:
    return sum(len(m._diffusers_hook.hooks) for m in model.modules() if hasattr(m, "_diffusers_hook"))


# ---------------------------------------------------------------------------------------------- parsing
def test_parse_settings_and_refusals():
    assert parse_step_cache(None) is None and parse_step_cache("off") is None and parse_step_cache("") is None
    assert parse_step_cache("first_block:0.1") == StepCache("first_block", 0.1)
    assert parse_step_cache("mag") == StepCache("mag", CACHE_KINDS["mag"][1])
    assert parse_step_cache("TaylorSeer:4") == StepCache("taylorseer", 4)
    assert str(parse_step_cache("pab")) == "pab:2" and str(parse_step_cache("faster")) == "faster"
    for preset in CACHE_PRESETS:                                   # every node option parses
        parse_step_cache(preset)
    with pytest.raises(MoGe4DInputError, match=r"cache 'teacache': unknown setting; valid: off, first_block"):
        parse_step_cache("teacache")
    with pytest.raises(MoGe4DInputError, match="interval must be an integer"):
        parse_step_cache("taylorseer:1.5")
    with pytest.raises(MoGe4DInputError, match="must be > 0"):
        parse_step_cache("first_block:-1")
    with pytest.raises(MoGe4DInputError, match="takes no value"):
        parse_step_cache("faster:2")
    with pytest.raises(MoGe4DInputError, match="unknown setting"):
        SamplerSettings(cache="tea")
    assert SamplerSettings(cache="first_block:0.10").cache == "first_block:0.1"     # stored canonical


# ---------------------------------------------------------------------------------------------- off
def test_off_is_bit_identical_and_hooks_are_removed(strag):
    c = _strag_cond()
    u = c.with_text(torch.zeros_like(c.encoder_hidden_states))
    settings = SamplerSettings(steps=STEPS, cfg=3.0, seed=0)
    with torch.no_grad():
        ref = sample_flow(dit_velocity(strag, c, u, 3.0), make_noise(SHAPE, 0), settings.sigmas()).float()
    off, counter = _sample(strag, c, cache="off")
    assert torch.equal(off, ref) and counter.blocks == STEPS * 2 * 4            # every block, both CFG halves
    _sample(strag, c, cache="first_block:0.2")
    assert _hooks(strag) == 0 and not strag.is_cache_enabled                    # the cache left with its run
    assert torch.equal(_sample(strag, c)[0], ref)


# ---------------------------------------------------------------------------------------------- each setting
@pytest.mark.parametrize("cache,batched", [("first_block:0.2", True), ("first_block:0.2", False),
                                           ("taylorseer:3", True), ("taylorseer:3", False), ("mag:0.3", True),
                                           ("mag:0.3", False)])
def test_block_caches_skip_blocks_and_stay_close(strag, vism, cache, batched):
    for model, cond in ((strag, _strag_cond()), (vism, _vism_cond())):
        if hasattr(model, "_moge4d_mag_ratios"):
            del model._moge4d_mag_ratios
        ref, full = _sample(model, cond, batched=batched)
        out, counter = _sample(model, cond, cache=cache, batched=batched)
        if cache.startswith("mag"):                  # the first run calibrates (skips nothing), the next one skips
            assert counter.blocks == full.blocks and mag_ratios(model) is not None
            assert mag_ratios(model).shape == (STEPS,)
            out, counter = _sample(model, cond, cache=cache, batched=batched)
        assert counter.blocks < 0.8 * full.blocks, (cache, counter.blocks, full.blocks)
        err = float((out - ref).norm() / ref.norm())
        assert 0 < err < 0.05, (cache, err)


@pytest.mark.parametrize("cache", ["pab:2", "faster"])
def test_attention_caches_skip_attention_and_stay_close(strag, cache):
    c = _strag_cond()
    ref, full = _sample(strag, c)
    out, counter = _sample(strag, c, cache=cache)
    assert counter.attention < full.attention, (cache, counter.attention, full.attention)
    if cache == "faster":                            # the unconditional half of the CFG batch is skipped too
        assert counter.blocks < full.blocks
    err = float((out - ref).norm() / ref.norm())
    assert 0 < err < 0.05, (cache, err)


def test_faster_needs_batched_cfg(strag):
    with pytest.raises(MoGe4DInputError, match="FasterCache needs batched classifier-free guidance"):
        _sample(strag, _strag_cond(), cache="faster", batched=False)
    with pytest.raises(MoGe4DInputError, match="FasterCache"):
        _sample(strag, _strag_cond(), cache="faster", cfg=1.0)


def test_taylorseer_hooks_point_at_our_blocks(strag):
    """diffusers' default TaylorSeer identifiers match no Wan module (0 hooks); ours hook every block."""
    from diffusers import TaylorSeerCacheConfig

    strag.enable_cache(TaylorSeerCacheConfig())
    try:
        assert _hooks(strag) == 0
    finally:
        strag.disable_cache()
    with step_cache(strag, "taylorseer", calls=STEPS):
        assert _hooks(strag) == len(strag.blocks)
    assert _hooks(strag) == 0


# ---------------------------------------------------------------------------------------------- compat
def test_compat_settings_drop_the_cache():
    traj, inp = compat_settings(3)
    assert traj.cache is None and inp.cache is None


def test_compat_pipeline_ignores_the_cache(monkeypatch):
    """run_pipeline(compat=True) samples with the release settings whatever cache the caller's settings name."""
    from moge4d_core.pipeline import run as run_mod

    seen = []

    def spy(*a, settings, **k):
        seen.append(settings)
        raise RuntimeError("stop")
    monkeypatch.setattr(run_mod, "generate_motion", spy)
    monkeypatch.setattr(run_mod.WanImageVAE, "from_motion_vae", classmethod(lambda cls, m: None))
    geom_image = torch.rand(16, 16, 3)
    from moge4d_core.geometry.sources import geometry_from_depth
    geom = geometry_from_depth(geom_image, torch.full((16, 16, 3), 2.0), 60.0)
    with pytest.raises(RuntimeError, match="stop"):
        run_mod.run_pipeline(image=geom_image, geometry=geom, strag=object(), motion_vae=object(),
                             image_vae=object(), positive=None, cameras=["static"], compat=True,
                             trajectory_settings=SamplerSettings(cache="first_block:0.1"))
    assert seen and seen[0].cache is None


def test_cli_refuses_an_unknown_cache_before_loading(tmp_path, capsys):
    from moge4d_core.cli import main

    rc = main(["demo", "--out", str(tmp_path / "out"), "--cache", "teacache"])
    err = capsys.readouterr().err
    assert rc != 0 and "cache 'teacache': unknown setting; valid: off, first_block" in err
    assert not (tmp_path / "out").exists()
