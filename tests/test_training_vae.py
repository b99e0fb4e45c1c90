"""VAE trainer (motion and pixel modes) on a tiny Wan VAE and synthetic TrajScene data (CPU): the loss falls,
only the intended parts train (the encoder adapter only with --train-encoder-adapter), resume is bit-exact,
and the exports load with load_motion_vae / load_wan_vae."""
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from moge4d_core.loading.motion_vae import load_motion_vae, load_wan_vae, save_motion_vae
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


def test_train_encoder_trains_the_wan_encoder_and_exports_it_in_both_layouts(env):
    root = env["root"]
    r = train(args(env, "one", root / "wenc", "--model", str(env["mvae"]), "--max-steps", "3", "--lr", "1e-3",
                   "--checkpoint-every", "0", "--train-encoder"))
    init = load_file(str(env["mvae"]))
    out = load_file(str(r.exports["motion_vae"]))
    changed = {k for k in init if not torch.equal(out[k], init[k])}
    assert any(k.startswith("vae.encoder.") for k in changed) and any(k.startswith("vae.quant_conv.") for k in changed)
    assert not any(k.startswith(("encoder_adapter.", "vae.post_quant_conv.")) for k in changed)
    official, info = load_motion_vae(r.exports["official_vae"])
    ours = load_motion_vae(r.exports["motion_vae"])[0]
    assert info["format"] == "official_release"
    for name, want in ours.vae.encoder.state_dict().items():
        assert torch.equal(official.vae.encoder.state_dict()[name], want), name


def test_motion_vae_resume_is_bit_exact_and_exports_load(env):
    root = env["root"]
    common = ["--init-config", str(env["mcfg"]), "--max-steps", "4", "--lr", "1e-3", "--checkpoint-every", "2",
              "--batch-size", "2"]
    a = train(args(env, "two", root / "ma", *common))
    b = train(args(env, "two", root / "mb", *common, "--resume", str(root / "ma" / "checkpoint-2")))
    assert a.losses == b.losses
    wa, wb = load_file(str(a.exports["motion_vae"])), load_file(str(b.exports["motion_vae"]))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    m1, info1 = load_motion_vae(a.exports["motion_vae"])
    m2, info2 = load_motion_vae(a.exports["official_vae"])
    assert info1["format"] == "moge4d" and info2["format"] == "official_release"
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert all(torch.equal(s1[k], wa[k]) and torch.equal(s2[k], wa[k]) for k in wa)


def test_pixel_vae_trains_resumes_and_loads_with_load_wan_vae(env):
    root = env["root"]
    r = train(args(env, "one", root / "pfit", "--mode", "pixel", "--model", str(env["pvae"]), "--max-steps", "20",
                   "--lr", "3e-3", "--checkpoint-every", "0"))
    assert np.mean(r.losses[-5:]) < 0.9 * np.mean(r.losses[:5]), r.losses
    common = ["--mode", "pixel", "--init-config", str(env["pcfg"]), "--max-steps", "4", "--lr", "1e-3",
              "--checkpoint-every", "2"]
    a = train(args(env, "two", root / "pa", *common))
    b = train(args(env, "two", root / "pb", *common, "--resume", str(root / "pa" / "checkpoint-2")))
    assert a.losses == b.losses
    va, _ = load_wan_vae(a.exports["wan_vae"])
    vb, cfg = load_wan_vae(b.exports["wan_vae"])
    sa, sb = va.state_dict(), vb.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    trained = load_file(str(root / "pa" / "checkpoint-4" / "trainable.safetensors"))  # names: vae.<diffusers>
    assert all(torch.equal(sa[k], trained["vae." + k]) for k in sa)
    assert cfg["vae"]["base_dim"] == TINY_VAE["base_dim"]
    # the pixel VAE is a valid --base-vae for a motion VAE (fresh adapters)
    mv, info = load_motion_vae(a.exports["wan_vae"], fresh_adapters=True)
    assert all(torch.equal(mv.vae.state_dict()[k], sa[k]) for k in sa)


