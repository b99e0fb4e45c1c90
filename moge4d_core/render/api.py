"""Public rendering API: :func:`render_points` and :func:`render_trajectories`.

A 4D point set (points ``(T,N,3)`` in the world frame = first-frame camera, OpenCV axes, colours
``(N,3)``) is rendered along a :class:`~moge4d_core.types.CameraPath`: frame ``t`` of the points with
camera ``t`` (either side may have one frame, shared by all frames of the other). Points with camera
depth ``z <= near`` or projecting outside the image are dropped.

Two modes:

* ``"points"`` -- hard z-buffer (:mod:`.points`): each point covers the pixel its projection falls in
  (or a ``point_size x point_size`` block), nearest wins; ``holes`` = no point landed (a genuinely
  black point is *not* a hole, unlike the official ``rgb == 0`` mask).
* ``"gaussians"`` -- each point an isotropic 3D Gaussian, EWA-projected and alpha-composited front to
  back like the official 3DGS render (:mod:`.gaussians`); ``holes`` = accumulated alpha < 0.5. The official
  size is one tiny scale for all (1e-4: about one pixel of dilation); ``gaussian_scale="spacing"``
  (:func:`render_trajectories`) sizes each point to the spacing of the pixel grid it was sampled on
  (:func:`spacing_scale`), so neighbouring splats touch in any view and holes are real disocclusions.

Backends: ``"auto"`` picks Triton (points) / gsplat (gaussians) on CUDA when available, else PyTorch;
``"torch"`` forces the PyTorch code (CPU or GPU); ``"triton"`` (points only) and ``"gsplat"``
(gaussians only) force those and raise :class:`MoGe4DInputError` when they cannot run.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch

from ..errors import MoGe4DInputError, require
from ..types import CameraPath, RenderResult, Trajectories
from . import gaussians as _gaussians
from . import points as _points
from .projection import check_background, prepare_frames

MODES = ("points", "gaussians")
BACKENDS = ("auto", "torch", "triton", "gsplat")
SPACING_FRACTION = 0.5
"""Standard deviation of a spacing-sized Gaussian, as a fraction of its point's grid spacing ``z0 / f``."""
SPACING_DILATION = 0.1
"""Screen-space dilation (px^2) of spacing-sized Gaussians: Mip-Splatting's 2D filter instead of 3DGS's 0.3, since
their own size already covers a pixel; with 0.3 the first view (the input camera) blurs to 27.5 dB against the
input image on the nano demo, with 0.1 it stays at 31.4 dB."""


def spacing_scale(depth0: torch.Tensor, focal: float, fraction: float = SPACING_FRACTION) -> torch.Tensor:
    """Per-point Gaussian size from the point spacing: ``fraction * z0 / f``.

    A point sampled from pixel ``(r, c)`` of a depth map at depth ``z0`` is ``z0 / f`` world units from its
    neighbours (``f`` the focal length in pixels), so Gaussians of this standard deviation touch their
    neighbours in any view: a hole in the render is a real disocclusion, not a gap between points.

    Args:
        depth0: (N,) first-frame camera depth of each point (world z, world = first-frame camera), > 0.
        focal: focal length of the sampling grid in pixels (``K[0, 0]``), > 0.
        fraction: standard deviation per unit of spacing (0.5: the 1-sigma discs of neighbours touch).

    Returns:
        (N,) float32 standard deviations in world units (at least 1e-8).
    """
    require(float(focal) > 0, f"render: focal length must be > 0 pixels, got {focal}")
    require(float(fraction) > 0, f"render: spacing fraction must be > 0, got {fraction}")
    return (depth0.to(torch.float32).abs() * (float(fraction) / float(focal))).clamp(min=1e-8)


