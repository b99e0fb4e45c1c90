"""One video on two CPU processes (gloo): CFG-parallel and context-parallel (Ulysses) sampling of the tiny
STraG and ViSM give the single-process result."""
import os
import socket
from dataclasses import replace

import pytest
import torch
import torch.multiprocessing as mp

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.models.nano import TINY, build_strag, build_vism, randomize_
from moge4d_core.sampling import dit_velocity, make_noise, sample_flow
from moge4d_core.sampling.schedules import flow_sigmas
from moge4d_core.types import DiTConditioning

SHAPE = (1, 16, 3, 4, 4)        # 3 latent frames of 2x2 tokens: 12 video tokens (+4 reference tokens for STraG)
STEPS, CFG, SEED = 3, 5.0, 7
KINDS = ("strag", "vism")


def _model_and_conds(kind: str):
    g = torch.Generator().manual_seed(11)
    r = lambda *s: torch.randn(*s, generator=g)
    text, neg = r(1, 6, TINY.text_dim), r(1, 6, TINY.text_dim)
    if kind == "strag":
        model = randomize_(build_strag(TINY, seed=3), 3, scale=0.2).eval()   # big enough for text to matter
        cond = DiTConditioning(encoder_hidden_states=text, encoder_hidden_states_image=r(1, 257, TINY.image_dim),
                               control=r(*SHAPE), depth=r(*SHAPE), ref_latent=r(1, 16, 4, 4),
                               motion_features=r(1, 196, TINY.mpm_dim))
    else:
        model = randomize_(build_vism(TINY, seed=4), 4, scale=0.2).eval()
        cond = DiTConditioning(encoder_hidden_states=text, mask=(r(1, 4, *SHAPE[2:]) > 0).float(),
                               masked_video=r(*SHAPE))
    return model, cond, cond.with_text(neg)


def _sample(kind: str, parallel=None, batched: bool = True) -> torch.Tensor:
    model, cond, uncond = _model_and_conds(kind)
    fn = dit_velocity(model, cond, uncond, CFG, batched=batched, parallel=parallel)
    with torch.no_grad():
        return sample_flow(fn, make_noise(SHAPE, SEED), flow_sigmas(STEPS, 5.0))


def _worker(rank: int, port: int, mode: str, out_dir: str) -> None:
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        for kind in KINDS:
            torch.save(_sample(kind, parallel=mode), os.path.join(out_dir, f"{kind}-rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_processes(mode: str, tmp_path) -> dict:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_worker, args=(_free_port(), mode, str(tmp_path)), nprocs=2, join=True)
    return {k: [torch.load(tmp_path / f"{k}-rank{r}.pt", weights_only=True) for r in (0, 1)] for k in KINDS}


@pytest.mark.parametrize("mode", ["cfg", "ulysses"])
def test_two_processes_match_one_process(mode, tmp_path):
    """CFG-parallel (rank 0 cond, rank 1 uncond) and context parallel (each rank half of the tokens: reference
    tokens + video for STraG, with the MPM on) give the single-process latent after 3 Euler steps."""
    out = _two_processes(mode, tmp_path)
    for kind in KINDS:
        single = _sample(kind)
        r0, r1 = out[kind]
        assert torch.equal(r0, r1), kind                        # both ranks hold the same latent
        assert (r0 - single).abs().max().item() < 1e-5, kind
        # the comparison can tell: guidance 1 (cond only) and, for STraG, the MPM off move the result by far more
        model, cond, _ = _model_and_conds(kind)
        with torch.no_grad():
            no_cfg = sample_flow(dit_velocity(model, cond), make_noise(SHAPE, SEED), flow_sigmas(STEPS, 5.0))
        assert (r0 - no_cfg).abs().max().item() > 1e-2, kind
        if kind == "strag":
            _, c, u = _model_and_conds(kind)
            with torch.no_grad():
                no_mpm = sample_flow(dit_velocity(model, replace(c, motion_features=None),
                                                  replace(u, motion_features=None), CFG),
                                     make_noise(SHAPE, SEED), flow_sigmas(STEPS, 5.0))
            assert (r0 - no_mpm).abs().max().item() > 1e-2


def test_cfg_parallel_without_process_group_is_refused():
    model, cond, uncond = _model_and_conds("vism")
    with pytest.raises(MoGe4DInputError, match="torchrun --nproc-per-node 2"):
        dit_velocity(model, cond, uncond, CFG, parallel="cfg")
    with pytest.raises(MoGe4DInputError, match="parallel"):
        dit_velocity(model, cond, uncond, CFG, parallel="pipeline")


def test_ring_with_native_attention_is_refused(tmp_path):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(_ring_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    assert "ulysses" in (tmp_path / "ring-0.txt").read_text()


def _ring_worker(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        model, cond, uncond = _model_and_conds("vism")
        with pytest.raises(MoGe4DInputError, match="log-sum-exp") as e:
            dit_velocity(model, cond, uncond, CFG, parallel="ring")
        assert getattr(model, "_parallel_config", None) is None          # refused before anything was changed
        with open(os.path.join(out_dir, f"ring-{rank}.txt"), "w") as f:
            f.write(str(e.value))
    finally:
        dist.destroy_process_group()
