"""File names from a prompt: every node input that takes a file name refuses crafted names (``..``, absolute paths,
links out of ``input/``, names that are not listed), both in ComfyUI's validation (through the stub of v0.21's
``execution.validate_inputs``) and in ``execute``; each problem is reported once, on the input it concerns."""
import os

import pytest

from conftest import load_nodes, pack_module
from moge4d_core.demo_scene import make_demo_scene
from moge4d_core.errors import MoGe4DInputError
from moge4d_core.io import save_trajectories_npz


def _by_id(nodes, node_id):
    return next(n for n in nodes.NODE_LIST if n.define_schema().node_id == node_id)


STRAG = "4D-STraG/diffusion_pytorch_model.safetensors"
CONTROL = "Wan2.1-Fun-V1.1-14B-Control/diffusion_pytorch_model.safetensors"
INP = "Wan2.1-Fun-V1.1-14B-InP/diffusion_pytorch_model.safetensors"
LORA = "4D-ViSM/lora_diffusion_pytorch_model.safetensors"
UNIDEPTH = "unidepth/model.safetensors"


@pytest.fixture()
def env(tmp_path):
    nodes = load_nodes(tmp_path)
    import folder_paths

    models = pack_module("nodes.models")

    folder_paths.models_dir = str(tmp_path / "models")
    for key in ("moge4d", "loras"):
        folder_paths.folder_names_and_paths.pop(key, None)
    models.register_model_folder()
    root = tmp_path / "models" / "moge4d"
    for rel in (STRAG, CONTROL, INP, LORA, UNIDEPTH, "VAE/vae/diffusion_pytorch_model.safetensors"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"not read: every test stops before loading")
    (root / "notes.txt").write_text("not a model file")
    loras = tmp_path / "models" / "loras"
    loras.mkdir()
    (loras / "style.safetensors").write_bytes(b"x")
    folder_paths.folder_names_and_paths["loras"] = ([str(loras)], {".safetensors"})
    # outside every ComfyUI folder: a valid scene, a "model", a release-layout VAE folder
    secret = tmp_path / "secret"
    (secret / "vae_outside" / "vae").mkdir(parents=True)
    (secret / "vae_outside" / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"x")
    save_trajectories_npz(make_demo_scene(height=8, width=8, num_frames=2), secret / "secret.npz")
    (secret / "secret.safetensors").write_bytes(b"x")
    save_trajectories_npz(make_demo_scene(height=8, width=8, num_frames=2), tmp_path / "input" / "scene.npz")
    os.symlink(secret / "secret.npz", tmp_path / "input" / "link.npz")
    yield nodes, tmp_path
    for key in ("moge4d", "loras"):
        folder_paths.folder_names_and_paths.pop(key, None)


def _prompt_inputs(node, **overrides):
    """A prompt's inputs for ``node``: widget defaults (first option of a combo), links for the rest."""
    values = {}
    for spec in node.define_schema().inputs:
        if spec.optional:
            continue
        if spec.io_type == "COMBO":
            values[spec.id] = spec.default if getattr(spec, "default", None) is not None else (spec.options or [""])[0]
        elif getattr(spec, "default", None) is not None:
            values[spec.id] = spec.default
        else:
            values[spec.id] = ["1", 0]
    values.update(overrides)
    return values


def _validate(node, **overrides):
    import execution

    return execution.validate_node_inputs(node, _prompt_inputs(node, **overrides))


def _crafted_model_names(tmp_path, listed):
    """Names that are not one of the listed model files: outside the folder, or aliases of a listed file."""
    root = tmp_path / "models" / "moge4d"
    head = listed.split("/")[0]
    return ["../secret/secret.safetensors", "../../secret/secret.safetensors", str(tmp_path / "secret" / "secret.safetensors"),
            str(root / listed), "/" + listed, f"{head}/../{listed}", "notes.txt"]


