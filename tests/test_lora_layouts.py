"""LoRA key layouts of published Wan2.1 I2V / InP LoRAs (step-distilled ones included) and LoRA stacking.

A synthetic LoRA is written in each supported layout for a tiny 4D-ViSM base (float64); the merged weights must be
``W + s * (alpha / rank) * B @ A`` computed here in float64 with module names mapped by a hand-written table.
"""
import math

import pytest
import torch
from safetensors.torch import save_file

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.loading.lora import check_lora_keys, merge_lora, merge_loras, parse_lora
from moge4d_core.models.wan_dit.config import dit_config
from moge4d_core.models.wan_dit.model import ViSMDiT

torch.set_num_threads(1)

# original Wan module -> our (diffusers) module, written by hand
MODULES = {
    "blocks.0.self_attn.q": "blocks.0.attn1.to_q",
    "blocks.1.self_attn.o": "blocks.1.attn1.to_out.0",
    "blocks.0.cross_attn.k_img": "blocks.0.attn2.add_k_proj",
    "blocks.1.cross_attn.v": "blocks.1.attn2.to_v",
    "blocks.0.ffn.0": "blocks.0.ffn.net.0.proj",
    "blocks.1.ffn.2": "blocks.1.ffn.net.2",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj",
    "head.head": "proj_out",
}


@pytest.fixture(scope="module")
def vism():
    torch.manual_seed(0)
    cfg = dit_config(arch="wan2.1_fun_inp", in_dim=36, image_dim=16, dim=24, ffn_dim=48, num_heads=2, num_layers=2,
                     text_dim=32, freq_dim=16)
    return ViSMDiT(**cfg).to(torch.float64).eval()


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def factors(model, rank=3, seed=1):
    """{original module: (A (rank,in), B (out,rank))} in float32."""
    g = torch.Generator().manual_seed(seed)
    mods = dict(model.named_modules())
    out = {}
    for orig, ours in MODULES.items():
        w = mods[ours].weight
        out[orig] = (torch.randn(rank, w.shape[1], generator=g) * 0.2, torch.randn(w.shape[0], rank, generator=g) * 0.2)
    return out


def write_layout(f, layout, alpha):
    """The state dict of LoRA ``f`` in ``layout``; ``alpha=None`` writes no alpha keys."""
    state = {}
    for orig, (a, b) in f.items():
        if layout == "kohya":
            stem, down, up = "lora_unet__" + orig.replace(".", "_"), "lora_down.weight", "lora_up.weight"
        elif layout == "kohya_single":
            stem, down, up = "lora_unet_" + orig.replace(".", "_"), "lora_down.weight", "lora_up.weight"
        elif layout == "prefixed_AB":
            stem, down, up = "diffusion_model." + orig, "lora_A.weight", "lora_B.weight"
        elif layout == "bare_AB":
            stem, down, up = orig, "lora_A.weight", "lora_B.weight"
        elif layout == "prefixed_down_up":
            stem, down, up = "diffusion_model." + orig, "lora_down.weight", "lora_up.weight"
        elif layout == "bare_down_up":
            stem, down, up = orig, "lora_down.weight", "lora_up.weight"
        elif layout == "diffusers_names":
            stem, down, up = "transformer." + MODULES[orig], "lora_A.weight", "lora_B.weight"
        else:
            raise AssertionError(layout)
        state[f"{stem}.{down}"] = a
        state[f"{stem}.{up}"] = b
        if alpha is not None:
            state[f"{stem}.alpha"] = torch.tensor(alpha)
    return state


def expected(base, f, strength, alpha):
    out = dict(base)
    for orig, (a, b) in f.items():
        key = MODULES[orig] + ".weight"
        rank = a.shape[0]
        scale = (alpha if alpha is not None else rank) / rank
        out[key] = out[key] + strength * scale * (b.double() @ a.double())
    return out


LAYOUTS = ["kohya", "kohya_single", "prefixed_AB", "bare_AB", "prefixed_down_up", "bare_down_up", "diffusers_names"]


@pytest.mark.parametrize("alpha", [1.5, None])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_merges_as_formula(vism, layout, alpha, tmp_path):
    base = weights(vism)
    f = factors(vism)
    state = write_layout(f, layout, alpha)
    assert check_lora_keys(state.keys(), source=layout) == len(MODULES)
    path = tmp_path / f"{layout}.safetensors"
    save_file(state, str(path))
    try:
        merge_lora(vism, path, 0.7)
        got = weights(vism)
    finally:
        vism.load_state_dict(base)
    want = expected(base, f, 0.7, alpha)
    changed = {k for k in base if not torch.equal(got[k], base[k])}
    assert changed == {MODULES[o] + ".weight" for o in MODULES}
    for k in base:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-12)


def test_two_stacked_loras_add_up(vism, tmp_path):
    base = weights(vism)
    f1, f2 = factors(vism, rank=4, seed=2), factors(vism, rank=2, seed=3)
    save_file(write_layout(f1, "kohya", 2.0), str(tmp_path / "vism_lora.safetensors"))
    save_file(write_layout(f2, "prefixed_AB", None), str(tmp_path / "distill.safetensors"))
    try:
        merge_loras(vism, [(tmp_path / "vism_lora.safetensors", 0.55), (tmp_path / "distill.safetensors", 1.0)])
        got = weights(vism)
    finally:
        vism.load_state_dict(base)
    want = expected(expected(base, f1, 0.55, 2.0), f2, 1.0, None)
    for k in base:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-12)
    one = expected(base, f1, 0.55, 2.0)
    assert not torch.allclose(got["proj_out.weight"], one["proj_out.weight"])      # the second one counted


def test_stack_is_all_or_nothing(vism):
    base = weights(vism)
    good = write_layout(factors(vism), "bare_AB", 1.0)
    bad = {"diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.zeros(2, 5),      # in 5, the model's is 24
           "diffusion_model.blocks.0.self_attn.q.lora_B.weight": torch.zeros(24, 2)}
    with pytest.raises(MoGe4DInputError, match="blocks.0.self_attn.q"):
        merge_loras(vism, [(good, 0.55), (bad, 1.0)])
    for k, v in weights(vism).items():
        assert torch.equal(v, base[k]), k
    with pytest.raises(MoGe4DInputError, match="strength"):
        merge_loras(vism, [(good, math.nan)])


def test_unsupported_layouts_are_named():
    with pytest.raises(MoGe4DInputError, match="lora_te.*Supported layouts"):
        check_lora_keys(["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"])
    with pytest.raises(MoGe4DInputError, match="diff"):
        check_lora_keys(["diffusion_model.blocks.0.self_attn.q.diff_b"])
    with pytest.raises(MoGe4DInputError, match="another model"):
        check_lora_keys(["diffusion_model.down_blocks.0.proj_in.lora_A.weight",
                         "diffusion_model.down_blocks.0.proj_in.lora_B.weight"])
    with pytest.raises(MoGe4DInputError, match="lacks its down"):
        parse_lora({"diffusion_model.blocks.0.ffn.0.lora_B.weight": torch.zeros(4, 2)})
    with pytest.raises(MoGe4DInputError, match="twice"):
        parse_lora({"diffusion_model.blocks.0.ffn.0.lora_A.weight": torch.zeros(2, 4),
                    "diffusion_model.blocks.0.ffn.0.lora_down.weight": torch.zeros(2, 4),
                    "diffusion_model.blocks.0.ffn.0.lora_B.weight": torch.zeros(4, 2)})
