"""Chained generation (moge4d_core.pipeline.chain): windows, re-projection, point identity, seam blend; a 2-window
run on tiny models through the pipeline and the CLI."""
import numpy as np
import pytest
import torch

from moge4d_core.cli import main
from moge4d_core.errors import MoGe4DInputError
from moge4d_core.geometry.sources import geometry_from_depth
from moge4d_core.io import load_trajectories
from moge4d_core.pipeline.chain import (ChainedMotion, chain_windows, check_chain, fill_holes, pad_frames, reproject,
                                        window_frames, window_starts)
from moge4d_core.pipeline.trajectory import denormalize
from moge4d_core.types import Motion, NormalizationSpec

torch.set_num_threads(1)
SPEC = NormalizationSpec(fx=0.9, fy=1.3)


def _plane(h=16, w=16, z=2.0, fov=60.0):
    image = torch.rand(h, w, 3, generator=torch.Generator().manual_seed(1))
    return geometry_from_depth(image, torch.full((h, w, 3), z), fov)


def _mover(velocity):
    """A stand-in trajectory model: window k moves every cell by t * velocity(k, cell) metres (normalised with the
    cell's own depth, as the STraG's output is)."""
    def sample(k, geom):
        n = geom.height * geom.width
        v = velocity(k, torch.arange(n)).reshape(geom.height, geom.width, 3).double()
        t = torch.arange(WINDOW[0], dtype=torch.float64)[:, None, None, None]
        z0 = geom.points[..., 2].double()
        scale = torch.stack([z0 / SPEC.fx, z0 / SPEC.fy, z0], -1)
        return Motion(delta=(t * v / scale).float(), norm=SPEC, geometry=geom)
    return sample


WINDOW = [5]


def test_window_plan_and_refusals():
    assert window_starts(97, 17, 0) == [0, 16, 32, 48, 64, 80]
    assert window_starts(97, 17, 2) == [0, 14, 28, 42, 56, 70, 84]
    assert window_starts(17, 17, 2) == [0] and window_starts(3, 17, 8) == [0]
    assert window_frames(17, 17) == 17 and window_frames(5, 49) == 5 and window_frames(6, 49) == 9
    assert window_frames(97, 17) == 17
    with pytest.raises(MoGe4DInputError, match=r"--window: 6; the model's window must be 4k\+1"):
        check_chain(97, 6, 0, "--")
    with pytest.raises(MoGe4DInputError, match=r"overlap: 9; expected 0 \.\. 8 frames for a window of 17"):
        check_chain(97, 17, 9)
    with pytest.raises(MoGe4DInputError, match=r"frames: 0; a scene needs at least 1 frame"):
        check_chain(0, 17, 0)


def test_fill_holes_takes_the_deepest_neighbour():
    image = torch.tensor([[[1.0, 0, 0], [0, 0, 0], [0, 0, 1.0], [0, 0, 0], [0, 0, 0]]])    # (1,5,3)
    depth = torch.tensor([[2.0, 0.0, 7.0, 0.0, 0.0]])
    holes = torch.tensor([[False, True, False, True, True]])
    img, dep = fill_holes(image, depth, holes)
    assert dep.tolist() == [[2.0, 7.0, 7.0, 7.0, 7.0]]                                   # far side wins, 2 rounds
    assert img[0, 1].tolist() == [0, 0, 1.0] and img[0, 4].tolist() == [0, 0, 1.0]
    assert torch.equal(img[0, 0], image[0, 0]) and torch.equal(img[0, 2], image[0, 2])


