"""Output folders written whole: a run builds everything in a temporary folder and then replaces ``--out``.

Every CLI command (``render``, ``generate``, ``demo``) writes through :func:`output_folder`::

    with output_folder(args.out, command="render") as tmp:
        write_mp4(..., tmp / "render_orbit_left.mp4")
    # here args.out holds exactly this run's files plus moge4d_run.json

* The temporary folder ``.<out>.moge4d-new-…`` sits next to ``out`` (same file system, so moving it is a
  rename). Only when the body finished without error is the manifest :data:`MANIFEST` written and the folder
  moved into place; on any error it is deleted and ``out`` stays exactly as it was.
* ``out`` may be missing, an empty folder, or a previous MoGe4D output (it holds :data:`MANIFEST` and no
  file the manifest does not list). A previous output is renamed aside, the new folder renamed in, and the
  old one deleted, so ``out`` never mixes two runs, even after a crash. Any other non-empty folder is refused
  and left untouched (:func:`check_output_folder`), so a user's own files are never deleted.
* Temporary folders left by a killed run (``kill -9``, power loss) of this machine are cleaned up by the next
  run into the same ``out``; a previous output renamed aside by a run that died before moving its new folder
  in is put back.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import json
import os
import shutil
import socket
import uuid
from pathlib import Path
from typing import Iterator, Optional

from ..errors import MoGe4DInputError
from ._atomic import _make_parent, _remove_created

__all__ = ["MANIFEST", "output_folder", "check_output_folder", "check_free_space", "read_manifest"]

MANIFEST = "moge4d_run.json"
MANIFEST_FORMAT = "moge4d-run"
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


def read_manifest(folder: str | os.PathLike) -> Optional[dict]:
    """The parsed :data:`MANIFEST` of ``folder``, or None when it is missing or not ours."""
    path = Path(folder) / MANIFEST
    try:
        if not path.is_file() or path.stat().st_size > 16 * 2 ** 20:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or not isinstance(data.get("files"), list):
        return None
    return data


def _files_under(folder: Path) -> list[str]:
    """Relative POSIX paths of every non-folder entry under ``folder`` (links are not followed)."""
    found = []
    for root, dirs, files in os.walk(folder):
        rel = Path(root).relative_to(folder)
        for name in files + [d for d in dirs if (Path(root) / d).is_symlink()]:
            found.append((rel / name).as_posix())
    return sorted(found)


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_folder(out: str | os.PathLike, what: str = "--out") -> Path:
    """Check that ``out`` can be replaced by a new run without touching anything that is not ours.

    Args:
        out: the output folder (missing, empty, or a previous MoGe4D output).
        what: the option that named it, for messages.

    Returns:
        ``out`` as a Path.

    Raises:
        MoGe4DInputError: ``out`` is a file or a link, a non-empty folder that is not a MoGe4D output, a MoGe4D
            output holding files the run did not write, or its nearest existing parent is not writable.
    """
    out = Path(out)
    if out.is_symlink():
        raise MoGe4DInputError(f"{what} {out}: is a symbolic link; give the real folder, or a new folder name")
    if out.exists():
        if not out.is_dir():
            raise MoGe4DInputError(f"{what} {out}: exists and is not a folder; choose an empty or new folder")
        present = _files_under(out)
        if present:
            manifest = read_manifest(out)
            if manifest is None:
                raise MoGe4DInputError(
                    f"{what} {out}: the folder is not empty and is not a MoGe4D output (no {MANIFEST}); a run "
                    f"replaces its output folder whole, so choose an empty or new folder")
            listed = {str(f) for f in manifest["files"]} | {MANIFEST}
            extra = [f for f in present if f not in listed]
            if extra:
                shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
                raise MoGe4DInputError(
                    f"{what} {out}: this earlier MoGe4D output also holds files it did not write ({shown}); a run "
                    f"replaces its output folder whole, so move them out or choose an empty or new folder")
    base = _existing_ancestor(out.parent)
    if not base.is_dir() or not os.access(base, os.W_OK | os.X_OK):
        raise MoGe4DInputError(f"{what} {out}: cannot create or replace it, {base} is not writable; choose another "
                               f"folder")
    return out


def check_free_space(out: str | os.PathLike, need_bytes: int, what: str = "--out", detail: str = "") -> None:
    """Refuse when the file system of ``out`` has less free space than ``need_bytes``.

    Args:
        out: the output folder (need not exist yet).
        need_bytes: estimated size of the outputs in bytes.
        what: the option that named the folder, for messages.
        detail: how the estimate was made, appended to the message.

    Raises:
        MoGe4DInputError: with both numbers in MiB.
    """
    base = _existing_ancestor(Path(out))
    free = shutil.disk_usage(base).free
    if free < need_bytes:
        mib = 2 ** 20
        raise MoGe4DInputError(
            f"{what} {out}: the outputs need about {need_bytes / mib:.0f} MiB{f' ({detail})' if detail else ''} but "
            f"only {free / mib:.0f} MiB are free on {base}; free some space, choose a folder on another disk, or "
            f"use fewer frames / cameras / a smaller size")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else
        return True
    return True


def _recover_stale(out: Path) -> None:
    """Clean up after runs of this machine into ``out`` that were killed (see the module docstring)."""
    parent = out.parent
    if not parent.is_dir():
        return
    prefix = f".{out.name}.moge4d-"
    for entry in sorted(parent.iterdir()):
        name = entry.name
        if not name.startswith(prefix):
            continue
        parts = name[len(prefix):].split("-")
        if len(parts) != 4 or parts[0] not in ("new", "old") or parts[1] != _HOST or not parts[2].isdigit():
            continue
        if _pid_alive(int(parts[2])):
            continue
        if parts[0] == "old" and not out.exists() and read_manifest(entry) is not None:
            os.rename(entry, out)          # the previous output was renamed aside and nothing replaced it
        else:
            shutil.rmtree(entry, ignore_errors=True)


def _write_manifest(tmp: Path, command: str) -> None:
    data = {
        "format": MANIFEST_FORMAT,
        "version": 1,
        "command": command,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "files": _files_under(tmp),
    }
    (tmp / MANIFEST).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def _temp_name(out: Path, kind: str) -> Path:
    return out.parent / f".{out.name}.moge4d-{kind}-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _swap_in(new: Path, out: Path, what: str) -> None:
    check_output_folder(out, what)   # again: the folder may have changed while the run was working
    if not out.exists():
        os.rename(new, out)
        return
    old = _temp_name(out, "old")
    os.rename(out, old)
    try:
        os.rename(new, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def output_folder(out: str | os.PathLike, *, command: str, what: str = "--out") -> Iterator[Path]:
    """Yield an empty temporary folder; on normal exit it replaces ``out`` whole (see the module docstring).

    Args:
        out: the output folder: missing, empty, or a previous MoGe4D output (else refused, untouched).
        command: what wrote it (recorded in the manifest), e.g. ``"render --camera orbit_left"``.
        what: the option that named ``out``, for messages.

    Yields:
        the temporary folder to write into (same parent as ``out``).

    Raises:
        MoGe4DInputError: ``out`` cannot be replaced (:func:`check_output_folder`), or the disk filled up while
            writing (``out`` is unchanged). Any other error of the body propagates after the clean-up.
    """
    out = check_output_folder(out, what)
    _recover_stale(out)
    created = _make_parent(out)
    new = _temp_name(out, "new")
    try:
        new.mkdir()
        yield new
        _write_manifest(new, command)
        _swap_in(new, out, what)
    except OSError as exc:
        shutil.rmtree(new, ignore_errors=True)
        _remove_created(created)
        if exc.errno == errno.ENOSPC:
            raise MoGe4DInputError(f"{what} {out}: disk full while writing the outputs; nothing was changed in "
                                   f"{out}; free some space or choose a folder on another disk") from None
        raise
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        _remove_created(created)
        raise
