"""Every export the trainers write, loaded back through the loader users call, computes what the trained model
computes (outputs compared, not only weights): motion VAE (own file and release ``VAE/`` layout) at the nano
adapter size (8 GroupNorm groups) and the release size (128 channels, 32 groups), pixel VAE, STraG full fine-tune,
and STraG / ViSM LoRAs at the release rank and alpha (128 / 64)."""
import json
import shutil
import warnings

import pytest
import torch
from safetensors.torch import load_file

from moge4d_core.loading.lora import merge_lora
from moge4d_core.loading.motion_vae import RELEASE_CONFIG_FILE, load_motion_vae, load_wan_vae
from moge4d_core.loading.wan_dit import load_strag, load_vism_base, save_wan_dit
from moge4d_core.models.motion_vae import MotionVAE, MotionVAEConfig
from moge4d_core.models.nano import NANO, wan_vae_kwargs
from moge4d_core.models.wan_dit import STraGDiT, ViSMDiT, dit_config
from training.adapters import load_peft_adapter
from training_helpers import DATA_ARGS, STRAG_CFG, TINY_VAE, VISM_CFG, save_pixel_vae, tiny_motion_vae, \
    tiny_pixel_vae, write_data, write_json

torch.set_num_threads(1)

NANO_MVAE = {"vae": wan_vae_kwargs(NANO), "adapter": {"channels": NANO.adapter_channels, "groups": NANO.adapter_groups}}
RELEASE_ADAPTER = {"vae": TINY_VAE, "adapter": {"channels": 128, "groups": 32}}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    return dict(root=root, data=write_data(root / "data", 2, seed=0))


