"""Benchmark: per-stage wall time and peak memory of the whole MoGe4D pipeline (prints only).

CPU (always): the TINY models of :mod:`moge4d_core.models.nano` (random weights) on a 16x16, 5-frame case with
2 sampling steps per stage, or the NANO sizes at 96x64, 17 frames (``--size nano``).

GPU (``--full``, needs CUDA and ~70 GB): the 14B STraG and ViSM DiTs from the shipped configs with random bf16
weights, the full-size Wan VAE / motion VAE, 49 frames at 368x512, 50 steps, CFG 6 (batched), one camera; the
issue's goal is both diffusion stages <= 120 s on one H100. Text/CLIP contexts are random tensors of the real
widths (the encoders are timed in benchmarks/encoders.py); depth comes from a constant-depth geometry.

    python benchmarks/pipeline.py [--size tiny|nano] [--full] [--steps N]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moge4d_core.geometry.sources import geometry_from_depth  # noqa: E402
from moge4d_core.models import nano  # noqa: E402
from moge4d_core.models.conditioning import TextContext  # noqa: E402
from moge4d_core.pipeline.image_vae import WanImageVAE  # noqa: E402
from moge4d_core.pipeline.run import run_pipeline  # noqa: E402
from moge4d_core.pipeline.settings import SamplerSettings  # noqa: E402
from moge4d_core.pipeline.trajectory import TrajectoryOptions  # noqa: E402


def small(size: str, steps: int) -> None:
    s = nano.TINY if size == "tiny" else nano.NANO
    h, w, frames = (16, 16, 5) if size == "tiny" else (64, 96, 17)
    steps = steps or 2
    strag, vism = nano.build_strag(s, 0).eval(), nano.build_vism(s, 1).eval()
    mvae, vae = nano.build_motion_vae(s, 2).eval(), nano.build_wan_vae(s, 3).eval()
    g = torch.Generator().manual_seed(0)
    geom = geometry_from_depth(torch.rand(h, w, 3, generator=g), torch.full((h, w, 3), 3.0), 60.0)
    text = TextContext.from_embeddings(torch.randn(1, 8, s.text_dim, generator=g))
    settings = SamplerSettings(steps=steps, cfg=6.0, seed=0)
    res = run_pipeline(image=geom.image, geometry=geom, strag=strag, motion_vae=mvae, image_vae=WanImageVAE(vae),
                       vism=vism, positive=text, cameras=["orbit_left"], trajectory_settings=settings,
                       inpaint_settings=settings.replace(seed=1), options=TrajectoryOptions(frames=frames))
    print(f"{size} models, {w}x{h}, {frames} frames, {steps} steps per stage, CFG 6, {torch.get_num_threads()} threads")
    print(res.times.summary())


def full(steps: int) -> None:
    from diffusers import AutoencoderKLWan

    from moge4d_core.models.motion_vae import MotionVAE
    from moge4d_core.models.wan_dit import STraGDiT, ViSMDiT, shipped_config

    dev = torch.device("cuda")

    def build(cls, name):
        with torch.device("meta"):
            m = cls(**shipped_config(name))
        m = m.to_empty(device=dev).to(torch.bfloat16)
        with torch.no_grad():
            for p in m.parameters():
                p.normal_(0, 0.02)
        m.reset_rope(dev)
        return m.eval()

    strag = build(STraGDiT, "wan2.1_14b_moge4d_strag")
    mvae = MotionVAE().to(dev).eval()
    vae = AutoencoderKLWan().to(dev).eval()
    vism = None
    h, w = 368, 512
    geom = geometry_from_depth(torch.rand(h, w, 3), torch.full((h, w, 3), 3.0), 60.0)
    text = TextContext.from_embeddings(torch.randn(1, 20, 4096))
    settings = SamplerSettings(steps=steps or 50, cfg=6.0, seed=0)
    res = run_pipeline(image=geom.image, geometry=geom, strag=strag, motion_vae=mvae, image_vae=WanImageVAE(vae),
                       positive=text, cameras=["orbit_left"], trajectory_settings=settings,
                       options=TrajectoryOptions(frames=49, mpm=False))
    del strag
    torch.cuda.empty_cache()
    vism = build(ViSMDiT, "wan2.1_14b_fun_inp")
    torch.cuda.reset_peak_memory_stats()
    from moge4d_core.pipeline.inpaint import inpaint
    with res.times.stage("inpaint orbit_left (4D-ViSM)"):
        inpaint(vism, WanImageVAE(vae), res.views[0].render.rgb, res.views[0].render.holes, text,
                settings=settings.replace(seed=1))
    print(f"full-size random weights, {torch.cuda.get_device_name()}, 49x368x512, {settings.steps} steps, CFG 6 batched")
    print(res.times.summary())


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=["tiny", "nano"], default="tiny")
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--steps", type=int, default=0)
    a = ap.parse_args()
    if a.full:
        if not torch.cuda.is_available():
            sys.exit("--full needs a CUDA GPU (~70 GB for the 14B DiTs in bf16)")
        full(a.steps)
    else:
        small(a.size, a.steps)
