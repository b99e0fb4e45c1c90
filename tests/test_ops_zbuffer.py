"""The z-buffer ops: the PyTorch reference on its own, and the Triton kernels equal to it bit for bit.

The PyTorch tests run everywhere. The Triton comparisons need the optional ``triton`` package (installed in
CI) and are skipped without it; on CPU they run in Triton's interpreter (TRITON_INTERPRET=1, set by the
fixture below before any kernel is defined; the kernels are built per interpret mode). On a machine with
CUDA the same comparison runs on the GPU as well.
"""
import math

import pytest
import torch

from moge4d_core.ops import zbuffer as zb
from moge4d_core.render import render_points
from moge4d_core.types import CameraPath



def _triton_imports() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


# the optional GPU dependency (installed in CI): only the Triton comparisons need it
needs_triton = pytest.mark.skipif(not _triton_imports(), reason="needs the triton package")

H, W = 20, 28


@pytest.fixture(scope="module", autouse=True)
def triton_interpreter():
    mp = pytest.MonkeyPatch()
    mp.setenv("TRITON_INTERPRET", "1")
    yield
    mp.undo()


def _scene(T, N, seed, device="cpu", shared_points=False):
    g = torch.Generator().manual_seed(seed)
    tp = 1 if shared_points else T
    pts = torch.empty(tp, N, 3)
    pts[..., 0] = (torch.rand(tp, N, generator=g) - 0.5) * 3.0
    pts[..., 1] = (torch.rand(tp, N, generator=g) - 0.5) * 2.0
    pts[..., 2] = torch.rand(tp, N, generator=g) * 4.0 - 0.5  # some behind the camera / inside near
    pts[:, :5] = torch.tensor([0.0, 0.0, 0.0])  # points at the camera centre (0/0)
    pts[:, 5:10] = pts[:, 10:15]  # exact duplicates: depth ties
    # half of the points back-projected from pixel *borders* of camera 0 (identity pose, no skew
    # effect at y = 0 rows below): their float32 projections land within an ulp of an integer, so any
    # difference in the arithmetic (FMA, approximate division, operation order) flips their pixel
    n_b = N // 2
    half = 0.5 * torch.randint(0, 2, (tp, n_b), generator=g)  # even footprints have half-integer borders
    col = torch.randint(0, W + 1, (tp, n_b), generator=g).float() + half
    row = torch.randint(0, H + 1, (tp, n_b), generator=g).float() + half
    zb_ = 0.5 + torch.rand(tp, n_b, generator=g) * 3.0
    y = (row - 10.0) / 24.0 * zb_
    x = ((col - 14.0) - 0.3 * (y / zb_)) / 25.0 * zb_
    pts[:, 15:15 + n_b] = torch.stack([x, y, zb_], -1)
    w2c = torch.eye(4).repeat(T, 1, 1)
    for t in range(T):
        a = 0.07 * t
        w2c[t, :3, :3] = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
        w2c[t, :3, 3] = torch.tensor([0.05 * t, 0.02 * t, 0.1 * t])
    K = torch.tensor([[25.0, 0.3, 14.0], [0.0, 24.0, 10.0], [0.0, 0.0, 1.0]]).repeat(T, 1, 1)
    cam = zb.pack_cameras(w2c, K)
    mask = torch.rand(T, N, generator=g) > 0.25
    colors = torch.rand(N, 3, generator=g)
    return pts.to(device), cam.to(device), mask.to(device), colors.to(device)


CASES = [
    dict(),
    dict(point_size=2),
    dict(point_size=3, use_mask=True),
    dict(point_size=2, max_point_size=5, scaled=True),
    dict(shared=True, use_mask=True),
]


def _compare(device, case, T=3, N=300, seed=0):
    pts, cam, mask, colors = _scene(T, N, seed, device, shared_points=case.get("shared", False))
    kw = dict(point_size=case.get("point_size", 1), max_point_size=case.get("max_point_size"),
              point_mask=mask if case.get("use_mask") else None,
              ref_depth=pts[0, :, 2].contiguous() if case.get("scaled") else None, near=1e-3)
    k_ref = zb.scatter_keys_torch(pts, cam, H, W, **kw)
    k_tri = zb.scatter_keys_triton(pts, cam, H, W, **kw)
    assert k_tri.dtype == torch.int64 and k_tri.shape == (T, H, W)
    assert torch.equal(k_ref, k_tri)
    filled = (k_ref != zb.EMPTY_KEY).float().mean().item()
    assert 0.05 < filled < 0.98  # a meaningful amount of coverage and holes
    bg = (0.25, 0.5, 0.75)
    out_ref = zb.resolve_keys_torch(k_ref, colors, bg)
    out_tri = zb.resolve_keys_triton(k_tri, colors, bg)
    for a, b in zip(out_ref, out_tri):
        assert a.dtype == b.dtype and torch.equal(a, b)


