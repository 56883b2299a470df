"""One dispatch layer hosting the tracker, the cost meter and the in-place gradient sums
records what the three stacked modes recorded; the fake mode's faster cache keys are
FakeTensor's own keys."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from transformers import PretrainedConfig

import dialsum.trace.generation_trace as generation_trace
import dialsum.trace.step_trace as step_trace
from dialsum.trace.allocator import round_allocation_bytes
from dialsum.trace.fake_model import SizedCacheFakeTensorMode, fake_model_from_config
from dialsum.trace.flops import CostMeter
from dialsum.trace.grad_accumulation import InPlaceAccumulation
from dialsum.trace.model_run import labelled_batch, track_model
from dialsum.trace.profile import GenerateOptions, GenerateShape, TrainOptions, TrainShape
from dialsum.trace.trace_mode import TraceMode
from dialsum.trace.tracer import LiveStorageTracker
from helpers import TRACE_BART, TRACE_LLAMA, TRACE_T5

_T5, _BART, _LLAMA = TRACE_T5, TRACE_BART, TRACE_LLAMA


def _forward_backward(config: PretrainedConfig, hosted: bool) -> tuple:
    """A forward and backward on fake tensors under the three tools, stacked as separate
    modes or hosted by one ``TraceMode``: (timeline, costs, engine sums made in place)."""
    config = copy.deepcopy(config)
    mode = SizedCacheFakeTensorMode()
    model = fake_model_from_config(config, mode)
    tracker = LiveStorageTracker(round_allocation_bytes, record=True)
    meter = CostMeter(lambda: tracker.phase, sink=tracker.events)
    accumulation = InPlaceAccumulation()
    layers = [mode, TraceMode(tracker, meter, accumulation)] if hosted else [
        mode, meter, tracker, accumulation]  # fmt: skip
    with contextlib.ExitStack() as stack:
        for layer in layers:
            stack.enter_context(layer)
        track_model(tracker, model)
        tracker.set_phase("forward", default_category="activations")
        batch = labelled_batch(config, 2, 12, 6)
        loss = model(**batch).loss
        tracker.set_phase("backward")
        loss.backward()
        del loss, batch
    return tracker.events, meter.phases(), accumulation.in_place


@pytest.mark.parametrize("config", [_T5, _BART, _LLAMA], ids=["t5", "bart", "llama"])
def test_one_hosting_mode_records_what_the_stacked_modes_did(config: PretrainedConfig) -> None:
    stacked = _forward_backward(config, hosted=False)
    hosted = _forward_backward(config, hosted=True)
    events, costs, in_place = hosted
    assert events == stacked[0]
    assert costs == stacked[1]
    assert in_place == stacked[2]
    assert sum(costs["flops"].values()) > 0 and any(e[0] == "c" for e in events)
    if config is not _LLAMA:  # a tied or shared embedding: the engine sums its gradients
        assert in_place > 0


class _CheckedKeys(SizedCacheFakeTensorMode):
    """Every cache key also computed by FakeTensor's own code, and compared."""

    compared = 0

    def _cache_key(self, state, func, args, kwargs):
        fast = super()._cache_key(state, func, args, kwargs)
        self.__class__ = FakeTensorMode  # its methods all the way down
        try:
            base = FakeTensorMode._cache_key(self, state, func, args, kwargs)
        finally:
            self.__class__ = _CheckedKeys
        assert fast.key == base.key, func
        _CheckedKeys.compared += 1
        return fast


@pytest.fixture
def checked_keys(monkeypatch):
    monkeypatch.setattr(step_trace, "fresh_fake_mode", _CheckedKeys)
    monkeypatch.setattr(generation_trace, "fresh_fake_mode", _CheckedKeys)
    monkeypatch.setattr(step_trace, "_ONE_MICRO_BATCH", type(step_trace._ONE_MICRO_BATCH)())
    _CheckedKeys.compared = 0
    # A key is computed on every cached dispatch, hit or miss.
    return _CheckedKeys


@pytest.mark.parametrize(
    ("config", "options"),
    [
        (_T5, TrainOptions(precision="bf16", gradient_checkpointing=True)),
        (_T5, TrainOptions(precision="fp16", optimizer="adafactor")),
        (_BART, TrainOptions(precision="bf16", lora=True, quantization="nf4")),
        (_LLAMA, TrainOptions(precision="pure_bf16")),
    ],
    ids=["t5-bf16-ckpt", "t5-fp16-adafactor", "bart-qlora", "llama-pure-bf16"],
)
def test_fast_cache_keys_are_fake_tensors_own_in_training(
    checked_keys, config: PretrainedConfig, options: TrainOptions
) -> None:
    step_trace._trace_train(
        config, TrainShape(2, 16, 8), options, round_allocation_bytes, build_micro_batches=False
    )
    assert checked_keys.compared > 500


def test_fast_cache_keys_are_fake_tensors_own_in_generation(checked_keys) -> None:
    generation_trace._trace_generate(
        _T5, GenerateShape(2, 16, 8, 3, 6), GenerateOptions(precision="bf16", amp=True),
        round_allocation_bytes,
    )  # fmt: skip
    assert checked_keys.compared > 100


def test_fast_cache_keys_fall_back_for_what_they_do_not_cover() -> None:
    """List, Size, tuple and dtype arguments, a list of tensors, strided views: the same
    keys; a constant tensor goes to FakeTensor's own walk, which bypasses the cache."""
    _CheckedKeys.compared = 0
    mode = _CheckedKeys()
    with mode:
        a = torch.empty(4, 6)
        a.sum(dim=[0, 1], keepdim=True)  # a list argument
        a.view(torch.Size([6, 4]))  # a Size argument
        torch.cat([a, a], dim=0)  # a list of tensors
        a.to(torch.float16).transpose(0, 1).contiguous()  # strides, dtype argument
        a.new_empty_strided((2, 3), (3, 1))  # tuple arguments
        a[0, :2] + torch.tensor([1.0, 2.0])  # a constant
    assert mode.compared >= 6
