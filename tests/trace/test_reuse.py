"""Recorded timelines outlive their process: the next one replays instead of tracing."""

from __future__ import annotations

import pytest

from dialsum.trace import cache as trace_cache
from dialsum.trace import reuse
from dialsum.trace.allocator import round_allocation_bytes
from dialsum.trace.profile import MemoryProfile


def _recording(batch: int) -> tuple[MemoryProfile, list]:
    # One step: weights (1 KiB), then activations of 512 bytes per row, freed again.
    events = [
        ("p", "forward"),
        ("a", 1024, "weights"),
        ("a", 512 * batch, "activations"),
        ("f", 512 * batch, "activations"),
        ("step",),
    ]
    profile = MemoryProfile(params=1, trainable_params=1, peak_bytes=0, peak_phase="forward")
    costs = {"forward": 10 * batch}
    profile.flops, profile.bytes_moved, profile.kernels = dict(costs), dict(costs), dict(costs)
    return profile, events


def _peak_profile(base: MemoryProfile, steps) -> MemoryProfile:
    peak = steps[-1][0]
    return MemoryProfile(base.params, base.trainable_params, peak.total_bytes, peak.phase)


@pytest.fixture
def traced(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    monkeypatch.setattr(reuse, "_TIMELINES", {})
    return []


def _profile_at(batch: int, traced: list[int], cache_dir, use_cache: bool = True):
    def trace_at(b: int, record: bool, removed: int):
        traced.append(b)
        return _recording(b)

    return reuse.reused_or_traced(
        f"profile-{batch}",
        lambda: "timeline",
        batch,
        trace_at,
        _peak_profile,
        round_allocation_bytes,
        cache_dir=cache_dir,
        use_cache=use_cache,
        replay_batches=True,
    )


def test_a_new_process_replays_the_recordings_on_disk(tmp_path, traced, monkeypatch) -> None:
    first = _profile_at(8, traced, tmp_path)
    assert traced == [reuse.REPLAY_LO, reuse.REPLAY_HI]
    assert first.peak_bytes == 1024 + 512 * 8
    monkeypatch.setattr(reuse, "_TIMELINES", {})  # as in a new process
    again = _profile_at(16, traced, tmp_path)
    assert traced == [reuse.REPLAY_LO, reuse.REPLAY_HI]  # replayed from disk, not traced
    assert again.peak_bytes == 1024 + 512 * 16
    assert again.flops == {"forward": 160}


def test_without_the_cache_nothing_is_kept_on_disk(tmp_path, traced, monkeypatch) -> None:
    _profile_at(8, traced, tmp_path, use_cache=False)
    assert not (tmp_path / "timelines").exists()
    monkeypatch.setattr(reuse, "_TIMELINES", {})
    _profile_at(8, traced, tmp_path, use_cache=False)
    assert traced == [2, 3, 2, 3]


def test_recordings_kept_before_the_layout_still_load(tmp_path) -> None:
    # Older caches hold (LO, HI, events LO, events HI): read with no layout (batch 1 then
    # takes its three traces); anything else is ignored, as a miss.
    profile, events = _recording(2)
    trace_cache.store_timelines(tmp_path, "old", (profile, profile, events, events))
    assert trace_cache.load_timelines(tmp_path, "old") == (profile, profile, events, events, None)
    trace_cache.store_timelines(tmp_path, "odd", (profile, events))
    assert trace_cache.load_timelines(tmp_path, "odd") is None
