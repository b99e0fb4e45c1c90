"""Gaussian splatting renderer (``mode="gaussians"``), as the official MoGe4D renders its points.

Every point is an isotropic 3D Gaussian (scale ``s`` in world units, official default ``1e-4``; or one
scale per point, e.g. sized to the point spacing by :func:`~moge4d_core.render.api.spacing_scale`) with
opacity ``o`` and a constant colour. Per frame (3DGS / EWA splatting, reference section D):

* camera-space mean ``p_c = R p + t`` (``R, t`` from the world-to-camera matrix), dropped when
  ``z <= near``; projected mean ``u = fx*x/z + skew*y/z + cx``, ``v = fy*y/z + cy`` (pixel centres at
  integer + 0.5);
* screen-space covariance ``Sigma2 = J R (s^2 I) R^T J^T + 0.3 I`` with the perspective Jacobian
  ``J = [[fx/z, skew/z, -(fx*x' + skew*y')/z^2], [0, fy/z, -fy*y'/z^2]]``, where ``x', y'`` are ``x, y``
  with ``x/z, y/z`` clamped to 1.3x the half field of view (as 3DGS / gsplat do); the ``+0.3 px^2``
  dilation makes the official ``1e-4`` Gaussians ~1-pixel splats;
* at a pixel centre ``q``: ``alpha = min(0.99, o * exp(-0.5 d^T Sigma2^-1 d))`` with ``d = q - (u, v)``;
  a pair counts only if ``alpha >= 1/255`` and the pixel lies in the 3-sigma box around the pixel that
  contains the mean, ``|col - floor(u)| <= r`` and ``|row - floor(v)| <= r`` with
  ``r = ceil(3 sqrt(lambda_max))`` (3DGS's radius, whose ``lambda_max`` uses ``max(0.1, mid^2 - det)``;
  3DGS instead evaluates every pixel of the 16x16 tiles that box touches, a tiling artefact that only
  matters for the faint tail between 3 and 3.33 sigma);
* front-to-back compositing in increasing ``z`` (ties: lower point index first):
  ``C = sum_i alpha_i T_i c_i + T_end * background``, ``T_i = prod_{j<i} (1 - alpha_j)``, stopping
  before the first Gaussian that would bring the transmittance below ``1e-4`` (3DGS's rule);
* outputs: ``rgb``; ``alpha = sum_i alpha_i T_i``; ``depth`` the normalised expected depth
  ``sum_i alpha_i T_i z_i / alpha``; **holes where alpha < 0.5** (depth 0 there).

The official code culls Gaussians with ``z <= 0.2`` (the graphdeco rasteriser's frustum test) and uses
near/far 0.5/1000 only for its projection matrix; pass ``near=0.2`` to reproduce the culling.

Backends: on CUDA, gsplat's ``rasterization`` is used when ``import gsplat`` works and its kernels
build (gsplat clamps alpha at 0.999 instead of 0.99; otherwise the same model); else, and on CPU, the
pure-PyTorch rasteriser below. gsplat has no CPU rasteriser and no complete pure-torch one (its
``_torch_impl`` needs CUDA ops and ``nerfacc``), which is why this module has its own: per frame it
enumerates (pixel, Gaussian) pairs ring by ring around each projected mean, sorts them by
``(pixel, depth rank)`` and composites with a segmented cumulative sum of ``log(1 - alpha)``; points
are processed in depth-ordered batches (carrying each pixel's transmittance) so memory stays bounded.
"""
from __future__ import annotations

import logging
import math
from typing import Callable, Optional

import torch

from ..types import RenderResult
from .projection import FrameSetup

log = logging.getLogger(__name__)

ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.99
T_MIN = 1e-4
EPS2D = 0.3
PAIRS_PER_BATCH = 2 ** 23  # candidate (pixel, Gaussian) pairs per batch of the PyTorch rasteriser

_GSPLAT_STATE: dict = {"failed": False}


