"""The whole pipeline in one call (used by the CLI, the demo, the benchmarks and the end-to-end test).

image (H,W,3) [0,1] → geometry (UniDepthV2, or given) → optional OmniMAE features → 4D-STraG motion →
de-normalised :class:`Trajectories` → for each camera path: render (points z-buffer) + hole mask →
optional 4D-ViSM inpainting → frames.  The render runs on the STraG's compute device (on CUDA the Triton
z-buffer, or gsplat for Gaussians; :func:`render_on_device`); its result comes back to the CPU.  :class:`StageTimes`
records wall time and peak memory per stage.

``compat=True`` reproduces the released inference (reference §J): the official pseudo-intrinsics for the
first-frame back-projection, the release's motion-normalisation constants at any working size, the official
render intrinsics for preset cameras (``fx·W``, where the back-projection uses ``fx·(W−1)``), reference tokens
from the image, MPM off, Euler / shift 5 / 50 steps / CFG 6, inpainting seed = seed + 1, every pixel regenerated
(``keep_rendered`` off) — with the de-normalisation applied.

Splats sized to the point spacing (the nano demo's first look): ``render_kwargs={"mode": "gaussians",
"gaussian_scale": "spacing"}`` (:data:`SPLAT_RENDER`, :func:`moge4d_core.render.api.spacing_scale`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

import torch

from ..errors import require
from ..camera.scene import camera_path_for_scene
from ..geometry.sources import official_render_K, resize_geometry, with_official_intrinsics
from ..models.conditioning import ImageContext, TextContext
from ..render.api import render_trajectories
from ..types import CameraPath, Geometry, Motion, MotionFeatures, RenderResult, Trajectories
from .image_vae import ImageVAE, WanImageVAE
from .inpaint import inpaint
from .residency import Residency
from .settings import NativeSampler, SamplerSettings, compat_settings
from .denoise_loop import model_device_dtype
from .trajectory import TrajectoryOptions, denormalize, generate_motion

__all__ = ["StageTimes", "NovelView", "SceneResult", "DepthEstimate", "estimate_geometry", "motion_features_of",
           "render_on_device", "compat_options", "run_pipeline", "SPLAT_RENDER", "RENDER_STYLES"]

SPLAT_RENDER = {"mode": "gaussians", "gaussian_scale": "spacing"}
"""``render_kwargs`` for Gaussians sized to the point spacing: neighbouring splats touch, holes are disocclusions."""
RENDER_STYLES = {"points": {}, "splats": SPLAT_RENDER}
"""The CLI's ``--render`` names -> ``render_kwargs``: ``points`` one pixel per point (default), ``splats``."""

Progress = Callable[[str, int, int], None]


def _peak_bytes() -> int:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return int(torch.cuda.max_memory_allocated())
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


