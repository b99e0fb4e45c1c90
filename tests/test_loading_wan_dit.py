"""Loading the Wan DiTs from every accepted checkpoint format, written here with independently listed
original-Wan key names; outputs must be bit-exact (fp32) against the model before saving."""
import json
import re

import pytest
import torch
from safetensors.torch import save_file

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.loading.common import read_metadata
from moge4d_core.loading.wan_dit import load_strag, load_vism_base, load_wan_dit, save_wan_dit
from moge4d_core.models.wan_dit import STraGDiT, ViSMDiT, WanDiT, dit_config

torch.set_num_threads(1)
FP8 = torch.float8_e4m3fn
TINY = dict(dim=24, ffn_dim=48, num_heads=2, num_layers=2, text_dim=32, freq_dim=16)

# --------------------------------------------------------------------- independent diffusers -> original naming
_RULES = [
    (r"^condition_embedder\.text_embedder\.linear_([12])\.", lambda m: f"text_embedding.{2 * int(m.group(1)) - 2}."),
    (r"^condition_embedder\.time_embedder\.linear_([12])\.", lambda m: f"time_embedding.{2 * int(m.group(1)) - 2}."),
    (r"^condition_embedder\.time_proj\.", "time_projection.1."),
    (r"^condition_embedder\.image_embedder\.norm1\.", "img_emb.proj.0."),
    (r"^condition_embedder\.image_embedder\.ff\.net\.0\.proj\.", "img_emb.proj.1."),
    (r"^condition_embedder\.image_embedder\.ff\.net\.2\.", "img_emb.proj.3."),
    (r"^condition_embedder\.image_embedder\.norm2\.", "img_emb.proj.4."),
    (r"^proj_out\.", "head.head."),
    (r"^scale_shift_table$", "head.modulation"),
    (r"\.scale_shift_table$", ".modulation"),
    (r"\.attn1\.to_out\.0\.", ".self_attn.o."),
    (r"\.attn2\.to_out\.0\.", ".cross_attn.o."),
    (r"\.attn1\.to_([qkv])\.", lambda m: f".self_attn.{m.group(1)}."),
    (r"\.attn2\.to_([qkv])\.", lambda m: f".cross_attn.{m.group(1)}."),
    (r"\.attn1\.norm_([qk])\.", lambda m: f".self_attn.norm_{m.group(1)}."),
    (r"\.attn2\.norm_([qk])\.", lambda m: f".cross_attn.norm_{m.group(1)}."),
    (r"\.attn2\.add_([kv])_proj\.", lambda m: f".cross_attn.{m.group(1)}_img."),
    (r"\.attn2\.norm_added_k\.", ".cross_attn.norm_k_img."),
    (r"^(blocks\.\d+)\.norm2\.", lambda m: f"{m.group(1)}.norm3."),
    (r"\.ffn\.net\.0\.proj\.", ".ffn.0."),
    (r"\.ffn\.net\.2\.", ".ffn.2."),
]


def to_original(name):
    for pat, rep in _RULES:
        name, n = re.subn(pat, rep, name)
        if n:
            break
    return name


def original_names(layers, image=True, ref=True, mpm=True):
    """The original-layout key list, written from reference §E."""
    n = ["patch_embedding.weight", "patch_embedding.bias", "head.modulation", "head.head.weight", "head.head.bias"]
    for p in ("text_embedding.0", "text_embedding.2", "time_embedding.0", "time_embedding.2", "time_projection.1"):
        n += [p + ".weight", p + ".bias"]
    if image:
        n += [f"img_emb.proj.{i}.{w}" for i in (0, 1, 3, 4) for w in ("weight", "bias")]
    if ref:
        n += ["ref_conv.weight", "ref_conv.bias"]
    if mpm:
        n += [f"feature_adapter.{i}.{w}" for i in (0, 2) for w in ("weight", "bias")]
    for b in range(layers):
        p = f"blocks.{b}."
        n += [p + "modulation", p + "norm3.weight", p + "norm3.bias"]
        for a in ("self_attn", "cross_attn"):
            n += [f"{p}{a}.{x}.{w}" for x in "qkvo" for w in ("weight", "bias")]
            n += [f"{p}{a}.norm_q.weight", f"{p}{a}.norm_k.weight"]
        if image:
            n += [f"{p}cross_attn.{x}.{w}" for x in ("k_img", "v_img") for w in ("weight", "bias")]
            n.append(p + "cross_attn.norm_k_img.weight")
        n += [f"{p}ffn.{i}.{w}" for i in (0, 2) for w in ("weight", "bias")]
        if mpm:
            for g in ("spatial_guidance_self", "spatial_guidance_ffn"):
                n += [f"{p}{g}.gate", f"{p}{g}.spatial_guide.1.weight", f"{p}{g}.spatial_guide.1.bias"]
    return n


