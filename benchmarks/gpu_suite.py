"""One prepared GPU run: what the release-size pipeline costs on the lent GPU, next to ``plan``'s estimates.

    bash benchmarks/gpu_suite.sh                 # on a GPU: measures, prints, appends to benchmarks/RESULTS.md
    bash benchmarks/gpu_suite.sh --dry-run       # the same code paths at tiny size on the CPU (prints only)

Sections (each checks free device memory first and is skipped, with a line saying so, when it cannot fit or when the
time budget is spent; a failure in one is reported and the others still run):

* ``dit``: one CFG-batched forward (batch 2) of the full-size 4D-STraG and 4D-ViSM DiTs with random bf16 weights,
  against stock diffusers ``WanTransformer3DModel`` of the same size; ms per step, peak memory, and the share of the
  GPU's dense bf16 peak the step reaches (MFU) from ``plan``'s FLOP count.
* ``modes``: the trajectory stage (conditions, 1 sampling step, motion-VAE decode) under the memory modes
  ``model_offload``, ``block_swap:10``, ``fp8``, ``fp8+block_swap:10`` through :class:`~moge4d_core.pipeline.residency.Residency`,
  its measured peak (``torch.cuda.max_memory_allocated``) next to ``plan``'s estimate for that stage and mode.
* ``pipeline``: the whole two-stage pipeline (random weights, 4 steps per stage, one camera) in ``model_offload``.
* ``render``: 49 frames x 188,416 points at 368x512, points z-buffer (Triton and PyTorch).
* ``speed``: the trajectory stage with step caches (off, first_block:0.15, taylorseer:3), one STraG step per
  available attention backend, and with regional compile.

Dry run: tiny models (``moge4d_core.models.nano.TINY``), 5 frames at 16x16, the CPU, memory counted with
:class:`~moge4d_core.pipeline.memory_accounting.LiveBytes`; ``block_swap:1`` stands for ``block_swap:10``.
Figures are printed; on a GPU they are also appended to ``--results`` (default ``benchmarks/RESULTS.md``).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from moge4d_core.models import nano  # noqa: E402
from moge4d_core.models.wan_dit import STraGDiT, ViSMDiT, dit_config, shipped_config  # noqa: E402
from moge4d_core.pipeline import plan as planner  # noqa: E402
from moge4d_core.pipeline.memory_accounting import LiveBytes  # noqa: E402

GiB = float(2 ** 30)


def gib(x: float) -> str:
    """Size in GiB, in MiB when below 1 GiB (the dry run's models are a few MiB)."""
    return f"{x:.2f} GiB" if x >= 1 else f"{x * 1024:.2f} MiB"


def tflop(x: float) -> str:
    return f"{x / 1e12:.1f} TFLOP" if x >= 1e11 else f"{x / 1e9:.3f} GFLOP"


@dataclass
class Size:
    """What one run of the suite builds: release (GPU) or tiny (dry run)."""

    dry: bool
    device: torch.device
    dtype: torch.dtype
    strag: dict
    vism: dict
    motion_vae: Callable[[], torch.nn.Module]
    image_vae: Callable[[], torch.nn.Module]
    frames: int
    height: int
    width: int
    swap_blocks: int
    sizes: planner.PipelineSizes = field(repr=False, default=None)

    @property
    def latent(self) -> tuple[int, int, int]:
        return (self.frames - 1) // 4 + 1, self.height // 8, self.width // 8


def release_size() -> Size:
    from diffusers import AutoencoderKLWan

    from moge4d_core.models.motion_vae import MotionVAE

    s = planner.release_sizes()
    return Size(False, torch.device("cuda"), torch.bfloat16, shipped_config("wan2.1_14b_moge4d_strag"),
                shipped_config("wan2.1_14b_fun_inp"), MotionVAE, AutoencoderKLWan, 49, 368, 512, 10, s)


def tiny_size() -> Size:
    s = planner.PipelineSizes(strag=nano.strag_config(nano.TINY), motion_vae=nano.motion_vae_config(nano.TINY),
                              image_vae=nano.wan_vae_kwargs(nano.TINY), vism=nano.vism_config(nano.TINY), frames=5,
                              width=16, height=16, steps=4, cfg=6.0, dit_dtype=torch.float32,
                              encoder_dtype=torch.float32)
    return Size(True, torch.device("cpu"), torch.float32, dict(s.strag), dict(s.vism),
                lambda: nano.build_motion_vae(nano.TINY), lambda: nano.build_wan_vae(nano.TINY), 5, 16, 16, 1, s)


# ---------------------------------------------------------------------------------------------- helpers
class Report:
    """Rows printed as they come and kept for RESULTS.md."""

    def __init__(self, budget_s: float) -> None:
        self.rows: list[tuple[str, str, str, str]] = []
        self.t0 = time.perf_counter()
        self.budget_s = budget_s

    def add(self, section: str, item: str, measured: str, note: str = "") -> None:
        self.rows.append((section, item, measured, note))
        print(f"  [{section}] {item}: {measured}" + (f"  ({note})" if note else ""), flush=True)

    def time_left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)

    def markdown(self, header: str) -> str:
        lines = [header, "", "| section | item | measured | note |", "|---|---|---|---|"]
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in self.rows]
        return "\n".join(lines) + "\n"


