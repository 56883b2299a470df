"""Measured step time of a training run: the Trainer's own optimizer steps, timed.

``StepTimer`` is a Trainer callback timing each optimizer step (``on_step_begin`` ->
``on_step_end``: the micro-batches' forward/backward and the optimizer step). The run
summary of ``train`` prints its median next to the plan's predicted step time
(``step_time_metrics``). The probe's own timing and calibration is ``checks.step_probe``.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from transformers import TrainerCallback


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class StepTimer(TrainerCallback):
    """Wall time of every optimizer step of a Trainer run (device work included)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._started: float | None = None

    def on_step_begin(self, *_, **__) -> None:
        _sync()
        self._started = time.perf_counter()

    def on_step_end(self, *_, **__) -> None:
        if self._started is not None:
            _sync()
            self.seconds.append(time.perf_counter() - self._started)
            self._started = None

    def median_s(self, warmup: int = 1) -> float | None:
        """Median step time after ``warmup`` steps (all steps when there are no more)."""
        timed = self.seconds[warmup:] or self.seconds
        return statistics.median(timed) if timed else None


def step_time_metrics(trainer, plan: dict[str, Any] | None) -> dict[str, Any]:
    """``step_time_s_measured`` (median, first step skipped) and the plan's prediction."""
    timers = [c for c in trainer.callback_handler.callbacks if isinstance(c, StepTimer)]
    measured = timers[0].median_s() if timers else None
    out: dict[str, Any] = {}
    if measured is not None:
        out["step_time_s_measured"] = round(measured, 4)
    predicted = (plan or {}).get("step_time_s")
    if predicted:
        out["step_time_s_predicted"] = round(predicted, 4)
        out["step_time_prediction"] = (
            "estimated" if plan.get("time_estimated", True) else "calibrated"
        )
        if measured:
            out["step_time_measured_over_predicted"] = round(measured / predicted, 3)
    return out
