"""What ``main`` does around typer: the seed's bare ``--resume`` and usage errors.

Usage errors of the (vendored) click that typer runs on print the usage line, the error
and the close match click suggests, and exit 2: never a traceback.
"""

from __future__ import annotations

import typer

from dialsum.cli.printers import err_console

# The ClickException class of the click typer vendors (typer does not export it).
USAGE_ERRORS = tuple(
    {cls for cls in typer.BadParameter.__mro__ if cls.__name__ == "ClickException"}
)


def bare_resume(args: list[str]) -> list[str]:
    """``--resume`` with no value means the latest run (the seed's spelling)."""
    out = list(args)
    for i, arg in enumerate(out):
        if arg == "--resume" and (i + 1 == len(out) or out[i + 1].startswith("-")):
            out.insert(i + 1, "latest")
            break
    return out


def show_usage_error(exc, args: list[str]) -> None:
    """Click's message; errors raised before a command context exists (an option missing
    its value) get the usage line here, so every usage error shows one."""
    if getattr(exc, "ctx", None) is None and getattr(exc, "exit_code", 1) == 2:
        verb = next((a for a in args if not a.startswith("-")), "")
        command = f"dialsum {verb}".strip()
        err_console.print(
            f"Usage: {command} [OPTIONS]\nTry '{command} --help' for help.\n",
            markup=False,
            soft_wrap=True,
        )
    exc.show()