def render_points(points: torch.Tensor, colors: torch.Tensor, camera: CameraPath, *, mode: str = "points",
                  point_size: int = 1, depth_scaled_size: bool = False, max_point_size: Optional[int] = None,
                  gaussian_scale: Union[float, torch.Tensor] = 1e-4, opacity: float = 1.0,
                  gaussian_dilation: float = _gaussians.EPS2D,
                  background: Sequence[float] = (0.0, 0.0, 0.0), near: float = 1e-3, backend: str = "auto",
                  point_mask: Optional[torch.Tensor] = None,
                  progress: Optional[Callable[[int, int], None]] = None) -> RenderResult:
    """Render points along a camera path.

    Args:
        points: (T,N,3) or (N,3) float, world coordinates (world = first-frame camera, OpenCV axes).
        colors: (N,3) float in [0,1], one colour per point, constant over time.
        camera: :class:`CameraPath` with T or 1 cameras (c2w (T,4,4), pixel K (T,3,3), width, height).
        mode: ``"points"`` (hard z-buffer) or ``"gaussians"`` (alpha-composited 3D Gaussians).
        point_size: points mode, footprint side k in pixels (the k x k block of pixels whose centres are
            nearest to the projection; 1 = the pixel containing it).
        depth_scaled_size: points mode, scale the footprint with depth: side
            ``clamp(round(point_size * z0 / z), 1, max_point_size)`` where ``z0`` is the point's depth in
            the first-frame camera (its first-frame world z) and ``z`` its depth in the rendered camera, so
            a point keeps its world size when the camera moves closer (assumes the rendering focal length
            is the one the points were sampled with).
        max_point_size: cap for the depth-scaled footprint (default ``4 * point_size``).
        gaussian_scale: gaussians mode, isotropic standard deviation in world units (official 1e-4), or an
            (N,) tensor with one per point (:func:`spacing_scale`).
        opacity: gaussians mode, opacity of every Gaussian, in (0, 1].
        gaussian_dilation: gaussians mode, screen-space variance in px^2 added to every footprint (3DGS and the
            official render: 0.3), >= 0.
        background: RGB in [0,1] for pixels without points (and behind translucent Gaussians).
        near: points with camera-space z <= near are dropped (> 0).
        backend: ``"auto"``, ``"torch"``, ``"triton"`` (points) or ``"gsplat"`` (gaussians).
        point_mask: optional (T,N) or (N,) bool; False drops the point in that frame.
        progress: ``progress(i, T)`` is called once per frame, after frame ``i`` (1-based) is done. An
            exception raised by it propagates unchanged (use it for cancellation); nothing is kept.

    Returns:
        :class:`RenderResult` with rgb (T,H,W,3) float32 in [0,1], depth (T,H,W) camera z (0 in holes),
        holes (T,H,W) float32 (1 = hole), on ``points.device``. ``extras``: ``"backend"`` (str, what
        ran), points mode ``"point_index"`` (T,H,W) int32 (-1 in holes), gaussians mode ``"alpha"``
        (T,H,W) float32.
    """
    require(mode in MODES, f"render: mode must be one of {MODES}, got {mode!r}")
    require(backend in BACKENDS, f"render: backend must be one of {BACKENDS}, got {backend!r}")
    require(isinstance(point_size, int) and not isinstance(point_size, bool) and 1 <= point_size <= 64,
            f"render: point_size must be an integer in [1, 64], got {point_size!r}")
    if max_point_size is not None:
        require(isinstance(max_point_size, int) and point_size <= max_point_size <= 64,
                f"render: max_point_size must be an integer in [point_size, 64], got {max_point_size!r}")
    if isinstance(gaussian_scale, torch.Tensor):
        n = points.shape[-2] if isinstance(points, torch.Tensor) and points.ndim >= 2 else -1
        require(gaussian_scale.shape == (n,) and gaussian_scale.is_floating_point(),
                f"render: gaussian_scale as a tensor must be (N,) = ({n},) floats, one per point, got "
                f"{tuple(gaussian_scale.shape)} {gaussian_scale.dtype}")
        require(bool((gaussian_scale > 0).all()) and bool(torch.isfinite(gaussian_scale).all()),
                "render: gaussian_scale must be finite and > 0 (world units) for every point")
        scale = gaussian_scale.to(device=points.device, dtype=torch.float32)
    else:
        require(float(gaussian_scale) > 0, f"render: gaussian_scale must be > 0 (world units), got {gaussian_scale}")
        scale = float(gaussian_scale)
    require(0.0 < float(opacity) <= 1.0, f"render: opacity must be in (0, 1], got {opacity}")
    require(float(gaussian_dilation) >= 0, f"render: gaussian_dilation must be >= 0 (px^2), got {gaussian_dilation}")
    require(float(near) > 0, f"render: near must be > 0, got {near}")
    require(progress is None or callable(progress), "render: progress must be a callable (i, T) or None")
    bg = check_background(background)
    setup = prepare_frames(points, colors, camera, point_mask)
    device = setup.points.device

    if mode == "points":
        if backend == "gsplat":
            raise MoGe4DInputError("render: backend 'gsplat' renders Gaussians; use mode='gaussians' or "
                                   "backend 'auto' / 'torch' / 'triton' for points")
        try:
            chosen = _points.choose_backend(backend, device)
        except RuntimeError:
            raise MoGe4DInputError(
                f"render: backend 'triton' needs CUDA tensors and the triton package (points are on {device}); "
                "use backend 'auto' or 'torch'") from None
        return _points.render_points_zbuffer(
            setup, backend=chosen, point_size=point_size, depth_scaled_size=depth_scaled_size,
            max_point_size=max_point_size, near=float(near), background=bg, progress=progress,
            fallback_allowed=(backend == "auto"))

    if backend == "triton":
        raise MoGe4DInputError("render: backend 'triton' is for mode='points'; Gaussians use 'auto', 'torch' "
                               "or 'gsplat'")
    try:
        return _gaussians.render_gaussians(
            setup, backend=backend, scale=scale, opacity=float(opacity), near=float(near),
            background=bg, progress=progress, dilation=float(gaussian_dilation))
    except RuntimeError as exc:
        if backend == "gsplat" and "gsplat" in str(exc):
            raise MoGe4DInputError(f"render: backend 'gsplat' cannot run here: {exc}. Install gsplat with a "
                                   "CUDA toolkit and use CUDA tensors, or use backend 'auto' / 'torch'") from exc
        raise


