"""Seeded synthetic 4D scenes written in the TrajScene-60K layout, with exact ground-truth trajectories.

Extends the idea of :mod:`moge4d_core.demo_scene` with randomness: a pinhole camera at the origin
(OpenCV axes: x right, y down, z forward; world = first-frame camera) ray-casts one point per pixel of
the first frame into a scene made of

* a textured back wall (z = ``wall_z``) and a checkered ground plane (y = ``floor_y``), both static;
* 2-4 objects, each a sphere or an axis-aligned box, with a random colour, size, direction and one motion kind:
  ``rigid`` (translation + spin about the vertical axis), ``articulated`` (two linked parts: a box
  body that translates and an arm that also swings about a hinge on the body) or ``nonrigid``
  (latitude-dependent radial "breathing" plus a height-dependent twist).

Each point follows the object part its first-frame pixel hit, so the trajectories ``coords (T,N,3)``
are exact (N = H*W row-major, frame 0 = the ray-cast depth times the pixel ray; intrinsics known).

Files written per sample (TrajScene layout, reference ``moge4d_official.md`` F):

* ``<id>.mp4``              the source video: our point renderer (:func:`render_points`) drawing the moving
                            points from the first camera each frame (disocclusions show the sky colour);
* ``<id>.txt``              a caption describing the objects and their motions;
* ``<id>_dt3d_pred.pkl``    ``{"coords": float32 (T,N,3), "colors": uint8-valued float32 (N,3) 0..255,
                            "vis": bool (T,N)}`` as numpy arrays (``torch_pkl=True``: torch tensors);
* ``<id>_dt3d_render.mp4``  the moving points rendered along a small novel camera path (``orbit_left``), or with
                            ``novel_view="source"`` from the source camera itself with holes black (then render,
                            mask and video are a same-view inpainting triplet, as ViSM trains on);
* ``<id>_mask_render.mp4``  that render's hole mask (white = hole);
* ``<id>_meta.json``        extras not in TrajScene: pixel K, fov, object list (ignored by the reader).

``vis`` is True where the point is the front-most surface at its projected pixel in the source
render (z-buffer visibility from the first camera).

Folder output writes the files flat into ``out``; ``--tar`` writes range archives
``<first>-<last>.tar.gz`` (``per_archive`` samples each, official 50) with the files at the top level.

An :class:`ObjectRule` can change how an object's random draws become its direction and size (the nano recipe's
world, :mod:`training.nano.data`, ties each direction to the object's colour and makes the objects larger).

CLI: ``python -m training.datasets.synthetic --out DIR --count N --height 64 --width 96 --frames 17
--seed 0 [--tar]``.

Written by hand: no maintained library generates ray-cast 4D scenes with exact per-pixel tracks.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from moge4d_core.errors import MoGe4DInputError, require
from moge4d_core.camera.paths import make_camera_path
from moge4d_core.geometry.intrinsics import K_from_fov
from moge4d_core.io import write_mp4
from moge4d_core.render import render_points
from moge4d_core.types import CameraPath

__all__ = ["SyntheticSample", "ObjectRule", "make_synthetic_sample", "write_sample_files", "write_synthetic_dataset",
           "main", "SUFFIXES"]

SUFFIXES = (".mp4", ".txt", "_dt3d_pred.pkl", "_dt3d_render.mp4", "_mask_render.mp4")
"""File suffixes of one TrajScene sample (after ``<id>``)."""

_COLOUR_NAMES = {
    "red": (0.85, 0.20, 0.18), "blue": (0.20, 0.40, 0.90), "green": (0.25, 0.70, 0.30),
    "yellow": (0.95, 0.85, 0.25), "purple": (0.60, 0.30, 0.75), "orange": (0.95, 0.55, 0.15),
    "white": (0.92, 0.92, 0.92), "cyan": (0.25, 0.80, 0.85),
}


@dataclass
class SyntheticSample:
    """One generated scene.

    coords (T,N,3) float32 metric xyz, world = first-frame camera (OpenCV), N = height*width row-major;
    colors (N,3) float32 0..255; vis (T,N) bool; video (T,H,W,3) float32 [0,1] (source render);
    render / mask (T,H,W,3) float32 novel-view render and its hole mask; K (3,3) pixel intrinsics.
    """

    id: str
    caption: str
    coords: np.ndarray
    colors: np.ndarray
    vis: np.ndarray
    video: np.ndarray
    render: np.ndarray
    mask: np.ndarray
    K: np.ndarray
    height: int
    width: int
    meta: dict = field(default_factory=dict)


def _rot(axis: str, a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    if axis == "y":
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])   # about z


def _ray_cast(dirs: np.ndarray, prims: list[dict], wall_z: float, floor_y: float):
    """dirs (M,3) -> t (M,), primitive index (M,) (-2 wall, -1 floor)."""
    m = dirs.shape[0]
    inf = np.full(m, np.inf)
    t_wall = np.where(dirs[:, 2] > 0, wall_z / dirs[:, 2], inf)
    t_floor = np.where(dirs[:, 1] > 1e-9, floor_y / dirs[:, 1], inf)
    best = np.minimum(t_wall, t_floor)
    idx = np.where(t_floor < t_wall, -1, -2)
    dd = (dirs * dirs).sum(1)
    for k, p in enumerate(prims):
        c = np.asarray(p["centre"])
        if p["kind"] == "sphere":
            b = dirs @ c
            disc = b * b - dd * (c @ c - p["radius"] ** 2)
            t = (b - np.sqrt(np.clip(disc, 0, None))) / dd
            hit = (disc > 0) & (t > 0) & (t < best)
        else:  # axis-aligned box, slab method
            lo, hi = c - np.asarray(p["half"]), c + np.asarray(p["half"])
            with np.errstate(divide="ignore", invalid="ignore"):
                inv = 1.0 / dirs
                t1, t2 = lo * inv, hi * inv
            tmin = np.nanmax(np.minimum(t1, t2), axis=1)
            tmax = np.nanmin(np.maximum(t1, t2), axis=1)
            t = tmin
            hit = (tmax >= tmin) & (tmin > 0) & (t < best)
        best = np.where(hit, t, best)
        idx = np.where(hit, k, idx)
    return best, idx


def _texture(p: np.ndarray, idx: np.ndarray, prims: list[dict], scene: dict) -> np.ndarray:
    """First-frame points (M,3) -> rgb (M,3) in [0,1]."""
    rgb = np.zeros_like(p)
    wall = idx == -2
    f = scene["wall_freq"]
    chk = ((np.floor(p[:, 0] * f) + np.floor(p[:, 1] * f)) % 2)[:, None]
    grad = np.clip((p[:, 1:2] + 4.0) / 8.0, 0, 1)
    wa, wb = np.asarray(scene["wall_a"]), np.asarray(scene["wall_b"])
    rgb[wall] = ((wa * (1 - grad) + wb * grad) * (0.75 + 0.25 * chk))[wall]
    floor = idx == -1
    g = scene["floor_freq"]
    chk_f = ((np.floor(p[:, 0] * g) + np.floor(p[:, 2] * g)) % 2)[:, None]
    fa, fb = np.asarray(scene["floor_a"]), np.asarray(scene["floor_b"])
    rgb[floor] = (fa * (1 - chk_f) + fb * chk_f)[floor]
    for k, prim in enumerate(prims):
        m = idx == k
        if not m.any():
            continue
        local = p[m] - np.asarray(prim["centre"])
        size = prim.get("radius", max(prim.get("half", (1, 1, 1))))
        stripes = (np.floor((local[:, 0] + local[:, 1] * 0.5) / (0.35 * size)) % 2)[:, None]
        a, b = np.asarray(prim["color"]), np.asarray(prim["color"]) * 0.45 + 0.5
        shade = np.clip(0.6 + 0.4 * (-local[:, 1:2] / size + 1) / 2, 0, 1)
        rgb[m] = (a * (1 - stripes) + b * stripes) * shade
    return np.clip(rgb, 0, 1)


def _move(p0: np.ndarray, prim: dict, s: float) -> np.ndarray:
    """Positions at phase ``s`` in [0,1] of the first-frame points p0 (M,3) of one primitive."""
    mot = prim["motion"]
    c0 = np.asarray(prim["centre"])
    v = np.asarray(mot["velocity"])
    if mot["kind"] == "rigid":
        R = _rot("y", mot["spin"] * s)
        return c0 + v * s + (p0 - c0) @ R.T
    if mot["kind"] == "articulated":
        if prim["part"] == 0:
            return p0 + v * s
        hinge = np.asarray(mot["hinge"])
        R = _rot("z", mot["swing"] * math.sin(math.pi * s))
        return hinge + v * s + (p0 - hinge) @ R.T
    # non-rigid: breathing with a height-dependent twist
    size = prim.get("radius", max(prim.get("half", (1, 1, 1))))
    local = p0 - c0
    wobble = 1 + mot["amp"] * math.sin(2 * math.pi * s) * (local[:, 1:2] / size)
    local = local * wobble
    ang = mot["twist"] * s * (local[:, 1] / size)
    c, sn = np.cos(ang), np.sin(ang)
    x, z = local[:, 0] * c + local[:, 2] * sn, -local[:, 0] * sn + local[:, 2] * c
    return c0 + v * s + np.stack([x, local[:, 1], z], 1)


def _direction_words(v: np.ndarray) -> str:
    axis = int(np.argmax(np.abs(v)))
    if np.abs(v).max() < 0.15:
        return "stays in place"
    words = {0: ("right", "left"), 1: ("down", "up"), 2: ("away from the camera", "towards the camera")}[axis]
    return "moves " + (words[0] if v[axis] > 0 else words[1])


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


class ObjectRule:
    """How an object's random draws become its translation and size; this base keeps the draws as they are.

    The generator calls :meth:`velocity` right after drawing an object's velocity and :meth:`size` on its drawn
    size, for every object in order, so a rule that draws from ``rng`` changes only what comes after it.
    """

    def velocity(self, rng: np.random.Generator, colour: str, drawn: np.ndarray) -> np.ndarray:
        """Args: rng: the scene's generator; colour: the object's colour name; drawn: (3,) velocity in metres
        over the clip (before ``motion_scale``). Returns: (3,) the velocity to use."""
        return drawn

    def size(self, drawn: float) -> float:
        """Args: drawn: the object's radius or half-size in metres (0.35-0.8). Returns: the size to use."""
        return drawn

    def describe(self) -> dict:
        """What the rule adds to a sample's ``meta`` (JSON values)."""
        return {}


