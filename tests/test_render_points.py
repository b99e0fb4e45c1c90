"""Points mode of the renderer (hard z-buffer) against a brute-force per-point Python loop written here,
plus the API contract: broadcasting, errors, progress, holes, footprints."""
import math

import pytest
import torch

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.ops import zbuffer as zb
from moge4d_core.render import render_points, render_trajectories
from moge4d_core.types import CameraPath, Trajectories

H, W = 24, 32


def _K(fx=30.0, fy=28.0, cx=16.0, cy=12.0, skew=0.0):
    return torch.tensor([[fx, skew, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=torch.float64)


def _rot(ax, ay, az):
    cx, sx, cy, sy, cz, sz = math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay), math.cos(az), math.sin(az)
    rx = torch.tensor([[1, 0, 0], [0, cx, -sx], [0, sx, cx]], dtype=torch.float64)
    ry = torch.tensor([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]], dtype=torch.float64)
    rz = torch.tensor([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]], dtype=torch.float64)
    return rz @ ry @ rx


def _camera(T, skew=0.0):
    c2w = torch.eye(4, dtype=torch.float64).repeat(T, 1, 1)
    for t in range(T):
        c2w[t, :3, :3] = _rot(0.05 * t, -0.08 * t, 0.03 * t)
        c2w[t, :3, 3] = torch.tensor([0.1 * t, -0.05 * t, 0.2 * t])
    K = _K(skew=skew).repeat(T, 1, 1)
    return CameraPath(c2w=c2w.float(), K=K.float(), width=W, height=H)


def _project64(p, c2w, K):
    """float64 camera-space point and pixel coordinates (u, v) of world point p (3,)."""
    w2c = torch.linalg.inv(c2w.double())
    pc = w2c[:3, :3] @ p.double() + w2c[:3, 3]
    x, y, z = pc.tolist()
    K = K.double()
    u = (K[0, 0] * x + K[0, 1] * y) / z + K[0, 2]
    v = K[1, 1] * y / z + K[1, 2]
    return z, float(u), float(v)


def brute_force(points, colors, cam, point_size=1, depth_scaled=False, max_size=None, near=1e-3, bg=(0, 0, 0)):
    """Per-point loop: keep the nearest point per pixel (strictly nearer wins, so ties keep the lower index)."""
    T = max(points.shape[0], cam.num_frames)
    max_size = max_size or 4 * point_size
    rgb = torch.tensor(bg, dtype=torch.float64).repeat(T, H, W, 1)
    depth = torch.zeros(T, H, W, dtype=torch.float64)
    holes = torch.ones(T, H, W)
    best = [[[math.inf] * W for _ in range(H)] for _ in range(T)]
    for t in range(T):
        pts = points[t if points.shape[0] > 1 else 0]
        c2w = cam.c2w[t if cam.num_frames > 1 else 0]
        K = cam.K[t if cam.num_frames > 1 else 0]
        for n in range(pts.shape[0]):
            z, u, v = _project64(pts[n], c2w, K)
            if z <= near:
                continue
            k = point_size
            if depth_scaled:
                k = int(min(max(math.floor(point_size * float(points[0, n, 2]) / z + 0.5), 1), max_size))
            c_start = math.floor(u + 0.5 - k / 2)
            r_start = math.floor(v + 0.5 - k / 2)
            for r in range(r_start, r_start + k):
                for c in range(c_start, c_start + k):
                    if 0 <= r < H and 0 <= c < W and z < best[t][r][c]:
                        best[t][r][c] = z
                        rgb[t, r, c] = colors[n].double()
                        depth[t, r, c] = z
                        holes[t, r, c] = 0.0
    return rgb, depth, holes


