"""Motion VAE / Wan VAE loading from the official release layout, the original Wan layout, ComfyUI's single
file, diffusers layout and our own safetensors; outputs after a round trip are bit-exact in fp32.

The original-layout key names are checked against diffusers' own converter (an independent implementation),
so a file written with our inverse mapping is a genuine original-layout file.
"""
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.loading.motion_vae import (detect_wan_vae_layout, infer_wan_vae_config, load_motion_vae,
                                            load_wan_vae, save_motion_vae, save_official_layout,
                                            wan_vae_diffusers_to_original, wan_vae_original_to_diffusers)
from moge4d_core.models.motion_vae import AdapterConfig, MotionVAE, MotionVAEConfig

torch.set_num_threads(1)  # tiny convolutions: one thread is fastest on a shared 2-core machine

TINY_VAE = dict(base_dim=4, dim_mult=[1, 2, 4, 4], num_res_blocks=2)


def _make(seed=0):
    torch.manual_seed(seed)
    m = MotionVAE(MotionVAEConfig(vae=TINY_VAE, adapter=AdapterConfig(channels=32)))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return m.eval()


@pytest.fixture(scope="module")
def model():
    return _make(0)


@pytest.fixture(scope="module")
def probe():
    g = torch.Generator().manual_seed(5)
    return torch.randn(1, 3, 5, 16, 24, generator=g), torch.randn(1, 16, 2, 2, 3, generator=g)


def _outputs(m, probe):
    x, z = probe
    with torch.no_grad():
        return m.encode(x), m.decode(z)


def _assert_same_outputs(a, b, probe):
    for u, v in zip(_outputs(a, probe), _outputs(b, probe)):
        assert torch.equal(u, v)


def _original_state(m):
    return wan_vae_diffusers_to_original(m.vae.state_dict(), dict(m.vae.config))


# --- key mapping ----------------------------------------------------------------------------------

def test_original_layout_agrees_with_diffusers_converter(model):
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    orig = _original_state(model)
    assert detect_wan_vae_layout(orig) == "original"
    assert "decoder.upsamples.4.shortcut.weight" in orig and "encoder.downsamples.3.shortcut.weight" in orig
    assert "decoder.upsamples.3.time_conv.weight" in orig and "conv1.weight" in orig and "conv2.weight" in orig
    ref = model.vae.state_dict()
    conv = convert_wan_vae_to_diffusers(dict(orig))
    assert set(conv) == set(ref)
    assert all(torch.equal(conv[k], ref[k]) for k in ref)
    back = wan_vae_original_to_diffusers(orig, dict(model.vae.config))
    assert set(back) == set(ref) and all(back[k] is ref[k] or torch.equal(back[k], ref[k]) for k in ref)


def test_full_size_mapping_and_config_inference_on_meta_device():
    from diffusers import AutoencoderKLWan
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    with torch.device("meta"):
        full = AutoencoderKLWan()
    ref = full.state_dict()
    orig = wan_vae_diffusers_to_original(ref, dict(full.config))
    assert len(orig) == 194                      # reference §E: 194 keys (with the 'model.' prefix in vae/)
    assert sum(v.numel() for v in orig.values()) == pytest.approx(126.9e6, rel=1e-3)
    conv = convert_wan_vae_to_diffusers(dict(orig))
    assert set(conv) == set(ref)
    cfg = infer_wan_vae_config(orig)
    assert cfg == dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                       temperal_downsample=[False, True, True], in_channels=3, out_channels=3)


# --- official release layout ------------------------------------------------------------------------

def test_official_release_folder_top_level(model, probe, tmp_path):
    root = save_official_layout(model, tmp_path / "VAE")
    vae_keys = torch.load(root / "vae" / "pytorch_model.bin", weights_only=True).keys()
    assert all(k.startswith("model.") for k in vae_keys)
    assert "model.decoder.middle.0.residual.0.gamma" in vae_keys
    loaded = load_motion_vae(root)
    info = loaded.load_info
    assert info.format == "official_release" and info.filled_keys == [] and info.file == str(root)
    assert info.files["vae"] == str(root / "vae" / "pytorch_model.bin")
    assert loaded.config.adapter.channels == 32 and loaded.config.adapter.decoder_blocks == 2
    _assert_same_outputs(model, loaded, probe)