def _common(env, out, *extra):
    return ["--data", str(env["data"]), "--out", str(out), *DATA_ARGS, "--max-steps", "2", "--lr", "1e-2",
            "--checkpoint-every", "0", *extra]


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("size", ["nano", "release_adapter"])
def test_motion_vae_exports_decode_like_the_trained_model(env, size):
    from training.train_vae import train

    cfg = NANO_MVAE if size == "nano" else RELEASE_ADAPTER
    root = env["root"] / f"mvae_{size}"
    init = write_json(root.with_suffix(".json"), cfg)
    r = train(_common(env, root, "--init-config", str(init), "--train-encoder-adapter"))
    trained = load_file(str(r.out / "checkpoint-2" / "trainable.safetensors"))
    # reference: the architecture built here from the known config, holding the trained weights
    ref = MotionVAE(MotionVAEConfig.from_dict(json.loads(json.dumps(cfg)))).eval()
    ref.load_state_dict(load_file(str(r.exports["motion_vae"])), strict=True)
    own = ref.state_dict()
    assert trained and all(torch.equal(own[k[len("vae."):]], v) for k, v in trained.items())  # names: vae.<...>
    assert ref.config.adapter.groups == cfg["adapter"]["groups"]

    z = torch.randn(1, 16, 2, 2, 4, generator=_gen(1))
    delta = torch.randn(1, 3, 5, 16, 32, generator=_gen(2)) * 0.3
    with torch.no_grad():
        want_dec, want_enc = ref.decode(z, traj_norm=True), ref.encode(delta, traj_norm=True)
    assert want_dec.abs().max() > 0
    for export in ("motion_vae", "official_vae"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")                    # a complete export loads without a guess
            model = load_motion_vae(r.exports[export])
        assert model.config.adapter == ref.config.adapter, export
        with torch.no_grad():
            torch.testing.assert_close(model.decode(z, traj_norm=True), want_dec, atol=0, rtol=0)
            got_enc = model.encode(delta, traj_norm=True)
        want = want_enc if isinstance(want_enc, torch.Tensor) else want_enc[0]
        got = got_enc if isinstance(got_enc, torch.Tensor) else got_enc[0]
        torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert (r.exports["official_vae"] / RELEASE_CONFIG_FILE).is_file()

    if size == "nano":
        # a release-layout folder without the recorded config (as older versions wrote it): the group count is a
        # guess (the release's 32), and the loader says so instead of decoding 200 % off in silence
        bare = root / "bare_VAE"
        shutil.copytree(r.exports["official_vae"], bare)
        (bare / RELEASE_CONFIG_FILE).unlink()
        with pytest.warns(UserWarning, match="GroupNorm groups"):
            model = load_motion_vae(bare)
        assert any("GroupNorm groups" in n and RELEASE_CONFIG_FILE in n for n in model.load_info.notes)
        assert model.config.adapter.groups == 32
        with torch.no_grad():
            assert not torch.allclose(model.decode(z, traj_norm=True), want_dec, atol=1e-3)


def test_release_layout_config_file_must_match_its_weights(env, tmp_path):
    from moge4d_core.errors import MoGe4DInputError
    from moge4d_core.loading.motion_vae import save_official_layout

    folder = save_official_layout(tiny_motion_vae(), tmp_path / "VAE")
    doc = json.loads((folder / RELEASE_CONFIG_FILE).read_text())
    doc["config"]["adapter"]["channels"] = 64
    (folder / RELEASE_CONFIG_FILE).write_text(json.dumps(doc))
    with pytest.raises(MoGe4DInputError, match=r"moge4d_config\.json: does not describe the adapter weights.*channels"):
        load_motion_vae(folder)
    (folder / RELEASE_CONFIG_FILE).write_text("{not json")
    with pytest.raises(MoGe4DInputError, match=r"moge4d_config\.json: unreadable"):
        load_motion_vae(folder)


def test_pixel_vae_export_decodes_like_the_trained_model(env):
    from diffusers import AutoencoderKLWan

    from training.train_pixel_vae import train

    kwargs = wan_vae_kwargs(NANO)
    init = write_json(env["root"] / "pvae.json", kwargs)
    r = train(_common(env, env["root"] / "pvae", "--init-config", str(init)))
    trained = load_file(str(r.out / "checkpoint-2" / "trainable.safetensors"))
    ref = AutoencoderKLWan(**kwargs).eval()
    state = ref.state_dict()
    state.update({k[len("vae."):]: v for k, v in trained.items()})
    ref.load_state_dict(state, strict=True)
    vae = load_wan_vae(r.exports["wan_vae"])
    z = torch.randn(1, 16, 2, 2, 4, generator=_gen(3))
    x = torch.rand(1, 3, 5, 16, 32, generator=_gen(4)) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(vae.decode(z).sample, ref.decode(z).sample, atol=0, rtol=0)
        torch.testing.assert_close(vae.encode(x).latent_dist.mean, ref.encode(x).latent_dist.mean, atol=0, rtol=0)


def _strag_inputs(seed):
    g = _gen(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return dict(hidden_states=r(1, 16, 2, 2, 4), timestep=torch.tensor([500.0]),
                encoder_hidden_states=r(1, 5, 32), encoder_hidden_states_image=r(1, 257, 16),
                control=r(1, 16, 2, 2, 4), depth=r(1, 16, 2, 2, 4))


def _vism_inputs(seed):
    g = _gen(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return dict(hidden_states=r(1, 16, 2, 2, 4), timestep=torch.tensor([700.0]),
                encoder_hidden_states=r(1, 6, 32), encoder_hidden_states_image=r(1, 257, 16),
                mask=torch.rand(1, 4, 2, 2, 4, generator=g), masked_video=r(1, 16, 2, 2, 4))


def test_strag_full_export_computes_like_the_trained_weights(env):
    from moge4d_core.loading.motion_vae import save_motion_vae
    from training.train_strag import train

    vae = save_motion_vae(tiny_motion_vae(), env["root"] / "mvae.safetensors")
    cfg = write_json(env["root"] / "strag.json", STRAG_CFG)
    r = train(_common(env, env["root"] / "strag_full", "--motion-vae", str(vae), "--init-config", str(cfg)))
    ref = STraGDiT(**dit_config(STRAG_CFG)).eval()
    ref.load_state_dict(load_file(str(r.out / "checkpoint-2" / "trainable.safetensors")), strict=True)
    model = load_strag(r.exports["dit"], dtype=torch.float32)
    x = _strag_inputs(5)
    with torch.no_grad():
        torch.testing.assert_close(model(**x), ref(**x), atol=0, rtol=0)


@pytest.mark.parametrize("which", ["strag", "vism"])
def test_lora_exports_at_the_release_rank_and_alpha(env, which):
    """Rank 128, alpha 64 (scale 0.5, the release's ViSM LoRA): the kohya file merged with merge_lora, the
    PEFT folder and the merged full export all compute the trained PEFT model's output."""
    root = env["root"] / f"lora_{which}"
    root.mkdir()
    torch.manual_seed(11)
    if which == "strag":
        from moge4d_core.loading.motion_vae import save_motion_vae
        from training.train_strag import train

        base_file = save_wan_dit(STraGDiT(**dit_config(STRAG_CFG)), root / "base.safetensors")
        extra = ["--motion-vae", str(save_motion_vae(tiny_motion_vae(), root / "mvae.safetensors"))]
        load_base, inputs = (lambda p: load_strag(p, dtype=torch.float32)), _strag_inputs(6)
    else:
        from training.train_vism import train

        base_file = save_wan_dit(ViSMDiT(**dit_config(VISM_CFG)), root / "base.safetensors")
        extra = ["--vae", str(save_pixel_vae(tiny_pixel_vae(seed=8), root / "wan_vae.safetensors"))]
        load_base, inputs = (lambda p: load_vism_base(p, dtype=torch.float32)), _vism_inputs(6)
    r = train(_common(env, root / "run", "--model", str(base_file), "--lora-rank", "128", "--lora-alpha", "64",
                      "--kohya-dtype", "fp32", "--export-merged", *extra))
    raw = load_file(str(r.exports["kohya_lora"]))
    assert {v.item() for k, v in raw.items() if k.endswith(".alpha")} == {64.0}
    assert {v.shape[0] for k, v in raw.items() if k.endswith("lora_down.weight")} == {128}
    with torch.no_grad():
        y_base = load_base(base_file)(**inputs)
        y_peft = load_peft_adapter(load_base(base_file), r.exports["peft_adapter"], which)(**inputs)
        y_kohya = merge_lora(load_base(base_file), r.exports["kohya_lora"], strength=1.0)(**inputs)
        y_merged = load_base(r.exports["dit"])(**inputs)
    assert (y_peft - y_base).abs().max() > 1e-3                 # the LoRA changed the model
    torch.testing.assert_close(y_kohya, y_peft, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y_merged, y_peft, atol=1e-5, rtol=1e-5)
