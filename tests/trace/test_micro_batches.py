"""An accumulating step built from the same step traced with one micro-batch: every
field of the answer and every event equal tracing each micro-batch."""

from __future__ import annotations

from dataclasses import replace

import pytest
from transformers import PretrainedConfig

import dialsum.trace.step_trace as step_trace
from dialsum.trace.allocator import round_allocation_bytes
from dialsum.trace.micro_batches import accumulating_timeline
from dialsum.trace.profile import TrainOptions, TrainShape
from helpers import TRACE_BART, TRACE_LLAMA, TRACE_T5

_T5, _BART, _LLAMA = TRACE_T5, TRACE_BART, TRACE_LLAMA
_SHAPE = TrainShape(3, 16, 8)

CASES = [
    (_T5, TrainOptions(precision="bf16", micro_batches=2), True),
    (_T5, TrainOptions(precision="fp16", gradient_checkpointing=True, micro_batches=3), True),
    (_T5, TrainOptions(optimizer="adafactor", micro_batches=2, device="cpu"), True),
    (_BART, TrainOptions(precision="bf16", lora=True, micro_batches=2), True),
    (_LLAMA, TrainOptions(precision="pure_bf16", micro_batches=2), True),
    # bitsandbytes' Linear4bit casts its bias to bf16 on its first call only: the first
    # micro-batch is not what a later one does, so every micro-batch is traced.
    (_BART, TrainOptions(precision="bf16", lora=True, quantization="nf4", micro_batches=2), False),
]
IDS = ["t5-bf16", "t5-fp16-ckpt-3", "t5-cpu-adafactor", "bart-lora", "llama-pure-bf16",
       "bart-qlora-bias"]  # fmt: skip


def _through_last_step(timeline: list) -> list:
    # Frees after it (the rig dying whenever the garbage collector runs) replay nothing.
    return timeline[: len(timeline) - timeline[::-1].index(("step",))]


def _every_micro_batch_traced(config: PretrainedConfig, options: TrainOptions):
    return step_trace._trace_train(
        config, _SHAPE, options, round_allocation_bytes, True, build_micro_batches=False
    )


@pytest.fixture(autouse=True)
def _no_kept_steps(monkeypatch) -> None:
    monkeypatch.setattr(step_trace, "_ONE_MICRO_BATCH", type(step_trace._ONE_MICRO_BATCH)())


@pytest.mark.parametrize(("config", "options", "built"), CASES, ids=IDS)
def test_an_accumulating_step_built_from_one_micro_batch_equals_it_traced(
    monkeypatch, config: PretrainedConfig, options: TrainOptions, built: bool
) -> None:
    traced: list[int] = []  # micro-batches of each step traced
    traced_train = step_trace._traced_train

    def spy(*args):
        traced.append(args[2].micro_batches)
        return traced_train(*args)

    monkeypatch.setattr(step_trace, "_traced_train", spy)
    fast, fast_events = step_trace._trace_train(
        config, _SHAPE, options, round_allocation_bytes, True
    )
    # Built: only the step with one micro-batch is traced. Else the step is traced too.
    assert traced == ([1] if built else [1, options.micro_batches])
    whole, whole_events = _every_micro_batch_traced(config, options)
    assert fast == whole  # peaks, breakdowns, FLOPs, bytes moved, kernels: every field
    assert _through_last_step(fast_events) == _through_last_step(whole_events)

    # Costs as a shallow trace reports them (summed over the micro-batches) are built too.
    summed = step_trace._trace_train(config, _SHAPE, options, round_allocation_bytes, False, False)
    whole_summed = step_trace._trace_train(
        config, _SHAPE, options, round_allocation_bytes, False, False, build_micro_batches=False
    )
    assert summed == whole_summed

    # The step with one micro-batch, asked next, is the kept one: no trace.
    traced.clear()
    single = replace(options, micro_batches=1)
    kept, kept_events = step_trace._trace_train(
        config, _SHAPE, single, round_allocation_bytes, True
    )
    assert traced == []
    whole, whole_events = _every_micro_batch_traced(config, single)
    assert kept == whole
    assert kept_events == _through_last_step(whole_events)  # kept: the step, no later frees


def test_a_timeline_without_the_step_layout_is_not_built() -> None:
    assert accumulating_timeline([("p", "data"), ("step",)], _T5, _SHAPE, 2) is None
    assert accumulating_timeline([], _T5, _SHAPE, 2) is None
