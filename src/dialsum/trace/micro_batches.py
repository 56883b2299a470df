"""An accumulating step built from the trace of the same step with one micro-batch.

With gradient accumulation a traced step runs ``micro_batches`` forward/backward passes
over the same shapes (``step.train_step.step_forward_backward``). A later one runs the
same ops at the same sizes as the first, so its timeline is the first's, event for event,
but where each parameter's gradient lands: the first micro-batch's ``AccumulateGrad``
keeps the arriving gradient as ``.grad`` (the tracer retags it ``gradients``); a later one
adds it into ``.grad`` in place (``grad += new``, one kernel) and frees it
(``later_micro_batch``). And the first micro-batch of an accumulating step is the whole
micro-batch of a step without accumulation, whose batch has ``micro_batches`` times fewer
rows. So the accumulating timeline is built from the other one with no trace
(``accumulating_timeline``): the batch re-made alone at its rows (``batch_events``), the
micro-batch followed by its copies.

That holds only when the first micro-batch changed nothing a later one would see
differently; ``FirstMicroBatch.repeatable`` reads that off the tracker and the engine
after the micro-batch ran, and the step is traced whole otherwise. ``tests/trace/
test_micro_batches.py`` compares built with traced steps on T5, BART and Llama across
precisions, optimizers, checkpointing, LoRA and QLoRA.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PretrainedConfig

from dialsum.trace.fake_model import fresh_fake_mode
from dialsum.trace.flops import CostMeter, in_place_add_cost
from dialsum.trace.grad_accumulation import InPlaceAccumulation
from dialsum.trace.model_run import labelled_batch
from dialsum.trace.profile import MemoryProfile, TrainShape
from dialsum.trace.repeat import costs_of, set_costs
from dialsum.trace.timeline import cost_events, replay, without_costs
from dialsum.trace.trace_mode import TraceMode
from dialsum.trace.tracer import LiveStorageTracker, RoundFn
from dialsum.trace.train_profile import TRAIN_COST_PHASES, per_micro_batch_costs, train_profile

Event = tuple


def zeros_like_grads(params: list[nn.Parameter]) -> bool:
    """True when ``zeros_like(p)`` allocates what the backward left in ``p.grad`` (its
    dtype, strides and bytes): a step's optimizer phase can run on zero gradients, and
    ``grad += new`` reads and writes exactly the gradient's storage."""
    for param in params:
        grad = param.grad
        minimal = (
            sum((n - 1) * st for n, st in zip(param.shape, param.stride(), strict=True)) + 1
        ) * param.element_size()
        if (
            grad.dtype != param.dtype
            or grad.stride() != param.stride()
            or grad.storage_offset() != 0
            or grad.untyped_storage().nbytes() != minimal
        ):
            return False
    return True


def later_micro_batch(first: Sequence[Event]) -> list[Event]:
    """A later micro-batch's events from the first's (``first``: from its
    ``("p", "forward")`` to the end of its backward): each retag of an arriving gradient to
    ``gradients`` becomes the in-place sum's cost and the gradient's free."""
    out: list[Event] = []
    phase = None
    for event in first:
        if event[0] == "p":
            phase = event[1]
        if event[0] == "r" and event[3] == "gradients":
            out.append(("c", phase, *in_place_add_cost(event[1])))
            out.append(("f", event[1], event[2]))
        else:
            out.append(event)
    return out


@dataclass
class FirstMicroBatch:
    """Runs a step's forward/backward (``run``) and tells, after it ran, whether it set
    nothing up once (``set_up_nothing``: the next step's forward/backward then records its
    events again) and, for one micro-batch, whether a later micro-batch would record
    ``later_micro_batch`` of its events (``repeatable``)."""

    tracker: LiveStorageTracker
    accumulation: InPlaceAccumulation
    set_up_nothing: bool = False
    repeatable: bool = False

    def run(
        self, run: Callable[[dict], torch.Tensor], first: dict, params: Sequence[nn.Parameter]
    ) -> torch.Tensor:
        """``run(first)``, checked; returns what ``run`` returned (the step's loss total)."""
        events = self.tracker.events
        start = len(events)
        live = self.tracker.live_categories()
        not_kept = self.accumulation.gradients_not_kept
        total = run(first)
        first_events = events[events.index(("p", "forward"), start) :]
        with_grads = [p for p in params if p.grad is not None]
        self.set_up_nothing = self._set_up_nothing(live, total, with_grads)
        self.repeatable = self.set_up_nothing and self._gradients_kept(
            not_kept, with_grads, first_events
        )
        return total

    def _set_up_nothing(
        self, live: dict[int, str], total: torch.Tensor, with_grads: list[nn.Parameter]
    ) -> bool:
        """Every storage alive before is alive after, in its category, and the only new
        ones are the gradients and the loss total: nothing was set up once (QLoRA's
        ``Linear4bit`` casts its bias to the compute dtype on its first call, freeing the
        fp32 one: a later call does not)."""
        grads = {id(p.grad.untyped_storage()) for p in with_grads}
        now = self.tracker.live_categories()
        return (
            all(now.get(key) == category for key, category in live.items())
            and now.keys() - live.keys() == grads | {id(total.untyped_storage())}
            and len(grads) == len(with_grads)
        )

    def _gradients_kept(
        self, not_kept: int, with_grads: list[nn.Parameter], first_events: list[Event]
    ) -> bool:
        """Every gradient arrived and stayed as ``.grad`` (the engine stole it,
        ``InPlaceAccumulation.gradients_not_kept``), one retag each, each in a storage of
        its own laid out like its parameter (``zeros_like_grads``)."""
        return (
            self.accumulation.gradients_not_kept == not_kept
            and sum(e[0] == "r" and e[3] == "gradients" for e in first_events) == len(with_grads)
            and zeros_like_grads(with_grads)
        )


