"""Stand-in for ComfyUI's ``folder_paths``: input/output folders set by the tests."""
import os

_input = _output = _temp = None
folder_names_and_paths = {}
supported_pt_extensions = {".ckpt", ".pt", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}


def set_dirs(input_dir, output_dir, temp_dir):
    global _input, _output, _temp
    _input, _output, _temp = str(input_dir), str(output_dir), str(temp_dir)


def get_input_directory():
    return _input


def get_output_directory():
    return _output


def get_temp_directory():
    return _temp


def annotated_filepath(name):
    """As ComfyUI v0.21: ``"x.png [output]"`` -> ("x.png", output dir); no annotation -> (name, None)."""
    if name.endswith("[output]"):
        return name[:-9], get_output_directory()
    if name.endswith("[input]"):
        return name[:-8], get_input_directory()
    if name.endswith("[temp]"):
        return name[:-7], get_temp_directory()
    return name, None


def get_annotated_filepath(name, default_dir=None):
    """As ComfyUI v0.21: a plain ``os.path.join`` (it does not refuse ``..`` or absolute names)."""
    name, base_dir = annotated_filepath(name)
    if base_dir is None:
        base_dir = default_dir if default_dir is not None else get_input_directory()
    return os.path.join(base_dir, name)


def exists_annotated_filepath(name):
    name, base_dir = annotated_filepath(name)
    if base_dir is None:
        base_dir = get_input_directory()
    return os.path.exists(os.path.join(base_dir, name))


def get_save_image_path(filename_prefix, output_dir, image_width=0, image_height=0):
    subfolder, filename = os.path.split(os.path.normpath(filename_prefix))
    full = os.path.join(output_dir, subfolder)
    if os.path.commonpath((output_dir, os.path.abspath(full))) != output_dir:
        raise Exception("Saving image outside the output folder is not allowed.")
    os.makedirs(full, exist_ok=True)
    existing = [f for f in os.listdir(full) if f.startswith(filename + "_")]
    counter = len(existing) + 1
    return full, filename, counter, subfolder, filename_prefix


def add_model_folder_path(folder_name, full_folder_path, is_default=False):
    paths, exts = folder_names_and_paths.setdefault(folder_name, ([], set()))
    if full_folder_path not in paths:
        (paths.insert(0, full_folder_path) if is_default else paths.append(full_folder_path))


# model folders (same signatures as ComfyUI v0.21's folder_paths)
models_dir = None  # tests set this to a tmp folder


def get_folder_paths(folder_name):
    return folder_names_and_paths[folder_name][0][:]


def get_filename_list(folder_name):
    paths, exts = folder_names_and_paths[folder_name]
    found = set()
    for root in paths:
        if not os.path.isdir(root):
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames[:] = [d for d in dirnames if d != ".git"]
            for f in filenames:
                rel = os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/")
                if not exts or os.path.splitext(f)[-1].lower() in exts:
                    found.add(rel)
    return sorted(found)


def get_full_path(folder_name, filename):
    if folder_name not in folder_names_and_paths:
        return None
    filename = os.path.relpath(os.path.join("/", filename), "/")
    for root in folder_names_and_paths[folder_name][0]:
        full = os.path.join(root, filename)
        if os.path.isfile(full):
            return full
    return None
