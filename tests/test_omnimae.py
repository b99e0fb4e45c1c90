"""OmniMAE ViT encoder: positional table, float64 reference forward on published key names, loaders, bad input."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.loading.omnimae import load_omnimae
from moge4d_core.models.omnimae import OmniMAEEncoder, extract_motion_features, preprocess, sinusoid_table
from moge4d_core.types import MotionFeatures

torch.set_num_threads(1)
C, DEPTH, CD = 128, 2, 16     # encoders.md §4 recipe 2, widened to 128 so heads = 128 // 64 = 2 by default


def np_table(n, d):
    """get_sinusoid_encoding_table as in omnivision (numpy float64)."""
    pos, j = np.arange(n, dtype=np.float64)[:, None], np.arange(d)[None, :]
    ang = pos / np.power(10000, 2 * (j // 2) / d)
    ang[:, 0::2] = np.sin(ang[:, 0::2])
    ang[:, 1::2] = np.cos(ang[:, 1::2])
    return torch.from_numpy(ang)


def published_state(seed=0):
    """A tiny OmniMAE pretraining state dict with the published key names (encoders.md §2.2)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.05  # noqa: E731
    sd = {"trunk.mask_token": r(1, C), "trunk.pos_embed": np_table(1568, C).float()[None],
          "trunk.patch_embed.proj.1.weight": r(C, 3, 2, 16, 16), "trunk.patch_embed.proj.1.bias": r(C),
          "trunk.norm.weight": 1 + r(C), "trunk.norm.bias": r(C)}
    for i in range(DEPTH):
        b = f"trunk.blocks.{i}."
        sd.update({b + "norm1.weight": 1 + r(C), b + "norm1.bias": r(C), b + "norm2.weight": 1 + r(C),
                   b + "norm2.bias": r(C), b + "attn.qkv.weight": r(3 * C, C), b + "attn.qkv.bias": r(3 * C),
                   b + "attn.proj.weight": r(C, C), b + "attn.proj.bias": r(C), b + "mlp.fc1.weight": r(4 * C, C),
                   b + "mlp.fc1.bias": r(4 * C), b + "mlp.fc2.weight": r(C, 4 * C), b + "mlp.fc2.bias": r(C)})
    d = "trunk.decoder."
    sd.update({d + "pos_embed": np_table(1568, C).float()[None], d + "decoder_embed.weight": r(CD, C),
               d + "decoder_embed.bias": r(CD), d + "norm.weight": 1 + r(CD), d + "norm.bias": r(CD),
               d + "decoder_blocks.0.norm1.weight": r(CD), d + "decoder_blocks.0.norm1.bias": r(CD),
               d + "decoder_blocks.0.norm2.weight": r(CD), d + "decoder_blocks.0.norm2.bias": r(CD),
               d + "decoder_blocks.0.attn.qkv.weight": r(3 * CD, CD), d + "decoder_blocks.0.attn.proj.weight": r(CD, CD),
               d + "decoder_blocks.0.attn.proj.bias": r(CD), d + "decoder_blocks.0.mlp.fc1.weight": r(4 * CD, CD),
               d + "decoder_blocks.0.mlp.fc1.bias": r(4 * CD), d + "decoder_blocks.0.mlp.fc2.weight": r(CD, 4 * CD),
               d + "decoder_blocks.0.mlp.fc2.bias": r(CD), "head.weight": r(1536, CD), "head.bias": r(1536)})
    return sd


def _ln(x, w, b, eps=1e-6):
    mu = x.mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(((x - mu) ** 2).mean(-1, keepdim=True) + eps) * w + b


