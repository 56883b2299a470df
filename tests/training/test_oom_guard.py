"""OOM detection and recovery policy, driven by fake OOMs on a CPU."""

from __future__ import annotations

import json
import weakref
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dialsum.training.oom_guard import (
    GuardState,
    OOMUnrecoverable,
    RecoveryEvent,
    agree_on_batch,
    free_device_memory,
    is_oom,
    next_eval_batch,
    next_micro_batch,
    run_with_oom_retry,
)

CUDA_OOM = "CUDA out of memory. Tried to allocate 2.00 GiB"


def _chained(outer: BaseException, inner: BaseException, *, cause: bool) -> BaseException:
    """Raise ``outer`` while handling ``inner`` and return it with a real chain."""
    try:
        try:
            raise inner
        except BaseException as exc:
            if cause:
                raise outer from exc
            raise outer  # noqa: B904  # implicit __context__ is what we test
    except BaseException as caught:
        return caught


# --- is_oom -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        torch.OutOfMemoryError(CUDA_OOM),
        torch.cuda.OutOfMemoryError(CUDA_OOM),
        RuntimeError(CUDA_OOM),
        RuntimeError("HIP out of memory. Tried to allocate 20.00 MiB"),
        RuntimeError("XPU out of memory. Tried to allocate 1.00 GiB"),
        RuntimeError("MPS backend out of memory (MPS allocated: 17.00 GB)"),
        RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be reported later"),
        RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
        RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"),
        RuntimeError("FATAL ERROR :: MODULE:PT_DEVMEM Allocation failed"),
        # DataLoader workers re-raise the original type with the traceback as text.
        torch.OutOfMemoryError(
            "Caught OutOfMemoryError in DataLoader worker process 0.\n"
            "Original Traceback (most recent call last):\n"
            f"torch.OutOfMemoryError: {CUDA_OOM}"
        ),
    ],
    ids=lambda exc: f"{type(exc).__name__}:{str(exc)[:30]}",
)
def test_is_oom_true(exc: BaseException) -> None:
    assert is_oom(exc) is True


@pytest.mark.parametrize(
    "exc",
    [
        ValueError(CUDA_OOM),
        MemoryError(),
        MemoryError("out of memory."),
        KeyboardInterrupt(),
        RuntimeError("expected scalar type Float but found Half"),
        RuntimeError(
            "DefaultCPUAllocator: can't allocate memory: you tried to allocate 4 bytes. "
            "Error code 12 (Cannot allocate memory)"
        ),
        torch.OutOfMemoryError("DefaultCPUAllocator: not enough memory: you tried to allocate 8"),
        RuntimeError(
            "cuDNN error: CUDNN_STATUS_NOT_SUPPORTED. This error may appear if you passed in "
            "a non-contiguous input."
        ),
        RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR"),
        dist.DistBackendError(f"NCCL error: unhandled cuda error, {CUDA_OOM}"),
        OOMUnrecoverable(CUDA_OOM, tried=[1]),
    ],
    ids=lambda exc: f"{type(exc).__name__}:{str(exc)[:30]}",
)
def test_is_oom_false(exc: BaseException) -> None:
    assert is_oom(exc) is False


def test_real_host_oom_is_not_device_oom() -> None:
    # A real allocation failure of the CPU allocator: shrinking the GPU micro-batch cannot help.
    with pytest.raises(RuntimeError) as info:
        torch.empty(2**62, dtype=torch.uint8)
    assert is_oom(info.value) is False


def test_is_oom_follows_explicit_cause() -> None:
    wrapped = _chained(
        RuntimeError("DeepSpeed engine step failed"), torch.OutOfMemoryError(CUDA_OOM), cause=True
    )
    assert is_oom(wrapped) is True


def test_is_oom_follows_implicit_context_two_levels_deep() -> None:
    inner = _chained(KeyError("batch"), torch.OutOfMemoryError(CUDA_OOM), cause=False)
    outer = _chained(TypeError("wrapper"), inner, cause=True)
    assert is_oom(outer) is True


def test_is_oom_ignores_context_suppressed_with_from_none() -> None:
    try:
        try:
            raise torch.OutOfMemoryError(CUDA_OOM)
        except RuntimeError:
            raise ValueError("bad config") from None
    except ValueError as exc:
        assert is_oom(exc) is False


def test_is_oom_stops_at_unrecoverable_even_with_oom_beneath() -> None:
    unrecoverable = _chained(
        OOMUnrecoverable("gave up", tried=[2, 1]), torch.OutOfMemoryError(CUDA_OOM), cause=True
    )
    wrapped = _chained(RuntimeError("eval failed"), unrecoverable, cause=True)
    assert is_oom(wrapped) is False


def test_is_oom_terminates_on_cyclic_chain() -> None:
    first, second = ValueError("a"), ValueError("b")
    first.__cause__, second.__cause__ = second, first
    assert is_oom(first) is False


# --- batch ladders ------------------------------------------------------------------------