def test_balanced_l1_weighs_moving_and_static_elements_half_each():
    from training.train_vae import _rec_loss

    g = torch.Generator().manual_seed(5)
    target = torch.zeros(2, 3, T, 8, 8)
    target[:, :, 1:, 2:4, 3:6] = torch.randn(2, 3, T - 1, 2, 3, generator=g)    # a small moving patch
    recon = torch.randn(target.shape, generator=g) * 0.1
    t64, r64 = target.double(), recon.double()
    moving = t64 != 0
    frac = float(moving.double().mean())
    err = (r64 - t64).abs()
    want = (err[moving].sum() * 0.5 / frac + err[~moving].sum() * 0.5 / (1 - frac)) / 2
    assert _rec_loss(recon, target, "l1_balanced").item() == pytest.approx(float(want), rel=1e-5)
    # mean weight 1: a uniform error of 1 costs what plain L1 charges, although the moving part is < 10 %
    assert frac < 0.1
    assert _rec_loss(target + 1, target, "l1_balanced").item() == pytest.approx(target[0].numel(), rel=1e-5)
    # nothing moves: plain L1
    still = torch.zeros_like(target)
    assert _rec_loss(recon, still, "l1_balanced").item() == pytest.approx(_rec_loss(recon, still, "l1").item())



def test_balanced_l1_is_refused_in_pixel_mode(env):
    from moge4d_core.errors import MoGe4DInputError

    with pytest.raises(MoGe4DInputError, match="l1_balanced"):
        train(args(env, "two", env["root"] / "bad", "--mode", "pixel", "--rec-loss", "l1_balanced",
                   "--model", str(env["pvae"]), "--max-steps", "1"))


def test_metric_l2_is_the_squared_error_of_the_denormalised_motion_and_trains(env):
    from moge4d_core.geometry.normalization import denormalize_motion, official_spec
    from moge4d_core.errors import MoGe4DInputError
    from training.train_vae import _rec_loss

    g = torch.Generator().manual_seed(3)
    target, recon = torch.randn(2, 3, T, 4, 6, generator=g), torch.randn(2, 3, T, 4, 6, generator=g)
    points0 = torch.rand(2, 4, 6, 3, generator=g) * 5 + 1
    spec = official_spec(4, 6)
    ones = torch.ones(1, 4, 6, 3)
    scale = torch.stack([denormalize_motion(ones, p, spec)[0] for p in points0]).permute(0, 3, 1, 2)[:, :, None]
    metres = lambda d, p: denormalize_motion(d.permute(1, 2, 3, 0), p, spec)  # noqa: E731  (T,H,W,3)
    want = sum(float((metres(recon[i], points0[i]) - metres(target[i], points0[i])).double().square().sum())
               for i in range(2)) / 2
    assert _rec_loss(recon, target, "l2_metric", scale).item() == pytest.approx(want, rel=1e-5)
    # far points cost more than near ones for the same normalised error
    near, far = scale.clone(), scale * 3
    assert _rec_loss(recon, target, "l2_metric", far).item() == pytest.approx(
        9 * _rec_loss(recon, target, "l2_metric", near).item(), rel=1e-5)
    r = train(args(env, "one", env["root"] / "metric", "--model", str(env["mvae"]), "--max-steps", "12", "--lr", "1e-3",
                   "--checkpoint-every", "0", "--rec-loss", "l2_metric", "--train-encoder"))
    assert np.all(np.isfinite(r.losses)) and np.mean(r.losses[-4:]) < np.mean(r.losses[:4]), r.losses
    with pytest.raises(MoGe4DInputError, match="l2_metric"):
        train(args(env, "two", env["root"] / "bad2", "--mode", "pixel", "--rec-loss", "l2_metric",
                   "--model", str(env["pvae"]), "--max-steps", "1"))