def test_reproject_cells_occlusion_and_the_view():
    K = torch.tensor([[10.0, 0, 8], [0, 10.0, 8], [0, 0, 1]])
    pts = torch.tensor([[0.0, 0, 2],          # u = v = 8 -> cell 8*16+8
                        [0.0, 0, 4],          # same cell, behind: occluded
                        [0.001, 0, 2.04],     # same cell, 2 % behind: the same surface, tracked
                        [10.0, 0, 2],         # u = 58: out of view
                        [0.0, 0, -1],         # behind the camera
                        [0.3, -0.5, 3.0],     # u = 9, v = 6.33 -> cell 6*16+9
                        [0.0, 0, 1.0]])       # not renderable (invalid first-frame depth): ignored
    colors = torch.rand(7, 3, generator=torch.Generator().manual_seed(0))
    renderable = torch.tensor([True] * 6 + [False])
    rep = reproject(pts, colors, renderable, K, 16, 16)
    assert rep.cell.tolist() == [136, -1, 136, -1, -1, 105, -1]
    g = rep.geometry
    assert torch.equal(g.image[8, 8], colors[0]) and float(g.depth[8, 8]) == 2.0
    assert torch.equal(g.image[6, 9], colors[5]) and float(g.depth[6, 9]) == 3.0
    assert int(rep.holes.sum()) == 254 and bool(g.valid.all()) and bool((g.depth >= 2.0).all())
    # cell points: the filled depth through K at pixel centres (u = col + 0.5)
    assert torch.allclose(g.points[6, 9], torch.tensor([(9.5 - 8) * 3.0 / 10, (6.5 - 8) * 3.0 / 10, 3.0]))


@pytest.mark.parametrize("overlap", [0, 1, 2])
def test_each_point_keeps_its_identity_across_windows(overlap):
    # left half of the grid moves up, right half down: a point tracked by the wrong cell would change direction
    geom = _plane()
    cols = torch.arange(256) % 16
    sign = torch.where(cols < 8, -1.0, 1.0)

    def velocity(k, cell):
        return torch.stack([torch.full_like(sign, 0.002), 0.004 * sign[cell], torch.full_like(sign, 0.003)], -1)

    WINDOW[0] = 5
    res = chain_windows(_mover(velocity), geom, frames=11, window=5, overlap=overlap)
    traj = res.trajectories
    assert isinstance(res, ChainedMotion) and traj.points.shape == (11, 256, 3) and traj.visibility.shape == (11, 256)
    assert len(res.windows) == len(window_starts(11, 5, overlap)) > 2
    p0 = geom.points.reshape(-1, 3)
    assert torch.equal(traj.points[0], p0)                                        # frame 0 = the geometry's points
    v = velocity(0, torch.arange(256))
    want = p0[None].double() + torch.arange(11, dtype=torch.float64)[:, None, None] * v[None].double()
    assert torch.allclose(traj.points.double(), want, atol=1e-5)
    assert bool(traj.visibility.all())
    assert torch.equal(denormalize(res, fps=12.0).points, traj.points) and denormalize(res, fps=12.0).fps == 12.0
    assert res.delta.shape == (11, 16, 16, 3)


def test_seam_is_a_linear_cross_fade_of_the_two_windows():
    geom = _plane()
    v0, v1 = torch.tensor([0.003, 0.0, 0.0]), torch.tensor([0.0, 0.002, 0.004])
    WINDOW[0] = 9
    res = chain_windows(_mover(lambda k, cell: (v0 if k == 0 else v1).expand(len(cell), 3)), geom, frames=13,
                        window=9, overlap=2)
    assert [w.start for w in res.windows] == [0, 6]
    p0 = geom.points.reshape(-1, 3).double()
    out = res.trajectories.points.double()
    for t in range(7):                                                            # window 0 alone, and the seam frame
        assert torch.allclose(out[t], p0 + t * v0.double(), atol=1e-5), t
    want = p0 + 6 * v0.double()
    for j, a in enumerate([1 / 3, 2 / 3, 1, 1, 1, 1], start=1):                 # steps cross-faded over 2 frames
        want = want + (1 - a) * v0.double() + a * v1.double()
        assert torch.allclose(out[6 + j], want, atol=1e-5), j
    steps = (out[1:] - out[:-1]).norm(dim=-1)
    assert float(steps.max()) <= float(torch.maximum(v0.norm(), v1.norm())) + 1e-6     # no jump at the seam


