"""Wan2.1 DiT key mapping, original <-> diffusers, checked against an independent table and diffusers' own converter."""
import pytest
import torch

from moge4d_core.loading import wan_keys as wk

# Independent expectations, written by hand from Wan2.1 wan/modules/model.py and diffusers transformer_wan.py.
PAIRS = [
    ("patch_embedding.weight", "patch_embedding.weight"),
    ("text_embedding.0.weight", "condition_embedder.text_embedder.linear_1.weight"),
    ("text_embedding.2.bias", "condition_embedder.text_embedder.linear_2.bias"),
    ("time_embedding.0.weight", "condition_embedder.time_embedder.linear_1.weight"),
    ("time_embedding.2.bias", "condition_embedder.time_embedder.linear_2.bias"),
    ("time_projection.1.weight", "condition_embedder.time_proj.weight"),
    ("img_emb.proj.0.weight", "condition_embedder.image_embedder.norm1.weight"),
    ("img_emb.proj.1.bias", "condition_embedder.image_embedder.ff.net.0.proj.bias"),
    ("img_emb.proj.3.weight", "condition_embedder.image_embedder.ff.net.2.weight"),
    ("img_emb.proj.4.bias", "condition_embedder.image_embedder.norm2.bias"),
    ("head.head.weight", "proj_out.weight"),
    ("head.modulation", "scale_shift_table"),
    ("ref_conv.weight", "ref_conv.weight"),
    ("feature_adapter.2.bias", "feature_adapter.2.bias"),
    ("blocks.7.modulation", "blocks.7.scale_shift_table"),
    ("blocks.7.self_attn.q.weight", "blocks.7.attn1.to_q.weight"),
    ("blocks.7.self_attn.k.bias", "blocks.7.attn1.to_k.bias"),
    ("blocks.7.self_attn.v.weight", "blocks.7.attn1.to_v.weight"),
    ("blocks.7.self_attn.o.weight", "blocks.7.attn1.to_out.0.weight"),
    ("blocks.7.self_attn.norm_q.weight", "blocks.7.attn1.norm_q.weight"),
    ("blocks.7.self_attn.norm_k.weight", "blocks.7.attn1.norm_k.weight"),
    ("blocks.7.cross_attn.q.weight", "blocks.7.attn2.to_q.weight"),
    ("blocks.7.cross_attn.o.bias", "blocks.7.attn2.to_out.0.bias"),
    ("blocks.7.cross_attn.k_img.weight", "blocks.7.attn2.add_k_proj.weight"),
    ("blocks.7.cross_attn.v_img.bias", "blocks.7.attn2.add_v_proj.bias"),
    ("blocks.7.cross_attn.norm_k_img.weight", "blocks.7.attn2.norm_added_k.weight"),
    ("blocks.7.cross_attn.norm_q.weight", "blocks.7.attn2.norm_q.weight"),
    ("blocks.7.norm3.weight", "blocks.7.norm2.weight"),
    ("blocks.7.norm3.bias", "blocks.7.norm2.bias"),
    ("blocks.7.ffn.0.weight", "blocks.7.ffn.net.0.proj.weight"),
    ("blocks.7.ffn.2.bias", "blocks.7.ffn.net.2.bias"),
    ("blocks.7.spatial_guidance_self.gate", "blocks.7.spatial_guidance_self.gate"),
    ("blocks.7.spatial_guidance_ffn.spatial_guide.1.weight", "blocks.7.spatial_guidance_ffn.spatial_guide.1.weight"),
]

MODULES = [  # LoRA module names (no parameter leaf)
    ("blocks.12.self_attn.q", "blocks.12.attn1.to_q"),
    ("blocks.12.cross_attn.k_img", "blocks.12.attn2.add_k_proj"),
    ("blocks.12.ffn.0", "blocks.12.ffn.net.0.proj"),
    ("blocks.12.ffn.2", "blocks.12.ffn.net.2"),
    ("head.head", "proj_out"),
    ("time_projection.1", "condition_embedder.time_proj"),
    ("img_emb.proj.1", "condition_embedder.image_embedder.ff.net.0.proj"),
    ("text_embedding.0", "condition_embedder.text_embedder.linear_1"),
]


@pytest.mark.parametrize("orig,diff", PAIRS + MODULES)
def test_pairs_both_directions(orig, diff):
    assert wk.original_to_diffusers(orig) == diff
    assert wk.diffusers_to_original(diff) == orig


def test_unknown_key_raises_or_passes():
    with pytest.raises(KeyError, match="not a Wan2.1 DiT"):
        wk.original_to_diffusers("omnimae_extractor.trunk.norm.weight")
    assert wk.original_to_diffusers("omnimae_extractor.trunk.norm.weight", strict=False) == "omnimae_extractor.trunk.norm.weight"
    with pytest.raises(KeyError):
        wk.diffusers_to_original("blocks.0.norm1.weight")  # non-affine in both layouts: no such parameter


def test_full_inventory_agrees_with_diffusers_converter():
    """diffusers' own single-file converter is an independent implementation of the same mapping."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    names = wk.original_parameter_names(3, image=True, ref_conv=False, mpm=False)
    ckpt = {"model.diffusion_model." + n: torch.zeros(1) for n in names}
    theirs = set(convert_wan_transformer_to_diffusers(dict(ckpt)).keys())
    ours = {wk.original_to_diffusers(n) for n in names}
    assert ours == theirs
    # and the mapping is a bijection that round-trips
    assert {wk.diffusers_to_original(n) for n in ours} == set(names)


def test_lora_module_inventory_488():
    names = wk.original_linear_module_names(40, image=True)
    assert len(names) == 488 and len(set(names)) == 488
    for n in names:  # every LoRA target maps to a diffusers module path
        wk.original_to_diffusers(n)


def test_convert_state_dict_and_layout_detection():
    sd = {"blocks.0.self_attn.q.weight": torch.ones(1), "head.head.bias": torch.zeros(1)}
    assert wk.is_original_layout(sd)
    d = wk.convert_state_dict(sd, to="diffusers")
    assert set(d) == {"blocks.0.attn1.to_q.weight", "proj_out.bias"}
    assert not wk.is_original_layout(d)
    assert wk.convert_state_dict(d, to="original").keys() == sd.keys()
