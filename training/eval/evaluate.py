"""Evaluate a MoGe4D model folder on held-out TrajScene-layout samples (e.g. synthetic scenes).

For each sample: the first frame (colours, ground-truth depth and intrinsics from ``<id>_meta.json`` when the
synthetic generator wrote it, else DELTA's ``[[W,0,W/2],[0,W,H/2]]``) → 4D-STraG → de-normalisation → predicted
trajectories, scored with the average trajectory error (:func:`~.metrics.trajectory_error`, visible points,
frames ≥ 1) against the ground truth, next to the zero-motion baseline, and the RMS error per axis (x / y / z,
model and baseline, pooled over the samples: which motion direction the model gets wrong).  With a ViSM model in the folder also
the PSNR of the inpainted ``_dt3d_render`` against the source video: masked (on the render's known pixels), unmasked
(every pixel) and on the holes alone; ``--keep-rendered PX`` composites the render back where points landed
(:func:`moge4d_core.pipeline.inpaint.keep_weight`), as the nano demo does.

    python -m training.eval --models moge4d_core/nano_model --data DIR [--count 16] [--steps 20] [--seed 0] [--keep-rendered 2]

The motion VAE alone (its round trip) and the best an 8×-strided motion latent can do on a data set are scored by
the nano recipe's diagnostics, :mod:`training.nano.diagnose`.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.types import Geometry
from training.datasets.trajscene import TrajSceneDataset

from .metrics import axis_squared_error, masked_psnr, trajectory_error, zero_motion_baseline

__all__ = ["EvalReport", "evaluate", "grid_from_meta", "main"]


@dataclass
class EvalReport:
    """Per-sample scores; ``label`` names what ``model_error`` scores (the model, or e.g. a motion VAE round trip)."""

    label: str = "model"
    ids: list = field(default_factory=list)
    model_error: list = field(default_factory=list)
    baseline_error: list = field(default_factory=list)
    psnr: list = field(default_factory=list)          # masked: the render's known pixels
    psnr_all: list = field(default_factory=list)      # unmasked: every pixel
    psnr_holes: list = field(default_factory=list)    # the holes alone (samples that have holes)
    keep_rendered: int = 0                             # the feather width the inpainting ran with (0 = off)
    axis_terms: list = field(default_factory=list)     # per sample: (model (3,), baseline (3,), count), see add()
    cache: Optional[str] = None                        # the step-cache setting sampled with (None = off)
    strag_blocks: int = 0                              # DiT block evaluations (per batch item) in the STraG stage
    vism_blocks: int = 0                               # ... and in the ViSM stage

    def add(self, sample_id: str, pred, gt, vis) -> None:
        """Score one sample's predicted trajectories ``pred`` (T,N,3) against ``gt`` (T,N,3) and the zero-motion
        baseline: the pooled error of eq. 7 and the per-axis squared errors."""
        base = zero_motion_baseline(gt)
        self.ids.append(sample_id)
        self.model_error.append(trajectory_error(pred, gt, vis))
        self.baseline_error.append(trajectory_error(base, gt, vis))
        (m, n), (b, _) = axis_squared_error(pred, gt, vis), axis_squared_error(base, gt, vis)
        self.axis_terms.append((m, b, n))

    def axis_rms(self) -> tuple:
        """(model, baseline) RMS error per axis x, y, z, each (3,), pooled over the samples."""
        n = sum(t[2] for t in self.axis_terms)
        return tuple(np.sqrt(sum(t[k] for t in self.axis_terms) / n) for k in (0, 1))

    def summary(self) -> str:
        m, b = statistics.mean(self.model_error), statistics.mean(self.baseline_error)
        lines = [f"samples: {len(self.ids)}",
                 f"average trajectory error ({self.label}): {m:.4f}",
                 f"average trajectory error (zero-motion baseline): {b:.4f}",
                 f"ratio {self.label} / baseline: {m / b:.3f}"]
        if self.axis_terms:
            m_rms, b_rms = self.axis_rms()
            lines.append(f"RMS error per axis x / y / z ({self.label}): {' / '.join(f'{v:.3f}' for v in m_rms)}; "
                         f"zero-motion baseline: {' / '.join(f'{v:.3f}' for v in b_rms)}")
        if self.psnr:
            keep = f"keep_rendered {self.keep_rendered}" if self.keep_rendered else "keep_rendered off"
            lines.append(f"ViSM masked PSNR on known pixels: {statistics.mean(self.psnr):.2f} dB ({keep})")
        if self.psnr_all:
            lines.append(f"ViSM unmasked PSNR on every pixel: {statistics.mean(self.psnr_all):.2f} dB")
        if self.psnr_holes:
            lines.append(f"ViSM PSNR on the holes: {statistics.mean(self.psnr_holes):.2f} dB")
        lines.append(f"DiT block evaluations (cache {self.cache or 'off'}): STraG {self.strag_blocks}, "
                     f"ViSM {self.vism_blocks}")
        return "\n".join(lines)


def _intrinsics(dataset_root: Path, sample_id: str, h: int, w: int) -> torch.Tensor:
    meta = dataset_root / f"{sample_id}_meta.json"
    if meta.is_file():
        return torch.tensor(json.loads(meta.read_text())["K"], dtype=torch.float32)
    return torch.tensor([[float(w), 0, w / 2], [0, float(w), h / 2], [0, 0, 1]])


def _geometry(sample, K: torch.Tensor) -> Geometry:
    p0 = sample.first_frame_points.float()
    z = p0[..., 2]
    valid = torch.isfinite(z) & (z > 0)
    return Geometry(image=sample.colors.float(), depth=torch.where(valid, z, torch.zeros_like(z)), K=K,
                    points=p0, valid=valid)


def grid_from_meta(data_dir: Path) -> Optional[tuple[int, int]]:
    """(H, W) from a synthetic ``<id>_meta.json`` (principal point at the image centre), else None."""
    for meta in sorted(data_dir.glob("*_meta.json")):
        K = json.loads(meta.read_text())["K"]
        return int(round(2 * K[1][2])), int(round(2 * K[0][2]))
    return None


def evaluate(models_dir, data_dir, *, count: int = 16, steps: int = 20, cfg: float = 1.0, seed: int = 0,
             frames: Optional[int] = None, inpaint: bool = True, device: str = "cpu",
             grid: Optional[tuple[int, int]] = None, cache: Optional[str] = None,
             keep_rendered: int = 0) -> EvalReport:
    """Sample every held-out scene (trajectories, then inpainting) and score it; ``cache`` is the step-cache
    setting of both DiTs (:mod:`moge4d_core.sampling.step_cache`), the block evaluations are counted;
    ``keep_rendered`` the inpainting's feather width (0 = off)."""
    from moge4d_core.pipeline import WanImageVAE
    from moge4d_core.pipeline.inpaint import inpaint as run_inpaint
    from moge4d_core.pipeline.model_dir import encode_prompts, find_model_files, load_models
    from moge4d_core.pipeline.settings import SamplerSettings
    from moge4d_core.pipeline.trajectory import TrajectoryOptions, denormalize, generate_motion
    from moge4d_core.sampling.step_cache import BlockCounter, parse_step_cache

    files = find_model_files(models_dir)
    models = load_models(files, device=device, inpaint=inpaint and files.vism_base is not None, depth=False)
    data_dir = Path(data_dir)
    ds = TrajSceneDataset(data_dir, frames=frames or 17, crop=None, load_video=True, load_render=True,
                          grid=grid or grid_from_meta(data_dir))
    positive, negative = encode_prompts(models, "")
    setting = parse_step_cache(cache)
    report = EvalReport(cache=None if setting is None else str(setting), keep_rendered=int(keep_rendered))
    for i in range(min(count, len(ds))):
        s = ds[i]
        h, w = s.colors.shape[:2]
        geom = _geometry(s, _intrinsics(data_dir, s.id, h, w))
        settings = SamplerSettings(steps=steps, cfg=cfg, seed=seed + i, cache=report.cache)
        with BlockCounter(models.strag) as counter:
            motion = generate_motion(models.strag, models.motion_vae, WanImageVAE.from_motion_vae(models.motion_vae),
                                     geom, positive, negative, settings=settings,
                                     options=TrajectoryOptions(frames=s.points.shape[0]))
        report.strag_blocks += counter.blocks
        pred = denormalize(motion).points
        gt = s.points.reshape(s.points.shape[0], -1, 3)
        vis = None if s.visibility is None else s.visibility.reshape(gt.shape[0], -1)
        report.add(s.id, pred, gt, vis)
        if models.vism is not None and s.render is not None and s.video is not None:
            render = s.render.float() / 255
            holes = s.mask.float()
            with BlockCounter(models.vism) as counter:
                out = run_inpaint(models.vism, models.image_vae, render, holes, positive, negative,
                                  settings=settings.replace(seed=seed + i + 1), keep_rendered=int(keep_rendered))
            report.vism_blocks += counter.blocks
            target = s.video.float() / 255
            if target.shape == out.shape:
                report.psnr.append(masked_psnr(out, target, holes < 0.5))
                report.psnr_all.append(masked_psnr(out, target, torch.ones_like(holes, dtype=torch.bool)))
                if bool((holes >= 0.5).any()):
                    report.psnr_holes.append(masked_psnr(out, target, holes >= 0.5))
    if not report.ids:
        raise MoGe4DInputError(f"{data_dir}: no samples evaluated")
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", required=True, help="model folder (e.g. moge4d_core/nano_model)")
    ap.add_argument("--data", required=True, help="held-out samples in the TrajScene layout")
    ap.add_argument("--count", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg", type=float, default=1.0, help="CFG scale (1: the nano model has no text)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--no-inpaint", action="store_true")
    ap.add_argument("--cache", default=None,
                    help="step cache of both DiTs, e.g. first_block:0.1, mag, taylorseer:3, pab, faster (default off)")
    ap.add_argument("--keep-rendered", type=int, default=0, metavar="PX",
                    help="inpainting: composite the render back where points landed, feathered across PX pixels "
                         "(0 = off, the release; the nano demo uses 2)")
    a = ap.parse_args(argv)
    try:
        rep = evaluate(a.models, a.data, count=a.count, steps=a.steps, cfg=a.cfg, seed=a.seed, frames=a.frames,
                       inpaint=not a.no_inpaint, cache=a.cache, keep_rendered=a.keep_rendered)
    except MoGe4DInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for sid, m, b in zip(rep.ids, rep.model_error, rep.baseline_error):
        print(f"{sid}: model {m:.4f}  baseline {b:.4f}")
    print(rep.summary())
    return 0