def test_points_follow_the_cell_they_land_in_and_those_that_leave_the_view_hold_still():
    geom = _plane(z=2.0)
    WINDOW[0] = 5
    K = geom.K.double()

    def velocity(k, cell):
        # 0.1 m per frame to the right (0.7 pixel at 2 m); up on the left half, down on the right half of the grid
        return torch.stack([torch.full((len(cell),), 0.1), torch.where(cell % 16 < 8, -0.01, 0.01),
                            torch.zeros(len(cell))], -1)

    res = chain_windows(_mover(velocity), geom, frames=9, window=5, overlap=0)
    out, vis = res.trajectories.points, res.trajectories.visibility
    p4 = out[4].double()
    u = K[0, 0] * p4[:, 0] / p4[:, 2] + K[0, 2]
    v = K[1, 1] * p4[:, 1] / p4[:, 2] + K[1, 2]
    gone = u >= 16
    assert 0 < int(gone.sum()) < 256
    cell = v.floor().long() * 16 + u.floor().long()                      # where each point landed at frame 4
    crossed = ~gone & (cell % 16 >= 8) & (torch.arange(256) % 16 < 8)
    assert int(crossed.sum()) > 0                                         # moved from the left half to the right
    t = torch.arange(1, 5, dtype=torch.float64)[:, None, None]
    want = p4[None, ~gone] + t * velocity(1, cell[~gone]).double()[None]
    assert torch.allclose(out[5:, ~gone].double(), want, atol=1e-5)      # the landing cell's motion, not its own
    assert torch.equal(out[5:, gone], out[4:5, gone].expand(4, -1, -1))  # held where they left the view
    assert not bool(vis[5:, gone].any()) and bool(vis[5:, ~gone].all())
    moving = chain_windows(_mover(velocity), geom, frames=9, window=5, overlap=0, untracked="velocity")
    last = (out[4, gone] - out[0, gone]) / 4                              # their last velocity
    assert torch.allclose(moving.trajectories.points[8, gone], out[4, gone] + 4 * last, atol=1e-5)


def test_pad_frames_to_4k_plus_1():
    x = torch.arange(7.0)[:, None]
    y, n = pad_frames(x)
    assert n == 7 and y[:, 0].tolist() == [0, 1, 2, 3, 4, 5, 6, 6, 6]
    z, m = pad_frames(torch.zeros(9, 2))
    assert m == 9 and z.shape == (9, 2)


# ---- tiny models: the pipeline and the CLI ----
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from PIL import Image

    from pipeline_models import write_tiny_models

    d = tmp_path_factory.mktemp("chain")
    write_tiny_models(d / "models")
    Image.fromarray((np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)).save(d / "img.png")
    np.save(d / "depth.npy", np.linspace(2.0, 4.0, 256, dtype=np.float32).reshape(16, 16))
    return d


def test_two_windows_on_tiny_models(tiny):
    from moge4d_core.models.conditioning import TextContext
    from moge4d_core.pipeline.model_dir import find_model_files, load_models
    from moge4d_core.pipeline.run import run_pipeline
    from moge4d_core.pipeline.settings import SamplerSettings
    from moge4d_core.pipeline.trajectory import TrajectoryOptions

    models = load_models(find_model_files(tiny / "models"), depth=False)
    image = torch.rand(16, 16, 3, generator=torch.Generator().manual_seed(5))
    geom = geometry_from_depth(image, torch.from_numpy(np.load(tiny / "depth.npy"))[..., None].expand(16, 16, 3), 60)
    text = TextContext.from_embeddings(torch.randn(1, 7, 16, generator=torch.Generator().manual_seed(0)))
    calls = []
    kw = dict(image=image, strag=models.strag, motion_vae=models.motion_vae, image_vae=models.image_vae,
              positive=text, geometry=geom, cameras=["orbit_left"], options=TrajectoryOptions(frames=5),
              trajectory_settings=SamplerSettings(steps=2, cfg=1.0, seed=3))
    res = run_pipeline(**kw, vism=models.vism, inpaint_settings=SamplerSettings(steps=1, cfg=1.0, seed=4), frames=8,
                       overlap=1, progress=lambda stage, d, t: calls.append(stage))
    single = run_pipeline(**kw)                                                   # one window of 5, same seed
    tr = res.trajectories
    assert tr.points.shape == (8, 256, 3) and tr.visibility.shape == (8, 256)
    assert [w.start for w in res.motion.windows] == [0, 3]
    assert torch.equal(tr.points[0], geom.points.reshape(-1, 3))                  # frame 0 = the geometry's points
    assert torch.equal(tr.points[:4], single.trajectories.points[:4])             # window 0 up to the seam frame
    assert not torch.equal(tr.points[4], single.trajectories.points[4])           # from there on: window 1
    assert sorted(set(calls) - {"inpaint orbit_left"}) == ["trajectories 1/2", "trajectories 2/2"]
    view = res.views[0]
    assert view.render.rgb.shape == (8, 16, 16, 3) and view.frames.shape == (8, 16, 16, 3)   # 8 -> 9 -> 8 frames


