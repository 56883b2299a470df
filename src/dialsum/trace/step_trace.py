"""Peak GPU memory of seq2seq training and generation, predicted on a CPU.

The real model code (transformers' T5/mT5/BART) runs on *fake* CPU tensors: shapes, dtypes
and autograd are real, data is not, and no weight memory is allocated. A
``LiveStorageTracker`` counts the bytes of every live storage, rounded as the CUDA caching
allocator rounds them, and records the peak per phase. ``CudaEmulationMode`` makes the
CPU trace allocate what CUDA would (fused dropout, memory-efficient attention, CUDA's
autocast op lists).

Training (``simulate_train``) runs two steps - forward with labels, backward,
``optimizer.step()``, ``zero_grad(set_to_none=True)`` - so the second step sees the
optimizer state the first created. The result is the higher of the two steps (the second
in practice). The second step's forward/backward records exactly the first's events (a
fake-cache hit allocates what the kernel did: ``fake_model.SizedCacheFakeTensorMode``), so
only its optimizer phase is traced, on zero gradients laid out as the backward left them,
and its peaks are replayed with the first step's forward/backward in place (about 45 % of
a trace saved; ``tests/trace/test_step_trace.py`` checks it against tracing it whole).
A step with gradient accumulation is not traced at all where the same step with one
micro-batch was: its later micro-batches are the same events but for their gradients,
added into ``.grad`` (``trace.micro_batches``, which checks that this holds).

Phases: ``forward``, ``backward``, ``optimizer``. Breakdown categories:
``weights`` (parameters and buffers), ``gradients`` (``.grad``), ``optimizer_state``,
``activations`` (storages created during forward: what autograd saved, plus forward's
own short-lived tensors while forward runs), ``temporaries`` (everything else).

Generation is traced in ``trace.generation_trace``; what both traces share is in
``trace.model_run`` (running the model) and ``trace.reuse`` (replay, disk cache).
"""

from __future__ import annotations

import copy
import functools
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn
from transformers import PretrainedConfig

from dialsum.models.architectures import is_causal
from dialsum.models.stacks import stacks_of, without_layers
from dialsum.step.train_step import step_forward_backward
from dialsum.trace import cache as trace_cache
from dialsum.trace.cuda_emulation import CudaEmulationMode
from dialsum.trace.fake_model import (
    fresh_fake_mode,
    trainable_params,
)
from dialsum.trace.flops import CostMeter
from dialsum.trace.grad_accumulation import InPlaceAccumulation
from dialsum.trace.micro_batches import FirstMicroBatch, built_step, zeros_like_grads
from dialsum.trace.model_run import (
    emulation_on,
    labelled_batch,
    prepared_model,
    track_model,
)
from dialsum.trace.optimizers import state_tensors
from dialsum.trace.profile import MemoryProfile, TrainOptions, TrainShape
from dialsum.trace.repeat import TraceAt, Traced, set_costs
from dialsum.trace.reuse import default_round_fn, reused_or_traced, speculate
from dialsum.trace.timeline import replay, without_costs
from dialsum.trace.trace_mode import TraceMode
from dialsum.trace.tracer import LiveStorageTracker, PeakRecord, RoundFn
from dialsum.trace.train_profile import (
    TRAIN_COST_PHASES,
    per_micro_batch_costs,
    train_profile,
)
from dialsum.trace.train_rig import TrainRig, build_train_rig

# fp16 AMP: the loss is scaled by GradScaler's initial scale, grads unscaled in place.
GRAD_SCALER_INIT_SCALE = 2.0**16


