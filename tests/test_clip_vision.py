"""CLIP ViT image tower (Wan's CLIP): key maps of the Wan / ComfyUI / open_clip layouts, penultimate output.

A tiny tower (width 64, 4 heads, 3 blocks, 224 px / patch 14, so 257 tokens) with random weights is
written in each layout by hand-written inverse maps in this file, loaded through ``load_clip_vision``
and compared with (a) transformers' full ``CLIPVisionModel`` ``hidden_states[-2]`` and (b) a float64
re-implementation of Wan's ``VisionTransformer(use_31_block=True)`` read straight from the Wan dict.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.loading.clip import load_clip_vision
from moge4d_core.models.clip import ClipVisionEncoder, encode_image
from moge4d_core.models.conditioning import ImageContext

torch.set_num_threads(1)

D, HEADS, LAYERS, MLP, PROJ = 64, 4, 3, 256, 32
MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073], dtype=torch.float64).view(1, 3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711], dtype=torch.float64).view(1, 3, 1, 1)


def _hf_reference():
    from transformers import CLIPVisionConfig, CLIPVisionModel

    cfg = CLIPVisionConfig(hidden_size=D, intermediate_size=MLP, num_attention_heads=HEADS, num_hidden_layers=LAYERS,
                           image_size=224, patch_size=14, hidden_act="gelu", layer_norm_eps=1e-5)
    torch.manual_seed(0)
    model = CLIPVisionModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith("class_embedding") or "position_embedding" in name:
                p.copy_(0.5 * torch.randn_like(p))
            else:
                p.copy_(0.08 * torch.randn_like(p))
    return model


def _hf_names(model) -> dict:
    """The checkpoint layout of clip_vision_h.safetensors: vision_model.* (+ visual_projection)."""
    sd = {k if k.startswith("vision_model.") else "vision_model." + k: v.clone() for k, v in model.state_dict().items()}
    sd.pop("vision_model.embeddings.position_ids", None)
    g = torch.Generator().manual_seed(1)
    sd["visual_projection.weight"] = torch.randn(PROJ, D, generator=g)
    return sd


def _wan_names(hf: dict) -> dict:
    """Wan's XLMRobertaCLIP naming (visual.* + some textual.* + log_scale), written independently here."""
    V, L = "vision_model.", "vision_model.encoder.layers."
    out = {
        "visual.patch_embedding.weight": hf[V + "embeddings.patch_embedding.weight"],
        "visual.cls_embedding": hf[V + "embeddings.class_embedding"].view(1, 1, D),
        "visual.pos_embedding": hf[V + "embeddings.position_embedding.weight"].unsqueeze(0),
        "visual.pre_norm.weight": hf[V + "pre_layrnorm.weight"], "visual.pre_norm.bias": hf[V + "pre_layrnorm.bias"],
        "visual.post_norm.weight": hf[V + "post_layernorm.weight"],
        "visual.post_norm.bias": hf[V + "post_layernorm.bias"],
        "visual.head": hf["visual_projection.weight"].t().contiguous(),
        "textual.token_embedding.weight": torch.randn(50, 16),
        "textual.blocks.0.attn.q.weight": torch.randn(16, 16),
        "log_scale": torch.tensor(4.6),
    }
    for i in range(LAYERS):
        a, w = f"{L}{i}.", f"visual.transformer.{i}."
        for kind in ("weight", "bias"):
            out[w + f"attn.to_qkv.{kind}"] = torch.cat([hf[a + f"self_attn.{n}_proj.{kind}"] for n in "qkv"])
            out[w + f"attn.proj.{kind}"] = hf[a + f"self_attn.out_proj.{kind}"]
            out[w + f"norm1.{kind}"] = hf[a + f"layer_norm1.{kind}"]
            out[w + f"norm2.{kind}"] = hf[a + f"layer_norm2.{kind}"]
            out[w + f"mlp.0.{kind}"] = hf[a + f"mlp.fc1.{kind}"]
            out[w + f"mlp.2.{kind}"] = hf[a + f"mlp.fc2.{kind}"]
    return {k: v.contiguous() for k, v in out.items()}


