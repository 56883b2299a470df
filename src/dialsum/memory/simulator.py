"""The simulator the planner asks, injectable, and one memo of its answers.

``Simulator`` holds the two simulations a plan needs (a training step, a generation
step); the defaults trace the real model code (``trace.step_trace``,
``trace.generation_trace``), tests inject exact analytic fakes. ``SimulationMemo``
remembers answers: bisection revisits shapes within one plan, and the guide plans ten GPUs
(then plots) that revisit them again. A fake-tensor trace of T5-base takes seconds, a
dictionary lookup nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dialsum.trace.profile import (
    GenerateOptions,
    GenerateShape,
    MemoryProfile,
    TrainOptions,
    TrainShape,
)

if TYPE_CHECKING:
    from transformers import PretrainedConfig


def _real_train(
    config: PretrainedConfig, shape: TrainShape, options: TrainOptions
) -> MemoryProfile:
    # Imported late: the simulator traces real model code and pulls in torch/transformers.
    from dialsum.trace.step_trace import simulate_train

    return simulate_train(config, shape, options)


def _real_generate(
    config: PretrainedConfig, shape: GenerateShape, options: GenerateOptions
) -> MemoryProfile:
    from dialsum.trace.generation_trace import simulate_generate

    return simulate_generate(config, shape, options)


def _real_ahead(
    config: PretrainedConfig,
    shape: TrainShape | GenerateShape,
    options: TrainOptions | GenerateOptions,
) -> None:
    if isinstance(shape, TrainShape):
        from dialsum.trace.step_trace import speculate_train

        speculate_train(config, shape, options)  # type: ignore[arg-type]
    else:
        from dialsum.trace.generation_trace import speculate_generate

        speculate_generate(config, shape, options)  # type: ignore[arg-type]


TrainSimulation = Callable[["PretrainedConfig", TrainShape, TrainOptions], MemoryProfile]
GenerateSimulation = Callable[["PretrainedConfig", GenerateShape, GenerateOptions], MemoryProfile]
Ahead = Callable[
    ["PretrainedConfig", TrainShape | GenerateShape, TrainOptions | GenerateOptions], None
]


@dataclass(frozen=True)
class Simulator:
    """The two memory simulations the planner needs; defaults are the real (tracing) ones.

    ``ahead`` is told, early, of a simulation the plan will probably ask for later (the
    real one starts its traces in a helper process: ``trace.parallel``); None (the
    default: a test's fake, the guide, which has its own worker processes) starts nothing.
    """

    train: TrainSimulation = _real_train
    generate: GenerateSimulation = _real_generate
    ahead: Ahead | None = None


def tracing_simulator() -> Simulator:
    """The real simulator with its traces started ahead (what a plan uses by default)."""
    return Simulator(ahead=_real_ahead)


class SimulationMemo:
    """Remembers the simulations of one model config, keyed by shape and options.

    One memo serves one model config (the key leaves the config out): a plan makes its
    own, the guide keeps one per section across GPUs, plots and breakdowns.
    """

    def __init__(self, simulator: Simulator) -> None:
        self._simulator = simulator
        self._train: dict[tuple[TrainShape, TrainOptions], MemoryProfile] = {}
        self._generate: dict[tuple[GenerateShape, GenerateOptions], MemoryProfile] = {}

    def train(
        self, config: PretrainedConfig, shape: TrainShape, options: TrainOptions
    ) -> MemoryProfile:
        key = (shape, options)
        if key not in self._train:
            self._train[key] = self._simulator.train(config, shape, options)
        return self._train[key]

    def generate(
        self, config: PretrainedConfig, shape: GenerateShape, options: GenerateOptions
    ) -> MemoryProfile:
        key = (shape, options)
        if key not in self._generate:
            self._generate[key] = self._simulator.generate(config, shape, options)
        return self._generate[key]

    def as_simulator(self) -> Simulator:
        return Simulator(train=self.train, generate=self.generate, ahead=self._simulator.ahead)