def original_sd(model):
    sd = {to_original(k): v.detach().clone() for k, v in model.state_dict().items()}
    c = model.config
    assert set(sd) == set(original_names(c.num_layers, c.image_dim is not None, c.ref_conv_in_dim is not None,
                                         c.mpm_feature_dim is not None))
    return sd


# --------------------------------------------------------------------- tiny models and inputs
def randomise(m, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return m.eval()


def tiny(arch="moge4d_strag", seed=0, **kw):
    layout = {"moge4d_strag": dict(in_dim=64, image_dim=16, ref_conv_in_dim=16, mpm_feature_dim=8),
              "wan2.1_fun_control_v1.1": dict(in_dim=48, image_dim=16, ref_conv_in_dim=16),
              "wan2.1_fun_inp": dict(in_dim=36, image_dim=16),
              "wan2.1_t2v": dict(in_dim=16)}[arch]
    layout.update(kw)
    cfg = dit_config(arch=arch, **TINY, **layout)
    cls = {"moge4d_strag": STraGDiT, "wan2.1_fun_inp": ViSMDiT}.get(arch, WanDiT)
    return randomise(cls(**cfg), seed)


G = torch.Generator().manual_seed(11)
LAT = torch.randn(1, 16, 3, 8, 8, generator=G)
STRAG_IN = dict(hidden_states=LAT, timestep=torch.tensor([640.0]),
                encoder_hidden_states=torch.randn(1, 9, 32, generator=G),
                encoder_hidden_states_image=torch.randn(1, 257, 16, generator=G),
                control=torch.randn(1, 16, 3, 8, 8, generator=G),
                depth=torch.randn(1, 16, 3, 8, 8, generator=G), ref_latent=torch.randn(1, 16, 8, 8, generator=G),
                motion_features=torch.randn(1, 196, 8, generator=G))
VISM_IN = dict(hidden_states=LAT, timestep=torch.tensor([300.0]),
               encoder_hidden_states=STRAG_IN["encoder_hidden_states"],
               encoder_hidden_states_image=STRAG_IN["encoder_hidden_states_image"],
               mask=torch.rand(1, 4, 3, 8, 8, generator=G), masked_video=torch.randn(1, 16, 3, 8, 8, generator=G))


def run(m, inp):
    with torch.no_grad():
        return m(**inp)


@pytest.fixture(scope="module")
def strag():
    m = tiny()
    return m, original_sd(m), run(m, STRAG_IN)


def heads():
    return {"num_heads": 2}


# --------------------------------------------------------------------- formats
def test_official_release_layout_with_omnimae(tmp_path, strag):
    m, sd, y0 = strag
    d = tmp_path / "models" / "4D-STraG"
    d.mkdir(parents=True)
    sd2 = dict(sd)
    sd2["omnimae_extractor.trunk.pos_embed"] = torch.randn(1, 4, 8)
    sd2["omnimae_extractor.head.weight"] = torch.randn(3, 2)
    save_file(sd2, str(d / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
    for where in (tmp_path / "models", d, d / "diffusion_pytorch_model.safetensors"):
        m2 = load_strag(where, dtype=torch.float32, config=heads())
        assert torch.equal(run(m2, STRAG_IN), y0)
    cfg, info = m2.config, m2.load_info
    assert cfg.arch == "moge4d_strag" and cfg.in_channels == 64 and cfg.mpm_feature_dim == 8 and cfg.mpm_alignment == "official"
    assert info.file == str(d / "diffusion_pytorch_model.safetensors") and info.dtype == torch.float32
    assert set(info.extras["omnimae_state_dict"]) == {"trunk.pos_embed", "head.weight"}
    assert torch.equal(info.extras["omnimae_state_dict"]["head.weight"], sd2["omnimae_extractor.head.weight"])
    assert info.ignored_keys == ["omnimae_extractor.head.weight", "omnimae_extractor.trunk.pos_embed"]
    assert info.filled_keys == [] and info.converted_keys == []
    lean = load_strag(d, dtype=torch.float32, config=heads(), keep_omnimae=False)
    assert "omnimae_state_dict" not in lean.load_info.extras


def test_training_output_picks_latest_checkpoint(tmp_path, strag):
    m, sd, y0 = strag
    old = original_sd(tiny(seed=5))
    (tmp_path / "checkpoint-100").mkdir()
    save_file(old, str(tmp_path / "checkpoint-100" / "diffusion_pytorch_model.safetensors"))
    t = tmp_path / "checkpoint-200" / "transformer"
    t.mkdir(parents=True)
    save_file(sd, str(t / "diffusion_pytorch_model.safetensors"))
    (t / "config.json").write_text(json.dumps({"_class_name": "WanTransformer4DModel", "num_heads": 2, "dim": 24}))
    m2 = load_strag(tmp_path, dtype=torch.float32)  # num_heads from config.json
    assert torch.equal(run(m2, STRAG_IN), y0)


def test_sharded_index_with_config_json(tmp_path, strag):
    m, sd, y0 = strag
    keys = sorted(sd)
    shards = [keys[i::3] for i in range(3)]
    wm = {}
    for i, ks in enumerate(shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-00003.safetensors"
        save_file({k: sd[k] for k in ks}, str(tmp_path / name))
        wm.update({k: name for k in ks})
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wm}))
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "WanModel", "dim": 24, "num_heads": 2, "in_dim": 64}))
    m2 = load_strag(tmp_path, dtype=torch.float32)
    assert torch.equal(run(m2, STRAG_IN), y0)
    # a missing shard is reported with its name
    (tmp_path / "diffusion_pytorch_model-00002-of-00003.safetensors").unlink()
    with pytest.raises(MoGe4DInputError, match="00002-of-00003.*missing"):
        load_strag(tmp_path, dtype=torch.float32)


