"""Gaussians sized to the point spacing (issue 21 item 3): per-point scales against the analytic EWA splat written
here in float64, ``gaussian_scale="spacing"`` = 0.5 * z0 / f, and a dolly into a point grid: spacing-sized splats
close the gaps that the official fixed-size splats leave."""
import math
import types

import pytest
import torch

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.render import gaussians as G
from moge4d_core.render import render_points, render_trajectories, spacing_scale
from moge4d_core.types import CameraPath, Trajectories

H, W = 24, 32
F, CX, CY = 40.0, 16.0, 12.0


def _K():
    return torch.tensor([[F, 0.0, CX], [0.0, F, CY], [0.0, 0.0, 1.0]])


def _camera(T=1, z=None):
    c2w = torch.eye(4).repeat(T, 1, 1)
    if z is not None:
        c2w[:, 2, 3] = torch.as_tensor(z, dtype=torch.float32)
    return CameraPath(c2w=c2w, K=_K().repeat(T, 1, 1), width=W, height=H)


def analytic_alpha(p, scale, opacity, dilation):
    """float64 (H,W) alpha of one isotropic Gaussian at camera-space p: Sigma2 = s^2 J J^T + dilation I,
    alpha = min(0.99, o exp(-q/2)), cut below 1/255 and outside the 3-sigma box (3DGS's radius)."""
    x, y, z = (float(c) for c in p)
    u, v = F * x / z + CX, F * y / z + CY
    J = torch.tensor([[F / z, 0.0, -F * x / z ** 2], [0.0, F / z, -F * y / z ** 2]], dtype=torch.float64)
    S = scale ** 2 * J @ J.T + dilation * torch.eye(2, dtype=torch.float64)
    Si = torch.linalg.inv(S)
    mid = 0.5 * (S[0, 0] + S[1, 1])
    r = math.ceil(3.0 * math.sqrt(mid + math.sqrt(max(0.1, mid * mid - torch.linalg.det(S)))))
    rows, cols = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64),
                                indexing="ij")
    d = torch.stack([cols + 0.5 - u, rows + 0.5 - v], -1)
    a = torch.clamp(opacity * torch.exp(-0.5 * torch.einsum("hwi,ij,hwj->hw", d, Si, d)), max=0.99)
    box = ((cols - math.floor(u)).abs() <= r) & ((rows - math.floor(v)).abs() <= r)
    return torch.where((a >= 1.0 / 255.0) & box, a, torch.zeros_like(a))


def test_per_point_scales_and_dilation_match_the_analytic_splats():
    pts = torch.tensor([[-0.6, -0.2, 2.0], [0.5, 0.15, 2.5]])      # far apart: no overlap
    scales = torch.tensor([0.05, 0.02])
    res = render_points(pts, torch.ones(2, 3), _camera(), mode="gaussians", gaussian_scale=scales, opacity=0.9,
                        gaussian_dilation=0.1, backend="torch")
    a0, a1 = analytic_alpha(pts[0], 0.05, 0.9, 0.1), analytic_alpha(pts[1], 0.02, 0.9, 0.1)
    assert int(((a0 > 0) & (a1 > 0)).sum()) == 0
    assert int((a0 > 0).sum()) > 3 * int((a1 > 0).sum())            # the sizes really differ
    assert torch.allclose(res.extras["alpha"][0].double(), a0 + a1, atol=2e-6)


def test_spacing_scale_is_half_the_pixel_footprint_and_checked():
    z = torch.tensor([1.0, 2.0, 8.0])
    assert torch.allclose(spacing_scale(z, 40.0), z * 0.5 / 40.0)
    assert torch.allclose(spacing_scale(z, 40.0, fraction=1.0), z / 40.0)
    with pytest.raises(MoGe4DInputError, match="focal"):
        spacing_scale(z, 0.0)
    with pytest.raises(MoGe4DInputError, match=r"\(N,\)"):
        render_points(torch.rand(4, 3) + 1, torch.rand(4, 3), _camera(), mode="gaussians",
                      gaussian_scale=torch.ones(3))
    with pytest.raises(MoGe4DInputError, match="'spacing'"):
        render_trajectories(_grid_scene(), _camera(), mode="gaussians", gaussian_scale="pixel")


def _grid_scene(depth=4.0):
    """One point per pixel of the camera's grid, back-projected at ``depth`` (a wall facing the camera), coloured
    with smooth waves (a photo-like image, not per-pixel noise)."""
    rows, cols = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    z = torch.full((H, W), depth)
    pts = torch.stack([(cols - CX) / F * z, (rows - CY) / F * z, z], -1).reshape(1, -1, 3)
    colors = torch.stack([0.5 + 0.4 * torch.sin(cols / 3), 0.5 + 0.4 * torch.cos(rows / 4), cols / W], -1)
    return Trajectories(points=pts, colors=colors.reshape(-1, 3), height=H, width=W, K=_K())


def test_spacing_splats_close_the_gaps_of_a_dolly_and_keep_the_first_view():
    scene = _grid_scene(4.0)
    first = render_trajectories(scene, _camera(), mode="gaussians", gaussian_scale="spacing", backend="torch")
    assert float(first.holes.sum()) == 0
    # same view as the grid: the image stays sharp (PSNR against the colours above 30 dB)
    mse = float(((first.rgb[0] - scene.colors.view(H, W, 3)) ** 2).mean())
    assert 10 * math.log10(1 / mse) > 30
    # walk to half the distance: the grid's points are now 2 px apart on screen, the centre 16x12 pixels see the wall
    near = _camera(z=2.0)
    centre = (slice(H // 4, 3 * H // 4), slice(W // 4, 3 * W // 4))
    fixed = render_trajectories(scene, near, mode="gaussians", backend="torch")              # official 1e-4
    sized = render_trajectories(scene, near, mode="gaussians", gaussian_scale="spacing", backend="torch")
    assert float(fixed.holes[0][centre].mean()) > 0.5                # scattered dots
    assert float(sized.holes[0][centre].sum()) == 0                  # touching splats
    points = render_trajectories(scene, near, mode="points")
    assert float(points.holes[0][centre].mean()) > 0.5


def test_spacing_uses_the_camera_focal_when_the_scene_has_no_K():
    scene = _grid_scene(4.0)
    no_k = Trajectories(points=scene.points, colors=scene.colors, height=H, width=W)
    a = render_trajectories(scene, _camera(z=2.0), mode="gaussians", gaussian_scale="spacing", backend="torch")
    b = render_trajectories(no_k, _camera(z=2.0), mode="gaussians", gaussian_scale="spacing", backend="torch")
    assert torch.equal(a.rgb, b.rgb)


def test_gsplat_gets_the_per_point_scales_and_the_dilation():
    calls = []

    def rasterization(**kw):
        calls.append(kw)
        n, h, w = kw["viewmats"].shape[0], kw["height"], kw["width"]
        return torch.zeros(n, h, w, 4), torch.ones(n, h, w, 1), {}

    pts = torch.rand(5, 3) + 1
    mask = torch.tensor([True, False, True, True, False])
    scales = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5])
    G.rasterize_frame_gsplat(types.SimpleNamespace(rasterization=rasterization), pts, torch.rand(5, 3),
                             torch.eye(4), _K(), H, W, scale=scales, opacity=1.0, near=0.01,
                             background=(0.0, 0.0, 0.0), point_mask=mask, dilation=0.1)
    assert torch.equal(calls[0]["scales"], scales[mask][:, None].expand(3, 3))
    assert calls[0]["eps2d"] == 0.1
