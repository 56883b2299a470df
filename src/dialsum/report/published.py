"""Batch settings teams published for the built-in models, read from
``published_settings.yaml``.

The 2025 competition winners and other teams set their batch by hand (e.g. SOLAR-10.7B
QLoRA at batch 2). The guide shows, per GPU, what that setting costs next to the plan:
whether it fits and its epoch time at the section's effective batch. Like the old guide
(``seed_guide``), these are claims from outside the code, kept as data.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib.resources import files

import yaml


@dataclass(frozen=True)
class PublishedSetting:
    """One team's hand-set micro-batch for a model, and where it was published."""

    model: str
    source: str
    recipe: str
    micro: int


@cache
def published_settings() -> tuple[PublishedSetting, ...]:
    text = (files("dialsum.report") / "published_settings.yaml").read_text(encoding="utf-8")
    return tuple(
        PublishedSetting(row["model"], row["source"], row["recipe"], int(row["micro_batch"]))
        for row in yaml.safe_load(text)["settings"]
    )


def published_for(model_id: str) -> tuple[PublishedSetting, ...]:
    return tuple(s for s in published_settings() if s.model == model_id)
