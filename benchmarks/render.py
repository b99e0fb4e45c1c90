"""Render time of MoGe4D's working size: 49 frames x 188,416 points (one per pixel of 368x512) at 368x512.

    python benchmarks/render.py                        # CPU: points (torch), gaussians (torch); CUDA when present
    python benchmarks/render.py --modes points         # only the z-buffer
    python benchmarks/render.py --threads 1 2          # CPU runs at these torch thread counts
    python benchmarks/render.py --gaussian-frames 8    # CPU Gaussians on fewer frames (scaled to 49 in the print)

Scene: a 368x512 grid back-projected from a smooth depth map (1.5-4 units) with pixel intrinsics
fx = fy = 512, every point drifting a little over time, rendered along a camera that slides sideways
and forward (a few percent of the depth, like the official short camera moves), so a realistic share of
pixels are holes.

CPU: one untimed warm-up frame, then the median of ``--reps`` full runs. CUDA: two warm-up runs (Triton
compilation, gsplat build), then the median of ``--reps`` synchronised runs; every available backend.
Prints numbers only; nothing is asserted.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from timing import timed  # noqa: E402

from moge4d_core.ops import zbuffer as zb  # noqa: E402
from moge4d_core.render import render_points  # noqa: E402
from moge4d_core.render import gaussians as gauss  # noqa: E402
from moge4d_core.types import CameraPath  # noqa: E402

T, H, W = 49, 368, 512


def make_scene(device: torch.device):
    """points (T,N,3), colors (N,3), CameraPath with T cameras."""
    g = torch.Generator().manual_seed(0)
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    depth = 2.5 + 0.8 * torch.sin(xs / 47.0) * torch.cos(ys / 31.0) + 0.05 * torch.rand(H, W, generator=g)
    f = 512.0
    p0 = torch.stack([(xs - W / 2) / f * depth, (ys - H / 2) / f * depth, depth], -1).view(-1, 3)
    t = torch.linspace(0, 1, T)[:, None, None]
    wobble = torch.randn(1, p0.shape[0], 3, generator=g) * 0.002
    points = p0[None] + t * (torch.tensor([0.05, -0.03, 0.02]) + wobble)
    colors = torch.rand(p0.shape[0], 3, generator=g)
    c2w = torch.eye(4).repeat(T, 1, 1)
    for i in range(T):
        a = 0.1 * i / (T - 1)  # 0.1 rad yaw over the clip
        c2w[i, :3, :3] = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
        c2w[i, :3, 3] = torch.tensor([0.15, 0.0, 0.1]) * i / (T - 1)
    K = torch.tensor([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1.0]]).repeat(T, 1, 1)
    cam = CameraPath(c2w=c2w, K=K, width=W, height=H, name="bench")
    return points.to(device), colors.to(device), cam


def line(label, seconds, frames, res):
    holes = float(res.holes.float().mean()) * 100
    scaled = seconds * T / frames
    extra = f" ({frames} frames timed, scaled to {T})" if frames != T else ""
    print(f"  {label:<42s} {scaled:8.3f} s / {T} frames  = {1000 * scaled / T:7.1f} ms/frame   "
          f"holes {holes:5.1f}%  [{res.extras['backend']}]{extra}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", nargs="+", default=["points", "gaussians"], choices=["points", "gaussians"])
    ap.add_argument("--threads", nargs="+", type=int, default=None,
                    help="CPU torch thread counts to time (default: the current setting)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--gaussian-frames", type=int, default=T, help="frames for the CPU Gaussian run (slow)")
    ap.add_argument("--point-size", type=int, default=1)
    ap.add_argument("--cuda-only", action="store_true")
    ap.add_argument("--cpu-only", action="store_true")
    args = ap.parse_args()

    devices = []
    if not args.cuda_only:
        devices.append(torch.device("cpu"))
    if torch.cuda.is_available() and not args.cpu_only:
        devices.append(torch.device("cuda"))
    print(f"render benchmark: {T} frames x {H * W:,} points at {W}x{H}, torch {torch.__version__}")
    for dev in devices:
        points, colors, cam = make_scene(dev)
        name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
        print(f"{dev.type}: {name}")
        thread_counts = (args.threads or [torch.get_num_threads()]) if dev.type == "cpu" else [None]
        for threads in thread_counts:
            if threads is not None:
                torch.set_num_threads(threads)
            tag = f", {threads} thr" if threads is not None else ""
            if "points" in args.modes:
                backends = ["torch"]
                if dev.type == "cuda" and zb.triton_usable_on(dev):
                    backends.append("triton")
                for be in backends:
                    def run(be=be):
                        return render_points(points, colors, cam, mode="points", point_size=args.point_size,
                                             backend=be)
                    warm = 2 if dev.type == "cuda" else 0
                    if dev.type == "cpu":  # one frame to touch the code paths
                        render_points(points[:1], colors, CameraPath(cam.c2w[:1], cam.K[:1], W, H), backend=be)
                    sec, res = timed(run, dev, warm, args.reps)
                    line(f"points k={args.point_size} [{be}{tag}]", sec, T, res)
            if "gaussians" in args.modes:
                backends = ["torch"]
                if dev.type == "cuda":
                    try:
                        if gauss.gsplat_module_for(dev, "auto") is not None:
                            backends.append("gsplat")
                    except Exception:
                        pass
                for be in backends:
                    frames = T if dev.type == "cuda" else max(1, min(T, args.gaussian_frames))
                    sub = CameraPath(cam.c2w[:frames], cam.K[:frames], W, H)

                    def run(be=be, frames=frames, sub=sub):
                        return render_points(points[:frames], colors, sub, mode="gaussians", backend=be)
                    warm = 2 if dev.type == "cuda" else 0
                    reps = args.reps if dev.type == "cuda" else 1
                    sec, res = timed(run, dev, warm, reps)
                    line(f"gaussians s=1e-4 [{be}{tag}]", sec, frames, res)
                    if dev.type == "cuda":
                        print(f"    peak GPU memory {torch.cuda.max_memory_allocated(dev) / 2**20:.0f} MiB", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
