"""Shipped workflows only use nodes and widgets that exist, with links whose types match.

Our nodes are checked against their live schemas (via the ComfyUI stand-in); the core nodes the
workflows use are listed here with their ComfyUI v0.21.0 inputs and outputs (from its /object_info).
"""
import json
from pathlib import Path

import pytest

from conftest import ROOT, load_nodes

WORKFLOWS = ROOT / "workflows"
API = WORKFLOWS / "api"   # API-format twins, kept out of the template browser (ComfyUI lists workflows/*.json only)
ANY_3D = {"STRING", "FILE_3D", "FILE_3D_GLB", "FILE_3D_GLTF", "FILE_3D_FBX", "FILE_3D_OBJ", "FILE_3D_STL", "FILE_3D_USDZ"}

# class_type -> (inputs {name: set of accepted types}, widget names in order, output types)
CORE_NODES = {
    "CreateVideo": ({"images": {"IMAGE"}, "fps": {"FLOAT"}, "audio": {"AUDIO"}}, ["fps"], ["VIDEO"]),
    "SaveVideo": ({"video": {"VIDEO"}, "filename_prefix": {"STRING"}, "format": {"COMBO"}, "codec": {"COMBO"}},
                  ["filename_prefix", "format", "codec"], []),
    "MaskToImage": ({"mask": {"MASK"}}, [], ["IMAGE"]),
    "PreviewImage": ({"images": {"IMAGE"}}, [], []),
    # "image": the frontend's viewer widget (PREVIEW_3D), sent as "" by the Run button's graphToPrompt
    "Preview3D": ({"model_file": ANY_3D, "camera_info": {"LOAD3D_CAMERA"}, "bg_image": {"IMAGE"}, "image": {"STRING"}},
                  ["model_file"], []),
    "LoadImage": ({"image": {"COMBO"}}, ["image"], ["IMAGE", "MASK"]),
    "CLIPLoader": ({"clip_name": {"COMBO"}, "type": {"COMBO"}, "device": {"COMBO"}}, ["clip_name", "type", "device"],
                   ["CLIP"]),
    "CLIPTextEncode": ({"text": {"STRING"}, "clip": {"CLIP"}}, ["text"], ["CONDITIONING"]),
    "CLIPVisionLoader": ({"clip_name": {"COMBO"}}, ["clip_name"], ["CLIP_VISION"]),
    "CLIPVisionEncode": ({"clip_vision": {"CLIP_VISION"}, "image": {"IMAGE"}, "crop": {"COMBO"}}, ["crop"],
                         ["CLIP_VISION_OUTPUT"]),
    "EmptyImage": ({"width": {"INT"}, "height": {"INT"}, "batch_size": {"INT"}, "color": {"INT"}},
                   ["width", "height", "batch_size", "color"], ["IMAGE"]),
    "VAELoader": ({"vae_name": {"COMBO"}}, ["vae_name"], ["VAE"]),
    "UNETLoader": ({"unet_name": {"COMBO"}, "weight_dtype": {"COMBO"}}, ["unet_name", "weight_dtype"], ["MODEL"]),
    "ModelSamplingSD3": ({"model": {"MODEL"}, "shift": {"FLOAT"}}, ["shift"], ["MODEL"]),
    "KSampler": ({"model": {"MODEL"}, "seed": {"INT"}, "steps": {"INT"}, "cfg": {"FLOAT"}, "sampler_name": {"COMBO"},
                  "scheduler": {"COMBO"}, "positive": {"CONDITIONING"}, "negative": {"CONDITIONING"},
                  "latent_image": {"LATENT"}, "denoise": {"FLOAT"}},
                 ["seed", "steps", "cfg", "sampler_name", "scheduler", "denoise"], ["LATENT"]),
    "VAEDecode": ({"samples": {"LATENT"}, "vae": {"VAE"}}, [], ["IMAGE"]),
    "KSamplerSelect": ({"sampler_name": {"COMBO"}}, ["sampler_name"], ["SAMPLER"]),
}
# widgets followed in the UI format by a frontend-only value: the seed's "control after generate" mode and
# LoadImage's upload button (neither is sent in the API format)
UI_ONLY_AFTER = {"KSampler": {"seed": "control"}, "LoadImage": {"image": "upload"}}
CONTROL_MODES = {"fixed", "increment", "decrement", "randomize"}
WIDGETS = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FILE_COMBOS = {"file", "vae", "lora", "base_control"}   # lists of the user's files: any value may be valid


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    nodes = load_nodes(tmp_path_factory.mktemp("wf"))
    out = dict(CORE_NODES)
    for node in nodes.NODE_LIST:
        s = node.define_schema()
        inputs = {i.id: {i.io_type} for i in s.inputs}
        widgets = [i.id for i in s.inputs if i.io_type in WIDGETS]
        out[s.node_id] = (inputs, widgets, [o.io_type for o in s.outputs])
        controlled = {i.id: "control" for i in s.inputs if getattr(i, "control_after_generate", None)}
        if controlled:
            UI_ONLY_AFTER[s.node_id] = controlled
    return out, {n.define_schema().node_id: n.define_schema() for n in nodes.NODE_LIST}


def _api_files():
    return sorted(API.glob("*_api.json"))


def test_every_workflow_has_both_formats():
    api = {p.name[:-len("_api.json")] for p in _api_files()}
    ui = {p.stem for p in WORKFLOWS.glob("*.json")}
    assert api and api == ui
    assert not list(WORKFLOWS.glob("*_api.json")), "API twins belong in workflows/api/, not in the template browser"