def render_trajectories(traj: Trajectories, camera: CameraPath, *, use_visibility: bool = False,
                        **kwargs) -> RenderResult:
    """Render a :class:`Trajectories` along ``camera`` (see :func:`render_points` for ``kwargs``).

    ``use_visibility``: drop points whose ``traj.visibility`` is False in a frame (off by default: a
    point occluded in the source video still exists and the z-buffer decides what the new view sees).

    ``gaussian_scale="spacing"`` (gaussians mode): each point sized to its grid spacing,
    :func:`spacing_scale` of its first-frame depth and the focal length of ``traj.K`` (or, when the
    trajectories carry no K, of the camera path's first camera), with ``gaussian_dilation``
    :data:`SPACING_DILATION` unless given.
    """
    if not isinstance(traj, Trajectories):
        raise MoGe4DInputError(f"render_trajectories: expected Trajectories, got {type(traj).__name__}")
    if isinstance(kwargs.get("gaussian_scale"), str):
        require(kwargs["gaussian_scale"] == "spacing",
                f"render: gaussian_scale must be a number, an (N,) tensor or 'spacing', got {kwargs['gaussian_scale']!r}")
        focal = float((traj.K if traj.K is not None else camera.K[0])[0, 0])
        kwargs["gaussian_scale"] = spacing_scale(traj.points[0, :, 2], focal)
        kwargs.setdefault("gaussian_dilation", SPACING_DILATION)
    if use_visibility and traj.visibility is not None:
        if kwargs.get("point_mask") is not None:
            raise MoGe4DInputError("render_trajectories: give either use_visibility or point_mask, not both")
        kwargs["point_mask"] = traj.visibility.to(torch.bool)
    return render_points(traj.points, traj.colors, camera, **kwargs)