def free_gib(size: Size) -> float:
    if size.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return free / GiB
    return float("inf")


@contextlib.contextmanager
def peak_memory(size: Size, track=()):
    """Yields a dict whose ``"gib"`` is the peak device memory of the block (CUDA allocator or LiveBytes)."""
    out = {}
    if size.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        yield out
        torch.cuda.synchronize()
        out["gib"] = torch.cuda.max_memory_allocated() / GiB
        out["above_start_gib"] = (torch.cuda.max_memory_allocated() - base) / GiB
    else:
        with LiveBytes() as lb:
            lb.track(*track)
            yield out
        out["gib"] = lb.peak / GiB


def sync(size: Size) -> None:
    if size.device.type == "cuda":
        torch.cuda.synchronize()


def timed_ms(fn, size: Size, reps: int = 3) -> float:
    fn()
    sync(size)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(size)
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def random_model(factory: Callable[[], torch.nn.Module], device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Built on the meta device, materialised on ``device`` in ``dtype``, small random weights (gates zero)."""
    with torch.device("meta"):
        model = factory()
    model = model.to(dtype=dtype).to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".gate"):
                p.zero_()
            elif "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.normal_(0, 0.02, generator=g)
    if hasattr(model, "reset_rope"):
        model.reset_rope(device)
    return model.eval()


def release() -> None:
    """Return freed device memory (call after deleting the section's models)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def mfu(flops: float, ms: float) -> str:
    if not torch.cuda.is_available():
        return "-"
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in planner.GPU_BF16_PEAK_TFLOPS.items() if k.split()[0] in name), None)
    if peak is None and "H200" in name:
        peak = planner.GPU_BF16_PEAK_TFLOPS["H100 SXM"]            # same tensor cores as the H100 SXM
    return "-" if peak is None else f"{100 * flops / (ms / 1e3) / (peak * 1e12):.0f} %"


def dit_inputs(size: Size, cfg: dict, batch: int) -> dict:
    f, h, w = size.latent
    g = torch.Generator(device=size.device).manual_seed(1)

    def r(*s):
        return torch.randn(*s, device=size.device, dtype=size.dtype, generator=g)
    kw = dict(hidden_states=r(batch, 16, f, h, w), timestep=torch.full((batch,), 500.0, device=size.device),
              encoder_hidden_states=r(batch, 512, int(cfg["text_dim"])))
    if cfg.get("image_dim"):
        kw["encoder_hidden_states_image"] = r(batch, 257, int(cfg["image_dim"]))
    if cfg["arch"] == "wan2.1_fun_inp":
        kw.update(mask=r(batch, 4, f, h, w), masked_video=r(batch, 16, f, h, w))
    else:
        kw.update(control=r(batch, 16, f, h, w), depth=r(batch, 16, f, h, w), ref_latent=r(batch, 16, h, w))
        if cfg.get("mpm_feature_dim"):
            kw["motion_features"] = r(batch, 196, int(cfg["mpm_feature_dim"]))
    return kw


def stock_inputs(kw: dict, cfg: dict) -> dict:
    """The same step for stock diffusers (its forward's keywords): channels concatenated, no reference tokens,
    no MPM."""
    lat = kw["hidden_states"]
    if cfg["arch"] == "wan2.1_fun_inp":
        x = torch.cat([lat, kw["mask"], kw["masked_video"]], 1)
    else:
        x = torch.cat([lat, kw["control"], torch.zeros_like(lat), kw["depth"]], 1)
    return dict(hidden_states=x, timestep=kw["timestep"], encoder_hidden_states=kw["encoder_hidden_states"],
                encoder_hidden_states_image=kw.get("encoder_hidden_states_image"), return_dict=False)


