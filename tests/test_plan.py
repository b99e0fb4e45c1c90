"""The dry-run planner (``python -m moge4d_core plan``): memory-mode strings, the release plan's choices and weight
counts, and the estimate against a measurement of the real nano pipeline on the CPU."""
from __future__ import annotations

import json

import pytest
import torch

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.pipeline import plan as P
from moge4d_core.pipeline.memory_accounting import LiveBytes, count_flops

GiB = 2 ** 30


@pytest.fixture(scope="module")
def release_plan():
    return P.make_plan(P.release_sizes())


def _json_plan(capsys, *argv):
    rc = P.main(list(argv) + ["--json"])
    out = json.loads(capsys.readouterr().out)
    return rc, out


# ------------------------------------------------------------------------------------------ memory mode strings
@pytest.mark.parametrize("text,name,residency,blocks,fp8", [
    ("full", "full", "full", None, False),
    ("model_offload", "model_offload", "model_offload", None, False),
    ("fp8", "fp8", "model_offload", None, True),
    ("fp8+model_offload", "fp8", "model_offload", None, True),
    ("block_swap:10", "block_swap:10", "block_swap", 10, False),
    ("fp8+block_swap:10", "fp8+block_swap:10", "block_swap", 10, True),
    (" Block_Swap : 0 + FP8 ", "fp8+block_swap:0", "block_swap", 0, True),
    ("fp8+full", "fp8+full", "full", None, True),
])
def test_parse_memory_mode_accepts(text, name, residency, blocks, fp8):
    m = P.parse_memory_mode(text)
    assert (m.name, m.residency, m.blocks, m.fp8) == (name, residency, blocks, fp8)
    assert P.parse_memory_mode(m.name) == m


@pytest.mark.parametrize("text,why", [
    ("", "non-empty"), ("blockswap:10", "unknown part"), ("block_swap", "needs a block count"),
    ("block_swap:-1", "negative"), ("block_swap:ten", "integer"), ("fp8+fp8", "twice"),
    ("full+model_offload", "two residencies"), ("fp8+auto", "cannot be combined"), ("offload", "unknown part"),
])
def test_parse_memory_mode_refuses(text, why):
    with pytest.raises(MoGe4DInputError) as exc:
        P.parse_memory_mode(text)
    msg = str(exc.value)
    assert why in msg and "fp8+block_swap:N" in msg and "model_offload" in msg


def test_parse_memory_mode_auto():
    assert P.parse_memory_mode("auto").is_auto
    with pytest.raises(MoGe4DInputError, match="not accepted here"):
        P.parse_memory_mode("auto", allow_auto=False)


# ------------------------------------------------------------------------------------------ release plan
def test_release_weights_match_parameter_counts(release_plan):
    models = {m.name: m for m in release_plan.profile.all_models}
    strag, vism = models["STraG DiT"], models["ViSM DiT"]
    # parameter counts of the release (performance_anchors §1.1 and the issue): 17.04 B with MPM, 16.40 B
    assert strag.params == pytest.approx(17.04e9, rel=0.01)
    assert vism.params == pytest.approx(16.40e9, rel=0.01)
    for m in (strag, vism):       # bf16 weights: 2 bytes per parameter (+ tiny RoPE buffers)
        assert m.bytes == pytest.approx(2 * m.params, rel=0.01)
        assert m.num_blocks == 40
    # resident bytes per mode follow from the split: block_swap:N keeps N + 1 blocks, fp8 halves eligible weights
    mo, bs = P.parse_memory_mode("model_offload"), P.parse_memory_mode("block_swap:10")
    assert strag.resident(mo) - strag.resident(bs) == 29 * strag.block_bytes
    assert strag.resident(P.parse_memory_mode("fp8")) == strag.bytes - strag.fp8_numel
    assert strag.fp8_numel > 0.95 * strag.params


