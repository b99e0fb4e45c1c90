"""4D-STraG trainer on tiny models and synthetic TrajScene data (CPU): the loss falls when overfitting one sample,
a resumed run is bit-exact, exports load through load_strag / parse_kohya_lora / merge_lora / the PEFT folder,
MPM training with OmniMAE features, and the Fun-Control base init."""
import json

import pytest
import torch
from safetensors.torch import load_file

from moge4d_core.loading.common import read_arch_config
from moge4d_core.loading.lora import load_kohya_lora, merge_lora
from moge4d_core.loading.motion_vae import save_motion_vae
from moge4d_core.loading.wan_dit import load_strag, save_wan_dit
from moge4d_core.models.wan_dit import STraGDiT, WanDiT, dit_config, hidden_width, reads_text
from training.adapters import load_peft_adapter
from training.train_strag import StragOptions, control_base_model, train
from training_helpers import DATA_ARGS, STRAG_CFG, TINY_DIT, T, tiny_motion_vae, write_data, write_json

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("strag")
    return dict(root=root, one=write_data(root / "one", 1, seed=3), two=write_data(root / "two", 2, seed=0),
                vae=save_motion_vae(tiny_motion_vae(), root / "mvae.safetensors"),
                cfg=write_json(root / "strag.json", STRAG_CFG))


def args(env, data, out, *extra):
    return ["--data", str(env[data]), "--out", str(out), "--motion-vae", str(env["vae"]), *DATA_ARGS, *extra]


def test_overfitting_one_sample_lowers_the_loss(env):
    out = env["root"] / "fit"
    r = train(args(env, "one", out, "--init-config", str(env["cfg"]), "--max-steps", "30", "--lr", "3e-3",
                   "--grad-clip", "1.0", "--weight-decay", "0", "--checkpoint-every", "0", "--eval-every", "15"))
    first, last = sum(r.losses[:5]) / 5, sum(r.losses[-5:]) / 5
    assert last < 0.6 * first, r.losses
    ev = [e["loss"] for e in r.evals]                       # fixed-noise evaluation at steps 0, 15, 30
    assert [e["step"] for e in r.evals] == [0, 15, 30] and ev[2] < ev[1] < ev[0]
    records = [json.loads(l) for l in (out / "logs" / "train.jsonl").read_text().splitlines()]
    train_recs = [x for x in records if x["kind"] == "train"]
    assert len(train_recs) == 30 and all(x["samples_per_s"] > 0 and "lr" in x for x in train_recs)
    assert any("text context is all zeros" in n for n in r.notes)
    assert r.steps_per_second > 0


def test_resume_is_bit_exact_and_the_export_loads(env):
    root = env["root"]
    common = ["--init-config", str(env["cfg"]), "--max-steps", "6", "--lr", "1e-3", "--checkpoint-every", "3",
              "--grad-accum", "2", "--warmup-steps", "2"]
    a = train(args(env, "two", root / "a", *common))
    b = train(args(env, "two", root / "b", *common, "--resume", str(root / "a" / "checkpoint-3")))
    assert b.resumed_from == root / "a" / "checkpoint-3"
    assert a.losses == b.losses                              # includes the next-step loss (step 4), exactly
    wa = load_file(str(a.exports["dit"]))
    wb = load_file(str(b.exports["dit"]))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ta, tb = load_file(str(root / "a/checkpoint-6/trainable.safetensors")), load_file(str(root / "b/checkpoint-6/trainable.safetensors"))
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    # the export is what the loader reads, weight for weight
    arch, cfg = read_arch_config(a.exports["dit"])
    assert arch == "moge4d_strag" and hidden_width(cfg) == STRAG_CFG["dim"] and cfg["in_channels"] == 64
    model = load_strag(a.exports["dit"], dtype=torch.float32)
    assert isinstance(model, STraGDiT) and model.config.in_channels == 64
    assert not reads_text(model)                  # trained from scratch without text: text-input weights zero
    own = dict(model.named_parameters())
    assert set(own) == set(ta) and all(torch.equal(own[k], ta[k]) for k in ta)
    # training moved the weights between the two checkpoints
    t3 = load_file(str(root / "a/checkpoint-3/trainable.safetensors"))
    assert not torch.equal(t3["proj_out.weight"], ta["proj_out.weight"])


def _inputs(seed, mpm):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    kw = dict(hidden_states=r(1, 16, 2, 2, 4), timestep=torch.tensor([500.0]),
              encoder_hidden_states=r(1, 5, 32), encoder_hidden_states_image=r(1, 257, 16),
              control=r(1, 16, 2, 2, 4), depth=r(1, 16, 2, 2, 4))
    if mpm:
        kw["motion_features"] = r(1, 196, mpm)
    return kw