def test_cli_generate_any_frame_count(tiny, tmp_path, capsys):
    common = ["generate", "--image", str(tiny / "img.png"), "--models", str(tiny / "models"), "--depth",
              str(tiny / "depth.npy"), "--fov", "60", "--width", "16", "--height", "16", "--steps", "1", "--cfg", "1",
              "--no-inpaint"]
    assert main([*common, "--frames", "7", "--window", "5", "--overlap", "1", "--out", str(tmp_path / "o")]) == 0
    scene = load_trajectories(tmp_path / "o" / "scene.npz")
    assert scene.points.shape == (7, 256, 3) and scene.visibility.shape == (7, 256)
    assert len(list((tmp_path / "o" / "ply").glob("*.ply"))) == 7
    capsys.readouterr()
    assert main([*common, "--frames", "9", "--window", "6", "--out", str(tmp_path / "p")]) == 2
    assert "--window: 6; the model's window must be 4k+1" in capsys.readouterr().err
    assert main([*common, "--frames", "9", "--window", "5", "--overlap", "3", "--out", str(tmp_path / "p")]) == 2
    assert "--overlap: 3; expected 0 .. 2 frames for a window of 5" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_sampler_node_chains_windows(tmp_path):
    from conftest import load_nodes, pack_module
    from pipeline_models import write_tiny_models

    nodes = load_nodes(tmp_path)
    import folder_paths

    node_models = pack_module("nodes.models")

    folder_paths.models_dir = str(tmp_path / "models")
    folder_paths.folder_names_and_paths.pop("moge4d", None)
    node_models.register_model_folder()
    try:
        write_tiny_models(tmp_path / "models" / "moge4d")
        node = {n.define_schema().node_id: n for n in nodes.NODE_LIST}
        sampler = node["MoGe4DTrajectorySampler"]
        widgets = [i.id for i in sampler.define_schema().inputs if i.io_type in ("INT", "FLOAT", "BOOLEAN", "COMBO")]
        assert widgets == ["frames", "steps", "cfg", "shift", "seed", "solver", "normalization", "reference",
                           "windows", "overlap", "cache"]                          # appended, old order kept
        strag = node["MoGe4DLoadSTraG"].execute(file="4D-STraG/diffusion_pytorch_model.safetensors",
                                                precision="fp32").args[0]
        mvae = node["MoGe4DLoadMotionVAE"].execute(vae="VAE/", precision="fp32").args[0]
        image = torch.rand(16, 16, 3, generator=torch.Generator().manual_seed(5))
        geom = geometry_from_depth(image, (2.0 + torch.linspace(0, 1, 16)[None, :].expand(16, 16))[..., None]
                                   .expand(16, 16, 3).contiguous(), 60.0)

        def cond(seed):
            return [[torch.randn(1, 7, 16, generator=torch.Generator().manual_seed(seed)), {"pooled_output": None}]]

        args = dict(strag_model=strag, motion_vae=mvae, geometry=geom, positive=cond(0), negative=cond(1), frames=5,
                    steps=2, cfg=2.0, shift=5.0, seed=3)
        one, _ = sampler.execute(**args).args
        chained, preview = sampler.execute(**args, windows=2, overlap=1).args
        assert one.delta.shape[0] == 5 and chained.delta.shape == (8, 16, 16, 3) and preview.shape[0] == 8
        traj = node["MoGe4DDenormalize"].execute(motion=chained, fps=8.0).args[0]
        single = node["MoGe4DDenormalize"].execute(motion=one, fps=8.0).args[0]
        assert traj.points.shape == (8, 256, 3) and traj.visibility.shape == (8, 256)
        assert torch.equal(traj.points[:4], single.points[:4])                   # window 0 up to the seam frame
        with pytest.raises(MoGe4DInputError, match=r"overlap: 3; expected 0 \.\. 2 frames for a window of 5"):
            sampler.execute(**args, windows=2, overlap=3)
    finally:
        folder_paths.folder_names_and_paths.pop("moge4d", None)
