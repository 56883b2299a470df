"""OOM detection and recovery policy for training and generation (pure functions).

This module decides *whether* an exception is a recoverable device OOM and *which* batch to
try next; the trainer decides what a "try" is. Keeping the check (``is_oom``) apart from the
retry loop (``run_with_oom_retry``) lets tests drive both with fake OOMs on a CPU and assert
the exact sequence of batch sizes, the way accelerate's ``should_reduce_batch_size`` does.

Training keeps the effective batch: one optimizer step always sees ``per_step_rows`` rows
per rank, split into micro-batches of equal size, so an OOM only changes how many
micro-batches the step is cut into (gradient accumulation), never what the step computes.
"""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch

from dialsum.core.errors import UserError, first_line

T = TypeVar("T")

# The trainer's phases. Generation after training (``dialsum predict``) splits its batches
# itself (``inference``) and keeps no guard state.
Phase = Literal["train", "eval"]
PHASES: tuple[str, ...] = ("train", "eval")

# Messages of device allocation failures that a smaller batch can cure. accelerate's
# ``should_reduce_batch_size`` list is the starting point; see ``NOT_RECOVERABLE_PHRASES``
# for the two entries of that list we deliberately leave out.
DEVICE_OOM_PHRASES: tuple[str, ...] = (
    # Caching allocator of CUDA, HIP and XPU: "CUDA out of memory. Tried to allocate 2.00 GiB".
    " out of memory.",
    # Raw cudaMalloc outside the caching allocator (library workspaces, custom kernels).
    "CUDA error: out of memory",
    # Apple MPS allocator: "MPS backend out of memory (MPS allocated: ...)".
    "MPS backend out of memory",
    # Gaudi HPU allocator.
    "PT_DEVMEM Allocation failed",
    # cuBLAS / cuDNN could not allocate their handle or workspace: the device is full.
    "CUBLAS_STATUS_ALLOC_FAILED",
    "CUDNN_STATUS_ALLOC_FAILED",
)

# Messages that look memory-related but that shrinking the GPU micro-batch does not cure.
# - Host RAM exhaustion ("DefaultCPUAllocator: can't allocate memory", raised as
#   RuntimeError, or as torch.OutOfMemoryError on some builds): the pinned/CPU copies do
#   not shrink with the GPU micro-batch, and retrying risks the kernel OOM killer.
# - "CUDNN_STATUS_NOT_SUPPORTED" (accelerate retries on it): a shape/layout limit such as
#   a non-contiguous input; retrying would hide a bug and silently cut throughput.
# - "CUDNN_STATUS_INTERNAL_ERROR": a generic failure, often after a sticky CUDA error
#   (illegal memory access) that poisons the context; every retry would fail the same way.
NOT_RECOVERABLE_PHRASES: tuple[str, ...] = (
    "DefaultCPUAllocator",
    "CUDNN_STATUS_NOT_SUPPORTED",
    "CUDNN_STATUS_INTERNAL_ERROR",
)


# Builds without distributed support may lack the type; an empty tuple matches nothing.
_DIST_BACKEND_ERROR: Any = getattr(torch.distributed, "DistBackendError", ())


class GuardStateError(UserError, ValueError):
    """``guard.json`` cannot be read (cut short by a crash, edited by hand)."""


class OOMUnrecoverable(UserError, RuntimeError):
    """Device OOM at the smallest batch: the run needs the plan's next fallback step.

    A ``UserError``: the CLI prints the message (which names that step) and exits 2."""

    # ``tried`` and ``hint`` are optional so a caller with its own loop can raise it with
    # just a message; ``run_with_oom_retry`` fills both.
    def __init__(self, message: str, *, tried: Sequence[int] = (), hint: str = "") -> None:
        super().__init__(message)
        self.tried: list[int] = list(tried)
        self.hint = hint


