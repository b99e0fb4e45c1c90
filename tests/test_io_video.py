"""MP4 writing / reading through PyAV: frame count, size, colours, padding, all-or-nothing writes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import moge4d_core.io.video as video_mod
from moge4d_core.errors import MoGe4DInputError
from moge4d_core.io import read_video_frames, write_mp4


def _gradient(t=6, h=32, w=48):
    y, x = np.mgrid[0:h, 0:w]
    frames = [np.stack([0.5 + 0.4 * np.sin(x / w * 3 + 0.3 * k), y / (h - 1),
                        np.full(x.shape, 0.2 + 0.1 * k)], -1) for k in range(t)]
    return np.stack(frames).astype(np.float32)


def test_mp4_float_tensor_roundtrip(tmp_path):
    frames = _gradient()
    path = write_mp4(torch.from_numpy(frames), tmp_path / "v.mp4", fps=8.0)
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]
    back = read_video_frames(path)
    assert back.shape == (6, 32, 48, 3) and back.dtype == np.uint8
    err = np.abs(back.astype(np.float64) - frames.astype(np.float64) * 255.0)
    assert err.mean() < 4.0 and err.max() < 40          # lossy H.264 + 4:2:0 chroma

    import av
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "h264"
        assert s.codec_context.pix_fmt == "yuv420p"
        assert float(s.average_rate) == pytest.approx(8.0)


def test_mp4_uint8_solid_colours(tmp_path):
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [30, 60, 200], [128, 128, 128]], np.uint8)
    frames = np.broadcast_to(colours[:, None, None, :], (5, 16, 16, 3)).copy()
    back = read_video_frames(write_mp4(frames, tmp_path / "s.mp4", fps=24))
    assert back.shape == frames.shape
    assert np.abs(back.astype(int) - frames.astype(int)).max() <= 4


def test_mp4_odd_size_padded(tmp_path):
    frames = _gradient(t=3, h=31, w=47)
    back = read_video_frames(write_mp4(frames, tmp_path / "odd.mp4"))
    assert back.shape == (3, 32, 48, 3)
    err = np.abs(back[:, :31, :47].astype(np.float64) - frames * 255.0)
    assert err.mean() < 4.0                              # mostly 4:2:0 chroma loss on the gradient
    # the padding repeats the last row / column
    assert np.abs(back[:, 31, :47].astype(int) - back[:, 30, :47].astype(int)).mean() < 4
    assert np.abs(back[:, :31, 47].astype(int) - back[:, :31, 46].astype(int)).mean() < 4


def test_read_stride_and_max_frames(tmp_path):
    frames = np.zeros((7, 8, 8, 3), np.uint8)
    frames[:, :, :, 0] = (np.arange(7) * 35)[:, None, None]
    path = write_mp4(frames, tmp_path / "r.mp4")
    back = read_video_frames(path, stride=2, max_frames=3)
    assert back.shape[0] == 3
    np.testing.assert_allclose(back[:, 4, 4, 0].astype(float), [0, 70, 140], atol=4)


@pytest.mark.parametrize("frames, kw, pattern", [
    (np.zeros((0, 8, 8, 3), np.uint8), {}, "empty video"),
    (np.zeros((8, 8, 3), np.uint8), {}, r"expected \(T,H,W,3\)"),
    (np.zeros((2, 8, 8, 4), np.uint8), {}, r"expected \(T,H,W,3\)"),
    (np.full((2, 8, 8, 3), np.nan, np.float32), {}, "NaN"),
    (np.zeros((2, 8, 8, 3), np.int32), {}, "float in \\[0,1\\] or uint8"),
    (np.zeros((2, 8, 8, 3), np.uint8), {"fps": 0}, "fps must be a positive"),
])
def test_mp4_bad_input_creates_nothing(tmp_path, frames, kw, pattern):
    with pytest.raises(MoGe4DInputError, match=pattern):
        write_mp4(frames, tmp_path / "sub" / "bad.mp4", **kw)
    assert list(tmp_path.iterdir()) == []


def test_mp4_failure_midway_leaves_existing_file(tmp_path, monkeypatch):
    path = write_mp4(_gradient(t=2, h=8, w=8), tmp_path / "v.mp4")
    original = path.read_bytes()
    import av
    real = av.VideoFrame.from_ndarray
    calls = {"n": 0}

    def flaky(arr, format):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("encoder died")
        return real(arr, format=format)
    monkeypatch.setattr(av.VideoFrame, "from_ndarray", flaky)
    with pytest.raises(RuntimeError, match="encoder died"):
        write_mp4(_gradient(t=5, h=8, w=8), path)
    assert path.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]


def test_read_errors(tmp_path):
    with pytest.raises(MoGe4DInputError, match="not found"):
        read_video_frames(tmp_path / "none.mp4")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(MoGe4DInputError, match="could not decode"):
        read_video_frames(bad)
    assert video_mod.__all__ == ["write_mp4", "read_video_frames"]
