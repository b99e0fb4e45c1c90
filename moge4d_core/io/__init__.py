"""4D I/O: TrajScene / DELTA pkl (restricted unpickling), our trajectory ``.npz``, PLY point clouds
and sequences, 3DGS splat PLY, and MP4 video.

Every writer validates its inputs before creating any file and writes through a temporary file (or
folder) that is renamed only when everything succeeded, so a failure never leaves a half-written
output. Bad inputs raise :class:`moge4d_core.errors.MoGe4DInputError` naming the input or file.
"""
from .ply import (
    OPACITY_EPS,
    SH_C0,
    write_ply_points,
    write_ply_sequence,
    write_splat_ply,
    write_splat_sequence,
)
from .safe_pickle import load_pickle
from .trajectory_files import (
    DELTA_GRID,
    NPZ_FORMAT,
    NPZ_VERSION,
    load_trajectories,
    load_trajectories_npz,
    read_trajectory_pkl,
    save_trajectories_npz,
    trajectories_from_dict,
)
from .video import read_video_frames, write_mp4

__all__ = [
    "DELTA_GRID",
    "NPZ_FORMAT",
    "NPZ_VERSION",
    "OPACITY_EPS",
    "SH_C0",
    "load_pickle",
    "load_trajectories",
    "load_trajectories_npz",
    "read_trajectory_pkl",
    "read_video_frames",
    "save_trajectories_npz",
    "trajectories_from_dict",
    "write_mp4",
    "write_ply_points",
    "write_ply_sequence",
    "write_splat_ply",
    "write_splat_sequence",
]
