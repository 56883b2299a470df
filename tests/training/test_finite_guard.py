"""A non-finite loss, gradient norm or weight stops training at that step: the message
names which and the step, the last good checkpoint stays, best/ is not written, and the
exit code is 2 (issue 18, point 1)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from dialsum.core.runs import latest_run
from dialsum.training.finite_guard import NonFiniteTraining, non_finite_problem
from dialsum.training.recipe import run_training
from helpers import tiny_section

SAVING = ("training.save_strategy=steps", "training.save_steps=1", "training.max_steps=4")


class Poison(TrainerCallback):
    """At the start (or end) of step ``at``: NaN into a weight, or into its gradient."""

    def __init__(self, at: int, what: str) -> None:
        self.at, self.what = at, what

    def _first_weight(self, model) -> torch.nn.Parameter:
        return next(p for p in model.parameters() if p.requires_grad)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step + 1 != self.at:
            return
        weight = self._first_weight(model)
        if self.what == "loss":
            with torch.no_grad():
                weight.fill_(float("nan"))
        elif self.what == "grad":
            weight.register_hook(lambda g: torch.full_like(g, float("nan")))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.what == "update" and state.global_step == self.at:
            with torch.no_grad():
                self._first_weight(model).fill_(float("inf"))


def _stopped(tmp_path: Path, poison: Poison) -> str:
    with pytest.raises(NonFiniteTraining) as err:
        run_training(tiny_section(tmp_path, *SAVING), echo=lambda *_: None, callbacks=[poison])
    assert err.value.exit_code == 2
    return str(err.value)


def _steps_saved(tmp_path: Path) -> list[int]:
    run = latest_run(tmp_path, "tiny")
    assert not run.best.exists()  # nothing non-finite became the model predict picks
    assert not (run.path / "run.lock").exists()
    return [step for step, _ in run.checkpoint_folders()]


def _finite(checkpoint: Path) -> bool:
    weights = load_file(str(checkpoint / "model.safetensors"))
    return all(bool(torch.isfinite(t).all()) for t in weights.values())


def test_a_nan_loss_stops_before_the_update_and_keeps_the_last_good_checkpoint(
    tmp_path: Path,
) -> None:
    message = _stopped(tmp_path, Poison(at=3, what="loss"))
    assert "training stopped at step 3: the loss is NaN" in message
    assert _steps_saved(tmp_path) == [1, 2]
    last = latest_run(tmp_path, "tiny").last_checkpoint()
    assert str(last) in message and _finite(last)


def test_a_nan_gradient_norm_with_a_finite_loss_stops_too(tmp_path: Path) -> None:
    message = _stopped(tmp_path, Poison(at=2, what="grad"))
    assert "training stopped at step 2: the gradient norm is NaN" in message
    assert _steps_saved(tmp_path) == [1]


def test_weights_made_non_finite_by_an_update_are_never_saved(tmp_path: Path) -> None:
    message = _stopped(tmp_path, Poison(at=2, what="update"))
    assert "training stopped at step 2: weights became non-finite" in message
    assert _steps_saved(tmp_path) == [1]


def test_fp16_overflow_of_the_gradient_norm_is_the_scalers_business() -> None:
    inf = float("inf")
    assert non_finite_problem(1.0, inf, check_grad=False) == ""
    assert non_finite_problem(float("nan"), 1.0, check_grad=False) == "the loss is NaN"
    assert non_finite_problem(1.0, inf, check_grad=True) == "the gradient norm is inf (infinite)"