# ----------------------------------------------------------------------------------------------
# projection
# ----------------------------------------------------------------------------------------------
def project_gaussians(pc: torch.Tensor, R: torch.Tensor, K: torch.Tensor, width: int, height: int,
                      scale, opacity: float, dilation: float = EPS2D) -> dict:
    """EWA projection of isotropic Gaussians given in camera space.

    pc (M,3) camera-space means with z > 0; R (3,3) world-to-camera rotation block (for the world
    covariance ``s^2 R R^T``; identity-like for rigid poses); K (3,3) pixel intrinsics; ``scale`` one
    standard deviation (float, world units) for all, or an (M,) tensor, one per Gaussian; ``dilation`` the
    screen-space variance added to every footprint, px^2 (3DGS: 0.3).
    Returns a dict of (M,) tensors: ``u, v`` projected means (pixels), ``ca, cb, cc`` the conic
    ``Sigma2^-1 = [[ca, cb], [cb, cc]]``, ``r_box`` (3-sigma radius in pixels, float), ``reach`` (int64,
    ``min(r_box, floor(rho + 0.5))``: how many pixels around ``floor(u), floor(v)`` can pass both
    cut-offs, ``rho`` being the distance beyond which alpha < 1/255), ``z``.
    """
    f32 = torch.float32
    x, y, z = pc[:, 0], pc[:, 1], pc[:, 2]
    fx, sk, cx = float(K[0, 0]), float(K[0, 1]), float(K[0, 2])
    fy, cy = float(K[1, 1]), float(K[1, 2])
    xn, yn = x / z, y / z
    u = fx * xn + sk * yn + cx
    v = fy * yn + cy
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    txn = xn.clamp(-(cx / fx + 0.3 * tan_x), (width - cx) / fx + 0.3 * tan_x)
    tyn = yn.clamp(-(cy / fy + 0.3 * tan_y), (height - cy) / fy + 0.3 * tan_y)
    inv_z = 1.0 / z
    zero = torch.zeros_like(z)
    J = torch.stack([torch.stack([fx * inv_z, sk * inv_z, -(fx * txn + sk * tyn) * inv_z], -1),
                     torch.stack([zero, fy * inv_z, -fy * tyn * inv_z], -1)], dim=1)  # (M,2,3)
    if isinstance(scale, torch.Tensor):
        G = R.to(f32) @ R.to(f32).T  # world covariance seen in the camera, per Gaussian times s^2
        cov = torch.einsum("mij,jk,mlk->mil", J, G, J) * (scale.to(f32) ** 2)[:, None, None]
    else:
        G = (R.to(f32) @ R.to(f32).T) * (float(scale) ** 2)  # world covariance seen in the camera
        cov = torch.einsum("mij,jk,mlk->mil", J, G, J)
    a = cov[:, 0, 0] + dilation
    b = 0.5 * (cov[:, 0, 1] + cov[:, 1, 0])
    c = cov[:, 1, 1] + dilation
    det = a * c - b * b
    mid = 0.5 * (a + c)
    disc = mid * mid - det
    lam_3dgs = mid + torch.sqrt(torch.clamp(disc, min=0.1))
    r_box = torch.ceil(3.0 * torch.sqrt(lam_3dgs))
    lam = mid + torch.sqrt(torch.clamp(disc, min=0.0))
    # alpha >= 1/255 needs d^T Sigma2^-1 d <= 2 ln(255 o), hence |d| <= sqrt(2 ln(255 o) lam_max)
    rho = torch.sqrt(2.0 * math.log(255.0 * opacity) * lam)
    reach = torch.minimum(r_box, torch.floor(rho + 0.5)).clamp(max=float(max(width, height))).to(torch.int64)
    return {"u": u, "v": v, "ca": c / det, "cb": -b / det, "cc": a / det, "r_box": r_box, "reach": reach, "z": z}