@needs_triton
@pytest.mark.parametrize("case", CASES)
def test_triton_interpreter_equals_torch(case):
    _compare("cpu", case)


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton)])
def test_keys_pack_depth_and_index(backend):
    """The winning key of a pixel unpacks to the nearest point's float32 depth and index."""
    cam = zb.pack_cameras(torch.eye(4)[None], torch.tensor([[[10.0, 0, 5.0], [0, 10.0, 5.0], [0, 0, 1]]]))
    pts = torch.tensor([[[0.0, 0.0, 2.0], [0.0, 0.0, 1.5], [0.0, 0.0, 1.5], [0.0, 0.0, 3.0]]])
    fn = zb.scatter_keys_torch if backend == "torch" else zb.scatter_keys_triton
    keys = fn(pts, cam, 10, 10)
    k = int(keys[0, 5, 5])
    assert k & 0xFFFFFFFF == 1  # nearest (1.5), lower index of the tie
    assert torch.tensor([k >> 32], dtype=torch.int32).view(torch.float32).item() == 1.5
    assert int((keys != zb.EMPTY_KEY).sum()) == 1


def test_resolve_keys_torch_images():
    """Keys resolve to the nearest point's colour, depth and index; holes get the background, 0 and -1."""
    cam = zb.pack_cameras(torch.eye(4)[None], torch.tensor([[[10.0, 0, 5.0], [0, 10.0, 5.0], [0, 0, 1]]]))
    # points 0 and 1 share pixel (5, 5) (point 1 nearer); point 2 lands on pixel (row 5, col 7): u = 10*0.5/2 + 5
    pts = torch.tensor([[[0.0, 0.0, 2.0], [0.0, 0.0, 1.25], [0.5, 0.0, 2.0]]])
    colors = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    bg = (0.25, 0.5, 0.75)
    rgb, depth, holes, index = zb.resolve_keys_torch(zb.scatter_keys_torch(pts, cam, 10, 10), colors, bg)
    hit = torch.zeros(1, 10, 10, dtype=torch.bool)
    hit[0, 5, 5] = hit[0, 5, 7] = True
    assert torch.equal(holes, (~hit).float())
    assert index[0, 5, 5] == 1 and index[0, 5, 7] == 2 and bool((index[~hit] == -1).all())
    assert depth[0, 5, 5] == 1.25 and depth[0, 5, 7] == 2.0 and bool((depth[~hit] == 0).all())
    assert rgb[0, 5, 5].tolist() == [0.0, 1.0, 0.0] and rgb[0, 5, 7].tolist() == [0.0, 0.0, 1.0]
    assert bool((rgb[~hit] == torch.tensor(bg)).all())


@needs_triton
def test_render_points_triton_backend_matches_torch():
    g = torch.Generator().manual_seed(3)
    pts = torch.randn(2, 200, 3, generator=g) * 0.5 + torch.tensor([0.0, 0.0, 2.0])
    colors = torch.rand(200, 3, generator=g)
    c2w = torch.eye(4).repeat(2, 1, 1)
    c2w[1, 0, 3] = 0.1
    K = torch.tensor([[20.0, 0, 14.0], [0, 20.0, 10.0], [0, 0, 1]]).repeat(2, 1, 1)
    cam = CameraPath(c2w=c2w, K=K, width=W, height=H)
    a = render_points(pts, colors, cam, backend="torch", point_size=2)
    b = render_points(pts, colors, cam, backend="triton", point_size=2)
    assert b.extras["backend"] == "triton"
    for x, y in ((a.rgb, b.rgb), (a.depth, b.depth), (a.holes, b.holes)):
        assert torch.equal(x, y)


@needs_triton
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("case", CASES)
def test_triton_gpu_equals_torch_gpu(case, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    _compare("cuda", case, T=4, N=5000)


def test_workspace_reuse_across_shapes():
    """One TorchWorkspace reused for different frame counts and point counts gives fresh results."""
    pts, cam, mask, _ = _scene(3, 300, seed=5)
    work = zb.TorchWorkspace()
    for t, n in [(3, 300), (1, 300), (2, 120), (3, 300), (3, 40)]:
        p = pts[:t, :n].contiguous()
        got = zb.scatter_keys_torch(p, cam[:t], H, W, point_size=2, work=work).clone()
        assert torch.equal(got, zb.scatter_keys_torch(p, cam[:t], H, W, point_size=2))
