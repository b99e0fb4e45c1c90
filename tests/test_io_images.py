"""Images and depth maps read by their real bit depth, with explicit depth units and named-file errors."""
import numpy as np
import pytest
import torch
from PIL import Image

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.io.images import image_to_float, read_depth, read_image


def _grey16(tmp_path, value=32768):
    a = np.full((6, 8), value, np.uint16)
    a[0, 0] = 0
    a[0, 1] = 65535
    path = tmp_path / "grey16.png"
    Image.fromarray(a).save(path)
    assert Image.open(path).mode == "I;16"
    return path, a


def test_16bit_greyscale_png_is_scaled_by_65535(tmp_path):
    path, a = _grey16(tmp_path)
    img = read_image(path)
    assert img.shape == (6, 8, 3) and img.dtype == torch.float32
    expect = a.astype(np.float64) / 65535.0
    for c in range(3):
        assert np.allclose(img[..., c].numpy(), expect, atol=1e-6)
    assert abs(float(img[3, 3, 0]) - 0.5) < 1e-4          # not 99.6 % white


def test_big_endian_16bit_and_32bit_integer_modes():
    vals = np.array([[0, 1000], [40000, 65535]], dtype=">u2")
    img = Image.frombytes("I;16B", (2, 2), vals.tobytes())
    out = image_to_float(img)
    assert np.allclose(out[..., 1], vals.astype(np.float64) / 65535.0, atol=1e-6)
    as_i = Image.fromarray(vals.astype(np.int32), mode="I")
    assert np.allclose(image_to_float(as_i)[..., 2], vals.astype(np.float64) / 65535.0, atol=1e-6)
    wide = Image.fromarray(np.array([[0, 70000]], np.int32), mode="I")
    with pytest.raises(MoGe4DInputError, match="bit depth"):
        image_to_float(wide, "--image wide.tif")


def test_float_mode_in_unit_range_is_kept_and_others_refused(tmp_path):
    vals = np.array([[0.0, 0.25], [0.5, 1.0]], np.float32)
    assert np.allclose(image_to_float(Image.fromarray(vals, mode="F"))[..., 0], vals)
    path = tmp_path / "f.tif"
    Image.fromarray(vals * 300, mode="F").save(path)
    with pytest.raises(MoGe4DInputError, match=r"f\.tif.*\[0, 300\]"):
        read_image(path)


def test_palette_rgba_and_grey_alpha(tmp_path):
    pal = Image.new("P", (3, 2))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    pal.putpixel((1, 1), 1)
    pal.save(tmp_path / "p.png")
    out = read_image(tmp_path / "p.png").numpy()
    assert np.allclose(out[0, 0], [1, 0, 0]) and np.allclose(out[1, 1], [0, 0, 1])
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3] = [200, 100, 50]
    rgba[..., 3] = [[255, 0], [51, 255]]
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png").numpy()
    assert np.allclose(out[0, 0], np.array([200, 100, 50]) / 255, atol=1e-6)
    assert np.allclose(out[0, 1], 0)                                    # fully transparent: black, not the colour
    assert np.allclose(out[1, 0], np.array([200, 100, 50]) / 255 * 0.2, atol=1e-6)
    la = Image.fromarray(np.array([[[128, 255], [128, 0]]], np.uint8), mode="LA")
    assert np.allclose(image_to_float(la)[0], [[128 / 255] * 3, [0] * 3], atol=1e-6)


@pytest.mark.parametrize("content", [b"", b"this is not an image at all"])
def test_empty_or_garbage_image_is_named(tmp_path, content):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(MoGe4DInputError, match=r"--image .*bad\.png"):
        read_image(path)


def test_npy_float_depth_stays_metres(tmp_path):
    d = np.array([[1.5, 2.0], [0.0, 3.25]], np.float32)
    np.save(tmp_path / "d.npy", d)
    assert torch.equal(read_depth(tmp_path / "d.npy"), torch.from_numpy(d))


def test_integer_depth_png_needs_a_scale(tmp_path):
    mm = np.array([[1500, 2000], [0, 3250]], np.uint16)
    Image.fromarray(mm).save(tmp_path / "d16.png")
    with pytest.raises(MoGe4DInputError, match=r"d16\.png.*16-bit integer.*--depth-scale"):
        read_depth(tmp_path / "d16.png")
    got = read_depth(tmp_path / "d16.png", scale=0.001)
    assert np.allclose(got.numpy(), mm / 1000.0, atol=1e-6)
    # relative depth has no unit: no scale needed, the values are kept
    assert np.allclose(read_depth(tmp_path / "d16.png", metric=False).numpy(), mm)
    np.save(tmp_path / "di.npy", mm.astype(np.int32))
    with pytest.raises(MoGe4DInputError, match="--depth-scale"):
        read_depth(tmp_path / "di.npy")
    with pytest.raises(MoGe4DInputError, match="--depth-scale: expected a positive"):
        read_depth(tmp_path / "d16.png", scale=-1.0)


@pytest.mark.parametrize("content", [b"", b"\x93NUMPY garbage", b"random bytes, not numpy"])
def test_empty_or_garbage_npy_is_named(tmp_path, content):
    path = tmp_path / "d.npy"
    path.write_bytes(content)
    with pytest.raises(MoGe4DInputError, match=r"--depth .*d\.npy"):
        read_depth(path)


def test_pickled_npy_is_not_unpickled(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(MoGe4DInputError, match=r"obj\.npy"):
        read_depth(tmp_path / "obj.npy")


@pytest.mark.parametrize("values, match", [
    ([[1.0, np.nan], [2.0, 3.0]], "NaN or inf"),
    ([[1.0, np.inf], [2.0, 3.0]], "NaN or inf"),
    ([[-1.0, -2.0], [-0.5, 0.0]], "no positive depth"),
])
def test_non_finite_or_non_positive_depth_is_refused(tmp_path, values, match):
    np.save(tmp_path / "d.npy", np.array(values, np.float32))
    with pytest.raises(MoGe4DInputError, match=rf"d\.npy.*{match}"):
        read_depth(tmp_path / "d.npy")


def test_depth_channel_and_shape(tmp_path):
    np.save(tmp_path / "c.npy", np.stack([np.full((3, 4), 2.0), np.zeros((3, 4))], -1).astype(np.float32))
    assert read_depth(tmp_path / "c.npy").shape == (3, 4)
    np.save(tmp_path / "v.npy", np.ones(5, np.float32))
    with pytest.raises(MoGe4DInputError, match=r"v\.npy: expected an \(H,W\) depth map"):
        read_depth(tmp_path / "v.npy")