def test_pth(tmp_path, strag):
    m, sd, y0 = strag
    torch.save(sd, tmp_path / "strag.pth")
    m2 = load_strag(tmp_path / "strag.pth", dtype=torch.float32, config=heads())
    assert torch.equal(run(m2, STRAG_IN), y0)


@pytest.mark.parametrize("prefix", ["model.diffusion_model.", "diffusion_model."])
def test_comfyui_prefixed_single_file(tmp_path, strag, prefix):
    m, sd, y0 = strag
    f = tmp_path / "moge4d_strag_comfy.safetensors"
    other = {"first_stage_model.decoder.conv.weight": torch.ones(2)}  # a full checkpoint's other parts are ignored
    save_file({**{prefix + k: v for k, v in sd.items()}, **other}, str(f))
    m2 = load_strag(f, dtype=torch.float32, config=heads())
    assert torch.equal(run(m2, STRAG_IN), y0)
    assert prefix in m2.load_info.format


def _quantise(sd, style):
    """ComfyUI fp8 file and the dequantised reference state dict (both in original names)."""
    out, ref = {}, {}
    targets = [k for k, v in sd.items() if k.endswith(".weight") and v.ndim == 2 and
               (k.startswith("blocks.") or k.startswith("text_embedding."))]
    for k, v in sd.items():
        if k in targets:
            scale = v.abs().max() / 448.0
            w8 = (v / scale).to(FP8)
            base = k[: -len(".weight")]
            if style == "plain":
                out[k], ref[k] = v.to(FP8), v.to(FP8).float()
                continue
            out[k] = w8
            if style == "legacy":
                out[base + ".scale_weight"] = scale.reshape(())
                out[base + ".scale_input"] = torch.ones(())
            else:
                out[base + ".weight_scale"] = scale.reshape(())
                out[base + ".input_scale"] = torch.ones(())
                out[base + ".comfy_quant"] = torch.tensor(list(json.dumps({"format": "float8_e4m3fn"}).encode()),
                                                          dtype=torch.uint8)
            ref[k] = w8.float() * scale
        else:
            out[k], ref[k] = v, v
    if style == "legacy":
        out["scaled_fp8"] = torch.empty(0, dtype=FP8)
    return out, ref


