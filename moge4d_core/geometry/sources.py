"""Building a :class:`~moge4d_core.types.Geometry` from the sources the node pack accepts, and resizing it.

Sources
-------
* :func:`geometry_from_depth`: any depth map given as an image (ComfyUI ``IMAGE`` channel 0) plus a horizontal
  field of view. ``depth_kind`` says what the values mean:

  - ``"metric"``: the value *is* the z-depth in scene units (e.g. metres); a constant map is a fronto-parallel
    plane (allowed). Pixels <= 0 or non-finite are invalid.
  - ``"relative_inverse"``: relative inverse depth / disparity, bright = near (DepthAnything, MiDaS, ZoeDepth
    previews). Values are rescaled to t in [0, 1] over the valid pixels (min -> 0, max -> 1) and mapped linearly
    in *inverse* depth: ``1/z = 1/far + t (1/near - 1/far)``, so t = 1 -> ``near`` and t = 0 -> ``far``.
  - ``"relative"``: relative depth, bright = far. ``z = near + t (far - near)``.

  An all-zero map, and a constant map for the relative kinds, carry no depth and are refused.
* :func:`geometry_from_moge`: one item of ComfyUI's ``MOGE_GEOMETRY`` dict (points (B,H,W,3), depth (B,H,W),
  intrinsics (B,3,3) normalised, mask (B,H,W) bool, image (B,H,W,3)); normalised intrinsics are turned into
  pixels with :func:`~.intrinsics.denormalize_K`, ``mask`` (and finite, positive depth) becomes ``valid``.

Points are always recomputed as the pixel-centre back-projection of ``depth`` through ``K``
(:func:`~.backproject.backproject_depth`), so ``Geometry.points`` matches its documented definition whatever the
source (OpenCV camera: x right, y down, z forward).

Working resolution
------------------
:func:`resize_geometry` resamples to the model's working size (multiples of 16; the release uses 512 x 368).
The image is resampled bilinearly (antialiased when shrinking); depth and ``valid`` are *min-pooled*: each output
pixel takes the nearest valid depth inside its source footprint, so an output pixel straddling a near and a far
region gets the near value rather than an average that would float in empty space between them ("flying
points"). When enlarging, nearest-neighbour is used (same property). ``K`` is scaled by the size ratio per axis
(pixel-centre convention: continuous coordinates scale exactly). Written by hand because torch offers no masked
min-pooling to an arbitrary size; it is ``adaptive_max_pool2d`` on the negated depth.

:func:`with_official_intrinsics` swaps the camera for the released checkpoint's fixed pseudo-intrinsics.
Preview images of these live in :mod:`moge4d_core.preview`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import MoGe4DInputError, require
from ..types import Geometry
from .backproject import backproject_depth, backproject_official
from .intrinsics import (OFFICIAL_INFER_ORIGINAL_SIZE, K_from_fov, check_fov, denormalize_K,
                         official_pseudo_focal)

DEPTH_KINDS = ("metric", "relative_inverse", "relative")
DEFAULT_WIDTH, DEFAULT_HEIGHT = 512, 368
SIZE_MULTIPLE = 16


def as_rgb(image: torch.Tensor, name: str = "image") -> torch.Tensor:
    """One image ``(H,W,C)`` or ``(1,H,W,C)``, C in {1, 3, 4}, float [0,1] or uint8 -> ``(H,W,3)`` float32 [0,1].

    Grey is repeated to 3 channels, RGBA loses its alpha.
    """
    if not isinstance(image, torch.Tensor):
        raise MoGe4DInputError(f"{name}: expected a torch.Tensor (H,W,3), got {type(image).__name__}")
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise MoGe4DInputError(f"{name}: expected one channel-last image (H,W,1|3|4), got {tuple(image.shape)}")
    image = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
    if image.shape[-1] == 1:
        image = image.expand(-1, -1, 3)
    return image[..., :3].clamp(0, 1).contiguous()


def _depth_channel(depth: torch.Tensor, name: str) -> torch.Tensor:
    """Depth ``(H,W)``, ``(H,W,C)`` or ``(1,H,W,C)`` -> ``(H,W)`` float32 (channel 0)."""
    if not isinstance(depth, torch.Tensor):
        raise MoGe4DInputError(f"{name}: expected a torch.Tensor depth map, got {type(depth).__name__}")
    if depth.ndim == 4 and depth.shape[0] == 1:
        depth = depth[0]
    if depth.ndim == 3:
        if depth.shape[-1] not in (1, 3, 4):
            raise MoGe4DInputError(f"{name}: expected a channel-last depth image (H,W,1|3|4), got {tuple(depth.shape)}")
        depth = depth[..., 0]
    if depth.ndim != 2 or min(depth.shape) < 1:
        raise MoGe4DInputError(f"{name}: expected a depth map (H,W) or image (H,W,C), got {tuple(depth.shape)}")
    return depth.float()


def _resize_nearest(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    return F.interpolate(x[None, None], size=(height, width), mode="nearest-exact")[0, 0]


def geometry_from_depth(image: torch.Tensor, depth: torch.Tensor, fov_deg: float, *, depth_kind: str = "metric",
                        near: float = 1.0, far: float = 10.0) -> Geometry:
    """Image ``(H,W,C)`` + depth image (channel 0) + horizontal fov in degrees -> :class:`Geometry`.

    See the module docstring for ``depth_kind``. A depth map of another size is resized to the image with
    nearest-neighbour. ``K`` has square pixels and the principal point at the image centre.
    """
    fov = check_fov(fov_deg, "fov")
    if depth_kind not in DEPTH_KINDS:
        raise MoGe4DInputError(f"depth_kind: expected one of {DEPTH_KINDS}, got {depth_kind!r}")
    rgb = as_rgb(image, "image")
    d = _depth_channel(depth, "depth")
    h, w = rgb.shape[:2]
    if d.shape != (h, w):
        d = _resize_nearest(d, h, w)
    finite = torch.isfinite(d)
    if not bool((finite & (d != 0)).any()):
        raise MoGe4DInputError("depth: the depth map is all zero (or NaN): connect a depth image whose values vary")
    if depth_kind == "metric":
        valid = finite & (d > 0)
        if not bool(valid.any()):
            raise MoGe4DInputError(
                f"depth: no pixel has a positive depth (values {float(d[finite].min()):g} .. {float(d[finite].max()):g}); "
                f"metric depth is the distance along the camera's z axis in metres and must be > 0. If the map is "
                f"inverse or relative depth, set depth_kind to 'relative_inverse' or 'relative'")
        z = torch.where(valid, d, torch.zeros_like(d))
        metric = True
    else:
        near, far = float(near), float(far)
        if not (near > 0 and far > near and math.isfinite(far)):
            raise MoGe4DInputError(f"near/far: need 0 < near < far, got near={near}, far={far}")
        lo, hi = float(d[finite].min()), float(d[finite].max())
        if hi - lo <= 1e-8 * max(1.0, abs(hi)):
            raise MoGe4DInputError(f"depth: the relative depth map is constant ({lo:g}); a relative map needs "
                                   f"variation (use depth_kind 'metric' for a known constant depth)")
        t = ((torch.where(finite, d, torch.full_like(d, lo)) - lo) / (hi - lo)).clamp(0, 1)
        if depth_kind == "relative_inverse":
            z = 1.0 / (1.0 / far + t * (1.0 / near - 1.0 / far))
        else:
            z = near + t * (far - near)
        valid = finite
        z = torch.where(valid, z, torch.zeros_like(z))
        metric = False
    K = K_from_fov(fov, w, h)
    return Geometry(image=rgb, depth=z, K=K, points=backproject_depth(z, K), valid=valid, metric=metric)


MOGE_KEYS = ("points", "depth", "intrinsics", "mask", "image")


def geometry_from_moge(moge: dict, index: int = 0, *, metric: bool = True) -> Geometry:
    """Item ``index`` of a ComfyUI ``MOGE_GEOMETRY`` dict -> :class:`Geometry` (see module docstring).

    ``metric``: MoGe-2 predicts metric depth, MoGe-1 relative (scale-free) depth; say which.
    """
    if not isinstance(moge, dict):
        raise MoGe4DInputError(f"moge_geometry: expected a MOGE_GEOMETRY dict, got {type(moge).__name__}")
    missing = [k for k in ("depth", "intrinsics", "image") if k not in moge]
    if missing:
        raise MoGe4DInputError(f"moge_geometry: missing {missing}; expected keys {MOGE_KEYS}")
    depth = moge["depth"]
    if depth.ndim == 2:
        depth = depth[None]
    b = depth.shape[0]
    if not -b <= index < b:
        raise MoGe4DInputError(f"index: {index} out of range for a batch of {b}")
    d = depth[index].float().cpu()
    h, w = d.shape
    img = moge["image"]
    img = img[index] if img.ndim == 4 else img
    rgb = as_rgb(img.cpu(), "moge_geometry.image")
    if rgb.shape[:2] != (h, w):
        raise MoGe4DInputError(f"moge_geometry.image: size {tuple(rgb.shape[:2])} differs from depth {(h, w)}")
    Kn = moge["intrinsics"]
    Kn = (Kn[index] if Kn.ndim == 3 else Kn).float().cpu()
    if tuple(Kn.shape) != (3, 3):
        raise MoGe4DInputError(f"moge_geometry.intrinsics: expected (B,3,3), got {tuple(moge['intrinsics'].shape)}")
    K = denormalize_K(Kn, w, h)
    valid = torch.isfinite(d) & (d > 0)
    if moge.get("mask") is not None:
        m = moge["mask"]
        m = m[index] if m.ndim == 3 else m
        valid = valid & m.cpu().bool()
    if not bool(valid.any()):
        raise MoGe4DInputError("moge_geometry: no valid pixel (mask empty or depth not positive)")
    z = torch.where(valid, d, torch.zeros_like(d))
    return Geometry(image=rgb, depth=z, K=K, points=backproject_depth(z, K), valid=valid, metric=metric)


def check_working_size(width: int, height: int) -> tuple[int, int]:
    """Validate a working resolution: positive multiples of 16."""
    width, height = int(width), int(height)
    if width <= 0 or height <= 0 or width % SIZE_MULTIPLE or height % SIZE_MULTIPLE:
        raise MoGe4DInputError(f"width/height: working resolution must be positive multiples of {SIZE_MULTIPLE} "
                               f"(the release uses {DEFAULT_WIDTH}x{DEFAULT_HEIGHT}), got {width}x{height}")
    return width, height


def min_pool_depth(depth: torch.Tensor, valid: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor,
                                                                                             torch.Tensor]:
    """Depth ``(H,W)`` + valid ``(H,W)`` -> ``(height,width)`` depth and valid: the smallest valid depth inside
    each output pixel's footprint (nearest-neighbour first along any axis that grows). Invalid where the whole
    footprint is invalid (depth 0 there)."""
    H, W = depth.shape
    d = torch.where(valid, depth.float(), torch.full_like(depth, float("inf"), dtype=torch.float32))
    up = (max(H, height), max(W, width))
    if up != (H, W):
        d = F.interpolate(d[None, None], size=up, mode="nearest-exact")[0, 0]
    if up != (height, width):
        d = -F.adaptive_max_pool2d(-d[None, None], (height, width))[0, 0]
    ok = torch.isfinite(d)
    return torch.where(ok, d, torch.zeros_like(d)), ok


def resize_geometry(geom: Geometry, width: int = DEFAULT_WIDTH, height: int = DEFAULT_HEIGHT) -> Geometry:
    """Resample ``geom`` to ``width x height`` (multiples of 16): bilinear image, min-pooled depth / valid,
    ``K`` scaled per axis, points recomputed. Returns ``geom`` itself when the size already matches."""
    width, height = check_working_size(width, height)
    if (geom.height, geom.width) == (height, width):
        return geom
    shrink = height < geom.height or width < geom.width
    img = F.interpolate(geom.image.permute(2, 0, 1)[None].float(), size=(height, width), mode="bilinear",
                        align_corners=False, antialias=shrink)[0].permute(1, 2, 0).clamp(0, 1).contiguous()
    depth, valid = min_pool_depth(geom.depth, geom.valid, height, width)
    K = geom.K.clone().float()
    K[0, :] *= width / geom.width
    K[1, :] *= height / geom.height
    return Geometry(image=img, depth=depth, K=K, points=backproject_depth(depth, K), valid=valid, metric=geom.metric)


def official_pixel_K(height: int, width: int, original_size: tuple[int, int] = OFFICIAL_INFER_ORIGINAL_SIZE
                     ) -> torch.Tensor:
    """Pixel K (3,3) that reproduces the official back-projection at ``height x width``.

    The official code samples ``u = j / (W-1)``, ``X = (u - 0.5) z / fx`` with normalised ``fx`` from
    :func:`official_pseudo_focal`; with pixel centres ``j + 0.5`` that is ``fx_px = fx (W-1)``, ``cx = W/2``
    (likewise for y).
    """
    fx, fy = official_pseudo_focal(height, width, *original_size)
    return torch.tensor([[fx * (width - 1), 0.0, width / 2.0], [0.0, fy * (height - 1), height / 2.0],
                         [0.0, 0.0, 1.0]])


def official_render_K(height: int, width: int,
                      original_size: tuple[int, int] = OFFICIAL_INFER_ORIGINAL_SIZE) -> torch.Tensor:
    """Pixel K (3,3) of the official renderers at ``height x width`` (reference D).

    They project with the normalised K of :func:`official_pseudo_focal` and take pixel ``floor(u W)``, i.e.
    ``fx_px = fx W``, ``cx = W/2`` (likewise for y). The back-projection (:func:`official_pixel_K`) uses
    ``fx (W-1)``: the release renders a static camera about 0.5 px wider at the border than the input grid, and
    compat mode reproduces that.

    Returns:
        (3, 3) float32 pixel intrinsics.
    """
    fx, fy = official_pseudo_focal(height, width, *original_size)
    return torch.tensor([[fx * width, 0.0, width / 2.0], [0.0, fy * height, height / 2.0], [0.0, 0.0, 1.0]])


def with_official_intrinsics(geom: Geometry) -> Geometry:
    """Replace the camera by the released MoGe4D checkpoint's fixed pseudo-intrinsics (reference B).

    The official inference ignores the predicted camera: it back-projects the depth with normalised focal
    lengths from ``official_pseudo_focal(H, W, 540, 960)`` (``(1.0, 1.2778)`` at 368x512) on
    ``linspace(0, 1, W|H)`` coordinates (:func:`~.backproject.backproject_official`). Use this for results that
    match the released demo; ``K`` is set to :func:`official_pixel_K`, the pixel K giving the same points.
    Depth, image and valid are unchanged.
    """
    require(geom.height > 1 and geom.width > 1, "geometry: official intrinsics need at least 2x2 pixels")
    fx, fy = official_pseudo_focal(geom.height, geom.width, *OFFICIAL_INFER_ORIGINAL_SIZE)
    points = backproject_official(geom.depth.float(), fx, fy)
    return Geometry(image=geom.image, depth=geom.depth, K=official_pixel_K(geom.height, geom.width),
                    points=points, valid=geom.valid, metric=geom.metric)


__all__ = ["DEPTH_KINDS", "DEFAULT_WIDTH", "DEFAULT_HEIGHT", "as_rgb", "geometry_from_depth", "geometry_from_moge",
           "check_working_size", "min_pool_depth", "resize_geometry", "official_pixel_K", "official_render_K",
           "with_official_intrinsics"]
