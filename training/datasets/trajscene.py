"""Reader for TrajScene-60K as published (reference ``moge4d_official.md`` F): range ``.tar.gz``
archives (or their extracted folders) holding, per sample ``<id>``:

``<id>.mp4`` (source video), ``<id>.txt`` (caption), ``<id>_dt3d_pred.pkl`` (DELTA trajectories:
``coords (T,N,3)``, ``colors (N,3)`` 0..255, ``vis (T,N)``; numpy arrays or torch tensors),
``<id>_dt3d_render.mp4``, ``<id>_mask_render.mp4`` (and ``_mask_render_binary.npy``, unused).

Archives are read with the standard library :mod:`tarfile`: the member list of each archive is
indexed once (at construction), and a sample's members are read on demand through
``TarFile.extractfile`` (nothing is extracted to disk except one member at a time into a temporary
file for the pickle / video decoders, which take paths). A gzip stream has no random access, so
reading a member decompresses the archive from its start (or from the last member read, when reading
forward: the last archive stays open per process, so iterating in order is a single pass). For
shuffled training, extract the archives once and point the dataset at the folder (same layout, same
results).

Each item is a :class:`~training.datasets.samples.TrajSceneSample` built by
:func:`~training.datasets.samples.prepare_sample` (49 frames truncate / repeat last, centre crop
384x512 -> 368x512, official-spec normalised ``delta_hat``, control colours). The pickle is
unpickled restrictedly (:func:`moge4d_core.io.load_pickle`) unless ``allow_unsafe_pickle=True``.

Skip rule (official ``skip_large_depth``): with ``skip_large_coords=True`` a sample whose raw
``coords.max() > 500`` is skipped: :meth:`TrajSceneDataset.load` returns None and records the id and
reason in :attr:`TrajSceneDataset.skipped`; ``dataset[i]`` then returns the next valid sample
(i+1, i+2, ... wrapping; the official code picks a random one) so a DataLoader keeps going.

Errors (:class:`MoGe4DInputError`) name the archive and member (``archive.tar.gz::member``) or the
file: unreadable archive, corrupt member, pickle with wrong shapes, missing caption file.
"""
from __future__ import annotations

import os
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np
import torch

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.io import load_pickle, read_video_frames, trajectories_from_dict

from .samples import (COORD_LIMIT, OFFICIAL_CROP, OFFICIAL_FRAMES, TrajSceneSample, exceeds_coordinate_limit,
                      fit_frames, prepare_sample)

__all__ = ["TrajSceneDataset", "ARCHIVE_SUFFIXES", "split_member_name"]

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
# longest suffix first so "<id>_dt3d_render.mp4" is not taken for "<id>.mp4"
_KINDS = (("_mask_render_binary.npy", "mask_npy"), ("_dt3d_render.mp4", "render"), ("_mask_render.mp4", "mask"),
          ("_dt3d_pred.pkl", "pkl"), (".mp4", "video"), (".txt", "caption"))
_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


def split_member_name(name: str) -> Optional[tuple[str, str]]:
    """``"dir/<id>_dt3d_pred.pkl"`` -> (``"dir/<id>"``, ``"pkl"``); None for unrelated files."""
    for suffix, kind in _KINDS:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], kind
    return None


@dataclass
class _Entry:
    id: str
    archive: Optional[Path]                       # None: loose files
    members: dict = field(default_factory=dict)   # kind -> tarfile.TarInfo (archive) or Path (folder)

    def where(self, kind: str) -> str:
        m = self.members.get(kind)
        if self.archive is None:
            if m is not None:
                return str(m)
            return str(Path(self.members["pkl"]).parent / f"{self.id}{dict((k, s) for s, k in _KINDS)[kind]}")
        name = m.name if m is not None else f"{self.id}{dict((k, s) for s, k in _KINDS)[kind]}"
        return f"{self.archive}::{name}"