def _model_from_original(sd, like):
    m = type(like)(**like.config)
    inv = {to_original(k): k for k in like.state_dict()}
    m.load_state_dict({inv[k]: v for k, v in sd.items()})
    return m.eval()


@pytest.mark.parametrize("style", ["legacy", "comfy_quant", "plain"])
def test_comfyui_fp8_dequantised(tmp_path, strag, style):
    m, sd, _ = strag
    q, ref = _quantise(sd, style)
    f = tmp_path / f"strag_fp8_{style}.safetensors"
    save_file({"model.diffusion_model." + k: v for k, v in q.items()}, str(f))
    y_ref = run(_model_from_original(ref, m), STRAG_IN)
    m2 = load_strag(f, dtype=torch.float32, config=heads())
    assert torch.equal(run(m2, STRAG_IN), y_ref)
    assert ("scaled" in m2.load_info.format) == (style != "plain")
    fp8_keys = sorted(k for k, v in q.items() if v.dtype == FP8 and k != "scaled_fp8")
    assert sorted(to_original(k) for k in m2.load_info.converted_keys) == fp8_keys


def test_comfyui_fp8_scaled_kept_as_fp8_storage(tmp_path, strag):
    m, sd, _ = strag
    q, ref = _quantise(sd, "legacy")
    f = tmp_path / "strag_fp8_scaled.safetensors"
    save_file(q, str(f))
    m2 = load_strag(f, dtype=FP8, compute_dtype=torch.float32, config=heads())
    w = m2.blocks[1].attn2.add_k_proj.weight
    assert w.dtype == FP8 and torch.equal(w.view(torch.uint8), q["blocks.1.cross_attn.k_img.weight"].view(torch.uint8))
    assert m2.proj_out.weight.dtype == torch.float32  # head stays in the compute dtype
    y_ref = run(_model_from_original(ref, m), STRAG_IN)
    assert torch.allclose(run(m2, STRAG_IN), y_ref, atol=1e-5, rtol=1e-5)


def test_fp8_storage_from_a_full_precision_file(tmp_path, strag):
    m, sd, y0 = strag
    f = tmp_path / "s.safetensors"
    save_file(sd, str(f))
    m2 = load_strag(f, dtype=FP8, compute_dtype=torch.float32, config=heads())
    assert m2.load_info.dtype == FP8
    assert m2.blocks[0].ffn.net[0].proj.weight.dtype == FP8 and m2.blocks[0].attn1.to_q.bias.dtype == torch.float32
    y = run(m2, STRAG_IN)
    err = ((y - y0).norm() / y0.norm()).item()
    assert 1e-4 < err < 0.08


def test_own_output_with_metadata_and_alignment(tmp_path):
    m = tiny(seed=3)
    m.set_mpm_alignment("corrected")
    y0 = run(m, STRAG_IN)
    f = save_wan_dit(m, tmp_path / "run" / "strag_step100.safetensors", extra_tensors={"omnimae_extractor.x": torch.ones(2)})
    m2 = load_strag(f, dtype=torch.float32)  # no num_heads hint needed: the metadata has the config
    cfg = m2.config
    assert cfg.mpm_alignment == "corrected" and cfg.num_attention_heads == 2 and "MoGe4D metadata" in m2.load_info.format
    assert torch.equal(run(m2, STRAG_IN), y0)
    assert torch.equal(m2.load_info.extras["omnimae_state_dict"]["x"], torch.ones(2))
    assert m2.load_info.extras["metadata"]["moge4d_arch"] == "moge4d_strag"
    m3 = load_strag(f, dtype=torch.float32, mpm_alignment="official")
    cfg3 = m3.config
    assert cfg3.mpm_alignment == "official" and not torch.equal(run(m3, STRAG_IN), y0)


