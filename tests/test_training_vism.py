"""4D-ViSM trainer on a tiny Fun-InP DiT, a tiny pixel Wan VAE and synthetic renders (CPU): LoRA on every Linear
(the release's module list), the loss falls, resume is bit-exact, the kohya export merged with merge_lora gives the
PEFT model's output, full fine-tunes load with load_vism_base, and the all-hole conditioning rule."""
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from moge4d_core.loading.lora import load_kohya_lora, merge_lora
from moge4d_core.loading.wan_dit import load_vism_base, save_wan_dit
from moge4d_core.loading.wan_keys import original_linear_module_names
from moge4d_core.models.wan_dit import ViSMDiT, dit_config, reads_text
from moge4d_core.pipeline import WanImageVAE, encode_vism_conditions
from training.adapters import load_peft_adapter
from training.train_vism import VismOptions, train, vism_conditions
from training_helpers import DATA_ARGS, T, VISM_CFG, save_pixel_vae, tiny_pixel_vae, write_data, write_json

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("vism")
    torch.manual_seed(3)
    base = ViSMDiT(**dit_config(VISM_CFG))
    return dict(root=root, one=write_data(root / "one", 1, seed=3), two=write_data(root / "two", 2, seed=0),
                vae=save_pixel_vae(tiny_pixel_vae(seed=8), root / "wan_vae.safetensors"),
                cfg=write_json(root / "vism.json", VISM_CFG),
                base=save_wan_dit(base, root / "base" / "diffusion_pytorch_model.safetensors"))


def args(env, data, out, *extra):
    return ["--data", str(env[data]), "--out", str(out), "--vae", str(env["vae"]), *DATA_ARGS, *extra]


def test_lora_on_every_linear_lowers_the_loss(env):
    r = train(args(env, "one", env["root"] / "fit", "--init-config", str(env["cfg"]), "--lora-rank", "4",
                   "--lora-alpha", "4", "--lr", "1e-2", "--grad-clip", "1.0", "--max-steps", "30",
                   "--checkpoint-every", "0", "--export-merged"))
    assert np.mean(r.losses[-5:]) < 0.85 * np.mean(r.losses[:5]), r.losses
    # from scratch without a text encoder: the export's text-input weights are zero (the model reads no text)
    assert not reads_text(load_vism_base(r.exports["dit"], dtype=torch.float32))
    lora = load_kohya_lora(r.exports["kohya_lora"])
    # the release's module list (40*12 + 8 = 488 at 14B): here 2 blocks
    assert sorted(lora) == sorted(original_linear_module_names(2, image=True))
    assert {w.rank for w in lora.values()} == {4} and {w.alpha for w in lora.values()} == {4.0}
    raw = load_file(str(r.exports["kohya_lora"]))
    assert "lora_unet__blocks_0_cross_attn_k_img.lora_down.weight" in raw          # official double underscore
    assert all(v.dtype == torch.bfloat16 for v in raw.values())                   # release dtype by default
    assert (r.exports["peft_adapter"] / "adapter_config.json").is_file()
    assert VismOptions().lora_rank == 128 and VismOptions().lora_alpha == 64.0


def test_lora_resume_is_bit_exact(env):
    root = env["root"]
    common = ["--init-config", str(env["cfg"]), "--lora-rank", "4", "--lora-alpha", "2", "--lr", "1e-2",
              "--max-steps", "4", "--checkpoint-every", "2"]
    a = train(args(env, "two", root / "a", *common))
    b = train(args(env, "two", root / "b", *common, "--resume", str(root / "a" / "checkpoint-2")))
    assert a.losses == b.losses
    ta = load_file(str(root / "a/checkpoint-4/trainable.safetensors"))
    tb = load_file(str(root / "b/checkpoint-4/trainable.safetensors"))
    assert len(ta) == 2 * 32 and all(".lora_" in k for k in ta)                   # only the adapter is stored
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    pa = load_file(str(a.exports["peft_adapter"] / "adapter_model.safetensors"))
    pb = load_file(str(b.exports["peft_adapter"] / "adapter_model.safetensors"))
    assert all(torch.equal(pa[k], pb[k]) for k in pa)


def _inputs(seed):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return dict(hidden_states=r(1, 16, 2, 2, 4), timestep=torch.tensor([700.0]),
                encoder_hidden_states=r(1, 6, 32), encoder_hidden_states_image=r(1, 257, 16),
                mask=torch.rand(1, 4, 2, 2, 4, generator=g), masked_video=r(1, 16, 2, 2, 4))