def test_official_release_inside_checkpoint_n_takes_highest(model, probe, tmp_path):
    other = _make(1)
    save_official_layout(other, tmp_path / "VAE" / "checkpoint-100")
    save_official_layout(model, tmp_path / "VAE" / "checkpoint-200")
    (tmp_path / "VAE" / "checkpoint-50").mkdir()      # unrelated empty folder is ignored
    loaded = load_motion_vae(tmp_path / "VAE")
    assert loaded.load_info.file.endswith("checkpoint-200")
    _assert_same_outputs(model, loaded, probe)


def test_release_without_encoder_prompt_uses_sigmoid_encoder(model, probe, tmp_path):
    root = save_official_layout(model, tmp_path / "VAE")
    (root / "encoder_prompt" / "pytorch_model.bin").unlink()
    (root / "encoder_prompt").rmdir()
    loaded = load_motion_vae(root)
    info = loaded.load_info
    assert info.files["encoder_prompt"] is None and any("sigmoid" in n for n in info.notes)
    assert info.filled_keys == ["encoder_adapter." + k for k in loaded.encoder_adapter.state_dict()]
    x = probe[0]
    with torch.no_grad():
        assert torch.equal(loaded.encoder_adapter(x), torch.sigmoid(x))
        assert torch.equal(loaded.decode(probe[1]), model.decode(probe[1]))


def test_release_missing_decoder_prompt_is_named(model, tmp_path):
    root = save_official_layout(model, tmp_path / "VAE")
    (root / "decoder_prompt" / "pytorch_model.bin").unlink()
    (root / "decoder_prompt").rmdir()
    with pytest.raises(MoGe4DInputError, match=r"decoder_prompt/.*decoder adapter"):
        load_motion_vae(root)


def test_release_missing_vae_needs_base_vae(model, probe, tmp_path):
    root = save_official_layout(model, tmp_path / "VAE")
    vae_bin = root / "vae" / "pytorch_model.bin"
    plain = tmp_path / "Wan2.1_VAE.pth"
    torch.save({k[len("model."):]: v for k, v in torch.load(vae_bin, weights_only=True).items()}, plain)
    vae_bin.unlink()
    (root / "vae").rmdir()
    with pytest.raises(MoGe4DInputError, match=r"'vae/'.*base_vae"):
        load_motion_vae(root)
    loaded = load_motion_vae(root, base_vae=plain)
    assert any("stock Wan VAE" in n for n in loaded.load_info.notes) and loaded.load_info.files["vae"] == str(plain)
    _assert_same_outputs(model, loaded, probe)


def test_release_with_adapter_of_wrong_shape_is_rejected(model, tmp_path):
    root = save_official_layout(model, tmp_path / "VAE")
    dec = torch.load(root / "decoder_prompt" / "pytorch_model.bin", weights_only=True)
    dec["up.0.block.1.conv1.weight"] = torch.zeros(32, 32, 1, 1)
    torch.save(dec, root / "decoder_prompt" / "pytorch_model.bin")
    with pytest.raises(MoGe4DInputError, match=r"up\.0\.block\.1\.conv1\.weight"):
        load_motion_vae(root)


# --- plain Wan VAE files ----------------------------------------------------------------------------

