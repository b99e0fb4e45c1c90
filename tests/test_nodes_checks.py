"""Cheap checks in the nodes' validate_inputs (before anything runs), through the stub of ComfyUI v0.21's
``execution.validate_inputs``: the camera JSON node's messages, widget values checked with the core's own rules,
linked inputs (None at validation) left to execute."""
import json

import pytest
import torch

from conftest import load_nodes
from moge4d_core.errors import MoGe4DInputError
from moge4d_core.geometry.camera_json import camera_path_to_json, camera_path_to_nerfstudio
from moge4d_core.geometry.camera_paths import make_camera_path


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