def _train_step(
    rig: TrainRig,
    batch: dict | None,
    tracker: LiveStorageTracker,
    emulation: CudaEmulationMode,
    options: TrainOptions,
    micro: int,
    grads_like: Sequence[nn.Parameter] = (),
    check: FirstMicroBatch | None = None,
) -> tuple[list[nn.Parameter], bool]:
    """One optimizer step as the guarded trainer runs it: ``step.train_step.step_forward_backward``
    over the micro-batches of ``batch``, then ``optimizer.step()`` and ``zero_grad``.

    ``batch=None``: no forward/backward; ``grads_like`` get zero gradients (what a backward
    leaves: one per parameter it reached, laid out like the parameter) and only the
    optimizer phase runs. A ``check`` runs a step of one micro-batch (``FirstMicroBatch``).
    Returns the parameters that had a gradient at the optimizer and whether zero gradients
    would have been allocated the same (``zeros_like_grads``)."""

    def forward_phase(_chunk: dict) -> None:
        tracker.set_phase("forward", default_category="activations")

    def backward(loss: torch.Tensor) -> None:
        tracker.set_phase("backward")
        if options.precision == "fp16":
            loss = loss * GRAD_SCALER_INIT_SCALE  # GradScaler.scale
        loss.backward()

    if batch is None:
        tracker.set_phase("backward")
        for param in grads_like:
            param.grad = torch.zeros_like(param)
            tracker.track(param.grad, "gradients")  # as the accumulate-grad hook retags
    else:
        model = prepared_model(rig.model, emulation, options.precision, options.device)
        run = functools.partial(
            step_forward_backward,
            model,
            micro=micro,
            normalizer=1.0,  # a Python float in the trainer too: no tensor
            backward=backward,
            before_micro_batch=forward_phase,
            trim=False,  # fake tensors hold no values; the simulated rows are unpadded
            causal=is_causal(rig.model.config),
        )
        if check is None:
            run(batch)
        else:
            check.run(run, batch, trainable_params(rig.model))

    tracker.set_phase("optimizer")
    tracker.name_parameters(_parameter_names(rig.model))
    with_grads = [p for p in trainable_params(rig.model) if p.grad is not None]
    same_as_zeros = zeros_like_grads(with_grads)
    grads = [p.grad for p in with_grads]
    if options.precision == "fp16" and grads:
        # GradScaler.unscale_: in-place on the grads, plus a one-element found_inf flag.
        torch.zeros(1)
        torch._foreach_mul_(grads, 1.0 / GRAD_SCALER_INIT_SCALE)
    del grads
    rig.optimizer.step()
    tracker.name_parameters(None)
    tracker.track_all(state_tensors(rig.optimizer), "optimizer_state")
    rig.optimizer.zero_grad(set_to_none=True)
    return with_grads, same_as_zeros


_LAYER_INDEX = re.compile(r"\.\d+\.")


def _parameter_names(model: nn.Module) -> dict[int, str]:
    """``id(storage)`` of every trainable parameter and its gradient -> its name with the
    layer index taken out (``encoder.block.*.layer.0.SelfAttention.q.weight``: the first
    number in a name is the stack's layer), for ``LiveStorageTracker.name_parameters``."""
    names: dict[int, str] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            local = _LAYER_INDEX.sub(".*.", name, count=1)
            names[id(param.untyped_storage())] = local
            if param.grad is not None:
                names[id(param.grad.untyped_storage())] = local
    return names


def _traced_step(
    config: PretrainedConfig,
    rig: TrainRig,
    tracker: LiveStorageTracker,
    emulation: CudaEmulationMode,
    options: TrainOptions,
    shape: TrainShape,
    check: FirstMicroBatch | None = None,
) -> tuple[list[nn.Parameter], bool]:
    """A whole step on a fresh batch, ending with ``("step",)``; the batch is freed in a
    ``data`` phase of its own (after the optimizer), so a reused step can free it too."""
    tracker.set_phase("data")
    rows = shape.batch * options.micro_batches
    batch = labelled_batch(config, rows, shape.source_len, shape.target_len)
    result = _train_step(rig, batch, tracker, emulation, options, shape.batch, check=check)
    tracker.set_phase("data")
    del batch
    tracker.events.append(("step",))
    return result


def _last_index(events: list, event: tuple, before: int) -> int:
    return before - 1 - events[before - 1 :: -1].index(event)


def _grad_hooks(tracker: LiveStorageTracker, params: list[nn.Parameter]) -> list:
    def retag(param: nn.Parameter) -> None:
        tracker.track(param.grad, "gradients")

    return [p.register_post_accumulate_grad_hook(retag) for p in params]


def _trace_train(
    config: PretrainedConfig,
    shape: TrainShape,
    options: TrainOptions,
    round_fn: RoundFn,
    record: bool = False,
    per_micro_batch: bool = True,
    build_micro_batches: bool = True,
) -> tuple[MemoryProfile, list | None]:
    """(profile, recorded timeline or None). ``per_micro_batch=False`` keeps the step's
    summed costs (a shallow trace: the mean is taken after repeating layers, where the
    integer division is exact to do).

    With ``build_micro_batches`` a step with several micro-batches is built from the same
    step with one (``trace.micro_batches``), traced first if this process has not, where
    that is exact; else, or without it, every micro-batch is traced."""
    if not build_micro_batches:
        return _traced_train(config, shape, options, round_fn, record, per_micro_batch, None)
    point = _point_key(config, shape, options, round_fn)
    if point not in _ONE_MICRO_BATCH:
        one = replace(options, micro_batches=1)
        _traced_train(config, shape, one, round_fn, False, per_micro_batch, point)
    profile, events, repeatable = _ONE_MICRO_BATCH[point]
    _ONE_MICRO_BATCH.move_to_end(point)
    if options.micro_batches == 1:  # its costs per micro-batch are its sums
        return copy.deepcopy(profile), list(events) if record else None
    built = repeatable and built_step(
        events, profile, config, shape, options.micro_batches, round_fn, per_micro_batch
    )
    if built:
        return built[0], built[1] if record else None
    return _traced_train(config, shape, options, round_fn, record, per_micro_batch, None)