@pytest.mark.parametrize("path", _api_files(), ids=lambda p: p.name)
def test_api_workflow_nodes_widgets_and_links(path, specs):
    spec, schemas = specs
    graph = json.loads(path.read_text())
    for nid, node in graph.items():
        ct = node["class_type"]
        assert ct in spec, f"{path.name}: node {nid} uses unknown type {ct}"
        inputs, _, _ = spec[ct]
        for name, value in node["inputs"].items():
            assert name in inputs, f"{path.name}: {ct} has no input {name!r}"
            if isinstance(value, list):
                src, idx = value
                src_outputs = spec[graph[src]["class_type"]][2]
                assert idx < len(src_outputs), f"{path.name}: {ct}.{name} links to a missing output"
                assert src_outputs[idx] in inputs[name], \
                    f"{path.name}: {ct}.{name} expects {inputs[name]}, linked to {src_outputs[idx]}"
        if ct in schemas:
            for inp in schemas[ct].inputs:
                if not inp.optional:
                    assert inp.id in node["inputs"], f"{path.name}: {ct} misses required input {inp.id}"
                value = node["inputs"].get(inp.id)
                if inp.io_type == "COMBO" and not isinstance(value, list) and inp.id not in FILE_COMBOS:
                    assert value in inp.options, f"{path.name}: {ct}.{inp.id}={value!r} not in {inp.options}"
                if inp.io_type in ("INT", "FLOAT") and value is not None and not isinstance(value, list):
                    assert inp.min <= value <= inp.max, f"{path.name}: {ct}.{inp.id}={value} out of range"


@pytest.mark.parametrize("path", _api_files(), ids=lambda p: p.name)
def test_ui_twin_matches_api(path, specs):
    spec, _ = specs
    api = json.loads(path.read_text())
    ui = json.loads((WORKFLOWS / (path.name[:-len("_api.json")] + ".json")).read_text())
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert sorted(n["type"] for n in nodes.values()) == sorted(n["class_type"] for n in api.values())
    for link_id, src, src_slot, dst, dst_slot, typ in ui["links"]:
        src_type = nodes[src]["type"]
        assert spec[src_type][2][src_slot] == typ, f"link {link_id}: {src_type} output {src_slot} is not {typ}"
        dst_inputs = spec[nodes[dst]["type"]][0]
        name = nodes[dst]["inputs"][dst_slot]["name"]
        assert typ in dst_inputs[name], f"link {link_id}: {nodes[dst]['type']}.{name} does not take {typ}"
    for node in nodes.values():
        _, widgets, _ = spec[node["type"]]
        values = node.get("widgets_values", [])
        # Preview3D's file widget becomes a socket when linked; others keep every widget value in order
        if node["type"] in {"Preview3D", "PreviewImage", "MaskToImage"}:
            continue
        extra = UI_ONLY_AFTER.get(node["type"], {})
        names = []
        for w in widgets:
            names.append(w)
            if w in extra:
                names.append(f"<{extra[w]}>")
        assert len(values) == len(names), f"{node['type']}: {len(values)} widget values for {names}"
        api_node = next(n for n in api.values() if n["class_type"] == node["type"]
                        and n["_meta"]["title"] == node.get("title", n["_meta"]["title"]))
        for name, value in zip(names, values):
            if name == "<control>":
                assert value == "fixed", f"{node['type']}: shipped seeds are fixed (reproducible), got {value!r}"
            elif not name.startswith("<"):
                assert api_node["inputs"][name] == value, f"{node['type']}.{name}: UI {value!r} vs API"


TITLE_H = 30           # LiteGraph draws a node's title bar this far above its pos
SIDEBAR_PX = 350       # the frontend's sidebar (node library / queue / templates) open at its default width


@pytest.mark.parametrize("path", sorted(WORKFLOWS.glob("*.json")), ids=lambda p: p.name)
def test_template_opens_legible_with_a_thumbnail(path):
    """Each template opens at a zoom where titles are drawn (LiteGraph: screen = (pos + offset) * scale), its
    leftmost node right of the sidebar and its top row below the menu; a JPEG thumbnail of the same name sits beside
    it (ComfyUI serves workflows/<name>.jpg as the template's picture)."""
    from PIL import Image

    ui = json.loads(path.read_text())
    ds = ui["extra"]["ds"]
    scale, (ox, oy) = ds["scale"], ds["offset"]
    assert 0.8 <= scale <= 1.0, f"{path.name}: zoom {scale}"
    left = (min(n["pos"][0] for n in ui["nodes"]) + ox) * scale
    top = (min(n["pos"][1] for n in ui["nodes"]) - TITLE_H + oy) * scale
    assert SIDEBAR_PX <= left <= 2 * SIDEBAR_PX, f"{path.name}: leftmost node at {left:.0f} px"
    assert 40 <= top <= 250, f"{path.name}: top row at {top:.0f} px"
    thumb = path.with_suffix(".jpg")
    assert thumb.is_file(), f"{path.name}: no thumbnail {thumb.name}"
    with Image.open(thumb) as im:
        assert im.format == "JPEG" and im.width >= 128 and im.height >= 64
        low, high = im.convert("L").getextrema()
        assert high - low > 20, f"{thumb.name} is blank"
