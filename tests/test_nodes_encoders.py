"""Encoder nodes against the ComfyUI stand-in: model folder registration, loaders, depth / geometry / motion
feature nodes (shapes, ranges, Cancel between batch items), with tiny UniDepth / OmniMAE files."""
import math

import pytest
import torch

from conftest import load_nodes, pack_module
from moge4d_core.errors import MoGe4DInputError
from moge4d_core.types import Geometry, MotionFeatures
from test_omnimae import published_state
from test_unidepth_loading import published, tiny

torch.set_num_threads(1)


@pytest.fixture()
def env(tmp_path):
    nodes = load_nodes(tmp_path)
    import folder_paths

    models = pack_module("nodes.models")

    folder_paths.models_dir = str(tmp_path / "models")
    folder_paths.folder_names_and_paths.pop("moge4d", None)
    models.register_model_folder()
    root = tmp_path / "models" / "moge4d"
    (root / "unidepth").mkdir(parents=True)
    (root / "omnimae").mkdir(parents=True)
    yield nodes, root
    folder_paths.folder_names_and_paths.pop("moge4d", None)


def _by_id(nodes, node_id):
    return next(n for n in nodes.NODE_LIST if n.define_schema().node_id == node_id)


def _save_unidepth(root):
    from safetensors.torch import save_file

    src = tiny("v2")
    save_file({k: v.contiguous() for k, v in published(src).items()}, str(root / "unidepth" / "tiny.safetensors"))
    return src


def test_registration_merges_with_an_existing_entry(tmp_path):
    load_nodes(tmp_path)
    import folder_paths

    models = pack_module("nodes.models")

    folder_paths.models_dir = str(tmp_path / "models")
    user = str(tmp_path / "elsewhere")
    folder_paths.folder_names_and_paths["moge4d"] = ([user], {".ckpt"})   # as from extra_model_paths.yaml
    try:
        models.register_model_folder()
        models.register_model_folder()                                    # idempotent
        paths, exts = folder_paths.folder_names_and_paths["moge4d"]
        assert paths == [user, str(tmp_path / "models" / "moge4d")]
        assert exts >= {".ckpt", ".safetensors", ".bin", ".pth", ".torch", ".pt"}
    finally:
        folder_paths.folder_names_and_paths.pop("moge4d", None)


def test_unidepth_loader_and_depth_node(env):
    nodes, root = env
    import comfy.model_management as mm
    import comfy.utils

    _save_unidepth(root)
    (root / "notes.txt").write_text("not a model")
    loader = _by_id(nodes, "MoGe4DLoadUniDepth")
    options = next(i for i in loader.define_schema().inputs if i.id == "file").options
    assert options == ["unidepth/tiny.safetensors"]                          # .txt is not a model extension
    assert loader.validate_inputs(file="unidepth/tiny.safetensors") is True
    assert loader.validate_inputs(file="missing.safetensors") is not True
    patcher = loader.execute(file="unidepth/tiny.safetensors", precision="fp32").args[0]
    assert patcher.model.inner.config.version == "v2"
    with pytest.raises(MoGe4DInputError, match="not found"):
        loader.execute(file="nope.safetensors")

    depth = _by_id(nodes, "MoGe4DDepth")
    images = torch.rand(2, 40, 56, 3)
    comfy.utils.updates.clear()
    n_loads = len(mm.loaded_models_log)
    geom, preview, conf = depth.execute(unidepth=patcher, image=images, resolution_level=0, width=32, height=16).args
    assert len(mm.loaded_models_log) == n_loads + 1 and patcher.loaded       # went through load_models_gpu
    assert isinstance(geom, Geometry) and (geom.height, geom.width) == (16, 32)
    assert preview.shape == (2, 16, 32, 3) and 0 <= preview.min() and preview.max() <= 1
    assert conf.shape == (2, 40, 56) and 0 <= conf.min() and conf.max() <= 1 + 1e-6
    assert comfy.utils.updates[-1] == (2, 2)
    torch.testing.assert_close(geom.image, torch.nn.functional.interpolate(
        images[:1].permute(0, 3, 1, 2), size=(16, 32), mode="bilinear", antialias=True)[0].permute(1, 2, 0))
    # predicted K vs fov_override: fx = W / (2 tan(fov/2)) at the working size
    g2 = depth.execute(unidepth=patcher, image=images[:1], resolution_level=0, fov_override=90.0, width=32,
                       height=16).args[0]
    assert g2.K[0, 0].item() == pytest.approx(56 / 2 / math.tan(math.radians(45)) * 32 / 56, rel=1e-5)
    g3 = depth.execute(unidepth=patcher, image=images[:1], resolution_level=0, width=32, height=16,
                       intrinsics="official_pseudo").args[0]
    u = torch.linspace(0, 1, 32, dtype=torch.float64)
    fx = (540 * 32) / (960 * 16)         # official rule at 16x32 from (540, 960): the height shrank most
    torch.testing.assert_close(g3.points[..., 0].double(), (u - 0.5)[None] * g3.depth.double() / fx,
                               rtol=1e-5, atol=1e-6)


