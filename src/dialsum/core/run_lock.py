"""One process per run folder: a lock file that names its owner.

Two processes on one run folder (a ``--resume`` while the run is alive, two resumes)
would write the same checkpoints and state files and corrupt each other. ``run.lock``
holds the owner's PID and host; it is created with ``O_EXCL`` (atomic on local file
systems). A lock whose PID is no longer running on this host is stale (the process was
killed) and is taken over, with a message.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from dialsum.core.errors import UserError

LOCK_NAME = "run.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _read_owner(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # half-written by a process killed at that moment: treat as stale


class RunLock:
    """``with RunLock(run_folder, echo=print):`` - held for the whole run."""

    def __init__(self, folder: Path, echo=print) -> None:
        self.path = Path(folder) / LOCK_NAME
        self.echo = echo
        self._held = False

    def acquire(self) -> None:
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale(me["host"])
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(me, handle)
            self._held = True
            return
        raise UserError(f"{self.path}: could not take the run lock; try again")

    def _take_over_if_stale(self, host: str) -> None:
        owner = _read_owner(self.path)
        pid, owner_host = owner.get("pid"), owner.get("host")
        if isinstance(pid, int) and owner_host == host and _pid_alive(pid):
            raise UserError(
                f"{self.path.parent} is in use by process {pid} (a running train or "
                "--resume). Wait for it to finish or stop it, then resume; two processes on "
                "one run folder would overwrite each other's checkpoints."
            )
        if isinstance(pid, int) and owner_host not in (None, host):
            raise UserError(
                f"{self.path.parent} is locked by process {pid} on host {owner_host}; if "
                f"that run is gone, delete {self.path} and resume again."
            )
        self.echo(f"taking over a stale run lock of process {pid} (no longer running)")
        self.path.unlink(missing_ok=True)

    def release(self) -> None:
        if self._held:
            self.path.unlink(missing_ok=True)
            self._held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