def _is_own_oom(exc: BaseException) -> bool:
    """True when ``exc`` itself (ignoring its chain) is a recoverable device OOM."""
    if isinstance(exc, _DIST_BACKEND_ERROR):
        # A failed collective leaves the process group unusable; a retry would hang.
        return False
    if not isinstance(exc, RuntimeError):
        # Only RuntimeError (torch.OutOfMemoryError is one) carries allocator failures;
        # a ValueError that mentions "out of memory" is somebody's message, not an OOM.
        return False
    message = str(exc)
    if any(phrase in message for phrase in NOT_RECOVERABLE_PHRASES):
        return False
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return any(phrase in message for phrase in DEVICE_OOM_PHRASES)


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is a device OOM that a smaller batch can recover from.

    Follows ``__cause__`` and ``__context__`` so an OOM wrapped by a DataLoader worker,
    DeepSpeed or our own code still counts. A context hidden with ``raise ... from None``
    is not followed: the author declared it irrelevant. ``OOMUnrecoverable`` anywhere in
    the chain means some guard already exhausted its ladder, so an outer guard must not
    retry again (False).
    """
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:  # chains can be cyclic
            continue
        seen.add(id(current))
        if isinstance(current, OOMUnrecoverable):
            return False
        if _is_own_oom(current):
            return True
        if current.__cause__ is not None:
            pending.append(current.__cause__)
        if current.__context__ is not None and not current.__suppress_context__:
            pending.append(current.__context__)
    return False


def next_micro_batch(current: int, per_step_rows: int) -> int | None:
    """The largest divisor of ``per_step_rows`` strictly smaller than ``current``.

    ``per_step_rows`` is what one rank processes per optimizer step (effective batch /
    world size). Divisors keep every micro-batch of a step the same size, so the mean loss
    over micro-batches equals the loss over the whole step exactly and the accumulation
    count is a whole number. From 12 rows: 12 -> 6 -> 4 -> 3 -> 2 -> 1 -> None.
    """
    if current < 1 or per_step_rows < 1:
        raise ValueError(
            f"micro-batch ({current}) and rows per step ({per_step_rows}) must be >= 1"
        )
    for candidate in range(min(current - 1, per_step_rows), 0, -1):
        if per_step_rows % candidate == 0:
            return candidate
    return None


def next_eval_batch(current: int) -> int | None:
    """Half of ``current`` (floor, at least 1); None at 1.

    Eval/generation batches carry no gradient accumulation, so they need not divide
    anything; halving reaches a fitting size in log2 steps.
    """
    if current < 1:
        raise ValueError(f"eval batch ({current}) must be >= 1")
    if current == 1:
        return None
    return max(current // 2, 1)


@dataclass
class RecoveryEvent:
    """One OOM recovered by shrinking a batch; kept so a report can show what happened."""

    step: int
    phase: Phase
    old_batch: int
    new_batch: int
    message: str

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {self.phase!r}")


@dataclass
class GuardState:
    """Batch sizes that are known to fit, persisted so ``--resume`` does not OOM again."""

    micro_batch_size: int
    eval_batch_size: int
    events: list[RecoveryEvent] = field(default_factory=list)

    VERSION = 1  # bump when the JSON layout changes; ``from_json`` rejects unknown ones

    def record(self, event: RecoveryEvent) -> None:
        """Append ``event`` and adopt its smaller batch for its phase."""
        self.events.append(event)
        if event.phase == "train":
            self.micro_batch_size = event.new_batch
        else:
            self.eval_batch_size = event.new_batch

    def to_json(self) -> str:
        payload: dict[str, Any] = {"version": self.VERSION, **asdict(self)}
        return json.dumps(payload, ensure_ascii=False, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> GuardState:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GuardStateError(
                f"line {exc.lineno} column {exc.colno}: {exc.msg} (the file is cut short "
                "or was edited by hand)"
            ) from None
        if not isinstance(data, dict):
            raise GuardStateError(f"expected a JSON object, found {type(data).__name__}")
        if data.get("version") != cls.VERSION:
            raise GuardStateError(
                f"unsupported version {data.get('version')!r} (expected {cls.VERSION})"
            )
        missing = [k for k in ("micro_batch_size", "eval_batch_size", "events") if k not in data]
        if missing:
            raise GuardStateError(f"missing key(s) {', '.join(missing)}")
        try:
            return cls(
                micro_batch_size=int(data["micro_batch_size"]),
                eval_batch_size=int(data["eval_batch_size"]),
                events=[RecoveryEvent(**event) for event in data["events"]],
            )
        except (ValueError, TypeError) as exc:
            raise GuardStateError(f"bad value: {exc}") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically: a crash mid-write must not leave a half file for ``--resume``."""
        from dialsum.core.atomic import atomic_open

        with atomic_open(path, "w", encoding="utf-8") as handle:
            handle.write(self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> GuardState:
        """Read ``guard.json``; a damaged file is a user error that says what to do."""
        target = Path(path)
        try:
            return cls.from_json(target.read_text(encoding="utf-8"))
        except (GuardStateError, UnicodeDecodeError) as exc:
            raise GuardStateError(
                f"{target}: invalid guard state (the OOM guard's batch sizes): {exc}; delete "
                "the file (the run then starts from the plan's batch sizes again and re-learns "
                "any smaller ones) or restore it, then run again"
            ) from None


def free_device_memory() -> None:
    """Collect garbage, then return cached allocator blocks to the device.

    ``gc.collect`` first: tensors kept alive by reference cycles (autograd graphs of the
    failed step) only reach the cache once collected.
    """
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        torch.xpu.empty_cache()
    if torch.backends.mps.is_available():
        torch.mps.empty_cache()


def _drop_tracebacks(exc: BaseException) -> None:
    """Cut the tracebacks of ``exc`` and its chain.

    A traceback holds the frames of the failed call and, through their locals, its
    activations; while it lives, ``empty_cache`` frees nothing and the retry OOMs again.
    """
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        current.__traceback__ = None
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)


