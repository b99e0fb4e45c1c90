"""Cheap checks in the nodes' validate_inputs (before anything runs), through the stub of ComfyUI v0.21's
``execution.validate_inputs``: the camera JSON node's messages, widget values checked with the core's own rules,
linked inputs (None at validation) left to execute."""
import json

import pytest
import torch

from conftest import load_nodes
from moge4d_core.errors import MoGe4DInputError
from moge4d_core.io.camera_json import camera_path_to_json, camera_path_to_nerfstudio
from moge4d_core.camera.paths import make_camera_path


@pytest.fixture()
def nodes(tmp_path):
    return load_nodes(tmp_path)


def _by_id(nodes, node_id):
    return next(n for n in nodes.NODE_LIST if n.define_schema().node_id == node_id)


def _validate(node, **inputs):
    import execution

    return execution.validate_node_inputs(node, inputs)


def _one_error(errors, key):
    assert [e["extra_info"]["input_name"] for e in errors] == [key], errors
    return errors[0]["details"]


# ------------------------------------------------------------------------------------------------ camera JSON
def test_camera_json_syntax_error_names_the_input_the_position_and_the_format(nodes):
    node = _by_id(nodes, "MoGe4DCameraPathFromJSON")
    text = '{\n  "format": "moge4d_camera_path",\n  "version": 1\n  "width": 8\n}'
    details = _one_error(_validate(node, json_text=text), "json_text")
    assert details.startswith("json_text - json_text: not valid JSON")
    assert "line 4, column 3" in details
    assert '"format": "moge4d_camera_path"' in details and "camera_path.json" in details
    assert "params" not in details and "preset" not in details
    with pytest.raises(MoGe4DInputError, match=r"^json_text: not valid JSON: Expecting ',' delimiter at line 4"):
        node.execute(json_text=text)


@pytest.mark.parametrize("obj,missing", [
    ({"format": "moge4d_camera_path", "version": 1, "width": 8, "height": 8}, "'frames'"),
    ({"version": 1, "width": 8, "height": 8, "frames": []}, "'format'"),
    ({"render_width": 8, "camera_path": []}, "'render_height'"),
])
def test_camera_json_missing_field_is_named(nodes, obj, missing):
    node = _by_id(nodes, "MoGe4DCameraPathFromJSON")
    details = _one_error(_validate(node, json_text=json.dumps(obj)), "json_text")
    assert f"missing key {missing}" in details and "expected MoGe4D's format" in details
    with pytest.raises(MoGe4DInputError, match=f"^json_text: .*missing key {missing}"):
        node.execute(json_text=json.dumps(obj))


def test_camera_json_other_shapes_and_empty_text(nodes):
    node = _by_id(nodes, "MoGe4DCameraPathFromJSON")
    assert "not an object" in _one_error(_validate(node, json_text="[1, 2]"), "json_text")
    assert "empty" in _one_error(_validate(node, json_text="  "), "json_text")
    assert _validate(node, json_text=["5", 0]) == []                     # linked: None at validation


def test_camera_json_valid_texts_pass_and_load(nodes):
    node = _by_id(nodes, "MoGe4DCameraPathFromJSON")
    path = make_camera_path("orbit_left", 3, 32, 24, points0=torch.rand(10, 3) + 1)
    for obj in (camera_path_to_json(path), camera_path_to_nerfstudio(path)):
        text = json.dumps(obj, indent=2)
        assert _validate(node, json_text=text) == []
        out, _ = node.execute(json_text=text).args
        assert out.num_frames == 3 and (out.width, out.height) == (32, 24)


# ------------------------------------------------------------------------------------------------ widgets
def _custom(errors):
    return {e["extra_info"]["input_name"]: e["details"] for e in errors if e["type"] == "custom_validation_failed"}


CAMERA = dict(preset="orbit_left", frames=0, width=0, height=0, fov=0.0, magnitude=0.0, easing="ease_in_out",
              params="")