def _open_clip_names(hf: dict) -> dict:
    V, L = "vision_model.", "vision_model.encoder.layers."
    out = {
        "visual.conv1.weight": hf[V + "embeddings.patch_embedding.weight"],
        "visual.class_embedding": hf[V + "embeddings.class_embedding"],
        "visual.positional_embedding": hf[V + "embeddings.position_embedding.weight"],
        "visual.ln_pre.weight": hf[V + "pre_layrnorm.weight"], "visual.ln_pre.bias": hf[V + "pre_layrnorm.bias"],
        "visual.ln_post.weight": hf[V + "post_layernorm.weight"], "visual.ln_post.bias": hf[V + "post_layernorm.bias"],
        "visual.proj": hf["visual_projection.weight"].t().contiguous(),
        # open_clip's text tower shares the 'transformer.resblocks' naming without the 'visual.' prefix
        "transformer.resblocks.0.attn.in_proj_weight": torch.randn(48, 16),
        "token_embedding.weight": torch.randn(50, 16),
    }
    for i in range(LAYERS):
        a, w = f"{L}{i}.", f"visual.transformer.resblocks.{i}."
        out[w + "attn.in_proj_weight"] = torch.cat([hf[a + f"self_attn.{n}_proj.weight"] for n in "qkv"])
        out[w + "attn.in_proj_bias"] = torch.cat([hf[a + f"self_attn.{n}_proj.bias"] for n in "qkv"])
        for kind in ("weight", "bias"):
            out[w + f"attn.out_proj.{kind}"] = hf[a + f"self_attn.out_proj.{kind}"]
            out[w + f"ln_1.{kind}"] = hf[a + f"layer_norm1.{kind}"]
            out[w + f"ln_2.{kind}"] = hf[a + f"layer_norm2.{kind}"]
            out[w + f"mlp.c_fc.{kind}"] = hf[a + f"mlp.fc1.{kind}"]
            out[w + f"mlp.c_proj.{kind}"] = hf[a + f"mlp.fc2.{kind}"]
    return {k: v.contiguous() for k, v in out.items()}


def _wan_preprocess(image: torch.Tensor, dtype=torch.float64) -> torch.Tensor:
    """Wan CLIPModel.visual: [-1,1] input, bicubic stretch to 224, *0.5+0.5, OpenAI normalisation."""
    x = image.to(dtype).permute(0, 3, 1, 2) * 2 - 1
    x = F.interpolate(x, size=(224, 224), mode="bicubic", align_corners=False)
    return (x * 0.5 + 0.5 - MEAN.to(dtype)) / STD.to(dtype)


def _wan_visual_float64(sd: dict, pixels: torch.Tensor) -> torch.Tensor:
    """Wan VisionTransformer forward, use_31_block=True, from the Wan-named dict, in float64."""
    g = {k: v.double() for k, v in sd.items()}
    x = F.conv2d(pixels, g["visual.patch_embedding.weight"], stride=14).flatten(2).transpose(1, 2)
    b = x.shape[0]
    x = torch.cat([g["visual.cls_embedding"].expand(b, 1, D), x], dim=1) + g["visual.pos_embedding"]
    x = F.layer_norm(x, (D,), g["visual.pre_norm.weight"], g["visual.pre_norm.bias"], 1e-5)
    hd = D // HEADS
    for i in range(LAYERS - 1):                       # all but the last block, no post_norm
        w = f"visual.transformer.{i}."
        h = F.layer_norm(x, (D,), g[w + "norm1.weight"], g[w + "norm1.bias"], 1e-5)
        qkv = (h @ g[w + "attn.to_qkv.weight"].t() + g[w + "attn.to_qkv.bias"]).view(b, -1, 3, HEADS, hd)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)
        o = (att @ v).transpose(1, 2).reshape(b, -1, D)
        x = x + o @ g[w + "attn.proj.weight"].t() + g[w + "attn.proj.bias"]
        h = F.layer_norm(x, (D,), g[w + "norm2.weight"], g[w + "norm2.bias"], 1e-5)
        h = h @ g[w + "mlp.0.weight"].t() + g[w + "mlp.0.bias"]
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))  # exact GELU
        x = x + h @ g[w + "mlp.2.weight"].t() + g[w + "mlp.2.bias"]
    return x


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("clip")
    ref = _hf_reference()
    hf = _hf_names(ref)
    wan = _wan_names(hf)
    paths = {"hf": d / "clip_vision_h.safetensors", "wan": d / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth",
             "open_clip": d / "open_clip_vit_h.safetensors"}
    save_file(hf, str(paths["hf"]))
    torch.save(wan, str(paths["wan"]))
    save_file(_open_clip_names(hf), str(paths["open_clip"]))
    torch.manual_seed(3)
    image = torch.rand(2, 100, 150, 3)              # not 224 and not square: the stretch resize matters
    return dict(ref=ref, wan_sd=wan, paths=paths, image=image)


@pytest.fixture(scope="module")
def hf_model(files):
    return load_clip_vision(files["paths"]["hf"], dtype=torch.float32, device="cpu", num_heads=HEADS)


def test_all_layouts_load_to_identical_penultimate_output(files):
    outs = {}
    for fmt, path in files["paths"].items():
        model = load_clip_vision(path, dtype=torch.float32, device="cpu", num_heads=HEADS)
        assert isinstance(model, ClipVisionEncoder)
        assert model.config.num_hidden_layers == LAYERS
        assert model.load_info.format == fmt and model.load_info.file == str(path)
        assert model.load_info.ignored_keys and all(f"layers.{LAYERS - 1}." in k for k in model.load_info.ignored_keys)
        ctx = encode_image(model, files["image"])
        assert isinstance(ctx, ImageContext) and ctx.tokens.shape == (2, 257, D) and ctx.tokens.dtype == torch.float32
        outs[fmt] = ctx.tokens
    assert torch.equal(outs["hf"], outs["wan"])
    assert torch.equal(outs["hf"], outs["open_clip"])


