"""Chained generation on synthetic scenes longer than one window: per-window trajectory error and seam jumps.

For each held-out scene of the nano model's world (:func:`training.nano.data.nano_sample`, seed 7 by default) drawn
with ``--frames`` frames at the training clips' speed (``motion_scale`` scaled by ``(frames-1)/(window-1)``, so an
object covers the same distance per frame as in the 17-frame training clips), the shipped nano model (or
``--models DIR``) generates the scene window after window (:mod:`moge4d_core.pipeline.chain`) from the scene's first
frame and metric depth. Printed:

* per window ``k`` (output frames ``s_k .. s_k+L-1``): the trajectory error (paper eq. 7,
  :func:`training.eval.metrics.trajectory_error`, the truth's visibility, frames after the window's first) of the
  chained scene and of the "nothing moves" prediction (every frame = the truth's frame 0), averaged over the scenes
  with a visible truth point in the window (``scenes``; ``gt vis``: the share of visible truth points);
* the seam jump against the in-window motion: per output step ``t -> t+1`` the mean point displacement
  ``mean_n |P[t+1,n] - P[t,n]|``; seam steps are the steps from the start ``s_k`` of each window ``k >= 1`` through
  its cross-faded frames (``t = s_k .. s_k + overlap``: with overlap 0 the step from the previous window's last
  frame to the next window's first new frame), every other step is in-window. Reported over all N points and over
  the points tracked (visible) at both ends of the step.

    python -m training.eval.chained --frames 49 --scenes 8 --overlap 0 2 4
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Optional

import numpy as np
import torch

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.geometry.sources import geometry_from_depth
from moge4d_core.pipeline.chain import UNTRACKED, generate_chained, window_starts
from moge4d_core.pipeline.image_vae import WanImageVAE
from moge4d_core.pipeline.model_dir import encode_prompts, find_model_files, load_models, strag_clip_context
from moge4d_core.pipeline.nano import NANO_DIR
from moge4d_core.pipeline.settings import SamplerSettings
from moge4d_core.pipeline.trajectory import TrajectoryOptions

from .metrics import trajectory_error, zero_motion_baseline

__all__ = ["step_displacements", "seam_steps", "evaluate_scene", "main"]


def step_displacements(points: np.ndarray, visibility: Optional[np.ndarray] = None) -> np.ndarray:
    """Mean point displacement of each output step.

    Args:
        points: (T,N,3) positions.
        visibility: (T,N) bool or None; given, only points visible at both ends of a step count (NaN for a step
            with none).

    Returns:
        (T-1,) float64: ``mean_n |points[t+1,n] - points[t,n]|``.
    """
    d = np.linalg.norm(np.diff(points.astype(np.float64), axis=0), axis=-1)     # (T-1, N)
    if visibility is None:
        return d.mean(1)
    both = visibility[1:] & visibility[:-1]
    with np.errstate(invalid="ignore"):
        return np.where(both.any(1), (d * both).sum(1) / both.sum(1), np.nan)


def seam_steps(frames: int, window: int, overlap: int) -> np.ndarray:
    """(T-1,) bool: the steps ``t -> t+1`` that belong to a seam (module docstring)."""
    seam = np.zeros(max(frames - 1, 0), dtype=bool)
    for s in window_starts(frames, window, overlap)[1:]:
        seam[s:min(s + overlap + 1, frames - 1)] = True
    return seam


def evaluate_scene(models, sample, *, window: int, overlap: int, settings: SamplerSettings, positive, negative,
                   clip, untracked: str = "hold") -> dict:
    """Chain the model over one synthetic sample; returns per-window errors and the step displacements."""
    frames = sample.coords.shape[0]
    h, w = sample.height, sample.width
    image = torch.from_numpy(np.clip(np.rint(sample.colors), 0, 255).reshape(h, w, 3) / 255.0).float()
    depth = torch.from_numpy(sample.coords[0, :, 2].reshape(h, w)).float()
    geometry = geometry_from_depth(image, depth[..., None].expand(h, w, 3), sample.meta["fov_x_deg"])
    options = TrajectoryOptions(frames=window)
    motion = generate_chained(models.strag, models.motion_vae, WanImageVAE.from_motion_vae(models.motion_vae),
                              geometry, positive, negative, frames=frames, overlap=overlap, settings=settings,
                              options=options, clip=clip, untracked=untracked)
    traj = motion.trajectories
    pred = traj.points.numpy()
    gt, vis = sample.coords, sample.vis
    static = zero_motion_baseline(gt)
    rows = []
    for info in motion.windows:
        sl = slice(info.start, info.stop)
        seen = bool(vis[sl][1:].any())                   # every truth point may have left the view: no error then
        rows.append(dict(start=info.start, stop=info.stop, tracked=info.tracked / (h * w), holes=info.holes / (h * w),
                         error=trajectory_error(pred[sl], gt[sl], vis[sl]) if seen else float("nan"),
                         static=trajectory_error(static[sl], gt[sl], vis[sl]) if seen else float("nan"),
                         visible=float(vis[sl][1:].mean())))
    return dict(windows=rows, steps=step_displacements(pred),
                steps_tracked=step_displacements(pred, traj.visibility.numpy()), seam=seam_steps(frames, window, overlap))


def _nanmean(x) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.eval.chained", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=str(NANO_DIR), help="model folder (default: the shipped nano model)")
    ap.add_argument("--frames", type=int, default=49, help="frames per synthetic scene (longer than one window)")
    ap.add_argument("--window", type=int, default=None, help="model window (default: the nano demo's, 17)")
    ap.add_argument("--overlap", type=int, nargs="+", default=[2], help="overlap(s) to evaluate")
    ap.add_argument("--scenes", type=int, default=8, help="held-out scenes (indices 0..n-1)")
    ap.add_argument("--seed", type=int, default=7, help="scene stream (7 = the nano recipe's held-out set)")
    ap.add_argument("--sample-seed", type=int, default=0, help="sampler seed (window k uses seed + k)")
    ap.add_argument("--untracked", choices=UNTRACKED, default="hold",
                    help="what points the chain cannot track do (moge4d_core.pipeline.chain)")
    ap.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = ap.parse_args(argv)
    from training.nano.data import NANO_SCENES, nano_sample

    spec = json.loads((NANO_DIR / "demo.json").read_text())["settings"]
    window = args.window or int(spec["frames"])
    if args.frames <= window:
        raise MoGe4DInputError(f"--frames {args.frames}: the scenes must be longer than one window ({window})")
    settings = SamplerSettings(steps=int(spec["steps"]), cfg=float(spec["cfg"]), shift=float(spec["shift"]),
                               seed=args.sample_seed)
    models = load_models(find_model_files(args.models), inpaint=False, depth=False)
    positive, negative = encode_prompts(models, "", "")
    speed = NANO_SCENES["motion_scale"] * (args.frames - 1) / (NANO_SCENES["frames"] - 1)
    samples = [nano_sample(i, seed=args.seed, frames=args.frames, motion_scale=speed) for i in range(args.scenes)]
    clip = strag_clip_context(models, samples[0].height, samples[0].width)
    report = {}
    t0 = time.perf_counter()
    for overlap in args.overlap:
        results = [evaluate_scene(models, s, window=window, overlap=overlap, settings=settings, positive=positive,
                                  negative=negative, clip=clip, untracked=args.untracked) for s in samples]
        n_win = len(results[0]["windows"])
        print(f"\n{args.scenes} scenes x {args.frames} frames, window {window}, overlap {overlap}, "
              f"{n_win} windows, untracked points: {args.untracked}, {settings.steps} steps (nano world at the "
              f"training speed, seed {args.seed})")
        print(f"{'window':>6} {'frames':>9} {'tracked':>8} {'holes':>6} {'gt vis':>7} {'scenes':>6} {'err m':>8} "
              f"{'static m':>9}")
        per_window = []
        for k in range(n_win):
            rows = [r["windows"][k] for r in results]
            row = {key: _nanmean([r[key] for r in rows]) for key in ("tracked", "holes", "error", "static", "visible")}
            row["scenes"] = int(sum(np.isfinite(r["error"]) for r in rows))
            row["frames"] = f"{rows[0]['start']}-{rows[0]['stop'] - 1}"
            per_window.append(row)
            print(f"{k:>6} {row['frames']:>9} {100 * row['tracked']:>7.0f}% {100 * row['holes']:>5.0f}% "
                  f"{100 * row['visible']:>6.0f}% {row['scenes']:>6} {row['error']:>8.3f} {row['static']:>9.3f}")
        seam = results[0]["seam"]
        out = {"windows": per_window}
        for name, key in (("all points", "steps"), ("tracked points", "steps_tracked")):
            steps = np.stack([r[key] for r in results])                               # (scenes, T-1)
            inside, at_seam = _nanmean(steps[:, ~seam]), _nanmean(steps[:, seam])
            worst = float(np.nanmax(steps[:, seam])) if np.isfinite(steps[:, seam]).any() else float("nan")
            ratio = at_seam / inside
            print(f"seam jump ({name}): mean {at_seam:.4f} m, max {worst:.4f} m; in-window mean {inside:.4f} m; "
                  f"ratio {ratio:.2f} ({'<=' if ratio <= 2 else '>'} 2)")
            out[key] = dict(seam=at_seam, seam_max=worst, inside=inside, ratio=ratio)
        report[str(overlap)] = out
    print(f"\n{time.perf_counter() - t0:.1f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