def run_with_oom_retry(
    fn: Callable[[int], T],
    start_batch: int,
    next_batch: Callable[[int], int | None],
    on_oom: Callable[[int, int, BaseException], None] | None = None,
    cleanup: Callable[[], None] = free_device_memory,
    hint: str = "",
) -> tuple[T, int]:
    """Call ``fn(batch)`` from ``start_batch``, shrinking with ``next_batch`` on device OOM.

    Returns ``fn``'s result and the batch size that worked (the caller keeps it for the
    following steps). Non-OOM exceptions propagate untouched. When ``next_batch`` has
    nothing smaller, raises ``OOMUnrecoverable`` chained to the last OOM; ``hint`` (the
    plan's next fallback step) ends its message. ``on_oom(old, new, exc)`` receives the
    OOM with its traceback already dropped (see ``_drop_tracebacks``).
    """
    batch = start_batch
    tried: list[int] = []
    while True:
        tried.append(batch)
        failure: BaseException | None = None
        try:
            return fn(batch), batch
        except BaseException as exc:
            if not is_oom(exc):
                raise
            new_batch = next_batch(batch)
            if new_batch is None:
                tried_text = ", ".join(str(size) for size in tried)
                message = (
                    f"device out of memory at batch size {batch} and no smaller batch is left "
                    f"(tried {tried_text}). Original error: {first_line(exc)}"
                )
                if hint:
                    message += f" Next step: {hint}"
                raise OOMUnrecoverable(message, tried=tried, hint=hint) from exc
            failure = exc
        # Recovery runs outside the except block: on Python 3.10 the handled exception's
        # traceback stays reachable through sys.exc_info() until the block ends.
        _drop_tracebacks(failure)
        cleanup()
        if on_oom is not None:
            on_oom(batch, new_batch, failure)
        del failure
        batch = new_batch


def agree_on_batch(local_batch: int) -> int:
    """The smallest ``local_batch`` over all ranks, so ranks shrink together.

    Every rank must call this at the same point (it is a collective). Without an
    initialised process group this is the identity.
    """
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return local_batch
    # NCCL only reduces device tensors; gloo and others take CPU tensors.
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )
    value = torch.tensor([local_batch], dtype=torch.int64, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return int(value.item())
