"""Command line: ``python -m moge4d_core <command> ...``.

Commands
--------
``render``   render a 4D scene (the built-in demo scene, or a TrajScene / DELTA pkl or our npz) along
             one or more named camera paths to MP4s (colour and hole mask) plus a per-frame PLY
             sequence and the scene as npz::

                 python -m moge4d_core render --demo --camera orbit_left --out out/
                 python -m moge4d_core render --trajectories sample_dt3d_pred.pkl --camera dolly_in --out out/

``presets``  list the camera presets and their parameters.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .errors import MoGe4DInputError


def _progress(label: str):
    def callback(done: int, n: int) -> None:
        width = 30
        bar = int(width * done / n)
        sys.stderr.write(f"\r{label} [{'#' * bar}{'.' * (width - bar)}] {done}/{n}")
        if done == n:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return callback


def _load_scene(args):
    if args.demo:
        from .demo_scene import make_demo_scene

        return make_demo_scene(height=args.height, width=args.width, num_frames=args.frames)
    from .io import load_trajectories

    return load_trajectories(args.trajectories, allow_unsafe=args.allow_unsafe_pickle)


def cmd_render(args) -> int:
    from .geometry.scene_camera import camera_path_for_scene
    from .io import save_trajectories_npz, write_mp4, write_ply_sequence
    from .render import render_trajectories

    if not args.demo and not args.trajectories:
        raise MoGe4DInputError("render: pass --demo for the built-in scene or --trajectories FILE (.pkl / .npz)")
    t0 = time.perf_counter()
    scene = _load_scene(args)
    t_scene = time.perf_counter() - t0
    out = Path(args.out)
    # Build every camera path before writing anything, so a bad preset writes nothing.
    paths = [camera_path_for_scene(name, scene, width=args.render_width, height=args.render_height,
                                   fov_deg=args.fov or 0.0) for name in args.camera]
    width, height = paths[0].width, paths[0].height
    out.mkdir(parents=True, exist_ok=True)
    summary = [f"scene: {scene.num_frames} frames x {scene.num_points} points ({scene.height}x{scene.width}), "
               f"built in {t_scene:.2f} s"]
    for name, path in zip(args.camera, paths):
        t1 = time.perf_counter()
        result = render_trajectories(scene, path, mode=args.mode, point_size=args.point_size,
                                     progress=_progress(f"render {name}"))
        t_render = time.perf_counter() - t1
        video = write_mp4(result.rgb, out / f"render_{name}.mp4", fps=scene.fps)
        mask = write_mp4(result.holes[..., None].expand(-1, -1, -1, 3), out / f"holes_{name}.mp4", fps=scene.fps)
        hole_pct = 100.0 * float(result.holes.mean())
        summary.append(f"{name}: rendered {path.num_frames} frames at {width}x{height} ({args.mode}) in "
                       f"{t_render:.2f} s, holes {hole_pct:.1f}% -> {video}, {mask}")
    plys = write_ply_sequence(scene, out / "ply", prefix="frame")
    npz = save_trajectories_npz(scene, out / "scene.npz")
    summary.append(f"PLY sequence: {len(plys)} files in {out / 'ply'}; scene: {npz}")
    print("\n".join(summary))
    return 0


def cmd_presets(args) -> int:
    from .geometry.camera_paths import CAMERA_PRESETS

    for name, spec in CAMERA_PRESETS.items():
        params = ", ".join(f"{p.name}={p.default}" for p in spec.params)
        print(f"{name}: {spec.doc}" + (f" [{params}]" if params else ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m moge4d_core", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    r = sub.add_parser("render", help="render a 4D scene along camera paths to MP4 + PLY sequence")
    src = r.add_mutually_exclusive_group()
    src.add_argument("--demo", action="store_true", help="use the built-in procedural 4D scene")
    src.add_argument("--trajectories", help="a TrajScene / DELTA *_dt3d_pred.pkl or a MoGe4D .npz")
    r.add_argument("--camera", action="append", default=None,
                   help="camera preset name (repeatable); see `python -m moge4d_core presets`")
    r.add_argument("--out", required=True, help="output folder")
    r.add_argument("--mode", choices=["points", "gaussians"], default="points", help="renderer")
    r.add_argument("--point-size", type=int, default=1, help="points mode: k x k footprint per point")
    r.add_argument("--fov", type=float, default=None,
                   help="horizontal field of view in degrees (default: the scene's own intrinsics)")
    r.add_argument("--frames", type=int, default=25, help="demo scene: number of frames")
    r.add_argument("--width", type=int, default=256, help="demo scene: width in pixels")
    r.add_argument("--height", type=int, default=192, help="demo scene: height in pixels")
    r.add_argument("--render-width", type=int, default=0, help="output width (0: the scene's grid width)")
    r.add_argument("--render-height", type=int, default=0, help="output height (0: the scene's grid height)")
    r.add_argument("--allow-unsafe-pickle", action="store_true",
                   help="allow arbitrary objects in pkl files (only for files you trust)")
    r.set_defaults(func=cmd_render)

    p = sub.add_parser("presets", help="list camera presets")
    p.set_defaults(func=cmd_presets)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "camera", "unused") is None:
        args.camera = ["orbit_left"]
    try:
        return args.func(args)
    except MoGe4DInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
