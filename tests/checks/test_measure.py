"""PhaseRecorder: phase peaks from torch.profiler memory events, checked on known patterns
and against LiveBytesCap, an independent counter, on a tiny T5 training step."""

from __future__ import annotations

import pytest
import torch

from dialsum.checks.measure import PhaseRecorder, measure_phase_peaks
from dialsum.trace.live_cap import LiveBytesCap
from helpers import micro_t5_and_batch

MiB = 1 << 20
BASELINE_BYTES = 100  # stands for weights allocated before profiling


def _uint8(nbytes: int) -> torch.Tensor:
    return torch.empty(nbytes, dtype=torch.uint8)


def test_controlled_pattern_gives_exact_phase_peaks():
    with PhaseRecorder(baseline_bytes=BASELINE_BYTES) as recorder:
        with recorder.phase("a"):
            first = _uint8(4 * MiB)
            second = _uint8(8 * MiB)
            del first
            third = _uint8(2 * MiB)  # 10 MiB live now, after a 12 MiB peak
        with recorder.phase("b"):
            del second, third
            _uint8(MiB)
    assert recorder.peaks() == {
        "a": BASELINE_BYTES + 12 * MiB,
        # Nothing in b exceeds what was live when it began.
        "b": BASELINE_BYTES + 10 * MiB,
    }
    assert recorder.peak_bytes == BASELINE_BYTES + 12 * MiB
    assert recorder.end_bytes == BASELINE_BYTES
    assert [delta for _, delta in recorder.deltas] == [
        4 * MiB, 8 * MiB, -4 * MiB, 2 * MiB, -8 * MiB, -2 * MiB, MiB, -MiB,
    ]  # fmt: skip


def test_repeated_phase_keeps_its_largest_window_and_outside_allocations_still_count():
    def run(phase):
        for step_bytes in (MiB, 3 * MiB, 2 * MiB):
            with phase("step"):
                _uint8(step_bytes)
        kept = _uint8(5 * MiB)  # outside any phase: in the running total only
        with phase("after"):
            _uint8(MiB)
        del kept

    assert measure_phase_peaks(run, baseline_bytes=BASELINE_BYTES) == {
        "step": BASELINE_BYTES + 3 * MiB,
        "after": BASELINE_BYTES + 6 * MiB,
    }


def test_autograd_backward_on_cpu_is_measured_exactly():
    n_bytes = 1 << 18
    x = torch.randn(n_bytes // 4, requires_grad=True)  # alive before: the baseline
    with PhaseRecorder(baseline_bytes=n_bytes) as recorder:
        with recorder.phase("forward"):
            y = x.exp()  # saved for backward
        loss = y.sum()  # 4 bytes, outside the phases
        with recorder.phase("backward"):
            loss.backward()
        del y, loss
    assert recorder.peaks() == {
        "forward": 2 * n_bytes,
        # x, y, loss, the 4-byte seed gradient and the gradient autograd stores in x.grad
        "backward": 3 * n_bytes + 8,
    }
    assert recorder.end_bytes == 2 * n_bytes  # x and x.grad


@pytest.fixture(scope="module")
def tiny_t5():
    return micro_t5_and_batch()


def test_tiny_t5_step_agrees_with_live_bytes_cap(tiny_t5):
    """Profiler events and dispatch-level storage counting, in the same run, agree."""
    model, batch = tiny_t5
    cap = LiveBytesCap(1 << 40)
    baseline_bytes = sum(t.untyped_storage().nbytes() for t in model.parameters())
    baseline_bytes += sum(t.untyped_storage().nbytes() for t in batch.values())
    with PhaseRecorder(baseline_bytes=baseline_bytes) as recorder, cap:
        cap.track_all(model.parameters())
        cap.track_all(batch.values())
        for phase in ("forward", "backward"):
            with recorder.phase(phase):
                cap.set_phase(phase)
                if phase == "forward":
                    loss = model(**batch).loss
                else:
                    loss.backward()
        del loss
    measured = recorder.peaks()
    assert measured.keys() == {"forward", "backward"}
    for phase, peak_bytes in measured.items():
        # Kernel scratch buffers are seen by the profiler only: a few bytes here.
        assert cap.phase_peaks[phase] <= peak_bytes <= cap.phase_peaks[phase] * 1.01
    assert cap.peak_bytes <= recorder.peak_bytes <= cap.peak_bytes * 1.01
    assert recorder.end_bytes == cap.current_bytes  # weights, batch and grads, exactly
    model.zero_grad(set_to_none=True)