def _random_scene(rng: np.random.Generator, rule: ObjectRule, motion_scale: float = 1.0
                  ) -> tuple[dict, list[dict], list[str]]:
    scene = {
        "wall_z": float(rng.uniform(7.0, 10.0)), "floor_y": float(rng.uniform(1.2, 1.8)),
        "wall_freq": float(rng.uniform(0.8, 2.5)), "floor_freq": float(rng.uniform(0.6, 1.6)),
        "wall_a": rng.uniform(0.3, 0.9, 3).tolist(), "wall_b": rng.uniform(0.3, 0.9, 3).tolist(),
        "floor_a": rng.uniform(0.2, 0.5, 3).tolist(), "floor_b": rng.uniform(0.5, 0.9, 3).tolist(),
        "sky": rng.uniform(0.0, 0.2, 3).tolist(),
    }
    prims: list[dict] = []
    phrases: list[str] = []
    names = list(_COLOUR_NAMES)
    for obj in range(int(rng.integers(2, 5))):
        kind = str(rng.choice(["rigid", "articulated", "nonrigid"]))
        cname = names[int(rng.integers(len(names)))]
        colour = list(_COLOUR_NAMES[cname])
        z = float(rng.uniform(3.5, 6.5))
        centre = np.array([rng.uniform(-0.45, 0.45) * z, rng.uniform(-0.1, 0.15) * z, z])
        v = rule.velocity(rng, cname, rng.uniform(-1.0, 1.0, 3) * np.array([1.0, 0.4, 0.8]))
        v = v * motion_scale
        size = rule.size(float(rng.uniform(0.35, 0.8)))
        if kind == "articulated":
            half = (size, size * 0.6, size * 0.6)
            hinge = centre + np.array([half[0], -half[1], 0.0])
            arm_half = (size * 0.9, size * 0.2, size * 0.2)
            arm_c = hinge + np.array([arm_half[0], 0.0, 0.0])
            mot = {"kind": kind, "velocity": v.tolist(), "hinge": hinge.tolist(),
                   "swing": float(rng.uniform(0.5, 1.2) * rng.choice([-1, 1]))}
            prims.append({"kind": "box", "centre": centre.tolist(), "half": half, "color": colour,
                          "object": obj, "part": 0, "motion": mot})
            prims.append({"kind": "box", "centre": arm_c.tolist(), "half": arm_half,
                          "color": (np.asarray(colour) * 0.6).tolist(), "object": obj, "part": 1, "motion": mot})
            phrases.append(f"{_a(cname)} box {_direction_words(v)} while its arm swings on a hinge")
            continue
        shape = str(rng.choice(["sphere", "box"]))
        if kind == "rigid":
            mot = {"kind": kind, "velocity": v.tolist(), "spin": float(rng.uniform(-2.0, 2.0))}
            what = f"{_direction_words(v)} and spins"
        else:
            mot = {"kind": kind, "velocity": (v * 0.4).tolist(), "amp": float(rng.uniform(0.1, 0.25)),
                   "twist": float(rng.uniform(-1.0, 1.0))}
            what = "wobbles and twists out of shape"
        prim = {"kind": shape, "centre": centre.tolist(), "color": colour, "object": obj, "part": 0,
                "motion": mot}
        if shape == "sphere":
            prim["radius"] = size
        else:
            prim["half"] = (size * 0.8, size * 0.8, size * 0.8)
        prims.append(prim)
        phrases.append(f"{_a(cname)} {shape} {what}")
    return scene, prims, phrases


