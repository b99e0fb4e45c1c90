"""Output folders are replaced whole: never a mix of two runs, a failure changes nothing, a user's folder is refused."""
import errno
import json
import os
import subprocess
import sys
from collections import namedtuple

import pytest

from moge4d_core.errors import MoGe4DInputError
from moge4d_core.io import output_folder as of
from moge4d_core.io.output_folder import MANIFEST, check_free_space, check_output_folder, output_folder

shutil_usage = namedtuple("usage", "total used free")


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _run(out, files, command="test"):
    with output_folder(out, command=command) as tmp:
        for name, data in files.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)


def _siblings(out):
    return sorted(p.name for p in out.parent.iterdir() if p.name != out.name)


def test_second_run_replaces_the_first_whole(tmp_path):
    out = tmp_path / "out"
    _run(out, {"a.mp4": b"1", "ply/f0.ply": b"p0", "ply/f1.ply": b"p1"})
    _run(out, {"b.mp4": b"2", "ply/f0.ply": b"q0"}, command="second")
    snap = _snapshot(out)
    assert set(snap) == {"b.mp4", "ply/f0.ply", MANIFEST}
    manifest = json.loads(snap[MANIFEST])
    assert manifest["files"] == ["b.mp4", "ply/f0.ply"] and manifest["command"] == "second"
    assert _siblings(out) == []


def test_failure_while_writing_leaves_out_as_it_was(tmp_path):
    out = tmp_path / "out"
    _run(out, {"a.mp4": b"1", "ply/f0.ply": b"p0"})
    before = _snapshot(out)
    with pytest.raises(RuntimeError):
        with output_folder(out, command="x") as tmp:
            (tmp / "a.mp4").write_bytes(b"new")
            raise RuntimeError("crash mid-write")
    assert _snapshot(out) == before and _siblings(out) == []


def test_failure_creates_nothing_when_out_was_missing(tmp_path):
    out = tmp_path / "deep" / "out"
    with pytest.raises(RuntimeError):
        with output_folder(out, command="x") as tmp:
            (tmp / "a").write_bytes(b"1")
            raise RuntimeError
    assert list(tmp_path.iterdir()) == []


def test_disk_full_is_reported_and_changes_nothing(tmp_path):
    out = tmp_path / "out"
    _run(out, {"a.mp4": b"1"})
    before = _snapshot(out)
    with pytest.raises(MoGe4DInputError, match="disk full.*nothing was changed"):
        with output_folder(out, command="x"):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert _snapshot(out) == before and _siblings(out) == []


def test_unrelated_folder_is_refused_and_untouched(tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"mine")
    with pytest.raises(MoGe4DInputError, match="not a MoGe4D output.*empty or new folder"):
        _run(out, {"a.mp4": b"1"})
    assert _snapshot(out) == {"holiday.jpg": b"mine"} and _siblings(out) == []


def test_user_file_added_to_an_earlier_output_is_refused(tmp_path):
    out = tmp_path / "out"
    _run(out, {"a.mp4": b"1", "ply/f0.ply": b"p0"})
    (out / "ply" / "notes.txt").write_bytes(b"mine")
    before = _snapshot(out)
    with pytest.raises(MoGe4DInputError, match=r"did not write \(ply/notes\.txt\)"):
        _run(out, {"b.mp4": b"2"})
    assert _snapshot(out) == before


def test_empty_folder_and_a_file_as_out(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    _run(out, {"a": b"1"})
    assert set(_snapshot(out)) == {"a", MANIFEST}
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(MoGe4DInputError, match="not a folder"):
        check_output_folder(tmp_path / "file")


def test_failed_move_in_puts_the_previous_output_back(tmp_path, monkeypatch):
    out = tmp_path / "out"
    _run(out, {"a.mp4": b"1"})
    before = _snapshot(out)
    real_rename = os.rename

    def rename(src, dst):
        if ".moge4d-new-" in str(src):
            raise OSError(errno.EIO, "simulated failure")
        return real_rename(src, dst)

    monkeypatch.setattr(of.os, "rename", rename)
    with pytest.raises(OSError):
        _run(out, {"b.mp4": b"2"})
    assert _snapshot(out) == before and _siblings(out) == []


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leftovers_of_a_killed_run_are_cleaned_or_restored(tmp_path):
    out = tmp_path / "out"
    _run(out, {"a.mp4": b"1"})
    before = _snapshot(out)
    pid = _dead_pid()
    # killed between "rename the old output aside" and "move the new one in": both folders are left
    old = tmp_path / f".out.moge4d-old-{of._HOST}-{pid}-deadbeef"
    os.rename(out, old)
    new = tmp_path / f".out.moge4d-new-{of._HOST}-{pid}-cafef00d"
    new.mkdir()
    (new / "half.mp4").write_bytes(b"half")
    other = tmp_path / f".out.moge4d-new-{of._HOST}-{os.getpid()}-12345678"   # a live run: kept
    other.mkdir()
    with pytest.raises(RuntimeError):
        with output_folder(out, command="x"):
            raise RuntimeError
    assert _snapshot(out) == before                       # the previous output is back
    assert _siblings(out) == [other.name]


def test_free_space_check_gives_the_numbers(tmp_path, monkeypatch):
    check_free_space(tmp_path / "out", 1)
    monkeypatch.setattr(of.shutil, "disk_usage", lambda p: shutil_usage(total=10 ** 12, used=0, free=10 * 2 ** 20))
    with pytest.raises(MoGe4DInputError, match=r"need about 500 MiB.*only 10 MiB are free"):
        check_free_space(tmp_path / "out", 500 * 2 ** 20)