def test_release_flops_per_step(release_plan):
    st = {s.name: s for s in release_plan.profile.stages}
    # hand count (performance_anchors §2.4): 686 TFLOP per CFG-batched STraG step, 626 for ViSM
    assert st["trajectories (4D-STraG)"].flops_per_step == pytest.approx(686e12, rel=0.02)
    assert st["inpaint (4D-ViSM)"].flops_per_step == pytest.approx(626e12, rel=0.02)


def test_cli_json_contract_and_24_gib(capsys, release_plan):
    rc, out = _json_plan(capsys, "--gpu-memory", "24")
    assert rc == 0
    choice = out["choice"]
    assert isinstance(choice["mode"], str) and isinstance(choice["peak_gib"], float)
    assert choice["peak_gib"] <= 24
    assert choice["peak_gib"] == pytest.approx(release_plan.peak_bytes(choice["mode"]) / GiB)
    # the choice is the cheapest that fits: every cheaper candidate is over 24 GiB
    cands = release_plan.candidate_modes()
    for cheaper in cands[:cands.index(choice["mode"])]:
        assert release_plan.peak_bytes(cheaper) > 24 * GiB
    stages = out["stages"]
    assert {s["mode"] for s in stages} >= {"full", "model_offload", choice["mode"]}
    for s in stages:
        assert isinstance(s["name"], str) and isinstance(s["mode"], str)
        assert isinstance(s["weights_gib"], float) and isinstance(s["peak_gib"], float)
        assert s["flops_per_step"] is None or isinstance(s["flops_per_step"], float)
    names = [s["name"] for s in stages if s["mode"] == "model_offload"]
    assert names == ["text + CLIP", "depth (UniDepthV2)", "motion features (OmniMAE)", "trajectories (4D-STraG)",
                     "render (points z-buffer)", "inpaint (4D-ViSM)"]


def test_80_gib_keeps_a_whole_bf16_dit(capsys, release_plan):
    rc, out = _json_plan(capsys, "--gpu-memory", "80")
    mode = P.parse_memory_mode(out["choice"]["mode"])
    assert rc == 0 and not mode.fp8 and mode.residency in ("full", "model_offload")
    strag = next(s for s in out["stages"] if s["mode"] == mode.name and "STraG" in s["name"])
    assert strag["weights_gib"] * GiB >= 2 * 17.04e9 * 0.99
    assert out["choice"]["peak_gib"] <= 80


def test_no_mode_fits(capsys, release_plan):
    with pytest.raises(MoGe4DInputError, match="no memory mode fits"):
        P.choose_memory_mode(release_plan, 2)
    rc, out = _json_plan(capsys, "--gpu-memory", "2")
    assert rc == 1 and out["choice"]["mode"] is None


def test_cli_refuses_bad_input(capsys):
    assert P.main(["--memory", "block_swap"]) == 2
    assert "block_swap:N" in capsys.readouterr().err
    assert P.main(["--frames", "48"]) == 2
    assert "4k+1" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ estimate vs measurement
def test_live_bytes_counts_storages_once():
    w = torch.zeros(1000)                     # 4000 bytes, tracked
    with LiveBytes() as lb:
        lb.track(w, w.view(10, 100))          # a view is not counted twice
        assert lb.current == 4000
        a = w * 2                             # +4000
        b = a.view(100, 10)                   # view: +0
        del a
        c = torch.ones(500, dtype=torch.float64)   # +4000
        assert lb.current == 12000
        del b                                 # the storage of a goes now
        assert lb.current == 8000
        del c
    assert lb.peak == 12000 and lb.current == 4000


def test_cpu_attention_flops_counted():
    q = torch.randn(1, 2, 16, 8)
    with count_flops() as fc:
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    assert fc.get_total_flops() == 4 * 1 * 2 * 16 * 16 * 8      # 2 matmuls of 2*B*H*L*L*d