def make_synthetic_sample(index: int = 0, *, seed: int = 0, height: int = 64, width: int = 96, frames: int = 17,
                          sample_id: Optional[str] = None, novel_view: str = "orbit_left",
                          motion_scale: float = 1.0, objects: Optional[ObjectRule] = None) -> SyntheticSample:
    """Generate scene ``index`` of the stream seeded by ``seed`` (deterministic in (seed, index)).

    ``motion_scale`` multiplies every object's translation over the clip (metres; 1 = up to about 1 m) after all
    random draws, so scenes differ from the unscaled stream only in how far the objects travel. ``objects``: an
    :class:`ObjectRule` for the objects' directions and sizes (default: the random draws).

    Shapes: coords (frames, height*width, 3); colours 0..255; see :class:`SyntheticSample`.
    """
    require(height >= 2 and width >= 2, f"synthetic: height and width must be >= 2, got {height}x{width}")
    require(frames >= 1, f"synthetic: frames must be >= 1, got {frames}")
    rng = np.random.default_rng([int(seed), int(index)])
    require(math.isfinite(motion_scale) and motion_scale >= 0,
            f"synthetic: motion_scale must be a finite number >= 0, got {motion_scale}")
    rule = objects if objects is not None else ObjectRule()
    scene, prims, phrases = _random_scene(rng, rule, float(motion_scale))
    fov = float(rng.uniform(50.0, 70.0))
    K = K_from_fov(fov, width, height, dtype=torch.float64).numpy()
    v, u = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    dirs = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1).reshape(-1, 3)
    t_hit, idx = _ray_cast(dirs, prims, scene["wall_z"], scene["floor_y"])
    p0 = dirs * t_hit[:, None]
    colors01 = _texture(p0, idx, prims, scene)
    coords = np.repeat(p0[None], frames, axis=0)
    for i in range(1, frames):
        s = i / max(frames - 1, 1)
        for k, prim in enumerate(prims):
            m = idx == k
            if m.any():
                coords[i, m] = _move(p0[m], prim, s)
    coords = coords.astype(np.float32)
    colors255 = np.rint(colors01 * 255.0).astype(np.float32)

    pts = torch.from_numpy(coords)
    col = torch.from_numpy(colors255 / 255.0)
    Kt = torch.from_numpy(K).float()
    cam = CameraPath(c2w=torch.eye(4).expand(frames, 4, 4).clone(), K=Kt.expand(frames, 3, 3).clone(),
                     width=width, height=height, name="first_camera")
    src = render_points(pts, col, cam, background=tuple(scene["sky"]), backend="torch")
    index_map = src.extras["point_index"].reshape(frames, -1).long()
    vis = np.zeros((frames, height * width), dtype=bool)
    for i in range(frames):
        hit = index_map[i][index_map[i] >= 0].numpy()
        vis[i, hit] = True
    if novel_view == "source":
        nov = render_points(pts, col, cam, background=(0.0, 0.0, 0.0), backend="torch")
    else:
        novel = make_camera_path(novel_view, frames, width, height, points0=pts[0], K=Kt, angle_deg=15.0)
        nov = render_points(pts, col, novel, background=(0.0, 0.0, 0.0), backend="torch")
    sid = sample_id or f"synth{int(seed)}_{int(index):06d}"
    caption = "In front of a patterned wall, " + ", ".join(phrases[:-1]) + (
        " and " if len(phrases) > 1 else "") + phrases[-1] + "."
    meta = {"K": K.tolist(), "fov_x_deg": fov, "scene": scene, "objects": prims, "seed": int(seed),
            "index": int(index), "novel_view": novel_view, "motion_scale": float(motion_scale), **rule.describe()}
    return SyntheticSample(id=sid, caption=caption, coords=coords, colors=colors255, vis=vis,
                           video=src.rgb.numpy(), render=nov.rgb.numpy(),
                           mask=np.repeat(nov.holes.numpy()[..., None], 3, -1), K=K.astype(np.float32),
                           height=height, width=width, meta=meta)