@dataclass
class StageTimes:
    """Per stage: (name, wall seconds, peak memory in bytes: CUDA max allocated, else process max RSS)."""

    rows: list = field(default_factory=list)

    @contextlib.contextmanager
    def stage(self, name: str):
        """Context manager timing its block: appends ``(name, wall seconds, peak bytes)`` to :attr:`rows` on exit
        (also when the block raises). The peak is the process-wide maximum so far, not the block's own."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.rows.append((name, time.perf_counter() - t0, _peak_bytes()))

    def summary(self) -> str:
        """A text table: one line per stage (name, wall seconds, peak MiB), then the total wall seconds."""
        lines = [f"{'stage':<28}{'wall s':>10}{'peak MiB':>12}"]
        for name, sec, peak in self.rows:
            lines.append(f"{name:<28}{sec:>10.2f}{peak / 2 ** 20:>12.0f}")
        lines.append(f"{'total':<28}{sum(r[1] for r in self.rows):>10.2f}")
        return "\n".join(lines)


@dataclass
class NovelView:
    """One camera path's output, on the CPU.

    camera: the path rendered (T cameras); render: its :class:`RenderResult` (rgb (T,H,W,3) [0,1], depth
    (T,H,W), holes (T,H,W) 1 = no point landed); frames: the 4D-ViSM inpainted frames (T,H,W,3) float32 [0,1],
    or None when no inpainting model was given.
    """

    camera: CameraPath
    render: RenderResult
    frames: Optional[torch.Tensor] = None


@dataclass
class SceneResult:
    """Everything :func:`run_pipeline` produced for one image (written to disk by ``pipeline.outputs``).

    geometry: the first-frame :class:`Geometry` at the working size (H,W); motion: the STraG's normalised
    :class:`Motion` (T,H,W,3); trajectories: the de-normalised :class:`Trajectories` (T, H*W points, world =
    first-frame camera); views: one :class:`NovelView` per requested camera, in the order given; times: wall
    time and peak memory per stage.
    """

    geometry: Geometry
    motion: Motion
    trajectories: Trajectories
    views: list[NovelView]
    times: StageTimes


@dataclass
class DepthEstimate:
    """The depth stage's result: ``geometry`` at the working size, ``confidence (H, W)`` in [0, 1] at the input
    image's size (UniDepth's confidence divided by its maximum, :func:`~moge4d_core.preview.confidence_mask`)."""

    geometry: Geometry
    confidence: torch.Tensor


def estimate_geometry(unidepth, image: torch.Tensor, width: int = 0, height: int = 0, *, fov_deg: float = 0.0,
                      resolution_level: Optional[int] = None) -> DepthEstimate:
    """The depth stage: UniDepthV2 on one image → :class:`DepthEstimate`.

    Args:
        unidepth: a loaded UniDepthV2 / V2old model (on its compute device).
        image: (H, W, 3) float in [0, 1].
        width, height: working size (multiples of 16); 0, 0 keeps the image's size.
        fov_deg: > 0 gives UniDepth the camera (horizontal field of view, degrees) instead of letting it predict one.
        resolution_level: UniDepth's speed / detail trade-off (None = its default).
    """
    from ..geometry.intrinsics import K_from_fov
    from ..models.unidepth import to_geometry
    from ..preview import confidence_mask

    p = next(unidepth.parameters())
    h, w = image.shape[:2]
    K = K_from_fov(fov_deg, w, h).to(p.device) if fov_deg > 0 else None
    with torch.no_grad():
        res = unidepth.infer(image.permute(2, 0, 1)[None].to(p.device), camera_K=K, resolution_level=resolution_level)
    geom = to_geometry(res, image)
    if width or height:
        geom = resize_geometry(geom, width=width, height=height)
    return DepthEstimate(geometry=geom, confidence=confidence_mask(res.confidence[0].float().cpu()))


def motion_features_of(omnimae, image: torch.Tensor) -> MotionFeatures:
    """OmniMAE features of one image, without gradients (:func:`~moge4d_core.models.omnimae.extract_motion_features`).

    Args:
        omnimae: a loaded OmniMAE encoder (on its compute device).
        image: (H, W, 3) float in [0, 1] (or uint8); stretched to 224 x 224 inside.

    Returns:
        :class:`MotionFeatures` with tokens (196, C) float32 on the model's device, grid (14, 14).
    """
    from ..models.omnimae import extract_motion_features
    with torch.no_grad():
        return extract_motion_features(omnimae, image)


def render_on_device(traj: Trajectories, path: CameraPath, device: Union[str, torch.device], **kwargs) -> RenderResult:
    """Render ``traj`` along ``path`` on ``device``, the result on the CPU.

    On CUDA the renderer's ``backend="auto"`` picks the Triton z-buffer (points) or gsplat (Gaussians) and falls
    back to PyTorch with one log line; on the CPU it is the PyTorch code.

    Args:
        traj: the scene (points (T,N,3), colours (N,3), visibility (T,N) or None), on any device.
        path: the camera path (moved by the renderer to the points' device).
        device: where to render, e.g. the STraG's compute device.
        kwargs: :func:`~moge4d_core.render.api.render_trajectories` options.

    Returns:
        :class:`RenderResult` with rgb (T,H,W,3), depth (T,H,W), holes (T,H,W) on the CPU; ``extras`` keeps
        ``"backend"`` (what ran) and its tensors on the CPU.
    """
    device = torch.device(device)
    moved = dataclasses.replace(
        traj, points=traj.points.to(device), colors=traj.colors.to(device),
        visibility=None if traj.visibility is None else traj.visibility.to(device))
    res = render_trajectories(moved, path, **kwargs)
    extras = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in res.extras.items()}
    return RenderResult(rgb=res.rgb.cpu(), depth=res.depth.cpu(), holes=res.holes.cpu(), extras=extras)


def _resident(residency: Optional[Residency], stage: str, **models):
    """The residency's stage context (its models on the device within it), or nothing without a residency."""
    return contextlib.nullcontext() if residency is None else residency.stage(stage, **models)


def _vae_module(image_vae: ImageVAE) -> Optional[torch.nn.Module]:
    vae = getattr(image_vae, "vae", None)
    return vae if isinstance(vae, torch.nn.Module) else None


def compat_options(frames: int = 49) -> TrajectoryOptions:
    """The released inference's trajectory options for ``frames`` (4k+1) frames: ``normalization="release"``,
    the image as reference latent, MPM off."""
    return TrajectoryOptions(frames=frames, normalization="release", reference=True, mpm=False)


def _step_progress(progress: Optional[Progress], name: str):
    if progress is None:
        return None
    return lambda done, total: progress(name, done, total)


def run_pipeline(*, image: torch.Tensor, strag, motion_vae, image_vae: ImageVAE, positive: TextContext,
                 negative: Optional[TextContext] = None, geometry: Optional[Geometry] = None, unidepth=None,
                 omnimae=None, vism=None, vism_positive: Optional[TextContext] = None,
                 cameras: Sequence[Union[str, CameraPath]] = ("orbit_left",),
                 trajectory_settings: SamplerSettings = SamplerSettings(),
                 inpaint_settings: SamplerSettings = SamplerSettings(seed=1),
                 options: TrajectoryOptions = TrajectoryOptions(), clip: Optional[ImageContext] = None,
                 compat: bool = False, size: Optional[tuple[int, int]] = None, fps: float = 8.0,
                 render_kwargs: Optional[dict] = None, native: Optional[NativeSampler] = None,
                 progress: Optional[Progress] = None, frames: Optional[int] = None,
                 overlap: int = 0, residency: Optional[Residency] = None, keep_rendered: int = 0) -> SceneResult:
    """Run every stage on one image; see the module docstring.

    ``frames``: the scene's frame count when it differs from the model window ``options.frames``: the trajectories
    are then chained window after window with ``overlap`` cross-faded frames (:mod:`.chain`; any count), and the
    inpainting runs on the render padded to 4k+1 frames (last frame repeated) and cut back.

    ``residency``: when given (:func:`~.model_dir.load_models` makes one), each stage's models come to its device for
    that stage only, as its memory mode says (:mod:`.residency`), and the render runs on that device; without it the
    models stay where they are and the render runs on the STraG's device.

    ``keep_rendered``: feather width in pixels for compositing each render back over its inpainted frames where points
    landed (:func:`~.inpaint.keep_weight`); 0 = off. ``compat`` turns it off (the release regenerates every pixel).

    Args:
        image: (H, W, 3) float in [0, 1], the input image (used for depth when ``geometry`` is None).
        strag: the 4D-STraG DiT (``STraGDiT``). motion_vae: the motion VAE (its encoder also encodes STraG's
            conditions, :meth:`~.image_vae.WanImageVAE.from_motion_vae`).
        image_vae: the base Wan pixel VAE (:class:`ImageVAE`) for ViSM's conditions and decoded frames.
        positive, negative: umT5 text contexts (1, 512, D) of the prompt and the negative prompt (None: zeros).
        geometry: the first-frame :class:`Geometry`; None runs ``unidepth`` on ``image``.
        unidepth: a UniDepthV2 model, needed when ``geometry`` is None. omnimae: OmniMAE encoder for the MPM
            features (used when ``options.mpm``), or None.
        vism: the 4D-ViSM DiT, or None for renders only. vism_positive: its prompt (None: ``positive``).
        cameras: preset names (:mod:`moge4d_core.camera.presets`, fitted to the scene) or :class:`CameraPath`
            objects; one :class:`NovelView` each.
        trajectory_settings, inpaint_settings: sampler settings of the two DiT stages.
        options: STraG options (window frames T = 4k+1, normalisation, reference, MPM).
        clip: CLIP-H image tokens (1, 257, 1280) for the STraG, or None (zeros).
        compat: the released inference (module docstring); replaces the settings, options and ``keep_rendered``.
        size: (width, height) of the working grid in pixels, multiples of 16; default: the geometry's size, or the
            image's rounded down to multiples of 16.
        fps: frame rate stored in the trajectories (frames per second).
        render_kwargs: :func:`~moge4d_core.render.api.render_trajectories` options (e.g. :data:`SPLAT_RENDER`).
        native: a ComfyUI sampler used in both DiT stages instead of ours.
        progress: ``progress(stage, done, total)`` per sampling step.
        frames: scene frame count (see above); None = ``options.frames``. overlap: cross-faded frames between
            chained windows.
        residency: per-stage model placement (see above). keep_rendered: feather width in pixels (see above).

    Returns:
        :class:`SceneResult`: geometry, normalised motion (on the CPU), de-normalised trajectories (world =
        first-frame camera, metres when the depth is metric), one :class:`NovelView` per camera (on the CPU), stage
        times.

    Raises:
        MoGe4DInputError: no ``geometry`` and no ``unidepth``; a working size that is not a multiple of 16; text /
            CLIP widths the models do not take; an unknown camera preset.
    """
    times = StageTimes()
    if compat:
        keep_rendered = 0
        trajectory_settings, inpaint_settings = compat_settings(trajectory_settings.seed)
        options = compat_options(options.frames)
    if geometry is None:
        require(unidepth is not None, "no geometry: pass a UniDepth model or a Geometry (depth + intrinsics)")
        w, h = size or (image.shape[1] // 16 * 16, image.shape[0] // 16 * 16)
        with times.stage("depth (UniDepthV2)"), _resident(residency, "depth", unidepth=unidepth):
            geometry = estimate_geometry(unidepth, image, w, h).geometry
    elif size is not None:
        geometry = resize_geometry(geometry, width=size[0], height=size[1])
    if compat:
        geometry = with_official_intrinsics(geometry)
    features = None
    if omnimae is not None and options.mpm:
        with times.stage("motion features (OmniMAE)"), _resident(residency, "motion features", omnimae=omnimae):
            features = motion_features_of(omnimae, geometry.image)
    chained = frames is not None and frames != options.frames
    with times.stage("trajectories (4D-STraG)"), _resident(      # chained windows re-run OmniMAE per window
            residency, "trajectories", strag=strag, motion_vae=motion_vae,
            omnimae=omnimae if chained and features is not None else None):
        # STraG's condition latents come from the base Wan encoder, which the motion VAE keeps frozen (reference
        # §A2, §E: the release encodes them with the VAE whose decoder it fine-tuned); image_vae is for ViSM.
        traj_vae = WanImageVAE.from_motion_vae(motion_vae)
        if chained:
            from .chain import generate_chained

            def window_progress(k, n, done, total):
                if progress is not None:
                    progress(f"trajectories {k}/{n}", done, total)

            per_window = None if features is None else (lambda g: motion_features_of(omnimae, g.image))
            motion = generate_chained(strag, motion_vae, traj_vae, geometry, positive, negative, frames=frames,
                                      overlap=overlap, settings=trajectory_settings, options=options, clip=clip,
                                      motion_features=per_window, native=native, fps=fps, callback=window_progress)
        else:
            motion = generate_motion(strag, motion_vae, traj_vae, geometry, positive, negative,
                                     settings=trajectory_settings, options=options, clip=clip,
                                     motion_features=features, native=native,
                                     callback=_step_progress(progress, "trajectories"))
    with times.stage("de-normalise"):
        traj = denormalize(motion, fps=fps)
    views: list[NovelView] = []
    # Preset cameras take the scene's K; in compat mode that is the official renderer's K (fx·W, not fx·(W−1)).
    render_device = residency.device if residency is not None else model_device_dtype(strag)[0]
    camera_scene = dataclasses.replace(traj, K=official_render_K(traj.height, traj.width)) if compat else traj
    for cam in cameras:
        path = cam if isinstance(cam, CameraPath) else camera_path_for_scene(cam, camera_scene)
        with times.stage(f"render {path.name}"):
            rend = render_on_device(traj, path, render_device, **(render_kwargs or {}))
        inpainted = None
        if vism is not None:
            with times.stage(f"inpaint {path.name} (4D-ViSM)"), _resident(residency, "inpaint", vism=vism,
                                                                         image_vae=_vae_module(image_vae)):
                from .chain import pad_frames
                rgb, count = pad_frames(rend.rgb)
                inpainted = inpaint(vism, image_vae, rgb, pad_frames(rend.holes)[0], vism_positive or positive,
                                    negative, settings=inpaint_settings, keep_rendered=keep_rendered,
                                    callback=_step_progress(progress, f"inpaint {path.name}"))[:count]
        views.append(NovelView(camera=path, render=rend, frames=inpainted))
    return SceneResult(geometry=geometry, motion=motion, trajectories=traj, views=views, times=times)