def test_plain_wan_vae_pth_and_comfy_safetensors(model, tmp_path):
    orig = _original_state(model)
    pth = tmp_path / "Wan2.1_VAE.pth"
    torch.save(orig, pth)
    comfy = tmp_path / "wan_2.1_vae.safetensors"
    save_file({k: v.contiguous() for k, v in orig.items()}, str(comfy))
    diff_dir = tmp_path / "diffusers_vae"
    model.vae.save_pretrained(diff_dir)
    video = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    with torch.no_grad():
        want = model.vae.encode(video).latent_dist.mean
        want_dec = model.vae.decode(want).sample
    for path, layout in ((pth, "original"), (comfy, "original"), (diff_dir, "diffusers")):
        vae = load_wan_vae(path)
        assert vae.load_info.format == f"wan_vae_{layout}" and vae.load_info.dtype == torch.float32
        with torch.no_grad():
            got = vae.encode(video).latent_dist.mean
            assert torch.equal(got, want)
            assert torch.equal(vae.decode(got).sample, want_dec)


def test_comfy_bf16_file_is_cast_to_requested_dtype(model, tmp_path):
    orig = {k: v.to(torch.bfloat16).contiguous() for k, v in _original_state(model).items()}
    f = tmp_path / "wan_2.1_vae_bf16.safetensors"
    save_file(orig, str(f))
    vae = load_wan_vae(f, dtype=torch.float32)
    sd = vae.state_dict()
    assert sd["encoder.conv_in.weight"].dtype == torch.float32
    assert torch.equal(sd["encoder.conv_in.weight"], orig["encoder.conv1.weight"].float())


def test_plain_wan_vae_as_motion_vae_needs_fresh_adapters(model, tmp_path):
    pth = tmp_path / "Wan2.1_VAE.pth"
    torch.save(_original_state(model), pth)
    with pytest.raises(MoGe4DInputError, match="fresh_adapters=True"):
        load_motion_vae(pth)
    fresh = load_motion_vae(pth, fresh_adapters=True)
    assert fresh.load_info.filled_keys and all(not k.startswith("vae.") for k in fresh.load_info.filled_keys)
    x = torch.randn(1, 3, 5, 16, 16)
    with torch.no_grad():
        assert torch.equal(fresh.encoder_adapter(x), torch.sigmoid(x))
    assert torch.equal(fresh.vae.state_dict()["decoder.conv_out.weight"], model.vae.state_dict()["decoder.conv_out.weight"])


def test_not_a_vae_file_is_rejected(tmp_path):
    f = tmp_path / "something.safetensors"
    save_file({"blocks.0.self_attn.q.weight": torch.zeros(2, 2)}, str(f))
    with pytest.raises(MoGe4DInputError, match="not a Wan2.1 VAE"):
        load_wan_vae(f)


def test_truncated_vae_file_names_missing_keys(model, tmp_path):
    orig = _original_state(model)
    orig.pop("decoder.head.0.gamma")
    f = tmp_path / "broken.safetensors"
    save_file({k: v.contiguous() for k, v in orig.items()}, str(f))
    with pytest.raises(MoGe4DInputError, match="decoder.norm_out.gamma"):
        load_wan_vae(f)


# --- our own format -------------------------------------------------------------------------------

def test_own_safetensors_round_trip(model, probe, tmp_path):
    f = save_motion_vae(model, tmp_path / "motion_vae.safetensors")
    loaded = load_motion_vae(f)
    assert loaded.load_info.format == "moge4d" and loaded.load_info.file == str(f)
    _assert_same_outputs(model, loaded, probe)
    half = load_motion_vae(f, dtype=torch.bfloat16)
    assert next(half.parameters()).dtype == torch.bfloat16


def test_own_file_of_another_architecture_is_rejected(tmp_path):
    from moge4d_core.loading.common import save_state_dict

    f = save_state_dict({"a": torch.zeros(1)}, tmp_path / "x.safetensors", "moge4d_strag", {})
    with pytest.raises(MoGe4DInputError, match="not a motion VAE"):
        load_motion_vae(f)


def test_missing_path_is_named(tmp_path):
    with pytest.raises(MoGe4DInputError, match="no such file"):
        load_motion_vae(tmp_path / "nope")
    assert not Path(tmp_path / "nope").exists()
