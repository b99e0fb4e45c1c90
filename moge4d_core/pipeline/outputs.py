"""Write a :class:`~.run.SceneResult` to a folder, all or nothing.

Files: ``scene.npz`` (trajectories), ``ply/frame_XXXX.ply`` (points per frame), per camera ``render_<cam>.mp4``,
``holes_<cam>.mp4`` (white = hole) and ``inpainted_<cam>.mp4`` (when inpainted), ``motion_preview.mp4``,
``contact_sheet.png`` (rows: per camera the render, the holes and the inpainted frames; columns: 4 frames)
and ``timings.txt``, plus the manifest ``moge4d_run.json``.  Everything is written into a temporary folder next to
``out`` that then replaces ``out`` whole (:func:`moge4d_core.io.output_folder.output_folder`): a failure leaves ``out``
as it was, a rerun never leaves files of an earlier run (other cameras, more frames) beside the new ones, and a
folder that is not a MoGe4D output is refused untouched.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..io import save_trajectories_npz, write_mp4, write_ply_sequence
from ..io.exports import write_exports
from ..io.output_folder import output_folder
from ..preview import motion_preview

if TYPE_CHECKING:
    from .run import SceneResult

__all__ = ["contact_sheet", "estimate_output_bytes", "write_outputs"]


def contact_sheet(result: "SceneResult", columns: int = 4) -> np.ndarray:
    """(rows·H, columns·W, 3) uint8: per camera a row of render frames, of hole masks and of inpainted frames."""
    rows = []
    for view in result.views:
        t = view.render.rgb.shape[0]
        idx = torch.linspace(0, t - 1, columns).round().long()
        strips = [view.render.rgb[idx], view.render.holes[idx][..., None].expand(-1, -1, -1, 3)]
        if view.frames is not None:
            strips.append(view.frames[idx])
        for s in strips:
            rows.append(torch.cat(list(s.float().clamp(0, 1)), dim=1))
    sheet = torch.cat(rows, dim=0)
    return (sheet.numpy() * 255 + 0.5).astype(np.uint8)


def estimate_output_bytes(frames: int, height: int, width: int, cameras: int, *, inpaint: bool = True) -> int:
    """Rough size in bytes of what :func:`write_outputs` writes for ``frames`` x ``height`` x ``width``.

    PLY sequence (15 B per point and frame) + ``scene.npz`` (13 B per point and frame) + H.264 videos (about
    0.25 B per pixel and frame: motion preview, and per camera render, holes and inpainted) + the contact sheet.
    Meant to catch a clearly too small disk, not to be exact.
    """
    px = int(frames) * int(height) * int(width)
    videos = 1 + int(cameras) * (3 if inpaint else 2)
    sheet = int(cameras) * 3 * int(height) * 4 * int(width) * 3
    return int(28 * px + videos * px * 0.25 + sheet + 2 ** 20)


def write_outputs(result: "SceneResult", out, *, fps: float = 8.0, command: str = "generate",
                  exports=()) -> list[Path]:
    """Write ``result`` into ``out``, replacing a previous MoGe4D output there whole.

    Args:
        result: a :class:`~.run.SceneResult`.
        out: output folder: missing, empty or an earlier MoGe4D output (else refused, untouched).
        fps: frame rate of the videos.
        command: recorded in the folder's manifest.
        exports: extra scene files, names from :data:`moge4d_core.io.exports.EXPORT_FORMATS` (``usd``, ``usda``,
            ``usdz``, ``glb``): ``scene.<fmt>`` with every rendered camera path, written inside the same temporary
            folder.

    Returns:
        the final paths of the top-level items written (files and the ``ply`` folder), sorted by name.
    """
    from PIL import Image

    out = Path(out)
    with output_folder(out, command=command) as tmp:
        save_trajectories_npz(result.trajectories, tmp / "scene.npz")
        write_ply_sequence(result.trajectories, tmp / "ply", prefix="frame")
        write_mp4(motion_preview(result.motion), tmp / "motion_preview.mp4", fps=fps)
        for v in result.views:
            name = v.camera.name
            write_mp4(v.render.rgb, tmp / f"render_{name}.mp4", fps=fps)
            write_mp4(v.render.holes[..., None].expand(-1, -1, -1, 3), tmp / f"holes_{name}.mp4", fps=fps)
            if v.frames is not None:
                write_mp4(v.frames, tmp / f"inpainted_{name}.mp4", fps=fps)
        Image.fromarray(contact_sheet(result)).save(tmp / "contact_sheet.png")
        (tmp / "timings.txt").write_text(result.times.summary() + "\n")
        write_exports(result.trajectories, [v.camera for v in result.views], tmp, exports, fps=fps)
        names = sorted(item.name for item in tmp.iterdir())
    return [out / name for name in names]
