"""Geometry against independent float64 formulas written here (reference section B)."""
import math

import pytest
import torch

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.geometry import intrinsics as I
from moge4d_core.geometry.backproject import backproject_depth, backproject_official
from moge4d_core.geometry.normalization import (apply_motion, denormalize_motion, normalize_motion,
                                                official_spec, real_k_spec, sanitize_depth)

f64 = torch.float64


def test_pseudo_focal_matches_reference_table():
    # reference B table: (H_ori, W_ori) at HxW -> (fx, fy)
    assert I.official_pseudo_focal(368, 512, 720, 960) == pytest.approx((1.043478, 1.0), abs=1e-6)
    assert I.official_pseudo_focal(368, 512, 540, 960) == pytest.approx((1.0, 1.277778), abs=1e-6)
    assert I.official_pseudo_focal(384, 512, 540, 960) == pytest.approx((1.0, 1.333333), abs=1e-6)


def test_fov_focal_and_K_roundtrip():
    for fov, size in [(60.0, 512), (90.0, 368), (10.0, 64), (170.0, 100)]:
        f = I.focal_from_fov(fov, size)
        assert f == pytest.approx(size / 2 / math.tan(math.radians(fov) / 2), rel=1e-12)
        assert I.fov_from_focal(f, size) == pytest.approx(fov, rel=1e-12)
    K = I.K_from_fov(90.0, 512, 368, dtype=f64)
    assert K[0, 0] == pytest.approx(256.0) and K[1, 1] == pytest.approx(256.0)
    assert (K[0, 2], K[1, 2]) == (256.0, 184.0)
    Kn = I.normalize_K(K, 512, 368)
    assert Kn[0, 0] == pytest.approx(0.5) and Kn[1, 1] == pytest.approx(256 / 368)
    assert Kn[0, 2] == pytest.approx(0.5) and Kn[1, 2] == pytest.approx(0.5)
    assert torch.allclose(I.denormalize_K(Kn, 512, 368), K)
    batched = torch.stack([K, 2 * K])
    assert torch.allclose(I.denormalize_K(I.normalize_K(batched, 512, 368), 512, 368), batched)


@pytest.mark.parametrize("fov", [0.0, -5.0, 180.0, 200.0, float("nan")])
def test_bad_fov_is_rejected(fov):
    with pytest.raises(MoGe4DInputError, match="field of view"):
        I.K_from_fov(fov, 64, 64)


def test_backprojection_pixel_centres_against_loop():
    h, w = 4, 6
    depth = torch.rand(h, w, dtype=f64) * 5 + 1
    K = torch.tensor([[50.0, 0, 3.1], [0, 40.0, 2.2], [0, 0, 1]], dtype=f64)
    pts = backproject_depth(depth, K)
    assert pts.shape == (h, w, 3)
    for i in range(h):
        for j in range(w):
            z = depth[i, j]
            expect = torch.stack([(j + 0.5 - 3.1) * z / 50.0, (i + 0.5 - 2.2) * z / 40.0, z])
            assert torch.allclose(pts[i, j], expect, atol=1e-12)
    # batched with per-item K
    pts2 = backproject_depth(torch.stack([depth, 2 * depth]), torch.stack([K, K]))
    assert torch.allclose(pts2[1], 2 * pts, atol=1e-12)


def test_backprojection_reproduces_a_plane():
    # a fronto-parallel plane at z = 3 seen with K from a 60 degree fov: x spans +-z*tan(30deg) at the borders
    w, h = 64, 48
    K = I.K_from_fov(60.0, w, h, dtype=f64)
    pts = backproject_depth(torch.full((h, w), 3.0, dtype=f64), K)
    half = 3.0 * math.tan(math.radians(30))
    assert pts[0, 0, 0] == pytest.approx(-half * (w - 1) / w, rel=1e-9)
    assert pts[0, -1, 0] == pytest.approx(half * (w - 1) / w, rel=1e-9)
    assert torch.all(pts[..., 2] == 3.0)


def test_official_backprojection_uses_linspace_end_points():
    depth = torch.full((3, 5), 2.0, dtype=f64)
    pts = backproject_official(depth, 1.0, 1.2777777)
    assert pts[0, 0, 0] == pytest.approx(-0.5 * 2.0) and pts[0, -1, 0] == pytest.approx(0.5 * 2.0)
    assert pts[0, 0, 1] == pytest.approx(-0.5 * 2.0 / 1.2777777) and pts[-1, 0, 1] == pytest.approx(0.5 * 2.0 / 1.2777777)