def reference_tokens(sd, image_hw3, heads):
    """Float64 MoGe4D forward_patch_features: ImageNet norm, bilinear 224 stretch, 2-frame tubelet, 12 blocks, LN."""
    p = {k: v.double() for k, v in sd.items()}
    x = image_hw3.double().permute(2, 0, 1)[None]
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)
    x = F.interpolate((x - mean) / std, size=(224, 224), mode="bilinear", align_corners=False)
    video = torch.stack([x, x], dim=2)                                       # PadIm2Video(ntimes=2, "repeat")
    t = F.conv3d(video, p["trunk.patch_embed.proj.1.weight"], p["trunk.patch_embed.proj.1.bias"], stride=(2, 16, 16))
    t = t.flatten(2).transpose(1, 2) + p["trunk.pos_embed"][:, :196]         # frame 0 of the 8x196 layout
    d = C // heads
    for i in range(DEPTH):
        b = f"trunk.blocks.{i}."
        y = _ln(t, p[b + "norm1.weight"], p[b + "norm1.bias"])
        qkv = (y @ p[b + "attn.qkv.weight"].T + p[b + "attn.qkv.bias"]).reshape(1, 196, 3, heads, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        a = (torch.softmax(q @ k.transpose(-1, -2) * d ** -0.5, -1) @ v).transpose(1, 2).reshape(1, 196, C)
        t = t + a @ p[b + "attn.proj.weight"].T + p[b + "attn.proj.bias"]
        y = _ln(t, p[b + "norm2.weight"], p[b + "norm2.bias"])
        h = y @ p[b + "mlp.fc1.weight"].T + p[b + "mlp.fc1.bias"]
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
        t = t + h @ p[b + "mlp.fc2.weight"].T + p[b + "mlp.fc2.bias"]
    return _ln(t, p["trunk.norm.weight"], p["trunk.norm.bias"])[0]


def test_positional_table_equals_sincos_formula():
    got = sinusoid_table(1568, 768)[0].double()
    assert got.shape == (1568, 768)
    torch.testing.assert_close(got, np_table(1568, 768), atol=1e-6, rtol=0)  # float32 storage
    for pos, j in [(0, 0), (0, 1), (195, 10), (1567, 767), (37, 500)]:
        angle = pos / 10000 ** (2 * (j // 2) / 768)
        assert abs(got[pos, j] - (math.sin(angle) if j % 2 == 0 else math.cos(angle))) < 1e-6
    assert torch.equal(OmniMAEEncoder(64, 1, 1).pos_embed, sinusoid_table(1568, 64))


def test_features_equal_float64_reference_from_published_weights():
    sd = published_state()
    model = load_omnimae(sd, dtype=torch.float64)
    assert model.num_heads == 2 and model.depth == DEPTH
    torch.manual_seed(0)
    img = torch.rand(60, 90, 3)
    feats = extract_motion_features(model, img)
    assert isinstance(feats, MotionFeatures) and feats.tokens.shape == (196, C) and feats.grid == (14, 14)
    torch.testing.assert_close(feats.tokens.double(), reference_tokens(sd, img, heads=2), atol=1e-6, rtol=0)


def test_preprocess_is_normalise_then_bilinear_stretch():
    x = torch.rand(1, 3, 50, 70, dtype=torch.float64)
    mean = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)
    want = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)
    torch.testing.assert_close(preprocess(x), (want - mean) / std)  # both linear per channel: order irrelevant


def test_loads_torch_file_strag_safetensors_and_stripped_dicts(tmp_path):
    from safetensors.torch import save_file

    sd = published_state()
    ref = load_omnimae(sd)
    img = torch.rand(32, 32, 3)
    want = extract_motion_features(ref, img).tokens

    f = tmp_path / "vitb_pretrain.torch"
    torch.save(sd, f)
    torch.testing.assert_close(extract_motion_features(load_omnimae(f), img).tokens, want)

    # a 4D-STraG file: DiT keys plus the bf16 sub-dict omnimae_extractor.*
    strag = {"omnimae_extractor." + k: v.to(torch.bfloat16) for k, v in sd.items()}
    strag.update({"blocks.0.self_attn.q.weight": torch.randn(8, 8), "feature_adapter.0.weight": torch.randn(4, 4, 3, 3)})
    st = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file({k: v.contiguous() for k, v in strag.items()}, str(st))
    m = load_omnimae(st)
    assert m.patch_embed.weight.dtype == torch.float32
    assert m.load_info.file == str(st) and m.load_info.format == "4D-STraG omnimae_extractor.*"
    assert load_omnimae(f).load_info.format == "OmniMAE trunk.*"
    assert m.load_info.ignored_keys == sorted(k for k in sd if k.startswith(("trunk.mask_token", "trunk.decoder.", "head.")))
    bf = load_omnimae({k: v.to(torch.bfloat16).float() for k, v in sd.items()})
    torch.testing.assert_close(extract_motion_features(m, img).tokens, extract_motion_features(bf, img).tokens)
    # the same sub-dict passed in memory, with or without the prefix
    sub = {k: v for k, v in strag.items() if k.startswith("omnimae_extractor.")}
    torch.testing.assert_close(load_omnimae(sub).pos_embed, m.pos_embed)
    stripped = {k[len("omnimae_extractor."):]: v for k, v in sub.items()}
    torch.testing.assert_close(load_omnimae(stripped, dtype=torch.bfloat16).norm.weight.float(), m.norm.weight)


def test_sharded_strag_reads_only_the_shard_with_the_extractor(tmp_path):
    from safetensors.torch import save_file

    sd = published_state()
    save_file({"blocks.0.ffn.0.weight": torch.randn(4, 4)}, str(tmp_path / "part-1.safetensors"))
    save_file({"omnimae_extractor." + k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "part-2.safetensors"))
    wmap = {"blocks.0.ffn.0.weight": "part-1.safetensors"}
    wmap.update({"omnimae_extractor." + k: "part-2.safetensors" for k in sd})
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": wmap}))
    (tmp_path / "part-1.safetensors").write_bytes(b"corrupt")  # never opened: it holds no extractor keys
    m = load_omnimae(tmp_path)
    torch.testing.assert_close(m.norm.bias, sd["trunk.norm.bias"])


def test_refuses_code_pickles_and_non_state_dicts(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    f = tmp_path / "vitb_pretrain.torch"
    torch.save({"trunk.pos_embed": torch.zeros(1), "evil": Evil()}, f)
    with pytest.raises(MoGe4DInputError, match="weights_only"):
        load_omnimae(f)
    g = tmp_path / "list.torch"
    torch.save([torch.zeros(3)], g)
    with pytest.raises(MoGe4DInputError, match="state dict"):
        load_omnimae(g)
    with pytest.raises(MoGe4DInputError, match="tensors"):
        load_omnimae({"trunk.pos_embed": [1, 2, 3]})


def test_bad_checkpoints_name_file_and_keys(tmp_path):
    from safetensors.torch import save_file

    f = tmp_path / "random.safetensors"
    save_file({"foo.weight": torch.randn(2, 2)}, str(f))
    with pytest.raises(MoGe4DInputError) as err:
        load_omnimae(f)
    assert str(f) in str(err.value) and "not an OmniMAE checkpoint" in str(err.value) and "foo.weight" in str(err.value)
    g = tmp_path / "strag_without_mpm.safetensors"
    save_file({"blocks.0.self_attn.q.weight": torch.randn(2, 2), "head.head.weight": torch.randn(2, 2)}, str(g))
    with pytest.raises(MoGe4DInputError, match="vitb_pretrain"):
        load_omnimae(g)
    sd = published_state()
    del sd["trunk.blocks.1.mlp.fc2.bias"]
    with pytest.raises(MoGe4DInputError, match="blocks.1.mlp.fc2.bias"):
        load_omnimae(sd)
    sd = published_state()
    sd["trunk.extra.weight"] = torch.zeros(1)
    with pytest.raises(MoGe4DInputError, match="trunk.extra.weight"):
        load_omnimae(sd)


def test_image_handling():
    model = load_omnimae(published_state())
    tiny = torch.rand(5, 7, 3)                                   # smaller than one 16-px patch: stretched to 224
    assert extract_motion_features(model, tiny).tokens.shape == (196, C)
    u8 = (torch.rand(20, 30, 3) * 255).round().to(torch.uint8)
    torch.testing.assert_close(extract_motion_features(model, u8).tokens,
                               extract_motion_features(model, u8.float() / 255).tokens)
    for bad, match in [(torch.rand(20, 20, 1), "grey"), (torch.rand(20, 20, 4), "RGBA"),
                       (torch.rand(3, 20, 20), "channel"), (torch.rand(1, 1, 3), "too small"),
                       (torch.rand(20, 20, 3) * 2, r"\[0, 1\]")]:
        with pytest.raises(MoGe4DInputError, match=match):
            extract_motion_features(model, bad)