def test_metadata_holds_the_constructor_arguments_and_old_metadata_still_loads(tmp_path):
    m = tiny(seed=4)
    m.set_mpm_alignment("corrected")
    y0 = run(m, STRAG_IN)
    f = save_wan_dit(m, tmp_path / "new.safetensors")
    meta = json.loads(read_metadata(f)["moge4d_config"])
    assert meta == {k: (list(v) if isinstance(v, tuple) else v) for k, v in m.config.items()}
    assert meta["num_attention_heads"] == 2 and meta["arch"] == "moge4d_strag" and "dim" not in meta
    # a file written before the config fold: metadata in the WanDiTConfig (original Wan) field names
    old = {"arch": "moge4d_strag", "dim": 24, "ffn_dim": 48, "num_heads": 2, "num_layers": 2, "in_dim": 64,
           "out_dim": 16, "text_dim": 32, "freq_dim": 16, "text_len": 512, "eps": 1e-6, "patch_size": [1, 2, 2],
           "qk_norm": True, "cross_attn_norm": True, "image_dim": 16, "ref_conv_in_dim": 16, "mpm_feature_dim": 8,
           "mpm_alignment": "corrected", "rope_max_seq_len": 1024}
    g = tmp_path / "old.safetensors"
    save_file(original_sd(m), str(g), metadata={"moge4d_arch": "moge4d_strag", "moge4d_config": json.dumps(old)})
    m2 = load_strag(g, dtype=torch.float32)              # no num_heads hint: the old metadata says it
    assert dict(m2.config) == dict(m.config)
    assert torch.equal(run(m2, STRAG_IN), y0)


def test_bf16_load_keeps_fp32_modules(tmp_path, strag):
    m, sd, y0 = strag
    f = tmp_path / "s.safetensors"
    save_file(sd, str(f))
    m2 = load_strag(f, dtype=torch.bfloat16, config=heads())
    dt = {k: v.dtype for k, v in m2.state_dict().items()}
    assert dt["blocks.0.attn1.to_q.weight"] == torch.bfloat16
    assert dt["blocks.0.scale_shift_table"] == torch.float32
    assert dt["blocks.0.norm2.weight"] == torch.float32
    assert dt["condition_embedder.time_embedder.linear_1.weight"] == torch.float32
    y = run(m2, {k: (v.bfloat16() if torch.is_floating_point(v) and k != "timestep" else v) for k, v in STRAG_IN.items()})
    assert y.dtype == torch.bfloat16
    assert (y.float() - y0).norm() / y0.norm() < 0.05


def test_mpm_off_and_base_fill(tmp_path, strag):
    m, sd, _ = strag
    f = tmp_path / "s.safetensors"
    save_file(sd, str(f))
    m2 = load_strag(f, dtype=torch.float32, config=heads(), mpm=False)
    assert m2.config.mpm_feature_dim is None and m2.feature_adapter is None
    mpm_keys = {k for k in m.state_dict() if "spatial_guidance" in k or k.startswith("feature_adapter.")}
    assert mpm_keys and set(m2.load_info.ignored_keys) == mpm_keys
    assert m2.blocks[0].spatial_guidance_self is None

    base = tiny("wan2.1_fun_control_v1.1", seed=7)
    bsd = original_sd(base)
    save_file(bsd, str(tmp_path / "base.safetensors"))
    partial = {k: v for k, v in sd.items() if not (k.startswith("blocks.1.") and "spatial_guidance" not in k)
               and k != "patch_embedding.weight"}
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(MoGe4DInputError, match="missing"):
        load_strag(tmp_path / "partial.safetensors", dtype=torch.float32, config=heads())
    m3 = load_strag(tmp_path / "partial.safetensors", base=tmp_path / "base.safetensors",
                    dtype=torch.float32, config=heads())
    pe = m3.patch_embedding.weight
    assert torch.equal(pe[:, :48], bsd["patch_embedding.weight"]) and torch.count_nonzero(pe[:, 48:]) == 0
    assert torch.equal(m3.blocks[1].attn1.to_q.weight, bsd["blocks.1.self_attn.q.weight"])
    assert torch.equal(m3.blocks[0].attn1.to_q.weight, sd["blocks.0.self_attn.q.weight"])
    filled = {to_original(k) for k in m3.load_info.filled_keys}
    assert filled == set(sd) - set(partial) and m3.load_info.files["base"] == str(tmp_path / "base.safetensors")