# Steps with one micro-batch traced in this process, by point (model, shape, options
# without accumulation): (profile, timeline, whether its micro-batch repeats).
_ONE_MICRO_BATCH: OrderedDict[str, tuple[MemoryProfile, list, bool]] = OrderedDict()
_ONE_MICRO_BATCH_KEPT = 64  # a few thousand events each; a guide section asks for ~30


def _point_key(
    config: PretrainedConfig, shape: TrainShape, options: TrainOptions, round_fn: RoundFn
) -> str:
    """What a step with one micro-batch and one with several have in common."""
    one = replace(options, micro_batches=1)
    return trace_cache.cache_key("train-point", config, shape, one, round_fn.__name__)


def _traced_train(
    config: PretrainedConfig,
    shape: TrainShape,
    options: TrainOptions,
    round_fn: RoundFn,
    record: bool,
    per_micro_batch: bool,
    point: str | None,
) -> tuple[MemoryProfile, list | None]:
    """The trace; with ``point`` (``_point_key``; one micro-batch) its micro-batch is
    checked (``FirstMicroBatch``) and the step kept in ``_ONE_MICRO_BATCH``."""
    config = copy.deepcopy(config)  # building unties heads on the config; keep the caller's
    mode = fresh_fake_mode()
    rig = build_train_rig(config, options, mode)
    tracker = LiveStorageTracker(round_fn, record=True)  # step 2 is built from the events
    emulation = CudaEmulationMode()
    hooks = _grad_hooks(tracker, trainable_params(rig.model))
    # FLOPs, bytes moved and kernels of the step (counted before the tracker sees an op).
    meter = CostMeter(lambda: tracker.phase, sink=tracker.events, unsunk=_UNSUNK)
    step_peaks: list[tuple[PeakRecord, dict[str, PeakRecord]]] = []
    # The engine's in-place gradient sums, which any dispatch mode turns off, first. Made
    # before the modes are entered: its first construction probes the engine without them.
    accumulation = InPlaceAccumulation()
    check = FirstMicroBatch(tracker, accumulation)
    try:
        with mode, emulation_on(emulation, options.device), TraceMode(tracker, meter, accumulation):
            track_model(tracker, rig.model)
            events = tracker.events
            # Step 1: forward/backward, and the optimizer step that creates its state.
            meter.reset()
            tracker.reset_peaks()
            first = len(events)
            with_grads, same_as_zeros = _traced_step(
                config, rig, tracker, emulation, options, shape, check
            )
            step_peaks.append((tracker.peak, dict(tracker.phase_records)))
            first_costs = meter.phases(TRAIN_COST_PHASES)
            first_end = len(events) - 1  # its ("step",)
            # Step 2 (steady: the state exists). Its forward/backward records exactly the
            # events of step 1's (same ops, cache hits sized as computed) when step 1's set
            # nothing up once, so only its optimizer phase is traced, on zero gradients
            # shaped as the backward left them; its peaks come from replaying step 1's
            # forward/backward in its place.
            meter.reset()
            tracker.reset_peaks()
            second = len(events)
            if same_as_zeros and check.set_up_nothing:
                batch_freed = events[_last_index(events, ("p", "data"), first_end) : first_end]
                _train_step(rig, None, tracker, emulation, options, shape.batch, with_grads)
                events.extend([*batch_freed, ("step",)])
                optimizer_at = events.index(("p", "optimizer"), second)
                events[second:optimizer_at] = events[
                    first : events.index(("p", "optimizer"), first)
                ]
                step_peaks[:] = replay(events, events, 1, 2, 1, round_fn)
                costs = {
                    cost: {**first_costs[cost], "optimizer": by_phase.get("optimizer", 0)}
                    for cost, by_phase in meter.phases(TRAIN_COST_PHASES).items()
                }
            else:  # a gradient laid out unlike its parameter, a one-time cast: whole
                _traced_step(config, rig, tracker, emulation, options, shape)
                step_peaks.append((tracker.peak, dict(tracker.phase_records)))
                costs = meter.phases(TRAIN_COST_PHASES)
            # The timeline's cost events are the step's costs (the optimizer's aside): step
            # 2's (its forward and backward are step 1's, as above); step 1's are dropped.
            events[:second] = without_costs(events[:second])
    finally:
        for hook in hooks:
            hook.remove()
    profile = train_profile(rig.params, rig.trainable, step_peaks)
    set_costs(
        profile, per_micro_batch_costs(costs, options.micro_batches) if per_micro_batch else costs
    )
    if point is not None:
        repeatable = check.repeatable and same_as_zeros
        # Through its last ("step",): the frees after it (the rig dying) replay nothing.
        events = tracker.events[: _last_index(tracker.events, ("step",), len(tracker.events)) + 1]
        _ONE_MICRO_BATCH[point] = (copy.deepcopy(profile), events, repeatable)
        while len(_ONE_MICRO_BATCH) > _ONE_MICRO_BATCH_KEPT:
            _ONE_MICRO_BATCH.popitem(last=False)
    return profile, tracker.events if record else None


