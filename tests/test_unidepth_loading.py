"""UniDepthV2 / V2old checkpoint loading: published key names, file formats, detection, bad files.

Tiny models follow encoders.md §4 (same key names, small widths). Published names are checked against lists
written here from the reference key tree (§1.5 / §1.6), not against the code under test.
"""
import json

import pytest
import torch

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.loading.unidepth import config_from_state, convert_keys, load_unidepth, to_published_keys
from moge4d_core.models.unidepth import UniDepthConfig, UniDepthV2, UniDepthV2Old, build_unidepth

torch.set_num_threads(1)


def tiny(version, embed_dim=128, heads=2, seed=0, scale=0.05):
    """A 4-block UniDepth of ``version`` with seeded random weights of std ``scale``."""
    cfg = UniDepthConfig(version=version, embed_dim=embed_dim, depth=4, num_heads=heads, hidden_dim=32, out_dim=8,
                         output_idx=(1, 2, 3, 4), decoder_depths=(2, 2, 2) if version == "v2" else (2, 0, 0))
    torch.manual_seed(seed)
    model = build_unidepth(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * scale)
    return model


def published(model):
    return {k: v.clone() for k, v in to_published_keys(model.state_dict()).items()}


def encoder_key_names(depth):
    """Published DINOv2 key names of UniDepth (encoders.md §1.5), written out independently."""
    names = {"cls_token", "pos_embed", "register_tokens", "mask_token", "patch_embed.proj.weight",
             "patch_embed.proj.bias", "norm.weight", "norm.bias"}
    for n in range(depth):
        for leaf in ("norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "attn.qkv.weight",
                     "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias", "ls1.gamma", "ls2.gamma",
                     "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"):
            names.add(f"blocks.{n}.{leaf}")
    return {"pixel_encoder." + n for n in names}


def test_reference_tiny_v2_key_count_and_published_names():
    # encoders.md §4 recipe 1: embed 32, depth 4, heads 2, hidden 32, out_dim 8 -> 240 keys, 304,707 values.
    cfg = UniDepthConfig(version="v2", embed_dim=32, depth=4, num_heads=2, hidden_dim=32, out_dim=8,
                         output_idx=(1, 2, 3, 4))
    with torch.device("meta"):
        model = build_unidepth(cfg)
    pub = to_published_keys(model.state_dict())
    assert len(pub) == 240
    assert sum(v.numel() for v in pub.values()) == 304_707
    enc = {k for k in pub if k.startswith("pixel_encoder.")}
    assert enc == encoder_key_names(4)
    shapes = {k: tuple(v.shape) for k, v in pub.items()}
    assert shapes["pixel_encoder.pos_embed"] == (1, 1370, 32)
    assert shapes["pixel_encoder.register_tokens"] == (1, 1, 32)
    assert shapes["pixel_encoder.blocks.0.attn.qkv.weight"] == (96, 32)
    assert shapes["pixel_decoder.level_embeds"] == (1, 1, 4, 32)
    assert shapes["pixel_decoder.camera_layer.aggregate1.kv.weight"] == (64, 32)
    assert "pixel_decoder.camera_layer.aggregate1.kv.bias" not in pub          # camera head: no biases
    assert "pixel_decoder.camera_layer.aggregate1.ls1.gamma" in pub            # ... but LayerScale
    assert "pixel_decoder.depth_layer.prompt_camera.0.layers.0.ls1.gamma" not in pub  # prompts: no LayerScale
    assert shapes["pixel_decoder.depth_layer.to_depth_lr.weight"] == (4, 8, 3, 3)   # channel plan 32->32->16->8
    assert shapes["pixel_decoder.depth_layer.to_depth_hr.0.weight"] == (32, 4, 3, 3)
    assert shapes["pixel_decoder.depth_layer.to_depth_hr.2.weight"] == (1, 32, 1, 1)
    assert shapes["pixel_decoder.depth_layer.process_features.2.weight"] == (32, 16, 4, 4)
    assert shapes["pixel_decoder.depth_layer.ups.1.convs.1.gamma"] == (1, 32, 1, 1)
    assert shapes["pixel_decoder.camera_layer.out_pinhole.proj2.weight"] == (1, 32)


