"""UniDepthV2 / UniDepthV2old monocular metric depth + camera (reference ``encoders.md`` §1).

Public API:

* :class:`UniDepthConfig` (``UniDepthConfig.preset("v2old", "vitl14")``), :func:`build_unidepth`;
* :class:`UniDepthV2`, :class:`UniDepthV2Old` with ``infer(rgb, camera_K=None, resolution_level=None,
  pixel_budget=None) -> DepthPrediction`` (:class:`moge4d_core.types.DepthPrediction`: depth, points, K,
  K_predicted, confidence);
* :func:`to_geometry`: one result of ``infer`` as a :class:`moge4d_core.types.Geometry`.

Loading the published files: :func:`moge4d_core.loading.unidepth.load_unidepth`.
"""
from __future__ import annotations

import torch

from ...types import DepthPrediction, Geometry
from .config import UniDepthConfig
from .model import UniDepthV2, UniDepthV2Old, build_unidepth, prepare_rgb


def to_geometry(result: DepthPrediction, image: torch.Tensor, index: int = 0) -> Geometry:
    """Sample ``index`` of an ``infer`` result as :class:`Geometry`.

    Args:
        result: what ``infer`` returned for a batch of B images of H x W.
        image: the same image, ``(B, 3, H, W)`` / ``(3, H, W)`` channel-first or ``(H, W, 3)`` channel-last,
            float [0, 1] or uint8.
        index: which sample of the batch, in [0, B).

    Returns:
        :class:`Geometry` on the CPU (float32): image (H,W,3) [0,1], depth (H,W) metres, K (3,3) pixels,
        points (H,W,3) metres, valid (H,W) True where depth is finite and > 0, ``metric=True``.
    """
    depth = result.depth[index].float().cpu()
    img = image
    if img.ndim == 4:
        img = img[index]
    if img.ndim == 3 and img.shape[0] == 3 and img.shape[-1] != 3:
        img = img.permute(1, 2, 0)
    img = img.float() / 255.0 if img.dtype == torch.uint8 else img.float()
    valid = torch.isfinite(depth) & (depth > 0)
    return Geometry(image=img.cpu().clamp(0, 1), depth=depth, K=result.K[index].float().cpu(),
                    points=result.points[index].float().cpu(), valid=valid, metric=True)


__all__ = ["DepthPrediction", "UniDepthConfig", "UniDepthV2", "UniDepthV2Old", "build_unidepth", "prepare_rgb",
           "to_geometry"]