def test_camera_preset_and_params_are_checked_with_the_core_rules(nodes):
    node = _by_id(nodes, "MoGe4DCameraPath")
    assert _validate(node, **CAMERA) == []
    assert _validate(node, **{**CAMERA, "params": '{"angle_deg": 45}'}) == []
    bad = {
        "orbit_lft": "unknown camera preset 'orbit_lft'",
        '{"angel_deg": 45}': "unknown parameter(s) angel_deg",
        '{"angle_deg": 45': "params: not valid JSON",
        '{"angle_deg": "far"}': "parameter 'angle_deg' must be a number",
    }
    for value, message in bad.items():
        key = "preset" if value == "orbit_lft" else "params"
        errors = _custom(_validate(node, **{**CAMERA, key: value}))
        assert set(errors) == {"preset", "params"}, errors         # the two inputs the check reads
        assert all(message in d for d in errors.values()), errors
    # linked params: nothing to check yet; the other widgets keep ComfyUI's own range checks
    assert _validate(node, **{**CAMERA, "params": ["7", 0]}) == []
    errors = _validate(node, **{**CAMERA, "frames": -1})
    assert [(e["type"], e["extra_info"]["input_name"]) for e in errors] == [("value_smaller_than_min", "frames")]


SAMPLER = dict(strag_model=["1", 0], motion_vae=["2", 0], geometry=["3", 0], positive=["4", 0], negative=["5", 0],
               frames=49, steps=50, cfg=6.0, shift=5.0, seed=0, solver="euler", normalization="official",
               reference=True)


def test_sampler_frames_must_be_4k_plus_1(nodes):
    node = _by_id(nodes, "MoGe4DTrajectorySampler")
    assert _validate(node, **SAMPLER) == []
    assert "4k+1" in _one_error(_validate(node, **{**SAMPLER, "frames": 20}), "frames")
    assert "minimum 5" in _one_error(_validate(node, **{**SAMPLER, "frames": 1}), "frames")
    assert _validate(node, **{**SAMPLER, "frames": ["9", 2]}) == []                  # linked
    errors = _validate(node, **{**SAMPLER, "steps": 0, "solver": "eulr"})          # ComfyUI's own checks remain
    assert [(e["type"], e["extra_info"]["input_name"]) for e in errors] == [
        ("value_smaller_than_min", "steps"), ("value_not_in_list", "solver")]


@pytest.mark.parametrize("node_id,links", [
    ("MoGe4DDepth", dict(unidepth=["1", 0], image=["2", 0], resolution_level=-1, fov_override=0.0,
                         intrinsics="predicted")),
    ("MoGe4DGeometryFromMoGe", dict(moge_geometry=["1", 0], index=0, metric=True)),
    ("MoGe4DGeometryFromDepth", dict(image=["1", 0], depth=["2", 0], fov=60.0, depth_kind="relative_inverse",
                                     near=1.0, far=10.0)),
])
def test_working_size_must_be_multiples_of_16(nodes, node_id, links):
    node = _by_id(nodes, node_id)
    for ok in ((512, 368), (0, 0), (["9", 0], 368)):
        assert _validate(node, **links, width=ok[0], height=ok[1]) == [], ok
    for bad in ((500, 368), (512, 0), (20, 20)):
        errors = _custom(_validate(node, **links, width=bad[0], height=bad[1]))
        assert set(errors) == {"width", "height"} and all("multiples of 16" in d for d in errors.values())
    assert "maximum 4096" in _custom(_validate(node, **links, width=4112, height=368))["width"]


@pytest.mark.parametrize("node_id,extra", [("MoGe4DSavePLYSequence", dict(format="points", splat_scale=0.01,
                                                                          axes="opengl")),
                                           ("MoGe4DSaveTrajectories", {})])
def test_save_prefix_must_stay_in_output(nodes, tmp_path, node_id, extra):
    node = _by_id(nodes, node_id)
    assert _validate(node, trajectories=["1", 0], filename_prefix="moge4d/scene", **extra) == []
    for prefix in ("../escape/scene", str(tmp_path / "elsewhere" / "scene"), "a/../../b/scene"):
        details = _one_error(_validate(node, trajectories=["1", 0], filename_prefix=prefix, **extra),
                             "filename_prefix")
        assert "outside ComfyUI's output folder" in details
    assert not (tmp_path / "escape").exists() and not (tmp_path / "b").exists()
