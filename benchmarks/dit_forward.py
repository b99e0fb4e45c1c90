"""Benchmark: one bf16 forward of the 14B 4D-STraG DiT vs stock diffusers WanTransformer3DModel.

Always: builds the full 14B STraG (and the 14B ViSM base) on the meta device and prints parameter counts.
With CUDA: random bf16 weights (allocated directly on the GPU from the meta model), one forward at
49 frames 368x512 (latent 13x46x64; 13*23*32 = 9,568 video tokens, +736 reference tokens for STraG),
timed after a warm-up, against a stock ``WanTransformer3DModel`` of the same size (in_channels 64,
I2V cross-attention, no reference tokens, no MPM). Prints only; no assertions.

    python benchmarks/dit_forward.py [--frames 13 --height 46 --width 64] [--repeats 3] [--no-mpm]
                                     [--attention-backend native|flash|_native_cudnn|...]
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moge4d_core.models.wan_dit import STraGDiT, ViSMDiT, dit_config, shipped_config  # noqa: E402


def meta_report() -> None:
    with torch.device("meta"):
        strag = STraGDiT(**shipped_config("wan2.1_14b_moge4d_strag"))
        vism = ViSMDiT(**shipped_config("wan2.1_14b_fun_inp"))
    total = sum(p.numel() for p in strag.parameters())
    mpm = sum(p.numel() for n, p in strag.named_parameters() if "spatial_guidance" in n or n.startswith("feature_adapter"))
    ref = sum(p.numel() for n, p in strag.named_parameters() if n.startswith("ref_conv"))
    print(f"4D-STraG 14B: {total / 1e9:.3f} B parameters ({total * 2 / 2**30:.1f} GiB bf16); "
          f"MPM {mpm / 1e6:.1f} M, ref_conv {ref / 1e6:.2f} M, without MPM {(total - mpm) / 1e9:.3f} B")
    n = sum(p.numel() for p in vism.parameters())
    print(f"4D-ViSM base (Wan2.1-Fun-InP 14B): {n / 1e9:.3f} B parameters ({n * 2 / 2**30:.1f} GiB bf16)")


def _init_random(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator(device="cuda").manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith(".gate"):
                p.zero_()
            elif p.ndim >= 2:
                p.normal_(0, 0.02, generator=g)
            elif "norm" in n and n.endswith("weight"):
                p.fill_(1.0)
            else:
                p.normal_(0, 0.02, generator=g)


def _build_on_gpu(builder, dtype=torch.bfloat16) -> torch.nn.Module:
    with torch.device("meta"):
        model = builder()
    model = model.to(dtype=dtype).to_empty(device="cuda")
    _init_random(model)
    return model.eval()


def _time(fn, repeats: int) -> list[float]:
    torch.cuda.synchronize()
    fn()  # warm-up
    torch.cuda.synchronize()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return out


def gpu_benchmark(args) -> None:
    from diffusers import WanTransformer3DModel

    dev, dt = torch.device("cuda"), torch.bfloat16
    f, h, w = args.frames, args.height, args.width
    g = torch.Generator(device=dev).manual_seed(0)
    r = lambda *s: torch.randn(*s, device=dev, dtype=dt, generator=g)  # noqa: E731
    lat = r(1, 16, f, h, w)
    t = torch.tensor([500.0], device=dev)
    text, clip = r(1, 512, 4096), r(1, 257, 1280)
    print(f"device: {torch.cuda.get_device_name()}; latent 1x16x{f}x{h}x{w}; video tokens {f * (h // 2) * (w // 2)}")

    cfg = shipped_config("wan2.1_14b_moge4d_strag")
    if args.no_mpm:
        cfg = dit_config(cfg, mpm_feature_dim=None)
    model = _build_on_gpu(lambda: STraGDiT(**cfg))
    model.reset_rope(dev)
    if args.attention_backend:
        model.set_attention_backend(args.attention_backend)
    kw = dict(control=r(1, 16, f, h, w), depth=r(1, 16, f, h, w), ref_latent=r(1, 16, h, w),
              motion_features=None if args.no_mpm else r(1, 196, 768))
    torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        times = _time(lambda: model(hidden_states=lat, timestep=t, encoder_hidden_states=text,
                                    encoder_hidden_states_image=clip, **kw), args.repeats)
    print(f"STraGDiT (ours, ref tokens{'' if args.no_mpm else ' + MPM'}): "
          f"{min(times) * 1e3:.0f} ms/forward (min of {len(times)}: {', '.join(f'{x * 1e3:.0f}' for x in times)}); "
          f"peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    del model
    gc.collect()
    torch.cuda.empty_cache()

    stock = _build_on_gpu(lambda: WanTransformer3DModel(
        num_attention_heads=40, attention_head_dim=128, in_channels=64, out_channels=16, text_dim=4096,
        freq_dim=256, ffn_dim=13824, num_layers=40, image_dim=1280, added_kv_proj_dim=5120))
    stock.rope = type(stock.rope)(128, (1, 2, 2), 1024).to(dev)
    if args.attention_backend:
        stock.set_attention_backend(args.attention_backend)
    x64 = torch.cat([lat, kw["control"], torch.zeros_like(lat), kw["depth"]], 1)
    torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        times = _time(lambda: stock(hidden_states=x64, timestep=t, encoder_hidden_states=text,
                                    encoder_hidden_states_image=clip, return_dict=False), args.repeats)
    print(f"stock diffusers WanTransformer3DModel (in 64, no ref tokens, no MPM): "
          f"{min(times) * 1e3:.0f} ms/forward (min of {len(times)}); peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=13, help="latent frames (49 video frames -> 13)")
    ap.add_argument("--height", type=int, default=46, help="latent height (368 / 8)")
    ap.add_argument("--width", type=int, default=64, help="latent width (512 / 8)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-mpm", action="store_true", help="STraG without the Motion Perception Module")
    ap.add_argument("--attention-backend", default=None, help="diffusers attention backend name")
    args = ap.parse_args()
    meta_report()
    if torch.cuda.is_available():
        gpu_benchmark(args)
    else:
        print("CUDA not available: timing skipped")


if __name__ == "__main__":
    main()
