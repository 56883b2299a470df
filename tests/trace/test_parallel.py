"""The helper process for shallow traces: same answers as tracing here, and never used
where it cannot be."""

from __future__ import annotations

import dataclasses
import os

import pytest
from transformers import T5Config

import dialsum.trace.reuse as reuse
from dialsum.trace import parallel
from dialsum.trace.profile import TrainOptions, TrainShape
from dialsum.trace.step_trace import simulate_train

# 8+8 layers: deep enough to be traced shallow (reuse.MIN_LAYERS).
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
    with_helper = plan()
    assert sent and all(sent)  # the deepest shallow trace of each batch size went there
    monkeypatch.setenv(parallel.WORKERS_ENV, "0")
    sent.clear()
    assert plan() == with_helper
    assert sent and not any(sent)


def test_nothing_is_sent_that_cannot_be_pickled_or_from_a_worker(monkeypatch) -> None:
    assert parallel.submit(lambda: 1) is None  # a closure: traced here
    monkeypatch.setenv("DIALSUM_IN_TRACE_WORKER", "1")
    assert parallel.submit(max, 1, 2) is None
