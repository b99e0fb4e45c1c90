"""Gaussians mode: EWA splats against the analytic 2D Gaussian written here in float64, front-to-back
alpha compositing against the hand formula, and the gsplat selection / fallback logic (gsplat itself
is not installed here: a fake module stands in for it)."""
import logging
import math
import types

import pytest
import torch

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.render import gaussians as G
from moge4d_core.render import render_points
from moge4d_core.render.projection import prepare_frames
from moge4d_core.types import CameraPath, RenderResult

H, W = 24, 32
FX, FY, CX, CY = 40.0, 44.0, 16.0, 12.0


def _camera(T=1):
    K = torch.tensor([[FX, 0.0, CX], [0.0, FY, CY], [0.0, 0.0, 1.0]]).repeat(T, 1, 1)
    return CameraPath(c2w=torch.eye(4).repeat(T, 1, 1), K=K, width=W, height=H)


def analytic_alpha(p, scale, opacity):
    """float64 per-pixel alpha (H,W) of one isotropic Gaussian at camera-space p, 3DGS/EWA model:
    Sigma2 = s^2 J J^T + 0.3 I, alpha = min(0.99, o exp(-d^T Sigma2^-1 d / 2)), cut at alpha < 1/255 and
    outside the box |col - floor(u)|, |row - floor(v)| <= ceil(3 sqrt(lambda_max_3dgs))."""
    x, y, z = (float(c) for c in p)
    u, v = FX * x / z + CX, FY * y / z + CY
    J = torch.tensor([[FX / z, 0.0, -FX * x / z ** 2], [0.0, FY / z, -FY * y / z ** 2]], dtype=torch.float64)
    S = scale ** 2 * J @ J.T + 0.3 * torch.eye(2, dtype=torch.float64)
    Si = torch.linalg.inv(S)
    mid = 0.5 * (S[0, 0] + S[1, 1])
    det = torch.linalg.det(S)
    r = math.ceil(3.0 * math.sqrt(mid + math.sqrt(max(0.1, mid * mid - det))))
    rows, cols = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64),
                                indexing="ij")
    d = torch.stack([cols + 0.5 - u, rows + 0.5 - v], -1)
    q = torch.einsum("hwi,ij,hwj->hw", d, Si, d)
    a = torch.clamp(opacity * torch.exp(-0.5 * q), max=0.99)
    box = ((cols - math.floor(u)).abs() <= r) & ((rows - math.floor(v)).abs() <= r)
    return torch.where((a >= 1.0 / 255.0) & box, a, torch.zeros_like(a))


def test_single_gaussian_profile_matches_analytic_formula():
    p = torch.tensor([0.21, -0.13, 2.0])  # off-axis, so J's third column matters
    scale, opacity = 0.06, 0.8
    color = torch.tensor([1.0, 0.5, 0.25])
    bg = (0.2, 0.3, 0.4)
    res = render_points(p[None], color[None], _camera(), mode="gaussians", gaussian_scale=scale, opacity=opacity,
                        background=bg, backend="torch")
    a = analytic_alpha(p, scale, opacity)
    assert int((a > 0).sum()) > 20  # a genuinely multi-pixel splat
    assert torch.allclose(res.extras["alpha"][0].double(), a, atol=2e-6)
    expect = a[..., None] * color.double() + (1 - a[..., None]) * torch.tensor(bg, dtype=torch.float64)
    assert torch.allclose(res.rgb[0].double(), expect, atol=2e-6)
    # holes: alpha < 0.5; depth: the Gaussian's z where it is not a hole
    assert torch.equal(res.holes[0], (a < 0.5).float())
    assert res.holes[0].sum() < H * W
    assert torch.allclose(res.depth[0].double(), torch.where(a >= 0.5, 2.0, 0.0).double(), atol=1e-6)