# ---------------------------------------------------------------------------------------------- sections
def section_dit(size: Size, rep: Report, plan) -> None:
    from diffusers import WanTransformer3DModel

    stages = {s.name: s for s in plan.stages("model_offload")}
    for label, cls, cfg, stage in (("4D-STraG", STraGDiT, size.strag, "trajectories (4D-STraG)"),
                                   ("4D-ViSM", ViSMDiT, size.vism, "inpaint (4D-ViSM)")):
        need = 1.2 * stages[stage].peak_bytes / GiB
        flops = {stage: stages[stage].flops_per_step}
        if free_gib(size) < need:
            rep.add("dit", label, "skipped", f"{free_gib(size):.1f} GiB free < {need:.0f} GiB needed")
            continue
        model = random_model(lambda: cls(**cfg), size.device, size.dtype)
        kw = dit_inputs(size, cfg, batch=2)
        with torch.inference_mode(), peak_memory(size, [model.parameters(), kw.values()]) as pk:
            ms = timed_ms(lambda: model(**kw), size)
        rep.add("dit", f"{label} (ours) CFG-batched step", f"{ms:.0f} ms, peak {gib(pk['gib'])}",
                f"MFU {mfu(flops[stage], ms)} of {tflop(flops[stage])}")
        del model
        release()
        stock = random_model(lambda: WanTransformer3DModel(**_stock_kwargs(cfg)), size.device, size.dtype)
        stock_kw = stock_inputs(kw, cfg)
        with torch.inference_mode(), peak_memory(size, [stock.parameters(), kw.values()]) as pk:
            ms_stock = timed_ms(lambda: stock(**stock_kw), size)
        rep.add("dit", f"{label} stock diffusers WanTransformer3DModel", f"{ms_stock:.0f} ms, peak {gib(pk['gib'])}",
                f"ours / stock {ms / ms_stock:.2f}x (stock: no reference tokens, no MPM)")
        del stock, kw, stock_kw
        release()


def _stock_kwargs(cfg: dict) -> dict:
    """diffusers ``WanTransformer3DModel`` arguments of the same size (our extra fields dropped)."""
    import inspect

    from diffusers import WanTransformer3DModel

    names = set(inspect.signature(WanTransformer3DModel.__init__).parameters) - {"self"}
    return {k: v for k, v in dict(cfg).items() if k in names}


def _stage_models(size: Size, fp8: bool):
    strag = random_model(lambda: STraGDiT(**size.strag), size.device, size.dtype)
    if fp8:
        from moge4d_core.models.fp8 import enable_fp8_storage
        enable_fp8_storage(strag, compute_dtype=size.dtype)
    mvae = size.motion_vae().to(size.device).eval()
    if size.device.type == "cuda":                 # into host memory: the residency brings them per stage
        strag, mvae = strag.to("cpu"), mvae.to("cpu")
        torch.cuda.empty_cache()
    return strag, mvae


def _trajectory_stage(size: Size, strag, mvae, steps: int = 1, cache: Optional[str] = None):
    from moge4d_core.geometry.sources import geometry_from_depth
    from moge4d_core.models.conditioning import TextContext
    from moge4d_core.pipeline.image_vae import WanImageVAE
    from moge4d_core.pipeline.settings import SamplerSettings
    from moge4d_core.pipeline.trajectory import TrajectoryOptions, generate_motion

    g = torch.Generator().manual_seed(0)
    geom = geometry_from_depth(torch.rand(size.height, size.width, 3, generator=g),
                               torch.full((size.height, size.width, 3), 3.0), 60.0)
    text = TextContext.from_embeddings(torch.randn(1, 8, int(size.strag["text_dim"]), generator=g))
    with torch.inference_mode():
        return generate_motion(strag, mvae, WanImageVAE.from_motion_vae(mvae), geom, text,
                               settings=SamplerSettings(steps=steps, cfg=6.0, seed=0, cache=cache),
                               options=TrajectoryOptions(frames=size.frames, mpm=False))


def section_modes(size: Size, rep: Report, plan) -> None:
    from moge4d_core.pipeline.residency import Residency

    n = size.swap_blocks
    for mode in ("model_offload", f"block_swap:{n}", "fp8", f"fp8+block_swap:{n}"):
        est = next(s for s in plan.stages(mode) if s.name.startswith("trajectories"))
        need = est.peak_bytes / GiB * 1.3
        if free_gib(size) < need:
            rep.add("modes", mode, "skipped", f"{free_gib(size):.1f} GiB free < {need:.1f} GiB needed")
            continue
        if rep.time_left() < 60:
            rep.add("modes", mode, "skipped", "time budget spent")
            continue
        strag, mvae = _stage_models(size, fp8=mode.startswith("fp8"))
        res = Residency(size.device, mode)
        res.prepare(strag, name="strag")
        with peak_memory(size, [strag.parameters(), mvae.parameters()]) as pk:
            with res.stage("trajectories", strag=strag, motion_vae=mvae):
                _trajectory_stage(size, strag, mvae)
        measured = pk["gib"]
        rep.add("modes", f"trajectory stage, {mode}", f"peak {gib(measured)}",
                f"plan {gib(est.peak_bytes / GiB)}, measured / plan {measured / (est.peak_bytes / GiB):.2f}")
        del strag, mvae, res
        release()


