"""UniDepthV2 and UniDepthV2old models with the reference ``infer`` behaviour.

Both expose ``infer(rgb, camera_K=None, resolution_level=None, pixel_budget=None) -> DepthPrediction``:

* ``rgb``: ``(B, 3, H, W)`` or ``(3, H, W)``, float in [0, 1] or uint8 in [0, 255]. Input scaling follows
  UniDepthV2old's rule for both generations: uint8, or float with max > 5, is divided by 255; values then inside
  [0, 1] are ImageNet-normalised; any other float range (e.g. the [-1, 1] tensor MoGe4D's ``infer.py`` passes) is
  taken as already normalised and used as is. (The V2 reference divides by 255 unconditionally and expects
  0..255 input; giving it [0, 1] here yields the same network input as 0..255 there.) Grey (1-channel), RGBA
  (4-channel) and channel-last input are refused with a message saying how to convert.
* ``camera_K``: optional known pixel intrinsics ``(3, 3)`` or ``(B, 3, 3)`` of the input image. When given, its
  rays replace the predicted ones (V2: inside the network; V2old: inside the network and for the final
  back-projection), as in the reference.
* ``resolution_level``: V2 0..9 (None = the whole [200k, 600k] pixel range), V2old 0..10 (None = 10, 2400
  tokens). ``pixel_budget`` (our addition) pins the network input to about that many pixels instead.

Returned :class:`~moge4d_core.types.DepthPrediction` (float32, at the input resolution ``H x W``):

* ``depth (B, H, W)``: z-depth in metres (OpenCV camera: x right, y down, z forward);
* ``points (B, H, W, 3)``: camera-frame points (V2: ``rays * radius`` resized like the reference; V2old:
  ``depth * K⁻¹[u+0.5, v+0.5, 1]`` with ``K`` below);
* ``K (B, 3, 3)``: pixel intrinsics of the input image used for ``points`` (``camera_K`` when given, else the
  prediction); ``K_predicted (B, 3, 3)``: the network's own estimate in any case;
* ``confidence (B, H, W)``: V2 ``exp(clip(logc))`` (a ranking, not calibrated), V2old ``sigmoid`` in (0, 1).
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...errors import MoGe4DInputError
from ...types import DepthPrediction
from .camera import pixel_rays, scale_intrinsics, unit_rays
from .config import UniDepthConfig
from .decoder_v2 import DecoderV2
from .decoder_v2old import DecoderV2old
from .encoder import DinoV2Encoder
from .shapes import v2_network_shape, v2old_network_shape, v2old_token_budget

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def prepare_rgb(rgb: torch.Tensor, device: torch.device, name: str = "rgb") -> torch.Tensor:
    """Validate and scale an image batch to the network's input space, ``(B, 3, H, W)`` float32.

    See the module docstring for the scaling rule.

    Args:
        rgb: ``(B, 3, H, W)`` or ``(3, H, W)`` channel-first, float in [0, 1] (or 0..255, or already
            normalised) or uint8 in [0, 255]; ``H, W >= 2``.
        device: where the result goes.
        name: the argument name used in error messages.

    Returns:
        ``(B, 3, H, W)`` float32 on ``device``, ImageNet-normalised (or as given when already normalised).

    Raises:
        MoGe4DInputError: not a tensor, not 3 channels (grey, RGBA and channel-last get a hint), smaller than
            2x2, NaN / inf values, or an integer dtype other than uint8.
    """
    if not isinstance(rgb, torch.Tensor):
        raise MoGe4DInputError(f"{name}: expected a torch.Tensor image (B,3,H,W), got {type(rgb).__name__}")
    if rgb.ndim == 3:
        rgb = rgb.unsqueeze(0)
    if rgb.ndim != 4:
        raise MoGe4DInputError(f"{name}: expected shape (B,3,H,W) or (3,H,W), got {tuple(rgb.shape)}")
    c = rgb.shape[1]
    if c != 3:
        if rgb.shape[-1] in (1, 3, 4) and c not in (1, 4):
            raise MoGe4DInputError(f"{name}: got channel-last shape {tuple(rgb.shape)}; UniDepth expects "
                                   f"channel-first (B,3,H,W): use rgb.permute(0, 3, 1, 2)")
        hint = {1: "a grey image: repeat it to 3 channels (rgb.repeat(1, 3, 1, 1))",
                4: "an RGBA image: drop the alpha channel (rgb[:, :3])"}.get(c, "not an RGB image")
        raise MoGe4DInputError(f"{name}: expected 3 colour channels, got {c} in shape {tuple(rgb.shape)}; this is "
                               f"{hint}")
    if rgb.shape[-2] < 2 or rgb.shape[-1] < 2:
        raise MoGe4DInputError(f"{name}: image {rgb.shape[-2]}x{rgb.shape[-1]} is too small; need at least 2x2 "
                               f"pixels (smaller images are upsampled to the network size, so any size >= 2 works)")
    if rgb.dtype == torch.uint8:
        x = rgb.to(device=device, dtype=torch.float32) / 255.0
    elif rgb.is_floating_point():
        x = rgb.to(device=device, dtype=torch.float32)
        if not bool(torch.isfinite(x).all()):
            raise MoGe4DInputError(f"{name}: contains NaN or inf values")
        if float(x.max()) > 5.0:
            x = x / 255.0
    else:
        raise MoGe4DInputError(f"{name}: expected float in [0,1] or uint8, got dtype {rgb.dtype}")
    if float(x.min()) >= 0.0 and float(x.max()) <= 1.0:
        mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        x = (x - mean) / std
    return x


def _check_K(K: torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    if not isinstance(K, torch.Tensor):
        K = torch.as_tensor(K)
    if K.ndim == 2:
        K = K.unsqueeze(0)
    if K.ndim != 3 or K.shape[-2:] != (3, 3) or K.shape[0] not in (1, batch):
        raise MoGe4DInputError(f"camera_K: expected (3,3) or ({batch},3,3) pixel intrinsics, got {tuple(K.shape)}")
    K = K.to(device=device, dtype=torch.float32).expand(batch, 3, 3).clone()
    if not bool(torch.isfinite(K).all()) or bool((K[:, 0, 0] <= 0).any()) or bool((K[:, 1, 1] <= 0).any()):
        raise MoGe4DInputError("camera_K: focal lengths must be positive and all entries finite")
    return K


class _UniDepthBase(nn.Module):
    """DINOv2 encoder + the generation's decoder (``version`` and ``decoder_cls`` set by each subclass)."""

    config: UniDepthConfig
    version: str
    decoder_cls: type

    def __init__(self, config: UniDepthConfig) -> None:
        if config.version != self.version:
            raise ValueError(f"{type(self).__name__} needs a {self.version} config, got {config.version}")
        super().__init__()
        self.config = config
        self.pixel_encoder = DinoV2Encoder(config.embed_dim, config.depth, config.num_heads)
        self.pixel_decoder = self.decoder_cls(config)

    @property
    def device(self) -> torch.device:
        """Device of the weights (where :meth:`infer` runs)."""
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the weights (the network input is cast to it)."""
        return next(self.parameters()).dtype


class UniDepthV2(_UniDepthBase):
    """UniDepthV2 (2025 release): DINOv2 encoder + :class:`~.decoder_v2.DecoderV2`."""

    version = "v2"
    decoder_cls = DecoderV2

    def forward_network(self, x: torch.Tensor, rays_gt: Optional[torch.Tensor] = None) -> dict:
        """Network pass on a normalised input ``(B, 3, H, W)``, H and W multiples of 14 (see DecoderV2).

        Args:
            x: ImageNet-normalised network input ``(B, 3, H, W)`` (:func:`prepare_rgb`, then resized).
            rays_gt: known unit rays ``(B, H*W, 3)`` of the network input, or None to use the predicted ones.

        Returns:
            the decoder's dict at the network resolution (``rays``, ``radius``, ``confidence``, ``K`` ...,
            see :class:`~.decoder_v2.DecoderV2`).
        """
        feats, cls = self.pixel_encoder(x.to(self.dtype), self.config.output_idx)
        return self.pixel_decoder(feats, cls, (x.shape[-2], x.shape[-1]), rays_gt)

    @torch.no_grad()
    def infer(self, rgb: torch.Tensor, camera_K: Optional[torch.Tensor] = None,
              resolution_level: Optional[int] = None, pixel_budget: Optional[int] = None) -> DepthPrediction:
        """Metric depth, points and camera of a batch of images (reference rules: aspect padding to [0.5, 2.5],
        pixel budget, bilinear resize; see the module docstring).

        Args:
            rgb: ``(B, 3, H, W)`` or ``(3, H, W)``, float in [0, 1] or uint8 (see :func:`prepare_rgb`).
            camera_K: known pixel intrinsics ``(3, 3)`` or ``(B, 3, 3)`` of ``rgb``, or None to predict them.
            resolution_level: 0..9, a tenth of the ``config.pixels_bounds`` range each (published:
                [200k, 600k] pixels); None = the whole range.
            pixel_budget: about this many network-input pixels instead (at least 196), or None.

        Returns:
            :class:`~moge4d_core.types.DepthPrediction` at ``H x W``, float32: depth ``(B, H, W)`` metres,
            points ``(B, H, W, 3)`` metres, K / K_predicted ``(B, 3, 3)`` pixels, confidence ``(B, H, W)``.

        Raises:
            MoGe4DInputError: a bad image (:func:`prepare_rgb`), a ``camera_K`` of the wrong shape or with
                non-positive / non-finite focal lengths, or a ``resolution_level`` / ``pixel_budget`` out of range.
        """
        cfg = self.config
        x = prepare_rgb(rgb, self.device)
        b, _, H, W = x.shape
        (pl, pr, pt, pb), (ph, pw), factor, (nh, nw) = v2_network_shape(
            H, W, resolution_level, pixel_budget, cfg.ratio_bounds, cfg.pixels_bounds)
        x = F.pad(x, (pl, pr, pt, pb), value=0.0)
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
        K_in = None
        rays_gt = None
        if camera_K is not None:
            K_in = _check_K(camera_K, b, self.device)
            Kn = K_in.clone()
            Kn[:, 0, 2] += pl
            Kn[:, 1, 2] += pt
            rays_gt = unit_rays(scale_intrinsics(Kn, factor), nh, nw, eps=1e-4).reshape(b, nh * nw, 3)
        out = self.forward_network(x, rays_gt)
        rays = out["rays"].reshape(b, nh, nw, 3).permute(0, 3, 1, 2)
        points = rays * out["radius"]

        def post(t: torch.Tensor) -> torch.Tensor:
            t = F.interpolate(t, size=(ph, pw), mode="bilinear", align_corners=False)
            return t[..., pt:ph - pb, pl:pw - pr]

        points = post(points).permute(0, 2, 3, 1).contiguous()
        confidence = post(out["confidence"])[:, 0]
        K_pred = out["K"].clone()
        K_pred[:, :2, :] = K_pred[:, :2, :] / factor
        K_pred[:, 0, 2] -= pl
        K_pred[:, 1, 2] -= pt
        return DepthPrediction(depth=points[..., 2].contiguous(), points=points,
                               K=K_in if K_in is not None else K_pred, K_predicted=K_pred, confidence=confidence)


class UniDepthV2Old(_UniDepthBase):
    """UniDepthV2old (2024 release, the class MoGe4D imports): DINOv2 encoder + :class:`~.decoder_v2old.DecoderV2old`."""

    version = "v2old"
    decoder_cls = DecoderV2old

    def forward_network(self, x: torch.Tensor, rays_gt: Optional[torch.Tensor] = None) -> dict:
        """Network pass on a normalised input ``(B, 3, H, W)``, H and W multiples of 14 (see DecoderV2old).

        Args:
            x: ImageNet-normalised network input ``(B, 3, H, W)`` (:func:`prepare_rgb`, then resized).
            rays_gt: known unit rays ``(B, H*W, 3)`` of the network input, or None to use the predicted ones.

        Returns:
            the decoder's dict at the network resolution (``depth``, ``confidence``, ``K`` ..., see
            :class:`~.decoder_v2old.DecoderV2old`).
        """
        cfg = self.config
        d = cfg.depth
        taps = list(cfg.output_idx) + [d - 2, d - 1, d]
        feats, cls = self.pixel_encoder(x.to(self.dtype), taps)
        camera_tokens = [cls[4], cls[5], cls[6], cls[2]]
        global_tokens = [cls[5], cls[6]]
        return self.pixel_decoder(feats[:4], camera_tokens, global_tokens, (x.shape[-2], x.shape[-1]), rays_gt)

    @torch.no_grad()
    def infer(self, rgb: torch.Tensor, camera_K: Optional[torch.Tensor] = None,
              resolution_level: Optional[int] = None, pixel_budget: Optional[int] = None) -> DepthPrediction:
        """Metric depth, points and camera of a batch of images (reference rules: fixed token budget,
        bilinear+antialias resize, no padding; see the module docstring).

        Args:
            rgb: ``(B, 3, H, W)`` or ``(3, H, W)``, float in [0, 1] or uint8 (see :func:`prepare_rgb`).
            camera_K: known pixel intrinsics ``(3, 3)`` or ``(B, 3, 3)`` of ``rgb``, or None to predict them.
            resolution_level: 0..10, ``lo + ceil((hi - lo) * level / 10)`` 14x14-pixel tokens with
                ``(lo, hi) = config.pixels_bounds`` (published: 1400 + 100 * level); None = 10.
            pixel_budget: about this many network-input pixels instead (at least 196), or None.

        Returns:
            :class:`~moge4d_core.types.DepthPrediction` at ``H x W``, float32: depth ``(B, H, W)`` metres,
            points ``(B, H, W, 3)`` metres, K / K_predicted ``(B, 3, 3)`` pixels, confidence ``(B, H, W)``.

        Raises:
            MoGe4DInputError: a bad image (:func:`prepare_rgb`), a ``camera_K`` of the wrong shape or with
                non-positive / non-finite focal lengths, or a ``resolution_level`` / ``pixel_budget`` out of range.
        """
        cfg = self.config
        x = prepare_rgb(rgb, self.device)
        b, _, H, W = x.shape
        tokens = v2old_token_budget(resolution_level, cfg.pixels_bounds, pixel_budget)
        (nh, nw), ratio = v2old_network_shape(H, W, tokens)
        lo, hi = sorted(cfg.ratio_bounds)
        if not lo <= W / H <= hi:
            warnings.warn(f"UniDepthV2old: image aspect ratio {W / H:.3f} is outside the training range "
                          f"[{lo}, {hi}]; results may be poor (crop or pad the image)")
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        K_in = None
        rays_gt = None
        if camera_K is not None:
            K_in = _check_K(camera_K, b, self.device)
            rays_gt = unit_rays(scale_intrinsics(K_in, ratio), nh, nw, eps=1e-12).reshape(b, nh * nw, 3)
        out = self.forward_network(x, rays_gt)
        depth = F.interpolate(out["depth"], size=(H, W), mode="bilinear", align_corners=False)[:, 0]
        confidence = F.interpolate(out["confidence"], size=(H, W), mode="bilinear", align_corners=False,
                                   antialias=True)[:, 0]
        K_pred = out["K"].clone()
        K_pred[:, :2, :] = K_pred[:, :2, :] / ratio
        K = K_in if K_in is not None else K_pred
        points = depth[..., None] * pixel_rays(K, H, W)
        return DepthPrediction(depth=depth.contiguous(), points=points, K=K, K_predicted=K_pred,
                               confidence=confidence.contiguous())


UniDepthModel = UniDepthV2 | UniDepthV2Old


def build_unidepth(config: UniDepthConfig) -> UniDepthV2 | UniDepthV2Old:
    """Instantiate the model class for ``config.version`` (random weights).

    Args:
        config: a :class:`UniDepthConfig` (``version`` ``"v2"`` or ``"v2old"``).

    Returns:
        a :class:`UniDepthV2` or :class:`UniDepthV2Old` on the CPU, float32; load weights with
        :func:`moge4d_core.loading.unidepth.load_unidepth`.
    """
    return UniDepthV2(config) if config.version == "v2" else UniDepthV2Old(config)
