"""Peak GPU memory per phase of a run (train / eval / predict), measured against the plan.

Each phase is a window: the allocator's peak counters are reset when it opens and read
when it closes (``torch.cuda.reset_peak_memory_stats``, ``max_memory_allocated``,
``max_memory_reserved`` and ``memory_stats()["active_bytes.all.peak"]``); a phase opened
many times (every training step) keeps its largest window. The train window is one
optimizer step (``monitor.MemoryMonitorCallback``), the eval window one ``evaluate()``
(``GuardedSeq2SeqTrainer``), the predict window the whole ``predict`` pass.

The plan (``plan.json``) predicts for each phase the peak of live tensors and what the
allocator needs for it (peak + fragmentation + library workspaces): measured allocated
and active peaks are compared with the first, the reserved peak with the second, each as
measured / predicted. Without CUDA (a CPU run) nothing is measured and the summary says so.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

PHASES: tuple[str, ...] = ("train", "eval", "predict")
NOT_MEASURED = "no GPU: not measured"
_GIB = 2**30


@dataclass(frozen=True)
class PhasePeak:
    max_allocated_bytes: int
    max_reserved_bytes: int
    active_peak_bytes: int

    def max(self, other: PhasePeak | None) -> PhasePeak:
        if other is None:
            return self
        return PhasePeak(
            max(self.max_allocated_bytes, other.max_allocated_bytes),
            max(self.max_reserved_bytes, other.max_reserved_bytes),
            max(self.active_peak_bytes, other.active_peak_bytes),
        )

    def to_json(self) -> dict[str, int]:
        return {
            "max_allocated_bytes": self.max_allocated_bytes,
            "max_reserved_bytes": self.max_reserved_bytes,
            "active_peak_bytes": self.active_peak_bytes,
        }


class CudaPeakCounters:
    """The allocator's peak counters of the current CUDA device (tests pass a fake)."""

    def reset(self) -> None:
        import torch

        torch.cuda.reset_peak_memory_stats()

    def read(self) -> PhasePeak:
        import torch

        active = int(torch.cuda.memory_stats().get("active_bytes.all.peak", 0))
        return PhasePeak(
            int(torch.cuda.max_memory_allocated()), int(torch.cuda.max_memory_reserved()), active
        )


class PhasePeaks:
    """Largest peak per phase; ``counters=None`` (a CPU run) measures nothing."""

    def __init__(self, counters: CudaPeakCounters | None = None) -> None:
        self.counters = counters
        self.peaks: dict[str, PhasePeak] = {}
        self._open: str | None = None

    @classmethod
    def for_device(cls, device: str) -> PhasePeaks:
        return cls(CudaPeakCounters() if device == "cuda" else None)

    @property
    def measured(self) -> bool:
        return self.counters is not None

    def begin(self, phase: str) -> None:
        if self.counters is not None:
            self.counters.reset()
            self._open = phase

    def end(self, phase: str) -> PhasePeak | None:
        """Close ``phase``'s window; returns that window's peak (None when not measured)."""
        if self.counters is None or self._open != phase:
            return None
        self._open = None
        window = self.counters.read()
        self.peaks[phase] = window.max(self.peaks.get(phase))
        return window

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self.begin(name)
        try:
            yield
        finally:
            self.end(name)

    def logs(self, phase: str) -> dict[str, float]:
        """The phase's peaks so far for the loggers (TensorBoard), in GiB."""
        peak = self.peaks.get(phase)
        if peak is None:
            return {}
        return {
            f"memory/{phase}/max_allocated_gib": peak.max_allocated_bytes / _GIB,
            f"memory/{phase}/max_reserved_gib": peak.max_reserved_bytes / _GIB,
            f"memory/{phase}/active_peak_gib": peak.active_peak_bytes / _GIB,
        }


def planned_phases(plan: dict[str, Any] | None) -> dict[str, dict[str, int]]:
    """Per phase, the plan's predicted tensor peak and the allocator bytes it requires.

    Evaluation runs next to the optimizer state (kept between steps): the plan's eval
    profile is the generation/eval-forward peak, the state is added as the planner did.
    """
    if not plan:
        return {}
    out: dict[str, dict[str, int]] = {}
    if plan.get("predicted_peak_bytes"):
        out["train"] = {
            "peak_bytes": int(plan["predicted_peak_bytes"]),
            "required_bytes": int(plan.get("required_bytes") or 0),
        }
    if plan.get("eval_peak_bytes"):
        zero = plan.get("zero_states_per_rank") or {}
        state = zero.get("optimizer_state") if zero else None
        if state is None:
            state = (plan.get("breakdown") or {}).get("optimizer_state", 0)
        out["eval"] = {
            "peak_bytes": int(plan["eval_peak_bytes"]) + int(state),
            "required_bytes": int(plan.get("eval_required_bytes") or 0),
        }
    if plan.get("generate_peak_bytes"):
        out["predict"] = {
            "peak_bytes": int(plan["generate_peak_bytes"]),
            "required_bytes": int(plan.get("generate_required_bytes") or 0),
        }
    return out


