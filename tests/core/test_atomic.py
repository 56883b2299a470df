from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from dialsum.core.atomic import atomic_open, commit, staged_path


def test_new_file_gets_umask_permissions_not_0600(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    with atomic_open(path) as handle:
        handle.write("x")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert path.read_text() == "x"


def test_failure_leaves_existing_file_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    path.write_text("keep")
    path.chmod(0o640)
    with pytest.raises(RuntimeError), atomic_open(path) as handle:
        handle.write("half")
        raise RuntimeError("boom")
    assert path.read_text() == "keep"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    with atomic_open(path) as handle:
        handle.write("new")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def _umask_now() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_writes_never_touch_the_process_umask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # os.umask sets the umask for every thread: a thread creating a file meanwhile would
    # get a world-writable file. Writing must not call it at all.
    expected = 0o666 & ~_umask_now()

    def forbidden(_mask: int) -> int:
        raise AssertionError("os.umask called while writing a file")

    monkeypatch.setattr(os, "umask", forbidden)
    path = tmp_path / "sub" / "out.txt"
    with atomic_open(path) as handle:
        handle.write("x")
    assert stat.S_IMODE(path.stat().st_mode) == expected
    staged = staged_path(tmp_path / "plot.png", ".png")  # the report's PNG writer
    assert stat.S_IMODE(staged.stat().st_mode) == expected
    commit(staged, tmp_path / "plot.png")
    assert stat.S_IMODE((tmp_path / "plot.png").stat().st_mode) == expected


def test_the_rename_is_made_durable_by_fsyncing_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    with atomic_open(tmp_path / "out.txt") as handle:
        handle.write("x")
    # The data reaches the disk before the rename, and the rename before we return.
    assert events == ["fsync file", "rename", "fsync folder"]
