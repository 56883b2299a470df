"""A training step's profile from its traced step peaks and costs (``step_trace`` traces,
``micro_batches`` builds; both end here)."""

from __future__ import annotations

from dialsum.trace.model_run import full_breakdown
from dialsum.trace.profile import MemoryProfile
from dialsum.trace.tracer import PeakRecord

TRAIN_CATEGORIES = ("weights", "gradients", "optimizer_state", "activations", "temporaries")
TRAIN_COST_PHASES = ("forward", "backward", "optimizer")


def per_micro_batch_costs(costs: dict[str, dict[str, int]], micro_batches: int) -> dict:
    """Forward/backward per micro-batch (the step ran ``micro_batches`` of them; a second
    one adds into existing gradients, so this is their mean); the optimizer once."""
    return {
        cost: {
            phase: value // micro_batches if phase != "optimizer" else value
            for phase, value in by_phase.items()
        }
        for cost, by_phase in costs.items()
    }


def train_profile(
    params: int, trainable: int, step_peaks: list[tuple[PeakRecord, dict[str, PeakRecord]]]
) -> MemoryProfile:
    # The second (steady-state) step decides unless the first was strictly higher.
    best = step_peaks[-1][0]
    for record, _ in step_peaks[:-1]:
        if record.total_bytes > best.total_bytes:
            best = record
    phase_records: dict[str, PeakRecord] = {}
    for _, records in step_peaks:
        for phase, record in records.items():
            # Ties go to the later (steady-state) step, as for the overall peak.
            seen = phase_records.get(phase)
            if phase != "data" and (seen is None or record.total_bytes >= seen.total_bytes):
                phase_records[phase] = record
    phase_peaks = {phase: r.total_bytes for phase, r in phase_records.items()}
    return MemoryProfile(
        params=params,
        trainable_params=trainable,
        peak_bytes=best.total_bytes,
        peak_phase=best.phase,
        breakdown=full_breakdown(best, TRAIN_CATEGORIES),
        phase_peaks=phase_peaks,
        phase_breakdowns={
            phase: full_breakdown(r, TRAIN_CATEGORIES) for phase, r in phase_records.items()
        },
    )
