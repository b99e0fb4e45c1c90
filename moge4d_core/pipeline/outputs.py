"""Write a :class:`~.run.SceneResult` to a folder, all or nothing.

Files: ``scene.npz`` (trajectories), ``ply/frame_XXXX.ply`` (points per frame), per camera ``render_<cam>.mp4``,
``holes_<cam>.mp4`` (white = hole) and ``inpainted_<cam>.mp4`` (when inpainted), ``motion_preview.mp4``,
``contact_sheet.png`` (rows: per camera the render, the holes and the inpainted frames; columns: 4 frames)
and ``timings.txt``.  Everything is written into a temporary folder next to ``out`` first and moved in at the
end, so a failure leaves ``out`` as it was.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..io import save_trajectories_npz, write_mp4, write_ply_sequence
from .trajectory import motion_preview

__all__ = ["contact_sheet", "write_outputs"]


def contact_sheet(result, columns: int = 4) -> np.ndarray:
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


def write_outputs(result, out, *, fps: float = 8.0) -> list[Path]:
    """Write ``result`` into ``out`` (created if needed); returns the final paths."""
    from PIL import Image

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".partial-") as tmp:
        tmp = Path(tmp)
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
        final = []
        for item in sorted(tmp.iterdir()):
            dest = out / item.name
            if dest.is_dir():
                shutil.rmtree(dest)
            elif dest.exists():
                dest.unlink()
            shutil.move(str(item), dest)
            final.append(dest)
    return final
