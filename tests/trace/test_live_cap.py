"""LiveBytesCap on real CPU tensors: exact counts, and a real OOM where a device would OOM."""

from __future__ import annotations

import gc

import pytest
import torch

from dialsum.trace.live_cap import LiveBytesCap
from dialsum.training.oom_guard import is_oom
from helpers import micro_t5_and_batch

MiB = 1 << 20


def _uint8(nbytes: int) -> torch.Tensor:
    return torch.empty(nbytes, dtype=torch.uint8)


def _storage_bytes(tensors) -> int:
    return sum(t.untyped_storage().nbytes() for t in tensors)


@pytest.fixture(scope="module")
def tiny_t5():
    return micro_t5_and_batch()


def _register(cap: LiveBytesCap, model: torch.nn.Module, batch: dict) -> int:
    """Count what is alive before the step, as a device would hold it; returns its bytes."""
    cap.track_all(model.parameters())
    cap.track_all(model.buffers())
    cap.track_all(batch.values())
    return cap.current_bytes


def _train_step_peak(model, batch) -> int:
    with LiveBytesCap(1 << 40) as cap:
        _register(cap, model, batch)
        model(**batch).loss.backward()
    model.zero_grad(set_to_none=True)
    return cap.peak_bytes


def test_raises_at_the_allocation_that_overflows_and_not_before():
    with LiveBytesCap(12 * MiB) as cap:
        kept = [_uint8(4 * MiB) for _ in range(3)]  # exactly the cap: fits
        assert cap.current_bytes == cap.peak_bytes == 12 * MiB
        with pytest.raises(torch.OutOfMemoryError) as info:
            _uint8(1)
        # The overflowing byte was never counted; the live total is unchanged.
        assert cap.current_bytes == cap.peak_bytes == 12 * MiB
        assert cap.oom_count == 1
        del kept[0]
        assert cap.current_bytes == 8 * MiB
        kept.append(_uint8(4 * MiB))  # the freed room is usable again
        assert cap.current_bytes == 12 * MiB
    assert "Tried to allocate 1 bytes; 12.00 MiB (12582912 bytes) of 12.00 MiB" in str(info.value)
    assert is_oom(info.value)


