"""Small text formatters shared by the guide and the ``dialsum plan`` printers.

One place for how a byte count, a share, a yes/no and a precision read, so the guide and
the plan command print the same numbers the same way.
"""

from __future__ import annotations

_GIB = 2**30

TRAIN_CATEGORIES: tuple[str, ...] = (
    "weights",
    "gradients",
    "optimizer_state",
    "activations",
    "temporaries",
)
"""Training breakdown rows, in the order a reader adds them up."""

PRECISION_LABELS: dict[str, str] = {
    "fp32": "fp32",
    "bf16": "bf16 mixed",
    "fp16": "fp16 mixed",
    "pure_bf16": "pure bf16",
}


def gib(n_bytes: int) -> float:
    """Bytes -> GiB (binary, as PyTorch and the planner count)."""
    return n_bytes / _GIB


def gib_text(n_bytes: int) -> str:
    return f"{gib(n_bytes):.2f}"


def percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def yes_no(value: bool) -> str:
    return "yes" if value else "no"