def test_two_overlapping_gaussians_composite_front_to_back():
    # the back Gaussian comes first in index order: compositing must follow depth, not index
    back = torch.tensor([0.02, 0.01, 3.0])
    front = torch.tensor([0.05, -0.02, 2.0])
    pts = torch.stack([back, front])
    cols = torch.tensor([[0.1, 0.9, 0.2], [0.8, 0.1, 0.7]])
    scale, opacity = 0.05, 0.5
    bg = torch.tensor([0.3, 0.3, 0.3], dtype=torch.float64)
    res = render_points(pts, cols, _camera(), mode="gaussians", gaussian_scale=scale, opacity=opacity,
                        background=tuple(bg.tolist()), backend="torch")
    a2 = analytic_alpha(back, scale, opacity)[..., None]
    a1 = analytic_alpha(front, scale, opacity)[..., None]
    c1, c2 = cols[1].double(), cols[0].double()
    expect = a1 * c1 + (1 - a1) * a2 * c2 + (1 - a1) * (1 - a2) * bg
    assert int(((a1 > 0.1) & (a2 > 0.1)).sum()) > 5  # they really overlap
    assert torch.allclose(res.rgb[0].double(), expect, atol=2e-6)
    acc = a1 + (1 - a1) * a2
    assert torch.allclose(res.extras["alpha"][0].double(), acc[..., 0], atol=2e-6)
    # expected depth = (a1 z1 + (1-a1) a2 z2) / acc where acc >= 0.5
    ed = (a1[..., 0] * 2.0 + (1 - a1[..., 0]) * a2[..., 0] * 3.0) / acc[..., 0].clamp(min=1e-12)
    assert torch.allclose(res.depth[0].double(), torch.where(acc[..., 0] >= 0.5, ed, 0.0), atol=2e-5)


def test_transmittance_cutoff_and_batches_are_consistent():
    """Many coincident opaque Gaussians: compositing stops before T < 1e-4 (3DGS), and splitting the
    points into depth-ordered batches (carried transmittance) gives the same image."""
    g = torch.Generator().manual_seed(0)
    pts = torch.randn(400, 3, generator=g) * torch.tensor([0.1, 0.08, 0.3]) + torch.tensor([0.0, 0.0, 2.0])
    cols = torch.rand(400, 3, generator=g)
    setup = prepare_frames(pts, cols, _camera())
    args = (setup.points[0], setup.colors, setup.w2c[0], setup.K[0], H, W)
    kw = dict(scale=0.02, opacity=0.9, near=1e-3, background=(0.0, 0.0, 0.0))
    rgb1, d1, a1 = G.rasterize_frame_torch(*args, **kw)
    rgb2, d2, a2 = G.rasterize_frame_torch(*args, pairs_per_batch=50, **kw)  # ~ one Gaussian per batch
    assert torch.allclose(rgb1, rgb2, atol=1e-5) and torch.allclose(a1, a2, atol=1e-5)
    assert torch.allclose(d1, d2, atol=1e-4)
    assert float(a1.max()) <= 1.0 - 1e-4 + 1e-6  # transmittance never goes below 1e-4
    assert float(a1.max()) > 0.99


def test_gaussians_behind_camera_dropped_and_broadcast():
    pts = torch.tensor([[0.0, 0.0, -2.0], [0.0, 0.0, 2.0]])
    cols = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    res = render_points(pts, cols, _camera(2), mode="gaussians", gaussian_scale=0.05)
    assert res.rgb.shape == (2, H, W, 3)
    assert float(res.rgb[..., 0].max()) == 0.0  # the point behind the camera never shows
    assert float(res.rgb[..., 1].max()) > 0.5


# ------------------------------------------------------------------------------------------------
# gsplat selection and fallback (gsplat is not installed: fake modules stand in)
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def fresh_gsplat_state(monkeypatch):
    monkeypatch.setattr(G, "_GSPLAT_STATE", {"failed": False})


def test_gsplat_not_used_on_cpu_and_explicit_request_errors(fresh_gsplat_state):
    assert G.gsplat_module_for(torch.device("cpu"), "auto") is None
    with pytest.raises(MoGe4DInputError, match="gsplat"):
        render_points(torch.tensor([[0.0, 0.0, 2.0]]), torch.ones(1, 3), _camera(), mode="gaussians",
                      backend="gsplat")
    with pytest.raises(MoGe4DInputError, match="triton"):
        render_points(torch.tensor([[0.0, 0.0, 2.0]]), torch.ones(1, 3), _camera(), mode="gaussians",
                      backend="triton")


