"""The questions a plan names ahead are questions it then asks (right guesses save a
trace on the other core; a wrong one only costs that core)."""

from __future__ import annotations

from dataclasses import replace

from test_plan import ZERO, FakeSimulator, fp32_gpu_for_rows, gpu_with, request

from dialsum.memory.plan import make_plan
from dialsum.memory.simulator import Simulator
from dialsum.trace.profile import GenerateShape, TrainShape


def _timeline(shape, options) -> tuple:
    """What names a recording (``trace.reuse``): everything but the batch."""
    return (type(shape).__name__, replace(shape, batch=0), options)


def _plan_with_ahead(req, gpu) -> tuple[list, FakeSimulator]:
    sim = FakeSimulator()
    named: list = []
    simulator = Simulator(
        train=sim.train, generate=sim.generate, ahead=lambda _c, s, o: named.append((s, o))
    )
    make_plan(req, gpu, ZERO, simulator)
    return named, sim


def test_every_question_named_ahead_is_asked_when_the_step_accumulates() -> None:
    named, sim = _plan_with_ahead(request(effective_batch_size=32), fp32_gpu_for_rows(7))
    asked = {_timeline(s, o) for s, o in sim.train_calls + sim.generate_calls}
    assert [type(s) for s, _ in named] == [GenerateShape, GenerateShape, TrainShape]
    assert {_timeline(s, o) for s, o in named} <= asked
    # The accumulating step: a second micro-batch with the first one's gradients alive.
    assert named[-1][1].micro_batches == 2


def test_nothing_accumulates_when_the_per_rank_batch_is_one_row() -> None:
    named, sim = _plan_with_ahead(request(effective_batch_size=1), gpu_with(80 << 30))
    assert [type(s) for s, _ in named] == [GenerateShape, GenerateShape]
    asked = {_timeline(s, o) for s, o in sim.generate_calls}
    assert {_timeline(s, o) for s, o in named} <= asked


def test_a_simulator_without_ahead_is_asked_nothing_early() -> None:
    sim = FakeSimulator()
    plan = make_plan(request(), fp32_gpu_for_rows(7), ZERO, sim.as_simulator())
    assert plan.fits and sim.as_simulator().ahead is None
