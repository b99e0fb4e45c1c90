"""VAE trainers (motion VAE, training.train_vae; pixel Wan VAE, training.train_pixel_vae) on a tiny Wan VAE and
synthetic TrajScene data (CPU): the loss falls, only the intended parts train (the encoder adapter only with
--train-encoder-adapter), resume is bit-exact, and the exports load with load_motion_vae / load_wan_vae."""
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from moge4d_core.loading.motion_vae import load_motion_vae, load_wan_vae, save_motion_vae
from training.train_pixel_vae import train as train_pixel
from training.train_vae import MotionVAETrainModule, kl_divergence, train
from training_helpers import DATA_ARGS, TINY_ADAPTER, TINY_VAE, T, save_pixel_vae, tiny_motion_vae, tiny_pixel_vae, \
    write_data, write_json

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("vae")
    return dict(root=root, one=write_data(root / "one", 1, seed=3), two=write_data(root / "two", 2, seed=0),
                mvae=save_motion_vae(tiny_motion_vae(seed=7), root / "mvae.safetensors"),
                pvae=save_pixel_vae(tiny_pixel_vae(seed=8), root / "wan_vae.safetensors"),
                mcfg=write_json(root / "mvae.json", {"vae": TINY_VAE, "adapter": TINY_ADAPTER}),
                pcfg=write_json(root / "pvae.json", TINY_VAE))


def args(env, data, out, *extra):
    return ["--data", str(env[data]), "--out", str(out), *DATA_ARGS, *extra]