def random_scene(T, N, seed, cam):
    """Random points in front of (and a few behind) the cameras, avoiding projections within 1e-3 px of a
    pixel border in any frame so float32 vs float64 rounding cannot change the pixel."""
    g = torch.Generator().manual_seed(seed)
    pts = torch.empty(T, N, 3)
    pts[..., 0] = (torch.rand(T, N, generator=g) - 0.5) * 3.0
    pts[..., 1] = (torch.rand(T, N, generator=g) - 0.5) * 2.4
    pts[..., 2] = 0.5 + torch.rand(T, N, generator=g) * 3.0
    pts[:, : N // 10, 2] *= -1  # some behind the first camera
    keep = torch.ones(N, dtype=torch.bool)
    for n in range(N):
        for t in range(T):
            z, u, v = _project64(pts[t, n], cam.c2w[t], cam.K[t])
            for q in (u, v, u - 0.5, v - 0.5, u + 0.5, v + 0.5):  # k=1 and k=2/3 footprint borders
                if abs(q - round(q)) < 1e-3:
                    keep[n] = False
    colors = torch.rand(N, 3, generator=g)
    return pts[:, keep].contiguous(), colors[keep].contiguous()


@pytest.mark.parametrize("point_size,depth_scaled", [(1, False), (2, False), (3, False), (1, True)])
def test_zbuffer_matches_brute_force(point_size, depth_scaled):
    T = 3
    cam = _camera(T, skew=0.4)
    pts, colors = random_scene(T, 160, seed=point_size + 10 * depth_scaled, cam=cam)
    res = render_points(pts, colors, cam, point_size=point_size, depth_scaled_size=depth_scaled,
                        background=(0.1, 0.2, 0.3), backend="torch")
    rgb, depth, holes = brute_force(pts, colors, cam, point_size, depth_scaled, bg=(0.1, 0.2, 0.3))
    assert res.rgb.shape == (T, H, W, 3) and res.depth.shape == (T, H, W) and res.holes.shape == (T, H, W)
    assert torch.equal(res.holes, holes)
    assert torch.allclose(res.rgb.double(), rgb, atol=1e-7)
    assert torch.allclose(res.depth.double(), depth, rtol=1e-5, atol=1e-6)
    assert 0.05 < float(holes.mean()) < 0.95  # the scene is neither empty nor full
    idx = res.extras["point_index"]
    assert torch.equal(idx < 0, holes.bool())


def test_frame_batching_does_not_change_the_result(monkeypatch):
    from moge4d_core.render import points as P
    T = 3
    cam = _camera(T)
    pts, colors = random_scene(T, 60, seed=7, cam=cam)
    whole = render_points(pts, colors, cam, point_size=2)
    monkeypatch.setattr(P, "CPU_POINTS_PER_BATCH", pts.shape[1] * 2)  # 2 frames, then 1
    batched = render_points(pts, colors, cam, point_size=2)
    for a, b in ((whole.rgb, batched.rgb), (whole.depth, batched.depth), (whole.holes, batched.holes)):
        assert torch.equal(a, b)


def test_zbuffer_driver_returns_a_render_result():
    """The z-buffer driver itself returns the typed result the API hands on (no positional tuple)."""
    from moge4d_core.render import points as P
    from moge4d_core.render.projection import prepare_frames
    from moge4d_core.types import RenderResult
    cam = _camera(2)
    pts, colors = random_scene(2, 40, seed=3, cam=cam)
    res = P.render_points_zbuffer(prepare_frames(pts, colors, cam, None), backend="torch")
    assert isinstance(res, RenderResult) and res.extras["backend"] == "torch"
    assert res.rgb.shape == (2, H, W, 3) and res.extras["point_index"].dtype == torch.int32
    assert torch.equal(res.extras["point_index"] < 0, res.holes.bool())


def test_black_point_is_not_a_hole_and_ties_keep_lower_index():
    cam = _camera(1)
    K = cam.K[0].double()
    # two points at exactly the same place (tie) and a black point elsewhere; all on pixel centres
    def at(col, row, z):
        return [(col + 0.5 - K[0, 2].item()) / K[0, 0].item() * z, (row + 0.5 - K[1, 2].item()) / K[1, 1].item() * z, z]
    pts = torch.tensor([at(5, 6, 2.0), at(5, 6, 2.0), at(20, 10, 1.5)], dtype=torch.float32)
    colors = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.0, 0.0, 0.0]])
    res = render_points(pts, colors, cam, background=(1.0, 1.0, 1.0))
    assert res.holes[0, 10, 20] == 0.0  # black point: not a hole
    assert torch.equal(res.rgb[0, 10, 20], torch.zeros(3))
    assert torch.equal(res.rgb[0, 6, 5], colors[0])  # tie: lower index wins
    assert res.holes.sum() == H * W - 2
    assert torch.equal(res.rgb[0, 0, 0], torch.ones(3))  # background in holes
    assert res.depth[0, 0, 0] == 0.0 and abs(float(res.depth[0, 10, 20]) - 1.5) < 1e-6


def test_points_behind_camera_and_outside_are_dropped():
    cam = _camera(1)
    pts = torch.tensor([[0.0, 0.0, -1.0],   # behind: would project to the principal point
                        [0.0, 0.0, 5e-4],   # in front but closer than near = 1e-3
                        [0.0, 0.0, 0.0],    # at the camera centre (0/0)
                        [50.0, 0.0, 1.0],   # far right of the image
                        [0.01, 0.01, 2.0]])  # the only visible one
    colors = torch.rand(5, 3)
    res = render_points(pts, colors, cam)
    assert float(res.holes.sum()) == H * W - 1
    _, u, v = _project64(pts[4], cam.c2w[0], cam.K[0])
    assert res.holes[0, math.floor(v), math.floor(u)] == 0.0
    assert res.extras["point_index"][0, math.floor(v), math.floor(u)] == 4
    # with a larger near plane the visible point goes too
    res2 = render_points(pts, colors, cam, near=3.0)
    assert float(res2.holes.sum()) == H * W