def test_kohya_export_merged_gives_the_peft_models_output(env):
    r = train(args(env, "two", env["root"] / "kohya", "--model", str(env["base"]), "--lora-rank", "4",
                   "--lora-alpha", "8", "--lr", "2e-2", "--max-steps", "4", "--checkpoint-every", "0"))
    x = _inputs(1)
    with torch.no_grad():
        base = load_vism_base(env["base"], dtype=torch.float32)
        y_base = base(**x)
        peft_model = load_vism_base(env["base"], dtype=torch.float32)
        load_peft_adapter(peft_model, r.exports["peft_adapter"], "vism")
        y_peft = peft_model(**x)
        merged = merge_lora(base, r.exports["kohya_lora"], strength=1.0)
        y_merged = merged(**x)
        # the kohya file is bf16 (release format): round the PEFT weights the same way for an exact comparison
        for n, p in peft_model.named_parameters():
            if ".lora_" in n:
                p.copy_(p.to(torch.bfloat16).float())
        y_peft_bf16 = peft_model(**x)
    gap = (y_peft - y_base).abs().max().item()
    assert gap > 1e-2                                                   # the LoRA changed the model
    torch.testing.assert_close(y_merged, y_peft_bf16, atol=1e-5, rtol=1e-5)
    assert (y_merged - y_peft).abs().max().item() < 0.05 * gap          # bf16 rounding only


def test_full_finetune_export_loads_with_load_vism_base(env):
    root = env["root"]
    r = train(args(env, "one", root / "full", "--model", str(env["base"]), "--full", "--lr", "1e-3",
                   "--max-steps", "2", "--checkpoint-every", "0"))
    model = load_vism_base(r.exports["dit"], dtype=torch.float32)
    cfg = model.config
    assert cfg.arch == "wan2.1_fun_inp" and cfg.in_channels == 36
    assert reads_text(model)                      # a base model's text path is kept, even trained without text
    trained = load_file(str(root / "full/checkpoint-2/trainable.safetensors"))
    own = dict(model.named_parameters())
    assert set(own) == set(trained) and all(torch.equal(own[k], trained[k]) for k in trained)
    base = dict(load_vism_base(env["base"], dtype=torch.float32).named_parameters())
    assert not torch.equal(base["proj_out.weight"], own["proj_out.weight"])


def test_clip_context_of_the_target_frame_runs(env):
    from moge4d_core.models.clip import ClipVisionEncoder, clip_vision_config

    torch.manual_seed(0)
    clip = ClipVisionEncoder(clip_vision_config(hidden_size=16, intermediate_size=32, num_attention_heads=2,
                                                num_hidden_layers=2, projection_dim=16))
    o = VismOptions(**dict(vars(VismOptions()), data=str(env["one"]), out=str(env["root"] / "clip"),
                           vae=str(env["vae"]), init_config=str(env["cfg"]), clip=clip, lora_rank=4, lora_alpha=4.0,
                           max_steps=2, checkpoint_every=0, frames=T, crop="none", grid="16x32", progress=False))
    r = train(o)
    assert r.steps == 2 and all(np.isfinite(r.losses))
    state = (env["root"] / "clip/checkpoint-2/trainer_state.json").read_text()
    assert '"clip": true' in state


def test_all_hole_rule_zeroes_or_encodes_mid_gray():
    vae = WanImageVAE(tiny_pixel_vae(seed=1).eval())
    g = torch.Generator().manual_seed(0)
    render = torch.rand(T, 16, 32, 3, generator=g)
    holes = torch.ones(T, 16, 32)
    m0, v0 = vism_conditions(vae, render, holes, u=0.5, inpaint_drop=0.9)          # u < 0.9: zeros
    assert torch.count_nonzero(m0) == 0 and torch.count_nonzero(v0) == 0
    m1, v1 = vism_conditions(vae, render, holes, u=0.95, inpaint_drop=0.9)         # encoded: VAE(mid-gray)
    assert torch.count_nonzero(m1) == 0
    torch.testing.assert_close(v1, vae.encode(torch.zeros(1, 3, T, 16, 32)), rtol=0, atol=0)
    assert v1.abs().max() > 0
    part = (torch.rand(T, 16, 32, generator=g) > 0.7).float()
    m2, v2 = vism_conditions(vae, render, part, u=0.0, inpaint_drop=0.9)
    ref = encode_vism_conditions(vae, render, part)
    assert torch.equal(m2, ref.mask) and torch.equal(v2, ref.masked_video)
