"""Data types passed between pipeline stages (and between ComfyUI nodes).

Each dataclass documents its tensor shapes and coordinate conventions and validates itself on
construction, so a wrong shape is reported where it enters the pipeline, naming the field.

Conventions: OpenCV camera axes (x right, y down, z forward); world frame = first-frame camera;
intrinsics ``K`` are in pixels of the image they belong to, with pixel centres at integer + 0.5
(the top-left pixel covers [0, 1] x [0, 1]); images are float in [0, 1], channel-last.

| ComfyUI type            | dataclass            |
|-------------------------|----------------------|
| ``MOGE4D_GEOMETRY``     | :class:`Geometry`    |
| ``MOGE4D_MOTION_FEATURES`` | :class:`MotionFeatures` |
| ``MOGE4D_MOTION``       | :class:`Motion`      |
| ``MOGE4D_TRAJECTORIES`` | :class:`Trajectories`|
| ``MOGE4D_CAMERA_PATH``  | :class:`CameraPath`  |

Stage results that stay inside the core: :class:`DepthPrediction` (UniDepth ``infer``), :class:`RenderResult`
(the renderers), :class:`DiTConditioning` (the conditioning inputs a sampler feeds a DiT).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Optional

import torch

from .errors import MoGe4DInputError, require


def _check_shape(name: str, tensor: torch.Tensor, shape: tuple, what: str) -> None:
    """Check ``tensor`` against ``shape`` (ints, or None for "any") with kornia's ``KORNIA_CHECK_SHAPE``, raising a
    :class:`MoGe4DInputError` that names the field (kornia's own error names neither the field nor what it holds).
    """
    from kornia.core.check import KORNIA_CHECK_SHAPE

    if not isinstance(tensor, torch.Tensor):
        raise MoGe4DInputError(f"{name}: expected a torch.Tensor {what}, got {type(tensor).__name__}")
    dims = ["*" if s is None else str(s) for s in shape]
    if not KORNIA_CHECK_SHAPE(tensor, [f"D{i}" if d == "*" else d for i, d in enumerate(dims)], raises=False):
        raise MoGe4DInputError(f"{name}: expected shape ({','.join(dims)}) {what}, got {tuple(tensor.shape)}")


@dataclass
class Geometry:
    """One image with its depth and camera (``MOGE4D_GEOMETRY``).

    image  (H,W,3) float [0,1]; depth (H,W) z-depth (metric when ``metric``, else relative);
    K (3,3) pixel intrinsics; points (H,W,3) camera-frame back-projection of ``depth`` through ``K``
    at pixel centres; valid (H,W) bool, False where depth is unusable (NaN, inf, <= 0, masked sky).
    ``metric``: depth and points are in metres; False: relative (unknown scale).

    Raises:
        MoGe4DInputError: a field of another shape than listed (the message names the field).
    """

    image: torch.Tensor
    depth: torch.Tensor
    K: torch.Tensor
    points: torch.Tensor
    valid: torch.Tensor
    metric: bool = True

    def __post_init__(self) -> None:
        _check_shape("Geometry.depth", self.depth, (None, None), "(H,W)")
        h, w = self.depth.shape
        _check_shape("Geometry.image", self.image, (h, w, 3), "(H,W,3) matching depth")
        _check_shape("Geometry.K", self.K, (3, 3), "pixel intrinsics")
        _check_shape("Geometry.points", self.points, (h, w, 3), "(H,W,3) matching depth")
        _check_shape("Geometry.valid", self.valid, (h, w), "(H,W) matching depth")

    @property
    def height(self) -> int:
        """H, image rows in pixels."""
        return int(self.depth.shape[0])

    @property
    def width(self) -> int:
        """W, image columns in pixels."""
        return int(self.depth.shape[1])


@dataclass
class DepthPrediction:
    """What UniDepth's ``infer`` predicts for a batch of B images, at the input resolution H x W (float32).

    depth (B,H,W) z-depth in metres (OpenCV camera: x right, y down, z forward);
    points (B,H,W,3) camera-frame points in metres (V2: rays * radius, V2old: depth * K^-1 [u+0.5, v+0.5, 1]);
    K (B,3,3) pixel intrinsics of the input image that ``points`` use (the ``camera_K`` given to ``infer``,
    else the prediction); K_predicted (B,3,3) the network's own estimate in any case;
    confidence (B,H,W) per-pixel confidence (V2: ``exp(clip(log c))``, a ranking, not calibrated; V2old:
    ``sigmoid`` in (0, 1)). One sample as a :class:`Geometry`: :func:`moge4d_core.models.unidepth.to_geometry`.
    """

    depth: torch.Tensor
    points: torch.Tensor
    K: torch.Tensor
    K_predicted: torch.Tensor
    confidence: torch.Tensor

    def __post_init__(self) -> None:
        _check_shape("DepthPrediction.depth", self.depth, (None, None, None), "(B,H,W)")
        b, h, w = self.depth.shape
        _check_shape("DepthPrediction.points", self.points, (b, h, w, 3), "(B,H,W,3) matching depth")
        _check_shape("DepthPrediction.K", self.K, (b, 3, 3), "(B,3,3) pixel intrinsics")
        _check_shape("DepthPrediction.K_predicted", self.K_predicted, (b, 3, 3), "(B,3,3) pixel intrinsics")
        _check_shape("DepthPrediction.confidence", self.confidence, (b, h, w), "(B,H,W) matching depth")

    @property
    def batch_size(self) -> int:
        """B, the number of images."""
        return int(self.depth.shape[0])


@dataclass
class MotionFeatures:
    """OmniMAE patch tokens of one image (``MOGE4D_MOTION_FEATURES``): tokens (G_h*G_w, C), grid (G_h, G_w).

    tokens: float, row-major over the patch grid; OmniMAE ViT-B/16 at 224 px gives (196, 768) with grid (14, 14).

    Raises:
        MoGe4DInputError: ``tokens`` is not (G_h*G_w, C).
    """

    tokens: torch.Tensor
    grid: tuple = (14, 14)

    def __post_init__(self) -> None:
        _check_shape("MotionFeatures.tokens", self.tokens, (self.grid[0] * self.grid[1], None), "(196,768)")


@dataclass
class NormalizationSpec:
    """Constants of the depth-guided motion normalisation (reference section B).

    ``fx``, ``fy`` are *normalised* focal lengths (pixels / image width, pixels / image height), the
    alpha_x, alpha_y of the paper: dx_hat = dx * fx / z0, dy_hat = dy * fy / z0, dz_hat = dz / z0.
    ``mode`` is ``"release"`` (the released checkpoint's constants), ``"official"`` (the release's
    pseudo-intrinsics rule at the working size) or ``"real_k"`` (the image's own K).
    ``depth_fill`` replaces NaN / inf / zero first-frame depth (official: 1.0).
    """

    fx: float
    fy: float
    mode: str = "official"
    depth_fill: float = 1.0


@dataclass
class Motion:
    """Normalised relative motion from the trajectory model (``MOGE4D_MOTION``).

    delta (T,H,W,3): normalised displacement of each first-frame pixel, frame 0 = 0;
    ``norm`` the constants it was normalised with; ``geometry`` the first frame it is relative to.
    Unitless: ``(dx·fx/z0, dy·fy/z0, dz/z0)`` (:class:`NormalizationSpec`).

    Raises:
        MoGe4DInputError: ``delta`` is not (T,H,W,3) at the geometry's size.
    """

    delta: torch.Tensor
    norm: NormalizationSpec
    geometry: Geometry

    def __post_init__(self) -> None:
        _check_shape("Motion.delta", self.delta, (None, self.geometry.height, self.geometry.width, 3),
                     "(T,H,W,3) matching the geometry")


@dataclass
class Trajectories:
    """A 4D scene: N points moving over T frames (``MOGE4D_TRAJECTORIES``).

    points (T,N,3) float32 in the world frame (= first-frame camera, OpenCV axes);
    colors (N,3) float [0,1] (constant over time); visibility (T,N) bool or None;
    height, width: the pixel grid the points were sampled on, N == height*width, row-major;
    K (3,3) pixel intrinsics of that grid, if known (used for a default camera);
    fps: frame rate in frames per second. Points are in the first-frame depth's unit (metres for metric depth).

    Raises:
        MoGe4DInputError: a field of another shape than listed, T or N = 0, N != height*width, non-positive
            height / width, or non-finite points.
    """

    points: torch.Tensor
    colors: torch.Tensor
    height: int
    width: int
    visibility: Optional[torch.Tensor] = None
    K: Optional[torch.Tensor] = None
    fps: float = 8.0

    def __post_init__(self) -> None:
        _check_shape("Trajectories.points", self.points, (None, None, 3), "(T,N,3)")
        t, n, _ = self.points.shape
        require(t >= 1, "Trajectories.points: needs at least one frame (T >= 1), got T = 0")
        require(n >= 1, "Trajectories.points: the point set is empty (N = 0); nothing to render or export")
        require(self.height > 0 and self.width > 0,
                f"Trajectories: height and width must be positive, got {self.height}x{self.width}")
        require(n == self.height * self.width,
                f"Trajectories: N = {n} points does not match the grid height*width = "
                f"{self.height}*{self.width} = {self.height * self.width}; points must be one per pixel, row-major")
        _check_shape("Trajectories.colors", self.colors, (n, 3), "(N,3) one colour per point")
        if self.visibility is not None:
            _check_shape("Trajectories.visibility", self.visibility, (t, n), "(T,N)")
        if self.K is not None:
            _check_shape("Trajectories.K", self.K, (3, 3), "pixel intrinsics")
        require(bool(torch.isfinite(self.points).all()),
                "Trajectories.points: contains NaN or inf; sanitise the source (e.g. drop or mask invalid points)")

    @property
    def num_frames(self) -> int:
        """T, the number of frames."""
        return int(self.points.shape[0])

    @property
    def num_points(self) -> int:
        """N, the number of points (= height*width)."""
        return int(self.points.shape[1])


@dataclass
class CameraPath:
    """A camera per frame (``MOGE4D_CAMERA_PATH``).

    c2w (T,4,4) camera-to-world, OpenCV camera axes, world = first-frame camera of the scene;
    K (T,3,3) pixel intrinsics for an image of ``width`` x ``height`` (pixels); ``name`` labels the path
    (the preset's name, or ``"custom"``). Translations are in the scene's unit (metres for metric depth).

    Raises:
        MoGe4DInputError: non-positive size, shapes other than listed, T = 0, NaN / inf, a singular rotation
            block, or focal lengths <= 0.
    """

    c2w: torch.Tensor
    K: torch.Tensor
    width: int
    height: int
    name: str = "custom"

    def __post_init__(self) -> None:
        require(int(self.width) > 0 and int(self.height) > 0,
                f"CameraPath: width and height must be positive, got {self.width}x{self.height}")
        _check_shape("CameraPath.c2w", self.c2w, (None, 4, 4), "(T,4,4) camera-to-world")
        t = self.c2w.shape[0]
        require(t >= 1, "CameraPath.c2w: needs at least one camera (T >= 1)")
        _check_shape("CameraPath.K", self.K, (t, 3, 3), "(T,3,3) matching c2w")
        require(bool(torch.isfinite(self.c2w).all()) and bool(torch.isfinite(self.K).all()),
                "CameraPath: poses or intrinsics contain NaN or inf")
        det = torch.linalg.det(self.c2w[:, :3, :3].double())
        require(bool((det.abs() > 1e-6).all()),
                "CameraPath.c2w: a pose has a singular rotation block (not invertible); each pose must be a rigid transform")
        require(bool((self.K[:, 0, 0] > 0).all() and (self.K[:, 1, 1] > 0).all()),
                "CameraPath.K: focal lengths must be positive")

    @property
    def num_frames(self) -> int:
        """T, the number of cameras."""
        return int(self.c2w.shape[0])


@dataclass
class RenderResult:
    """Output of a renderer: rgb (T,H,W,3) float [0,1]; depth (T,H,W) camera z (0 in holes);
    holes (T,H,W) float, 1 where no point landed on the pixel, 0 elsewhere.

    ``extras`` (meta data, as gsplat returns it beside the images): ``"backend"`` (str, what ran) and, from the
    points renderer, ``"point_index"`` (T,H,W) int32 index of the visible point (-1 in holes), from the
    Gaussian renderer ``"alpha"`` (T,H,W) float32 accumulated opacity.
    """

    rgb: torch.Tensor
    depth: torch.Tensor
    holes: torch.Tensor
    extras: dict = field(default_factory=dict)


@dataclass
class DiTConditioning:
    """The conditioning inputs of a MoGe4D Wan DiT's ``forward``, one field per keyword, batch B each.

    The field names are the forward's keywords, diffusers' names where diffusers has one:
    encoder_hidden_states (B,L,text_dim) umT5 text embeddings (required); encoder_hidden_states_image
    (B,257,image_dim) CLIP-H penultimate tokens or None (= zeros). 4D-STraG (``STraGDiT``): control (B,16,F,h,w),
    start_image (B,16,F,h,w) or None, depth (B,16,F,h,w), ref_latent (B,16,h,w) or None, motion_features
    (B,196,768) or None (MPM off). 4D-ViSM (``ViSMDiT``): mask (B,4,F,h,w) 1 = known pixel, masked_video
    (B,16,F,h,w). Fields left None are not passed, so the forward's default applies (see each DiT's ``forward``).

    Classifier-free guidance: the unconditional inputs are ``cond.with_text(negative)``; one batched pass takes
    :meth:`cfg_batch` ``[uncond; cond]``.
    """

    encoder_hidden_states: torch.Tensor
    encoder_hidden_states_image: Optional[torch.Tensor] = None
    control: Optional[torch.Tensor] = None
    start_image: Optional[torch.Tensor] = None
    depth: Optional[torch.Tensor] = None
    ref_latent: Optional[torch.Tensor] = None
    motion_features: Optional[torch.Tensor] = None
    mask: Optional[torch.Tensor] = None
    masked_video: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        _check_shape("DiTConditioning.encoder_hidden_states", self.encoder_hidden_states, (None, None, None),
                     "(B,L,text_dim) text embeddings")
        b = int(self.encoder_hidden_states.shape[0])
        for name, value in self.forward_kwargs().items():
            if not isinstance(value, torch.Tensor):
                raise MoGe4DInputError(f"DiTConditioning.{name}: expected a torch.Tensor or None, "
                                       f"got {type(value).__name__}")
            require(value.ndim >= 1 and int(value.shape[0]) == b,
                    f"DiTConditioning.{name}: batch {tuple(value.shape)[:1]} does not match the text batch {b}; "
                    f"every input needs the same batch size B")

    @property
    def batch_size(self) -> int:
        """B, the batch of the text context (every input has it)."""
        return int(self.encoder_hidden_states.shape[0])

    def forward_kwargs(self) -> dict:
        """The keyword arguments of the DiT's ``forward`` (every field that is not None), by name."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def with_text(self, encoder_hidden_states: torch.Tensor) -> "DiTConditioning":
        """The same inputs with another text context (e.g. the negative prompt's), other tensors shared."""
        return replace(self, encoder_hidden_states=encoder_hidden_states)

    @staticmethod
    def cfg_batch(uncond: "DiTConditioning", cond: "DiTConditioning") -> "DiTConditioning":
        """One batch ``[uncond; cond]`` (2B) for a batched CFG pass: every input concatenated along dim 0.

        Raises :class:`MoGe4DInputError` when the two give different inputs or shapes.
        """
        a, b = uncond.forward_kwargs(), cond.forward_kwargs()
        require(set(a) == set(b), f"CFG: the conditional and unconditional inputs must name the same tensors, got "
                                  f"{sorted(b)} vs {sorted(a)}")
        for name in b:
            require(a[name].shape == b[name].shape,
                    f"CFG input '{name}': conditional and unconditional tensors must have the same shape, got "
                    f"{tuple(b[name].shape)} vs {tuple(a[name].shape)}")
        return DiTConditioning(**{name: torch.cat([a[name], b[name]], dim=0) for name in b})