def test_train_module_matches_motion_vae_encode_and_kl_formula():
    vae = tiny_motion_vae(seed=2).eval()
    with torch.no_grad():
        vae.encoder_adapter.conv_out.weight.normal_(0, 0.1)
    delta = torch.randn(2, 3, T, 16, 32, generator=torch.Generator().manual_seed(0))
    z_ref = vae.encode(delta, traj_norm=False, sample=True, generator=torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    noise = torch.randn(z_ref.shape, generator=g)
    mod = MotionVAETrainModule(vae, traj_norm=False, train_encoder=True)
    with torch.no_grad():
        recon, mean, logvar = mod(delta, noise)
        z = mean + torch.exp(0.5 * logvar) * noise
        torch.testing.assert_close(z, z_ref, rtol=0, atol=0)
        torch.testing.assert_close(recon, vae.decode(z_ref, traj_norm=False), rtol=0, atol=0)
    m64, lv64 = mean.double(), logvar.double()
    want = 0.5 * float((m64 ** 2 + torch.exp(lv64) - 1 - lv64).sum()) / 2
    assert kl_divergence(mean, logvar).item() == pytest.approx(want, rel=1e-5)


def test_motion_vae_overfits_and_the_encoder_adapter_trains_only_when_asked(env):
    root = env["root"]
    common = ["--model", str(env["mvae"]), "--max-steps", "25", "--lr", "1e-3", "--checkpoint-every", "0"]
    r = train(args(env, "one", root / "enc", *common, "--train-encoder-adapter"))
    assert np.mean(r.losses[-5:]) < 0.7 * np.mean(r.losses[:5]), r.losses
    init = load_file(str(env["mvae"]))
    out = load_file(str(r.exports["motion_vae"]))
    moved = lambda prefix: any(not torch.equal(out[k], init[k]) for k in init if k.startswith(prefix))  # noqa: E731
    same = lambda prefix: all(torch.equal(out[k], init[k]) for k in init if k.startswith(prefix))  # noqa: E731
    assert moved("encoder_adapter.") and moved("decoder_adapter.") and moved("vae.decoder.")
    assert same("vae.encoder.") and same("vae.quant_conv.") and same("vae.post_quant_conv.")
    r2 = train(args(env, "one", root / "noenc", "--model", str(env["mvae"]), "--max-steps", "2", "--lr", "1e-3",
                    "--checkpoint-every", "0"))
    out2 = load_file(str(r2.exports["motion_vae"]))
    assert all(torch.equal(out2[k], init[k]) for k in init if k.startswith("encoder_adapter."))
    assert torch.count_nonzero(out2["encoder_adapter.conv_out.weight"]) == 0      # still exactly sigmoid
    assert any("encoder adapter frozen" in n for n in r2.notes)


def test_the_trained_encoder_adapter_is_exported_in_both_layouts(env):
    root = env["root"]
    r = train(args(env, "one", root / "wenc", "--model", str(env["mvae"]), "--max-steps", "3", "--lr", "1e-3",
                   "--checkpoint-every", "0", "--train-encoder-adapter"))
    init = load_file(str(env["mvae"]))
    out = load_file(str(r.exports["motion_vae"]))
    changed = {k for k in init if not torch.equal(out[k], init[k])}
    assert any(k.startswith("encoder_adapter.") for k in changed)
    assert not any(k.startswith(("vae.encoder.", "vae.quant_conv.", "vae.post_quant_conv.")) for k in changed)
    official = load_motion_vae(r.exports["official_vae"])
    ours = load_motion_vae(r.exports["motion_vae"])
    assert official.load_info.format == "official_release"
    for name, want in ours.encoder_adapter.state_dict().items():
        assert torch.equal(official.encoder_adapter.state_dict()[name], want), name


def test_motion_vae_resume_is_bit_exact_and_exports_load(env):
    root = env["root"]
    common = ["--init-config", str(env["mcfg"]), "--max-steps", "4", "--lr", "1e-3", "--checkpoint-every", "2",
              "--batch-size", "2"]
    a = train(args(env, "two", root / "ma", *common))
    b = train(args(env, "two", root / "mb", *common, "--resume", str(root / "ma" / "checkpoint-2")))
    assert a.losses == b.losses
    wa, wb = load_file(str(a.exports["motion_vae"])), load_file(str(b.exports["motion_vae"]))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    m1 = load_motion_vae(a.exports["motion_vae"])
    m2 = load_motion_vae(a.exports["official_vae"])
    assert m1.load_info.format == "moge4d" and m2.load_info.format == "official_release"
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert all(torch.equal(s1[k], wa[k]) and torch.equal(s2[k], wa[k]) for k in wa)


def test_pixel_vae_trains_resumes_and_loads_with_load_wan_vae(env):
    root = env["root"]
    r = train_pixel(args(env, "one", root / "pfit", "--model", str(env["pvae"]), "--max-steps", "20",
                   "--lr", "3e-3", "--checkpoint-every", "0"))
    assert np.mean(r.losses[-5:]) < 0.9 * np.mean(r.losses[:5]), r.losses
    common = ["--init-config", str(env["pcfg"]), "--max-steps", "4", "--lr", "1e-3",
              "--checkpoint-every", "2"]
    a = train_pixel(args(env, "two", root / "pa", *common))
    b = train_pixel(args(env, "two", root / "pb", *common, "--resume", str(root / "pa" / "checkpoint-2")))
    assert a.losses == b.losses
    va = load_wan_vae(a.exports["wan_vae"])
    vb = load_wan_vae(b.exports["wan_vae"])
    sa, sb = va.state_dict(), vb.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    trained = load_file(str(root / "pa" / "checkpoint-4" / "trainable.safetensors"))  # names: vae.<diffusers>
    assert all(torch.equal(sa[k], trained["vae." + k]) for k in sa)
    assert vb.config["base_dim"] == TINY_VAE["base_dim"]
    # the pixel VAE is a valid --base-vae for a motion VAE (fresh adapters)
    mv = load_motion_vae(a.exports["wan_vae"], fresh_adapters=True)
    assert all(torch.equal(mv.vae.state_dict()[k], sa[k]) for k in sa)


def test_the_old_mode_flag_points_to_the_pixel_trainer_and_flags_are_never_abbreviated(env, capsys):
    from training.options import coerce_options
    from training.train_vae import MotionVaeOptions, main

    assert main(args(env, "one", env["root"] / "old", "--mode", "pixel", "--init-config", str(env["pcfg"]))) == 2
    assert "python -m training.train_pixel_vae" in capsys.readouterr().err
    assert not (env["root"] / "old").exists()
    with pytest.raises(SystemExit):              # argparse would otherwise read --mode as --model
        coerce_options(MotionVaeOptions, ["--mode", "pixel"])
