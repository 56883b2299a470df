"""Atomic file writes: a reader (or a crash) never sees half a file, and an existing file
is only replaced once the new one is complete.

Write to a temp file in the same folder (same file system, so ``os.replace`` is atomic),
flush and fsync, give it the permissions a plain ``open()`` would have given (``mkstemp``
creates 0600 files), then rename it over the target. On any error the temp file is removed
and the target is left as it was.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def target_mode(path: Path) -> int:
    """The existing file's mode, else 0666 minus the umask."""
    if path.exists():
        return stat.S_IMODE(path.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def staged_path(path: Path, suffix: str = ".tmp") -> Path:
    """An empty temp file next to ``path`` (for writers that want a file name)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(tmp)


def commit(tmp: Path, path: Path) -> None:
    """Move a finished temp file into place with the target's permissions."""
    os.chmod(tmp, target_mode(path))
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """``open()`` that writes ``path`` atomically; ``mode`` is ``"w"`` or ``"wb"``."""
    target = Path(path)
    tmp = staged_path(target)
    try:
        with open(tmp, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        commit(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
