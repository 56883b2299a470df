"""A deep model's recordings from shallow traces: trace few layers, verify, repeat.

A fake-tensor trace costs per op, and most ops are in the repeated layers
(``models.stacks``). ``deep`` builds the full-depth profile and timeline at one batch
size from traces with ``d``, ``d + p`` and ``d + 2p`` layers per stack (``p`` the period),
verified event for event (``trace.depth``); ``deep_pair`` builds both recordings the
replay needs (``trace.reuse``) from three traces in all. Anything not exactly periodic
returns None and the caller traces the whole model.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from dialsum.models.stacks import Stacks
from dialsum.trace import depth, parallel, timeline
from dialsum.trace.flops import COSTS
from dialsum.trace.profile import MemoryProfile
from dialsum.trace.tracer import RoundFn

REPLAY_LO, REPLAY_HI = 2, 3
"""The batch sizes the replay's two recordings are made at (``trace.reuse``)."""


def set_costs(profile: MemoryProfile, costs: dict[str, dict[str, int]]) -> MemoryProfile:
    profile.flops, profile.bytes_moved, profile.kernels = (dict(costs[c]) for c in COSTS)
    return profile


def costs_of(profile: MemoryProfile) -> dict[str, dict[str, int]]:
    return {"flops": profile.flops, "bytes_moved": profile.bytes_moved, "kernels": profile.kernels}


Traced = tuple[MemoryProfile, list | None]
TraceAt = Callable[[int, bool, int], Traced]
"""``trace_at(batch, record, removed)``: trace at ``batch`` rows with ``removed`` layers
taken from every stack (0: the model as configured); ``record`` keeps the timeline."""
ProfileOf = Callable[[MemoryProfile, timeline.StepPeaks], MemoryProfile]
FinishCosts = Callable[[dict[str, dict[str, int]]], dict[str, dict[str, int]]]
"""Turns the costs a shallow trace reports (``trace_at`` with ``removed > 0``), repeated
to full depth, into the costs a full trace reports (training: the mean per micro-batch,
an integer division that is only exact after the repeat)."""