def test_sanitize_depth_official_rule():
    z = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -2.0, 1e-6, 3.0], dtype=f64)
    assert sanitize_depth(z).tolist() == [1.0, 1.0, 1.0, 1.0, -2.0, 1e-6, 3.0]


def _hand_normalise(P, fx, fy):
    """Reference B written out: dx*fx/z0, dy*fy/z0, dz/z0, z0 sanitised."""
    out = torch.zeros_like(P)
    z0 = P[0, :, 2].clone()
    z0[~torch.isfinite(z0) | (z0 == 0)] = 1.0
    for t in range(P.shape[0]):
        d = P[t] - P[0]
        out[t, :, 0] = d[:, 0] * fx / z0
        out[t, :, 1] = d[:, 1] * fy / z0
        out[t, :, 2] = d[:, 2] / z0
    return out


def test_normalisation_official_against_hand_formula():
    P = torch.randn(5, 30, 3, dtype=f64)
    P[..., 2] = P[..., 2].abs() + 0.5
    P[0, 3, 2] = 0.0  # zero depth -> 1.0
    spec = official_spec(368, 512)
    assert spec.fx == pytest.approx(1.0434782608695652) and spec.fy == 1.0
    got = normalize_motion(P, spec)
    assert torch.allclose(got, _hand_normalise(P, 1.0434782608695652, 1.0), atol=1e-12)
    assert torch.all(got[0] == 0)


def test_normalisation_real_k_and_roundtrip():
    K = torch.tensor([[400.0, 0, 256], [0, 380.0, 184], [0, 0, 1]])
    spec = real_k_spec(K, 512, 368)
    assert spec.fx == pytest.approx(400 / 512) and spec.fy == pytest.approx(380 / 368)
    P = torch.randn(7, 6, 8, 3, dtype=f64)  # (T, H, W, 3)
    P[..., 2] = P[..., 2].abs() + 0.1
    dhat = normalize_motion(P, spec)
    back = apply_motion(dhat, P[0], spec)
    assert torch.allclose(back, P, atol=1e-6)
    assert torch.equal(back[0], P[0])
    # batched with the time axis second
    Pb = torch.stack([P, P * 2])
    dhat_b = normalize_motion(Pb, spec, time_dim=1)
    assert torch.allclose(dhat_b[0], dhat, atol=1e-12)
    assert torch.allclose(apply_motion(dhat_b, Pb[:, 0], spec, time_dim=1), Pb, atol=1e-6)


def test_denormalize_matches_paper_formula():
    # paper: dx = dx~ * z / alpha_x, dy = dy~ * z / alpha_y, dz = dz~ * z
    spec = official_spec(368, 512)
    p0 = torch.rand(10, 3, dtype=f64) + 1
    dhat = torch.randn(4, 10, 3, dtype=f64)
    d = denormalize_motion(dhat, p0, spec)
    z = p0[:, 2]
    assert torch.allclose(d[..., 0], dhat[..., 0] * z / spec.fx)
    assert torch.allclose(d[..., 1], dhat[..., 1] * z / spec.fy)
    assert torch.allclose(d[..., 2], dhat[..., 2] * z)


def test_denormalize_rejects_mismatched_first_frame():
    spec = official_spec(368, 512)
    with pytest.raises(MoGe4DInputError, match="first-frame points"):
        denormalize_motion(torch.zeros(4, 10, 3), torch.zeros(9, 3), spec)
    with pytest.raises(MoGe4DInputError, match="xyz"):
        normalize_motion(torch.zeros(4, 10, 2), spec)


def test_motion_scale_is_the_denormalisation_factor_and_checks_its_input():
    from moge4d_core.geometry.normalization import motion_scale

    g = torch.Generator().manual_seed(1)
    points0 = torch.rand(5, 7, 3, generator=g) * 4 + 0.5
    points0[0, 0, 2] = float("nan")                                     # sanitised like the de-normaliser does
    spec = official_spec(5, 7)
    delta = torch.randn(3, 5, 7, 3, generator=g)
    torch.testing.assert_close(delta * motion_scale(points0, spec), denormalize_motion(delta, points0, spec))
    with pytest.raises(MoGe4DInputError, match="first-frame points"):
        motion_scale(points0[..., :2], spec)
