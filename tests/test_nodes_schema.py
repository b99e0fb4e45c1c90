"""Node schemas: stable ids, tooltips everywhere, documented socket types, V3-only registration."""
import asyncio
import importlib.util
import re
import sys

import pytest

from conftest import ROOT, load_nodes

DOCUMENTED_CUSTOM = {"MOGE4D_GEOMETRY", "MOGE4D_MOTION_FEATURES", "MOGE4D_MOTION", "MOGE4D_TRAJECTORIES",
                     "MOGE4D_CAMERA_PATH", "MOGE4D_STRAG_MODEL", "MOGE4D_MOTION_VAE", "MOGE4D_VISM_MODEL",
                     "MOGE4D_UNIDEPTH", "MOGE4D_OMNIMAE"}
NATIVE = {"IMAGE", "MASK", "INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", "LATENT", "CONDITIONING",
          "CLIP_VISION_OUTPUT", "SAMPLER", "SIGMAS", "VIDEO", "FILE_3D", "TRACKS", "LOAD3D_CAMERA", "MODEL", "VAE",
          "MOGE_GEOMETRY"}

# Node ids and widget order are a contract with saved workflows: only ever append.
STABLE_IDS = {
    "MoGe4DLoadTrajectories", "MoGe4DDemoScene", "MoGe4DSavePLYSequence", "MoGe4DSaveTrajectories",
    "MoGe4DToTracks", "MoGe4DCameraPath", "MoGe4DCameraPathFromJSON", "MoGe4DCameraFromLoad3D",
    "MoGe4DCameraToLoad3D", "MoGe4DRender",
    "MoGe4DLoadUniDepth", "MoGe4DDepth", "MoGe4DGeometryFromMoGe", "MoGe4DGeometryFromDepth", "MoGe4DLoadOmniMAE",
    "MoGe4DMotionFeatures",
    "MoGe4DLoadSTraG", "MoGe4DLoadMotionVAE", "MoGe4DTrajectorySampler", "MoGe4DDenormalize", "MoGe4DFlowScheduler",
    "MoGe4DLoadViSM", "MoGe4DInpaint", "MoGe4DInpaintConditioning", "MoGe4DKeepRendered", "MoGe4DApplyViSMLoRA",
    "MoGe4DSaveUSD", "MoGe4DSaveAnimatedGLB",
    "MoGe4DNanoDemoInput", "MoGe4DEmptyText",
}
WIDGET_PREFIX = {
    "MoGe4DCameraPath": ["preset", "frames", "width", "height", "fov", "magnitude", "easing", "params"],
    "MoGe4DRender": ["mode", "point_size", "gaussian_scale", "opacity"],
    "MoGe4DSavePLYSequence": ["filename_prefix", "format", "splat_scale", "axes"],
    "MoGe4DLoadTrajectories": ["file", "allow_unsafe_pickle"],
    "MoGe4DDemoScene": ["width", "height", "frames"],
    "MoGe4DLoadUniDepth": ["file", "precision"],
    "MoGe4DDepth": ["resolution_level", "fov_override", "width", "height", "intrinsics"],
    "MoGe4DGeometryFromMoGe": ["index", "metric", "width", "height"],
    "MoGe4DGeometryFromDepth": ["fov", "depth_kind", "near", "far", "width", "height"],
    "MoGe4DLoadOmniMAE": ["file", "precision"],
    "MoGe4DLoadSTraG": ["file", "base_control", "precision", "fp8_storage", "block_offload", "mpm", "memory",
                        "attention_backend", "compile"],
    "MoGe4DLoadMotionVAE": ["vae", "precision"],
    "MoGe4DTrajectorySampler": ["frames", "steps", "cfg", "shift", "seed", "solver", "normalization", "reference"],
    "MoGe4DDenormalize": ["fps"],
    "MoGe4DFlowScheduler": ["scheduler", "steps", "shift", "denoise"],
    "MoGe4DLoadViSM": ["file", "lora", "strength", "precision", "fp8_storage", "block_offload", "extra_lora",
                       "extra_strength", "memory", "attention_backend", "compile"],
    "MoGe4DInpaint": ["steps", "cfg", "shift", "seed", "solver", "cache", "keep_rendered"],
    "MoGe4DInpaintConditioning": ["zero_clip_vision"],
    "MoGe4DKeepRendered": ["width"],
    "MoGe4DApplyViSMLoRA": ["lora", "strength"],
    "MoGe4DSaveUSD": ["filename_prefix", "format", "max_points"],
    "MoGe4DSaveAnimatedGLB": ["filename_prefix", "max_points"],
    "MoGe4DNanoDemoInput": [],
    "MoGe4DEmptyText": [],
}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