def test_published_v2old_names_match_reference_tree():
    cfg = UniDepthConfig.preset("v2old", "vitl14")
    with torch.device("meta"):
        model = build_unidepth(cfg)
    pub = {k: tuple(v.shape) for k, v in to_published_keys(model.state_dict()).items()}
    assert len(pub) == 768                                                      # encoders.md §1.6
    assert sum(torch.Size(s).numel() for s in pub.values()) == 363_206_788     # §1.0 V2old-L param count
    d = "pixel_decoder."
    assert pub[d + "level_embeds"] == (4, 512)
    assert pub[d + "camera_layer.latents_pos"] == (1, 4, 512)
    assert pub[d + "camera_layer.in_features.proj1.weight"] == (1024, 512)
    assert pub[d + "camera_layer.project_cls.proj1.weight"] == (2048, 512)
    assert pub[d + "camera_layer.out.proj2.weight"] == (1, 1024)
    assert pub[d + "global_layer.project_rays.weight"] == (512, 99)
    assert pub[d + "input_adapter.input_adapters.3.1.weight"] == (512, 1024)
    assert d + "global_token_adapter.input_adapters.1.0.weight" in pub
    assert d + "global_token_adapter.input_adapters.2.0.weight" not in pub
    assert pub[d + "depth_layer.features_channel_cat.weight"] == (512, 2048)
    assert pub[d + "depth_layer.rays_layers.2.weight"] == (128, 99)
    assert pub[d + "depth_layer.ups.1.convs.0.dwconv.weight"] == (256, 1, 7, 7)
    assert pub[d + "depth_layer.ups.0.up.1.weight"] == (128, 1, 7, 7)
    assert pub[d + "depth_layer.ups.0.up.3.weight"] == (256, 128, 3, 3)
    assert pub[d + "depth_layer.ups.0.residual.0.weight"] == (256, 512, 1, 1)
    assert pub[d + "depth_layer.depth_mlp.2.proj2.weight"] == (16, 64)
    assert pub[d + "depth_layer.to_depth.weight"] == (1, 48, 7, 7)
    assert d + "depth_layer.process_layers.0.5.kv.weight" in pub
    assert not any(k.startswith(d + "depth_layer.process_layers.1.") for k in pub)


@pytest.mark.parametrize("version,backbone,heads,idx", [
    ("v2", "vits14", 6, (3, 6, 9, 12)), ("v2", "vitb14", 12, (3, 6, 9, 12)), ("v2", "vitl14", 16, (6, 12, 18, 24)),
    ("v2old", "vits14", 6, (9, 10, 11, 12)), ("v2old", "vitl14", 16, (21, 22, 23, 24))])
def test_detects_generation_and_backbone_from_published_keys(version, backbone, heads, idx):
    with torch.device("meta"):
        model = build_unidepth(UniDepthConfig.preset(version, backbone))
    state = convert_keys(to_published_keys(model.state_dict()))
    cfg = config_from_state(state, "meta")
    assert (cfg.version, cfg.backbone, cfg.num_heads, cfg.output_idx) == (version, backbone, heads, idx)
    # the architecture read back from shapes has exactly the published tensor shapes
    with torch.device("meta"):
        again = build_unidepth(cfg)
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def _same_output(a, b, version):
    torch.manual_seed(1)
    x = torch.randn(1, 3, 42, 56)
    with torch.no_grad():
        oa, ob = a.forward_network(x), b.forward_network(x)
    key = "radius" if version == "v2" else "depth"
    torch.testing.assert_close(ob[key], oa[key], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ob["K"], oa["K"], rtol=1e-6, atol=1e-6)
    assert oa[key].std() > 0


@pytest.mark.parametrize("version", ["v2", "v2old"])
def test_safetensors_and_bin_round_trip(tmp_path, version):
    from safetensors.torch import save_file

    src = tiny(version)
    pub = published(src)
    st = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in pub.items()}, str(st))
    binf = tmp_path / "b" / "pytorch_model.bin"
    binf.parent.mkdir()
    torch.save(pub, binf)
    for path in (st, binf, binf.parent):
        model = load_unidepth(path)
        cfg = model.config
        assert model.load_info.file == str(path if path.is_file() else path / "pytorch_model.bin")
        assert isinstance(model, UniDepthV2 if version == "v2" else UniDepthV2Old)
        assert (cfg.version, cfg.embed_dim, cfg.num_heads, cfg.backbone) == (version, 128, 2, "custom")
        assert not model.training and not any(p.requires_grad for p in model.parameters())
        _same_output(src, model, version)