def test_lora_exports_merge_like_the_peft_adapter(env):
    from moge4d_core.models.omnimae import OmniMAEEncoder

    root = env["root"]
    torch.manual_seed(5)
    base = STraGDiT(**dit_config(STRAG_CFG, mpm_feature_dim=8))
    with torch.no_grad():
        for n, p in base.named_parameters():
            if n.endswith(".gate"):
                p.normal_(0, 0.3)                            # a non-identity MPM, as a trained one
    base_file = save_wan_dit(base, root / "base" / "diffusion_pytorch_model.safetensors")
    torch.manual_seed(0)
    omni = OmniMAEEncoder(8, 1, 2)
    opts = StragOptions(**dict(vars(StragOptions()), data=str(env["two"]), out=str(root / "lora"),
                               motion_vae=str(env["vae"]), model=str(base_file), omnimae=omni, lora_rank=4,
                               lora_alpha=8.0, lr=1e-2, max_steps=4, checkpoint_every=0, export_merged=True,
                               kohya_dtype="fp32", frames=T, crop="none", grid="16x32", progress=False,
                               warmup_steps=0))
    r = train(opts)
    lora = load_kohya_lora(r.exports["kohya_lora"])
    assert len(lora) == 2 * 14 + 8                           # every Linear, the MPM linears included
    assert {w.rank for w in lora.values()} == {4} and {w.alpha for w in lora.values()} == {8.0}
    assert "blocks.1.spatial_guidance_ffn.spatial_guide.1" in lora and "blocks.0.self_attn.q" in lora
    x = _inputs(1, 8)
    ref = load_strag(base_file, dtype=torch.float32)
    with torch.no_grad():
        y_base = ref(**x)
        y_merge = merge_lora(ref, r.exports["kohya_lora"], strength=1.0)(**x)
        peft_m = load_strag(base_file, dtype=torch.float32)
        y_peft = load_peft_adapter(peft_m, r.exports["peft_adapter"], "strag")(**x)
        merged = load_strag(r.exports["dit"], dtype=torch.float32)
        y_full = merged(**x)
    assert not torch.allclose(y_base, y_peft, atol=1e-4)    # the LoRA learned something
    torch.testing.assert_close(y_merge, y_peft, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y_full, y_peft, atol=1e-5, rtol=1e-5)
    # the dtype asked for (the default, bf16, is the release format)
    assert StragOptions().kohya_dtype == "bf16"
    assert load_file(str(r.exports["kohya_lora"]))["lora_unet__blocks_0_ffn_0.alpha"].dtype == torch.float32


def test_mpm_is_trained_with_omnimae_features_and_frozen_without(env):
    from moge4d_core.models.omnimae import OmniMAEEncoder

    root = env["root"]
    cfg = write_json(root / "mpm.json", dict(STRAG_CFG, mpm_feature_dim=8))
    common = dict(vars(StragOptions()), data=str(env["one"]), motion_vae=str(env["vae"]), init_config=str(cfg),
                  max_steps=2, lr=1e-2, checkpoint_every=0, frames=T, crop="none", grid="16x32", progress=False,
                  warmup_steps=0)
    torch.manual_seed(0)
    with_f = train(StragOptions(**dict(common, out=str(root / "mpm_on"), omnimae=OmniMAEEncoder(8, 1, 2))))
    without = train(StragOptions(**dict(common, out=str(root / "mpm_off"))))
    on, off = load_file(str(with_f.exports["dit"])), load_file(str(without.exports["dit"]))
    gates = [k for k in on if k.endswith("spatial_guidance_self.gate")]
    assert gates and all(on[k].abs().max() > 0 for k in gates)      # zero-init gates moved
    assert all(off[k].abs().max() == 0 for k in gates)              # frozen: still the zero init
    assert any("MPM off and frozen" in n for n in without.notes)


def test_control_base_init_widens_the_patch_embedding_with_zeros(tmp_path):
    torch.manual_seed(1)
    cfg = dit_config(arch="wan2.1_fun_control_v1.1", in_dim=48, image_dim=16, ref_conv_in_dim=16, **TINY_DIT)
    ctrl = WanDiT(**cfg)
    f = save_wan_dit(ctrl, tmp_path / "ctrl.safetensors")
    m = control_base_model(str(f), torch.float32)
    pe, pe0 = m.patch_embedding.weight, ctrl.patch_embedding.weight
    assert isinstance(m, STraGDiT) and pe.shape[1] == 64 and m.config.arch == "moge4d_strag"
    assert torch.equal(pe[:, :48], pe0) and torch.count_nonzero(pe[:, 48:]) == 0
    sd, sd0 = m.state_dict(), ctrl.state_dict()
    assert all(torch.equal(sd[k], sd0[k]) for k in sd0 if k != "patch_embedding.weight")


