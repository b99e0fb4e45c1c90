"""Geometry sources: depth image + fov, MOGE_GEOMETRY dicts, working-resolution resampling, official intrinsics.

Expected values are recomputed here in float64 from the formulas (pinhole model, pixel centres at +0.5).
"""
import math

import pytest
import torch

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.geometry.sources import (geometry_from_depth, geometry_from_moge, min_pool_depth, resize_geometry,
                                          with_official_intrinsics)
from moge4d_core.preview import confidence_mask, depth_preview, token_norm_preview

torch.set_num_threads(1)


def plane_depth(h, w, f, a, b, c):
    """z of the plane a*X + b*Y + c*Z = 1 seen through a centred pinhole with focal f (float64)."""
    j = torch.arange(w, dtype=torch.float64) + 0.5
    i = torch.arange(h, dtype=torch.float64) + 0.5
    x = (j[None, :] - w / 2) / f
    y = (i[:, None] - h / 2) / f
    return 1.0 / (a * x + b * y + c)


def test_plane_depth_with_known_fov_backprojects_onto_the_plane():
    h, w, fov = 24, 32, 60.0
    f = 0.5 * w / math.tan(math.radians(fov) / 2)
    a, b, c = 0.05, -0.03, 0.25
    z = plane_depth(h, w, f, a, b, c)
    g = geometry_from_depth(torch.rand(h, w, 3), z.float()[..., None].expand(-1, -1, 3), fov, depth_kind="metric")
    assert g.metric and g.valid.all()
    torch.testing.assert_close(g.K[0, 0].double(), torch.tensor(f, dtype=torch.float64), rtol=1e-6, atol=0)
    p = g.points.double()
    residual = a * p[..., 0] + b * p[..., 1] + c * p[..., 2] - 1.0
    assert residual.abs().max() < 1e-5
    torch.testing.assert_close(p[..., 2], z, rtol=1e-6, atol=1e-6)


def test_relative_inverse_depth_maps_endpoints_to_near_and_far():
    d = torch.linspace(0.2, 0.9, 16).reshape(4, 4)
    g = geometry_from_depth(torch.rand(4, 4, 3), d, 90.0, depth_kind="relative_inverse", near=2.0, far=20.0)
    assert not g.metric
    assert g.depth[d == d.max()].item() == pytest.approx(2.0, rel=1e-6)     # brightest = near
    assert g.depth[d == d.min()].item() == pytest.approx(20.0, rel=1e-6)    # darkest = far
    t = (d.double() - 0.2) / 0.7
    expect = 1.0 / (1 / 20.0 + t * (1 / 2.0 - 1 / 20.0))
    torch.testing.assert_close(g.depth.double(), expect, rtol=1e-5, atol=0)
    r = geometry_from_depth(torch.rand(4, 4, 3), d, 90.0, depth_kind="relative", near=2.0, far=20.0)
    torch.testing.assert_close(r.depth.double(), 2.0 + t * 18.0, rtol=1e-5, atol=0)


def test_resize_keeps_projection_consistent():
    h, w = 48, 64
    g = geometry_from_depth(torch.rand(h, w, 3), torch.full((h, w), 3.0), 70.0)
    r = resize_geometry(g, 32, 16)
    X = torch.tensor([0.4, -0.3, 2.5], dtype=torch.float64)

    def rel(K, W, H):
        uvw = K.double() @ X
        return uvw[0] / uvw[2] / W, uvw[1] / uvw[2] / H

    for a, b in zip(rel(g.K, w, h), rel(r.K, 32, 16)):
        assert float(a) == pytest.approx(float(b), abs=1e-7)
    assert r.image.shape == (16, 32, 3) and r.points.shape == (16, 32, 3)
    assert r.valid.all() and torch.allclose(r.depth, torch.full((16, 32), 3.0))


def test_min_pool_does_not_invent_depth_between_near_and_far():
    h, w = 37, 53                                  # non-integer ratios to 16x32
    d = torch.full((h, w), 10.0)
    d[:, :20] = 1.0
    d[5:9, 40:45] = 0.0                             # an invalid hole
    valid = d > 0
    out, ok = min_pool_depth(d, valid, 16, 32)
    vals = set(out[ok].unique().tolist())
    assert vals <= {1.0, 10.0} and vals == {1.0, 10.0}
    g = geometry_from_depth(torch.rand(h, w, 3), d, 60.0)
    r = resize_geometry(g, 32, 16)
    assert set(r.depth[r.valid].unique().tolist()) <= {1.0, 10.0}
    up, okup = min_pool_depth(d, valid, 80, 112)   # enlarging: nearest, still only the two depths
    assert set(up[okup].unique().tolist()) == {1.0, 10.0} and (~okup).any()


def test_errors_all_zero_constant_fov_and_sizes():
    img = torch.rand(8, 8, 3)
    with pytest.raises(MoGe4DInputError, match="all zero"):
        geometry_from_depth(img, torch.zeros(8, 8), 60.0)
    with pytest.raises(MoGe4DInputError, match="constant"):
        geometry_from_depth(img, torch.full((8, 8), 0.5), 60.0, depth_kind="relative_inverse")
    # an all-negative metric map is refused here, not later as "no point in front of the camera"
    with pytest.raises(MoGe4DInputError, match=r"no pixel has a positive depth \(values -3 \.\. -1\).*relative"):
        geometry_from_depth(img, -1.0 - 2.0 * torch.eye(8), 60.0)
    geometry_from_depth(img, -1.0 - 2.0 * torch.eye(8), 60.0, depth_kind="relative")   # fine as relative depth
    for fov in (0.0, -5.0, 180.0, 200.0):
        with pytest.raises(MoGe4DInputError, match="field of view"):
            geometry_from_depth(img, torch.rand(8, 8) + 0.1, fov)
    with pytest.raises(MoGe4DInputError, match="near/far"):
        geometry_from_depth(img, torch.rand(8, 8), 60.0, depth_kind="relative", near=5.0, far=1.0)
    with pytest.raises(MoGe4DInputError, match="multiples of 16"):
        resize_geometry(geometry_from_depth(img, torch.rand(8, 8) + 0.1, 60.0), 500, 368)