def test_folder_with_hub_config_json_and_dtype(tmp_path):
    from safetensors.torch import save_file

    src = tiny("v2old", embed_dim=32, heads=2)  # 32 wide: heads cannot be guessed from the shapes
    pub = published(src)
    folder = tmp_path / "unidepth-v2old-tiny"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in pub.items()}, str(folder / "model.safetensors"))
    with pytest.raises(MoGe4DInputError, match="heads"):
        load_unidepth(folder)
    hub = {"generic": {"seed": 13}, "training": {},
           "data": {"shape_constraints": {"ratio_bounds": [0.66, 2.0], "pixels_bounds": [1400, 2400],
                                          "patch_size": 14}},
           "model": {"name": "UniDepthV2old", "num_heads": 8, "expansion": 4,
                     "pixel_decoder": {"hidden_dim": 32, "depths": [2, 0, 0], "dropout": 0.0},
                     "pixel_encoder": {"name": "dinov2_custom", "num_heads": 2, "use_norm": True,
                                       "stacking_fn": "last", "output_idx": [1, 2, 3, 4]}}}
    (folder / "config.json").write_text(json.dumps(hub))
    model = load_unidepth(folder, dtype=torch.bfloat16)
    cfg = model.config
    assert model.load_info.files["config"] == str(folder / "config.json") and model.load_info.dtype == torch.bfloat16
    assert cfg.version == "v2old" and cfg.num_heads == 2 and cfg.pixels_bounds == (1400.0, 2400.0)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    # pointing at the weights file also picks up the config.json next to it
    model32 = load_unidepth(folder / "model.safetensors")
    _same_output(src, model32, "v2old")
    # a config.json that contradicts the weights is an error naming both
    hub["model"]["name"] = "UniDepthV2"
    (folder / "config.json").write_text(json.dumps(hub))
    with pytest.raises(MoGe4DInputError, match="v2old"):
        load_unidepth(folder)


def test_v1_state_dict_is_refused_with_file_name(tmp_path):
    from safetensors.torch import save_file

    v1 = {"pixel_encoder.cls_token": torch.zeros(1, 1, 8), "pixel_decoder.token_adapter.input_adapters.0.weight":
          torch.zeros(4, 8), "pixel_decoder.camera_layer.out.proj2.weight": torch.zeros(1, 8)}
    f = tmp_path / "unidepth_v1.safetensors"
    save_file(v1, str(f))
    with pytest.raises(MoGe4DInputError) as err:
        load_unidepth(f)
    assert str(f) in str(err.value) and "V1" in str(err.value)


def test_random_safetensors_is_refused_with_file_name_and_keys(tmp_path):
    from safetensors.torch import save_file

    f = tmp_path / "random.safetensors"
    save_file({"foo.weight": torch.randn(3, 3), "bar": torch.randn(2)}, str(f))
    with pytest.raises(MoGe4DInputError) as err:
        load_unidepth(f)
    msg = str(err.value)
    assert str(f) in msg and "not a UniDepth checkpoint" in msg and "foo.weight" in msg


def test_truncated_or_wrong_shape_checkpoint_names_the_key(tmp_path):
    from safetensors.torch import save_file

    pub = published(tiny("v2"))
    missing = dict(pub)
    missing.pop("pixel_decoder.depth_layer.to_latents.weight")
    f = tmp_path / "partial.safetensors"
    save_file({k: v.contiguous() for k, v in missing.items()}, str(f))
    with pytest.raises(MoGe4DInputError, match="to_latents.weight"):
        load_unidepth(f)
    wrong = dict(pub)
    wrong["pixel_decoder.camera_layer.latents_pos"] = torch.zeros(1, 5, 32)
    with pytest.raises(MoGe4DInputError, match="latents_pos"):
        load_unidepth(wrong)


def test_code_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    f = tmp_path / "pytorch_model.bin"
    torch.save({"pixel_encoder.cls_token": torch.zeros(1), "x": Evil()}, f)
    with pytest.raises(MoGe4DInputError, match="weights_only"):
        load_unidepth(f)


def test_unrelated_sibling_config_json_is_ignored_but_folder_config_must_match(tmp_path):
    from safetensors.torch import save_file

    src = tiny("v2")
    f = tmp_path / "unidepth-v2-tiny.safetensors"
    save_file({k: v.contiguous() for k, v in published(src).items()}, str(f))
    other = {"model": {"name": "UniDepthV2old", "pixel_encoder": {"name": "dinov2_vitl14"}}}
    (tmp_path / "config.json").write_text(json.dumps(other))
    with pytest.warns(UserWarning, match="ignoring the config.json"):
        model = load_unidepth(f)
    assert model.config.version == "v2" and model.load_info.files == {}
    _same_output(src, model, "v2")
    with pytest.raises(MoGe4DInputError, match="v2"):
        load_unidepth(tmp_path)               # the folder's own config.json must describe its weights
    (tmp_path / "config.json").write_text(json.dumps({"model": {"name": "UniDepthV2",
                                                                "pixel_encoder": {"name": "dinov2_vitl14"}}}))
    with pytest.raises(MoGe4DInputError, match="vitl14"):
        load_unidepth(tmp_path)
