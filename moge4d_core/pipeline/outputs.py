"""Write a :class:`~.run.SceneResult` to a folder, all or nothing.

Files: ``scene.npz`` (trajectories), ``ply/frame_XXXX.ply`` (points per frame), per camera ``render_<cam>.mp4``,
``holes_<cam>.mp4`` (white = hole) and ``inpainted_<cam>.mp4`` (when inpainted), ``motion_preview.mp4``,
``contact_sheet.png`` (rows: per camera the render, the holes and the inpainted frames, each labelled on the left with
the camera's name and what the row shows; columns: 4 frames)
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


def _label_column(labels: list[tuple[str, str]], row_height: int) -> np.ndarray:
    """(len(labels)·row_height, width, 3) uint8: each row's two label lines in white on dark gray, PIL's default
    font; the width fits the longest line."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    two_lines = row_height >= 28                      # else "camera what" on one line
    lines = [pair if two_lines else (" ".join(pair),) for pair in labels]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = 8 + max(int(probe.textlength(line, font=font)) for pair in lines for line in pair)
    col = Image.new("RGB", (width, row_height * len(labels)), (32, 32, 32))
    draw = ImageDraw.Draw(col)
    for i, pair in enumerate(lines):
        for j, line in enumerate(pair):
            draw.text((4, i * row_height + 2 + 13 * j), line, fill=(255, 255, 255) if j == 0 else (255, 220, 120),
                      font=font)
    return np.asarray(col)


def contact_sheet(result: "SceneResult", columns: int = 4) -> np.ndarray:
    """(rows·H, L + columns·W, 3) uint8: per camera a row of render frames, of hole masks (white = hole) and of
    inpainted frames, labelled in a left column of width L (the camera's name, then render / holes / inpainted)."""
    rows, labels = [], []
    for view in result.views:
        t = view.render.rgb.shape[0]
        idx = torch.linspace(0, t - 1, columns).round().long()
        strips = [("render", view.render.rgb[idx]), ("holes", view.render.holes[idx][..., None].expand(-1, -1, -1, 3))]
        if view.frames is not None:
            strips.append(("inpainted", view.frames[idx]))
        for what, s in strips:
            rows.append(torch.cat(list(s.float().clamp(0, 1)), dim=1))
            labels.append((view.camera.name, what))
    sheet = (torch.cat(rows, dim=0).numpy() * 255 + 0.5).astype(np.uint8)
    return np.concatenate([_label_column(labels, int(rows[0].shape[0])), sheet], axis=1)


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
