"""Later micro-batches copied, or a whole accumulating step built from a trace with one
micro-batch: every field of the answer and every event equal tracing each micro-batch."""

from __future__ import annotations

import pytest
from transformers import BartConfig, LlamaConfig, PretrainedConfig, T5Config

import dialsum.trace.step_trace as step_trace
from dialsum.trace.allocator import round_allocation_bytes
from dialsum.trace.micro_batches import MicroBatchCopier, NotCopyable, accumulating_timeline
from dialsum.trace.profile import TrainOptions, TrainShape

_T5 = T5Config(vocab_size=320, d_model=32, d_ff=64, d_kv=8, num_heads=4, num_layers=2,
               decoder_start_token_id=0)  # fmt: skip
_BART = BartConfig(vocab_size=320, d_model=32, encoder_layers=2, decoder_layers=2,
                   encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                   decoder_ffn_dim=64, max_position_embeddings=64)  # fmt: skip
_LLAMA = LlamaConfig(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2,
                     max_position_embeddings=128)  # fmt: skip
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
        config, _SHAPE, options, round_allocation_bytes, True, copy_micro_batches=False
    )


@pytest.fixture(autouse=True)
def _no_kept_traces(monkeypatch) -> None:
    monkeypatch.setattr(step_trace, "_ONE_MICRO_BATCH", type(step_trace._ONE_MICRO_BATCH)())
    monkeypatch.setattr(step_trace, "_NOT_REPEATABLE", set())


@pytest.mark.parametrize(("config", "options", "copied"), CASES, ids=IDS)
def test_later_micro_batches_copied_equal_them_traced(
    monkeypatch, config: PretrainedConfig, options: TrainOptions, copied: bool
) -> None:
    outcomes: list[bool] = []
    first_then_copies = MicroBatchCopier.first_then_copies

    def spy(self, *args, **kwargs):
        try:
            total = first_then_copies(self, *args, **kwargs)
        except NotCopyable:
            outcomes.append(False)
            raise
        outcomes.append(True)
        return total

    monkeypatch.setattr(MicroBatchCopier, "first_then_copies", spy)
    fast, fast_events = step_trace._trace_train(
        config, _SHAPE, options, round_allocation_bytes, True
    )
    assert outcomes == [copied]
    whole, whole_events = _every_micro_batch_traced(config, options)
    assert outcomes == [copied]  # tracing every micro-batch uses no copier
    assert fast == whole  # peaks, breakdowns, FLOPs, bytes moved, kernels: every field
    assert _through_last_step(fast_events) == _through_last_step(whole_events)


@pytest.mark.parametrize(("config", "options", "built"), CASES, ids=IDS)
def test_an_accumulating_step_built_from_one_micro_batch_equals_it_traced(
    monkeypatch, config: PretrainedConfig, options: TrainOptions, built: bool
) -> None:
    from dataclasses import replace

    single = replace(options, micro_batches=1)
    step_trace._trace_train(config, _SHAPE, single, round_allocation_bytes, True)
    assert len(step_trace._ONE_MICRO_BATCH) == (1 if built else 0)
    traced: list[int] = []
    traced_train = step_trace._traced_train
    monkeypatch.setattr(
        step_trace, "_traced_train", lambda *a: traced.append(1) or traced_train(*a)
    )
    fast, fast_events = step_trace._trace_train(
        config, _SHAPE, options, round_allocation_bytes, True
    )
    assert traced == ([] if built else [1])  # built: no trace; else known not to repeat
    whole, whole_events = _every_micro_batch_traced(config, options)
    assert fast == whole
    assert _through_last_step(fast_events) == _through_last_step(whole_events)
    # Costs as a shallow trace reports them (summed over micro-batches) are built too.
    summed = step_trace._trace_train(config, _SHAPE, options, round_allocation_bytes, False, False)
    whole_summed = step_trace._trace_train(
        config, _SHAPE, options, round_allocation_bytes, False, False, copy_micro_batches=False
    )
    assert summed == whole_summed


def test_a_timeline_without_the_step_layout_is_not_built() -> None:
    assert accumulating_timeline([("p", "data"), ("step",)], _T5, _SHAPE, 2) is None
    assert accumulating_timeline([], _T5, _SHAPE, 2) is None
