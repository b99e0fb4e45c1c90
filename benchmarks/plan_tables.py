"""Print ``plan``'s tables for 24, 48 and 80 GiB at the release settings (49 frames, 368x512, 50 steps, CFG 6).

    python benchmarks/plan_tables.py [--gpu-memory 24 48 80] [--markdown]

One dry run (fake tensors, about 20 s on a 2-core CPU), then per budget: the chosen memory mode and its per-stage
table. ``--markdown`` prints tables ready for ``benchmarks/RESULTS.md``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moge4d_core.errors import MoGe4DInputError  # noqa: E402
from moge4d_core.pipeline.plan import (GPU_BF16_PEAK_TFLOPS, GiB, choose_memory_mode, format_plan,  # noqa: E402
                                       make_plan, release_sizes)


def markdown(plan, budget: float) -> str:
    try:
        mode = choose_memory_mode(plan, budget).name
    except MoGe4DInputError as exc:
        return f"**{budget:g} GiB**: {exc}\n"
    rows = [f"**{budget:g} GiB → `{mode}`** (estimated peak {plan.peak_bytes(mode) / GiB:.2f} GiB)", "",
            "| stage | weights GiB | activations GiB | fp8 transient GiB | peak GiB | TFLOP/step | "
            + " | ".join(f"{g} s/step" for g in GPU_BF16_PEAK_TFLOPS) + " |",
            "|---|---:|---:|---:|---:|---:|" + "---:|" * len(GPU_BF16_PEAK_TFLOPS)]
    for e in plan.stages(mode):
        fl = "–" if e.flops_per_step is None else f"{e.flops_per_step / 1e12:.0f}"
        times = " | ".join("–" if e.flops_per_step is None else f"{e.flops_per_step / (p * 1e12):.2f}"
                           for p in GPU_BF16_PEAK_TFLOPS.values())
        rows.append(f"| {e.name} | {e.weights_bytes / GiB:.2f} | {e.activation_bytes / GiB:.2f} | "
                    f"{e.transient_bytes / GiB:.2f} | {e.peak_bytes / GiB:.2f} | {fl} | {times} |")
    return "\n".join(rows) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gpu-memory", type=float, nargs="+", default=[24.0, 48.0, 80.0], metavar="GiB")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    plan = make_plan(release_sizes())
    for budget in args.gpu_memory:
        if args.markdown:
            print(markdown(plan, budget))
            continue
        try:
            mode = choose_memory_mode(plan, budget).name
            choice, note = (mode, plan.peak_bytes(mode) / GiB), f" = the cheapest mode that fits {budget:g} GiB"
        except MoGe4DInputError as exc:
            mode, choice, note = None, None, f" ({exc})"
        print(f"===== --gpu-memory {budget:g}")
        print(format_plan(plan, [mode] if mode else ["model_offload"], choice, note))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