# node id, input, a listed good value, the other inputs execute needs to reach the file
MODEL_INPUTS = [
    ("MoGe4DLoadUniDepth", "file", UNIDEPTH, {}),
    ("MoGe4DLoadOmniMAE", "file", STRAG, {}),
    ("MoGe4DLoadSTraG", "file", STRAG, {}),
    ("MoGe4DLoadSTraG", "base_control", CONTROL, {"file": STRAG}),
    ("MoGe4DLoadViSM", "file", INP, {}),
    ("MoGe4DLoadViSM", "lora", LORA, {"file": INP}),
    ("MoGe4DLoadViSM", "extra_lora", LORA, {"file": INP}),
    ("MoGe4DApplyViSMLoRA", "lora", LORA, {"model": None}),
]
NAMED = {("MoGe4DLoadUniDepth", "file"), ("MoGe4DLoadOmniMAE", "file"), ("MoGe4DLoadSTraG", "file"),
         ("MoGe4DLoadViSM", "file"), ("MoGe4DApplyViSMLoRA", "lora"), ("MoGe4DLoadMotionVAE", "vae"),
         ("MoGe4DLoadTrajectories", "file")}


def test_every_file_input_is_covered(env):
    """Every combo whose options are files of input/ or of a model folder is in the crafted-name tests below."""
    nodes, _ = env
    files = {"scene.npz", "link.npz", STRAG, CONTROL, INP, LORA, UNIDEPTH, "VAE/", "loras/style.safetensors"}
    found = {(n.define_schema().node_id, i.id) for n in nodes.NODE_LIST for i in n.define_schema().inputs
             if i.io_type == "COMBO" and files & set(i.options)}
    covered = {(nid, key) for nid, key, _, _ in MODEL_INPUTS} | {("MoGe4DLoadMotionVAE", "vae"),
                                                               ("MoGe4DLoadTrajectories", "file")}
    assert found == covered


def test_trajectory_file_names_stay_inside_input(env):
    nodes, tmp_path = env
    node = _by_id(nodes, "MoGe4DLoadTrajectories")
    # the link out of input/ is not listed; the pack's example scene is, after the input folder's files
    assert node.define_schema().inputs[0].options == ["scene.npz", "[MoGe4D example] moge4d_example_scene.npz"]
    assert _validate(node, file="scene.npz") == []
    assert node.execute(file="scene.npz").args[2] == 2
    secret = tmp_path / "secret" / "secret.npz"
    for name in ("../secret/secret.npz", str(secret), "link.npz", "sub/../../secret/secret.npz",
                 "../secret/secret.npz [input]", str(secret) + " [output]", "scene.npz/../../secret/secret.npz"):
        errors = _validate(node, file=name)
        assert [e["extra_info"]["input_name"] for e in errors] == ["file"], name
        assert errors[0]["type"] == "custom_validation_failed"
        with pytest.raises(MoGe4DInputError, match="file: "):
            node.execute(file=name)
        assert node.fingerprint_inputs(file=name) != node.fingerprint_inputs(file=name)   # NaN: nothing was stat'ed
    assert "outside ComfyUI's folder" in _validate(node, file="link.npz")[0]["details"]


def test_pack_example_scene_needs_no_copy(env):
    """The pack's example scene loads from the pack folder by its listed name only; look-alikes are refused."""
    nodes, tmp_path = env
    node = _by_id(nodes, "MoGe4DLoadTrajectories")
    name = "[MoGe4D example] moge4d_example_scene.npz"
    assert not (tmp_path / "input" / "moge4d_example_scene.npz").exists()
    assert _validate(node, file=name) == []
    traj = node.execute(file=name).args[0]
    assert traj.num_frames > 1 and traj.points.shape[1] == traj.height * traj.width
    assert node.fingerprint_inputs(file=name) == node.fingerprint_inputs(file=name)
    for crafted in ("moge4d_example_scene.npz", "[MoGe4D example] ../example_assets/moge4d_example_scene.npz",
                    "[MoGe4D example] secret.npz", "[MoGe4D example] " + str(tmp_path / "secret" / "secret.npz")):
        errors = _validate(node, file=crafted)
        assert [e["extra_info"]["input_name"] for e in errors] == ["file"], crafted
        with pytest.raises(MoGe4DInputError, match="file: "):
            node.execute(file=crafted)


def test_annotated_names_stay_in_their_folder(env):
    nodes, tmp_path = env
    node = _by_id(nodes, "MoGe4DLoadTrajectories")
    save_trajectories_npz(make_demo_scene(height=8, width=8, num_frames=3), tmp_path / "output" / "saved.npz")
    assert _validate(node, file="saved.npz [output]") == []
    assert node.execute(file="saved.npz [output]").args[2] == 3
    assert _validate(node, file="scene.npz [input]") == []
    assert _validate(node, file="../input/scene.npz [output]") != []