def test_footprint_block_position():
    cam = _camera(1)
    K = cam.K[0].double()
    z = 2.0
    u, v = 10.3, 7.8  # inside pixel (row 7, col 10), right of / below its centre... for u: left of centre+0.5
    p = torch.tensor([[(u - K[0, 2].item()) / K[0, 0].item() * z, (v - K[1, 2].item()) / K[1, 1].item() * z, z]],
                     dtype=torch.float32)
    c = torch.tensor([[0.5, 0.5, 0.5]])
    for k, cols, rows in [(1, [10], [7]), (2, [9, 10], [7, 8]), (3, [9, 10, 11], [6, 7, 8])]:
        res = render_points(p, c, cam, point_size=k)
        covered = (res.holes[0] == 0).nonzero().tolist()
        assert sorted(covered) == sorted([r, cc] for r in rows for cc in cols), k


def test_broadcasting_and_mismatch():
    cam3 = _camera(3)
    g = torch.Generator().manual_seed(0)
    pts = torch.randn(50, 3, generator=g) * 0.3 + torch.tensor([0.0, 0.0, 2.0])
    colors = torch.rand(50, 3, generator=g)
    r = render_points(pts, colors, cam3)  # (N,3) shared by 3 cameras
    assert r.rgb.shape == (3, H, W, 3)
    for t in range(3):
        one = CameraPath(c2w=cam3.c2w[t:t + 1], K=cam3.K[t:t + 1], width=W, height=H)
        assert torch.equal(render_points(pts, colors, one).rgb[0], r.rgb[t])
    moving = torch.stack([pts + 0.05 * t for t in range(3)])
    cam1 = CameraPath(c2w=cam3.c2w[:1], K=cam3.K[:1], width=W, height=H)
    r2 = render_points(moving, colors, cam1)  # 3 point frames, one camera
    assert r2.rgb.shape == (3, H, W, 3)
    assert torch.equal(r2.rgb[2], render_points(moving[2], colors, cam1).rgb[0])
    with pytest.raises(MoGe4DInputError, match="frames"):
        render_points(moving[:2], colors, cam3)
    with pytest.raises(MoGe4DInputError, match="colors"):
        render_points(pts, colors[:10], cam3)
    with pytest.raises(MoGe4DInputError, match="mode"):
        render_points(pts, colors, cam3, mode="mesh")
    with pytest.raises(MoGe4DInputError, match="gsplat"):
        render_points(pts, colors, cam3, backend="gsplat")  # gsplat is for Gaussians
    if not zb.triton_usable_on("cpu"):  # (usable on CPU only under TRITON_INTERPRET=1)
        with pytest.raises(MoGe4DInputError, match="triton"):
            render_points(pts, colors, cam3, backend="triton")


class _Stop(Exception):
    pass


@pytest.mark.parametrize("mode", ["points", "gaussians"])
def test_progress_called_per_frame_and_exception_propagates(mode):
    cam = _camera(4)
    pts = torch.randn(30, 3) * 0.2 + torch.tensor([0.0, 0.0, 2.0])
    colors = torch.rand(30, 3)
    calls = []
    render_points(pts, colors, cam, mode=mode, progress=lambda i, n: calls.append((i, n)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]

    def cancel(i, n):
        if i == 2:
            raise _Stop()
    with pytest.raises(_Stop):
        render_points(pts, colors, cam, mode=mode, progress=cancel)


def test_render_trajectories_and_visibility():
    cam = _camera(2)
    h, w = 4, 5
    pts = torch.zeros(2, h * w, 3)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pts[..., 0] = (xs.flatten() - 2) * 0.2
    pts[..., 1] = (ys.flatten() - 2) * 0.2
    pts[..., 2] = 2.0
    colors = torch.rand(h * w, 3)
    vis = torch.ones(2, h * w, dtype=torch.bool)
    vis[1, :10] = False
    traj = Trajectories(points=pts, colors=colors, height=h, width=w, visibility=vis)
    a = render_trajectories(traj, cam)
    b = render_trajectories(traj, cam, use_visibility=True)
    assert torch.equal(a.rgb[0], b.rgb[0])
    idx = a.extras["point_index"][1]
    removed = int(((idx >= 0) & (idx < 10)).sum())  # pixels that showed a now-invisible point
    assert removed > 0
    assert float(b.holes[1].sum()) == float(a.holes[1].sum()) + removed
