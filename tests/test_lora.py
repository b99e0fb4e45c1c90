"""Kohya LoRA for the Wan DiTs: parsing official key names, merge formula, PEFT adapters, export, errors.

The LoRA files are built here from original Wan module names written out by hand (reference §C), and the
expected merged weights are computed here in float64 from ``W + s * (alpha / rank) * up @ down``.
"""
import copy

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.loading.lora import (LoraWeights, apply_lora_peft, export_kohya_lora, kohya_name, load_kohya_lora,
                                      merge_lora, parse_kohya_lora, set_lora_enabled, set_lora_strength,
                                      unmerge_lora)

torch.set_num_threads(1)

# original Wan Linear module names for a 2-block I2V model, and their diffusers names (written by hand)
ORIG_TO_DIFF = {
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
    "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj",
    "img_emb.proj.3": "condition_embedder.image_embedder.ff.net.2",
}
for _i in range(2):
    for _o, _d in (("self_attn.q", "attn1.to_q"), ("self_attn.k", "attn1.to_k"), ("self_attn.v", "attn1.to_v"),
                   ("self_attn.o", "attn1.to_out.0"), ("cross_attn.q", "attn2.to_q"), ("cross_attn.k", "attn2.to_k"),
                   ("cross_attn.v", "attn2.to_v"), ("cross_attn.o", "attn2.to_out.0"),
                   ("cross_attn.k_img", "attn2.add_k_proj"), ("cross_attn.v_img", "attn2.add_v_proj"),
                   ("ffn.0", "ffn.net.0.proj"), ("ffn.2", "ffn.net.2")):
        ORIG_TO_DIFF[f"blocks.{_i}.{_o}"] = f"blocks.{_i}.{_d}"


def name_map(param: str) -> str:
    module, leaf = param.rsplit(".", 1)
    return ORIG_TO_DIFF[module] + "." + leaf


def tiny_wan(num_layers=2, heads=2, head_dim=12, seed=0, dtype=torch.float64):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    m = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim,
                              in_channels=36, out_channels=16, text_dim=16, freq_dim=8, ffn_dim=32,
                              num_layers=num_layers, image_dim=8, added_kv_proj_dim=heads * head_dim)
    return m.to(dtype).eval()


def make_kohya(model, names, rank=4, alpha=2.0, seed=1, odd_rank=None, with_alpha=True):
    """Kohya state dict (bf16, official key form) for ``names`` (original), sized from the model's modules."""
    g = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    state = {}
    for n in names:
        w = modules[ORIG_TO_DIFF.get(n, n)].weight
        r = odd_rank if (odd_rank and n == "blocks.1.ffn.0") else rank
        stem = "lora_unet__" + n.replace(".", "_")
        state[stem + ".lora_down.weight"] = (torch.randn(r, w.shape[1], generator=g) * 0.3).to(torch.bfloat16)
        state[stem + ".lora_up.weight"] = (torch.randn(w.shape[0], r, generator=g) * 0.3).to(torch.bfloat16)
        if with_alpha:
            state[stem + ".alpha"] = torch.tensor(alpha, dtype=torch.bfloat16)
    return state


def forward(model, seed=3):
    g = torch.Generator().manual_seed(seed)
    dt = next(model.parameters()).dtype
    x = torch.randn(1, 36, 2, 4, 4, generator=g).to(dt)
    txt = torch.randn(1, 5, 16, generator=g).to(dt)
    img = torch.randn(1, 3, 8, generator=g).to(dt)
    with torch.no_grad():
        return model(x, torch.tensor([500.0], dtype=dt), txt, encoder_hidden_states_image=img, return_dict=False)[0]


@pytest.fixture(scope="module")
def base():
    return tiny_wan()


@pytest.fixture(scope="module")
def kohya(base):
    return make_kohya(base, list(ORIG_TO_DIFF), odd_rank=2)


# --- parsing -----------------------------------------------------------------------------------

def test_kohya_name_is_official_double_underscore():
    assert kohya_name("blocks.0.self_attn.q") == "lora_unet__blocks_0_self_attn_q"
    assert kohya_name("img_emb.proj.1") == "lora_unet__img_emb_proj_1"


def test_parse_recovers_dotted_original_names(kohya):
    lora = parse_kohya_lora(kohya)
    assert set(lora) == set(ORIG_TO_DIFF)
    assert lora["blocks.1.cross_attn.k_img"].rank == 4 and lora["blocks.1.ffn.0"].rank == 2
    assert lora["time_projection.1"].alpha == 2.0 and lora["head.head"].scale == 0.5
    assert lora["blocks.0.ffn.2"].down.dtype == torch.bfloat16


