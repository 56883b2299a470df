"""Replay a recorded allocation timeline at another batch size.

A fake-tensor trace costs ~0.3 ms per op, whatever the tensor sizes: a T5-base step is
~40k ops and ~10 s on a CPU, for every batch size the planner asks about. But the step
runs the same ops in the same order at every batch size (these models have no
batch-dependent control flow), and each tensor's byte size is an affine function of the
batch (it has a batch dimension, or it has none). So two recorded traces, at batches
``lo`` and ``hi``, give every allocation's size at any batch ``b``:

    bytes(b) = bytes(lo) + (b - lo) * (bytes(hi) - bytes(lo)) / (hi - lo)

and replaying the timeline (allocations, frees, re-tags, phase changes, in order) with
those sizes - rounded as the allocator rounds - gives the exact per-phase peaks at ``b``:
the maximum is taken over the replayed timeline, never extrapolated.

Replay is only used when both recordings have the same structure (same events,
categories and phases; only sizes differ) and every size is exactly affine (the
interpolated size is an integer and never negative); otherwise the caller traces
directly. Batch 1 is traced directly too: some ops skip a copy when a dimension is 1.
"""

from __future__ import annotations

from collections.abc import Sequence

from dialsum.trace.flops import COSTS
from dialsum.trace.tracer import PeakRecord, RoundFn

Event = tuple
StepPeaks = list[tuple[PeakRecord, dict[str, PeakRecord]]]


def structure(events: Sequence[Event]) -> list[Event]:
    """The events without their sizes and costs (what must match between two recordings)."""
    return [(e[0], *e[2:]) if e[0] in "afr" else e[:2] if e[0] == "c" else e for e in events]


def cost_events(events: Sequence[Event], phases: Sequence[str]) -> dict[str, dict[str, int]]:
    """``{cost: {phase: amount}}`` summed over the timeline's cost events
    (``("c", phase, flops, bytes moved, kernels)``, see ``flops.CostMeter``) for ``phases``
    (a phase without any counts 0)."""
    sums = {phase: [0, 0, 0] for phase in phases}
    for event in events:
        if event[0] == "c" and event[1] in sums:
            totals = sums[event[1]]
            for index in range(3):
                totals[index] += event[2 + index]
    return {cost: {phase: sums[phase][i] for phase in phases} for i, cost in enumerate(COSTS)}


def without_costs(events: Sequence[Event]) -> list[Event]:
    """The memory timeline alone (what ``replay`` reads and the cache stores)."""
    return [event for event in events if event[0] != "c"]


def same_structure(a: Sequence[Event], b: Sequence[Event]) -> bool:
    return len(a) == len(b) and structure(a) == structure(b)


def _size_at(lo_bytes: int, hi_bytes: int, lo: int, hi: int, batch: int) -> int | None:
    num = lo_bytes * (hi - lo) + (batch - lo) * (hi_bytes - lo_bytes)
    if num % (hi - lo) or num < 0:
        return None  # not affine in the batch: replay would be a guess
    return num // (hi - lo)


def replay(
    events_lo: Sequence[Event],
    events_hi: Sequence[Event],
    lo: int,
    hi: int,
    batch: int,
    round_fn: RoundFn,
) -> StepPeaks | None:
    """Step peaks at ``batch`` from recordings at ``lo`` and ``hi``; None if not exact.

    Events carry their own sizes (``tracer.LiveStorageTracker.events``): a free
    subtracts what its allocation added (same raw size, same rounding), so the replay
    needs no identities and a timeline built by repeating layers (``trace.depth``)
    replays the same way."""
    if len(events_lo) != len(events_hi):
        return None
    # ``LiveStorageTracker``'s bookkeeping (``_add``, ``_update_peaks``, ``reset_peaks``),
    # in local variables: a replay is a loop over ~10^4-10^5 events.
    by_cat: dict[str, int] = {}
    current = 0
    phase = "setup"
    phase_peaks: dict[str, int] = {}
    phase_peak = 0  # phase_peaks.get(phase, 0)
    phase_records: dict[str, PeakRecord] = {}
    peak = PeakRecord()
    # (size at lo, size at hi) -> rounded size at ``batch``: a step has few distinct sizes
    # (every layer repeats its own), and each event would otherwise interpolate and round.
    sizes: dict[tuple[int, int], int] = {}
    steps: StepPeaks = []
    for ev_lo, ev_hi in zip(events_lo, events_hi, strict=True):
        kind = ev_lo[0]
        # ``ev_lo is ev_hi``: one timeline replayed at its own batch needs no comparing.
        if kind in "afr":
            if ev_lo is not ev_hi and (ev_lo[2:] != ev_hi[2:] or ev_hi[0] != kind):
                return None  # different structure
            key = (ev_lo[1], ev_hi[1])
            nbytes = sizes.get(key, -1)
            if nbytes < 0:
                size = _size_at(ev_lo[1], ev_hi[1], lo, hi, batch)
                if size is None:
                    return None
                nbytes = sizes[key] = round_fn(size)
            if kind == "a":
                by_cat[ev_lo[2]] = by_cat.get(ev_lo[2], 0) + nbytes
                current += nbytes
                if nbytes > 0 and current > phase_peak:
                    phase_peaks[phase] = phase_peak = current
                    phase_records[phase] = PeakRecord(current, phase, dict(by_cat))
                    if current > peak.total_bytes:
                        peak = PeakRecord(current, phase, dict(by_cat))
            elif kind == "f":
                by_cat[ev_lo[2]] -= nbytes
                current -= nbytes
            else:
                by_cat[ev_lo[2]] -= nbytes
                by_cat[ev_lo[3]] = by_cat.get(ev_lo[3], 0) + nbytes
        elif ev_lo is not ev_hi and ev_lo != ev_hi:
            return None
        elif kind == "p":
            phase = ev_lo[1]
            phase_peak = phase_peaks.get(phase, 0)
        elif kind == "reset":
            phase_peaks, phase_records, peak, phase_peak = {}, {}, PeakRecord(), 0
        elif kind == "step":
            steps.append((peak, dict(phase_records)))
    return steps