@pytest.mark.parametrize("node_id,key,good,extra", MODEL_INPUTS)
def test_model_file_names_must_be_listed(env, node_id, key, good, extra):
    nodes, tmp_path = env
    node = _by_id(nodes, node_id)
    options = next(i for i in node.define_schema().inputs if i.id == key).options
    assert good in options
    assert _validate(node, **{**{k: v for k, v in extra.items() if v is not None}, key: good}) == []
    for name in _crafted_model_names(tmp_path, good):
        errors = _validate(node, **{**{k: v for k, v in extra.items() if v is not None}, key: name})
        assert [e["extra_info"]["input_name"] for e in errors] == [key], (name, errors)
        # inputs the node's validate_inputs names get its message; the others ComfyUI's own list check
        expected = "custom_validation_failed" if (node_id, key) in NAMED else "value_not_in_list"
        assert errors[0]["type"] == expected
        with pytest.raises(MoGe4DInputError, match=f"{key}: "):
            node.execute(**{**extra, key: name})


def test_motion_vae_folder_names_must_be_listed(env):
    nodes, tmp_path = env
    node = _by_id(nodes, "MoGe4DLoadMotionVAE")
    assert "VAE/" in node.define_schema().inputs[0].options
    assert _validate(node, vae="VAE/") == []
    outside = tmp_path / "secret" / "vae_outside"
    for name in ("../../secret/vae_outside/", str(outside) + "/", "VAE/../VAE/", "/VAE/", "vae/"):
        errors = _validate(node, vae=name)
        assert [e["extra_info"]["input_name"] for e in errors] == ["vae"], name
        with pytest.raises(MoGe4DInputError, match="vae: "):
            node.execute(vae=name)


def test_loras_folder_names_resolve_in_the_loras_folder(env):
    nodes, tmp_path = env
    node = _by_id(nodes, "MoGe4DApplyViSMLoRA")
    assert "loras/style.safetensors" in next(i for i in node.define_schema().inputs if i.id == "lora").options
    assert node.validate_inputs(lora="loras/style.safetensors") is True
    assert node.validate_inputs(lora="loras/../../secret/secret.safetensors") is not True
    assert node.validate_inputs(lora="loras//style.safetensors") is not True


def test_links_in_a_model_folder_are_followed_as_comfyui_does(env):
    """A model folder is the administrator's configuration (e.g. a symlinked model drive): a listed link is used."""
    nodes, tmp_path = env
    root = tmp_path / "models" / "moge4d"
    os.symlink(tmp_path / "secret" / "secret.safetensors", root / "unidepth" / "linked.safetensors")
    node = _by_id(nodes, "MoGe4DLoadUniDepth")
    assert "unidepth/linked.safetensors" in node.define_schema().inputs[0].options
    assert node.validate_inputs(file="unidepth/linked.safetensors") is True


@pytest.mark.parametrize("node_id,key,name,source", [
    ("MoGe4DLoadUniDepth", "file", UNIDEPTH, "https://huggingface.co/lpiccinelli/unidepth-v2-vitl14"),
    ("MoGe4DLoadOmniMAE", "file", STRAG, "https://huggingface.co/Yanran21/MoGe4D"),
    ("MoGe4DLoadSTraG", "file", STRAG, "https://huggingface.co/Yanran21/MoGe4D"),
    ("MoGe4DLoadMotionVAE", "vae", "VAE/", "https://huggingface.co/Yanran21/MoGe4D"),
    ("MoGe4DLoadViSM", "file", INP, "https://huggingface.co/alibaba-pai/Wan2.1-Fun-V1.1-14B-InP"),
    ("MoGe4DApplyViSMLoRA", "lora", LORA, "https://huggingface.co/Yanran21/MoGe4D"),
])
def test_a_missing_model_file_is_reported_once_with_its_full_path(env, node_id, key, name, source):
    """A workflow saved with the release's file names, opened where the files are missing."""
    import shutil

    nodes, tmp_path = env
    root = tmp_path / "models" / "moge4d"
    shutil.rmtree(root)
    root.mkdir()
    node = _by_id(nodes, node_id)
    errors = _validate(node, **{key: name})
    assert [(e["type"], e["extra_info"]["input_name"]) for e in errors] == [("custom_validation_failed", key)]
    expected = os.path.join(str(root), *name.rstrip("/").split("/"))
    assert expected in errors[0]["details"] and source in errors[0]["details"]
    assert errors[0]["details"].startswith(f"{key} - {key}: ")