def test_matches_transformers_hidden_states_minus_two(files, hf_model):
    ours = encode_image(hf_model, files["image"]).tokens
    with torch.no_grad():
        out = files["ref"](pixel_values=_wan_preprocess(files["image"], torch.float32), output_hidden_states=True)
    torch.testing.assert_close(ours, out.hidden_states[-2], rtol=1e-6, atol=1e-6)
    # the test can fail: the last block's output is clearly different
    assert (ours - out.hidden_states[-1]).abs().max() > 1e-2


def test_matches_float64_wan_visual_use_31_block(files):
    model = load_clip_vision(files["paths"]["wan"], dtype=torch.float32, device="cpu", num_heads=HEADS)
    ours = encode_image(model, files["image"]).tokens.double()
    ref = _wan_visual_float64(files["wan_sd"], _wan_preprocess(files["image"]))
    err = (ours - ref).abs().max() / ref.abs().max()
    assert err < 1e-5, float(err)


def test_grey_image_gives_identical_tokens_for_any_input_size(files, hf_model):
    """MoGe4D stage 1 embeds a uniform (127,127,127) image: the result does not depend on its size."""
    model = hf_model
    a = encode_image(model, torch.full((1, 224, 224, 3), 127 / 255)).tokens
    b = encode_image(model, torch.full((1, 480, 832, 3), 127 / 255)).tokens
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_low_precision_load(files):
    model = load_clip_vision(files["paths"]["wan"], dtype=torch.bfloat16, device="cpu", num_heads=HEADS)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    ours = encode_image(model, files["image"]).tokens
    ref = _wan_visual_float64(files["wan_sd"], _wan_preprocess(files["image"])).float()
    assert ((ours - ref).abs().max() / ref.abs().max()) < 0.05


def test_wrong_or_partial_files_are_named(files, tmp_path):
    from safetensors.torch import load_file, save_file

    # a text encoder file handed to the CLIP loader
    t5 = tmp_path / "umt5_xxl_fp16.safetensors"
    save_file({"shared.weight": torch.zeros(8, 4), "encoder.block.0.layer.0.SelfAttention.q.weight": torch.zeros(4, 4)},
              str(t5))
    with pytest.raises(MoGe4DInputError, match=r"umt5_xxl_fp16\.safetensors.*does not look like a CLIP vision tower"):
        load_clip_vision(t5, dtype=torch.float32, num_heads=HEADS)
    # a partial file: the error names the file, the detected format and the first missing key
    sd = load_file(str(files["paths"]["hf"]))
    del sd["vision_model.encoder.layers.0.mlp.fc2.bias"]
    part = tmp_path / "partial.safetensors"
    save_file(sd, str(part))
    with pytest.raises(MoGe4DInputError, match=r"partial\.safetensors.*detected format hf.*layers\.0\.mlp\.fc2\.bias"):
        load_clip_vision(part, dtype=torch.float32, num_heads=HEADS)
    # an unmapped key inside the visual tower is reported as unexpected
    wan = dict(files["wan_sd"])
    wan["visual.transformer.0.ls_1.gamma"] = torch.ones(D)
    odd = tmp_path / "odd.pth"
    torch.save(wan, str(odd))
    with pytest.raises(MoGe4DInputError, match=r"odd\.pth.*unexpected.*ls_1\.gamma"):
        load_clip_vision(odd, dtype=torch.float32, num_heads=HEADS)
    # unknown width without a head count
    with pytest.raises(MoGe4DInputError, match="width 64 is not ViT-H"):
        load_clip_vision(files["paths"]["hf"], dtype=torch.float32)
    with pytest.raises(MoGe4DInputError, match="no such file"):
        load_clip_vision(tmp_path / "missing.safetensors")


def test_bad_images_are_refused(files, hf_model):
    model = hf_model
    with pytest.raises(MoGe4DInputError, match=r"image: expected \(B, H, W, 3\)"):
        encode_image(model, torch.rand(1, 3, 64, 64))
    with pytest.raises(MoGe4DInputError, match=r"\[0, 1\]"):
        encode_image(model, torch.rand(1, 64, 64, 3) * 255)
    with pytest.raises(MoGe4DInputError, match="ClipVisionEncoder"):
        encode_image(files["ref"], torch.rand(1, 64, 64, 3))


def test_output_can_feed_a_trained_layer(files, hf_model):
    model = hf_model
    tokens = encode_image(model, files["image"]).tokens
    lin = torch.nn.Linear(D, 4)
    lin(tokens).square().sum().backward()
    assert lin.weight.grad is not None and not tokens.requires_grad
