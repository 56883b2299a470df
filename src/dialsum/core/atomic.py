"""Atomic file writes: a reader (or a crash) never sees half a file, and an existing file
is only replaced once the new one is complete.

Write to a temp file in the same folder (same file system, so ``os.replace`` is atomic),
flush and fsync, give it the permissions a plain ``open()`` would have given, rename it over
the target, then fsync the folder so the rename itself survives a power loss (POSIX keeps
a rename in the folder's metadata, not in the file). On any error the temp file is removed
and the target is left as it was.

The temp file is created with ``os.open(..., 0o666)``, so the kernel applies the umask as
for any new file: no need to read the umask with ``os.umask`` (which sets it, briefly, for
every thread of the process) and no 0600 file as ``mkstemp`` makes.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

_NEW_FILE_MODE = 0o666  # what open() asks for; the kernel removes the umask bits
_TEMP_ATTEMPTS = 100
# Folder fsync is refused by some file systems (some network and FUSE mounts); the data is
# written and renamed by then, so durability is best effort there, not an error.
_DIR_FSYNC_UNSUPPORTED = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF}


def staged_path(path: Path, suffix: str = ".tmp") -> Path:
    """An empty temp file next to ``path``, with a new file's permissions (umask applied)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return _new_temp(path.parent, path.name, suffix)


def _new_temp(folder: Path, name: str, suffix: str) -> Path:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(_TEMP_ATTEMPTS):
        tmp = folder / f".{name}.{secrets.token_hex(4)}{suffix}"
        try:
            fd = os.open(tmp, flags, _NEW_FILE_MODE)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(errno.EEXIST, f"no free temp file name in {folder}")


def write_problem(path: Path) -> str | None:
    """Why ``atomic_open(path)`` would fail, or None; checks without writing ``path``.

    Creates (and removes) a probe file in the folder the write would create files in, or
    in its nearest existing parent when folders are still to be made: permission bits
    alone do not say what a read-only mount, an ACL or root would allow.
    """
    if path.is_dir():
        return f"{path} is a directory"
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is a file, so nothing can be created under it"
    try:
        _new_temp(folder, path.name, ".probe").unlink()
    except OSError as exc:
        return f"cannot create files in {folder} ({exc.strerror or exc})"
    return None


def fsync_dir(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` durable (POSIX; a no-op elsewhere)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _DIR_FSYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(tmp: Path, path: Path) -> None:
    """Move a finished temp file into place, durably, keeping an existing file's mode.

    A new target keeps the temp file's own mode: created like any new file, it already
    has what ``open()`` would have given.
    """
    if path.exists():
        os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
    _fsync_file(tmp)  # data on disk before the rename makes it visible
    os.replace(tmp, path)
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """``open()`` that writes ``path`` atomically; ``mode`` is ``"w"`` or ``"wb"``."""
    target = Path(path)
    tmp = staged_path(target)
    try:
        with open(tmp, mode, **kwargs) as handle:
            yield handle
        commit(tmp, target)  # fsyncs the closed file, renames, fsyncs the folder
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
