"""Hard z-buffer point renderer (``mode="points"``).

Semantics follow the official projection renderer (``render_with_project``, reference section D):
every point lands on the pixel that contains its projection and the nearest point wins. Differences,
on purpose:

* **Holes come from "no point landed"**, not from ``rgb == 0``. The official code marks a pixel as a
  hole when its colour sums to zero, so genuinely black points become holes (and get inpainted); we do
  not copy that.
* Ties (several points at exactly the same float32 depth on one pixel) keep the point with the smallest
  index instead of the official scatter-mean of the tied colours: deterministic and a single colour.
* Pixel-centre convention: ``col = floor(u)`` with ``u`` in pixels and pixel centres at integer + 0.5
  (the official code computes ``floor(u_norm * W)`` on normalised coordinates, the same thing).
* Optional ``k x k`` footprint (the official renderer only has 1 pixel) and a depth-scaled footprint.

The work is done by :mod:`moge4d_core.ops.zbuffer` (PyTorch, or the Triton kernel on CUDA).
"""
from __future__ import annotations

import logging
from typing import Callable, Optional

import torch

from ..ops import zbuffer as zb
from ..types import RenderResult
from .projection import FrameSetup

log = logging.getLogger(__name__)

# points per batch of frames: small on CPU (scratch buffers stay in cache), large on GPU
CPU_POINTS_PER_BATCH = 2 ** 18
GPU_POINTS_PER_BATCH = 2 ** 23
_TRITON_BROKEN = False  # set once if the Triton kernels failed on this machine ("auto" falls back)


def choose_backend(backend: str, device: torch.device) -> str:
    """Resolve ``"auto"`` for the points mode: Triton on CUDA when it imports, else PyTorch.

    Raises :class:`RuntimeError` for ``"triton"`` when Triton cannot run on ``device``.
    """
    if backend == "torch":
        return "torch"
    if backend == "triton":
        if not zb.triton_usable_on(device):
            raise RuntimeError("triton")
        return "triton"
    # auto
    if device.type == "cuda" and not _TRITON_BROKEN:
        if zb.triton_available():
            return "triton"
        _say_once("MoGe4D render: triton is not installed; the points z-buffer runs in PyTorch on CUDA "
                  "(pip install triton for the fused kernel)")
    return "torch"


_SAID: set = set()


def _say_once(message: str) -> None:
    """Log ``message`` once per process (a fallback notice, not repeated per frame or per call)."""
    if message not in _SAID:
        _SAID.add(message)
        log.warning(message)


def render_points_zbuffer(setup: FrameSetup, *, backend: str, point_size: int = 1,
                          depth_scaled_size: bool = False, max_point_size: Optional[int] = None,
                          near: float = 1e-3, background=(0.0, 0.0, 0.0),
                          progress: Optional[Callable[[int, int], None]] = None,
                          fallback_allowed: bool = False) -> RenderResult:
    """Render all frames of ``setup`` with the hard z-buffer.

    Args:
        setup: the frames to render (points, colours, cameras, optional point mask), see :mod:`.projection`.
        backend: ``"torch"`` or ``"triton"`` (already resolved by :func:`choose_backend`).
        point_size, depth_scaled_size, max_point_size, near, background: see
            :func:`~moge4d_core.render.api.render_points`.
        progress: ``progress(i, T)`` is called after frame ``i`` (1-based) is finished.
        fallback_allowed: when the Triton kernels fail, redo the batch in PyTorch (and use PyTorch from then
            on) instead of raising.

    Returns:
        :class:`RenderResult` on the points' device: rgb (T,H,W,3), depth (T,H,W) camera z (0 in holes),
        holes (T,H,W) float32 (1 = no point landed); ``extras``: ``"point_index"`` (T,H,W) int32 index of the
        visible point (-1 in holes), ``"backend"`` the backend that ran (``"torch"`` after a fallback).
    """
    global _TRITON_BROKEN
    T, H, W = setup.frames, setup.height, setup.width
    dev = setup.points.device
    N = setup.points.shape[1]
    if max_point_size is None:
        max_point_size = 4 * point_size
    ref_depth = None
    if depth_scaled_size:
        # a point covered point_size pixels at its first-frame depth (world = first-frame camera)
        ref_depth = setup.points[0, :, 2].contiguous()
    rgb = torch.empty((T, H, W, 3), dtype=torch.float32, device=dev)
    depth = torch.empty((T, H, W), dtype=torch.float32, device=dev)
    holes = torch.empty((T, H, W), dtype=torch.float32, device=dev)
    index = torch.empty((T, H, W), dtype=torch.int32, device=dev)
    budget = GPU_POINTS_PER_BATCH if dev.type == "cuda" else CPU_POINTS_PER_BATCH
    step = max(1, budget // N)
    kw = dict(near=near, point_size=point_size, max_point_size=max_point_size if depth_scaled_size else point_size,
              ref_depth=ref_depth)
    work = zb.TorchWorkspace()
    table = zb.color_table(setup.colors, background)
    keys_buf = None
    t0 = 0
    while t0 < T:
        t1 = min(T, t0 + step)
        w2c, K = setup.cameras_at(t0, t1)
        cam = zb.pack_cameras(w2c, K)
        pts, msk = setup.points_at(t0, t1), setup.mask_at(t0, t1)
        outs = (rgb[t0:t1], depth[t0:t1], holes[t0:t1], index[t0:t1])
        if backend == "triton":
            try:
                if keys_buf is None or keys_buf.shape[0] != t1 - t0:
                    keys_buf = zb.new_key_buffer(t1 - t0, H, W, dev)
                keys = zb.scatter_keys_triton(pts, cam, H, W, point_mask=msk, keys=keys_buf, **kw)
                zb.resolve_keys_triton(keys, setup.colors, background, out=outs)
            except Exception as exc:  # a kernel that fails to compile or launch on this GPU
                if not fallback_allowed:
                    raise
                _TRITON_BROKEN = True
                log.warning("MoGe4D render: Triton z-buffer failed (%s: %s); using the PyTorch backend",
                            type(exc).__name__, exc)
                backend = "torch"
                continue  # redo this batch with PyTorch
        else:
            keys = zb.scatter_keys_torch(pts, cam, H, W, point_mask=msk, work=work, **kw)
            zb.resolve_keys_torch(keys, setup.colors, background, out=outs, table=table)
        if progress is not None:
            for t in range(t0, t1):
                progress(t + 1, T)
        t0 = t1
    return RenderResult(rgb=rgb, depth=depth, holes=holes, extras={"backend": backend, "point_index": index})