def write_sample_files(sample: SyntheticSample, folder: str | os.PathLike, *, torch_pkl: bool = False,
                       fps: float = 8.0) -> list[Path]:
    """Write one sample's TrajScene files (plus ``<id>_meta.json``) into ``folder``; returns the paths.

    ``torch_pkl=True`` stores the pkl values as torch tensors (pickled with :func:`pickle.dump`), as
    some TrajScene files do; otherwise numpy arrays.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base = folder / sample.id
    data = {"coords": sample.coords, "colors": sample.colors, "vis": sample.vis}
    if torch_pkl:
        data = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in data.items()}
    paths = [write_mp4(sample.video, f"{base}.mp4", fps=fps)]
    Path(f"{base}.txt").write_text(sample.caption + "\n", encoding="utf-8")
    with open(f"{base}_dt3d_pred.pkl", "wb") as fh:
        pickle.dump(data, fh, protocol=4)
    paths += [Path(f"{base}.txt"), Path(f"{base}_dt3d_pred.pkl")]
    paths.append(write_mp4(sample.render, f"{base}_dt3d_render.mp4", fps=fps))
    paths.append(write_mp4(sample.mask, f"{base}_mask_render.mp4", fps=fps))
    Path(f"{base}_meta.json").write_text(json.dumps(sample.meta), encoding="utf-8")
    paths.append(Path(f"{base}_meta.json"))
    return paths


def write_synthetic_dataset(out: str | os.PathLike, count: int, *, height: int = 64, width: int = 96,
                            frames: int = 17, seed: int = 0, tar: bool = False, per_archive: int = 50,
                            torch_pkl_ids: tuple[int, ...] = (), compresslevel: int = 1,
                            novel_view: str = "orbit_left", motion_scale: float = 1.0,
                            objects: Optional[ObjectRule] = None) -> list[Path]:
    """Generate ``count`` samples into ``out``: flat files, or range ``.tar.gz`` archives with ``tar=True``.

    Returns the written sample folders' files (folder mode) or the archive paths (tar mode).
    ``torch_pkl_ids``: sample indices whose pkl holds torch tensors instead of numpy arrays.
    ``compresslevel``: gzip level of the archives (1 = fast; float trajectories barely compress).
    The other arguments are :func:`make_synthetic_sample`'s.
    """
    require(count >= 1, f"synthetic: count must be >= 1, got {count}")
    require(per_archive >= 1, f"synthetic: per_archive must be >= 1, got {per_archive}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if not tar:
        for i in range(count):
            s = make_synthetic_sample(i, seed=seed, height=height, width=width, frames=frames,
                                      novel_view=novel_view, motion_scale=motion_scale, objects=objects)
            written += write_sample_files(s, out, torch_pkl=i in torch_pkl_ids)
        return written
    for start in range(0, count, per_archive):
        stop = min(start + per_archive, count)
        final = out / f"{start:06d}-{stop - 1:06d}.tar.gz"
        with tempfile.TemporaryDirectory(dir=out) as tmp:
            names: list[Path] = []
            for i in range(start, stop):
                s = make_synthetic_sample(i, seed=seed, height=height, width=width, frames=frames,
                                      novel_view=novel_view, motion_scale=motion_scale, objects=objects)
                names += write_sample_files(s, tmp, torch_pkl=i in torch_pkl_ids)
            part = Path(tmp) / "archive.tar.gz"
            with tarfile.open(part, "w:gz", compresslevel=compresslevel) as tf:
                for p in names:
                    tf.add(p, arcname=p.name)
            os.replace(part, final)
        written.append(final)
    return written


def main(argv: Optional[list[str]] = None, *, prog: str = "python -m training.datasets.synthetic",
         description: str = "Write seeded synthetic 4D scenes in the TrajScene-60K layout.",
         objects: Optional[ObjectRule] = None, **defaults) -> int:
    """The generator's command line; ``objects`` and ``defaults`` (flag defaults by destination) make a variant
    of it for another world (:mod:`training.nano.data`)."""
    ap = argparse.ArgumentParser(prog=prog, description=description,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--count", type=int, default=4)
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--width", type=int, default=96)
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--motion-scale", type=float, default=1.0,
                    help="multiplies how far objects travel over the clip (1: up to about 1 m)")
    ap.add_argument("--novel-view", default="orbit_left",
                    help="camera preset of the _dt3d_render/_mask_render pair, or 'source' (same view as the video)")
    ap.add_argument("--tar", action="store_true", help="write range .tar.gz archives instead of flat files")
    ap.add_argument("--per-archive", type=int, default=50, help="samples per archive with --tar (official 50)")
    ap.set_defaults(**defaults)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        paths = write_synthetic_dataset(args.out, args.count, height=args.height, width=args.width,
                                        frames=args.frames, seed=args.seed, tar=args.tar,
                                        per_archive=args.per_archive, novel_view=args.novel_view,
                                        motion_scale=args.motion_scale, objects=objects)
    except MoGe4DInputError as exc:
        ap.error(str(exc))
    print(f"wrote {args.count} samples ({len(paths)} files) to {args.out} in {time.perf_counter() - t0:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
