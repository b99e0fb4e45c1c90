"""training/eval/metrics.py against float64 formulas written here and hand-computed cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from moge4d_core.errors import MoGe4DInputError
from training.eval import masked_psnr, trajectory_error, zero_motion_baseline


def ref_traj_error(pred, gt, vis):
    """Pooled mean over (t >= 1, visible n) of the Euclidean distance, by explicit loops."""
    total, count = 0.0, 0
    for t in range(1, gt.shape[0]):
        for n in range(gt.shape[1]):
            if vis is None or vis[t, n]:
                total += math.sqrt(sum((float(pred[t, n, k]) - float(gt[t, n, k])) ** 2 for k in range(3)))
                count += 1
    return total / count


def ref_psnr(pred, target, known):
    se, count = 0.0, 0
    for idx in zip(*np.nonzero(known)):
        for c in range(3):
            se += (float(pred[idx][c]) - float(target[idx][c])) ** 2
            count += 1
    return 10 * math.log10(1.0 / (se / count))


def test_trajectory_error_matches_reference_loops_numpy_and_torch():
    rng = np.random.default_rng(0)
    gt = rng.normal(size=(6, 40, 3)) * 3
    pred = gt + rng.normal(size=gt.shape) * 0.2
    vis = rng.random((6, 40)) > 0.3
    expect = ref_traj_error(pred, gt, vis)
    assert trajectory_error(pred, gt, vis) == pytest.approx(expect, rel=1e-12)
    got_t = trajectory_error(torch.from_numpy(pred).float(), torch.from_numpy(gt).float(), torch.from_numpy(vis))
    assert got_t == pytest.approx(expect, rel=1e-5)
    assert trajectory_error(pred, gt, None) == pytest.approx(ref_traj_error(pred, gt, None), rel=1e-12)
    # pooled, not a mean of per-frame means: with uneven visibility the two differ
    per_frame = np.mean([np.linalg.norm(pred[t] - gt[t], axis=-1)[vis[t]].mean() for t in range(1, 6)])
    assert abs(per_frame - expect) > 1e-6


def test_trajectory_error_hand_cases():
    gt = np.zeros((4, 5, 3))
    gt[:, :, 2] = 3.0
    vis = np.ones((4, 5), dtype=bool)
    vis[:, 4] = False                                   # point 4 invisible everywhere
    pred = gt.copy()
    pred[:, :4, 0] += 0.5                               # constant offset on visible points
    pred[:, 4] += 100.0                                 # huge error on the invisible point
    pred[0] += 7.0                                      # frame 0 is given: any error there is ignored
    assert trajectory_error(pred, gt, vis) == 0.5
    # an offset of (0.3, 0.4, 0) has length 0.5 too
    pred2 = gt.copy()
    pred2[1:, :, 0] += 0.3
    pred2[1:, :, 1] += 0.4
    assert trajectory_error(pred2, gt) == pytest.approx(0.5, abs=1e-12)
    # visibility only in one frame: only that frame's pairs count
    vis1 = np.zeros((4, 5), dtype=bool)
    vis1[2, :2] = True
    pred3 = gt.copy()
    pred3[2, 0, 2] += 1.0
    assert trajectory_error(pred3, gt, vis1) == pytest.approx(0.5)


def test_zero_motion_baseline():
    rng = np.random.default_rng(1)
    gt = rng.normal(size=(5, 7, 3))
    base = zero_motion_baseline(gt)
    assert isinstance(base, np.ndarray) and base.shape == gt.shape
    for t in range(5):
        np.testing.assert_array_equal(base[t], gt[0])
    gt_t = torch.from_numpy(gt).float()
    base_t = zero_motion_baseline(gt_t)
    assert isinstance(base_t, torch.Tensor) and base_t.dtype == torch.float32
    assert torch.equal(base_t, gt_t[:1].repeat(5, 1, 1))
    base_t[1, 0, 0] = 123.0                              # a real copy, not a view of gt
    assert gt_t[1, 0, 0] != 123.0 and gt_t[0, 0, 0] != 123.0
    # the baseline's error is the mean displacement from frame 0
    expect = np.mean([np.linalg.norm(gt[t, n] - gt[0, n]) for t in range(1, 5) for n in range(7)])
    assert trajectory_error(base, gt) == pytest.approx(expect, rel=1e-12)


def test_masked_psnr_matches_reference_and_hand_cases():
    rng = np.random.default_rng(2)
    target = rng.random((3, 6, 5, 3))
    pred = np.clip(target + rng.normal(size=target.shape) * 0.05, 0, 1)
    known = rng.random((3, 6, 5)) > 0.4
    assert masked_psnr(pred, target, known) == pytest.approx(ref_psnr(pred, target, known), rel=1e-12)
    assert masked_psnr(torch.from_numpy(pred), torch.from_numpy(target), torch.from_numpy(known)) == \
        pytest.approx(ref_psnr(pred, target, known), rel=1e-12)
    # an error of 0.1 on every known pixel = 20 dB; unknown pixels may be anything
    t2 = np.full((2, 4, 4, 3), 0.5)
    p2 = t2 + 0.1
    k2 = np.ones((2, 4, 4), dtype=bool)
    k2[:, 0] = False
    p2[:, 0] = 0.0
    assert masked_psnr(p2, t2, k2) == pytest.approx(20.0, abs=1e-9)
    assert masked_psnr(t2, t2, k2) == math.inf


@pytest.mark.parametrize("call, match", [
    (lambda: trajectory_error(np.zeros((3, 4, 3)), np.zeros((3, 5, 3))), "differ in shape"),
    (lambda: trajectory_error(np.zeros((1, 4, 3)), np.zeros((1, 4, 3))), "T >= 2"),
    (lambda: trajectory_error(np.zeros((3, 4, 3)), np.zeros((3, 4, 3)), np.zeros((3, 4), bool)), "no point is visible"),
    (lambda: trajectory_error(np.zeros((3, 4, 3)), np.zeros((3, 4, 3)), np.ones((3, 4))), "dtype bool"),
    (lambda: trajectory_error(np.full((3, 4, 3), np.nan), np.zeros((3, 4, 3))), "NaN"),
    (lambda: masked_psnr(np.zeros((1, 2, 2, 3)), np.zeros((1, 2, 2, 3)), np.zeros((1, 2, 2), bool)), "no known pixel"),
    (lambda: masked_psnr(np.full((1, 2, 2, 3), 255.0), np.zeros((1, 2, 2, 3)), np.ones((1, 2, 2), bool)), r"\[0, 1\]"),
    (lambda: masked_psnr(np.zeros((1, 2, 2, 3)), np.zeros((1, 2, 2, 3)), np.ones((1, 2, 3), bool)), "shape"),
])
def test_bad_inputs_raise(call, match):
    with pytest.raises(MoGe4DInputError, match=match):
        call()
