"""Preview image of a camera path: camera frustums over the first-frame points, top and side views.

Left panel: top view (looking down on the scene): x to the right, z (forward, into the scene) up.
Right panel: side view: z (forward) to the right, world up (-y in OpenCV axes) up. Both are
orthographic with equal axis scales. The path is drawn as a polyline whose colour runs from blue
(frame 0) to red (last frame); the first frustum is drawn thicker in green; frustum depth is a fixed
fraction of the drawing extent, not of the camera's clipping range.

Drawn with Pillow (a ComfyUI dependency); matplotlib is deliberately not used. Points are rasterised
with numpy indexing, lines with ``PIL.ImageDraw``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from ..errors import require
from ..types import CameraPath

_BG = (247, 247, 247)


def _ramp(k: int, n: int) -> tuple:
    a = 0.0 if n <= 1 else k / (n - 1)
    return (int(40 + 200 * a), int(80 * (1 - abs(2 * a - 1))), int(230 - 200 * a))


def frustum_plot(path: CameraPath, points0: Optional[torch.Tensor] = None, size: Sequence[int] = (512, 512), *,
                 point_colors: Optional[torch.Tensor] = None, max_points: int = 20000,
                 max_frustums: int = 12) -> torch.Tensor:
    """Render a preview of ``path`` -> image ``(H,W,3)`` float32 in [0,1], ``(H, W) = size``.

    ``points0 (N,3)`` (or ``(H,W,3)``): first-frame points in the world (optional; NaN / inf dropped,
    at most ``max_points`` drawn, evenly subsampled); ``point_colors (N,3)`` in [0,1] (default grey).
    At most ``max_frustums`` frustums are drawn (evenly spaced, first and last included).
    """
    from PIL import Image, ImageDraw  # Pillow ships with ComfyUI

    require(isinstance(path, CameraPath), f"frustum_plot: expected a CameraPath, got {type(path).__name__}")
    require(len(size) == 2 and all(isinstance(s, int) and s >= 32 for s in size),
            f"frustum_plot: size must be (height, width) with each >= 32 pixels, got {size!r}")
    H, W = int(size[0]), int(size[1])
    pw = W // 2  # panel width
    c2w = path.c2w.detach().to("cpu", torch.float64).numpy()
    K = path.K.detach().to("cpu", torch.float64).numpy()
    T = c2w.shape[0]
    centres = c2w[:, :3, 3]

    pts = np.zeros((0, 3))
    cols = None
    if points0 is not None:
        require(isinstance(points0, torch.Tensor) and points0.shape[-1] == 3,
                f"frustum_plot: points0 must be a tensor (N,3), got {getattr(points0, 'shape', type(points0))}")
        pts = points0.detach().reshape(-1, 3).to("cpu", torch.float64).numpy()
        if point_colors is not None:
            cols = point_colors.detach().reshape(-1, 3).to("cpu", torch.float64).numpy()
            require(cols.shape[0] == pts.shape[0], "frustum_plot: point_colors must have one colour per point")
        keep = np.isfinite(pts).all(axis=1)
        pts = pts[keep]
        cols = cols[keep] if cols is not None else None
        if pts.shape[0] > max_points:
            idx = np.linspace(0, pts.shape[0] - 1, max_points).astype(np.int64)
            pts = pts[idx]
            cols = cols[idx] if cols is not None else None

    # extent: cameras + robust point bounds
    bound_pts = [centres]
    if pts.shape[0]:
        bound_pts += [np.percentile(pts, 2, axis=0)[None], np.percentile(pts, 98, axis=0)[None]]
    allb = np.concatenate(bound_pts, 0)
    lo, hi = allb.min(0), allb.max(0)
    extent = float((hi - lo).max())
    if extent <= 1e-9:
        extent = 1.0
    depth = 0.08 * extent

    # frustum corners in world, (T, 4, 3)
    w, h = path.width, path.height
    pix = np.array([[0, 0, 1], [w, 0, 1], [w, h, 1], [0, h, 1]], dtype=np.float64)
    rays = np.einsum("tij,kj->tki", np.linalg.inv(K), pix) * depth  # z = depth
    corners = np.einsum("tij,tkj->tki", c2w[:, :3, :3], rays) + centres[:, None]
    lo = np.minimum(lo, corners.reshape(-1, 3).min(0))
    hi = np.maximum(hi, corners.reshape(-1, 3).max(0))

    # 2D projections: top (x, -z) and side (z, y) in image (col, row) orientation
    views = [(lambda p: np.stack([p[..., 0], -p[..., 2]], -1), "top view: x to the right, forward is up"),
             (lambda p: np.stack([p[..., 2], p[..., 1]], -1), "side view: forward to the right, up is up")]
    img = np.empty((H, W, 3), dtype=np.uint8)
    img[:] = _BG
    transforms = []
    box = np.stack([lo, hi])
    cube = np.array([[box[i, 0], box[j, 1], box[k, 2]] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
    for v, (proj, _) in enumerate(views):
        q = proj(cube)
        qlo, qhi = q.min(0), q.max(0)
        span = max(float((qhi - qlo).max()), 1e-9)
        scale = 0.84 * min(pw, H) / span
        mid = (qlo + qhi) / 2
        off = np.array([v * pw + pw / 2, H / 2])
        transforms.append((proj, scale, mid, off))

    def to_px(p, v):
        proj, scale, mid, off = transforms[v]
        return (proj(p) - mid) * scale + off

    for v in range(2):  # points
        if pts.shape[0] == 0:
            continue
        xy = np.round(to_px(pts, v)).astype(np.int64)
        ok = (xy[:, 0] >= v * pw) & (xy[:, 0] < (v + 1) * pw) & (xy[:, 1] >= 0) & (xy[:, 1] < H)
        c = (np.clip(cols[ok], 0, 1) * 255).astype(np.uint8) if cols is not None else np.array([150, 150, 150], np.uint8)
        img[xy[ok, 1], xy[ok, 0]] = c

    im = Image.fromarray(img)
    draw = ImageDraw.Draw(im)
    draw.line([(pw, 0), (pw, H)], fill=(200, 200, 200), width=1)
    shown = sorted(set(np.linspace(0, T - 1, min(T, max_frustums)).round().astype(int).tolist()))
    for v, (_, label) in enumerate(views):
        c = to_px(centres, v)
        if T > 1:
            for k in range(T - 1):
                draw.line([tuple(c[k]), tuple(c[k + 1])], fill=_ramp(k, T - 1), width=2)
        for k in shown:
            cor = to_px(corners[k], v)
            col = (30, 160, 60) if k == 0 else _ramp(k, T)
            wd = 2 if k == 0 else 1
            for a in range(4):
                draw.line([tuple(c[k]), tuple(cor[a])], fill=col, width=wd)
                draw.line([tuple(cor[a]), tuple(cor[(a + 1) % 4])], fill=col, width=wd)
        draw.text((v * pw + 4, 4), label, fill=(60, 60, 60))
    draw.text((4, H - 14), f"{path.name}: {T} frames", fill=(60, 60, 60))
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)
