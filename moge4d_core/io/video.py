"""MP4 writing (H.264, yuv420p) and reading with PyAV.

yuv420p stores colour at half resolution, so H.264 in yuv420p needs even width and height. Frames
of odd size are padded by one row / column repeating the last one (the video is then up to one
pixel larger than the frames; nothing is cropped). The RGB -> YUV conversion uses BT.709
limited range, and the stream is tagged as such so players decode the colours correctly.
"""
from __future__ import annotations

import contextlib
import math
import os
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..errors import MoGe4DInputError
from ._atomic import atomic_path, check_output_path
from ._convert import to_numpy

__all__ = ["write_mp4", "read_video_frames"]


def _frames_uint8(frames: Any) -> np.ndarray:
    """(T,H,W,3) float [0,1] (numpy / torch) or uint8 -> uint8 numpy, validated."""
    what = "write_mp4: frames"
    arr = to_numpy(frames, what)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise MoGe4DInputError(f"{what}: expected (T,H,W,3) RGB frames, got shape {tuple(arr.shape)}")
    t, h, w, _ = arr.shape
    if t == 0 or h == 0 or w == 0:
        raise MoGe4DInputError(f"{what}: empty video, shape {tuple(arr.shape)}")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.floating):
        raise MoGe4DInputError(f"{what}: expected float in [0,1] or uint8, got dtype {arr.dtype}")
    if not np.isfinite(arr).all():
        raise MoGe4DInputError(f"{what}: contains NaN or inf")
    return np.rint(np.clip(arr.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def _pad_even(frames: np.ndarray) -> np.ndarray:
    _, h, w, _ = frames.shape
    ph, pw = h % 2, w % 2
    if ph or pw:
        frames = np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    return frames


def write_mp4(frames: Any, path: str | os.PathLike, fps: float = 8.0, *, crf: int = 18) -> Path:
    """Write RGB frames to an H.264 MP4 (yuv420p); returns the path.

    frames (T,H,W,3): float in [0,1] (torch or numpy; clipped, rounded to 8 bit) or uint8.
    Odd H / W are padded to even by repeating the last row / column. ``crf`` is x264's quality
    (0 lossless-ish luma .. 51 worst; 18 is visually near-lossless). Written to a temporary file
    and renamed, so a failure leaves nothing behind.
    """
    import av  # heavy import only when writing video

    path = check_output_path(path, "write_mp4")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise MoGe4DInputError(f"write_mp4: fps must be a positive number, got {fps!r}")
    if not (isinstance(crf, int) and 0 <= crf <= 51):
        raise MoGe4DInputError(f"write_mp4: crf must be an integer in 0..51, got {crf!r}")
    data = _pad_even(_frames_uint8(frames))
    _, h, w, _ = data.shape
    rate = Fraction(fps).limit_denominator(1001)
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=rate)
            stream.width, stream.height = w, h
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf)}
            cc = stream.codec_context
            # colour tags (metadata only; older PyAV versions may lack some of these attributes)
            for attr, value in (("colorspace", 1), ("color_primaries", 1), ("color_trc", 1),
                                ("color_range", 1)):   # BT.709 matrix / primaries / transfer, limited range
                with contextlib.suppress(AttributeError, TypeError, ValueError):
                    setattr(cc, attr, value)
            for image in data:
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame = frame.reformat(format="yuv420p", dst_colorspace="ITU709", dst_color_range="MPEG")
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return path


def read_video_frames(path: str | os.PathLike, *, max_frames: Optional[int] = None, stride: int = 1) -> np.ndarray:
    """Decode the first video stream of ``path`` to RGB uint8 frames (T,H,W,3).

    ``stride`` keeps every stride-th frame (starting at frame 0); ``max_frames`` stops after that
    many kept frames. The colour matrix in the stream's tags is honoured (BT.601 when untagged).
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise MoGe4DInputError(f"{path}: video file not found")
    if stride < 1 or (max_frames is not None and max_frames < 1):
        raise MoGe4DInputError(f"read_video_frames: stride and max_frames must be >= 1, got {stride}, {max_frames}")
    out: list[np.ndarray] = []
    try:
        with av.open(str(path), mode="r") as container:
            if not container.streams.video:
                raise MoGe4DInputError(f"{path}: has no video stream")
            stream = container.streams.video[0]
            for i, frame in enumerate(container.decode(stream)):
                if i % stride:
                    continue
                space = "ITU709" if getattr(frame, "colorspace", None) == 1 else None
                rng = "JPEG" if getattr(frame, "color_range", None) == 2 else None
                rgb = frame.reformat(format="rgb24", src_colorspace=space, src_color_range=rng)
                out.append(rgb.to_ndarray())
                if max_frames is not None and len(out) >= max_frames:
                    break
    except av.error.FFmpegError as exc:
        raise MoGe4DInputError(f"{path}: could not decode the video ({exc})") from None
    if not out:
        raise MoGe4DInputError(f"{path}: the video has no frames")
    return np.stack(out)
