"""Animated .glb of a 4D scene, read back with pygltflib and decoded here from the glTF spec (accessors, STEP
animation), independently of the writer."""
import math

import numpy as np
import pytest

pygltflib = pytest.importorskip("pygltflib")

from moge4d_core.demo_scene import make_demo_scene  # noqa: E402
from moge4d_core.errors import MoGe4DInputError  # noqa: E402
from moge4d_core.io.gltf import save_scene_glb  # noqa: E402

NANO_FRAMES = 17          # one window of the nano model


def _read(gltf, index):
    acc = gltf.accessors[index]
    view = gltf.bufferViews[acc.bufferView]
    width = {"SCALAR": 1, "VEC3": 3}[acc.type]
    assert acc.componentType == 5126                      # FLOAT
    blob = gltf.binary_blob()
    start = view.byteOffset + (acc.byteOffset or 0)
    return np.frombuffer(blob[start:start + acc.count * width * 4], dtype="<f4").reshape(acc.count, width)


def _stride(h, w, budget):
    return next(s for s in range(1, h * w + 1) if math.ceil(h / s) * math.ceil(w / s) <= budget)


def _to_srgb(c):
    c = np.asarray(c, dtype=np.float64)
    return np.where(c <= 0.0031308, 12.92 * c, 1.055 * np.power(np.clip(c, 0, None), 1 / 2.4) - 0.055)


@pytest.fixture(scope="module")
def scene():
    return make_demo_scene(height=96, width=128, num_frames=NANO_FRAMES)


@pytest.fixture(scope="module")
def glb(tmp_path_factory, scene):
    path = save_scene_glb(scene, tmp_path_factory.mktemp("glb") / "scene.glb", max_points=2000)
    return pygltflib.GLTF2().load(str(path))


def test_one_animation_stepping_through_t_frames(glb, scene):
    t_count = scene.num_frames
    assert len(glb.animations) == 1
    anim = glb.animations[0]
    inputs = {s.input for s in anim.samplers}
    assert len(inputs) == 1 and {s.interpolation for s in anim.samplers} == {"STEP"}
    times = _read(glb, inputs.pop())[:, 0]
    # T keyframes, one per frame at k / fps, plus the closing key at T / fps that holds the last frame
    np.testing.assert_allclose(times, np.arange(t_count + 1) / scene.fps, rtol=1e-6)
    frame_nodes = [glb.nodes[c.target.node] for c in anim.channels]
    assert len(frame_nodes) == t_count and {c.target.path for c in anim.channels} == {"scale"}
    scales = np.stack([_read(glb, s.output) for s in anim.samplers])           # (nodes, keys, 3)
    # STEP: between key k and k+1 the value of key k holds; exactly the node of frame k is on
    on = scales[:, :t_count, 0]
    np.testing.assert_array_equal(on, np.eye(t_count))
    np.testing.assert_array_equal(scales[:, t_count, 0], np.eye(t_count)[-1])
    assert [n.name for n in frame_nodes] == [f"frame_{k:04d}" for k in range(t_count)]
    # before playing, frame 0 is shown
    assert [n.scale for n in frame_nodes[:2]] == [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]


def test_points_colours_and_budget(glb, scene):
    h, w, budget = scene.height, scene.width, 2000
    s = _stride(h, w, budget)
    anim = glb.animations[0]
    flip = np.array([1.0, -1.0, -1.0])
    colors = None
    for k, channel in enumerate(anim.channels):
        node = glb.nodes[channel.target.node]
        prim = glb.meshes[node.mesh].primitives[0]
        assert prim.mode == 0                                                    # POINTS
        local = _read(glb, prim.attributes.POSITION).astype(np.float64)
        assert local.shape[0] <= budget
        world = local + np.array(node.translation)                              # scale 1 while frame k is on
        expected = scene.points[k].reshape(h, w, 3)[::s, ::s].reshape(-1, 3).double().numpy() * flip
        assert world.shape == expected.shape
        assert np.abs(world - expected).max() <= 1e-5
        acc = glb.accessors[prim.attributes.POSITION]
        np.testing.assert_allclose(acc.min, local.min(axis=0), rtol=0, atol=0)
        np.testing.assert_allclose(acc.max, local.max(axis=0), rtol=0, atol=0)
        colors = _read(glb, prim.attributes.COLOR_0)
    want = scene.colors.reshape(h, w, 3)[::s, ::s].reshape(-1, 3).double().numpy()
    np.testing.assert_allclose(_to_srgb(colors), want, atol=2e-6)


def test_budget_zero_keeps_every_point_and_bad_names_are_refused(tmp_path):
    small = make_demo_scene(height=8, width=12, num_frames=3)
    gltf = pygltflib.GLTF2().load(str(save_scene_glb(small, tmp_path / "all.glb", max_points=0)))
    counts = {gltf.accessors[m.primitives[0].attributes.POSITION].count for m in gltf.meshes}
    assert counts == {96} and len(gltf.meshes) == 3
    with pytest.raises(MoGe4DInputError, match=r"must end in \.glb"):
        save_scene_glb(small, tmp_path / "scene.gltf")
    with pytest.raises(MoGe4DInputError, match="max_points"):
        save_scene_glb(small, tmp_path / "neg.glb", max_points=-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.glb"]
