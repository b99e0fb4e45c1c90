"""Whitening a motion VAE's latent space (training.nano.whiten): the new latents are (z − m)/s per channel, the
posterior σ shrinks by s, their moments are 0/1, and decoding a whitened latent gives what the original VAE
decoded from the original latent."""
import copy

import pytest
import torch

from training.nano.whiten import latent_moments, whiten_motion_vae
from training_helpers import tiny_motion_vae

torch.set_num_threads(1)


@pytest.mark.parametrize("traj_norm", [True, False])
def test_whitening_is_an_exact_change_of_latent_coordinates(traj_norm):
    vae = tiny_motion_vae(seed=3).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():                                    # a latent space far from unit spread, as nano ends up
        vae.vae.quant_conv.weight.mul_(7.0)
        vae.vae.quant_conv.bias.add_(torch.randn(vae.vae.quant_conv.bias.shape, generator=g))
    motions = [torch.randn(2, 3, 5, 16, 16, generator=g) * 0.5 for _ in range(3)]
    m, s = latent_moments(vae, motions, traj_norm=traj_norm)
    assert (s - 1).abs().max() > 0.5 or m.abs().max() > 0.5      # really not white before
    white = whiten_motion_vae(copy.deepcopy(vae), m, s, traj_norm=traj_norm)
    m2, s2 = latent_moments(white, motions, traj_norm=traj_norm)
    torch.testing.assert_close(m2, torch.zeros_like(m2), atol=1e-4, rtol=0)
    torch.testing.assert_close(s2, torch.ones_like(s2), atol=1e-4, rtol=0)
    with torch.no_grad():
        z, lv = vae.posterior(motions[0], traj_norm=traj_norm)
        z2, lv2 = white.posterior(motions[0], traj_norm=traj_norm)
        view = lambda t: t.view(1, -1, 1, 1, 1).float()          # noqa: E731
        torch.testing.assert_close(z2, (z - view(m)) / view(s), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(lv2, lv - 2 * torch.log(view(s)), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(white.decode(z2, traj_norm=traj_norm), vae.decode(z, traj_norm=traj_norm),
                                   atol=1e-4, rtol=1e-4)
    # the encoder and decoder bodies are untouched: only the two 1x1x1 convs changed
    a, b = vae.state_dict(), white.state_dict()
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    assert changed == {"vae.quant_conv.weight", "vae.quant_conv.bias", "vae.post_quant_conv.weight",
                       "vae.post_quant_conv.bias"}


def test_nano_motion_init_is_the_block_codec_with_nano_adapters_with_four_channels_per_group(tmp_path):
    from moge4d_core.loading.motion_vae import load_motion_vae
    from moge4d_core.models.nano import NANO, wan_vae_kwargs
    from training.nano.block_codec import block_codec_wan_vae
    from training.nano.train_nano import WHITE, stage_argv, write_motion_init

    mv = load_motion_vae(write_motion_init(tmp_path))
    codec = block_codec_wan_vae(**wan_vae_kwargs(NANO))
    for (k, v), (k2, v2) in zip(mv.vae.state_dict().items(), codec.state_dict().items()):
        assert k == k2 and v.shape == v2.shape
        if v2.abs().max() == 0 or k.endswith("gamma"):
            assert torch.equal(v, v2), k                          # the codec's hand-set zeros and gains
    for adapter in (mv.encoder_adapter, mv.decoder_adapter):
        assert adapter.conv_in.out_channels == NANO.adapter_channels
        assert adapter.norm_out.num_channels // adapter.norm_out.num_groups == 4       # as the release's 128 / 32
    assert torch.count_nonzero(mv.encoder_adapter.conv_out.weight) == 0                 # encoder adapter = sigmoid
    argv = stage_argv("strag", "DATA", tmp_path)
    assert argv[argv.index("--motion-vae") + 1] == str(tmp_path / WHITE)
    argv = stage_argv("motion_vae", "DATA", tmp_path)
    assert argv[argv.index("--model") + 1] == str(tmp_path / "motion_init.safetensors")
    assert "--no-train-decoder" in argv and "--train-encoder-adapter" not in argv     # only the decoder adapter


def test_nano_configs_are_the_nano_sizes_and_the_strag_stage_trains_with_the_reference():
    """``training/configs/nano/*.json`` (what the recipe trains) are ``strag_config(NANO_STRAG)`` and
    ``vism_config(NANO_VISM)`` (pixel VAE: ``wan_vae_kwargs(NANO_VISM)``), and the STraG stage feeds the reference latent that inference feeds."""
    import json

    from moge4d_core.models.nano import NANO_STRAG, NANO_VISM, strag_config, vism_config, wan_vae_kwargs
    from moge4d_core.models.wan_dit import dit_config
    from training.nano.train_nano import CONFIGS, stage_argv

    # the recipe's JSON files (original Wan names) convert to the nano configs
    assert dit_config(json.loads((CONFIGS / "strag.json").read_text())) == strag_config(NANO_STRAG)
    assert dit_config(json.loads((CONFIGS / "vism.json").read_text())) == vism_config(NANO_VISM)
    assert json.loads((CONFIGS / "pixel_vae.json").read_text()) == wan_vae_kwargs(NANO_VISM)
    assert NANO_STRAG.dim > 64         # the patch's 64 noise values must fit through the residual stream
    argv = stage_argv("strag", "DATA", CONFIGS)
    assert "--reference" in argv and argv[argv.index("--lr-scheduler") + 1] == "cosine"


def test_nano_strag_tune_stage_fine_tunes_the_strag_on_the_trajectory_error_through_the_final_decoder(tmp_path):
    from training.nano.train_nano import EXPORTS, INSTALLED, STAGES, stage_argv

    stages = list(STAGES)
    assert stages.index("strag") < stages.index("motion_decoder") < stages.index("strag_tune")
    argv = stage_argv("strag_tune", "DATA", tmp_path)
    assert argv[argv.index("--model") + 1] == str(tmp_path / "strag" / EXPORTS["strag"])
    assert argv[argv.index("--motion-vae") + 1] == str(tmp_path / "motion_decoder" / EXPORTS["motion_decoder"])
    assert float(argv[argv.index("--trajectory-loss") + 1]) > 0 and "--reference" in argv
    assert INSTALLED["strag_tune"] == "strag.safetensors" and "strag" not in INSTALLED


def test_nano_install_is_all_or_nothing_and_writes_the_demo_image(tmp_path):
    import json

    import numpy as np
    from PIL import Image

    from moge4d_core.errors import MoGe4DInputError
    from training.nano.data import NANO_SCENES
    from training.nano.train_nano import EXPORTS, INSTALLED, install

    work, target = tmp_path / "runs", tmp_path / "nano_model"
    target.mkdir()
    (target / "strag.safetensors").write_bytes(b"old")
    sources = [work / "motion_decoder" / EXPORTS["motion_decoder"]] + [
        work / st / EXPORTS[st] for st in INSTALLED if st != "motion_decoder"]
    for i, src in enumerate(sources[:-1]):
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_bytes(bytes([i]) * 8)
    with pytest.raises(MoGe4DInputError, match="missing exports"):
        install(work, target)
    assert sorted(p.name for p in target.iterdir()) == ["strag.safetensors"]
    assert (target / "strag.safetensors").read_bytes() == b"old"          # nothing written half-way
    sources[-1].parent.mkdir(parents=True, exist_ok=True)
    sources[-1].write_bytes(b"new")
    paths = install(work, target)
    assert sorted(p.relative_to(target).as_posix() for p in paths) == sorted(
        p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())     # no temp folder left
    assert {INSTALLED["vism"], INSTALLED["pixel_vae"]} == {"diffusion_models/moge4d_nano_vism.safetensors",
                                                           "vae/moge4d_nano_vae.safetensors"}
    assert (target / "motion_vae.safetensors").read_bytes() == sources[0].read_bytes()
    spec = json.loads((target / "demo.json").read_text())
    img = np.asarray(Image.open(target / spec["image"]))
    depth = np.load(target / spec["depth"])
    assert img.shape == (NANO_SCENES["height"], NANO_SCENES["width"], 3) and depth.shape == img.shape[:2]
    assert depth.dtype == np.float32 and 1.0 < depth.min() < depth.max() < 20.0
    assert "motion_scale=8.0" in spec["source"] and spec["caption"]


def test_set_posterior_sigma_sets_the_noise_the_release_adds_in_the_dit_space(tmp_path):
    from moge4d_core.loading.motion_vae import load_motion_vae
    from training.nano.train_nano import WHITE, stage_argv, write_motion_init
    from training.nano.whiten import set_posterior_sigma

    vae = load_motion_vae(write_motion_init(tmp_path)).eval()
    delta = torch.randn(1, 3, 5, 16, 24) * 0.3
    mean_before = vae.encode(delta)
    set_posterior_sigma(vae, 0.3, delta)
    z, logvar = vae.posterior(delta)
    torch.testing.assert_close(torch.exp(0.5 * logvar), torch.full_like(logvar, 0.3))   # codec: constant
    torch.testing.assert_close(z, mean_before)                                          # the mean is untouched
    g = torch.Generator().manual_seed(0)
    spread = (vae.encode(delta, sample=True, generator=g) - z).std()
    assert 0.25 < spread < 0.35
    argv = stage_argv("motion_decoder", "DATA", tmp_path)
    assert "--traj-norm" in argv and "--train-encoder-adapter" not in argv and WHITE not in " ".join(argv)