@pytest.fixture()
def nodes(tmp_path):
    return load_nodes(tmp_path)


def _schemas(nodes):
    return {n.define_schema().node_id: n.define_schema() for n in nodes.NODE_LIST}


def test_node_ids_are_stable_and_prefixed(nodes):
    schemas = _schemas(nodes)
    assert STABLE_IDS <= set(schemas), STABLE_IDS - set(schemas)
    assert len(schemas) == len(nodes.NODE_LIST), "duplicate node ids"
    for nid, s in schemas.items():
        assert nid.startswith("MoGe4D"), nid
        assert s.display_name and s.display_name.startswith("MoGe4D "), nid
        assert s.category.startswith("MoGe4D/"), nid
        assert s.description, nid


def test_every_input_has_a_tooltip_and_a_known_type(nodes):
    for nid, s in _schemas(nodes).items():
        ids = [i.id for i in s.inputs]
        assert len(ids) == len(set(ids)), nid
        for inp in s.inputs:
            assert inp.tooltip, f"{nid}.{inp.id} has no tooltip"
            assert inp.io_type in DOCUMENTED_CUSTOM | NATIVE, f"{nid}.{inp.id}: {inp.io_type}"
        for out in s.outputs:
            assert out.io_type in DOCUMENTED_CUSTOM | NATIVE, f"{nid} output {out.io_type}"


def test_widget_order_is_the_saved_workflow_contract(nodes):
    schemas = _schemas(nodes)
    for nid, prefix in WIDGET_PREFIX.items():
        widgets = [i.id for i in schemas[nid].inputs if i.io_type in WIDGET_TYPES]
        assert widgets[:len(prefix)] == prefix, (nid, widgets)


def test_registration_is_v3_only():
    source = (ROOT / "__init__.py").read_text()
    assert "NODE_CLASS_MAPPINGS" not in re.sub(r'""".*?"""', "", source, flags=re.S)
    assert "async def comfy_entrypoint" in source


def test_comfy_entrypoint_returns_the_extension(tmp_path):
    load_nodes(tmp_path)  # stand-in on sys.path
    spec = importlib.util.spec_from_file_location("moge4d_pack_under_test", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = pack
    spec.loader.exec_module(pack)
    ext = asyncio.run(pack.comfy_entrypoint())
    node_list = asyncio.run(ext.get_node_list())
    assert {n.define_schema().node_id for n in node_list} >= STABLE_IDS


def test_core_never_imports_comfyui():
    for path in (ROOT / "moge4d_core").rglob("*.py"):
        text = path.read_text()
        for banned in ("import comfy", "from comfy", "import folder_paths", "from folder_paths",
                       "from nodes", "import nodes"):
            assert banned not in text, f"{path} contains '{banned}'"
        assert "torch.cuda" not in "\n".join(l for l in text.splitlines() if not l.startswith((" ", "\t"))), \
            f"{path} touches torch.cuda at import time"


def test_tests_import_the_pack_by_its_package_path(tmp_path):
    """ComfyUI has a top-level ``nodes`` module of its own; the pack's node layer is ``<pack>.nodes``."""
    pkg = load_nodes(tmp_path)
    assert pkg.__name__ == "moge4d_pack.nodes" and "nodes" not in sys.modules
    for path in (ROOT / "tests").glob("*.py"):
        for line in path.read_text().splitlines():
            assert not re.match(r"\s*(from nodes\b|import nodes\b)", line), f"{path.name}: {line.strip()}"