_UNSUNK = frozenset({"optimizer"})  # see flops.CostMeter


def _train_at(
    config: PretrainedConfig,
    shape: TrainShape,
    options: TrainOptions,
    round_fn: RoundFn,
    batch: int,
    record: bool,
    removed: int,
) -> Traced:
    """``simulate_train``'s trace at ``batch`` with ``removed`` layers fewer per stack."""
    shallow = without_layers(config, removed) if removed else config
    at = replace(shape, batch=batch)
    return _trace_train(shallow, at, options, round_fn, record, per_micro_batch=not removed)


def _train_work(
    config: PretrainedConfig, shape: TrainShape, options: TrainOptions, round_fn: RoundFn
) -> tuple[TraceAt, Callable[[], str]]:
    """``trace_at`` and the timeline key of ``simulate_train``'s question. ``trace_at`` is a
    module-level function with its arguments bound: picklable, so a trace can run in the
    helper process (``trace.parallel``)."""
    trace_at = functools.partial(_train_at, config, shape, options, round_fn)

    def timeline_key() -> str:
        return trace_cache.cache_key(
            "timeline", config, shape.source_len, shape.target_len, options, round_fn.__name__
        )

    return trace_at, timeline_key


def speculate_train(config: PretrainedConfig, shape: TrainShape, options: TrainOptions) -> None:
    """Start ``simulate_train(config, shape, options)``'s first traces in the helper
    process's idle time (``reuse.speculate``): a plan that asks later finds them done."""
    trace_at, timeline_key = _train_work(config, shape, options, default_round_fn(options.device))
    speculate(timeline_key, trace_at, stacks_of(config))


def simulate_train(
    config: PretrainedConfig,
    shape: TrainShape,
    options: TrainOptions = TrainOptions(),  # noqa: B008 - frozen dataclass
    *,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    round_fn: RoundFn | None = None,
    replay_batches: bool = True,
) -> MemoryProfile:
    """Peak GPU memory of one training step of ``config`` at ``shape`` with ``options``.

    Results are cached on disk (see ``dialsum.trace.cache``); a custom ``round_fn`` (e.g.
    ``allocator.exact_bytes`` to compare with a CPU run) bypasses the cache.

    Batch sizes above 1 are computed by replaying timelines recorded at batch 2 and 3 with
    every allocation resized for the batch (``dialsum.trace.timeline``: exact, and checked
    against direct traces in the tests); the two recordings are kept for this process, so
    each further batch size costs a replay (~0.1 s) instead of a trace (~10 s for T5-base).
    ``replay_batches=False`` traces directly at full depth.

    A model whose stacks have at least ``repeat.MIN_LAYERS`` layers is traced with a few
    layers per stack instead (T5: 2 and 3 at batch 2, 4 at batch 3; see ``trace.repeat``):
    the difference between the recordings is the event block one more layer adds, and the
    full-depth timeline is those blocks repeated, then replayed like any other recording
    (``dialsum.trace.depth``).
    Nothing is extrapolated from peaks: the whole event sequence is checked to repeat
    exactly, else the full depth is traced. (Extrapolating *peaks* from 1-2 layer copies was
    tried before and was wrong on real models: 6.96 GiB against 5.77 GiB on eenzeenee at
    batch 4, 512/64, because the moment of the backward peak moves with depth.)
    """

    round_fn = round_fn or default_round_fn(options.device)
    trace_at, timeline_key = _train_work(config, shape, options, round_fn)
    return reused_or_traced(
        trace_cache.cache_key("train", config, shape, options, round_fn.__name__),
        timeline_key,
        shape.batch,
        trace_at,
        lambda base, steps: train_profile(base.params, base.trainable_params, steps),
        round_fn,
        cache_dir=cache_dir,
        use_cache=use_cache,
        replay_batches=replay_batches,
        stacks=stacks_of(config),
        finish_costs=lambda costs: per_micro_batch_costs(costs, options.micro_batches),
    )