def _ladder(step: Callable[[int], int | None], start: int) -> list[int]:
    sizes = [start]
    while (smaller := step(sizes[-1])) is not None:
        sizes.append(smaller)
    return sizes


def test_next_micro_batch_walks_divisors_of_per_step_rows() -> None:
    assert _ladder(partial(next_micro_batch, per_step_rows=12), 12) == [12, 6, 4, 3, 2, 1]
    assert _ladder(partial(next_micro_batch, per_step_rows=32), 32) == [32, 16, 8, 4, 2, 1]
    assert _ladder(partial(next_micro_batch, per_step_rows=7), 7) == [7, 1]
    assert next_micro_batch(1, 12) is None


def test_next_micro_batch_from_a_non_divisor_or_above_the_step() -> None:
    assert next_micro_batch(5, 12) == 4
    assert next_micro_batch(16, 12) == 12


def test_next_micro_batch_rejects_non_positive() -> None:
    with pytest.raises(ValueError, match="must be >= 1"):
        next_micro_batch(0, 12)
    with pytest.raises(ValueError, match="must be >= 1"):
        next_micro_batch(4, 0)


def test_next_eval_batch_halves_down_to_one() -> None:
    assert _ladder(next_eval_batch, 64) == [64, 32, 16, 8, 4, 2, 1]
    assert _ladder(next_eval_batch, 5) == [5, 2, 1]
    with pytest.raises(ValueError, match="must be >= 1"):
        next_eval_batch(0)


# --- run_with_oom_retry -------------------------------------------------------------------


class FakeStep:
    """A step that OOMs above ``fits`` rows and records every batch size it was called with."""

    def __init__(self, fits: int) -> None:
        self.fits = fits
        self.calls: list[int] = []

    def __call__(self, batch: int) -> str:
        self.calls.append(batch)
        if batch > self.fits:
            raise torch.OutOfMemoryError(f"{CUDA_OOM} (batch {batch})")
        return f"loss@{batch}"


def test_retry_shrinks_through_divisors_until_it_fits() -> None:
    step = FakeStep(fits=3)
    events: list[tuple[int, int, str]] = []
    cleanups: list[int] = []
    result = run_with_oom_retry(
        step,
        start_batch=12,
        next_batch=partial(next_micro_batch, per_step_rows=12),
        on_oom=lambda old, new, exc: events.append((old, new, type(exc).__name__)),
        cleanup=lambda: cleanups.append(len(step.calls)),
    )
    assert result == ("loss@3", 3)
    assert step.calls == [12, 6, 4, 3]
    assert events == [
        (12, 6, "OutOfMemoryError"),
        (6, 4, "OutOfMemoryError"),
        (4, 3, "OutOfMemoryError"),
    ]
    # Cleanup runs once per OOM, before the retry.
    assert cleanups == [1, 2, 3]


def test_retry_without_oom_calls_once() -> None:
    step = FakeStep(fits=100)
    cleanups: list[None] = []
    result = run_with_oom_retry(step, 8, next_eval_batch, cleanup=lambda: cleanups.append(None))
    assert result == ("loss@8", 8)
    assert step.calls == [8]
    assert cleanups == []


def test_retry_gives_up_on_an_oom_without_message() -> None:
    # An OOM raised with no message (a custom allocator, a test double) must still give the
    # clear error, not an IndexError from reading its first line.
    def step(batch: int) -> None:
        raise torch.OutOfMemoryError()

    with pytest.raises(OOMUnrecoverable) as info:
        run_with_oom_retry(step, 1, lambda batch: None, cleanup=lambda: None)
    assert str(info.value) == (
        "device out of memory at batch size 1 and no smaller batch is left (tried 1). "
        "Original error: OutOfMemoryError"
    )


def test_retry_gives_up_with_hint_and_chain() -> None:
    step = FakeStep(fits=0)
    with pytest.raises(OOMUnrecoverable) as info:
        run_with_oom_retry(
            step,
            start_batch=4,
            next_batch=partial(next_micro_batch, per_step_rows=4),
            cleanup=lambda: None,
            hint="enable gradient checkpointing (plan step 3 of 5)",
        )
    error = info.value
    assert step.calls == [4, 2, 1]
    assert error.tried == [4, 2, 1]
    assert error.hint == "enable gradient checkpointing (plan step 3 of 5)"
    assert str(error) == (
        "device out of memory at batch size 1 and no smaller batch is left (tried 4, 2, 1). "
        f"Original error: {CUDA_OOM} (batch 1) "
        "Next step: enable gradient checkpointing (plan step 3 of 5)"
    )
    assert isinstance(error.__cause__, torch.OutOfMemoryError)
    # An outer guard must not start another ladder on an exhausted one.
    assert is_oom(error) is False


def test_unrecoverable_can_be_raised_with_a_message_only() -> None:
    error = OOMUnrecoverable("evaluation ran out of GPU memory at batch 1")
    assert (str(error), error.tried, error.hint) == (
        "evaluation ran out of GPU memory at batch 1",
        [],
        "",
    )
    assert is_oom(error) is False