class TrajSceneDataset(torch.utils.data.Dataset):
    """TrajScene-60K samples from ``root``: a range archive, or a folder of archives and/or loose files.

    Args:
        root: a ``.tar.gz`` / ``.tgz`` / ``.tar`` archive, or a folder searched recursively for such
            archives and for ``*_dt3d_pred.pkl`` files (with their sibling ``<id>.txt`` etc.).
        frames: frames per sample (official 49): truncate, or pad by repeating the last frame.
        crop: centre crop (h, w) of the point grid (official (368, 512)); None keeps the full grid.
        grid: (H, W) of the point grid in the pkl (N == H*W, row-major); None = the DELTA grid 384x512.
        allow_unsafe_pickle: unpickle without restriction (only for trusted files).
        skip_large_coords: apply the official ``coords.max() > coord_limit`` skip rule.
        coord_limit: threshold of that rule (official 500).
        load_video / load_render: also decode ``<id>.mp4`` / the render and mask videos (required
            to exist when asked for).
        video_stride: keep every n-th source frame (official STraG uses 2 for its RGB frames).
        sanitize: NaN / inf point positions are replaced by the point's frame-0 position and marked
            not visible (:func:`moge4d_core.io.trajectories_from_dict`); by default they raise.
    """

    def __init__(self, root: Union[str, os.PathLike], *, frames: int = OFFICIAL_FRAMES,
                 crop: Optional[tuple[int, int]] = OFFICIAL_CROP, grid: Optional[tuple[int, int]] = None,
                 allow_unsafe_pickle: bool = False, skip_large_coords: bool = True,
                 coord_limit: float = COORD_LIMIT, load_video: bool = False, load_render: bool = False,
                 video_stride: int = 1, sanitize: bool = False) -> None:
        self.root = Path(root)
        if int(frames) < 1:
            raise MoGe4DInputError(f"TrajSceneDataset: frames must be >= 1, got {frames}")
        if crop is not None and (len(crop) != 2 or min(crop) < 1):
            raise MoGe4DInputError(f"TrajSceneDataset: crop must be (h, w) with positive sizes or None, got {crop}")
        if video_stride < 1:
            raise MoGe4DInputError(f"TrajSceneDataset: video_stride must be >= 1, got {video_stride}")
        self.frames, self.crop, self.grid = int(frames), (None if crop is None else tuple(crop)), grid
        self.allow_unsafe_pickle = allow_unsafe_pickle
        self.skip_large_coords, self.coord_limit = skip_large_coords, float(coord_limit)
        self.load_video, self.load_render, self.video_stride = load_video, load_render, video_stride
        self.sanitize = sanitize
        self.skipped: dict[str, str] = {}
        self._handle: Optional[tuple] = None
        self._entries = self._index()
        if not self._entries:
            raise MoGe4DInputError(
                f"{self.root}: no TrajScene samples found (expected range .tar.gz archives or folders with "
                "<id>_dt3d_pred.pkl, <id>.txt, <id>.mp4 files)")

    # ------------------------------------------------------------------ indexing
    def _index(self) -> list[_Entry]:
        if not self.root.exists():
            raise MoGe4DInputError(f"{self.root}: not found (expected a TrajScene folder or .tar.gz archive)")
        if self.root.is_file():
            if not self.root.name.endswith(ARCHIVE_SUFFIXES):
                raise MoGe4DInputError(f"{self.root}: not a .tar.gz / .tgz / .tar archive nor a folder")
            return self._index_archive(self.root)
        entries: list[_Entry] = []
        for path in sorted(p for p in self.root.rglob("*") if p.is_file() and p.name.endswith(ARCHIVE_SUFFIXES)):
            entries += self._index_archive(path)
        loose: dict[str, _Entry] = {}
        for path in sorted(p for p in self.root.rglob("*") if p.is_file()):
            split = split_member_name(str(path))
            if split is None:
                continue
            stem, kind = split
            e = loose.setdefault(stem, _Entry(id=Path(stem).name, archive=None))
            e.members[kind] = path
        entries += [e for e in loose.values() if "pkl" in e.members]
        return entries

    @staticmethod
    def _index_archive(path: Path) -> list[_Entry]:
        groups: dict[str, _Entry] = {}
        try:
            with tarfile.open(path, "r:*") as tf:
                for info in tf.getmembers():
                    if not info.isfile():
                        continue
                    split = split_member_name(info.name)
                    if split is None:
                        continue
                    stem, kind = split
                    e = groups.setdefault(stem, _Entry(id=stem.rsplit("/", 1)[-1], archive=path))
                    e.members[kind] = info
        except _READ_ERRORS as exc:
            raise MoGe4DInputError(f"{path}: cannot read the archive's member list ({type(exc).__name__}: "
                                   f"{exc}); the file may be truncated or not a tar.gz") from None
        return [e for e in groups.values() if "pkl" in e.members]

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self._entries)

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self._entries]

    def __getitem__(self, index: int) -> TrajSceneSample:
        n = len(self._entries)
        if not -n <= index < n:
            raise IndexError(f"TrajSceneDataset index {index} out of range for {n} samples")
        index %= n
        for k in range(n):
            sample = self.load((index + k) % n)
            if sample is not None:
                return sample
        raise MoGe4DInputError(f"{self.root}: every sample was skipped by the coords.max() > {self.coord_limit:g} "
                               f"rule ({len(self.skipped)} skipped)")

    def __iter__(self) -> Iterator[TrajSceneSample]:
        """Valid samples in order; skipped ones are left out (and listed in :attr:`skipped`)."""
        for i in range(len(self._entries)):
            s = self.load(i)
            if s is not None:
                yield s

    def load(self, index: int) -> Optional[TrajSceneSample]:
        """Sample ``index``, or None when the skip rule rejects it (recorded in :attr:`skipped`)."""
        e = self._entries[index]
        if e.archive is None:
            return self._build(e, _FolderReader(e))
        try:
            return self._build(e, _TarReader(e, self._archive(e.archive)))
        except BaseException:
            self.close()           # a failed read may leave the stream mid-member
            raise

    def _archive(self, path: Path) -> tarfile.TarFile:
        """The open archive, kept between items (per process) so in-order reads only go forward."""
        key = (os.getpid(), path)
        if self._handle is not None and self._handle[0] == key:
            return self._handle[1]
        self.close()
        try:
            tf = tarfile.open(path, "r:*")
        except _READ_ERRORS as exc:
            raise MoGe4DInputError(f"{path}: cannot open the archive ({exc})") from None
        self._handle = (key, tf)
        return tf

    def close(self) -> None:
        """Close the archive kept open by the last read (also done when pickled for DataLoader workers)."""
        if self._handle is not None:
            if self._handle[0][0] == os.getpid():
                self._handle[1].close()
            self._handle = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handle"] = None
        return state

    def _build(self, e: _Entry, reader: "_Reader") -> Optional[TrajSceneSample]:
        if "caption" not in e.members:
            raise MoGe4DInputError(f"{e.where('caption')}: missing caption file for sample {e.id!r}; every "
                                   "TrajScene sample needs <id>.txt next to <id>_dt3d_pred.pkl")
        pkl_where = e.where("pkl")
        data = reader.with_file("pkl", ".pkl", lambda p: load_pickle(p, allow_unsafe=self.allow_unsafe_pickle))
        h, w = self.grid if self.grid is not None else (None, None)
        traj = trajectories_from_dict(data, source=pkl_where, height=h, width=w, sanitize=self.sanitize)
        if self.skip_large_coords and exceeds_coordinate_limit(traj.points, self.coord_limit):
            self.skipped[e.id] = (f"{pkl_where}: coords.max() = {float(traj.points.max()):.4g} > "
                                  f"{self.coord_limit:g}")
            return None
        raw = reader.read_bytes("caption")
        try:
            caption = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise MoGe4DInputError(f"{e.where('caption')}: caption is not UTF-8 text") from None
        t = traj.points.shape[0]
        pts = traj.points.reshape(t, traj.height, traj.width, 3)
        col = traj.colors.reshape(traj.height, traj.width, 3)
        vis = None if traj.visibility is None else traj.visibility.reshape(t, traj.height, traj.width)
        sample = prepare_sample(pts, col, vis, sample_id=e.id, caption=caption, frames=self.frames,
                                crop=self.crop, source=pkl_where)
        if self.load_video:
            sample.video = self._video(e, reader, "video", self.video_stride)
        if self.load_render:
            sample.render = self._video(e, reader, "render", 1)
            mask = self._video(e, reader, "mask", 1)
            sample.mask = mask.float().mean(-1) > 127.5
        return sample

    def _video(self, e: _Entry, reader: "_Reader", kind: str, stride: int) -> torch.Tensor:
        if kind not in e.members:
            raise MoGe4DInputError(f"{e.where(kind)}: missing video for sample {e.id!r}")
        frames = reader.with_file(kind, ".mp4", lambda p: read_video_frames(p, stride=stride))
        return fit_frames(torch.from_numpy(np.ascontiguousarray(frames)), self.frames)


