"""Diagnostics used while building the nano model: how much motion a motion VAE carries, and how much any motion
latent of the Wan VAE's 8× spatial stride can carry on a data set.

    python -m training.nano.diagnose roundtrip --models moge4d_core/nano_model --data DATA/heldout [--count 16]
    python -m training.nano.diagnose block-floor --data DATA/heldout [--count 16]

``roundtrip`` scores the motion VAE alone (:func:`motion_vae_roundtrip`): the true normalised motion is encoded
and decoded (posterior mean, no diffusion) and de-normalised like a prediction. Its error is the floor of any
STraG trained on that VAE, and its ``motion gain`` (least-squares slope of decoded on true motion over the moving
points: 1 = the motion comes back, 0 = the decoder outputs "nothing moves") tells a VAE that carries motion from
one that has collapsed to zero output (which can still look fine on the static majority of pixels). The same
gain per channel (x / y / z, pooled over the samples) shows a VAE that carries one channel and drops the others.

``block-floor`` needs no model: it scores the true motion averaged over 8×8 pixel blocks and upsampled back
(:func:`block_average_floor`), the error of an ideal linear latent with the Wan VAE's spatial stride. When that
is not well below the baseline, the held-out objects are too small for any 8×-strided motion latent.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from moge4d_core.errors import MoGe4DInputError

from ..datasets.trajscene import TrajSceneDataset
from ..eval.evaluate import EvalReport, grid_from_meta

__all__ = ["MotionCodecReport", "motion_gain", "channel_gain_terms", "motion_vae_roundtrip", "block_average_floor",
           "main"]


@dataclass
class MotionCodecReport(EvalReport):
    """:class:`~training.eval.evaluate.EvalReport` of decoded true motions, plus per sample the motion gain
    (:func:`motion_gain`) and the per-channel gain terms (:func:`channel_gain_terms`)."""

    gain: list = field(default_factory=list)
    channel_terms: list = field(default_factory=list)

    def summary(self) -> str:
        lines = [super().summary()]
        if self.gain:
            lines.append(f"motion gain (1 = motion carried, 0 = collapsed to no motion): "
                         f"{statistics.mean(self.gain):.3f}")
        if self.channel_terms:
            num, den = torch.stack(self.channel_terms).sum(0)
            per = [f"{float(n / d):.3f}" if d > 0 else "nan" for n, d in zip(num, den)]
            lines.append(f"motion gain per channel x / y / z (pooled over the samples): {' / '.join(per)}")
        return "\n".join(lines)


def motion_gain(decoded: torch.Tensor, true: torch.Tensor, eps: float = 1e-6) -> float:
    """Least-squares slope ``Σ d·t / Σ t²`` of decoded on true motion over the points that move.

    Args:
        decoded: (T,H,W,3) decoded normalised motion.
        true: (T,H,W,3) true normalised motion; a point moves in frame t when ``|true|₁ > eps``.

    Returns:
        the slope (1: the motion comes back, 0: nothing moves); nan when nothing moves.
    """
    moving = true.abs().sum(-1) > eps
    t, d = true[moving].double(), decoded[moving].double()
    den = float((t * t).sum())
    return float((d * t).sum()) / den if den > 0 else float("nan")


def channel_gain_terms(decoded: torch.Tensor, true: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per channel x, y, z the sums ``Σ d·t`` and ``Σ t²`` over the moving points (as :func:`motion_gain`).

    Summed over samples and divided, row 0 by row 1, they give each channel's gain: a VAE can carry one channel and
    drop the others (the session-8 nano VAE: x 0.93, y 0.09, z 0.006), which the pooled :func:`motion_gain` hides
    when that channel holds most of the motion.

    Args:
        decoded: (T,H,W,3) decoded normalised motion.
        true: (T,H,W,3) true normalised motion.

    Returns:
        (2,3) float64.
    """
    moving = true.abs().sum(-1) > eps
    t, d = true[moving].double(), decoded[moving].double()
    return torch.stack([(d * t).sum(0), (t * t).sum(0)])


