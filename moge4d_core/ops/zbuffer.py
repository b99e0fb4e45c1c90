"""Hard z-buffer point splatting: a Triton kernel beside its plain-PyTorch reference.

Both sides compute exactly the same thing, bit for bit (tests compare them with ``==`` under
``TRITON_INTERPRET=1`` on CPU and on a GPU when one is available):

1. **scatter** -- every point ``n`` of frame ``t`` is moved into camera ``t``
   (``p_c = R p + t``, the rows of a world-to-camera matrix), dropped when ``z_c <= near``, projected with
   ``u = fx * (x_c / z_c) + skew * (y_c / z_c) + cx``, ``v = fy * (y_c / z_c) + cy`` and lands on the
   pixel ``col = floor(u)``, ``row = floor(v)`` (pixel centres at integer + 0.5, the top-left pixel covers
   ``[0,1) x [0,1)``). With a ``k x k`` footprint it covers the ``k x k`` block of pixels whose centres are
   nearest to ``(u, v)``: columns ``floor(u + 0.5 - k/2) + [0, k)``, same for rows (``k = 1`` is
   ``floor(u)``). Each covered pixel receives the packed 64-bit key
   ``(float32_bits(z_c) << 32) | n``; for positive floats the IEEE bits sort like the numbers, so the
   per-pixel minimum key is the nearest point, and among points at exactly the same float32 depth the one
   with the smallest index wins (deterministic, independent of scheduling).
   PyTorch: ``scatter_reduce_(amin)``; Triton: one ``tl.atomic_min`` on int64 per covered pixel.
2. **resolve** -- per pixel, a key that is still ``EMPTY_KEY`` is a hole (nothing landed); otherwise the
   point index and its depth are unpacked from the key and its colour is gathered.

The arithmetic is written as separate float32 operations in a fixed order (no FMA contraction: the
Triton launch passes ``enable_fp_fusion=False`` and uses IEEE ``div_rn``), which is what makes the two
sides equal exactly. No library offers a packed-key z-buffer splatter (pytorch3d's ``rasterize_points``
is a source build and keeps K points per pixel), hence this module.

Camera parameters travel as one float32 row per frame, ``cam (T, 17)``:
``[r00 r01 r02 t0 r10 r11 r12 t1 r20 r21 r22 t2 fx skew cx fy cy]`` (world-to-camera 3x4, row-major,
then the pixel intrinsics), see :func:`pack_cameras`.

Triton is imported lazily (``import triton`` happens inside :func:`triton_available` and the
``*_triton`` functions), so importing this module never needs Triton or CUDA.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

EMPTY_KEY = torch.iinfo(torch.int64).max  # key of a pixel no point landed on
CAM_FIELDS = 17


# ----------------------------------------------------------------------------------------------
# shared helpers
# ----------------------------------------------------------------------------------------------
def pack_cameras(w2c: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """World-to-camera ``w2c (T,3,4)`` or ``(T,4,4)`` and pixel intrinsics ``K (T,3,3)`` -> ``cam (T,17)`` float32.

    The intrinsics' last row is assumed to be ``(0, 0, 1)`` (a pinhole camera with optional skew).
    """
    T = w2c.shape[0]
    rt = w2c[:, :3, :4].reshape(T, 12)
    kk = torch.stack([K[:, 0, 0], K[:, 0, 1], K[:, 0, 2], K[:, 1, 1], K[:, 1, 2]], dim=1)
    return torch.cat([rt, kk], dim=1).to(torch.float32).contiguous()


def new_key_buffer(frames: int, height: int, width: int, device) -> torch.Tensor:
    """A ``(frames, height, width)`` int64 buffer filled with :data:`EMPTY_KEY`."""
    return torch.full((frames, height, width), EMPTY_KEY, dtype=torch.int64, device=device)


def _check_args(points: torch.Tensor, cam: torch.Tensor, keys_shape: tuple, point_size: int,
                max_point_size: int, ref_depth: Optional[torch.Tensor], point_mask: Optional[torch.Tensor]) -> None:
    assert points.ndim == 3 and points.shape[-1] == 3 and points.dtype == torch.float32, points.shape
    assert cam.ndim == 2 and cam.shape[1] == CAM_FIELDS and cam.dtype == torch.float32
    assert len(keys_shape) == 3 and keys_shape[0] == cam.shape[0]
    assert points.shape[0] in (1, cam.shape[0]), "points must have 1 frame or one per camera"
    assert points.shape[1] < 2 ** 31, "point index must fit in the low 32 bits of the key"
    assert (keys_shape[1] + 2) * (keys_shape[2] + 2) <= 2 ** 24, "image too large (pixel index in float32)"
    assert point_size >= 1 and max_point_size >= point_size
    if ref_depth is not None:
        assert ref_depth.shape == (points.shape[1],) and ref_depth.dtype == torch.float32
    if point_mask is not None:
        assert point_mask.ndim == 2 and point_mask.shape[1] == points.shape[1]
        assert point_mask.shape[0] in (1, cam.shape[0]) and point_mask.dtype == torch.bool


# ----------------------------------------------------------------------------------------------
# PyTorch reference (also the CPU backend)
# ----------------------------------------------------------------------------------------------
class TorchWorkspace:
    """Reusable scratch buffers for the PyTorch z-buffer.

    On CPU a fresh multi-megabyte tensor costs page faults on first touch (several times the cost of the
    arithmetic), so the PyTorch path writes every intermediate into buffers that live as long as this
    object (one per render call). Not thread-safe; one workspace per concurrent render.
    """

    def __init__(self) -> None:
        self._bufs: dict = {}
        self.key_index_for = None  # (data_ptr, N, frames) of the key scratch whose low words hold point indices

    def get(self, name: str, shape: tuple, dtype: torch.dtype, device) -> torch.Tensor:
        numel = 1
        for s in shape:
            numel *= int(s)
        buf = self._bufs.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype or buf.device != torch.device(device):
            buf = torch.empty(max(numel, 1), dtype=dtype, device=device)
            self._bufs[name] = buf
        return buf[:numel].view(shape)


def scatter_keys_torch(points: torch.Tensor, cam: torch.Tensor, height: int, width: int, *, near: float = 1e-3,
                       point_size: int = 1, max_point_size: Optional[int] = None,
                       ref_depth: Optional[torch.Tensor] = None, point_mask: Optional[torch.Tensor] = None,
                       work: Optional[TorchWorkspace] = None) -> torch.Tensor:
    """Splat the packed depth/index keys of all points; returns ``keys (Tc,H,W)`` int64.

    points (Tp,N,3) float32 world coordinates, Tp = 1 (shared by all frames) or Tc;
    cam (Tc,17) float32 from :func:`pack_cameras`;
    point_size k: footprint side in pixels; ref_depth (N,) float32 or None: when given the footprint is
    depth-scaled, side ``clamp(floor(ref_depth * k / z_c + 0.5), 1, max_point_size)``;
    point_mask (Tm,N) bool or None (Tm = 1 or Tc): False drops the point in that frame.
    The result is a view into ``work`` (valid until the workspace is used again); pass no ``work`` to get
    a tensor of its own.

    Implementation: keys go into a buffer padded by one pixel on each side; coordinates are clamped
    to [-1, W] x [-1, H] so points outside the image land in the border, which is thrown away (this
    replaces per-point bounds masks and compaction). The flat pixel index is formed in float32, exact
    because each sub-batch of frames keeps ``frames * (H+2) * (W+2) <= 2**24``.
    """
    if max_point_size is None:
        max_point_size = point_size
    Tc, H, W = cam.shape[0], int(height), int(width)
    keys_shape = (Tc, H, W)
    _check_args(points, cam, keys_shape, point_size, max_point_size, ref_depth, point_mask)
    own = work is None
    work = work or TorchWorkspace()
    padded = (H + 2) * (W + 2)
    sub = max(1, (2 ** 24) // padded)  # frames per sub-batch for an exact float32 pixel index
    buf = work.get("keys", (Tc, H + 2, W + 2), torch.int64, points.device)
    buf.fill_(EMPTY_KEY)
    for s in range(0, Tc, sub):
        e = min(Tc, s + sub)
        pts = points if points.shape[0] == 1 else points[s:e]
        msk = None if point_mask is None else (point_mask if point_mask.shape[0] == 1 else point_mask[s:e])
        _scatter_padded_torch(pts, cam[s:e], buf[s:e], near, point_size, max_point_size, ref_depth, msk, work)
    keys = buf[:, 1:H + 1, 1:W + 1]
    return keys.clone() if own else keys


def _scatter_padded_torch(points, cam, buf, near, point_size, max_point_size, ref_depth, point_mask, work):
    Tc, Hp, Wp = buf.shape
    H, W = Hp - 2, Wp - 2
    N = points.shape[1]
    dev = points.device
    f32 = torch.float32
    shape = (Tc, N)

    def fbuf(name):
        return work.get(name, shape, f32, dev)

    if Tc == 1 and dev.type == "cpu":
        c = cam[0].tolist()  # python scalars: the same float32 values, cheaper broadcasting
    else:
        c = [cam[:, i:i + 1] for i in range(CAM_FIELDS)]  # (Tc,1) columns broadcast over points
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    tmp = fbuf("tmp")
    xc, yc, zc = fbuf("xc"), fbuf("yc"), fbuf("zc")
    for out, i in ((xc, 0), (yc, 4), (zc, 8)):  # p_c = ((r0*x + r1*y) + r2*z) + t, one rounding per op
        torch.mul(x, c[i], out=out)
        out.add_(torch.mul(y, c[i + 1], out=tmp))
        out.add_(torch.mul(z, c[i + 2], out=tmp))
        out.add_(c[i + 3])
    dropped = torch.le(zc, torch.tensor(near, dtype=f32, device=dev), out=work.get("drop", shape, torch.bool, dev))
    if point_mask is not None:
        dropped.logical_or_(~point_mask)
    zs = torch.where(dropped, torch.ones((), dtype=f32, device=dev), zc, out=fbuf("zs"))  # finite for dropped
    xc.div_(zs)  # x / z
    yc.div_(zs)  # y / z
    u, v = fbuf("u"), fbuf("v")
    torch.mul(xc, c[12], out=u)
    if bool((cam[:, 13] != 0).any()):  # fx*xn + skew*yn; with zero skew the term adds +-0, a no-op
        u.add_(torch.mul(yc, c[13], out=tmp))
    u.add_(c[14])
    torch.mul(yc, c[15], out=v)
    v.add_(c[16])
    side = None
    if ref_depth is not None:
        side = fbuf("side")
        torch.div(ref_depth * float(point_size), zs, out=side)
        side.add_(0.5).floor_().clamp_(1.0, float(max_point_size))
        offset = torch.mul(side, -0.5, out=tmp).add_(0.5)  # 0.5 - 0.5*side (exact for small integers)
        u.add_(offset)
        v.add_(offset)
        steps = max_point_size
    else:
        offset = 0.5 - 0.5 * float(point_size)
        if offset != 0.0:
            u.add_(offset)
            v.add_(offset)
        steps = point_size
    u.floor_()
    v.floor_()
    v.masked_fill_(dropped, -1e6)  # dropped points go to the border row
    # packed key: int64 little-endian = (low word: point index, high word: float32 bits of z)
    key32 = work.get("key", (Tc, N, 2), torch.int32, dev)
    have = work.key_index_for  # (data_ptr, N, frames) whose low words already hold the point indices
    if have is None or have[0] != key32.data_ptr() or have[1] != N or have[2] < Tc:
        key32[..., 0].copy_(torch.arange(N, device=dev, dtype=torch.int32))
        work.key_index_for = (key32.data_ptr(), N, Tc)
    key32[..., 1].copy_(zc.view(torch.int32))
    key = key32.view(torch.int64).view(-1)
    base = ((torch.arange(Tc, device=dev, dtype=f32) * float(Hp * Wp)) + float(Wp + 1))[:, None]
    if Tc == 1:
        base = float(Wp + 1)
    col, row, pix = fbuf("col"), fbuf("row"), fbuf("pix")
    pix64 = work.get("pix64", shape, torch.int64, dev)
    flat = buf.view(-1)
    for dy in range(steps):
        torch.add(v, float(dy), out=row).clamp_(-1.0, float(H))
        if side is not None:
            row.masked_fill_(side <= dy, -1.0)
        row.mul_(float(Wp)).add_(base)
        for dx in range(steps):
            torch.add(u, float(dx), out=col).clamp_(-1.0, float(W))
            if side is not None:
                col.masked_fill_(side <= dx, -1.0)
            torch.add(row, col, out=pix)
            pix64.copy_(pix)
            flat.scatter_reduce_(0, pix64.view(-1), key, "amin")


def _little_endian() -> bool:
    import sys
    return sys.byteorder == "little"


def color_table(colors: torch.Tensor, background=(0.0, 0.0, 0.0)) -> torch.Tensor:
    """``(N+1, 3)`` float32 lookup table: row 0 the background, row ``n+1`` the colour of point ``n``."""
    bg = torch.tensor([[float(b) for b in background]], dtype=torch.float32, device=colors.device)
    return torch.cat([bg, colors.to(torch.float32)], dim=0)


def resolve_keys_torch(keys: torch.Tensor, colors: torch.Tensor, background=(0.0, 0.0, 0.0), *,
                       out: Optional[tuple] = None, table: Optional[torch.Tensor] = None):
    """Turn a key buffer into images.

    keys (T,H,W) int64 (any strides); colors (N,3) float. Returns ``rgb (T,H,W,3)`` float32
    (``background`` in holes), ``depth (T,H,W)`` float32 camera z (0 in holes), ``holes (T,H,W)`` float32
    (1 where no point landed), ``index (T,H,W)`` int32 point index (-1 in holes). ``out`` optionally gives
    preallocated contiguous tensors to write into, ``table`` a prebuilt :func:`color_table`.

    The key's low 32-bit word is the point index (all ones, i.e. -1, for :data:`EMPTY_KEY`) and the high
    word the float32 bits of the depth (NaN for :data:`EMPTY_KEY`), so both unpack with a view.
    """
    T, H, W = keys.shape
    dev = keys.device
    if out is None:
        out = (torch.empty((T, H, W, 3), dtype=torch.float32, device=dev),
               torch.empty((T, H, W), dtype=torch.float32, device=dev),
               torch.empty((T, H, W), dtype=torch.float32, device=dev),
               torch.empty((T, H, W), dtype=torch.int32, device=dev))
    rgb, depth, holes, index = out
    if not _little_endian():  # pragma: no cover
        raise RuntimeError("packed key layout needs a little-endian machine")
    words = keys.view(torch.int32).view(T, H, W, 2)
    index.copy_(words[..., 0])
    depth.copy_(words[..., 1].view(torch.float32))
    torch.nan_to_num_(depth, nan=0.0)  # EMPTY_KEY's high word is a NaN; real depths are > near
    torch.lt(index, 0, out=holes)  # writes 0/1 as float
    if table is None:
        table = color_table(colors.to(dev), background)
    torch.index_select(table, 0, (index + 1).view(-1), out=rgb.view(-1, 3))
    return rgb, depth, holes, index


# ----------------------------------------------------------------------------------------------
# Triton
# ----------------------------------------------------------------------------------------------
_TRITON: dict = {}  # interpret-mode flag -> (triton, tl, scatter_kernel, resolve_kernel), or False


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_available() -> bool:
    """True when ``import triton`` works (the kernels are defined on first call)."""
    return _load_triton() is not None


def triton_usable_on(device) -> bool:
    """True when the Triton kernels can run on tensors of ``device`` (CUDA, or CPU when
    ``TRITON_INTERPRET=1`` is set, as CI does)."""
    dev = torch.device(device)
    return triton_available() and (dev.type == "cuda" or (_interpreting() and dev.type == "cpu"))


def _load_triton():
    # triton.jit reads TRITON_INTERPRET when a kernel is defined, so kernels are built per mode
    mode = _interpreting()
    if mode not in _TRITON:
        try:
            import triton
            import triton.language as tl
        except Exception:  # pragma: no cover - depends on the installation
            _TRITON[mode] = False
        else:
            _TRITON[mode] = (triton, tl) + _build_kernels(triton, tl)
    return _TRITON[mode] or None


def _build_kernels(triton, tl):
    @triton.jit
    def _scatter_kernel(pts_ptr, pts_tstride, mask_ptr, mask_tstride, ref_ptr, cam_ptr, keys_ptr,
                        N, H, W, near, point_size, max_side,
                        HAS_MASK: tl.constexpr, SCALED: tl.constexpr, STEPS: tl.constexpr,
                        BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        t = tl.program_id(1).to(tl.int64)
        n = pid * BLOCK + tl.arange(0, BLOCK)
        m = n < N
        n64 = n.to(tl.int64)
        base = pts_ptr + t * pts_tstride + n64 * 3
        x = tl.load(base + 0, mask=m, other=0.0)
        y = tl.load(base + 1, mask=m, other=0.0)
        z = tl.load(base + 2, mask=m, other=0.0)
        cp = cam_ptr + t * 17
        xc = ((tl.load(cp + 0) * x + tl.load(cp + 1) * y) + tl.load(cp + 2) * z) + tl.load(cp + 3)
        yc = ((tl.load(cp + 4) * x + tl.load(cp + 5) * y) + tl.load(cp + 6) * z) + tl.load(cp + 7)
        zc = ((tl.load(cp + 8) * x + tl.load(cp + 9) * y) + tl.load(cp + 10) * z) + tl.load(cp + 11)
        valid = m & (zc > near)
        if HAS_MASK:
            keep = tl.load(mask_ptr + t * mask_tstride + n64, mask=m, other=0)
            valid = valid & (keep != 0)
        zs = tl.where(valid, zc, 1.0)  # keeps the arithmetic of dropped points finite
        xn = tl.math.div_rn(xc, zs)
        yn = tl.math.div_rn(yc, zs)
        u = (tl.load(cp + 12) * xn + tl.load(cp + 13) * yn) + tl.load(cp + 14)
        v = tl.load(cp + 15) * yn + tl.load(cp + 16)
        if SCALED:
            ref = tl.load(ref_ptr + n64, mask=m, other=1.0)
            side = tl.floor(tl.math.div_rn(ref * point_size, zs) + 0.5)
            side = tl.minimum(tl.maximum(side, 1.0), max_side)
        else:
            side = point_size
        offset = 0.5 - 0.5 * side
        c0 = tl.floor(u + offset)
        r0 = tl.floor(v + offset)
        key = (zc.to(tl.int32, bitcast=True).to(tl.int64) << 32) | n64
        frame = t * H * W
        for dy in range(STEPS):
            row = r0 + dy
            ok_r = valid & (row >= 0) & (row < H)
            if SCALED:
                ok_r = ok_r & (side > dy)
            for dx in range(STEPS):
                col = c0 + dx
                ok = ok_r & (col >= 0) & (col < W)
                if SCALED:
                    ok = ok & (side > dx)
                pix = tl.where(ok, row * W + col, 0.0).to(tl.int64) + frame
                tl.atomic_min(keys_ptr + pix, key, mask=ok)

    @triton.jit
    def _resolve_kernel(keys_ptr, colors_ptr, rgb_ptr, depth_ptr, holes_ptr, index_ptr, P,
                        bg_r, bg_g, bg_b, BLOCK: tl.constexpr):
        pid = tl.program_id(0).to(tl.int64)
        p = pid * BLOCK + tl.arange(0, BLOCK)
        m = p < P
        key = tl.load(keys_ptr + p, mask=m, other=9223372036854775807)
        hit = key != 9223372036854775807
        idx = tl.where(hit, key & 0xFFFFFFFF, 0)
        z = (key >> 32).to(tl.int32).to(tl.float32, bitcast=True)
        gm = m & hit
        r = tl.load(colors_ptr + idx * 3 + 0, mask=gm, other=0.0)
        g = tl.load(colors_ptr + idx * 3 + 1, mask=gm, other=0.0)
        b = tl.load(colors_ptr + idx * 3 + 2, mask=gm, other=0.0)
        tl.store(rgb_ptr + p * 3 + 0, tl.where(hit, r, bg_r), mask=m)
        tl.store(rgb_ptr + p * 3 + 1, tl.where(hit, g, bg_g), mask=m)
        tl.store(rgb_ptr + p * 3 + 2, tl.where(hit, b, bg_b), mask=m)
        tl.store(depth_ptr + p, tl.where(hit, z, 0.0), mask=m)
        tl.store(holes_ptr + p, tl.where(hit, 0.0, 1.0), mask=m)
        tl.store(index_ptr + p, tl.where(hit, idx, -1).to(tl.int32), mask=m)

    return _scatter_kernel, _resolve_kernel


def _require_triton(device) -> tuple:
    loaded = _load_triton()
    if loaded is None:
        raise RuntimeError("Triton is not importable; use the PyTorch backend")
    if not triton_usable_on(device):
        raise RuntimeError(f"the Triton z-buffer needs CUDA tensors (or TRITON_INTERPRET=1), got device {device}")
    return loaded


def scatter_keys_triton(points: torch.Tensor, cam: torch.Tensor, height: int, width: int, *, near: float = 1e-3,
                        point_size: int = 1, max_point_size: Optional[int] = None,
                        ref_depth: Optional[torch.Tensor] = None, point_mask: Optional[torch.Tensor] = None,
                        keys: Optional[torch.Tensor] = None, block: int = 256) -> torch.Tensor:
    """Triton version of :func:`scatter_keys_torch` (same arguments, same keys bit for bit).

    ``keys`` optionally gives a contiguous ``(Tc,H,W)`` int64 buffer to use (it is refilled with
    :data:`EMPTY_KEY`); the result is contiguous.
    """
    if max_point_size is None:
        max_point_size = point_size
    Tc, H, W = cam.shape[0], int(height), int(width)
    _check_args(points, cam, (Tc, H, W), point_size, max_point_size, ref_depth, point_mask)
    triton, _tl, scatter_kernel, _ = _require_triton(points.device)
    points = points.contiguous()
    cam = cam.contiguous()
    if keys is None:
        keys = new_key_buffer(Tc, H, W, points.device)
    else:
        assert keys.shape == (Tc, H, W) and keys.is_contiguous() and keys.dtype == torch.int64
        keys.fill_(EMPTY_KEY)
    N = points.shape[1]
    pts_tstride = 0 if points.shape[0] == 1 else N * 3
    if point_mask is not None:
        mask_u8 = point_mask.to(torch.uint8).contiguous()
        mask_tstride = 0 if point_mask.shape[0] == 1 else N
    else:
        mask_u8, mask_tstride = points, 0  # unused pointer
    ref = ref_depth.contiguous() if ref_depth is not None else points
    steps = max_point_size if ref_depth is not None else point_size
    grid = (triton.cdiv(N, block), Tc)
    with _on_device(points.device):
        scatter_kernel[grid](points, pts_tstride, mask_u8, mask_tstride, ref, cam, keys, N, H, W,
                             float(near), float(point_size), float(max_point_size),
                             HAS_MASK=point_mask is not None, SCALED=ref_depth is not None, STEPS=steps,
                             BLOCK=block, enable_fp_fusion=False)
    return keys


def _on_device(device):
    """Launch on the tensors' GPU (Triton launches on the current CUDA device)."""
    import contextlib
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def resolve_keys_triton(keys: torch.Tensor, colors: torch.Tensor, background=(0.0, 0.0, 0.0), *,
                        out: Optional[tuple] = None, block: int = 1024):
    """Triton version of :func:`resolve_keys_torch` (same outputs).

    ``out`` optionally gives preallocated contiguous ``(rgb, depth, holes, index)`` to write into.
    """
    triton, _tl, _, resolve_kernel = _require_triton(keys.device)
    assert keys.is_contiguous() and keys.dtype == torch.int64
    T, H, W = keys.shape
    colors = colors.to(torch.float32).contiguous()
    if out is None:
        dev = keys.device
        out = (torch.empty((T, H, W, 3), dtype=torch.float32, device=dev),
               torch.empty((T, H, W), dtype=torch.float32, device=dev),
               torch.empty((T, H, W), dtype=torch.float32, device=dev),
               torch.empty((T, H, W), dtype=torch.int32, device=dev))
    rgb, depth, holes, index = out
    assert all(o.is_contiguous() for o in out)
    P = T * H * W
    bg = [float(b) for b in background]
    with _on_device(keys.device):
        resolve_kernel[(triton.cdiv(P, block),)](keys, colors, rgb, depth, holes, index, P, bg[0], bg[1], bg[2],
                                                BLOCK=block)
    return rgb, depth, holes, index