def test_gsplat_import_failure_falls_back_with_one_notice(fresh_gsplat_state, monkeypatch, caplog):
    def broken():
        raise ImportError("No module named 'gsplat'")
    monkeypatch.setattr(G, "import_gsplat", broken)
    with caplog.at_level(logging.WARNING, logger=G.__name__):
        assert G.gsplat_module_for(torch.device("cuda"), "auto") is None
        assert G.gsplat_module_for(torch.device("cuda"), "auto") is None
    notices = [r for r in caplog.records if "gsplat" in r.getMessage()]
    assert len(notices) == 1 and "\n" not in notices[0].getMessage()
    with pytest.raises(RuntimeError, match="gsplat"):
        G.gsplat_module_for(torch.device("cuda"), "gsplat")


def _fake_gsplat(calls, fail=False):
    def rasterization(**kw):
        calls.append(kw)
        if fail:
            raise RuntimeError("gsplat_cuda.so: cannot open shared object file")
        n_cam = kw["viewmats"].shape[0]
        h, w = kw["height"], kw["width"]
        colors = torch.zeros(n_cam, h, w, 4)
        colors[..., 0] = 0.6
        colors[..., 3] = 5.0  # expected depth channel
        alphas = torch.full((n_cam, h, w, 1), 0.75)
        alphas[:, 0, 0, 0] = 0.25
        return colors, alphas, {}
    return types.SimpleNamespace(rasterization=rasterization)


def test_gsplat_call_arguments_and_outputs():
    calls = []
    c2w = torch.eye(4)
    c2w[:3, 3] = torch.tensor([0.1, 0.2, 0.3])
    w2c = torch.linalg.inv(c2w)
    K = _camera().K[0]
    pts = torch.randn(6, 3)
    cols = torch.rand(6, 3)
    mask = torch.tensor([True, False, True, True, False, True])
    rgb, depth, alpha = G.rasterize_frame_gsplat(_fake_gsplat(calls), pts, cols, w2c, K, H, W, scale=1e-4,
                                                 opacity=0.7, near=0.05, background=(0.0, 0.5, 1.0),
                                                 point_mask=mask)
    kw = calls[0]
    assert torch.equal(kw["means"], pts[mask]) and torch.equal(kw["colors"], cols[mask])
    assert torch.equal(kw["quats"], torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(4, 1))  # (w,x,y,z) identity
    assert torch.equal(kw["scales"], torch.full((4, 3), 1e-4))
    assert torch.equal(kw["opacities"], torch.full((4,), 0.7))
    assert torch.allclose(kw["viewmats"][0], w2c) and torch.equal(kw["Ks"][0], K)
    assert (kw["width"], kw["height"], kw["render_mode"], kw["eps2d"], kw["near_plane"]) == (W, H, "RGB+ED", 0.3, 0.05)
    # background composited as rgb + (1 - alpha) * bg; depth zero where alpha < 0.5
    assert torch.allclose(rgb[1, 1], torch.tensor([0.6, 0.125, 0.25]))
    assert torch.allclose(rgb[0, 0], torch.tensor([0.6, 0.375, 0.75]))
    assert depth[1, 1] == 5.0 and depth[0, 0] == 0.0 and alpha[0, 0] == 0.25


def test_gsplat_kernel_failure_falls_back_to_torch(fresh_gsplat_state, monkeypatch, caplog):
    calls = []
    monkeypatch.setattr(G, "gsplat_module_for", lambda device, backend: _fake_gsplat(calls, fail=True))
    pts = torch.tensor([[0.05, 0.0, 2.0], [0.0, 0.03, 2.5]])
    cols = torch.rand(2, 3)
    setup = prepare_frames(pts, cols, _camera(3))
    with caplog.at_level(logging.WARNING, logger=G.__name__):
        res = G.render_gaussians(setup, backend="auto", scale=0.05, opacity=1.0, near=1e-3,
                                 background=(0.0, 0.0, 0.0))
    assert isinstance(res, RenderResult)
    assert res.extras["backend"] == "torch" and len(calls) == 1  # tried once, then PyTorch for every frame
    assert sum("gsplat" in r.getMessage() for r in caplog.records) == 1
    ref = render_points(pts, cols, _camera(3), mode="gaussians", gaussian_scale=0.05, backend="torch")
    assert torch.equal(res.rgb, ref.rgb) and torch.equal(res.holes, ref.holes)
    with pytest.raises(RuntimeError, match="gsplat"):  # an explicit gsplat request does not fall back
        G.render_gaussians(setup, backend="gsplat", scale=0.05, opacity=1.0, near=1e-3, background=(0, 0, 0))