def test_parse_full_size_official_key_set():
    """40 blocks x 12 + 8 = 488 modules; blocks_1_ vs blocks_10_ etc. are told apart."""
    names = ["text_embedding.0", "text_embedding.2", "time_embedding.0", "time_embedding.2", "time_projection.1",
             "head.head", "img_emb.proj.1", "img_emb.proj.3"]
    names += [f"blocks.{i}.{p}" for i in range(40) for p in
              ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
               "cross_attn.v", "cross_attn.o", "cross_attn.k_img", "cross_attn.v_img", "ffn.0", "ffn.2")]
    state = {}
    for n in names:
        s = "lora_unet__" + n.replace(".", "_")
        state.update({s + ".lora_down.weight": torch.zeros(1, 2), s + ".lora_up.weight": torch.zeros(2, 1),
                      s + ".alpha": torch.tensor(64.0)})
    assert len(state) == 1464
    lora = parse_kohya_lora(state)
    assert len(lora) == 488 and set(lora) == set(names)


def test_missing_alpha_means_scale_one(base):
    lora = parse_kohya_lora(make_kohya(base, ["head.head"], with_alpha=False))
    assert lora["head.head"].alpha == 4.0 and lora["head.head"].scale == 1.0


def test_foreign_lora_is_rejected():
    sd_lora = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(1, 2),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(2, 1)}
    with pytest.raises(MoGe4DInputError, match="down_blocks_0_attentions_0_proj_in.*another model"):
        parse_kohya_lora(sd_lora)
    with pytest.raises(MoGe4DInputError, match="lora_te"):
        parse_kohya_lora({"lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(1, 2)})


def test_ambiguous_names_are_reported():
    state = {"lora_unet__a_b_c.lora_down.weight": torch.zeros(1, 2), "lora_unet__a_b_c.lora_up.weight": torch.zeros(2, 1)}
    with pytest.raises(MoGe4DInputError, match="several modules"):
        parse_kohya_lora(state, module_names=["a.b_c", "a_b.c"])


# --- merge ------------------------------------------------------------------------------------

def _expected(base, kohya, strength):
    """float64 W + s * (alpha/rank) * up @ down, from the kohya tensors directly."""
    sd = base.state_dict()
    out = {}
    for orig, diff in ORIG_TO_DIFF.items():
        stem = "lora_unet__" + orig.replace(".", "_")
        down = kohya[stem + ".lora_down.weight"].double()
        up = kohya[stem + ".lora_up.weight"].double()
        alpha = kohya[stem + ".alpha"].double().item()
        out[diff + ".weight"] = sd[diff + ".weight"].double() + strength * (alpha / down.shape[0]) * (up @ down)
    return out


@pytest.mark.parametrize("strength", [0.55, 1.0])
def test_merge_equals_formula_with_explicit_name_map(base, kohya, strength):
    m = copy.deepcopy(base).float()
    merge_lora(m, kohya, strength=strength, name_map=name_map)
    want = _expected(base, kohya, strength)
    sd = m.state_dict()
    for k, v in want.items():
        assert sd[k].dtype == torch.float32
        assert torch.allclose(sd[k].double(), v, atol=2e-6, rtol=0), k
    # untouched parameters stay bit-identical
    assert torch.equal(sd["patch_embedding.weight"], base.state_dict()["patch_embedding.weight"].float())


def test_merge_default_name_map_and_file_input(base, kohya, tmp_path):
    f = tmp_path / "lora_diffusion_pytorch_model.safetensors"
    save_file(kohya, str(f))
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    merge_lora(a, f)                                   # default strength 0.55, name map chosen automatically
    merge_lora(b, kohya, strength=0.55, name_map=name_map)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_unmerge_restores_weights(base, kohya):
    m = copy.deepcopy(base).float()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    merge_lora(m, kohya, name_map=name_map)
    unmerge_lora(m, kohya, name_map=name_map)
    for k, v in m.state_dict().items():
        assert torch.allclose(v, before[k], atol=1e-6), k


def test_merge_keeps_bf16_dtype(base, kohya):
    m = copy.deepcopy(base).to(torch.bfloat16)
    merge_lora(m, kohya, name_map=name_map)
    w = m.state_dict()["blocks.0.attn1.to_q.weight"]
    want = _expected(base.to(torch.bfloat16).double(), kohya, 0.55)["blocks.0.attn1.to_q.weight"]
    assert w.dtype == torch.bfloat16
    assert torch.allclose(w.double(), want, atol=2e-2)


def test_merge_on_original_named_module_tree():
    """A model that uses the original Wan names: identity name map, names parsed from the model itself."""
    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k_img = nn.Linear(6, 6), nn.Linear(5, 6)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.self_attn, self.cross_attn = Attn(), Attn()
            self.ffn = nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 6))

    class Tree(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([Block() for _ in range(11)])
            self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(6, 36))

    tree = Tree().double()
    names = ["blocks.10.cross_attn.k_img", "blocks.1.ffn.2", "blocks.0.self_attn.q", "time_projection.1"]
    mods = dict(tree.named_modules())
    g = torch.Generator().manual_seed(0)
    state = {}
    for n in names:
        w = mods[n].weight
        s = "lora_unet__" + n.replace(".", "_")
        state[s + ".lora_down.weight"] = torch.randn(3, w.shape[1], generator=g)
        state[s + ".lora_up.weight"] = torch.randn(w.shape[0], 3, generator=g)
        state[s + ".alpha"] = torch.tensor(1.5)
    before = {n: mods[n].weight.detach().clone() for n in names}
    merge_lora(tree, state, strength=0.7)
    for n in names:
        s = "lora_unet__" + n.replace(".", "_")
        want = before[n] + 0.7 * (1.5 / 3) * (state[s + ".lora_up.weight"].double() @ state[s + ".lora_down.weight"].double())
        assert torch.allclose(mods[n].weight, want, atol=1e-6), n


