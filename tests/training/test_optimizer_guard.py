"""OOM inside ``optimizer.step()`` (issue 10, item 15): a real OOM from the CPU live-bytes
cap while AdamW creates its state is retried once and gives exactly the step a clean run
gives; an OOM after the update began stops with the plan's next ladder step."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from dialsum.step.train_step import build_optimizer
from dialsum.trace.live_cap import LiveBytesCap
from dialsum.training.oom_guard import OOMUnrecoverable
from dialsum.training.optimizer_guard import guard_optimizer_step

HINT = "training.optimizer=adafactor (about 1/3 of AdamW's state)"


def model_with_grads(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 64), nn.LayerNorm(64), nn.Linear(64, 8))
    model(torch.randn(4, 64)).square().sum().backward()
    return model


def state_bytes(model: nn.Module) -> int:
    return sum(2 * p.numel() * p.element_size() for p in model.parameters())


def live_cap(model: nn.Module, optimizer: torch.optim.Optimizer, extra: int) -> LiveBytesCap:
    """A cap ``extra`` bytes above what is alive: weights, gradients, optimizer state."""
    cap = LiveBytesCap(1 << 40)
    cap.__enter__()
    cap.track_all(model.parameters())
    cap.track_all(p.grad for p in model.parameters())
    for state in optimizer.state.values():
        cap.track_all(v for v in state.values() if torch.is_tensor(v))
    cap.cap_bytes = cap.current_bytes + extra
    return cap


@pytest.mark.parametrize("name", ["adamw", "adamw_foreach"])
def test_oom_while_creating_the_state_is_retried_and_exact(name: str) -> None:
    model, clean = model_with_grads(), model_with_grads()
    optimizer = build_optimizer(model, name, lr=1e-2, weight_decay=0.01)
    reference = build_optimizer(clean, name, lr=1e-2, weight_decay=0.01)
    retries: list[str] = []
    cap = live_cap(model, optimizer, extra=state_bytes(model) // 2)  # half the state fits

    def cleanup() -> None:  # freeing the allocator's cache makes room, as on a device
        cap.cap_bytes += state_bytes(model)

    guard_optimizer_step(optimizer, on_retry=retries.append, hint=HINT, cleanup=cleanup)
    try:
        optimizer.step()
    finally:
        cap.__exit__(None, None, None)
    assert cap.oom_count == 1 and len(retries) == 1
    assert "retrying once" in retries[0]
    reference.step()
    for p, q in zip(model.parameters(), clean.parameters(), strict=True):
        assert torch.equal(p, q)
        assert optimizer.state[p]["step"].item() == 1  # counted once, not twice
        assert torch.equal(optimizer.state[p]["exp_avg"], reference.state[q]["exp_avg"])


def test_oom_after_the_update_began_stops_with_the_next_ladder_step() -> None:
    model = model_with_grads()
    optimizer = build_optimizer(model, "adamw_foreach", lr=1e-2)
    optimizer.step()  # the state exists; the next step's temporaries will not fit
    retries: list[str] = []
    guard_optimizer_step(optimizer, on_retry=retries.append, hint=HINT, cleanup=lambda: None)
    cap = live_cap(model, optimizer, extra=32)  # room for the counter snapshot only
    try:
        with pytest.raises(OOMUnrecoverable) as info:
            optimizer.step()
    finally:
        cap.__exit__(None, None, None)
    message = str(info.value)
    assert "optimizer.step()" in message and "already begun" in message
    assert f"Next step: {HINT}" in message and "--resume" in message
    assert retries == [] and info.value.hint == HINT


def test_a_retry_that_runs_out_again_stops() -> None:
    model = model_with_grads()
    optimizer = build_optimizer(model, "adamw", lr=1e-2)
    guard_optimizer_step(optimizer, on_retry=lambda _: None, hint=HINT, cleanup=lambda: None)
    cap = live_cap(model, optimizer, extra=state_bytes(model) // 2)
    try:
        with pytest.raises(OOMUnrecoverable, match="ran out of memory again"):
            optimizer.step()
    finally:
        cap.__exit__(None, None, None)
    assert cap.oom_count == 2


def test_other_errors_pass_through_and_schedulers_still_wrap_the_step() -> None:
    model = model_with_grads()
    optimizer = build_optimizer(model, "adamw", lr=1e-2)
    guard_optimizer_step(optimizer, on_retry=lambda _: None, hint=None)
    with warnings.catch_warnings():
        # torch warns when optimizer.step is replaced after the scheduler wrapped it, or
        # when scheduler.step() seems to come first: neither may happen here.
        warnings.simplefilter("error")
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5**step)
        before = copy.deepcopy(list(model.parameters()))
        optimizer.step()
        scheduler.step()
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(5e-3)

    def bug(_optimizer, _args, _kwargs) -> None:
        raise ValueError("not an OOM")

    optimizer.register_step_pre_hook(bug)
    with pytest.raises(ValueError, match="not an OOM"):
        optimizer.step()