def _ratio(measured: int, predicted: int) -> float | None:
    return round(measured / predicted, 4) if predicted else None


def compare_phases(
    peaks: dict[str, PhasePeak], planned: dict[str, dict[str, int]]
) -> dict[str, dict[str, Any]]:
    """Measured vs planned for every measured phase; ratios are measured / predicted."""
    rows: dict[str, dict[str, Any]] = {}
    for phase in PHASES:
        peak = peaks.get(phase)
        if peak is None:
            continue
        plan = planned.get(phase, {})
        predicted, required = plan.get("peak_bytes", 0), plan.get("required_bytes", 0)
        rows[phase] = {
            **peak.to_json(),
            "predicted_peak_bytes": predicted or None,
            "planned_required_bytes": required or None,
            "allocated_ratio": _ratio(peak.max_allocated_bytes, predicted),
            "active_ratio": _ratio(peak.active_peak_bytes, predicted),
            "reserved_ratio": _ratio(peak.max_reserved_bytes, required),
        }
    return rows


@dataclass
class MemorySummary:
    """What ``metrics.json`` holds under ``memory`` and the run summary prints."""

    measured: bool
    phases: dict[str, dict[str, Any]]
    planned: dict[str, dict[str, int]]
    allocator: dict[str, str] | None = None

    @classmethod
    def build(
        cls, phases: PhasePeaks, plan: dict[str, Any] | None, allocator=None
    ) -> MemorySummary:
        planned = planned_phases(plan)
        rows = compare_phases(phases.peaks, planned) if phases.measured else {}
        return cls(phases.measured, rows, planned, allocator)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MemorySummary:
        """The summary a run wrote into ``metrics.json`` (``memory``)."""
        return cls(
            bool(data.get("measured")),
            dict(data.get("phases") or {}),
            dict(data.get("planned") or {}),
            data.get("allocator"),
        )

    def merged(self, later: MemorySummary) -> MemorySummary:
        """This run's phases followed by a later pass's (predict after train)."""
        return MemorySummary(
            self.measured or later.measured,
            self.phases | later.phases,
            self.planned | later.planned,
            self.allocator or later.allocator,
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"measured": self.measured, "phases": self.phases,
                               "planned": self.planned}  # fmt: skip
        if not self.measured:
            out["note"] = NOT_MEASURED
        if self.allocator:
            out["allocator"] = self.allocator
        return out

    def lines(self) -> list[str]:
        """The run summary's lines: one per measured phase, measured / planned."""
        if not self.measured:
            return [f"memory per phase: {NOT_MEASURED}"]
        if not self.phases:
            return ["memory per phase: nothing ran on the GPU"]
        out = ["memory per phase, measured / planned GiB (ratio):"]
        for phase, row in self.phases.items():
            allocated = _pair(
                row["max_allocated_bytes"], row["predicted_peak_bytes"], row["allocated_ratio"]
            )
            active = f"{_gib(row['active_peak_bytes'])} ({_r(row['active_ratio'])})"
            reserved = _pair(
                row["max_reserved_bytes"], row["planned_required_bytes"], row["reserved_ratio"]
            )
            out.append(f"  {phase:8s} allocated {allocated}  active {active}  reserved {reserved}")
        return out


def _gib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / _GIB:.2f}"


def _r(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.2f}"


def _pair(measured: int, planned: int | None, ratio: float | None) -> str:
    return f"{_gib(measured)} / {_gib(planned)} ({_r(ratio)})"


def merge_into_metrics_file(path, summary: MemorySummary) -> None:
    """Add a measured phase (``predict``, run after training) to a run's ``metrics.json``."""
    import json
    from pathlib import Path

    from dialsum.core.runs import write_json_atomic

    if not summary.measured:
        return
    path = Path(path)
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    memory = data.setdefault("memory", {})
    memory.setdefault("phases", {}).update(summary.phases)
    memory.setdefault("planned", {}).update(summary.planned)
    memory["measured"] = True
    memory.pop("note", None)
    write_json_atomic(path, data)


def log_to_tensorboard(logdir, logs: dict[str, float], step: int = 0) -> None:
    """Write ``logs`` as scalars into the run's TensorBoard folder (outside a Trainer)."""
    if not logs:
        return
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(logdir))
    try:
        for key, value in logs.items():
            writer.add_scalar(key, value, step)
    finally:
        writer.close()