def section_pipeline(size: Size, rep: Report, plan) -> None:
    from moge4d_core.geometry.sources import geometry_from_depth
    from moge4d_core.models.conditioning import TextContext
    from moge4d_core.pipeline.image_vae import WanImageVAE
    from moge4d_core.pipeline.residency import Residency
    from moge4d_core.pipeline.run import run_pipeline
    from moge4d_core.pipeline.settings import SamplerSettings
    from moge4d_core.pipeline.trajectory import TrajectoryOptions

    est = plan.peak_bytes("model_offload") / GiB
    if free_gib(size) < est * 1.2:
        rep.add("pipeline", "two stages, model_offload", "skipped", f"{free_gib(size):.1f} GiB free < {est * 1.2:.0f}")
        return
    strag, mvae = _stage_models(size, fp8=False)
    vism = random_model(lambda: ViSMDiT(**size.vism), size.device, size.dtype)
    vae = size.image_vae().to(size.device).eval()
    if size.device.type == "cuda":
        vism, vae = vism.to("cpu"), vae.to("cpu")
        torch.cuda.empty_cache()
    res = Residency(size.device, "model_offload")
    g = torch.Generator().manual_seed(0)
    geom = geometry_from_depth(torch.rand(size.height, size.width, 3, generator=g),
                               torch.full((size.height, size.width, 3), 3.0), 60.0)
    text = TextContext.from_embeddings(torch.randn(1, 8, int(size.strag["text_dim"]), generator=g))
    settings = SamplerSettings(steps=4, cfg=6.0, seed=0)
    t0 = time.perf_counter()
    with torch.inference_mode(), peak_memory(size, [m.parameters() for m in (strag, mvae, vism, vae)]) as pk:
        out = run_pipeline(image=geom.image, geometry=geom, strag=strag, motion_vae=mvae, image_vae=WanImageVAE(vae),
                           vism=vism, positive=text, cameras=["orbit_left"], trajectory_settings=settings,
                           inpaint_settings=settings.replace(seed=1),
                           options=TrajectoryOptions(frames=size.frames, mpm=False), residency=res)
    wall = time.perf_counter() - t0
    stages = "; ".join(f"{name} {sec:.1f} s" for name, sec, _ in out.times.rows)
    rep.add("pipeline", "two stages, 4 steps each, model_offload", f"{wall:.1f} s, peak {gib(pk['gib'])}",
            f"plan peak {gib(est)}; {stages}")
    del strag, mvae, vism, vae, res, out
    release()


def section_render(size: Size, rep: Report, plan) -> None:
    from moge4d_core.ops import zbuffer as zb
    from moge4d_core.render import render_points

    import render as render_bench
    if size.dry:
        render_bench.T, render_bench.H, render_bench.W = 5, 16, 16
    points, colors, cam = render_bench.make_scene(size.device)
    backends = ["torch"] + (["triton"] if zb.triton_usable_on(size.device) else [])
    for be in backends:
        with peak_memory(size, [points, colors]) as pk:
            ms = timed_ms(lambda: render_points(points, colors, cam, mode="points", backend=be), size, reps=2)
        rep.add("render", f"{render_bench.T} frames x {points.shape[1]:,} points, points [{be}]",
                f"{ms:.0f} ms, peak {gib(pk['gib'])}")


