"""Outputs that cost minutes to compute (generated summaries): check the path before the
work, and never lose the work to a write that fails after it.

``require_writable`` runs before the model loads, so a typo in ``--output`` costs nothing.
A write can still fail later (the folder changed meanwhile, the disk filled up):
``write_or_rescue`` then writes the same content to the first folder that takes it - the
run folder, the output's folder, the current folder, the system temp folder - and stops
with a message that says where it went.
"""

from __future__ import annotations

import errno
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from dialsum.core.atomic import write_problem
from dialsum.core.errors import OutputError, first_line


def require_writable(path: Path, option: str = "--output") -> None:
    """Raise ``OutputError`` naming the problem when ``path`` cannot be written."""
    problem = write_problem(path)
    if problem is not None:
        raise OutputError(
            f"cannot write {option} {path}: {problem}. Choose a file path in a folder you "
            f"can write to (e.g. {option} runs/submission.csv); nothing was generated yet"
        )


def write_or_rescue(
    path: Path, write: Callable[[Path], None], rescue_folders: Sequence[Path], what: str
) -> Path:
    """``write(path)``; if that fails, ``write`` a rescue copy and raise ``OutputError``
    saying where it is. Returns ``path`` when the first write worked."""
    try:
        write(path)
        return path
    except OSError as exc:
        reason = exc.strerror or str(exc)
    for rescue in _rescue_paths(path, rescue_folders):
        try:
            write(rescue)
        except OSError:
            continue
        raise OutputError(
            f"could not write {path} ({reason}); the {what} were saved to {rescue} instead: "
            "copy that file where you need it"
        )
    raise OutputError(
        f"could not write {path} ({reason}), nor a rescue copy in any of "
        f"{', '.join(str(f) for f in _candidates(path, rescue_folders))}; the {what} are lost"
    )


def _candidates(path: Path, rescue_folders: Sequence[Path]) -> list[Path]:
    folders = [*rescue_folders, path.parent, Path.cwd(), Path(tempfile.gettempdir())]
    return list(dict.fromkeys(f.resolve() for f in folders))


def _rescue_paths(path: Path, rescue_folders: Sequence[Path]):
    # A timestamped name never replaces an earlier rescue or a good file.
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for folder in _candidates(path, rescue_folders):
        if not folder.is_dir():
            continue
        name, n = f"{path.stem}.rescued-{stamp}", 1
        while (folder / f"{name}{path.suffix or '.csv'}").exists():
            n += 1
            name = f"{path.stem}.rescued-{stamp}-{n}"
        yield folder / f"{name}{path.suffix or '.csv'}"


_STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
# safetensors (Rust) reports a full disk in its own exception type, by its io error kind.
_STORAGE_WORDS = ("No space left", "StorageFull", "Disk quota", "QuotaExceeded", "ReadOnly")


def storage_failure(exc: BaseException) -> str | None:
    """Why a write failed when the storage refused it (disk full, quota, read-only,
    permission), else ``None``: an error the user fixes outside the program."""
    if isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    text = str(exc)
    if any(word in text for word in _STORAGE_WORDS):
        return first_line(exc)
    return None


def require_folder_writable(folder: Path, option: str) -> None:
    """``OutputError`` when files cannot be created in (or under) ``folder``: a file in the
    way, no permission, a read-only mount."""
    problem = write_problem(Path(folder) / ".dialsum-write-check")
    if problem is not None:
        raise OutputError(
            f"cannot write in {option} {folder}: {problem}. Choose a folder you can write to "
            "(e.g. --output-dir runs); nothing was written"
        )
