from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from dialsum.atomic import atomic_open


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