class _Reader:
    def __init__(self, e: _Entry) -> None:
        self.e = e

    def read_bytes(self, kind: str) -> bytes:
        raise NotImplementedError

    def with_file(self, kind: str, suffix: str, fn):
        raise NotImplementedError


class _FolderReader(_Reader):
    def read_bytes(self, kind: str) -> bytes:
        return Path(self.e.members[kind]).read_bytes()

    def with_file(self, kind: str, suffix: str, fn):
        return fn(self.e.members[kind])


class _TarReader(_Reader):
    def __init__(self, e: _Entry, tf: tarfile.TarFile) -> None:
        super().__init__(e)
        self.tf = tf

    def read_bytes(self, kind: str) -> bytes:
        info = self.e.members[kind]
        try:
            fh = self.tf.extractfile(info)
            if fh is None:
                raise tarfile.TarError("not a regular file")
            data = fh.read()
        except _READ_ERRORS as exc:
            raise MoGe4DInputError(f"{self.e.where(kind)}: corrupt archive member ({type(exc).__name__}: {exc}); "
                                   "re-download or re-create the archive") from None
        if len(data) != info.size:
            raise MoGe4DInputError(f"{self.e.where(kind)}: corrupt archive member (read {len(data)} of "
                                   f"{info.size} bytes)")
        return data

    def with_file(self, kind: str, suffix: str, fn):
        data = self.read_bytes(kind)
        fd, tmp = tempfile.mkstemp(suffix=suffix, prefix="trajscene_")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            try:
                return fn(tmp)
            except MoGe4DInputError as exc:
                msg = str(exc).replace(tmp, "")
                raise MoGe4DInputError(f"{self.e.where(kind)}: corrupt or invalid member: {msg.lstrip(': ')}") from None
        finally:
            os.unlink(tmp)