def test_vism_base_sharded_and_comfy(tmp_path):
    m = tiny("wan2.1_fun_inp", seed=2)
    sd = original_sd(m)
    y0 = run(m, VISM_IN)
    keys = sorted(sd)
    wm = {}
    for i in range(2):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-00002.safetensors"
        save_file({k: sd[k] for k in keys[i::2]}, str(tmp_path / name))
        wm.update({k: name for k in keys[i::2]})
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    m2 = load_vism_base(tmp_path, dtype=torch.float32, config=heads())
    cfg = m2.config
    assert cfg.arch == "wan2.1_fun_inp" and isinstance(m2, ViSMDiT)
    assert torch.equal(run(m2, VISM_IN), y0)
    f = tmp_path / "comfy" / "wan2.1_fun_inp.safetensors"
    f.parent.mkdir()
    save_file({"model.diffusion_model." + k: v for k, v in sd.items()}, str(f))
    m3 = load_vism_base(f, dtype=torch.float32, config=heads())
    assert torch.equal(run(m3, VISM_IN), y0)
    m4 = load_wan_dit(f, dtype=torch.float32, config=heads())
    assert isinstance(m4, ViSMDiT) and m4.config.in_channels == 36 and m4.load_info.file == str(f)


# --------------------------------------------------------------------- bad files
def test_wrong_architecture_messages(tmp_path, strag):
    t2v = tiny("wan2.1_t2v", seed=1)
    f = tmp_path / "wan2.1_t2v_14B.safetensors"
    save_file(original_sd(t2v), str(f))
    with pytest.raises(MoGe4DInputError) as e:
        load_strag(f, config=heads())
    msg = str(e.value)
    assert str(f) in msg and "wan2.1_t2v" in msg and "in_dim 16" in msg and "4D-STraG" in msg
    _, sd, _ = strag
    g = tmp_path / "strag.safetensors"
    save_file(sd, str(g))
    with pytest.raises(MoGe4DInputError, match="load_strag"):
        load_vism_base(g, config=heads())
    c = tmp_path / "control.safetensors"
    save_file(original_sd(tiny("wan2.1_fun_control_v1.1")), str(c))
    with pytest.raises(MoGe4DInputError, match="base="):
        load_strag(c, config=heads())


def test_missing_unexpected_and_shape_messages(tmp_path, strag):
    _, sd, _ = strag
    bad = dict(sd)
    bad.pop("blocks.1.cross_attn.k_img.weight")
    bad["blocks.0.self_attn.extra.weight"] = torch.ones(2)
    f = tmp_path / "bad.safetensors"
    save_file(bad, str(f))
    with pytest.raises(MoGe4DInputError) as e:
        load_strag(f, config=heads())
    msg = str(e.value)
    assert str(f) in msg and "blocks.1.cross_attn.k_img.weight" in msg and "blocks.0.self_attn.extra.weight" in msg
    assert "moge4d_strag" in msg
    bad = dict(sd)
    bad["blocks.1.ffn.0.weight"] = torch.zeros(40, 24)
    save_file(bad, str(f))
    with pytest.raises(MoGe4DInputError, match=r"blocks\.1\.ffn\.0\.weight.*shape"):
        load_strag(f, config=heads())


def test_truncated_lora_and_empty(tmp_path, strag):
    _, sd, _ = strag
    f = tmp_path / "trunc.safetensors"
    save_file(sd, str(f))
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(MoGe4DInputError, match="trunc.safetensors"):
        load_strag(f, config=heads())
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet__blocks_0_self_attn_q.lora_down.weight": torch.zeros(4, 24)}, str(lora))
    with pytest.raises(MoGe4DInputError, match="not a Wan DiT"):
        load_vism_base(lora)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MoGe4DInputError, match="no DiT weights"):
        load_strag(tmp_path / "empty")
    q = {"model.diffusion_model." + k: v for k, v in sd.items()}
    q["model.diffusion_model.blocks.0.ffn.0.comfy_quant"] = torch.tensor(list(b'{"format": "int8_tensorwise"}'), dtype=torch.uint8)
    save_file(q, str(tmp_path / "int8.safetensors"))
    with pytest.raises(MoGe4DInputError, match="int8_tensorwise"):
        load_strag(tmp_path / "int8.safetensors", config=heads())
