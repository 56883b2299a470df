"""The old hand-written per-GPU guide users had, read from ``seed_guide.yaml``.

The guide shows what that document claimed next to what is true: its parameter counts
next to the exact ones, and the time its settings cost next to the planned settings. The
claims are project history, so they live as data shipped in the package, not as code.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Any

import yaml


@dataclass(frozen=True)
class SeedSetting:
    """One row of the old guide: a GPU, a model and the batch settings it recommended."""

    gpu_label: str
    """The GPU as the old guide wrote it (e.g. "RTX 3080/4090")."""
    slugs: tuple[str, ...]
    """The catalog GPUs it means."""
    model: str
    micro: int
    accumulation: int


@cache
def _seed_guide() -> dict[str, Any]:
    text = (files("dialsum.report") / "seed_guide.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def param_claims() -> dict[str, str]:
    """Model id -> the parameter count the old guide claimed ("1.2B"), in its order."""
    return dict(_seed_guide()["param_claims"])


def seed_settings() -> tuple[SeedSetting, ...]:
    """The old guide's per-GPU settings, in its order."""
    return tuple(
        SeedSetting(
            row["gpu"], tuple(row["slugs"]), row["model"], row["micro_batch"], row["accumulation"]
        )
        for row in _seed_guide()["settings"]
    )


def effective_batches_text() -> str:
    """The effective batches the old settings gave, as a sentence ("4, 8 and 2")."""
    effective = [s.micro * s.accumulation for s in seed_settings()]
    return ", ".join(map(str, effective[:-1])) + f" and {effective[-1]}"
