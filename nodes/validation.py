"""Checks shared by the nodes' ``validate_inputs`` and ``execute``: file names from a prompt, widget values.

File names (a prompt posted to ``/prompt`` can carry any string, not only the listed ones):

* input files (:func:`resolve_input_file`): the name is resolved with ``folder_paths.get_annotated_filepath``
  (``"scene.npz"``, ``"scene.npz [input]"``, ``"x.npz [output]"``, ``"x.npz [temp]"``) and must be a plain relative
  name (no absolute path, no ``..``) of a file whose real path (symlinks followed) lies inside that ComfyUI folder.
  :func:`list_input_files` lists exactly the input-folder files that pass, so "listed" and "accepted" agree.
* model files (:func:`resolve_model_file`): the name must be one of the files ComfyUI lists for the folder
  (``folder_paths.get_filename_list``) and is resolved with ``folder_paths.get_full_path``. A model folder is the
  administrator's configuration (``extra_model_paths.yaml``, symlinked model drives), so links inside it are
  followed as ComfyUI itself does.

Anything else is refused with a message that names the input; a missing model file's message gives the full path
where it belongs and where to download it.

Validation semantics (ComfyUI v0.21 ``execution.validate_inputs``): only the inputs named in a node's
``validate_inputs`` signature are passed to it, each of them gets its own copy of a returned error, and ComfyUI
skips its own range / list checks for exactly those inputs. So each ``validate_inputs`` names only what it checks,
and :func:`widget_problem` re-applies ComfyUI's own range / list checks to the named inputs. Inputs fed by a link
arrive as ``None`` and are skipped (``execute`` checks them again).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence

import folder_paths

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.camera.presets import resolve_params
from moge4d_core.camera.paths import CAMERA_PRESETS
from moge4d_core.camera.scene import parse_params
from moge4d_core.geometry.sources import check_working_size
from moge4d_core.pipeline.conditioning import check_frames

MODEL_FOLDER = "moge4d"


# ------------------------------------------------------------------------------------------------ results
def result(*problems: Optional[str]):
    """``validate_inputs`` return value: True, or the problems (None = fine) joined into one message."""
    found = [p for p in problems if p]
    return True if not found else "; ".join(found)


def problem_of(check: Callable[[], Any]) -> Optional[str]:
    """Run ``check``; the message of the :class:`MoGe4DInputError` it raises, or None."""
    try:
        check()
    except MoGe4DInputError as exc:
        return str(exc)
    return None


# ------------------------------------------------------------------------------------------------ names
def _unsafe_name(rel: str) -> bool:
    """True for a name that could leave its folder: absolute, drive-qualified, ``..`` or NUL."""
    if not rel or "\x00" in rel or os.path.isabs(rel) or rel.startswith(("/", "\\")):
        return True
    if os.path.splitdrive(rel)[0]:
        return True
    return any(part == ".." for part in rel.replace("\\", "/").split("/"))


def _inside(path: str, root: str) -> bool:
    """True when ``path`` (symlinks followed) lies strictly inside ``root`` (symlinks followed)."""
    real, base = os.path.realpath(path), os.path.realpath(root)
    try:
        return real != base and os.path.commonpath([real, base]) == base
    except ValueError:  # different drives
        return False


# ------------------------------------------------------------------------------------------------ input files
def list_input_files(extensions: Sequence[str]) -> list[str]:
    """Files under ComfyUI's input folder (recursive, relative, ``/``-separated, sorted) with one of ``extensions``
    whose real path stays inside the folder: exactly the names :func:`resolve_input_file` accepts."""
    root = folder_paths.get_input_directory()
    if not root or not os.path.isdir(root):
        return []
    exts = {e.lower() for e in extensions}
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != ".git")
        for f in filenames:
            full = os.path.join(dirpath, f)
            if os.path.splitext(f)[1].lower() in exts and os.path.isfile(full) and _inside(full, root):
                found.append(os.path.relpath(full, root).replace(os.sep, "/"))
    return sorted(found)


def input_file_problem(name: Any, extensions: Sequence[str], input_name: str = "file") -> Optional[str]:
    """None when :func:`resolve_input_file` accepts ``name``, else the message it would raise."""
    return problem_of(lambda: resolve_input_file(name, extensions, input_name))


def resolve_input_file(name: Any, extensions: Sequence[str], input_name: str = "file") -> str:
    """Real path of a file picked from ComfyUI's input folder (or ``[output]`` / ``[temp]`` by annotation).

    Args:
        name: the prompt's value, e.g. ``"scene.npz"``, ``"sub/scene.npz"``, ``"scene_00001.npz [output]"``.
        extensions: accepted suffixes, lower case with the dot.
        input_name: the node input, for messages.

    Returns:
        The absolute real path (symlinks resolved) of the file.

    Raises:
        MoGe4DInputError: not a plain relative name, not a file, a link leading out of the folder, wrong suffix.
    """
    listed = ", ".join(extensions)
    if not isinstance(name, str) or not name.strip():
        raise MoGe4DInputError(f"{input_name}: no file chosen; put a {listed} file into ComfyUI's input folder "
                               f"({folder_paths.get_input_directory()}), refresh (R) and pick it")
    rel, base = folder_paths.annotated_filepath(name)
    base = base or folder_paths.get_input_directory()
    if _unsafe_name(rel):
        raise MoGe4DInputError(f"{input_name}: {name!r} is not a file of ComfyUI's input folder; names are relative "
                               f"to {base} without '..' or an absolute path: pick one of the listed files")
    path = folder_paths.get_annotated_filepath(name)
    if not os.path.isfile(path):
        raise MoGe4DInputError(f"{input_name}: {name!r} not found: no file {path}; put the file there (or upload "
                               f"it), refresh (R) and pick it from the list")
    if not _inside(path, base):
        raise MoGe4DInputError(f"{input_name}: {name!r} is a link to {os.path.realpath(path)}, outside ComfyUI's "
                               f"folder {base}; nodes read only files inside it: copy the file there instead")
    if os.path.splitext(rel)[1].lower() not in {e.lower() for e in extensions}:
        raise MoGe4DInputError(f"{input_name}: {name!r} is not a {listed} file")
    return os.path.realpath(path)


# ------------------------------------------------------------------------------------------------ model files
@dataclass(frozen=True)
class ModelFile:
    """What a model input expects, for messages.

    Args:
        input_name: the node input (``"file"``, ``"lora"`` ...).
        what: the model in words (``"UniDepth weights"``).
        example: where the release file goes under the folder (``"unidepth/model.safetensors"``).
        source: where to download it.
    """

    input_name: str
    what: str
    example: str
    source: str


HF_MOGE4D = "https://huggingface.co/Yanran21/MoGe4D"
UNIDEPTH = ModelFile("file", "UniDepthV2 weights", "unidepth/model.safetensors",
                     "https://huggingface.co/lpiccinelli/unidepth-v2-vitl14 (model.safetensors; ViT-S/B: "
                     "lpiccinelli/unidepth-v2-vits14 / -vitb14)")
OMNIMAE = ModelFile("file", "OmniMAE weights (or a 4D-STraG file with its trained extractor)",
                    "4D-STraG/diffusion_pytorch_model.safetensors", f"{HF_MOGE4D} (4D-STraG/)")
STRAG = ModelFile("file", "4D-STraG weights", "4D-STraG/diffusion_pytorch_model.safetensors",
                  f"{HF_MOGE4D} (4D-STraG/)")
STRAG_BASE = ModelFile("base_control", "Wan2.1-Fun-V1.1-14B-Control weights",
                       "Wan2.1-Fun-V1.1-14B-Control/diffusion_pytorch_model.safetensors",
                       "https://huggingface.co/alibaba-pai/Wan2.1-Fun-V1.1-14B-Control")
MOTION_VAE = ModelFile("vae", "motion VAE (the release's VAE/ folder: encoder_prompt/, decoder_prompt/, vae/)",
                       "VAE/", f"{HF_MOGE4D} (VAE/)")
VISM_BASE = ModelFile("file", "Wan2.1-Fun-V1.1-14B-InP weights",
                      "Wan2.1-Fun-V1.1-14B-InP/diffusion_pytorch_model.safetensors",
                      "https://huggingface.co/alibaba-pai/Wan2.1-Fun-V1.1-14B-InP")
VISM_LORA = ModelFile("lora", "4D-ViSM LoRA", "4D-ViSM/lora_diffusion_pytorch_model.safetensors",
                      f"{HF_MOGE4D} (4D-ViSM/)")


def model_folders(folder: str = MODEL_FOLDER) -> list[str]:
    """The folders ComfyUI searches for ``folder`` (``folder_paths.get_folder_paths``); [] when unregistered."""
    try:
        return folder_paths.get_folder_paths(folder)
    except KeyError:
        return []


def model_file_problem(name: Any, spec: ModelFile, choices: Iterable[str], folder: str = MODEL_FOLDER,
                       display: Optional[str] = None) -> Optional[str]:
    """None when ``name`` is one of ``choices`` (the listed files) and exists, else a message naming the input,
    the full expected path and the download source.

    Args:
        name: the prompt's value.
        spec: what the input expects.
        choices: the names the node lists (its combo options).
        folder: the ``folder_paths`` folder the name is relative to.
        display: the name relative to ``folder`` when it differs from ``name`` (``"loras/x"`` -> ``"x"``).
    """
    where = f"ComfyUI's '{folder}' model folder"
    if not isinstance(name, str) or not name.strip():
        return f"{spec.input_name}: no {spec.what} chosen; {_put_it(spec.example, spec, folder)}"
    rel = name if display is None else display
    listed = name in set(choices)
    exists = _exists(folder, rel) if not _unsafe_name(rel) else False
    if listed and exists:
        return None
    if _unsafe_name(rel):
        return (f"{spec.input_name}: {name!r} is not a file of {where}; names are relative to the folder, without "
                f"'..' or an absolute path: pick one of the listed files")
    if listed:  # listed (e.g. a dangling link) but not readable
        return f"{spec.input_name}: {name!r} is listed in {where} but cannot be opened; {_put_it(rel, spec, folder)}"
    if exists:  # a file of the folder this input does not offer (other extension, ...)
        return (f"{spec.input_name}: {name!r} is not one of the files this input lists (model files with one of "
                f"the folder's extensions); pick one from the list")
    return f"{spec.input_name}: {spec.what} {name!r} not found; {_put_it(rel, spec, folder)}"


def _exists(folder: str, rel: str) -> bool:
    if rel.endswith("/"):
        return any(os.path.isdir(os.path.join(root, rel.rstrip("/"))) for root in model_folders(folder))
    return folder_paths.get_full_path(folder, rel) is not None


def _put_it(rel: str, spec: ModelFile, folder: str) -> str:
    roots = model_folders(folder)
    if not roots:
        return (f"the '{folder}' model folder is not registered in ComfyUI; restart ComfyUI with this pack "
                f"installed (download: {spec.source})")
    target = os.path.join(roots[0], *rel.rstrip("/").split("/"))
    if rel.endswith("/"):
        target += os.sep
    others = f" (or the same place under {', '.join(roots[1:])})" if len(roots) > 1 else ""
    return f"put it at {target}{others}, download: {spec.source}; then refresh ComfyUI (R)"


def resolve_model_file(name: Any, spec: ModelFile, choices: Iterable[str], folder: str = MODEL_FOLDER,
                       display: Optional[str] = None) -> str:
    """Absolute path of a listed model file (``folder_paths.get_full_path``), or a folder name ending in ``/``
    (the first match in ``folder_paths.get_folder_paths``).

    Raises:
        MoGe4DInputError: the message of :func:`model_file_problem`.
    """
    problem = model_file_problem(name, spec, choices, folder, display)
    if problem is not None:
        raise MoGe4DInputError(problem)
    rel = name if display is None else display
    if rel.endswith("/"):
        for root in model_folders(folder):
            full = os.path.join(root, rel.rstrip("/"))
            if os.path.isdir(full):
                return full
    return folder_paths.get_full_path(folder, rel)


# ------------------------------------------------------------------------------------------------ widgets
def widget_problem(node_cls, **values: Any) -> Optional[str]:
    """ComfyUI's own checks (combo options, min, max) for the named widget values, which ComfyUI skips for the
    inputs a ``validate_inputs`` names. ``None`` values (linked inputs) are skipped."""
    inputs = {i.id: i for i in node_cls.define_schema().inputs}
    for key, value in values.items():
        spec = inputs.get(key)
        if value is None or spec is None:
            continue
        options = getattr(spec, "options", None)
        if options is not None and value not in options:
            shown = ", ".join(map(str, options[:20])) + (f", ... ({len(options)} in all)" if len(options) > 20 else "")
            return f"{key}: {value!r} is not one of the listed options ({shown})"
        lo, hi = getattr(spec, "min", None), getattr(spec, "max", None)
        if lo is not None and value < lo:
            return f"{key}: {value} is smaller than the minimum {lo}"
        if hi is not None and value > hi:
            return f"{key}: {value} is bigger than the maximum {hi}"
    return None


def working_size_problem(width: Any, height: Any) -> Optional[str]:
    """Working resolution widgets: 0 x 0 (keep the input size) or what the core's ``check_working_size`` accepts.
    Skipped when either is linked (None)."""
    if width is None or height is None or (width == 0 and height == 0):
        return None
    return problem_of(lambda: check_working_size(width, height))


def frames_problem(frames: Any, name: str = "frames") -> Optional[str]:
    """A frame-count widget: the core's ``check_frames`` (4k+1). Skipped when linked (None)."""
    return None if frames is None else problem_of(lambda: check_frames(int(frames), name))


def camera_params_problem(preset: Any, params: Any) -> Optional[str]:
    """The preset name and its JSON parameters, with the core's ``parse_params`` / ``resolve_params``.
    Skipped when either is linked (None)."""
    if preset is None or params is None:
        return None
    if preset not in CAMERA_PRESETS:
        return f"preset: unknown camera preset {preset!r}; valid presets: {', '.join(CAMERA_PRESETS)}"
    return problem_of(lambda: resolve_params(CAMERA_PRESETS[preset], parse_params(params)))


def output_prefix_problem(prefix: Any, input_name: str = "filename_prefix") -> Optional[str]:
    """A ``filename_prefix`` whose folder would leave ComfyUI's output folder (the rule of
    ``folder_paths.get_save_image_path``, checked without creating anything). Skipped when linked (None)."""
    if prefix is None:
        return None
    out = folder_paths.get_output_directory()
    sub = os.path.dirname(os.path.normpath(str(prefix)))
    full = os.path.abspath(os.path.join(out, sub))
    if not str(prefix).strip() or os.path.commonpath((out, full)) != out:
        return (f"{input_name}: {prefix!r} would write outside ComfyUI's output folder ({out}); use a relative "
                f"name such as 'moge4d/scene'")
    return None