def test_gradient_checkpointing_is_exact_and_bf16_weights_keep_fp32_modules(env):
    root = env["root"]
    common = ["--init-config", str(env["cfg"]), "--max-steps", "2", "--lr", "1e-3", "--checkpoint-every", "0"]
    a = train(args(env, "two", root / "gc0", *common))
    b = train(args(env, "two", root / "gc1", *common, "--gradient-checkpointing"))
    assert a.losses == b.losses
    wa, wb = load_file(str(a.exports["dit"])), load_file(str(b.exports["dit"]))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c = train(args(env, "two", root / "bf16", *common, "--weight-dtype", "bf16"))
    assert all(torch.isfinite(torch.tensor(c.losses)))
    wc = load_file(str(c.exports["dit"]))
    assert wc["blocks.0.ffn.0.weight"].dtype == torch.bfloat16
    assert wc["head.modulation"].dtype == torch.float32 and wc["time_embedding.0.weight"].dtype == torch.float32


def _tiny_text_encoder():
    import io

    import sentencepiece as spm

    from moge4d_core.models.text import SentencePieceT5Tokenizer, build_umt5_encoder, umt5_config

    text = ["a red box moves left in front of a patterned wall", "an orange sphere wobbles and twists"] * 20
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_writer=buf, vocab_size=40,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   character_coverage=1.0, hard_vocab_limit=False, minloglevel=2)
    torch.manual_seed(0)
    model = build_umt5_encoder(umt5_config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4))
    return model, SentencePieceT5Tokenizer(buf.getvalue())


def test_text_context_drop_and_a_run_with_a_text_encoder(env):
    from moge4d_core.models.text import encode_text
    from training.contexts import TextContexts

    model, tok = _tiny_text_encoder()
    ctx = TextContexts((model, tok), None, 32, torch.device("cpu"))
    caps = ["a red box moves left", "an orange sphere wobbles"]
    got = ctx(caps, torch.tensor([False, True]))
    want_kept = encode_text(model, tok, caps[:1]).embeddings
    want_empty = encode_text(model, tok, [""]).embeddings
    assert got.shape == (2, 512, 32)
    # batched with another prompt length: equal up to float summation order
    torch.testing.assert_close(got[0], want_kept[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], want_empty[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got[0], got[1])
    assert torch.count_nonzero(TextContexts(None, None, 32, "cpu")(caps, torch.tensor([False, False]))) == 0
    o = StragOptions(**dict(vars(StragOptions()), data=str(env["one"]), out=str(env["root"] / "text"),
                            motion_vae=str(env["vae"]), init_config=str(env["cfg"]), text_encoder=(model, tok),
                            max_steps=2, checkpoint_every=0, frames=T, crop="none", grid="16x32", progress=False))
    r = train(o)
    assert r.steps == 2 and not any("text context is all zeros" in n for n in r.notes)
    assert reads_text(load_strag(r.exports["dit"], dtype=torch.float32))


def test_reference_option_trains_ref_conv_and_the_release_default_leaves_it(env):
    """Release training feeds a zero reference latent, so ``ref_conv``'s weights get no gradient (only its bias
    does); ``--reference`` feeds the image's latent, as inference does, and trains them."""
    root = env["root"]
    torch.manual_seed(4)
    start = save_wan_dit(STraGDiT(**dit_config(STRAG_CFG)), root / "ref_start.safetensors")
    w0 = load_file(str(start))
    common = ["--model", str(start), "--max-steps", "2", "--lr", "1e-2", "--checkpoint-every", "0", "--weight-decay", "0"]
    off = load_file(str(train(args(env, "one", root / "ref_off", *common)).exports["dit"]))
    on = load_file(str(train(args(env, "one", root / "ref_on", *common, "--reference")).exports["dit"]))
    assert torch.equal(off["ref_conv.weight"], w0["ref_conv.weight"])
    assert not torch.equal(off["ref_conv.bias"], w0["ref_conv.bias"])
    assert (on["ref_conv.weight"] - w0["ref_conv.weight"]).abs().max() > 1e-4
