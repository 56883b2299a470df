"""Not tracing twice: timelines replayed for other batch sizes, and the disk cache.

A trace of T5-base takes seconds. ``reused_or_traced`` gives a simulation's profile: from
the disk cache (``trace.cache``) when it is there, else replayed: the step is recorded at
two batch sizes (``REPLAY_LO``, ``REPLAY_HI``) once per process and any other batch size
is replayed from the recordings with every allocation resized (``trace.timeline``:
exact); FLOPs, bytes moved and kernels are interpolated the same way
(``flops.interpolate_costs``). Batch 1, or ``replay_batches=False``, traces directly.
The recordings are kept on disk too (``timelines/`` in the cache folder, same key): the
next process - a plan for another GPU, the guide's main pass - replays instead of tracing.

A model with deep stacks of repeated layers (``repeat.MIN_LAYERS``) is not traced at full
depth: both recordings are built from three traces with a few layers per stack
(``repeat.deep_pair``: two at REPLAY_LO find where a layer's events go, one at REPLAY_HI
two layers deeper verifies the repetition event for event and gives that batch's sizes).
If that fails, each batch size is repeated from its own traces (``repeat.deep``), else
the full model is traced.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dialsum.models.stacks import Stacks
from dialsum.trace import cache as trace_cache
from dialsum.trace import parallel, timeline
from dialsum.trace.allocator import exact_bytes, round_allocation_bytes
from dialsum.trace.flops import interpolate_costs
from dialsum.trace.profile import MemoryProfile
from dialsum.trace.repeat import (
    REPLAY_HI,
    REPLAY_LO,
    FinishCosts,
    ProfileOf,
    Repeat,
    Shallow,
    TraceAt,
    Traced,
    costs_of,
    deep,
    deep_one,
    deep_pair,
    pair_depths,
    result_or,
    set_costs,
    starts,
    trace_name,
    unchanged_costs,
)
from dialsum.trace.tracer import RoundFn

# Recorded timelines for this process: key -> (profiles at REPLAY_LO and HI, events LO,
# HI, what the shallow traces found or None: ``repeat.Shallow``).
Recorded = tuple[MemoryProfile, MemoryProfile, list, list, Shallow | None]
_TIMELINES: dict[str, Recorded] = {}


def _traced(
    trace_at: TraceAt,
    stacks: Stacks | None,
    batch: int,
    record: bool,
    profile_of: ProfileOf,
    round_fn: RoundFn,
    finish_costs: FinishCosts = unchanged_costs,
    known: Repeat | None = None,
    shallow: bool = True,
    name: str | None = None,
) -> tuple[Traced, Repeat | None]:
    """The profile (and with ``record`` the timeline) at ``batch``: repeated from shallow
    traces where the model allows it (``deep``; not tried when ``shallow`` is False),
    else one trace of the whole model; and the repeat found, for the next batch size
    (``known``)."""
    repeated = (
        deep(trace_at, stacks, batch, profile_of, round_fn, finish_costs, known, name)
        if shallow
        else None
    )
    if repeated is not None:
        (profile, events), repeat = repeated
        return (profile, events if record else None), repeat
    future = parallel.claim(trace_name(name, batch, 0)) if name is not None else None
    return result_or(future, lambda: trace_at(batch, record, 0)), None


@dataclass(frozen=True)
class _Question:
    """What recording, replaying and batch 1 need for one question: the timeline ``key``,
    ``trace_at(batch, record, removed)`` to trace, ``profile_of(base, steps)`` to build a
    profile, the rounding, the disk cache (None: this process only), the model's stacks
    and the cost finisher (``repeat.FinishCosts``)."""

    key: str
    trace_at: TraceAt
    profile_of: ProfileOf
    round_fn: RoundFn
    cache_dir: Path | None
    stacks: Stacks | None
    finish_costs: FinishCosts

    def traced(self, batch: int) -> MemoryProfile:
        """``batch`` traced, not replayed (``_traced``)."""
        return _traced(
            self.trace_at, self.stacks, batch, False, self.profile_of, self.round_fn,
            self.finish_costs,
        )[0][0]  # fmt: skip


def _recordings(q: _Question) -> Recorded:
    """``q.key``'s recordings at REPLAY_LO/HI: traced once per key, kept for this process
    and, with ``q.cache_dir``, on disk for the next."""
    if q.key in _TIMELINES:
        return _TIMELINES[q.key]
    stored = trace_cache.load_timelines(q.cache_dir, q.key)
    if stored is None:
        trace_at, stacks = q.trace_at, q.stacks
        shared = (q.profile_of, q.round_fn, q.finish_costs)
        # A model too shallow to repeat is traced whole at both batches: independent
        # traces, so HI starts in the helper process while this one traces LO.
        whole_hi = None
        if not starts(stacks):
            whole_hi = parallel.claim(trace_name(q.key, REPLAY_HI, 0)) or parallel.submit(
                trace_at, REPLAY_HI, True, 0
            )
        pair = deep_pair(trace_at, stacks, *shared, q.key) if whole_hi is None else None
        shallow = None
        if pair is not None:
            (lo, e_lo), (hi, e_hi), shallow = pair
        else:
            (lo, e_lo), repeat = _traced(
                trace_at, stacks, REPLAY_LO, True, *shared, shallow=whole_hi is None, name=q.key
            )
            # Not periodic at REPLAY_LO (e.g. mT5 with Adafactor, whose per-parameter
            # optimizer work the alignment does not cut per layer): not at HI either.
            if whole_hi is not None:
                hi, e_hi = result_or(whole_hi, lambda: trace_at(REPLAY_HI, True, 0))
            else:
                (hi, e_hi), _ = _traced(
                    trace_at, stacks, REPLAY_HI, True, *shared,
                    known=repeat, shallow=repeat is not None, name=q.key,
                )  # fmt: skip
        stored = (lo, hi, timeline.without_costs(e_lo), timeline.without_costs(e_hi), shallow)
        trace_cache.store_timelines(q.cache_dir, q.key, stored)
    _TIMELINES[q.key] = stored
    return stored


def _replayed(q: _Question, batch: int) -> MemoryProfile:
    """``batch``'s profile replayed from ``q``'s recordings at REPLAY_LO/HI
    (``_recordings``)."""
    known = q.key in _TIMELINES
    base, hi, e_lo, e_hi, _ = _recordings(q)
    if not known and batch in (REPLAY_LO, REPLAY_HI):
        return base if batch == REPLAY_LO else hi
    steps = timeline.replay(e_lo, e_hi, REPLAY_LO, REPLAY_HI, batch, q.round_fn)
    # FLOPs, bytes moved and kernels are sums over the same ops: affine in the batch too.
    costs = interpolate_costs(costs_of(base), costs_of(hi), REPLAY_LO, REPLAY_HI, batch)
    if not steps or costs is None:
        return q.traced(batch)  # not exactly replayable: trace directly
    return set_costs(q.profile_of(base, steps), costs)


def _one_row(q: _Question, batch: int) -> MemoryProfile:
    """Batch 1 (or 0), traced (not replayed: some ops skip a copy when a dimension is 1).
    A deep model takes one shallow trace placed by its recordings' layout
    (``repeat.deep_one``; the recordings are made first if needed: the plans and the guide
    ask other batch sizes too), else three (``repeat.deep``); a shallow one is traced
    whole."""
    if batch == 1 and q.stacks is not None and starts(q.stacks):
        shallow = _recordings(q)[4]  # None: recorded batch by batch, or from an old cache
        if shallow is not None:
            one = deep_one(
                q.trace_at, q.stacks, 1, shallow, q.profile_of, q.round_fn, q.finish_costs
            )
            if one is not None:
                return one[0]
    return q.traced(batch)


def default_round_fn(device: str) -> RoundFn:
    """CUDA's caching allocator rounds blocks to 512 bytes; a CPU run counts exact bytes."""
    return round_allocation_bytes if device == "cuda" else exact_bytes