def test_retry_propagates_non_oom_untouched() -> None:
    bug = ValueError("labels and logits differ in length")
    calls: list[int] = []
    cleanups: list[None] = []

    def step(batch: int) -> None:
        calls.append(batch)
        raise bug

    with pytest.raises(ValueError) as info:
        run_with_oom_retry(step, 12, next_eval_batch, cleanup=lambda: cleanups.append(None))
    assert info.value is bug
    assert info.value.__traceback__ is not None
    assert calls == [12]
    assert cleanups == []


def test_failed_call_frames_are_released_before_cleanup() -> None:
    # The failed call's locals stand in for its activations: they must be gone when
    # cleanup runs, or empty_cache would have nothing to free.
    alive_at_cleanup: list[bool] = []
    refs: list[weakref.ref[torch.Tensor]] = []

    def step(batch: int) -> int:
        activations = torch.zeros(batch)
        refs.append(weakref.ref(activations))
        if batch > 2:
            raise torch.OutOfMemoryError(CUDA_OOM)
        return batch

    def cleanup() -> None:
        alive_at_cleanup.append(refs[-1]() is not None)

    assert run_with_oom_retry(step, 8, next_eval_batch, cleanup=cleanup) == (2, 2)
    assert alive_at_cleanup == [False, False]


def test_free_device_memory_runs_without_a_device() -> None:
    free_device_memory()


# --- GuardState ---------------------------------------------------------------------------


def _state() -> GuardState:
    state = GuardState(micro_batch_size=12, eval_batch_size=64)
    state.record(RecoveryEvent(7, "train", 12, 6, CUDA_OOM))
    state.record(RecoveryEvent(7, "eval", 64, 32, "요약 생성 중 OOM"))
    state.record(RecoveryEvent(9, "eval", 32, 16, CUDA_OOM))
    return state


def test_record_adopts_the_smaller_batch_per_phase() -> None:
    state = _state()
    assert (state.micro_batch_size, state.eval_batch_size) == (6, 16)
    assert [(e.phase, e.old_batch, e.new_batch) for e in state.events] == [
        ("train", 12, 6),
        ("eval", 64, 32),
        ("eval", 32, 16),
    ]


def test_guard_state_json_round_trip() -> None:
    state = _state()
    text = state.to_json()
    assert json.loads(text)["version"] == 1
    assert json.loads(text)["events"][1]["message"] == "요약 생성 중 OOM"
    assert GuardState.from_json(text) == state


def test_guard_state_save_load_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "run" / "guard.json"
    state = _state()
    state.save(path)
    GuardState(micro_batch_size=3, eval_batch_size=4).save(path)  # overwrite in place
    assert GuardState.load(path) == GuardState(micro_batch_size=3, eval_batch_size=4)
    state.save(path)
    assert GuardState.load(path) == state
    assert sorted(p.name for p in path.parent.iterdir()) == ["guard.json"]


def test_guard_state_rejects_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported version 2"):
        GuardState.from_json('{"version": 2, "micro_batch_size": 1, "eval_batch_size": 1}')
    with pytest.raises(ValueError, match="phase must be one of"):
        GuardState.from_json(
            json.dumps(
                {
                    "version": 1,
                    "micro_batch_size": 1,
                    "eval_batch_size": 1,
                    "events": [dict(step=1, phase="warmup", old_batch=2, new_batch=1, message="")],
                }
            )
        )
    path = tmp_path / "guard.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="guard.json: invalid guard state"):
        GuardState.load(path)


def test_recovery_event_rejects_unknown_phase() -> None:
    with pytest.raises(ValueError, match="phase must be one of"):
        RecoveryEvent(1, "warmup", 2, 1, "")  # type: ignore[arg-type]
    # Generation after training splits its own batches and records no guard events.
    with pytest.raises(ValueError, match="phase must be one of"):
        RecoveryEvent(1, "predict", 2, 1, "")  # type: ignore[arg-type]


# --- agree_on_batch -----------------------------------------------------------------------


def test_agree_on_batch_without_process_group_is_identity() -> None:
    assert not dist.is_initialized()
    assert agree_on_batch(6) == 6


def _agree_worker(rank: int, init_file: str, local_batches: list[int], out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        agreed = agree_on_batch(local_batches[rank])
        Path(out_dir, f"rank{rank}").write_text(str(agreed), encoding="utf-8")
    finally:
        dist.destroy_process_group()


def test_agree_on_batch_takes_the_minimum_over_ranks(tmp_path: Path) -> None:
    # fork, not spawn: children inherit the imported torch instead of importing it again
    # (seconds instead of tens of seconds); nothing here has touched CUDA.
    mp.start_processes(
        _agree_worker,
        args=(str(tmp_path / "init"), [6, 3], str(tmp_path)),
        nprocs=2,
        join=True,
        start_method="fork",
    )
    assert [(tmp_path / f"rank{rank}").read_text() for rank in (0, 1)] == ["3", "3"]
