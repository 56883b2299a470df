"""The helper process for shallow traces: same answers as tracing here, and never used
where it cannot be."""

from __future__ import annotations

import dataclasses
import os
import time

import pytest
from transformers import T5Config

import dialsum.trace.reuse as reuse
from dialsum.trace import parallel, step_trace
from dialsum.trace.profile import TrainOptions, TrainShape
from dialsum.trace.step_trace import simulate_train

# 8+8 layers: deep enough to be traced shallow (repeat.MIN_LAYERS).
DEEP_T5 = T5Config(vocab_size=320, d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=8,
                   decoder_start_token_id=0)  # fmt: skip


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: no helper process")
def test_shallow_traces_in_the_helper_give_the_same_profile(monkeypatch) -> None:
    def plan() -> dict:
        monkeypatch.setattr(reuse, "_TIMELINES", {})
        profile = simulate_train(
            DEEP_T5, TrainShape(5, 24, 8), TrainOptions(precision="bf16"), use_cache=False
        )
        return dataclasses.asdict(profile)

    sent: list[int] = []
    real_submit = parallel.submit

    def counting(fn, *args):
        future = real_submit(fn, *args)
        sent.append(future is not None)
        return future

    monkeypatch.setattr(parallel, "submit", counting)
    monkeypatch.setenv(parallel.WORKERS_ENV, "1")
    parallel.start()
    try:
        with_helper = plan()
    finally:
        parallel.stop()
    assert sent and all(sent)  # the deepest shallow trace of each batch size went there
    sent.clear()
    assert plan() == with_helper  # no helper started: all traced here
    assert sent and not any(sent)


def test_nothing_is_sent_that_cannot_be_pickled_or_from_a_worker(monkeypatch) -> None:
    assert parallel.submit(lambda: 1) is None  # a closure: traced here
    monkeypatch.setenv("DIALSUM_IN_TRACE_WORKER", "1")
    parallel.start()  # not in a worker
    assert parallel._pool is None and parallel.submit(max, 1, 2) is None


def test_no_helper_unless_a_command_starts_one(monkeypatch) -> None:
    monkeypatch.setenv(parallel.WORKERS_ENV, "1")
    parallel.stop()
    assert parallel.submit(max, 1, 2) is None
    assert not parallel.speculate("x", max, 1, 2)
    assert parallel._pool is None


needs_two_cores = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: no helper")


@pytest.fixture
def helper(monkeypatch):
    """A helper process of this test's own, ended after it."""
    monkeypatch.setenv(parallel.WORKERS_ENV, "1")
    parallel.stop()
    parallel.start()
    _wait_idle()  # its start-up done: what the test sends next starts at once
    yield
    parallel.stop()


def _wait_idle(timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while parallel._running or parallel._queued:
        assert time.monotonic() < deadline, "the helper did not finish"
        time.sleep(0.05)


@needs_two_cores
def test_traces_sent_ahead_are_taken_not_traced_again(helper, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("DIALSUM_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(reuse, "_TIMELINES", {})
    shape, options = TrainShape(5, 24, 8), TrainOptions(precision="bf16")
    step_trace.speculate_train(DEEP_T5, shape, options)
    _wait_idle()
    here: list[tuple] = []
    real = step_trace._train_at

    def counted(*args):
        here.append(args[-3:])  # (batch, record, removed)
        return real(*args)

    monkeypatch.setattr(step_trace, "_train_at", counted)
    ahead = simulate_train(DEEP_T5, shape, options, use_cache=False)
    assert here == []  # all three shallow traces came from the helper
    monkeypatch.setattr(reuse, "_TIMELINES", {})
    assert simulate_train(DEEP_T5, shape, options, use_cache=False) == ahead
    # 2 and 3 layers at batch 2, 4 at batch 3 (the counting function cannot be pickled,
    # so none went to the helper)
    assert sorted(here) == [(2, True, 5), (2, True, 6), (3, True, 4)]


@needs_two_cores
def test_a_guess_not_yet_started_is_withdrawn_one_running_is_waited_for(helper) -> None:
    assert parallel.speculate("running", time.sleep, 0.5)
    assert parallel.speculate("queued", max, 1, 2)
    assert parallel.claim("queued") is None  # not started: the caller computes it
    future = parallel.claim("running")
    assert future is not None and future.result(timeout=120) is None
    assert parallel.claim("running") is None  # taken once
    _wait_idle()
    assert not parallel._sent  # the withdrawn guess was never sent


@needs_two_cores
def test_stop_ends_the_helper_without_waiting_for_a_guess(helper) -> None:
    assert parallel.speculate("long", time.sleep, 600)
    processes = list(parallel._pool._processes.values())
    started = time.monotonic()
    parallel.stop()
    for process in processes:
        process.join(timeout=30)
        assert not process.is_alive()
    assert time.monotonic() - started < 30
    assert parallel.claim("long") is None and parallel._pool is None


def test_no_guess_is_queued_without_a_helper(monkeypatch) -> None:
    monkeypatch.setenv(parallel.WORKERS_ENV, "0")
    assert not parallel.speculate("x", max, 1, 2)
    assert parallel.claim("x") is None
