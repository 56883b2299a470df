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

Replay is only used when both recordings have the same structure (same events, slots,
categories and phases; only sizes differ) and every size is exactly affine (the
interpolated size is an integer and never negative); otherwise the caller traces
directly. Batch 1 is traced directly too: some ops skip a copy when a dimension is 1.
"""

from __future__ import annotations

from collections.abc import Sequence

from dialsum.trace.tracer import LiveStorageTracker, PeakRecord, RoundFn

Event = tuple
StepPeaks = list[tuple[PeakRecord, dict[str, PeakRecord]]]


def structure(events: Sequence[Event]) -> list[Event]:
    """The events without allocation sizes (what must match between two recordings)."""
    return [(e[0], e[1], e[3]) if e[0] == "a" else e for e in events]


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
    """Step peaks at ``batch`` from recordings at ``lo`` and ``hi``; None if not exact."""
    if not same_structure(events_lo, events_hi):
        return None
    tracker = LiveStorageTracker(round_fn)
    slots: dict[int, list] = {}  # slot -> [rounded bytes, category]
    steps: StepPeaks = []
    for ev_lo, ev_hi in zip(events_lo, events_hi, strict=True):
        kind = ev_lo[0]
        if kind == "a":
            size = _size_at(ev_lo[2], ev_hi[2], lo, hi, batch)
            if size is None:
                return None
            nbytes = round_fn(size)
            slots[ev_lo[1]] = [nbytes, ev_lo[3]]
            tracker._add(ev_lo[3], nbytes)
        elif kind == "f":
            nbytes, category = slots.pop(ev_lo[1])
            tracker._by_category[category] -= nbytes
            tracker.current_bytes -= nbytes
        elif kind == "r":
            entry = slots[ev_lo[1]]
            by_cat = tracker._by_category
            by_cat[entry[1]] -= entry[0]
            by_cat[ev_lo[2]] = by_cat.get(ev_lo[2], 0) + entry[0]
            entry[1] = ev_lo[2]
        elif kind == "p":
            tracker.phase = ev_lo[1]
        elif kind == "reset":
            tracker.reset_peaks()
        elif kind == "step":
            steps.append((tracker.peak, dict(tracker.phase_records)))
    return steps
