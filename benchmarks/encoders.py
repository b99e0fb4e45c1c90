"""Forward time of the depth and motion encoders with random weights at full model size.

    python benchmarks/encoders.py                 # CPU (and CUDA when available)
    python benchmarks/encoders.py --cuda-only     # skip the CPU runs

CPU: one forward each at a modest size (UniDepthV2-L at resolution_level 0, i.e. 200k-240k network pixels, on a
480x640 image; OmniMAE-B on one 368x512 image); the first forward includes one-time allocation, so read it as an
upper bound. CUDA: after two warm-up calls, the median of 5 timed calls, for UniDepthV2-L and V2old-L at their
default resolution on 368x512 (MoGe4D's working size) and 1080x1920, in float32 and bfloat16, and OmniMAE-B.
Prints numbers only; nothing is asserted.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import timed  # noqa: E402

from moge4d_core.models.omnimae import OmniMAEEncoder, extract_motion_features  # noqa: E402
from moge4d_core.models.unidepth import UniDepthConfig, build_unidepth  # noqa: E402


def random_model(factory, device, dtype):
    """Build on the meta device, materialise on ``device`` and fill with small random values (fast init)."""
    with torch.device("meta"):
        model = factory()
    model = model.to_empty(device=device)
    with torch.no_grad():
        for name, p in list(model.named_parameters()) + list(model.named_buffers()):
            if name.endswith("pos_embed") and p.ndim == 3 and p.shape[1] == 1568:
                from moge4d_core.models.omnimae import sinusoid_table
                p.copy_(sinusoid_table(1568, p.shape[-1]))
            elif p.ndim == 1 and ("norm" in name or "layernorm" in name) and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    return model.to(dtype).eval().requires_grad_(False)


def run(device: torch.device, dtypes, cases, warmup, reps):
    for version in ("v2", "v2old"):
        if version == "v2old" and device.type == "cpu":
            continue
        for dtype in dtypes:
            cfg = UniDepthConfig.preset(version, "vitl14")
            model = random_model(lambda: build_unidepth(cfg), device, dtype)
            params = sum(p.numel() for p in model.parameters())
            for (h, w), level in cases:
                img = torch.rand(1, 3, h, w, device=device)
                sec, _ = timed(lambda: model.infer(img, resolution_level=level), device, warmup, reps)
                print(f"{device.type:4s} UniDepth{version}-L ({params / 1e6:.1f}M) {str(dtype)[6:]:8s} {h}x{w} "
                      f"level={level}: {sec * 1000:9.1f} ms")
            del model
    for dtype in dtypes:
        model = random_model(lambda: OmniMAEEncoder(768, 12, 12), device, dtype)
        img = torch.rand(368, 512, 3, device=device)
        sec, _ = timed(lambda: extract_motion_features(model, img), device, warmup, reps)
        print(f"{device.type:4s} OmniMAE-B (86M) {str(dtype)[6:]:8s} 368x512 -> 224x224: {sec * 1000:9.1f} ms")
        del model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cuda-only", action="store_true")
    ap.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}")
    if not args.cuda_only:
        torch.set_num_threads(args.threads)
        print(f"CPU, {args.threads} threads, one forward each (includes first-call overhead)")
        run(torch.device("cpu"), [torch.float32], [((480, 640), 0)], warmup=0, reps=1)
    if torch.cuda.is_available():
        print(f"CUDA: {torch.cuda.get_device_name(0)}, median of 5 after 2 warm-ups")
        run(torch.device("cuda"), [torch.float32, torch.bfloat16], [((368, 512), None), ((1080, 1920), None)],
            warmup=2, reps=5)
    else:
        print("CUDA not available: GPU timings skipped")


if __name__ == "__main__":
    main()
