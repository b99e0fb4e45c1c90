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


def get_annotated_filepath(name, default_dir=None):
    return os.path.join(default_dir or _input, name)


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
