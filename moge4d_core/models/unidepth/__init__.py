"""UniDepthV2 / UniDepthV2old monocular metric depth + camera (reference ``encoders.md`` §1).

Public API:

* :class:`UniDepthConfig` (``UniDepthConfig.preset("v2old", "vitl14")``), :func:`build_unidepth`;
* :class:`UniDepthV2`, :class:`UniDepthV2Old` with ``infer(rgb, camera_K=None, resolution_level=None,
  pixel_budget=None) -> {depth, points, K, K_predicted, confidence}``;
* :func:`to_geometry`: one result of ``infer`` as a :class:`moge4d_core.types.Geometry`.

Loading the published files: :func:`moge4d_core.loading.unidepth.load_unidepth`.
"""
from __future__ import annotations

import torch

from ...types import Geometry
from .config import UniDepthConfig
from .model import UniDepthV2, UniDepthV2Old, build_unidepth, prepare_rgb


def to_geometry(result: dict, image: torch.Tensor, index: int = 0) -> Geometry:
    """Sample ``index`` of an ``infer`` result as :class:`Geometry`.

    ``image``: the same image, ``(B, 3, H, W)`` / ``(3, H, W)`` channel-first or ``(H, W, 3)`` channel-last,
    float [0, 1] or uint8. ``valid`` is True where depth is finite and > 0.
    """
    depth = result["depth"][index].float().cpu()
    img = image
    if img.ndim == 4:
        img = img[index]
    if img.ndim == 3 and img.shape[0] == 3 and img.shape[-1] != 3:
        img = img.permute(1, 2, 0)
    img = img.float() / 255.0 if img.dtype == torch.uint8 else img.float()
    valid = torch.isfinite(depth) & (depth > 0)
    return Geometry(image=img.cpu().clamp(0, 1), depth=depth, K=result["K"][index].float().cpu(),
                    points=result["points"][index].float().cpu(), valid=valid, metric=True)


__all__ = ["UniDepthConfig", "UniDepthV2", "UniDepthV2Old", "build_unidepth", "prepare_rgb", "to_geometry"]