def test_depth_node_cancel_between_batch_items(env):
    nodes, root = env
    import comfy.model_management as mm

    _save_unidepth(root)
    patcher = _by_id(nodes, "MoGe4DLoadUniDepth").execute(file="unidepth/tiny.safetensors", precision="fp32").args[0]
    calls = []
    model = patcher.model.inner
    original = model.infer
    model.infer = lambda *a, **k: calls.append(1) or original(*a, **k)
    mm.interrupt_after_calls = 1                    # Cancel pressed after the first image
    with pytest.raises(mm.InterruptProcessingException):
        _by_id(nodes, "MoGe4DDepth").execute(unidepth=patcher, image=torch.rand(3, 20, 28, 3), resolution_level=0,
                                             width=0, height=0)
    assert len(calls) == 1
    mm.reset_interrupt()


def test_geometry_from_moge_and_from_depth_nodes(env):
    nodes, _ = env
    b, h, w = 2, 24, 40
    moge = {"points": torch.zeros(b, h, w, 3), "depth": torch.rand(b, h, w) + 1.0,
            "intrinsics": torch.tensor([[0.7, 0, 0.5], [0, 1.1, 0.5], [0, 0, 1.0]]).expand(b, 3, 3),
            "mask": torch.ones(b, h, w, dtype=torch.bool), "image": torch.rand(b, h, w, 3)}
    geom, prev = _by_id(nodes, "MoGe4DGeometryFromMoGe").execute(moge_geometry=moge, index=1, metric=False,
                                                                  width=0, height=0).args
    assert not geom.metric and prev.shape == (1, h, w, 3)
    torch.testing.assert_close(geom.K[0, 0], torch.tensor(0.7 * w))
    torch.testing.assert_close(geom.depth, moge["depth"][1])
    geom32, _ = _by_id(nodes, "MoGe4DGeometryFromMoGe").execute(moge_geometry=moge, width=32, height=16).args
    assert (geom32.height, geom32.width) == (16, 32)
    assert geom32.K[0, 0].item() == pytest.approx(0.7 * 32, rel=1e-6)   # normalised focal is size-independent

    node = _by_id(nodes, "MoGe4DGeometryFromDepth")
    disparity = torch.linspace(0, 1, w).expand(1, h, w)[..., None].expand(1, h, w, 3).contiguous()
    geom, prev = node.execute(image=torch.rand(1, h, w, 3), depth=disparity, fov=60.0,
                              depth_kind="relative_inverse", near=0.5, far=5.0, width=0, height=0).args
    assert geom.depth[0, -1].item() == pytest.approx(0.5) and geom.depth[0, 0].item() == pytest.approx(5.0)
    assert prev[0, 0, -1, 0] > prev[0, 0, 0, 0]                            # near is brighter
    with pytest.raises(MoGe4DInputError, match="all zero"):
        node.execute(image=torch.rand(1, h, w, 3), depth=torch.zeros(1, h, w, 3), fov=60.0)


def test_omnimae_loader_and_motion_features_node(env):
    nodes, root = env
    torch.save(published_state(), root / "omnimae" / "vitb_pretrain.torch")
    loader = _by_id(nodes, "MoGe4DLoadOmniMAE")
    assert "omnimae/vitb_pretrain.torch" in next(i for i in loader.define_schema().inputs if i.id == "file").options
    patcher = loader.execute(file="omnimae/vitb_pretrain.torch", precision="fp32").args[0]
    feats, heat = _by_id(nodes, "MoGe4DMotionFeatures").execute(omnimae=patcher, image=torch.rand(2, 30, 50, 3)).args
    assert isinstance(feats, MotionFeatures) and feats.tokens.shape == (196, 128) and feats.grid == (14, 14)
    assert heat.shape == (1, 30, 50, 3) and heat.min() >= 0 and heat.max() <= 1
    norms = feats.tokens.norm(dim=-1)
    assert heat.max() == pytest.approx(1.0, abs=0.05) and norms.max() > norms.min()
