"""What the guide shows for one section, computed before anything is written.

``report.guide`` computes a ``SectionGuide`` per section; ``report.markdown``,
``report.snippets`` and ``report.plots`` draw it. Kept apart so the renderers need not
import the module that calls them.
"""

from __future__ import annotations

from dataclasses import dataclass

from dialsum.core.config_schema import SectionConfig
from dialsum.memory.overheads import Overheads
from dialsum.memory.plan import Plan
from dialsum.report.facts import ModelFacts
from dialsum.report.time_side import SectionTimes
from dialsum.speed.gpus import GPU
from dialsum.trace.profile import MemoryProfile


@dataclass
class SectionGuide:
    """Everything the guide shows for one section (computed before anything is written)."""

    name: str
    cfg: SectionConfig
    facts: ModelFacts
    overheads: Overheads
    plans: dict[str, Plan]
    errors: dict[str, str]
    """GPU slug -> why no plan exists (e.g. a precision the GPU lacks)."""
    gpus: list[GPU]
    curves: dict[str, list[tuple[int, int]]]
    """Precision -> [(micro-batch, required bytes incl. overheads)] for the plot."""
    breakdowns: dict[str, MemoryProfile]
    """Precision -> training profile at micro-batch 1."""
    times: SectionTimes | None = None
    """Epoch time vs micro-batch per GPU, and the old guide's settings next to the plan's."""