def section_speed(size: Size, rep: Report, plan) -> None:
    """Issue 25 on the GPU: the trajectory stage (8 steps, CFG 6) with step caches, one DiT step per attention
    backend, and regional compile; STraG resident in bf16 (model_offload peak). GGUF (quantising 17 B weights takes
    minutes) and several-GPU runs (need torchrun on 2 GPUs) are not part of this one-GPU suite."""
    from moge4d_core.pipeline.speed import attention_backends, compile_blocks, set_attention_backend
    from moge4d_core.sampling.step_cache import BlockCounter

    est = next(s for s in plan.stages("model_offload") if s.name.startswith("trajectories"))
    if free_gib(size) < 1.2 * est.peak_bytes / GiB:
        rep.add("speed", "all", "skipped", f"{free_gib(size):.1f} GiB free < {1.2 * est.peak_bytes / GiB:.0f} GiB")
        return
    strag = random_model(lambda: STraGDiT(**size.strag), size.device, size.dtype)
    mvae = size.motion_vae().to(size.device).eval()
    base = None
    for cache in ("off", "first_block:0.15", "taylorseer:3"):
        if rep.time_left() < 60:
            rep.add("speed", f"cache {cache}", "skipped", "time budget spent")
            continue
        with BlockCounter(strag) as counter:
            sync(size)
            t0 = time.perf_counter()
            _trajectory_stage(size, strag, mvae, steps=8, cache=None if cache == "off" else cache)
            sync(size)
        sec = time.perf_counter() - t0
        base = base or (sec, counter.blocks)
        rep.add("speed", f"trajectory stage, 8 steps, cache {cache}", f"{sec:.1f} s",
                f"{counter.blocks} block evaluations ({100 * (1 - counter.blocks / base[1]):.0f} % saved), "
                f"{base[0] / sec:.2f}x")
    kw = dit_inputs(size, size.strag, batch=2)
    for backend in [b for b in ("native", "_native_cudnn", "flash", "sage") if b in attention_backends()]:
        if rep.time_left() < 30:
            break
        used = set_attention_backend(strag, backend, label="4D-STraG", report=lambda m: None)
        if used != backend:
            rep.add("speed", f"attention {backend}", "skipped", "package or kernel not available here")
            continue
        try:
            with torch.inference_mode():
                ms = timed_ms(lambda: strag(**kw), size, reps=2)
            rep.add("speed", f"CFG-batched STraG step, attention {backend}", f"{ms:.0f} ms")
        except Exception as exc:        # a backend that imports but cannot run on this device
            rep.add("speed", f"attention {backend}", "failed", f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
        set_attention_backend(strag, "native", report=lambda m: None)
    if rep.time_left() > 90:
        compile_blocks(strag)
        try:
            with torch.inference_mode():
                ms = timed_ms(lambda: strag(**kw), size, reps=2)
            rep.add("speed", "CFG-batched STraG step, regional compile", f"{ms:.0f} ms", "after one compiling call")
        except Exception as exc:        # a missing compiler toolchain must not stop the suite
            rep.add("speed", "regional compile", "failed", f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
    del strag, mvae, kw
    release()


SECTIONS = {"dit": section_dit, "modes": section_modes, "pipeline": section_pipeline, "render": section_render,
            "speed": section_speed}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny models on the CPU: the same code paths, in seconds")
    ap.add_argument("--results", default=None, help="append the figures to this markdown file (GPU default: "
                                                    "benchmarks/RESULTS.md; dry run: none)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of " + ",".join(SECTIONS))
    ap.add_argument("--budget-s", type=float, default=450.0, help="stop starting new sections after this many s")
    args = ap.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_suite: no CUDA device; run with --dry-run for the CPU check of the code paths")
        return 1
    from diffusers.utils import logging as diffusers_logging
    diffusers_logging.set_verbosity_error()          # random-weight models: the float32-module notes are noise here
    size = tiny_size() if args.dry_run else release_size()
    rep = Report(args.budget_s)
    device_name = "CPU (dry run)" if size.dry else torch.cuda.get_device_name()
    print(f"gpu_suite: {device_name}, torch {torch.__version__}, free {free_gib(size):.1f} GiB", flush=True)
    t0 = time.perf_counter()
    plan = planner.make_plan(size.sizes)
    rep.add("plan", "dry-run plan of these sizes", f"{time.perf_counter() - t0:.1f} s")
    failures = 0
    for name in [s.strip() for s in args.sections.split(",") if s.strip()]:
        if name not in SECTIONS:
            print(f"gpu_suite: unknown section {name!r}; choose from {', '.join(SECTIONS)}")
            return 2
        if rep.time_left() <= 0:
            rep.add(name, "all", "skipped", "time budget spent")
            continue
        try:
            SECTIONS[name](size, rep, plan)
        except Exception as exc:           # one failing section must not stop the others
            failures += 1
            rep.add(name, "error", f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
            traceback.print_exc()
            release()
    results = args.results or (None if size.dry else str(ROOT / "benchmarks" / "RESULTS.md"))
    if results:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
        header = f"### GPU suite, {stamp}, {device_name} (`bash benchmarks/gpu_suite.sh`)"
        with open(results, "a", encoding="utf-8") as fh:
            fh.write("\n" + rep.markdown(header))
        print(f"gpu_suite: appended {len(rep.rows)} rows to {results}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