def _score_decoded_motions(data_dir, decode: Callable[[torch.Tensor], torch.Tensor], label: str, *, count: int,
                           frames: int, grid: Optional[tuple[int, int]]) -> MotionCodecReport:
    """Score ``decode(delta_hat)`` -> (T,H,W,3) normalised motion against each sample's true trajectories.

    Frame 0 is zeroed, the rest de-normalised like a STraG prediction; reports error, baseline and gain.
    """
    from moge4d_core.geometry.normalization import apply_motion

    data_dir = Path(data_dir)
    ds = TrajSceneDataset(data_dir, frames=frames, crop=None, grid=grid or grid_from_meta(data_dir))
    report = MotionCodecReport(label=label)
    for i in range(min(count, len(ds))):
        s = ds[i]
        with torch.no_grad():
            decoded = decode(s.delta_hat).float()
        decoded[0] = 0
        pred = apply_motion(decoded, s.first_frame_points, s.spec).reshape(s.points.shape[0], -1, 3)
        gt = s.points.reshape(s.points.shape[0], -1, 3)
        vis = None if s.visibility is None else s.visibility.reshape(gt.shape[0], -1)
        report.add(s.id, pred, gt, vis)
        report.gain.append(motion_gain(decoded, s.delta_hat))
        report.channel_terms.append(channel_gain_terms(decoded, s.delta_hat))
    if not report.ids:
        raise MoGe4DInputError(f"{data_dir}: no samples evaluated")
    return report


def motion_vae_roundtrip(models_dir, data_dir, *, count: int = 16, frames: int = 17,
                         grid: Optional[tuple[int, int]] = None) -> MotionCodecReport:
    """Encode + decode each held-out sample's true motion with the folder's motion VAE and score it."""
    from moge4d_core.loading.motion_vae import load_motion_vae
    from moge4d_core.pipeline.model_dir import find_model_files

    mvae = load_motion_vae(find_model_files(models_dir).motion_vae)

    def roundtrip(delta: torch.Tensor) -> torch.Tensor:
        return mvae.decode(mvae.encode(delta.permute(3, 0, 1, 2)[None]))[0].permute(1, 2, 3, 0)

    return _score_decoded_motions(data_dir, roundtrip, "motion VAE round trip", count=count, frames=frames,
                                  grid=grid)


def block_average_floor(data_dir, *, factor: int = 8, count: int = 16, frames: int = 17,
                        grid: Optional[tuple[int, int]] = None) -> MotionCodecReport:
    """Score an ideal *linear* latent grid: each frame's true motion averaged over ``factor``×``factor`` blocks
    and upsampled back (nearest), every frame kept. No training involved: it tells whether the data's objects
    are large enough for a motion latent of that spatial stride (8 for the Wan VAE) to beat zero motion."""
    import torch.nn.functional as F

    def blocks(delta: torch.Tensor) -> torch.Tensor:
        h, w = delta.shape[1:3]
        if h % factor or w % factor:
            raise MoGe4DInputError(f"block_average_floor: the grid {h}x{w} is not a multiple of {factor}")
        low = F.avg_pool2d(delta.permute(0, 3, 1, 2), factor)
        return F.interpolate(low, scale_factor=factor, mode="nearest").permute(0, 2, 3, 1)

    return _score_decoded_motions(data_dir, blocks, f"{factor}x{factor} block-average latent", count=count,
                                  frames=frames, grid=grid)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.nano.diagnose", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    rt = sub.add_parser("roundtrip", help="score the motion VAE alone: encode + decode the true motion")
    rt.add_argument("--models", required=True, help="model folder (e.g. moge4d_core/nano_model)")
    bf = sub.add_parser("block-floor", help="no model: score the true motion averaged over 8x8 blocks")
    for p in (rt, bf):
        p.add_argument("--data", required=True, help="held-out samples in the TrajScene layout")
        p.add_argument("--count", type=int, default=16)
        p.add_argument("--frames", type=int, default=17)
    a = ap.parse_args(argv)
    try:
        rep = (motion_vae_roundtrip(a.models, a.data, count=a.count, frames=a.frames) if a.what == "roundtrip" else
               block_average_floor(a.data, count=a.count, frames=a.frames))
    except MoGe4DInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for sid, m, b, g in zip(rep.ids, rep.model_error, rep.baseline_error, rep.gain):
        print(f"{sid}: {rep.label} {m:.4f}  baseline {b:.4f}  gain {g:.3f}")
    print(rep.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