# ----------------------------------------------------------------------------------------------
# pure PyTorch rasteriser
# ----------------------------------------------------------------------------------------------
def _ring_offsets(m: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer offsets (dx, dy) with max(|dx|, |dy|) == m."""
    if m == 0:
        z = torch.zeros(1, dtype=torch.int64, device=device)
        return z, z
    r = torch.arange(-m, m + 1, device=device)
    dx = torch.cat([r, r, torch.full((2 * m - 1,), -m, device=device), torch.full((2 * m - 1,), m, device=device)])
    inner = torch.arange(-m + 1, m, device=device)
    dy = torch.cat([torch.full((2 * m + 1,), -m, device=device), torch.full((2 * m + 1,), m, device=device),
                    inner, inner])
    return dx, dy


def rasterize_frame_torch(points: torch.Tensor, colors: torch.Tensor, w2c: torch.Tensor, K: torch.Tensor,
                          height: int, width: int, *, scale, opacity: float, near: float,
                          background, point_mask: Optional[torch.Tensor] = None,
                          pairs_per_batch: int = PAIRS_PER_BATCH, dilation: float = EPS2D):
    """Render one frame. points (N,3) world; colors (N,3); w2c (4,4); K (3,3); point_mask (N,) bool;
    scale: standard deviation in world units, a float or an (N,) tensor (one per point).

    Returns ``rgb (H,W,3)``, ``depth (H,W)`` (normalised expected z, 0 where alpha < 0.5) and
    ``alpha (H,W)`` (accumulated opacity), all float32.

    The accumulators are padded by twice the largest reach on every side, so pairs that fall outside the
    image need no bounds test: they land in the border, which is cropped at the end.
    """
    dev = points.device
    H, W = int(height), int(width)
    f32, f64 = torch.float32, torch.float64
    bg = torch.tensor(list(background), dtype=f32, device=dev)

    R, t = w2c[:3, :3].to(f32), w2c[:3, 3].to(f32)
    pc = points.to(f32) @ R.T + t
    keep = pc[:, 2] > near
    if point_mask is not None:
        keep &= point_mask
    if opacity * 255.0 > 1.0:
        ids = torch.nonzero(keep).squeeze(1)
    else:  # no pixel can reach alpha >= 1/255
        ids = torch.zeros(0, dtype=torch.int64, device=dev)
    fields, gid, pad = None, None, 0
    if ids.numel() > 0:
        g = project_gaussians(pc[ids], R, K, W, H, scale[ids] if isinstance(scale, torch.Tensor) else scale,
                              opacity, dilation)
        c0, r0 = torch.floor(g["u"]), torch.floor(g["v"])
        reach = g["reach"]
        inside = (c0 + reach >= 0) & (c0 - reach < W) & (r0 + reach >= 0) & (r0 - reach < H)
        sel = torch.nonzero(inside).squeeze(1)
        if sel.numel() > 0:
            # depth order (stable: equal depths keep the lower point index first)
            order = sel[torch.argsort(g["z"][sel], stable=True)]
            gid = ids[order]  # original point index, in depth order
            fields = {k: g[k][order] for k in ("u", "v", "ca", "cb", "cc", "reach", "z")}
            # a kept Gaussian has floor(u) within reach of the image, so its pixels lie within 2*reach of it
            pad = 2 * int(fields["reach"].max())
    Hp, Wp = H + 2 * pad, W + 2 * pad
    P = Hp * Wp
    rgb_acc = torch.zeros((P, 3), dtype=f32, device=dev)
    acc = torch.zeros(P, dtype=f32, device=dev)
    dep_acc = torch.zeros(P, dtype=f32, device=dev)
    log_t = torch.zeros(P, dtype=f64, device=dev)  # log transmittance carried between batches
    if fields is not None:
        col_sorted = colors.to(f32)[gid]
        cand = (2 * fields["reach"] + 1) ** 2
        bounds = torch.cumsum(cand, 0)
        n_pts = gid.numel()
        a = 0
        while a < n_pts:
            done = int(bounds[a - 1]) if a > 0 else 0
            b = int(torch.searchsorted(bounds, done + pairs_per_batch, right=True))
            b = max(b, a + 1)
            _composite_batch(fields, col_sorted, a, b, Wp, pad, opacity, rgb_acc, acc, dep_acc, log_t)
            a = b
    crop = (slice(pad, pad + H), slice(pad, pad + W))
    alpha = acc.view(Hp, Wp)[crop].contiguous()
    rgb = (rgb_acc.view(Hp, Wp, 3)[crop] + (1.0 - alpha)[..., None] * bg).contiguous()
    holes = alpha < 0.5
    depth = torch.where(holes, torch.zeros((), dtype=f32, device=dev),
                        dep_acc.view(Hp, Wp)[crop] / alpha.clamp(min=1e-12))
    return rgb, depth, alpha


def _pair_alpha(fu, fv, ca, cb2, cc, dx, dy, opacity):
    """alpha (n, B) of n Gaussians at B pixel offsets; fu, fv: (n,) pixel-centre minus mean of the
    mean's own pixel; dx, dy: (B,) integer offsets; conic [[ca, cb2/2], [cb2/2, cc]]."""
    du = fu[:, None] + dx.to(torch.float32)  # pixel centre minus mean
    dv = fv[:, None] + dy.to(torch.float32)
    q = ca[:, None] * (du * du)
    q += cc[:, None] * (dv * dv)
    du.mul_(dv).mul_(cb2[:, None])
    q += du  # q = d^T Sigma2^-1 d
    return torch.exp(q.mul_(-0.5)).mul_(opacity).clamp_(max=ALPHA_MAX)


def _composite_batch(fields, col_sorted, a, b, Wp, pad, opacity, rgb_acc, acc, dep_acc, log_t):
    """Composite the depth-ordered Gaussians [a, b) into the padded accumulators (front to back).

    A Gaussian with reach ``r`` touches the pixels ``(floor(v) + dy, floor(u) + dx)`` with
    ``|dx|, |dy| <= r``; the pairs with ``alpha >= 1/255`` are kept, ordered by (pixel, depth rank) and
    composited with a segmented cumulative sum of ``log(1 - alpha)``.

    When all Gaussians of the batch have the same reach (the usual case: the official 1e-4 splats are
    all 0.3-px^2 dilation) the pairs are emitted Gaussian by Gaussian, i.e. already in depth order, and a
    stable sort on the int32 pixel index orders them; otherwise they are enumerated ring by ring
    (``max(|dx|, |dy|) = m``, each ring over the Gaussians that reach it) and sorted on a packed
    (pixel, rank) int64 key.
    """
    dev = acc.device
    f32, f64 = torch.float32, torch.float64
    reach = fields["reach"][a:b]
    uniform = int(reach.min()) == int(reach.max())
    if uniform:
        perm = torch.arange(b - a, device=dev)
        sel = slice(a, b)
    else:  # ring m uses a prefix of perm
        perm = torch.argsort(reach, descending=True, stable=True)
        sel = perm + a
    reach = fields["reach"][sel]
    u, v = fields["u"][sel], fields["v"][sel]
    ca, cc = fields["ca"][sel], fields["cc"][sel]
    cb2 = 2.0 * fields["cb"][sel]
    c0, r0 = torch.floor(u), torch.floor(v)
    fu = c0 + 0.5 - u  # pixel-centre offset of the mean's own pixel, in (-0.5, 0.5]
    fv = r0 + 0.5 - v
    base_pix = (r0 + pad).to(torch.int64) * Wp + (c0 + pad).to(torch.int64)
    max_reach = int(reach[0]) if reach.numel() else -1
    rings = [_ring_offsets(m, dev) for m in range(max_reach + 1)]
    if uniform:
        dx = torch.cat([r[0] for r in rings])
        dy = torch.cat([r[1] for r in rings])
        block = dx.numel()
        alpha = _pair_alpha(fu, fv, ca, cb2, cc, dx, dy, opacity)
        idx = torch.nonzero((alpha >= ALPHA_MIN).view(-1)).squeeze(1)  # Gaussian-major = depth order
        if idx.numel() == 0:
            return
        who = torch.div(idx, block, rounding_mode="floor")
        pix = torch.index_select(base_pix, 0, who) + torch.index_select(dy * Wp + dx, 0, idx - who * block)
        pix32, order = torch.sort(pix.to(torch.int32), stable=True)
        pix = pix32.to(torch.int64)
        alpha = torch.index_select(torch.index_select(alpha.view(-1), 0, idx), 0, order).to(f64)
        rank = torch.index_select(who, 0, order) + a
    else:
        rank_b = (perm + a).to(torch.int64)  # depth rank of each Gaussian (index into the depth-sorted arrays)
        # number of Gaussians with reach >= m, for m = 0..max_reach (reach is sorted descending)
        counts = torch.searchsorted(-reach, -torch.arange(max_reach + 1, device=dev), right=True).tolist()
        keys_l, alpha_l = [], []
        for m, (dx, dy) in enumerate(rings):
            n = counts[m]
            if n == 0:
                continue
            alpha = _pair_alpha(fu[:n], fv[:n], ca[:n], cb2[:n], cc[:n], dx, dy, opacity)
            idx = torch.nonzero((alpha >= ALPHA_MIN).view(-1)).squeeze(1)
            if idx.numel() == 0:
                continue
            ring = dx.numel()
            who = torch.div(idx, ring, rounding_mode="floor")
            pix = torch.index_select(base_pix, 0, who) + torch.index_select(dy * Wp + dx, 0, idx - who * ring)
            keys_l.append((pix << 32) | torch.index_select(rank_b, 0, who))
            alpha_l.append(torch.index_select(alpha.view(-1), 0, idx))
        if not keys_l:
            return
        key, order = torch.sort(torch.cat(keys_l))
        alpha = torch.index_select(torch.cat(alpha_l), 0, order).to(f64)
        pix = key >> 32
        rank = key & 0xFFFFFFFF
    la = torch.log1p(-alpha)
    excl = torch.cumsum(la, 0) - la  # sum of log(1-alpha) of everything before, over the whole batch
    first = torch.ones_like(pix, dtype=torch.bool)
    first[1:] = pix[1:] != pix[:-1]
    start = torch.where(first, torch.arange(pix.numel(), device=dev), 0)
    start = torch.cummax(start, 0).values  # index of the first pair of each pair's pixel
    t_before = torch.exp(torch.index_select(log_t, 0, pix) + (excl - torch.index_select(excl, 0, start)))
    w = torch.where(t_before * (1.0 - alpha) >= T_MIN, alpha * t_before, 0.0).to(f32)
    acc.index_add_(0, pix, w)
    rgb_acc.index_add_(0, pix, w[:, None] * torch.index_select(col_sorted, 0, rank))
    dep_acc.index_add_(0, pix, w * torch.index_select(fields["z"], 0, rank))
    log_t.index_add_(0, pix, la)


# ----------------------------------------------------------------------------------------------
# gsplat
# ----------------------------------------------------------------------------------------------
def import_gsplat():
    """``import gsplat`` (a function so tests can replace it)."""
    import gsplat  # noqa: F401  (optional dependency)
    return gsplat


def gsplat_module_for(device: torch.device, backend: str):
    """The gsplat module to use on ``device``, or None (with a one-line notice when falling back).

    ``backend``: "auto" (fall back quietly except for one log line) or "gsplat" (raise RuntimeError).
    """
    if backend not in ("auto", "gsplat"):
        return None
    if torch.device(device).type != "cuda":
        if backend == "gsplat":
            raise RuntimeError("gsplat renders on CUDA tensors only")
        return None
    if _GSPLAT_STATE["failed"]:
        if backend == "gsplat":
            raise RuntimeError(f"gsplat failed earlier in this process: {_GSPLAT_STATE.get('why')}")
        return None
    try:
        return import_gsplat()
    except Exception as exc:
        _mark_gsplat_failed(f"import gsplat failed ({type(exc).__name__}: {exc})")
        if backend == "gsplat":
            raise RuntimeError(_GSPLAT_STATE["why"]) from exc
        return None


def _mark_gsplat_failed(why: str) -> None:
    _GSPLAT_STATE["failed"] = True
    _GSPLAT_STATE["why"] = why
    log.warning("MoGe4D render: %s; using the PyTorch Gaussian rasteriser", why)


def rasterize_frame_gsplat(gsplat, points: torch.Tensor, colors: torch.Tensor, w2c: torch.Tensor, K: torch.Tensor,
                           height: int, width: int, *, scale, opacity: float, near: float, background,
                           point_mask: Optional[torch.Tensor] = None, dilation: float = EPS2D):
    """Render one frame with ``gsplat.rasterization`` (documented API of gsplat >= 1.0).

    Identity rotations are quaternions in gsplat's ``(w, x, y, z)`` order; ``viewmats`` are
    world-to-camera; ``render_mode="RGB+ED"`` returns the colour and the alpha-normalised expected
    depth; the background is composited here as ``rgb + (1 - alpha) * background``.
    Returns ``rgb (H,W,3)``, ``depth (H,W)`` (0 where alpha < 0.5), ``alpha (H,W)``.
    """
    dev = points.device
    f32 = torch.float32
    means = points.to(f32)
    cols = colors.to(f32)
    per_point = isinstance(scale, torch.Tensor)
    sizes = scale.to(f32) if per_point else None
    if point_mask is not None:
        means, cols = means[point_mask], cols[point_mask]
        sizes = sizes[point_mask] if per_point else None
    n = means.shape[0]
    quats = torch.zeros((n, 4), dtype=f32, device=dev)
    quats[:, 0] = 1.0
    scales = (sizes[:, None].expand(n, 3).contiguous() if per_point
              else torch.full((n, 3), float(scale), dtype=f32, device=dev))
    opac = torch.full((n,), float(opacity), dtype=f32, device=dev)
    out, alphas, _meta = gsplat.rasterization(
        means=means.contiguous(), quats=quats, scales=scales, opacities=opac, colors=cols.contiguous(),
        viewmats=w2c.to(f32)[None].contiguous(), Ks=K.to(f32)[None].contiguous(), width=int(width),
        height=int(height), near_plane=float(near), eps2d=float(dilation), render_mode="RGB+ED")
    out = out[0]
    alpha = alphas[0, ..., 0].to(f32)
    bg = torch.tensor(list(background), dtype=f32, device=dev)
    rgb = out[..., :3].to(f32) + (1.0 - alpha)[..., None] * bg
    depth = torch.where(alpha < 0.5, torch.zeros((), dtype=f32, device=dev), out[..., 3].to(f32))
    return rgb, depth, alpha


# ----------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------
def render_gaussians(setup: FrameSetup, *, backend: str, scale, opacity: float, near: float,
                     background, progress: Optional[Callable[[int, int], None]] = None,
                     dilation: float = EPS2D) -> RenderResult:
    """Render all frames of ``setup`` as alpha-composited Gaussians (see the module docstring).

    Args:
        setup: the frames to render (points, colours, cameras, optional point mask), see :mod:`.projection`.
        backend: "auto" (gsplat on CUDA when usable, else PyTorch), "torch" or "gsplat".
        scale: isotropic standard deviation, world units: one float for every Gaussian, or an (N,) float tensor
            on the points' device, one per point (e.g. :func:`~moge4d_core.render.api.spacing_scale`).
        opacity: opacity of every Gaussian, in (0, 1].
        near: Gaussians with camera z <= near are dropped.
        dilation: screen-space variance added to every footprint, px^2 (3DGS's 0.3; Mip-Splatting's 2D filter 0.1).
        background: RGB in [0,1] behind the Gaussians.
        progress: ``progress(i, T)`` is called after frame ``i`` (1-based) is finished.

    Returns:
        :class:`RenderResult` on the points' device: rgb (T,H,W,3), depth (T,H,W) normalised expected depth
        (0 in holes), holes (T,H,W) float32 (1 where alpha < 0.5); ``extras``: ``"alpha"`` (T,H,W) float32
        accumulated opacity, ``"backend"`` the backend that ran (``"torch"`` after a gsplat fallback).
    """
    T, H, W = setup.frames, setup.height, setup.width
    dev = setup.points.device
    gs = gsplat_module_for(dev, backend) if backend in ("auto", "gsplat") else None
    used = "gsplat" if gs is not None else "torch"
    rgb = torch.empty((T, H, W, 3), dtype=torch.float32, device=dev)
    depth = torch.empty((T, H, W), dtype=torch.float32, device=dev)
    alpha = torch.empty((T, H, W), dtype=torch.float32, device=dev)
    kw = dict(scale=scale, opacity=opacity, near=near, background=background, dilation=dilation)
    for t in range(T):
        w2c, K = setup.cameras_at(t, t + 1)
        pts = setup.points_at(t, t + 1)[0]
        msk = setup.mask_at(t, t + 1)
        msk = None if msk is None else msk[0]
        out = None
        if gs is not None:
            try:
                out = rasterize_frame_gsplat(gs, pts, setup.colors, w2c[0], K[0], H, W, point_mask=msk, **kw)
            except Exception as exc:  # kernels that fail to build / launch
                if backend == "gsplat":
                    raise RuntimeError(f"gsplat rasterization failed: {type(exc).__name__}: {exc}") from exc
                _mark_gsplat_failed(f"gsplat rasterization failed ({type(exc).__name__}: {exc})")
                gs, used = None, "torch"
        if out is None:
            out = rasterize_frame_torch(pts, setup.colors, w2c[0], K[0], H, W, point_mask=msk, **kw)
        rgb[t], depth[t], alpha[t] = out
        if progress is not None:
            progress(t + 1, T)
    holes = (alpha < 0.5).to(torch.float32)
    return RenderResult(rgb=rgb, depth=depth, holes=holes, extras={"backend": used, "alpha": alpha})