def test_registered_tensors_count_and_views_of_unregistered_ones_do_not():
    before = torch.zeros(MiB, dtype=torch.uint8)  # alive before entry, never registered
    registered = torch.zeros(2 * MiB, dtype=torch.uint8)
    with LiveBytesCap(1 << 40) as cap:
        cap.track_all([registered, registered.view(2, MiB)])  # one storage, counted once
        assert cap.current_bytes == 2 * MiB
        before.add_(1)
        _ = before[: MiB // 2].view(2, -1).t()
        assert cap.current_bytes == 2 * MiB
        small = torch.tensor([1.0, 2.0])  # made below the dispatcher, seen via lift_fresh
        assert cap.current_bytes == 2 * MiB + small.nbytes
        copy = before.clone()
        assert cap.current_bytes == 3 * MiB + small.nbytes
        del copy, small
        assert cap.current_bytes == 2 * MiB


def test_reset_peak_restarts_from_live_bytes():
    with LiveBytesCap(1 << 40) as cap:
        kept = _uint8(MiB)
        _uint8(4 * MiB)  # a temporary, freed at once
        assert (cap.peak_bytes, cap.current_bytes) == (5 * MiB, MiB)
        cap.reset_peak()
        assert cap.peak_bytes == MiB
        _uint8(2 * MiB)
        assert cap.peak_bytes == 3 * MiB
    del kept


def test_backward_counts_grads_and_its_oom_reaches_the_caller_unwrapped():
    n_bytes = 1 << 18
    x = torch.randn(n_bytes // 4, requires_grad=True)
    with LiveBytesCap(1 << 40) as cap:
        cap.track(x)
        loss = x.exp().sum()  # exp's output is saved for backward
        loss.backward()
        del loss
        # x plus x.grad (made by autograd inside dispatch); the graph is gone.
        assert cap.current_bytes == 2 * n_bytes
        assert cap.peak_bytes == 3 * n_bytes + 8  # x, exp(x), grad; loss and its seed grad
    x.grad = None

    cap = LiveBytesCap(3 * n_bytes)
    with cap, pytest.raises(torch.OutOfMemoryError) as info:
        cap.track(x)
        loss = x.exp().sum()
        reached_backward = True
        loss.backward()
    assert reached_backward and x.grad is None
    # Raised in __torch_dispatch__ under the autograd engine, re-raised as the same object.
    assert type(info.value) is torch.OutOfMemoryError and is_oom(info.value)
    assert info.value.__cause__ is None and info.value.__context__ is None


def test_tiny_t5_step_fits_a_generous_cap_and_counts_grads_exactly(tiny_t5):
    model, batch = tiny_t5
    with LiveBytesCap(1 << 40) as cap:
        before_bytes = _register(cap, model, batch)
        loss = model(**batch).loss
        loss.backward()
        del loss
        grad_bytes = _storage_bytes(p.grad for p in model.parameters())
        assert grad_bytes == _storage_bytes(model.parameters())
        assert cap.current_bytes == before_bytes + grad_bytes
        assert cap.peak_bytes > cap.current_bytes
    model.zero_grad(set_to_none=True)


def test_tiny_t5_ooms_under_a_cap_just_above_its_weights(tiny_t5):
    model, batch = tiny_t5
    weights_bytes = _storage_bytes(model.parameters()) + _storage_bytes(batch.values())
    cap = LiveBytesCap(weights_bytes + 1024)
    with cap, pytest.raises(torch.OutOfMemoryError) as info:
        assert _register(cap, model, batch) == weights_bytes
        model(**batch).loss.backward()
    assert is_oom(info.value)
    # The traceback's frames hold the partial forward (as on a GPU: guard drops them
    # before retrying); without them only what was alive before the step remains.
    del info
    gc.collect()
    assert cap.current_bytes == weights_bytes
    model.zero_grad(set_to_none=True)


def test_tiny_t5_ooms_in_backward_one_byte_below_the_step_peak(tiny_t5):
    model, batch = tiny_t5
    peak_bytes = _train_step_peak(model, batch)
    forward_done = False
    cap = LiveBytesCap(peak_bytes - 1)
    with cap, pytest.raises(torch.OutOfMemoryError) as info:
        _register(cap, model, batch)
        loss = model(**batch).loss
        forward_done = True
        loss.backward()
    assert forward_done and is_oom(info.value)
    model.zero_grad(set_to_none=True)
    assert _train_step_peak(model, batch) == peak_bytes  # the step is repeatable


def test_optimizer_step_ooms_when_its_state_does_not_fit(tiny_t5):
    model, batch = tiny_t5
    params = list(model.parameters())
    model(**batch).loss.backward()
    with LiveBytesCap(1 << 40) as cap:
        cap.track_all(params)
        cap.track_all(p.grad for p in params)
        before_bytes = cap.current_bytes
        optimizer = torch.optim.AdamW(params, lr=1e-3)
        optimizer.step()
        state = [t for s in optimizer.state.values() for t in s.values()]
        assert cap.current_bytes == before_bytes + _storage_bytes(state)
        step_peak_bytes = cap.peak_bytes

    optimizer = torch.optim.AdamW(params, lr=1e-3)
    cap = LiveBytesCap(step_peak_bytes - 1)
    with cap, pytest.raises(torch.OutOfMemoryError) as info:
        cap.track_all(params)
        cap.track_all(p.grad for p in params)
        optimizer.step()
    assert is_oom(info.value)
    model.zero_grad(set_to_none=True)


def test_generate_ooms_below_its_peak_and_fits_at_it(tiny_t5):
    model, batch = tiny_t5
    model.eval()
    inputs = {"input_ids": batch["input_ids"]}
    kwargs = {"max_new_tokens": 6, "num_beams": 2, "do_sample": False}
    with torch.no_grad(), LiveBytesCap(1 << 40) as cap:
        _register(cap, model, inputs)
        model.generate(**inputs, **kwargs)
    peak_bytes = cap.peak_bytes

    cap = LiveBytesCap(peak_bytes - 1)
    with torch.no_grad(), pytest.raises(torch.OutOfMemoryError) as info, cap:
        _register(cap, model, inputs)
        model.generate(**inputs, **kwargs)
    assert is_oom(info.value)
    with torch.no_grad(), LiveBytesCap(peak_bytes) as cap:
        _register(cap, model, inputs)
        model.generate(**inputs, **kwargs)
    model.train()