def test_grey_and_rgba_images_and_depth_channel_zero():
    grey = torch.rand(1, 8, 8, 1)
    depth_rgba = torch.rand(1, 8, 8, 4) + 0.1
    depth_rgba[..., 1:] = 0.0                       # only channel 0 counts
    g = geometry_from_depth(grey, depth_rgba, 60.0)
    assert g.image.shape == (8, 8, 3)
    torch.testing.assert_close(g.image[..., 2], grey[0, ..., 0])
    torch.testing.assert_close(g.depth, depth_rgba[0, ..., 0])
    rgba = torch.rand(8, 8, 4)
    torch.testing.assert_close(geometry_from_depth(rgba, torch.rand(8, 8) + 0.1, 60.0).image, rgba[..., :3])
    with pytest.raises(MoGe4DInputError, match="channel-last"):
        geometry_from_depth(torch.rand(8, 8, 2), torch.rand(8, 8), 60.0)


def test_from_moge_denormalises_intrinsics_and_uses_mask():
    b, h, w = 2, 6, 10
    Kn = torch.tensor([[0.8, 0, 0.5], [0, 1.2, 0.5], [0, 0, 1.0]]).expand(b, 3, 3).clone()
    depth = torch.rand(b, h, w) + 1.0
    mask = torch.ones(b, h, w, dtype=torch.bool)
    mask[1, 0, :] = False
    depth[1, 1, 1] = float("inf")
    moge = {"points": torch.zeros(b, h, w, 3), "depth": depth, "intrinsics": Kn, "mask": mask,
            "image": torch.rand(b, h, w, 3)}
    g = geometry_from_moge(moge, index=1)
    torch.testing.assert_close(g.K, torch.tensor([[8.0, 0, 5.0], [0, 7.2, 3.0], [0, 0, 1.0]]))
    assert not g.valid[0].any() and not g.valid[1, 1] and g.valid.sum() == h * w - w - 1
    # independent pinhole back-projection of one pixel
    i, j = 3, 7
    z = depth[1, i, j].double()
    assert g.points[i, j, 0].item() == pytest.approx(float((j + 0.5 - 5.0) * z / 8.0), rel=1e-5)
    assert g.points[i, j, 1].item() == pytest.approx(float((i + 0.5 - 3.0) * z / 7.2), rel=1e-5)
    with pytest.raises(MoGe4DInputError, match="missing"):
        geometry_from_moge({"depth": depth})
    with pytest.raises(MoGe4DInputError, match="out of range"):
        geometry_from_moge(moge, index=2)


def test_official_intrinsics_reproduce_the_released_backprojection():
    h, w = 46, 64                                   # the release's 368x512 aspect, / 8
    g = geometry_from_depth(torch.rand(h, w, 3), torch.rand(h, w) + 1.0, 60.0)
    o = with_official_intrinsics(g)
    # official formula (reference B): (540, 960) shrunk to 46x64, width shrank most -> fx = 1, fy = 1.2778
    fx, fy = 1.0, (960 * h) / (540 * w)
    assert fy == pytest.approx(1.277778, abs=1e-6)
    u = torch.linspace(0, 1, w, dtype=torch.float64)
    v = torch.linspace(0, 1, h, dtype=torch.float64)
    z = g.depth.double()
    torch.testing.assert_close(o.points[..., 0].double(), (u - 0.5)[None] * z / fx, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(o.points[..., 1].double(), (v - 0.5)[:, None] * z / fy, rtol=1e-5, atol=1e-6)
    # the pixel K reproduces the same points through the pixel-centre pinhole
    K = o.K.double()
    j = torch.arange(w, dtype=torch.float64) + 0.5
    torch.testing.assert_close(((j - K[0, 2]) / K[0, 0])[None] * z, o.points[..., 0].double(), rtol=1e-5, atol=1e-6)


def test_previews_are_images_in_unit_range():
    d = torch.tensor([[1.0, 2.0], [4.0, 0.0]])
    p = depth_preview(d, d > 0)
    assert p.shape == (2, 2, 3) and p.min() >= 0 and p.max() <= 1
    assert p[0, 0, 0] == 1.0 and p[1, 1, 0] == 0.0 and p[0, 1, 0] > p[1, 0, 0]   # near brighter, invalid black
    tok = torch.zeros(4, 8)
    tok[3] = 2.0
    hm = token_norm_preview(tok, (2, 2), 20, 30)
    assert hm.shape == (20, 30, 3) and hm[-1, -1, 0] == pytest.approx(1.0) and hm[0, 0, 0] == 0.0


def test_confidence_mask_scales_by_the_maximum():

    c = torch.tensor([[[0.5, 2.0], [float("nan"), 4.0]], [[0.0, 0.0], [0.0, 0.0]]])
    m = confidence_mask(c)
    torch.testing.assert_close(m[0], torch.tensor([[0.125, 0.5], [0.0, 1.0]]))
    assert torch.equal(m[1], torch.zeros(2, 2))
