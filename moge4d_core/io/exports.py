"""The VFX / viewer exports the CLI's ``--export`` writes into an output folder: ``scene.usd`` / ``scene.usda`` /
``scene.usdz`` (:func:`moge4d_core.io.usd.save_scene_usd`, the scene plus every rendered camera path) and
``scene.glb`` (:func:`moge4d_core.io.gltf.save_scene_glb`, the animated preview)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional, Sequence

from ..errors import MoGe4DInputError
from ..types import CameraPath, Trajectories

__all__ = ["EXPORT_FORMATS", "check_exports", "write_exports"]

EXPORT_FORMATS = ("usd", "usda", "usdz", "glb")


def check_exports(formats: Optional[Iterable[str]], what: str = "--export") -> list[str]:
    """The requested formats without repeats, after checking each is known and its library is installed.

    Raises:
        MoGe4DInputError: an unknown format, or ``usd-core`` / ``pygltflib`` missing (with the pip command).
    """
    out: list[str] = []
    for fmt in formats or ():
        if fmt not in EXPORT_FORMATS:
            raise MoGe4DInputError(f"{what} {fmt}: unknown format; choose from {', '.join(EXPORT_FORMATS)}")
        if fmt not in out:
            out.append(fmt)
    if any(f != "glb" for f in out):
        from .usd import check_usd_available

        check_usd_available(f"{what} usd")
    if "glb" in out:
        from .gltf import check_gltf_available

        check_gltf_available(f"{what} glb")
    return out


def write_exports(traj: Trajectories, cameras: Sequence[CameraPath], folder, formats: Optional[Iterable[str]], *,
                  glb_max_points: Optional[int] = None, fps: Optional[float] = None) -> list[Path]:
    """Write ``scene.<fmt>`` into ``folder`` for each requested format.

    Args:
        traj: the 4D scene.
        cameras: the camera paths rendered (written into the USD files).
        folder: an existing folder (the CLI passes its temporary output folder, so the run stays all or nothing).
        formats: names from :data:`EXPORT_FORMATS`.
        glb_max_points: point budget per frame of ``scene.glb`` (default :data:`~.gltf.DEFAULT_GLB_POINTS`).
        fps: frame rate; default the scene's.

    Returns:
        the paths written.
    """
    folder = Path(folder)
    written = []
    for fmt in check_exports(formats):
        if fmt == "glb":
            from .gltf import DEFAULT_GLB_POINTS, save_scene_glb

            budget = DEFAULT_GLB_POINTS if glb_max_points is None else glb_max_points
            written.append(save_scene_glb(traj, folder / "scene.glb", max_points=budget, fps=fps))
        else:
            from .usd import save_scene_usd

            written.append(save_scene_usd(traj, list(cameras), folder / f"scene.{fmt}", fps=fps))
    return written
