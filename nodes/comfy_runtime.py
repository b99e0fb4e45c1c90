"""Thin access to ComfyUI's runtime services (progress, cancel, devices, folders) for the nodes.

Only this module and the node modules import ComfyUI; the maths stays in ``moge4d_core``.
"""
from __future__ import annotations

import os
from pathlib import Path

import comfy.model_management as mm
import comfy.utils
import folder_paths

from .validation import list_input_files


def progress_callback(total: int):
    """A ``progress(done, total)`` callback for core loops (``done`` = items finished so far):
    updates a ProgressBar and honours Cancel."""
    bar = comfy.utils.ProgressBar(total)

    def callback(done: int, n: int) -> None:
        mm.throw_exception_if_processing_interrupted()
        bar.update_absolute(done, n)

    return callback


def compute_device():
    """The device ComfyUI wants compute on (CPU under ``--cpu``)."""
    return mm.get_torch_device()


def output_device():
    """Where node outputs live between nodes."""
    return mm.intermediate_device()


def input_files(extensions: tuple[str, ...]) -> list[str]:
    """Files under ComfyUI's input folder (recursive, relative, sorted) with one of ``extensions``: the names
    :func:`nodes.validation.resolve_input_file` accepts (links leading out of the folder are left out)."""
    return list_input_files(extensions)


def output_folder(prefix: str) -> tuple[Path, str, str]:
    """(folder, stem, subfolder) for a new output under ComfyUI's output folder from a ``filename_prefix``.

    The stem gets a counter so runs never overwrite each other; paths outside ``output/`` are refused
    by ComfyUI's own helper.
    """
    out_dir = folder_paths.get_output_directory()
    full_folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, out_dir)
    return Path(full_folder), f"{filename}_{counter:05d}", subfolder


def relative_to_output(path: os.PathLike) -> str:
    return Path(path).resolve().relative_to(Path(folder_paths.get_output_directory()).resolve()).as_posix()
