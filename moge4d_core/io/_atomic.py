"""Write-then-rename helpers so that no output file is ever left half-written.

A writer first writes ``.<name>.tmp-<random><suffix>`` in the destination folder (same file system,
so the final :func:`os.replace` is atomic), and renames it only when writing succeeded. On any
error the temporary file is removed and the destination is untouched.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

from ..errors import MoGe4DInputError

__all__ = ["atomic_path", "atomic_dir", "check_output_path"]


def check_output_path(path: str | os.PathLike, what: str) -> Path:
    """Return ``path`` as a Path after checking it is not an existing folder."""
    path = Path(path)
    if path.is_dir():
        raise MoGe4DInputError(f"{what}: output path {path} is an existing folder; give a file name")
    return path


def _make_parent(path: Path) -> list[Path]:
    """Create missing parent folders of ``path``; return those created (deepest last)."""
    created: list[Path] = []
    parent = path.parent
    missing = []
    while not parent.exists():
        missing.append(parent)
        parent = parent.parent
    for folder in reversed(missing):
        folder.mkdir()
        created.append(folder)
    return created


def _remove_created(created: list[Path]) -> None:
    for folder in reversed(created):
        with contextlib.suppress(OSError):
            folder.rmdir()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on normal exit it is renamed onto ``path``.

    The temporary name keeps ``path``'s suffix (some writers pick the format from it). Missing
    parent folders are created, and removed again if the write fails.
    """
    path = Path(path)
    created = _make_parent(path)
    tmp = path.with_name(f".{path.stem}.tmp-{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        _remove_created(created)
        raise


@contextlib.contextmanager
def atomic_dir(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder inside ``folder``; on normal exit its files (at any depth, into the same
    sub-folders) are moved into ``folder``.

    Files are moved only after the body finished without error, so a failure leaves ``folder``
    exactly as it was (a missing ``folder`` is created and removed again). Existing files with the
    same names are replaced. The final moves are renames within one file system, done only after
    every file was written; they are not one atomic step together.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise MoGe4DInputError(f"output folder {folder} exists and is not a folder")
    created = _make_parent(folder / "x")
    tmp = folder / f".tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        for item in sorted(p for p in tmp.rglob("*") if p.is_file()):
            dest = folder / item.relative_to(tmp)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(item, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_created(created)
        raise
    shutil.rmtree(tmp, ignore_errors=True)
