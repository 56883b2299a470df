"""An optimizer step that survives a device OOM while it creates its state.

Adam-type optimizers create their state (two parameter-sized moments for AdamW) lazily,
inside the first ``step()``: on a full device the first step of a run runs out of memory
there, after its forward and backward succeeded. A smaller micro-batch cannot help (the
state has the size of the model, not of the batch). What can help is freeing memory - the
failed attempt's partial state and the allocator's cached blocks of the step's activations
- and trying the step once more.

A retry is exact only if the failed attempt changed nothing. Every optimizer dialsum builds
(torch AdamW single-tensor/foreach/fused, Adafactor, bitsandbytes 8-bit AdamW) creates the
state with ``step`` 0 and increments a parameter's ``step`` counter before it touches that
parameter's moments or weights. So: counters unchanged after the OOM (and new state still at
0) means no update happened and the step is retried; a moved counter means the update was
half applied (e.g. foreach AdamW's parameter-sized temporaries, made after the moments were
updated in place; Adafactor's later parameters, made after its first ones were updated), and
the run stops with the plan's next ladder step. State without a counter (SGD's momentum)
cannot be checked, so such an optimizer stops too; plain SGD keeps no state and makes its
temporaries before it updates in place, so its OOMs come before any change.
"""

from __future__ import annotations

import types
import weakref
from collections.abc import Callable
from typing import Any

import torch

from dialsum.core.errors import first_line
from dialsum.training.oom_guard import OOMUnrecoverable, free_device_memory, is_oom

_NOT_TAKEN = object()  # the snapshot itself ran out of memory: nothing was touched yet
# Per parameter: its counter as a number, or (device, index) into the stacked copies.
Snapshot = tuple[list[Any], dict[torch.device, torch.Tensor]]


def guard_optimizer_step(
    optimizer: torch.optim.Optimizer,
    *,
    on_retry: Callable[[str], None],
    hint: str | None,
    cleanup: Callable[[], None] = free_device_memory,
) -> None:
    """Make ``optimizer.step()`` retry once after an OOM that updated nothing.

    Installed on the instance as a bound method, so LR schedulers and accelerate, which
    wrap ``optimizer.step`` later, wrap this one. ``on_retry(message)`` is told before the
    retry; ``hint`` (the plan's next ladder step) ends the message of a stop.
    """

    # ``on_retry`` is usually a bound method of the trainer, which holds the optimizer: a
    # strong reference from the optimizer's step back to it would make a cycle that keeps
    # the optimizer state (twice the model) alive after the run until the cyclic GC runs.
    weak_retry = weakref.WeakMethod(on_retry) if isinstance(on_retry, types.MethodType) else None

    def retry(message: str) -> None:
        callback = weak_retry() if weak_retry is not None else on_retry
        if callback is not None:
            callback(message)

    def step(self: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
        # The class's step carries torch's optimizer hooks; call it, not a saved method.
        return run_guarded_step(
            self, lambda: type(self).step(self, *args, **kwargs), retry, hint, cleanup
        )

    optimizer.step = types.MethodType(step, optimizer)  # type: ignore[method-assign]


def run_guarded_step(
    optimizer: torch.optim.Optimizer,
    step: Callable[[], Any],
    on_retry: Callable[[str], None],
    hint: str | None,
    cleanup: Callable[[], None] = free_device_memory,
) -> Any:
    """``step()``; on an OOM that left the optimizer untouched, clean up and call it again."""
    for attempt in (1, 2):
        before: Any = _NOT_TAKEN
        try:
            before = _snapshot(optimizer)  # a few bytes; if even they do not fit: untouched
            return step()
        except Exception as exc:  # noqa: BLE001 - only OOMs are handled, others re-raised
            if not is_oom(exc):
                raise
            error = first_line(exc)
        # Outside the except block: the traceback (and what its frames hold) is gone.
        untouched = _untouched(optimizer, before)
        if untouched:
            _drop_new_state(optimizer, before)
        cleanup()
        if attempt == 1 and untouched:
            on_retry(f"optimizer.step(): {error}; retrying once after freeing memory")
            continue
        raise OOMUnrecoverable(_stop_message(error, untouched, hint), hint=hint or "")
    raise AssertionError("unreachable")  # pragma: no cover


def _untouched(optimizer: torch.optim.Optimizer, before: Any) -> bool:
    if before is _NOT_TAKEN:
        return True
    return before is not None and _unchanged(optimizer, before)


def _drop_new_state(optimizer: torch.optim.Optimizer, before: Any) -> None:
    """Forget the state the failed attempt half created. torch's AdamW creates a state only
    for a parameter whose state is empty: a half-made one (``step`` and ``exp_avg``, no
    ``exp_avg_sq``) would fail the retry with a KeyError. Dropping it also frees it."""
    if before is _NOT_TAKEN:
        return
    layout, _ = before
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for param, then in zip(params, layout, strict=True):
        if then is None:
            optimizer.state.pop(param, None)


def _stop_message(error: str, untouched: bool, hint: str | None) -> str:
    why = (
        "the retry after freeing memory ran out of memory again"
        if untouched
        else "the update had already begun (or cannot be checked), so it cannot be redone"
    )
    message = (
        f"out of memory in optimizer.step() ({error}): {why}. The optimizer state has the "
        "size of the model, so a smaller micro-batch does not help."
    )
    message += f" Next step: {hint}." if hint else " Use a lighter optimizer or a larger GPU."
    return message + " Then continue from the last checkpoint with --resume."


def _counters(optimizer: torch.optim.Optimizer) -> list[Any] | None:
    """Every parameter's ``step`` counter in order (None where it has no state yet); None
    overall when some state has no counter, so whether an update happened cannot be told."""
    values: list[Any] = []
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param)
            if state and "step" not in state:
                return None
            values.append(state["step"] if state else None)
    return values


def _snapshot(optimizer: torch.optim.Optimizer) -> Snapshot | None:
    """The counters, copied. Tensor counters (on the device for fused AdamW) are stacked
    per device: one small copy per device and step, not one per parameter, and no sync."""
    values = _counters(optimizer)
    if values is None:
        return None
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    layout: list[Any] = []
    for value in values:
        if torch.is_tensor(value):
            stack = by_device.setdefault(value.device, [])
            layout.append((value.device, len(stack)))
            stack.append(value.reshape(()))
        else:
            layout.append(value)
    return layout, {device: torch.stack(ts) for device, ts in by_device.items()}


def _unchanged(optimizer: torch.optim.Optimizer, before: Snapshot) -> bool:
    """Whether every counter still has its value from before the attempt; a state the
    attempt created must still be at 0 (created, not yet counted). Runs after an OOM only,
    so reading device values here costs nothing in the normal step."""
    now = _counters(optimizer)
    layout, stacks = before
    if now is None or len(now) != len(layout):
        return False
    for then, value in zip(layout, now, strict=True):
        if isinstance(then, tuple):
            device, index = then
            then = stacks[device][index]
        if _number(value) != _number(then):
            return False
    return True


def _number(value: Any) -> float:
    if value is None:
        return 0.0  # no state: the counter a new state starts from
    return float(value.item() if torch.is_tensor(value) else value)