def test_estimate_within_15_percent_of_measured_nano_stages():
    """Real nano models through the real pipeline functions, live tensor bytes counted per stage, against the
    planner's fake-tensor estimate for the same sizes (model_offload: the stage's models only)."""
    from moge4d_core.camera.scene import camera_path_for_scene
    from moge4d_core.geometry.sources import geometry_from_depth
    from moge4d_core.pipeline.image_vae import WanImageVAE
    from moge4d_core.pipeline.inpaint import inpaint
    from moge4d_core.pipeline.model_dir import encode_prompts, find_model_files, load_models
    from moge4d_core.pipeline.nano import NANO_DIR
    from moge4d_core.pipeline.settings import SamplerSettings
    from moge4d_core.pipeline.trajectory import TrajectoryOptions, denormalize, generate_motion
    from moge4d_core.render.api import render_trajectories

    H, W, T = 64, 96, 17
    m = load_models(find_model_files(NANO_DIR), inpaint=True, depth=False)
    pos, neg = encode_prompts(m, "a scene")
    g = torch.Generator().manual_seed(0)
    geo = geometry_from_depth(torch.rand(H, W, 3, generator=g), 1 + torch.rand(H, W, generator=g), 60.0)
    settings = SamplerSettings(steps=2, cfg=6.0)
    measured = {}
    with torch.no_grad():
        with LiveBytes() as lb:
            lb.track(m.strag, m.motion_vae, geo.image, geo.depth, geo.points, pos.embeddings, neg.embeddings)
            motion = generate_motion(m.strag, m.motion_vae, WanImageVAE.from_motion_vae(m.motion_vae), geo, pos, neg,
                                     settings=settings, options=TrajectoryOptions(frames=T, mpm=False))
        measured["trajectories (4D-STraG)"] = lb.peak
        traj = denormalize(motion)
        cam = camera_path_for_scene("orbit_left", traj)
        with LiveBytes() as lb:
            lb.track(traj.points, traj.colors)
            rend = render_trajectories(traj, cam, backend="torch")
        measured["render (points z-buffer)"] = lb.peak
        with LiveBytes() as lb:
            lb.track(m.vism, m.image_vae.vae, rend.rgb, rend.holes, pos.embeddings, neg.embeddings)
            inpaint(m.vism, m.image_vae, rend.rgb, rend.holes, pos, neg, settings=settings)
        measured["inpaint (4D-ViSM)"] = lb.peak

    plan = P.make_plan(P.nano_sizes(frames=T, width=W, height=H, steps=2, cfg=6.0))
    est = {e.name: e for e in plan.stages("model_offload")}
    assert set(est) == set(measured)
    for name, peak in measured.items():
        assert est[name].peak_bytes == pytest.approx(peak, rel=0.15), (name, est[name].peak_bytes, peak)
    # the weights part alone is exact: what the measured run tracked for the models
    assert est["inpaint (4D-ViSM)"].weights_bytes == sum(
        p.numel() * p.element_size() for mod in (m.vism, m.image_vae.vae)
        for p in list(mod.parameters()) + list(mod.buffers()))


def test_dit_activation_peak_does_not_grow_past_two_blocks():
    """The planner runs DiTs with 1 and 2 blocks; a 3-block run must not peak higher (the extrapolation's premise)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    s = P.nano_sizes(frames=5, width=32, height=32)
    fm = FakeTensorMode(allow_non_fake_inputs=True)
    peaks, flops = {}, {}
    for depth in (1, 2, 3):
        meta = P._on_meta(P._dit_builder({**s.strag, "num_layers": depth}, "STraGDiT"), s.dit_dtype)
        mvae = P._on_meta(P._motion_vae_builder(s.motion_vae), s.vae_dtype)
        phases, flops[depth], _ = P._strag_stage(s, fm, lambda meta=meta: meta, mvae)
        peaks[depth] = phases["DiT step"]
    assert peaks[3] <= peaks[2]
    assert flops[3] - flops[2] == pytest.approx(flops[2] - flops[1], rel=1e-9)
    # the planner's cheap 1-block step (conditions made without the VAE) counts what the full stage run counts
    meta1 = P._on_meta(P._dit_builder({**s.strag, "num_layers": 1}, "STraGDiT"), s.dit_dtype)
    assert P._step_flops(s, fm, meta1) == pytest.approx(flops[1], rel=1e-9)
