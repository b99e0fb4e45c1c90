"""ViSM inpainting inputs: masked video values and the packed 4-channel mask latent on hand-made masks."""
import pytest
import torch

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.models.vism_mask import all_holes, pack_inpaint_inputs, pack_mask_latent


def _expected_cell(mask_frame, i, j):
    """1 - mean of the 2x2 centre pixels (8i+3, 8i+4) x (8j+3, 8j+4) of an 8x8 cell, hand formula."""
    rows, cols = (8 * i + 3, 8 * i + 4), (8 * j + 3, 8 * j + 4)
    vals = [float(mask_frame[r, c] >= 0.5) for r in rows for c in cols]
    return 1.0 - sum(vals) / 4.0


def test_mask_latent_layout_and_values_on_hand_made_mask():
    t, h, w = 9, 16, 24                                  # F = 3 latent frames of 2x3
    holes = torch.zeros(t, h, w)
    holes[0, 0:8, 0:8] = 1                               # frame 0: whole first cell is hole
    holes[1, 3, 3] = 1                                   # frame 1: one of the four centre pixels of cell (0,0)
    holes[2, 3:5, 11:13] = 1                             # frame 2: all four centre pixels of cell (0,1)
    holes[3, 8:16, 16:24] = 0.7                          # frame 3: cell (1,2) >= 0.5 -> hole
    holes[4, 8:16, 0:8] = 0.3                            # frame 4: below 0.5 -> known
    holes[5, 11, 19] = 1                                 # frame 5: one centre pixel of cell (1,2)
    holes[8] = 1                                         # frame 8: all hole
    lat = pack_mask_latent(holes)
    assert lat.shape == (1, 4, 3, 2, 3) and lat.dtype == torch.float32
    for f in range(3):
        for c in range(4):
            src = 0 if f == 0 else 4 * f + c - 3         # first frame repeated 4x, then 4 frames per latent frame
            for i in range(2):
                for j in range(3):
                    assert lat[0, c, f, i, j].item() == pytest.approx(_expected_cell(holes[src], i, j), abs=1e-7), \
                        (c, f, i, j)
    # spot values
    assert lat[0, :, 0, 0, 0].tolist() == [0.0, 0.0, 0.0, 0.0]          # frame 0 hole, in all 4 channels
    assert lat[0, 0, 1, 0, 0].item() == pytest.approx(0.75)               # frame 1 -> latent frame 1, channel 0
    assert lat[0, 1, 1, 0, 1].item() == pytest.approx(0.0)                # frame 2 -> channel 1
    assert lat[0, 2, 1, 1, 2].item() == pytest.approx(0.0)                # frame 3 -> channel 2
    assert lat[0, 3, 1, 1, 0].item() == pytest.approx(1.0)                # frame 4 (0.3) is known
    assert lat[0, 0, 2, 1, 2].item() == pytest.approx(0.75)               # frame 5 -> latent frame 2, channel 0
    assert torch.all(lat[0, 3, 2] == 0)                                   # frame 8 all hole


def test_masked_video_holes_are_zero_in_minus_one_one():
    g = torch.Generator().manual_seed(0)
    t, h, w = 5, 8, 16
    video = torch.rand(t, h, w, 3, generator=g)
    holes = (torch.rand(t, h, w, generator=g) > 0.6).float()
    masked, lat = pack_inpaint_inputs(video, holes)
    assert masked.shape == (1, 3, t, h, w) and lat.shape == (1, 4, 2, 1, 2)
    for k in range(t):
        for y in range(h):
            for x in range(w):
                for ch in range(3):
                    want = 0.0 if holes[k, y, x] >= 0.5 else 2 * video[k, y, x, ch].item() - 1
                    assert masked[0, ch, k, y, x].item() == pytest.approx(want, abs=1e-6)
    assert masked.min() >= -1 and masked.max() <= 1


def test_no_holes_gives_ones_and_full_video():
    video = torch.full((5, 8, 8, 3), 0.25)
    masked, lat = pack_inpaint_inputs(video, torch.zeros(5, 8, 8))
    assert torch.all(lat == 1)
    assert torch.allclose(masked, torch.full_like(masked, -0.5))


def test_all_holes_flag():
    assert all_holes(torch.ones(5, 8, 8))
    assert not all_holes(torch.ones(5, 8, 8) * 0.4)
    assert torch.all(pack_mask_latent(torch.ones(5, 8, 8)) == 0)


def test_single_frame_and_bool_mask():
    holes = torch.zeros(1, 8, 8, dtype=torch.bool)
    holes[0, 3:5, 3:5] = True
    lat = pack_mask_latent(holes)
    assert lat.shape == (1, 4, 1, 1, 1) and torch.all(lat == 0)


@pytest.mark.parametrize("video_shape,hole_shape,msg", [
    ((6, 8, 8, 3), (6, 8, 8), "4k\\+1"),
    ((5, 12, 8, 3), (5, 12, 8), "multiples of 8"),
    ((5, 8, 8, 3), (5, 8, 16), "matching"),
    ((5, 3, 8, 8), (5, 3, 8), "\\(T,H,W,3\\)"),
])
def test_bad_shapes_are_rejected(video_shape, hole_shape, msg):
    with pytest.raises(MoGe4DInputError, match=msg):
        pack_inpaint_inputs(torch.zeros(video_shape), torch.zeros(hole_shape))