def unchanged_costs(costs: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    return costs


MIN_LAYERS = 6
"""Stacks this deep or deeper are traced shallow and repeated (``trace.depth``). A trace
costs per op whatever the sizes: about ``c0 + c1 x layers``, ``c0`` small. Measured on
kobart's training step (bf16, batch 2, 512/100): 0.39 / 0.69 / 1.01 s at 1 / 2 / 3 layers
against 2.05 s for all 6, so the three traces of ``deep_pair`` (2.1 s) take half of the
two whole recordings (4.1 s) and batch 1's one trace (``deep_one``) half of a whole one;
on T5-base (12 layers; 2 / 3 / 4 layers traced) about a third. Below 6 layers there is
little left to save (and ``starts`` needs two periods above the first depth)."""


@dataclass(frozen=True)
class Repeat:
    """Where one more layer's events go: repeats start at ``start`` layers per stack, and
    a layer adds ``length`` events at each ``position`` of that shallow timeline."""

    start: int
    layout: tuple[tuple[int, int], ...]

    @staticmethod
    def of(start: int, inserted: depth.Insertions) -> Repeat:
        return Repeat(start, tuple((position, len(segment)) for position, segment in inserted))

    def segments(self, longer: list) -> depth.Insertions:
        """The insertions this layout reads off a timeline one layer deeper."""
        out, before = [], 0
        for position, length in self.layout:
            out.append((position, list(longer[position + before : position + before + length])))
            before += length
        return out


def starts(stacks: Stacks | None) -> list[int]:
    """Layers per stack at which ``deep`` tries a repeat (a first period may differ from
    the rest: then one period deeper); none for a model traced whole."""
    if stacks is None or stacks.layers < MIN_LAYERS or stacks.layers % stacks.period:
        return []
    step, out = stacks.period, []
    for start in (stacks.first + step, stacks.first + 2 * step):
        if start + 2 * step >= stacks.layers or (stacks.layers - start) % step:
            break  # as deep as the model itself (nothing saved), or not whole periods
        out.append(start)
    return out


def deep(
    trace_at: TraceAt,
    stacks: Stacks | None,
    batch: int,
    profile_of: ProfileOf,
    round_fn: RoundFn,
    finish_costs: FinishCosts = unchanged_costs,
    known: Repeat | None = None,
    name: str | None = None,
) -> tuple[Traced, Repeat] | None:
    """The full-depth profile and timeline at ``batch`` from shallow traces, and where the
    layers repeat; None when the model is shallow or not exactly periodic (the caller
    traces it whole).

    With ``p`` the period: traces with ``p``, ``2p`` and ``3p`` layers per stack; the
    third must equal the first with the insertions found between the first two repeated
    twice (``trace.depth``), and parameter counts and compute costs must be affine in the
    depth. Stacks whose first layers differ (``stacks.first``) start after them. If the
    check fails, a first period may still differ from the rest, so it tries again one
    period deeper with one more trace.

    ``known``: the repeat verified at another batch size. The ops, so the events and where
    a layer's go, do not depend on the rows (only sizes do), so two traces suffice: the
    second must be the first with the known layout's segments inserted, event for event.

    ``name`` (the timeline key) names the traces, so that one sent ahead (``speculate``)
    is taken from the helper instead of traced again.
    """
    tried = starts(stacks)
    if not tried:
        return None
    assert stacks is not None
    step = stacks.period
    traces: dict[int, Traced] = {}
    pending: dict[int, Future] = {}

    def sent_ahead(layers: int) -> Future | None:
        if name is None:
            return None
        return parallel.claim(trace_name(name, batch, stacks.layers - layers))

    def ahead(*depths: int) -> None:
        """Take this round's traces the helper process has (``speculate``); if it has none,
        start the deepest there (``trace.parallel``) while this process traces the rest."""
        todo = [layers for layers in depths if layers not in traces and layers not in pending]
        for layers in todo:
            if (future := sent_ahead(layers)) is not None:
                pending[layers] = future
        deepest = depths[-1]
        if todo and not any(layers in pending for layers in todo) and deepest in todo:
            future = parallel.submit(trace_at, batch, True, stacks.layers - deepest)
            if future is not None:
                pending[deepest] = future

    def at(layers: int) -> Traced:
        if layers not in traces:
            future = pending.pop(layers, None) or sent_ahead(layers)
            try:
                traces[layers] = future.result() if future is not None else None
            except Exception:  # noqa: BLE001 - a failed helper only costs time
                traces[layers] = None
            if traces[layers] is None:
                traces[layers] = trace_at(batch, True, stacks.layers - layers)
        return traces[layers]

    def repeated(start: int, inserted: depth.Insertions) -> tuple[Traced, Repeat] | None:
        counts = _repeated(at(start)[0], at(start + step)[0], (stacks.layers - start) // step)
        if counts is None:
            return None
        events = timeline.without_costs(
            depth.pumped(at(start)[1], inserted, (stacks.layers - start) // step)
        )
        params, trainable, costs = counts
        base = MemoryProfile(params, trainable, 0, "")
        # Replaying a timeline at its own batch gives the peaks a trace would record.
        steps = timeline.replay(events, events, batch, batch + 1, batch, round_fn)
        if not steps:
            return None
        return (set_costs(profile_of(base, steps), finish_costs(costs)), events), Repeat.of(
            start, inserted
        )

    if known is not None:
        ahead(known.start, known.start + step)
        (_, e_first), (_, e_second) = at(known.start), at(known.start + step)
        inserted = known.segments(e_second)
        if depth.pumped(e_first, inserted, 1) == e_second:
            found = repeated(known.start, inserted)
            if found is not None:
                return found
    for start in tried:
        ahead(start, start + step, start + 2 * step)
        (first, e_first), (second, e_second), (third, e_third) = (
            at(start + i * step) for i in range(3)
        )
        inserted = depth.repeating(e_first, e_second, e_third)
        if inserted is None or _repeated(first, second, 2) != _counts(third):
            continue
        found = repeated(start, inserted)
        if found is not None:
            return found
    return None


def pair_depths(stacks: Stacks, start: int | None = None) -> list[tuple[int, int]]:
    """``(batch, layers per stack)`` of the three traces ``deep_pair`` makes from
    ``start`` (the first of ``starts``)."""
    start, step = starts(stacks)[0] if start is None else start, stacks.period
    return [(REPLAY_LO, start), (REPLAY_LO, start + step), (REPLAY_HI, start + 2 * step)]


def deep_pair(
    trace_at: TraceAt,
    stacks: Stacks | None,
    profile_of: ProfileOf,
    round_fn: RoundFn,
    finish_costs: FinishCosts = unchanged_costs,
    name: str | None = None,
) -> tuple[Traced, Traced, Shallow] | None:
    """The full-depth recordings at REPLAY_LO and REPLAY_HI from three shallow traces,
    and what the first two found (for ``deep_one``); None when the model is shallow or
    the check fails (the caller then goes batch by batch, ``_traced``).

    With ``d`` the first depth ``deep`` tries and ``p`` the period: REPLAY_LO at ``d``
    and ``d + p`` layers per stack give where a layer's events go (``depth.insertions``);
    REPLAY_HI at ``d + 2p`` must be the shallowest timeline with every insertion made
    twice, in structure (the same events, sizes aside: ``depth.repeating``) and with the
    two copies of each insertion equal event for event, sizes and costs included. Cut
    there (``depth.split``) it gives the REPLAY_HI timeline at ``d`` and one layer's
    events at REPLAY_HI, so each batch's full timeline is its shallow one with the layers
    repeated, as ``deep`` builds it from traces at ``d`` and ``d + p``. Compute costs
    are the timeline's cost events summed (``timeline.cost_events``): a repeated layer
    carries its own. One trace fewer per batch pair than ``deep`` twice (5 -> 3), and
    the deepest runs in the helper process while this one traces the two others.

    If the check fails, a first period may still differ from the rest (BART in fp32:
    its first layer's backward aligns unlike the others'), so it tries again one period
    deeper, as ``deep`` does: REPLAY_LO at ``d + p`` is kept, two traces more.
    """
    if not starts(stacks):
        return None
    assert stacks is not None
    traces: dict[tuple[int, int], Traced] = {}

    def traced(depths: list[tuple[int, int]]) -> list[Traced]:
        """``depths`` traced (once each): the ones sent ahead (``speculate``) taken from
        the helper; if it has none, the deepest started there while this process traces
        the others."""
        todo = [at for at in depths if at not in traces]
        futures: dict[tuple[int, int], Future] = {}
        for batch, layers in todo:
            removed = stacks.layers - layers
            future = parallel.claim(trace_name(name, batch, removed)) if name else None
            if future is not None:
                futures[(batch, layers)] = future
        if todo and not futures:
            batch, layers = todo[-1]
            future = parallel.submit(trace_at, batch, True, stacks.layers - layers)
            if future is not None:
                futures[(batch, layers)] = future
        for at in todo:
            here = functools.partial(trace_at, at[0], True, stacks.layers - at[1])
            traces[at] = result_or(futures.pop(at, None), here)
        return [traces[at] for at in depths]

    for start in starts(stacks):
        found = _pair_from(
            stacks, start, traced(pair_depths(stacks, start)), profile_of, round_fn,
            finish_costs,
        )  # fmt: skip
        if found is not None:
            return found
    return None


def _pair_from(
    stacks: Stacks,
    start: int,
    three: list[Traced],
    profile_of: ProfileOf,
    round_fn: RoundFn,
    finish_costs: FinishCosts,
) -> tuple[Traced, Traced, Shallow] | None:
    """``deep_pair``'s check and recordings from its three traces at ``start``."""
    (first, e_first), (second, e_second), (third, e_third) = three
    found = depth.repeating(e_first, e_second, e_third, view=timeline.structure)
    twice = _repeated(first, second, 2)
    if found is None or twice is None or twice[:2] != _counts(third)[:2]:
        return None
    # Phases without cost events (``flops.CostMeter``'s ``unsunk``: the optimizer) cost
    # the same at every batch; affine in the depth, they are extrapolated from the first
    # two traces, and the third (other batch, two layers deeper) must agree.
    sunk = {event[1] for event in e_second if event[0] == "c"}
    unsunk = [phase for phase in first.flops if phase not in sunk]
    if any(
        twice[2][cost][phase] != costs_of(third)[cost][phase] for cost in COSTS for phase in unsunk
    ):
        return None
    copies = (stacks.layers - start) // stacks.period
    cut = depth.split(e_third, Repeat.of(start, found).layout, 2)
    if cut is None:
        return None
    params, trainable, extrapolated = _repeated(first, second, copies)  # type: ignore[misc]
    shallow = Shallow(
        start,
        copies,
        e_first,
        found,
        {cost: {phase: extrapolated[cost][phase] for phase in unsunk} for cost in COSTS},
        tuple(first.flops),
        _counts(first)[:2] + _counts(second)[:2],
    )
    recorded: list[Traced] = []
    for batch, (events, inserted) in ((REPLAY_LO, (e_first, found)), (REPLAY_HI, cut)):
        one = shallow.full(events, inserted, batch, profile_of, round_fn, finish_costs)
        if one is None:
            return None
        recorded.append(one)
    return recorded[0], recorded[1], shallow


@dataclass(frozen=True)
class Shallow:
    """What ``deep_pair`` found at REPLAY_LO, kept with the recordings: the shallowest
    timeline (``start`` layers per stack) and where one more layer's events go, cost
    events included; the full-depth raw costs of the phases without cost events; the
    parameter counts (total, trainable) at ``start`` and one period deeper. With it another
    batch size needs one trace (``deep_one``)."""

    start: int
    copies: int
    """Periods added to ``start`` to reach the model's depth."""
    events: list
    inserted: depth.Insertions
    unsunk_costs: dict[str, dict[str, int]]
    phases: tuple[str, ...]
    params: tuple[int, int, int, int]

    def counts(self, copies: int) -> tuple[int, int]:
        """(parameters, trainable parameters) with ``copies`` periods added."""
        total, trainable, total_next, trainable_next = self.params
        return (
            total + copies * (total_next - total),
            trainable + copies * (trainable_next - trainable),
        )

    def full(
        self,
        events: list,
        inserted: depth.Insertions,
        batch: int,
        profile_of: ProfileOf,
        round_fn: RoundFn,
        finish_costs: FinishCosts,
    ) -> Traced | None:
        """The full-depth profile and timeline at ``batch`` from its shallowest timeline
        and one layer's events (both at ``batch``): the layers repeated, the costs summed
        from the cost events (the others from ``unsunk_costs``), the peaks replayed."""
        events = depth.pumped(events, inserted, self.copies)
        summed = timeline.cost_events(events, self.phases)
        for cost, by_phase in self.unsunk_costs.items():
            summed[cost].update(by_phase)
        events = timeline.without_costs(events)
        steps = timeline.replay(events, events, batch, batch + 1, batch, round_fn)
        if not steps:
            return None
        base = MemoryProfile(*self.counts(self.copies), 0, "")
        return set_costs(profile_of(base, steps), finish_costs(summed)), events


def deep_one(
    trace_at: TraceAt,
    stacks: Stacks,
    batch: int,
    shallow: Shallow,
    profile_of: ProfileOf,
    round_fn: RoundFn,
    finish_costs: FinishCosts = unchanged_costs,
) -> Traced | None:
    """The full-depth profile and timeline at ``batch`` from one trace two periods deeper
    than ``shallow.start``, placed by where the layers go at REPLAY_LO (``shallow``);
    None when that does not fit (the caller goes back to ``deep``'s three traces).

    For batch 1, whose timeline is REPLAY_LO's with some events left out (an op skips a
    copy when a dimension is 1), not only resized: ``depth.carried_layout`` finds the
    layers' events in the trace by aligning it with REPLAY_LO's timeline at that depth,
    and the two copies of each must be equal event for event (``depth.split``), as
    ``deep_pair`` checks at REPLAY_HI.
    """
    layers = shallow.start + 2 * stacks.period
    profile, events = trace_at(batch, True, stacks.layers - layers)
    if events is None or (profile.params, profile.trainable_params) != shallow.counts(2):
        return None
    at_lo = depth.pumped(shallow.events, shallow.inserted, 2)
    layout = depth.carried_layout(at_lo, shallow.inserted, events, timeline.structure)
    cut = depth.split(events, layout, 2) if layout is not None else None
    if cut is None:
        return None
    return shallow.full(*cut, batch, profile_of, round_fn, finish_costs)


def _counts(profile: MemoryProfile) -> tuple:
    return profile.params, profile.trainable_params, costs_of(profile)


def _repeated(first: MemoryProfile, second: MemoryProfile, copies: int) -> tuple | None:
    """Parameter counts and compute costs with ``copies`` more repeats than ``first``
    (each repeat adds ``second - first``); None when their phases differ."""

    def extend(lo: int, hi: int) -> int:
        return lo + copies * (hi - lo)

    costs: dict[str, dict[str, int]] = {}
    for cost, by_phase in costs_of(first).items():
        other = costs_of(second)[cost]
        if other.keys() != by_phase.keys():
            return None
        costs[cost] = {phase: extend(value, other[phase]) for phase, value in by_phase.items()}
    return (
        extend(first.params, second.params),
        extend(first.trainable_params, second.trainable_params),
        costs,
    )


def result_or(future: Future | None, here: Callable[[], Traced]) -> Traced:
    """The helper's result, else (none, or the helper failed: only time is lost) ``here()``."""
    if future is not None:
        try:
            return future.result()
        except Exception:  # noqa: BLE001
            pass
    return here()


def trace_name(key: str, batch: int, removed: int) -> tuple[str, int, int]:
    return (key, batch, removed)
