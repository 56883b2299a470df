"""Training stops on a non-finite loss or gradient norm, before it reaches the weights.

The HF Trainer replaces a NaN/inf loss by the mean of the logged ones
(``logging_nan_inf_filter``) and steps the optimizer with NaN gradients: a run then prints
a finite-looking ``train_loss``, saves all-NaN weights as ``best/`` and exits 0. Here the
step's loss and its gradient norm are checked after backward and before the optimizer step
(``GuardedSeq2SeqTrainer._get_grad_norm``): the weights of a stopped run are those of the
step before, and every checkpoint saved so far stays (the last good one is named). Weights
are checked again before a checkpoint is written, for the case where the update itself
made them non-finite from finite gradients.

Under fp16 with a loss scaler an inf gradient norm is the scaler's normal overflow signal
(the step is skipped and the scale lowered), so only the loss is checked there. Under DDP
gradients are already averaged over ranks when the norm is taken, so every rank sees the
same norm and stops at the same step; the loss is averaged over ranks first for the same
reason.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import torch

from dialsum.core.errors import UserError

NON_FINITE_EXIT = 2


class NonFiniteTraining(UserError):
    """The loss, the gradient norm or the weights stopped being finite."""

    exit_code = NON_FINITE_EXIT


def _describe(value: float) -> str:
    return "NaN" if math.isnan(value) else f"{value} (infinite)"


def non_finite_problem(loss: float | None, grad_norm: float | None, *, check_grad: bool) -> str:
    """``""`` when the step may go on, else what is not finite ("the loss is NaN")."""
    if loss is not None and not math.isfinite(loss):
        return f"the loss is {_describe(loss)}"
    if check_grad and grad_norm is not None and not math.isfinite(grad_norm):
        return f"the gradient norm is {_describe(grad_norm)}"
    return ""


def non_finite_tensors(named: Iterable[tuple[str, torch.Tensor]], limit: int = 3) -> list[str]:
    """Names of up to ``limit`` floating tensors holding a NaN or an inf."""
    bad = []
    for name, tensor in named:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad.append(name)
            if len(bad) >= limit:
                break
    return bad


def stop_message(problem: str, step: int, last_checkpoint: Path | None, precision: str) -> str:
    """One message: what, at which step, what was kept, what to try."""
    kept = (
        f"the last good checkpoint is {last_checkpoint} (`dialsum train --resume` continues "
        "from it once the cause is fixed)"
        if last_checkpoint is not None
        else "no checkpoint was saved before it"
    )
    advice = "lower training.learning_rate, keep training.max_grad_norm > 0"
    if precision == "fp16":
        advice += ", and use bf16 or fp32 (T5/mT5 overflow in fp16)"
    return (
        f"training stopped at step {step}: {problem}. The weights were not updated with it "
        f"and best/ was not written; {kept}. Try: {advice}."
    )