# --- PEFT adapters ---------------------------------------------------------------------------------

def test_peft_adapter_on_equals_merged_off_equals_base(base, kohya):
    ref_base = forward(base)
    merged = merge_lora(copy.deepcopy(base), kohya, strength=0.55, name_map=name_map)
    ref_merged = forward(merged)
    peft_model = apply_lora_peft(copy.deepcopy(base), kohya, strength=0.55, name_map=name_map)
    layer = dict(peft_model.named_modules())["blocks.1.ffn.net.0.proj"]
    assert layer.r["vism"] == 2 and layer.scaling["vism"] == pytest.approx(0.55 * 2.0 / 2)
    on = forward(peft_model)
    assert torch.allclose(on, ref_merged, atol=1e-9, rtol=0)
    assert not torch.allclose(on, ref_base, atol=1e-3)
    set_lora_enabled(peft_model, False)
    assert torch.equal(forward(peft_model), ref_base)
    set_lora_enabled(peft_model, True)
    assert torch.allclose(forward(peft_model), ref_merged, atol=1e-9, rtol=0)
    set_lora_strength(peft_model, 1.0)
    full = merge_lora(copy.deepcopy(base), kohya, strength=1.0, name_map=name_map)
    assert torch.allclose(forward(peft_model), forward(full), atol=1e-9, rtol=0)


def test_export_from_peft_and_dict_round_trip(base, kohya, tmp_path):
    peft_model = apply_lora_peft(copy.deepcopy(base), kohya, strength=0.55)   # automatic name map
    f = export_kohya_lora(peft_model, tmp_path / "out.safetensors")
    written = load_file(str(f))
    assert set(written) == set(kohya)                                          # same official key names
    for k, v in kohya.items():
        assert written[k].dtype == torch.bfloat16 and written[k].shape == v.shape
        assert torch.equal(written[k], v), k
    again = load_kohya_lora(f)
    f2 = export_kohya_lora(again, tmp_path / "out2.safetensors")
    assert all(torch.equal(load_file(str(f2))[k], v) for k, v in written.items())


def test_set_lora_enabled_without_adapters_is_an_error(base):
    with pytest.raises(MoGe4DInputError, match="no PEFT LoRA adapters"):
        set_lora_enabled(copy.deepcopy(base), False)


# --- LoRA made for another model -----------------------------------------------------------------

def test_lora_with_more_blocks_names_the_missing_modules(base):
    bigger = tiny_wan(num_layers=3, seed=4)
    names = list(ORIG_TO_DIFF) + ["blocks.2.self_attn.q"]
    ORIG_TO_DIFF_3 = dict(ORIG_TO_DIFF, **{"blocks.2.self_attn.q": "blocks.2.attn1.to_q"})
    modules = dict(bigger.named_modules())
    state = {}
    for n in names:
        w = modules[ORIG_TO_DIFF_3[n]].weight
        s = "lora_unet__" + n.replace(".", "_")
        state[s + ".lora_down.weight"] = torch.zeros(2, w.shape[1])
        state[s + ".lora_up.weight"] = torch.ones(w.shape[0], 2)
    target = copy.deepcopy(base)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(MoGe4DInputError) as err:
        merge_lora(target, state)
    msg = str(err.value)
    assert "blocks.2.self_attn.q" in msg and "WanTransformer3DModel" in msg and "another model" in msg
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())   # nothing was changed


def test_lora_of_another_width_is_a_shape_error(base):
    wide = tiny_wan(heads=3, head_dim=12, seed=5)                      # dim 36 instead of 24
    state = make_kohya(wide, ["blocks.0.self_attn.q", "head.head"])
    with pytest.raises(MoGe4DInputError, match=r"WanTransformer3DModel\.blocks\.0\.attn1\.to_q has weight \(24, 24\)"):
        merge_lora(copy.deepcopy(base), state)
    with pytest.raises(MoGe4DInputError, match="another size"):
        apply_lora_peft(copy.deepcopy(base), state)


def test_parsed_dict_input_is_accepted(base, kohya):
    parsed = {k: LoraWeights(*v) for k, v in parse_kohya_lora(kohya).items()}
    a = merge_lora(copy.deepcopy(base), parsed, name_map=name_map)
    b = merge_lora(copy.deepcopy(base), kohya, name_map=name_map)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
