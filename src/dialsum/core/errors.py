"""User-facing errors.

A ``UserError`` is something the user can fix (bad config, bad CSV, missing file).
The CLI prints its message without a traceback and exits with code 2.
"""

from __future__ import annotations


class UserError(Exception):
    """An error caused by user input; the message says what, where, and what to do."""

    exit_code = 2


class ConfigError(UserError):
    """Invalid configuration (unknown key, wrong type, unknown section, ...)."""


class DataError(UserError):
    """Invalid data file (missing column, empty dialogue, duplicate fname, ...)."""


class OutputError(UserError):
    """An output file cannot be written (a folder in the way, no permission, disk full)."""


class RunStopped(Exception):
    """A run stopped on request (SIGTERM) after saving; the message is the one line the
    CLI prints, and the exit code is the signal's (128 + 15)."""

    exit_code = 143


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name when it has none.

    Enough to report an error in one line (and, for an OOM, without keeping the exception,
    whose traceback holds the activations).
    """
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
