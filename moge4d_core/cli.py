"""Command line: ``python -m moge4d_core <command> ...``.

Commands
--------
``render``   render a 4D scene (the built-in demo scene, or a TrajScene / DELTA pkl or our npz) along
             one or more named camera paths to MP4s (colour and hole mask) plus a per-frame PLY
             sequence and the scene as npz::

                 python -m moge4d_core render --demo --camera orbit_left --out out/
                 python -m moge4d_core render --trajectories sample_dt3d_pred.pkl --camera dolly_in --out out/

``generate`` the whole pipeline from one image: depth (UniDepthV2, or ``--depth`` + ``--fov``) → 4D-STraG
             trajectories → de-normalisation → render along each ``--camera`` → 4D-ViSM inpainting; writes the
             4D scene (npz + PLY sequence), renders, hole masks, inpainted MP4s, a contact sheet and timings::

                 python -m moge4d_core generate --image IMG --prompt TEXT --models DIR --camera orbit_left --out out/

             ``--models`` layout: see :mod:`moge4d_core.pipeline.model_dir` (release folders as published).
             ``--frames`` takes any count: a scene longer than the model's ``--window`` (4k+1: 49 for the release,
             17 for the nano model) is generated window after window, each started from the previous window's points
             re-projected into the first camera, with ``--overlap`` frames cross-faded at each seam
             (:mod:`moge4d_core.pipeline.chain`), e.g. ``generate ... --frames 97``.

             Faster (:mod:`moge4d_core.pipeline.speed`): ``--lora FILE:STRENGTH`` (repeatable) stacks more LoRAs on the
             4D-ViSM DiT after the folder's ViSM LoRA, ``--preset fast`` inpaints in 4 Euler steps at shift 5 and CFG 1
             (with a step-distilled Wan2.1 I2V / InP LoRA), ``--attention-backend flash|sage|...`` picks diffusers'
             attention kernel per DiT (native when the package is missing), ``--compile`` compiles the DiT blocks::

                 python -m moge4d_core generate ... --lora distill_i2v_4step.safetensors:1.0 --preset fast

             Defaults: a model folder with a ``demo.json`` ``settings`` object (the nano model) sets ``--width/--height/
             --frames/--window/--steps/--cfg/--shift/--render/--keep-rendered`` for its model (said on stderr); without
             one the release's apply (512x368, 49 frames, 50 steps, CFG 6). A photo of another aspect is centre-cropped
             (``--fit crop``) or padded (``--fit pad``), never stretched; ``--depth`` follows the same cut and ``--fov``
             is converted. ``--render splats`` draws Gaussians sized to the point spacing; ``--keep-rendered PX``
             composites the render back over the inpainted frames where points landed, feathered over PX pixels::

                 python -m moge4d_core generate --models moge4d_core/nano_model --image photo.jpg --depth d.npy --fov 60 --out out/

``demo``     ``generate`` with the nano model shipped in ``moge4d_core/nano_model`` on its synthetic test image
             and depth, on the CPU in a few minutes (it shows the pipeline, not the released model's quality)::

                 python -m moge4d_core demo --out out/
                 python -m moge4d_core demo --frames 97 --out out97/     # 7 chained windows of 17 frames

``plan``     a dry run of the whole pipeline at release size with fake tensors (no weights, under a minute on a
             CPU): per stage and memory mode the resident weights, activation peak and FLOPs per DiT step, and the
             cheapest memory mode that fits ``--gpu-memory GiB`` (:mod:`moge4d_core.pipeline.plan`)::

                 python -m moge4d_core plan --gpu-memory 24 [--json]

``quantize``  write a DiT checkpoint as GGUF for 12-16 GB GPUs; the loaders read the .gguf file
             (:mod:`moge4d_core.loading.gguf`)::

                 python -m moge4d_core quantize --gguf Q4_K_M 4D-STraG/diffusion_pytorch_model.safetensors strag-Q4_K_M.gguf

``presets``  list the camera presets and their parameters.

``--export usd|usda|usdz|glb`` (``render``, ``generate``, ``demo``; repeatable) also writes the 4D scene as
``scene.<fmt>`` into ``--out``: USD with time-sampled points and every camera path (:mod:`moge4d_core.io.usd`), or
one animated ``.glb`` for glTF viewers and ComfyUI's Preview 3D (:mod:`moge4d_core.io.gltf`).

Before any model loads or any file is written, :func:`preflight` checks everything that is cheap to check (sizes,
frame counts, sampler settings, camera names, device, model files, image and depth, the output folder, free disk
space). Every command builds its outputs in a temporary folder next to ``--out`` and then replaces ``--out`` whole
(:mod:`moge4d_core.io.output_folder`): ``--out`` must be new, empty or an earlier MoGe4D output (it holds
``moge4d_run.json``); a failure leaves it as it was.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


_MIB = 2 ** 20


@dataclass
class Checked:
    """What :func:`preflight` read while checking: the image ``(H,W,3)`` [0,1], the depth ``(H,W)`` or None, the
    model files (generate / demo), and the command line recorded in the output manifest."""

    command: str
    image: Any = None
    depth: Any = None
    files: Any = None
    loras: Any = None


def render_output_bytes(frames: int, points: int, cameras: int, height: int, width: int) -> int:
    """Rough size in bytes of what ``render`` writes: PLY sequence (15 B per point and frame), ``scene.npz``
    (13 B per point and frame) and two H.264 videos per camera (about 0.25 B per pixel and frame)."""
    return int(28 * frames * points + 2 * cameras * frames * height * width * 0.25 + _MIB)


def _check_cameras(names, frames: int, width: int, height: int) -> None:
    """Build every named preset on a one-point dummy scene: unknown names and bad defaults fail here."""
    import difflib

    import torch

    from .camera.paths import CAMERA_PRESETS, make_camera_path

    for name in names:
        if name not in CAMERA_PRESETS:
            close = difflib.get_close_matches(name, list(CAMERA_PRESETS), n=3)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            raise MoGe4DInputError(f"--camera {name}: unknown camera preset; {hint}valid presets: "
                                   f"{', '.join(CAMERA_PRESETS)} (see `python -m moge4d_core presets`)")
        try:
            make_camera_path(name, max(frames, 1), max(width, 1), max(height, 1),
                             points0=torch.tensor([[0.0, 0.0, 2.0], [0.5, 0.5, 3.0]]))
        except MoGe4DInputError as exc:
            raise MoGe4DInputError(f"--camera {name}: {exc}") from None


def _positive(value, name: str, *, integer: bool = False, zero_ok: bool = False) -> None:
    import math

    ok = value is not None and not isinstance(value, bool) and math.isfinite(float(value))
    ok = ok and (float(value) >= 0 if zero_ok else float(value) > 0)
    if not ok:
        raise MoGe4DInputError(f"{name}: expected a {'whole ' if integer else ''}number "
                               f"{'>= 0' if zero_ok else '> 0'}, got {value!r}")


def _check_device(device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise MoGe4DInputError(f"--device {device!r}: not a torch device ({exc}); use cpu or cuda") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise MoGe4DInputError(f"--device {device}: no CUDA GPU is available here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise MoGe4DInputError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise MoGe4DInputError(f"--device {device}: MPS is not available here; use --device cpu")


def _command_line(args, command: str) -> str:
    cams = " ".join(f"--camera {c}" for c in (getattr(args, "camera", None) or []))
    return f"{command} {cams}".strip()


def preflight(args, command: str, *, models_dir=None, image_path=None, depth_path=None, fov=None,
              depth_kind: str = "metric") -> Checked:
    """Every cheap check of ``command`` (``render`` / ``generate`` / ``demo``), before any model loads or any
    file is written: sizes and frame counts, sampler settings, camera names (each preset is built on a dummy
    scene), the device, the model folder's files, the image and depth (read here), the output folder, and the
    free disk space for the outputs (``render``: checked again once the scene's size is known).

    Returns:
        :class:`Checked` with what was read. Raises :class:`MoGe4DInputError` naming the option at fault.
    """
    from .io.output_folder import check_free_space, check_output_folder

    checked = Checked(command=_command_line(args, command))
    from .io.exports import check_exports

    check_exports(getattr(args, "export", None))
    if command == "render":
        if not args.demo and not args.trajectories:
            raise MoGe4DInputError("render: pass --demo for the built-in scene or --trajectories FILE (.pkl / .npz)")
        if args.demo:
            for opt in ("frames", "width", "height"):
                _positive(getattr(args, opt), f"--{opt}", integer=True)
        elif not Path(args.trajectories).is_file():
            raise MoGe4DInputError(f"--trajectories {args.trajectories}: no such file")
        for opt in ("render_width", "render_height"):
            _positive(getattr(args, opt), f"--{opt.replace('_', '-')}", integer=True, zero_ok=True)
        _positive(args.point_size, "--point-size", integer=True)
        if args.fov is not None and args.fov != 0:
            from .geometry.intrinsics import check_fov

            check_fov(args.fov, "--fov")
        frames = args.frames if args.demo else 2
        width = args.render_width or (args.width if args.demo else 16)
        height = args.render_height or (args.height if args.demo else 16)
        _check_cameras(args.camera, frames, width, height)
        check_output_folder(args.out)
        return checked

    fill_generate_defaults(args, models_dir)
    from .io.images import read_depth, read_image
    from .pipeline.chain import check_chain, window_frames
    from .pipeline.conditioning import check_size
    from .pipeline.model_dir import find_model_files
    from .pipeline.outputs import estimate_output_bytes
    from .pipeline.settings import SamplerSettings
    from .pipeline.trajectory import TrajectoryOptions

    check_chain(args.frames, args.window, args.overlap, "--")
    if args.width < 16 or args.height < 16:
        raise MoGe4DInputError(f"--width/--height: {args.width}x{args.height}; both must be at least 16")
    check_size(args.height, args.width, "--width/--height")
    SamplerSettings(steps=args.steps, cfg=args.cfg, shift=args.shift, seed=args.seed, solver=args.solver,
                    cache=args.cache)
    _positive(args.inpaint_steps, "--inpaint-steps", integer=True, zero_ok=True)
    _positive(args.keep_rendered, "--keep-rendered", integer=True, zero_ok=True)
    _positive(args.fps, "--fps")
    _positive(args.lora_strength, "--lora-strength", zero_ok=True)
    from .pipeline.speed import check_attention_backend, check_lora_specs

    checked.loras = check_lora_specs(getattr(args, "lora", None))
    if getattr(args, "preset", None) and not checked.loras and not args.no_inpaint:
        raise MoGe4DInputError(f"--preset {args.preset}: few-step inpainting needs a step-distilled Wan2.1 I2V / InP "
                               f"LoRA; pass it with --lora FILE:STRENGTH (without one, 4 steps at CFG 1 inpaint blurry)")
    check_attention_backend(getattr(args, "attention_backend", None))
    TrajectoryOptions(frames=window_frames(args.frames, args.window), normalization=args.normalization,
                      reference=not args.no_reference)
    _check_cameras(args.camera, args.frames, args.width, args.height)
    _check_device(args.device)
    depth_scale = getattr(args, "depth_scale", None)
    if depth_path is None and depth_scale is not None:
        raise MoGe4DInputError("--depth-scale: only used with --depth FILE; remove it or pass --depth")
    if depth_path is not None:
        if fov is None:
            raise MoGe4DInputError("--depth needs --fov (horizontal field of view in degrees)")
        from .geometry.intrinsics import check_fov

        check_fov(fov, "--fov")
    checked.files = find_model_files(models_dir)
    if depth_path is None and checked.files.unidepth is None:
        raise MoGe4DInputError(f"{models_dir}: no UniDepthV2 folder (unidepth-v2-vitl14/); add it, or pass "
                               f"--depth FILE --fov DEG")
    checked.image = read_image(image_path, "--image")
    if depth_path is not None:
        checked.depth = read_depth(depth_path, scale=depth_scale, metric=depth_kind == "metric", what="--depth")
    check_output_folder(args.out)
    need = estimate_output_bytes(args.frames, args.height, args.width, len(args.camera), inpaint=not args.no_inpaint)
    check_free_space(args.out, need, detail=f"{args.frames} frames at {args.width}x{args.height}, "
                                            f"{len(args.camera)} camera(s)")
    return checked


def cmd_render(args) -> int:
    from .camera.scene import camera_path_for_scene
    from .io import save_trajectories_npz, write_mp4, write_ply_sequence
    from .io.exports import write_exports
    from .io.output_folder import check_free_space, output_folder
    from .render import render_trajectories

    preflight(args, "render")
    t0 = time.perf_counter()
    scene = _load_scene(args)
    t_scene = time.perf_counter() - t0
    out = Path(args.out)
    # Build every camera path before writing anything, so a bad preset writes nothing.
    paths = [camera_path_for_scene(name, scene, width=args.render_width, height=args.render_height,
                                   fov_deg=args.fov or 0.0) for name in args.camera]
    width, height = paths[0].width, paths[0].height
    need = render_output_bytes(scene.num_frames, scene.num_points, len(paths), height, width)
    check_free_space(out, need, detail=f"{scene.num_frames} frames x {scene.num_points} points, {len(paths)} "
                                       f"camera(s) at {width}x{height}")
    summary = [f"scene: {scene.num_frames} frames x {scene.num_points} points ({scene.height}x{scene.width}), "
               f"built in {t_scene:.2f} s"]
    with output_folder(out, command="render " + " ".join(f"--camera {c}" for c in args.camera)) as tmp:
        for name, path in zip(args.camera, paths):
            t1 = time.perf_counter()
            result = render_trajectories(scene, path, mode=args.mode, point_size=args.point_size,
                                         progress=_progress(f"render {name}"))
            t_render = time.perf_counter() - t1
            write_mp4(result.rgb, tmp / f"render_{name}.mp4", fps=scene.fps)
            write_mp4(result.holes[..., None].expand(-1, -1, -1, 3), tmp / f"holes_{name}.mp4", fps=scene.fps)
            hole_pct = 100.0 * float(result.holes.mean())
            summary.append(f"{name}: rendered {path.num_frames} frames at {width}x{height} ({args.mode}) in "
                           f"{t_render:.2f} s, holes {hole_pct:.1f}% -> {out / f'render_{name}.mp4'}, "
                           f"{out / f'holes_{name}.mp4'}")
        plys = write_ply_sequence(scene, tmp / "ply", prefix="frame")
        save_trajectories_npz(scene, tmp / "scene.npz")
        exported = write_exports(scene, paths, tmp, args.export)
    summary.append(f"PLY sequence: {len(plys)} files in {out / 'ply'}; scene: {out / 'scene.npz'}")
    if exported:
        summary.append("exports: " + ", ".join(str(out / p.name) for p in exported))
    print("\n".join(summary))
    return 0


RELEASE_DEFAULTS = dict(frames=49, width=512, height=368, steps=50, cfg=6.0, shift=5.0, render="points",
                        keep_rendered=0)
"""``generate``'s defaults for a model folder without its own (:func:`~.pipeline.model_dir.folder_defaults`)."""


def fill_generate_defaults(args, models_dir) -> None:
    """Fill the options left unset (None) on the command line: from the model folder's ``demo.json`` settings when it
    has them (the nano model; said on stderr), else :data:`RELEASE_DEFAULTS`; ``--window`` = the model's frames."""
    from .pipeline.model_dir import folder_defaults

    own = folder_defaults(models_dir) if models_dir is not None and Path(models_dir).is_dir() else {}
    used = []
    for key, value in RELEASE_DEFAULTS.items():
        if getattr(args, key, None) is None:
            setattr(args, key, own.get(key, value))
            if key in own:
                used.append(f"--{key.replace('_', '-')} {own[key]}")
    if getattr(args, "window", None) is None:
        args.window = own.get("frames", RELEASE_DEFAULTS["frames"])
        if "frames" in own:
            used.append(f"--window {own['frames']}")
    if getattr(args, "fit", None) is None:
        args.fit = "crop"
    if used and getattr(args, "command", None) == "generate":
        print(f"generate: this model's own defaults from {Path(models_dir) / 'demo.json'}: {' '.join(used)} "
              f"(the release's do not apply; options on the command line win)", file=sys.stderr)


def _generate(args, *, models_dir, image_path, depth_path=None, fov=None, depth_kind="metric",
              command: str = "generate") -> int:
    import torch

    from .geometry.sources import geometry_from_depth
    from .pipeline.chain import window_frames
    from .pipeline.model_dir import encode_prompts, load_models, strag_clip_context
    from .pipeline.outputs import write_outputs
    from .pipeline.run import run_pipeline
    from .pipeline.settings import SamplerSettings
    from .pipeline.trajectory import TrajectoryOptions

    checked = preflight(args, command, models_dir=models_dir, image_path=image_path, depth_path=depth_path,
                        fov=fov, depth_kind=depth_kind)
    rank = _start_parallel(args)
    dtype, memory = _dtype_and_memory(args)
    t0 = time.perf_counter()
    options = TrajectoryOptions(frames=window_frames(args.frames, args.window), normalization=args.normalization,
                                reference=not args.no_reference)
    traj_settings = SamplerSettings(steps=args.steps, cfg=args.cfg, shift=args.shift, seed=args.seed, solver=args.solver,
                                    cache=args.cache, parallel=args.parallel)
    from .pipeline.speed import apply_speed_options, preset_settings

    inp_settings = preset_settings(args.preset, traj_settings.replace(seed=args.seed + 1))
    if args.inpaint_steps:
        inp_settings = inp_settings.replace(steps=args.inpaint_steps)
    from .pipeline.fit import fit_to_aspect
    from .pipeline.run import RENDER_STYLES

    fitted = fit_to_aspect(checked.image, checked.depth, fov, args.width, args.height, args.fit)
    if fitted.note:
        print(fitted.note, file=sys.stderr)
    image, files, fov = fitted.image, checked.files, fitted.fov
    geometry = None
    if fitted.depth is not None:
        depth = fitted.depth
        geometry = geometry_from_depth(image, depth[..., None].expand(*depth.shape, 3), fov, depth_kind=depth_kind)
    models = load_models(files, device=args.device, dtype=dtype, memory=memory, inpaint=not args.no_inpaint,
                         depth=geometry is None, lora_strength=args.lora_strength, loras=checked.loras)
    apply_speed_options(models, attention_backend=args.attention_backend, compile=args.compile)
    positive, negative = encode_prompts(models, args.prompt or "", args.negative_prompt)
    t_load = time.perf_counter() - t0
    bars = {}

    def progress(stage, done, total):
        bars.setdefault(stage, _progress(stage))(done, total)

    result = run_pipeline(image=image, strag=models.strag, motion_vae=models.motion_vae, image_vae=models.image_vae,
                          positive=positive, negative=negative, geometry=geometry, unidepth=models.unidepth,
                          omnimae=models.omnimae if args.mpm else None, vism=models.vism, cameras=args.camera,
                          trajectory_settings=traj_settings, inpaint_settings=inp_settings, options=options,
                          clip=strag_clip_context(models, args.height, args.width), compat=args.compat,
                          size=(args.width, args.height), fps=args.fps, progress=progress, frames=args.frames,
                          overlap=args.overlap, residency=models.residency, keep_rendered=args.keep_rendered,
                          render_kwargs=dict(RENDER_STYLES[args.render]))
    if rank != 0:                       # every rank ends with the same scene; rank 0 writes it
        print(f"rank {rank}: done; rank 0 writes the outputs")
        return 0
    written = write_outputs(result, args.out, fps=args.fps, command=checked.command, exports=args.export)
    print(f"models loaded in {t_load:.1f} s from {files.root} ({dtype}, memory {memory})")
    print(result.times.summary())
    print(f"wrote {len(written)} outputs to {args.out}: " + ", ".join(p.name for p in written))
    return 0


def _start_parallel(args) -> int:
    """``--parallel MODE``: start the process group from torchrun's variables and give each rank its GPU; returns
    this process's rank (0 without ``--parallel``)."""
    if not args.parallel:
        return 0
    import os

    from .sampling.parallel import init_from_env

    rank, size = init_from_env()
    if size < 2:
        raise MoGe4DInputError(f"--parallel {args.parallel}: needs two or more processes; launch with "
                               f"`torchrun --nproc-per-node 2 -m moge4d_core generate ... --parallel {args.parallel}`")
    if args.parallel == "cfg" and size != 2:
        raise MoGe4DInputError(f"--parallel cfg: runs on exactly 2 processes (one per guidance branch), got {size}")
    if args.device.startswith("cuda"):
        args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return rank


def _dtype_and_memory(args) -> tuple:
    """``--dtype auto`` -> bf16 on CUDA, fp32 elsewhere; ``--memory auto`` -> on CUDA the cheapest mode that
    ``plan`` says fits the GPU's memory at these settings, elsewhere ``full`` (the host is the device)."""
    import torch

    from .pipeline.memory import parse_memory_mode

    device = torch.device(args.device)
    name = args.dtype if args.dtype != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
    mode = parse_memory_mode(args.memory)
    if not mode.is_auto:
        return dtype, mode
    if device.type != "cuda":
        return dtype, parse_memory_mode("full")
    from .pipeline.chain import window_frames
    from .pipeline.plan import choose_memory_mode, make_plan, release_sizes

    total = torch.cuda.get_device_properties(device).total_memory / 2 ** 30
    plan = make_plan(release_sizes(frames=window_frames(args.frames, args.window), width=args.width, height=args.height,
                                   steps=args.steps, cfg=args.cfg))
    chosen = choose_memory_mode(plan, total)
    print(f"--memory auto: {chosen} (plan's estimate {plan.peak_bytes(chosen) / 2 ** 30:.1f} GiB of {total:.1f} GiB)")
    return dtype, chosen


def cmd_generate(args) -> int:
    if not args.image:
        raise MoGe4DInputError("generate: pass --image IMG")
    if not args.models:
        raise MoGe4DInputError("generate: pass --models DIR (the folder with 4D-STraG/, 4D-ViSM/, VAE/, ...) or "
                               "--models nano (the built-in nano model)")
    models_dir = args.models
    if models_dir == "nano" and not Path("nano").is_dir():
        from .pipeline.nano import NANO_DIR

        models_dir = NANO_DIR
    return _generate(args, models_dir=models_dir, image_path=args.image, depth_path=args.depth, fov=args.fov,
                     depth_kind=args.depth_kind)


def cmd_demo(args) -> int:
    from .pipeline.nano import NANO_DIR, demo_spec

    spec = demo_spec()
    for key, value in spec["settings"].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.window is None:
        args.window = spec["settings"]["frames"]      # the nano model's own window (17)
    return _generate(args, models_dir=NANO_DIR, image_path=NANO_DIR / spec["image"],
                     depth_path=NANO_DIR / spec["depth"], fov=spec["fov_deg"], depth_kind="metric", command="demo")


def _add_generate_args(g, demo: bool) -> None:
    from .pipeline.chain import DEFAULT_OVERLAP

    g.add_argument("--out", required=True, help="output folder")
    g.add_argument("--camera", action="append", default=None,
                   help="camera preset (repeatable); see `python -m moge4d_core presets`")
    g.add_argument("--prompt", default="" if demo else None, help="caption of the image (umT5)")
    g.add_argument("--negative-prompt", default="", help="negative prompt (release: empty)")
    # Unset (None) here: filled from the model folder's demo.json settings (the nano model, the demo) or the
    # release's defaults (fill_generate_defaults).
    g.add_argument("--frames", type=int, default=None,
                   help="frames of the scene, any count (default: the model folder's demo.json settings, else the "
                        "release's 49); more than --window chains windows")
    g.add_argument("--window", type=int, default=None,
                   help="frames the trajectory model generates at once, 4k+1 (the model's own: release 49; the demo "
                        "reads the nano model's, 17); a longer --frames runs window after window, each started from "
                        "the previous one's points re-projected into the first camera")
    g.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP,
                   help=f"chained windows: frames shared by consecutive windows beyond the seam frame and cross-faded "
                        f"(0 .. (window-1)/2; default {DEFAULT_OVERLAP})")
    g.add_argument("--width", type=int, default=None,
                   help="working width, multiple of 16 (default: the model folder's demo.json settings, e.g. the nano "
                        "model's 96, else the release's 512)")
    g.add_argument("--height", type=int, default=None,
                   help="working height, multiple of 16 (default: the model folder's, e.g. 64, else the release's 368)")
    g.add_argument("--fit", choices=["crop", "pad"], default=None,
                   help="an image (and --depth) of another aspect than --width:--height: crop = keep the centre "
                        "(default), pad = keep everything, black bars; never stretched; said on stderr")
    g.add_argument("--steps", type=int, default=None, help="trajectory sampling steps (release 50; nano 20)")
    g.add_argument("--inpaint-steps", type=int, default=0, help="inpainting steps (0: same as --steps)")
    g.add_argument("--cfg", type=float, default=None, help="classifier-free guidance (release 6; nano 1)")
    g.add_argument("--shift", type=float, default=None, help="flow schedule shift (release 5)")
    g.add_argument("--seed", type=int, default=0, help="seed (inpainting uses seed + 1)")
    g.add_argument("--solver", choices=["euler", "unipc", "dpmpp_2m"], default="euler")
    g.add_argument("--fps", type=float, default=8.0)
    g.add_argument("--normalization", choices=["official", "real_k", "release"], default="official",
                   help="motion (de)normalisation constants: official = the release's pseudo-intrinsics rule at the "
                        "working size (what our trainers use); release = the released checkpoint's own constants "
                        "(1.043478, 1) at any size (what --compat uses); real_k = the image's K")
    g.add_argument("--no-reference", action="store_true", help="zero reference tokens (as in release training)")
    g.add_argument("--mpm", action="store_true", help="use the Motion Perception Module (needs its weights)")
    g.add_argument("--compat", action="store_true", help="the released inference settings (reference J)")
    g.add_argument("--no-inpaint", action="store_true", help="skip 4D-ViSM (renders and masks only)")
    g.add_argument("--render", choices=["points", "splats"], default=None,
                   help="points = one pixel per point (release default); splats = Gaussians sized to the point "
                        "spacing, so neighbours touch and holes are real disocclusions (the nano model's default)")
    g.add_argument("--keep-rendered", type=int, default=None, metavar="PX",
                   help="composite the render back over the inpainted frames wherever a point landed, feathered "
                        "across PX pixels at hole edges; 0 = off (release: every pixel regenerated; the nano model: "
                        "2); ignored with --compat")
    g.add_argument("--lora-strength", type=float, default=0.55, help="4D-ViSM LoRA strength (release 0.55)")
    from .pipeline.speed import FEW_STEP_PRESETS

    g.add_argument("--lora", action="append", default=None, metavar="FILE:STRENGTH",
                   help="another LoRA for the 4D-ViSM DiT (repeatable; strength 1 when omitted), stacked after the "
                        "model folder's ViSM LoRA, e.g. a step-distilled Wan2.1 I2V / InP LoRA for --preset fast; "
                        "kohya, lora_A/lora_B and lora_down/lora_up layouts")
    g.add_argument("--preset", choices=list(FEW_STEP_PRESETS), default=None,
                   help="few-step inpainting: fast = 4 Euler steps, shift 5, CFG 1 for the 4D-ViSM stage (needs a "
                        "step-distilled LoRA via --lora; --inpaint-steps still overrides the steps)")
    g.add_argument("--attention-backend", default=None, metavar="NAME",
                   help="diffusers attention backend of both DiTs: native (torch SDPA), flash, sage, xformers, "
                        "_native_cudnn, ...; falls back to native with a message when its package is missing")
    g.add_argument("--compile", action="store_true",
                   help="regional torch.compile of the DiTs' transformer blocks (first step compiles)")
    g.add_argument("--cache", default=None, metavar="SETTING",
                   help="step cache of both DiTs (diffusers' cache hooks): first_block[:THRESHOLD] (0.05), "
                        "mag[:THRESHOLD] (0.06; the first run calibrates), taylorseer[:INTERVAL] (3), pab[:SKIP] (2), "
                        "faster (batched CFG only); default off; ignored with --compat")
    g.add_argument("--parallel", choices=["cfg", "ulysses", "ring"], default=None,
                   help="one video on several processes (launch with torchrun --nproc-per-node N): cfg = the two "
                        "guidance branches on 2 ranks; ulysses / ring = the token sequence split over all ranks "
                        "(ring needs the flash or _native_cudnn attention backend); rank 0 writes the outputs")
    g.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (with --parallel: each rank's GPU)")
    g.add_argument("--dtype", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="compute dtype of the DiTs and text / CLIP encoders; auto = bf16 on CUDA, fp32 on the CPU")
    g.add_argument("--memory", default="auto", metavar="MODE",
                   help="memory mode: full (every model stays on the device), model_offload (each stage's models "
                        "come for that stage only), block_swap:N (N DiT blocks resident, the rest streamed), fp8 "
                        "(DiT weights stored as float8), combinable as fp8+block_swap:N; auto = on CUDA the cheapest "
                        "mode that `python -m moge4d_core plan` says fits the GPU, on the CPU full")
    _add_export_arg(g)


def _add_export_arg(parser) -> None:
    from .io.exports import EXPORT_FORMATS

    parser.add_argument("--export", action="append", default=None, choices=EXPORT_FORMATS,
                        help="also write the 4D scene as scene.<fmt> (repeatable): usd / usda / usdz (time-sampled "
                             "points and the camera paths, metres, Y-up) or glb (animated points for glTF viewers "
                             "and ComfyUI's Preview 3D)")


def cmd_presets(args) -> int:
    from .camera.paths import CAMERA_PRESETS

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
    _add_export_arg(r)
    r.set_defaults(func=cmd_render)

    g = sub.add_parser("generate", help="image -> 4D scene -> novel-view videos (the whole pipeline)")
    g.add_argument("--image", help="input image")
    g.add_argument("--models", help="model folder (4D-STraG/, 4D-ViSM/, VAE/, Wan2.1-Fun-V1.1-14B-InP/, ...), or nano: "
                                    "the built-in nano model (moge4d_core/nano_model, with its own defaults)")
    g.add_argument("--depth", help="depth map instead of UniDepthV2 (.npy float metres, or an image; integer "
                                   "depth needs --depth-scale); needs --fov")
    g.add_argument("--fov", type=float, default=None, help="horizontal field of view of --depth, degrees")
    g.add_argument("--depth-kind", choices=["metric", "relative", "relative_inverse"], default="metric")
    g.add_argument("--depth-scale", type=float, default=None,
                   help="metres per unit of an integer --depth image or array (e.g. 0.001 for millimetre PNGs); "
                        "required for integer metric depth, float depth is taken as metres")
    _add_generate_args(g, demo=False)
    g.set_defaults(func=cmd_generate)

    dm = sub.add_parser("demo", help="run the whole pipeline with the shipped nano model on the CPU")
    _add_generate_args(dm, demo=True)
    dm.set_defaults(func=cmd_demo)

    from .pipeline.plan import add_plan_arguments, cmd_plan

    pl = sub.add_parser("plan", help="dry run at release size: memory per stage and mode, FLOPs per DiT step, "
                                     "the cheapest memory mode that fits --gpu-memory")
    add_plan_arguments(pl)
    pl.set_defaults(func=cmd_plan)

    from .loading.gguf import add_quantize_arguments, cmd_quantize

    q = sub.add_parser("quantize", help="write a DiT checkpoint as GGUF (Q8_0, Q6_K, Q5_K_M, Q4_K_M) for small GPUs")
    add_quantize_arguments(q)
    q.set_defaults(func=cmd_quantize)

    p = sub.add_parser("presets", help="list camera presets")
    p.set_defaults(func=cmd_presets)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "camera", "unused") is None and args.command != "demo":
        args.camera = ["orbit_left"]
    try:
        return args.func(args)
    except MoGe4DInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