def batch_events(
    config: PretrainedConfig, rows: int, shape: TrainShape
) -> tuple[list[Event], list[Event]]:
    """(events making, events freeing) a traced step's batch of ``rows`` rows
    (``model_run.labelled_batch``), with their costs, as the step's ``data`` phases record
    them: the batch alone, on fake tensors."""
    tracker = LiveStorageTracker(record=True)
    meter = CostMeter(lambda: "data", sink=tracker.events)
    with fresh_fake_mode(), TraceMode(tracker, meter):
        batch = labelled_batch(config, rows, shape.source_len, shape.target_len)
        made = len(tracker.events)
        del batch
    return tracker.events[:made], tracker.events[made:]


def accumulating_timeline(
    events: Sequence[Event], config: PretrainedConfig, shape: TrainShape, micro_batches: int
) -> list[Event] | None:
    """The timeline of a step with ``micro_batches`` micro-batches of ``shape.batch`` rows,
    from ``events``: the same point traced with one (its micro-batch ``repeatable``, its
    second step reused from its first: every step region is whole). None when ``events``
    does not have the layout expected (then trace).

    Per step: the batch is made with ``micro_batches`` times the rows (``batch_events``;
    those of one micro-batch must be exactly what ``events`` has), the micro-batch is
    followed by ``later_micro_batch`` copies before the loss total is freed, and the batch
    is freed with its rows. A step region without cost events (the warm-up step's) stays
    without."""
    made_one, freed_one = batch_events(config, shape.batch, shape)
    made_all, freed_all = batch_events(config, shape.batch * micro_batches, shape)
    out: list[Event] = []
    done, steps = 0, 0
    try:
        while ("step",) in events[done:]:
            start = events.index(("p", "data"), done)
            forward = events.index(("p", "forward"), start)
            optimizer = events.index(("p", "optimizer"), forward)
            data = events.index(("p", "data"), optimizer)
            end = events.index(("step",), data)
            costed = any(e[0] == "c" for e in events[start:optimizer])
            strip = (lambda es: list(es)) if costed else without_costs
            made = strip(made_one)
            if list(events[start + 1 : start + 1 + len(made)]) != made:
                return None
            total = events[start + 1 + len(made) : forward]  # the loss total: made, ...
            micro = events[forward:optimizer]  # ... then freed last
            allocated = [e for e in total if e[0] == "a"]
            if len(allocated) != 1 or micro[-1] != ("f", *allocated[0][1:]):
                return None
            if list(events[data + 1 : end]) != freed_one:
                return None
            later = strip(later_micro_batch(micro[:-1]))
            out += [*events[done:start], ("p", "data"), *strip(made_all), *total]
            out += [*micro[:-1], *later * (micro_batches - 1), micro[-1]]
            out += [*events[optimizer:data], ("p", "data"), *freed_all, ("step",)]
            done, steps = end + 1, steps + 1
    except ValueError:  # a marker missing
        return None
    return [*out, *events[done:]] if steps == 2 else None


def built_step(
    one: list,
    profile: MemoryProfile,
    config: PretrainedConfig,
    shape: TrainShape,
    micro_batches: int,
    round_fn: RoundFn,
    per_micro_batch: bool,
) -> tuple[MemoryProfile, list] | None:
    """``step_trace``'s answer with ``micro_batches``, built from the step with
    one traced at the same point (``one``, ``profile``); None if its layout is not the
    one expected (``accumulating_timeline``)."""
    events = accumulating_timeline(one, config, shape, micro_batches)
    if events is None:
        return None
    steps = replay(events, events, 1, 2, 1, round_fn)
    built = train_profile(profile.params, profile.trainable_params, steps)
    # The step's costs are the second step's events' (as traced: step 1's are dropped) and
    # the optimizer's, which the timeline does not carry and accumulation does not change.
    costs = cost_events(events[events.index(("step",)) + 1 :], TRAIN_COST_PHASES)
    for cost, by_phase in costs_of(profile).items():
        costs[cost]["optimizer"] = by_phase.get("optimizer", 0)
    set_costs(built, per_micro_batch_costs(costs, micro_batches) if per_micro_batch else costs)
    return built, events
