"""The nano model built into the loader nodes (``nano (built-in)``) and the text conditioning the Trajectory
Sampler / Inpaint nodes take as optional inputs, through the ComfyUI stand-in with an empty models folder."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import load_nodes, pack_module
from moge4d_core.errors import MoGe4DInputError
from moge4d_core.geometry.sources import geometry_from_depth
from moge4d_core.models.wan_dit import drop_text_input_, reads_text
from moge4d_core.pipeline.nano import NANO_DIR, NANO_FILES
from test_nodes_pipeline import ComfyLikeVAE

torch.set_num_threads(1)
NANO = "nano (built-in)"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nodes_nano")
    nodes = load_nodes(tmp)
    import folder_paths

    folder_paths.models_dir = str(tmp / "models")           # no model files at all
    folder_paths.folder_names_and_paths.pop("moge4d", None)
    pack_module("nodes.models").register_model_folder()
    n = lambda nid: next(x for x in nodes.NODE_LIST if x.define_schema().node_id == nid)  # noqa: E731
    yield n
    folder_paths.folder_names_and_paths.pop("moge4d", None)


@pytest.fixture(scope="module")
def loaded(env):
    n = env
    strag = n("MoGe4DLoadSTraG").execute(file=NANO, precision="fp32").args[0]
    mvae = n("MoGe4DLoadMotionVAE").execute(vae=NANO, precision="fp32").args[0]
    vism = n("MoGe4DLoadViSM").execute(file=NANO, lora="none", precision="fp32").args[0]
    return strag, mvae, vism


def _nano_geometry():
    spec = json.loads((NANO_DIR / "demo.json").read_text())
    image = torch.from_numpy(np.array(Image.open(NANO_DIR / spec["image"]).convert("RGB"))).float() / 255
    depth = torch.from_numpy(np.load(NANO_DIR / spec["depth"])).float()
    return geometry_from_depth(image, depth[..., None].expand(*depth.shape, 3).contiguous(), spec["fov_deg"])


@pytest.mark.parametrize("node_id,key", [("MoGe4DLoadSTraG", "file"), ("MoGe4DLoadMotionVAE", "vae"),
                                         ("MoGe4DLoadViSM", "file")])
def test_nano_is_listed_first_and_valid_without_model_files(env, node_id, key):
    node = env(node_id)
    options = next(i for i in node.define_schema().inputs if i.id == key).options
    assert options == [NANO]                          # the models folder is empty: only the built-in choice
    assert node.validate_inputs(**{key: NANO}) is True
    assert node.validate_inputs(**{key: "nano"}) is not True          # exact name only, nothing else maps there
    assert node.validate_inputs(**{key: "nano (built-in)/../strag.safetensors"}) is not True


def test_nano_loaders_load_the_shipped_files(loaded):
    from safetensors.torch import load_file

    from moge4d_core.loading.motion_vae import load_motion_vae
    from moge4d_core.loading.wan_dit import load_strag, load_vism_base

    strag, mvae, vism = loaded
    fp32 = dict(dtype=torch.float32, compute_dtype=torch.float32)
    for patcher, ref in ((strag, load_strag(str(NANO_DIR / "strag.safetensors"), keep_omnimae=False, **fp32)),
                         (vism, load_vism_base(str(NANO_DIR / NANO_FILES["vism"]), **fp32))):
        got = dict(patcher.model.inner.named_parameters())
        want = dict(ref.named_parameters())
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k].float(), want[k].float()) for k in want)
    assert not reads_text(strag.model.inner) and not reads_text(vism.model.inner)     # trained without text
    ref = load_motion_vae(str(NANO_DIR / "motion_vae.safetensors"))
    got = dict(mvae.model.inner.named_parameters())
    assert got.keys() and all(torch.equal(got[k].float(), v.float()) for k, v in ref.named_parameters())
    shipped = load_file(str(NANO_DIR / NANO_FILES["vism"]))     # the original Wan key names
    assert torch.equal(dict(vism.model.inner.named_parameters())["blocks.0.attn1.to_q.weight"].float(),
                       shipped["blocks.0.self_attn.q.weight"].float())


def test_trajectory_sampler_runs_the_nano_model_without_text(env, loaded):
    strag, mvae, _ = loaded
    geometry = _nano_geometry()
    args = dict(strag_model=strag, motion_vae=mvae, geometry=geometry, frames=5, steps=2, cfg=1.0, seed=3)
    motion, preview = env("MoGe4DTrajectorySampler").execute(**args).args
    assert motion.delta.shape == (5, 64, 96, 3) and bool(torch.isfinite(motion.delta).all())
    assert float(motion.delta[1:].abs().max()) > 0
    # unconnected = the all-zero context the nano model was trained with (the core's encode_prompts rule)
    zero = [[torch.zeros(1, 1, int(strag.model.inner.config.text_dim)), {"pooled_output": None}]]
    again, _ = env("MoGe4DTrajectorySampler").execute(**args, positive=zero, negative=zero).args
    assert torch.equal(motion.delta, again.delta)


def test_inpaint_runs_the_nano_model_without_text(env, loaded):
    from moge4d_core.loading.motion_vae import load_wan_vae

    _, _, vism = loaded
    render = torch.rand(5, 64, 96, 3, generator=torch.Generator().manual_seed(0))
    holes = torch.zeros(5, 64, 96)
    holes[:, 20:40, 30:60] = 1
    vae = ComfyLikeVAE(load_wan_vae(str(NANO_DIR / NANO_FILES["vae"])))
    (out,) = env("MoGe4DInpaint").execute(vism_model=vism, vae=vae, render=render, holes=holes, steps=2, cfg=1.0,
                                          seed=4).args
    assert out.shape == (5, 64, 96, 3) and bool(torch.isfinite(out).all())


def test_unconnected_text_is_refused_only_for_a_model_that_reads_text():
    """A model reads text unless its text embedder's input weights are all zero (what the trainers leave when
    training from scratch without a text encoder); such a model gets the zero context whatever is connected."""
    from moge4d_core.models.nano import TINY, build_strag

    text_context = pack_module("nodes.dit_runtime").text_context
    model = build_strag(TINY, seed=1)
    assert reads_text(model)
    with pytest.raises(MoGe4DInputError, match="positive: not connected.*umT5"):
        text_context(None, model, "positive")
    width = int(model.config.text_dim)
    prompt = [[torch.randn(1, 7, width), {"pooled_output": None}]]
    assert torch.equal(text_context(prompt, model, "positive").embeddings[0, :7], prompt[0][0][0])
    drop_text_input_(model)
    assert not reads_text(model)
    for cond in (None, prompt, [[torch.randn(1, 3, 4096), {}]]):          # even another model's width
        ctx = text_context(cond, model, "negative")
        assert ctx.embeddings.shape[-1] == width and float(ctx.embeddings.abs().max()) == 0


def test_a_model_without_text_input_gives_the_same_output_for_any_text():
    """Why the rule holds: with zero text-input weights, no context changes the DiT's prediction."""
    from moge4d_core.models.nano import TINY, build_vism

    x = torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    cond = torch.randn(1, 20, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([500.0])

    def outputs(model):
        with torch.no_grad():
            return [model(hidden_states=x, timestep=t, encoder_hidden_states=ctx, mask=cond[:, :4],
                          masked_video=cond[:, 4:], return_dict=False)[0]
                    for ctx in (torch.zeros(1, 1, TINY.text_dim), torch.randn(1, 9, TINY.text_dim) * 5)]

    model = build_vism(TINY, seed=2).eval()
    reading = outputs(model)
    assert not torch.allclose(reading[0], reading[1], atol=1e-4)          # a model that reads text
    blind = outputs(drop_text_input_(model))
    assert torch.allclose(blind[0], blind[1], atol=1e-6)
