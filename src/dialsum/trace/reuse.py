"""Not tracing twice: timelines replayed for other batch sizes, and the disk cache.

A trace of T5-base takes seconds. ``reused_or_traced`` gives a simulation's profile: from
the disk cache (``trace.cache``) when it is there, else replayed: the step is recorded at
two batch sizes (``REPLAY_LO``, ``REPLAY_HI``) once per process and any other batch size
is replayed from the recordings with every allocation resized (``trace.timeline``:
exact); FLOPs, bytes moved and kernels are interpolated the same way
(``flops.interpolate_costs``). Batch 1, or ``replay_batches=False``, traces directly.
The recordings are kept on disk too (``timelines/`` in the cache folder, same key): the
next process - a plan for another GPU, the guide's main pass - replays instead of tracing.
"""

from __future__ import annotations

import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path

from dialsum.trace import cache as trace_cache
from dialsum.trace import timeline
from dialsum.trace.allocator import exact_bytes, round_allocation_bytes
from dialsum.trace.flops import COSTS, interpolate_costs
from dialsum.trace.profile import MemoryProfile
from dialsum.trace.tracer import RoundFn


def set_costs(profile: MemoryProfile, costs: dict[str, dict[str, int]]) -> MemoryProfile:
    profile.flops, profile.bytes_moved, profile.kernels = (dict(costs[c]) for c in COSTS)
    return profile


def costs_of(profile: MemoryProfile) -> dict[str, dict[str, int]]:
    return {"flops": profile.flops, "bytes_moved": profile.bytes_moved, "kernels": profile.kernels}


# Recorded timelines for this process: key -> (profiles at REPLAY_LO and HI, events LO, HI).
_TIMELINES: dict[str, tuple[MemoryProfile, MemoryProfile, list, list]] = {}
REPLAY_LO, REPLAY_HI = 2, 3

Traced = tuple[MemoryProfile, list | None]


def _timeline_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / "timelines" / f"{key}.pkl"


def _stored_timelines(cache_dir: Path | None, key: str) -> tuple | None:
    """Recordings another process made for ``key`` (the guide's workers, a plan for
    another GPU: the GPU changes the budget, not the trace); None when absent."""
    if cache_dir is None:
        return None
    try:
        with open(_timeline_path(cache_dir, key), "rb") as fh:
            stored = pickle.load(fh)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError):
        return None
    return stored if isinstance(stored, tuple) and len(stored) == 4 else None


def _store_timelines(cache_dir: Path | None, key: str, recorded: tuple) -> None:
    """Atomically (temp file + rename); a read-only or full cache folder is no error."""
    if cache_dir is None:
        return
    target = _timeline_path(cache_dir, key)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("wb", dir=target.parent, delete=False) as fh:
            pickle.dump(recorded, fh, protocol=pickle.HIGHEST_PROTOCOL)
            tmp = Path(fh.name)
        tmp.replace(target)
    except OSError:
        return


def _replayed(
    key: str,
    batch: int,
    trace_at: Callable[[int, bool], Traced],
    profile_of: Callable[[MemoryProfile, timeline.StepPeaks], MemoryProfile],
    round_fn: RoundFn,
    cache_dir: Path | None = None,
) -> MemoryProfile:
    """``batch``'s profile replayed from recordings at REPLAY_LO/HI (traced once per key,
    kept for this process and, with ``cache_dir``, on disk for the next);
    ``trace_at(batch, record)`` traces, ``profile_of(base, steps)`` builds the profile."""
    if key not in _TIMELINES:
        stored = _stored_timelines(cache_dir, key)
        if stored is None:
            (lo, e_lo), (hi, e_hi) = (trace_at(b, True) for b in (REPLAY_LO, REPLAY_HI))
            stored = (lo, hi, e_lo, e_hi)
            _store_timelines(cache_dir, key, stored)
        _TIMELINES[key] = stored
        if batch in (REPLAY_LO, REPLAY_HI):
            lo, hi = stored[0], stored[1]
            return lo if batch == REPLAY_LO else hi
    base, hi, e_lo, e_hi = _TIMELINES[key]
    steps = timeline.replay(e_lo, e_hi, REPLAY_LO, REPLAY_HI, batch, round_fn)
    # FLOPs, bytes moved and kernels are sums over the same ops: affine in the batch too.
    costs = interpolate_costs(costs_of(base), costs_of(hi), REPLAY_LO, REPLAY_HI, batch)
    if not steps or costs is None:
        return trace_at(batch, False)[0]  # not exactly replayable: trace directly
    return set_costs(profile_of(base, steps), costs)


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
    trace_at: Callable[[int, bool], Traced],
    profile_of: Callable[[MemoryProfile, timeline.StepPeaks], MemoryProfile],
    round_fn: RoundFn,
    *,
    cache_dir: str | Path | None,
    use_cache: bool,
    replay_batches: bool,
) -> MemoryProfile:
    """The profile at ``batch``: cached on disk under ``key``, else replayed from the
    timelines recorded under ``timeline_key()`` (see ``_replayed``), else traced."""

    cacheable = use_cache and round_fn in (round_allocation_bytes, exact_bytes)
    timelines_dir = _cache_path(cache_dir) if cacheable else None

    def compute() -> MemoryProfile:
        if not (replay_batches and batch > 1):
            return trace_at(batch, False)[0]
        return _replayed(timeline_key(), batch, trace_at, profile_of, round_fn, timelines_dir)

    return _cached(key, cache_dir, use_cache, round_fn, compute)