def _cache_path(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir) if cache_dir is not None else trace_cache.default_cache_dir()


def _cached(
    key: str,
    cache_dir: str | Path | None,
    use_cache: bool,
    round_fn: RoundFn,
    compute: Callable[[], MemoryProfile],
) -> MemoryProfile:
    """Disk cache around ``compute``; a custom ``round_fn`` bypasses it."""
    cacheable = use_cache and round_fn in (round_allocation_bytes, exact_bytes)
    cache_path = _cache_path(cache_dir)
    if cacheable and (hit := trace_cache.load(cache_path, key)) is not None:
        return hit
    profile = compute()
    if cacheable:
        trace_cache.store(cache_path, key, profile)
    return profile


def reused_or_traced(
    key: str,
    timeline_key: Callable[[], str],
    batch: int,
    trace_at: TraceAt,
    profile_of: ProfileOf,
    round_fn: RoundFn,
    *,
    cache_dir: str | Path | None,
    use_cache: bool,
    replay_batches: bool,
    stacks: Stacks | None = None,
    finish_costs: FinishCosts = unchanged_costs,
) -> MemoryProfile:
    """The profile at ``batch``: cached on disk under ``key``, else replayed from the
    timelines recorded under ``timeline_key()`` (see ``_replayed``), else traced.
    ``stacks`` (``models.stacks.stacks_of``) lets deep models be traced shallow and
    repeated; ``replay_batches=False`` traces the whole model at ``batch`` directly."""

    cacheable = use_cache and round_fn in (round_allocation_bytes, exact_bytes)
    timelines_dir = _cache_path(cache_dir) if cacheable else None

    def compute() -> MemoryProfile:
        if not replay_batches:
            return trace_at(batch, False, 0)[0]
        q = _Question(
            timeline_key(), trace_at, profile_of, round_fn, timelines_dir, stacks, finish_costs
        )
        return _one_row(q, batch) if batch <= 1 else _replayed(q, batch)

    return _cached(key, cache_dir, use_cache, round_fn, compute)


def speculate(
    timeline_key: Callable[[], str],
    trace_at: TraceAt,
    stacks: Stacks | None,
    cache_dir: str | Path | None = None,
) -> None:
    """Send the first traces ``_replayed`` will make for ``timeline_key()`` to the helper
    process's idle time (``trace.parallel.speculate``), unless there is no helper or the
    recordings exist: the three shallow traces of ``deep_pair`` (the whole model at both
    batches when it is not traced shallow). Traces are taken by name when the plan asks
    (``deep_pair``, ``deep``), so a right guess is not traced twice and a wrong one only
    used the other core."""
    if not parallel.active():
        return
    key = timeline_key()
    if key in _TIMELINES or trace_cache.timeline_path(_cache_path(cache_dir), key).is_file():
        return
    if stacks is None or not starts(stacks):
        depths = [(REPLAY_LO, 0), (REPLAY_HI, 0)]
    else:
        depths = [(batch, stacks.layers - layers) for batch, layers in pair_depths(stacks)]
    for batch, removed in depths:
        if not parallel.speculate(trace_name(key, batch, removed), trace_at, batch, True, removed):
            return
