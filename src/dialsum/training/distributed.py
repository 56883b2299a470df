"""Data-parallel plumbing: who is rank 0, agreeing on values, reducing gradients.

dialsum runs under the launchers the field already uses (``torchrun``, ``accelerate
launch``, the ``deepspeed`` launcher); each sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``.
The process group is started early (before the Trainer would start it) because the run
folder must be agreed on first: its name is a timestamp, and two ranks reading the clock
a second apart would write into two folders.

Without a launcher (``WORLD_SIZE`` unset or 1) every function here is the identity / a
no-op, so single-process code pays nothing.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TypeVar

import torch
from torch import distributed as dist

from dialsum.core.errors import UserError, first_line
from dialsum.core.launch import launched_world_size, local_rank  # noqa: F401 (re-exported)

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 1800
"""Collective timeout: the Trainer's own ``ddp_timeout`` default (a stuck peer fails the
run after this long instead of hanging it forever)."""

BUCKET_BYTES = 25 * 2**20
"""Gradients are all-reduced in flat buckets of this size (DDP's default bucket size), so
the extra memory is one bucket, not a second copy of every gradient."""


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    if is_initialized():
        return int(dist.get_rank())
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """Rank 0: the only process that writes run files."""
    return rank() == 0


def backend_for(cpu: bool) -> str:
    """gloo on CPU (NCCL only reduces device tensors), nccl on CUDA."""
    return "gloo" if cpu else "nccl"


def ensure_process_group(*, cpu: bool, timeout_s: int = DEFAULT_TIMEOUT_S) -> bool:
    """Start the process group when launched with several processes; True if one exists.

    accelerate (and so the Trainer, and DeepSpeed's ``init_distributed``) reuses a group
    that is already initialised, so starting it here changes nothing for them.
    """
    if is_initialized():
        return True
    if launched_world_size() < 2 or not dist.is_available():
        return False
    if not cpu:
        # Each rank owns one GPU; NCCL collectives run on the current device.
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend_for(cpu), timeout=timedelta(seconds=timeout_s))
    atexit.register(_destroy_process_group)
    return True


def _destroy_process_group() -> None:
    """At exit, while the interpreter is still whole: a process that exits with its group
    alive can abort in the interpreter's teardown (gloo's worker threads still hold work:
    ``terminate called without an active exception``, SIGABRT, after a run that finished;
    pytorch/pytorch#190489). A group something else destroyed first is left alone."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_initialized():
        dist.barrier()


@contextmanager
def main_process_first() -> Iterator[None]:
    """Rank 0 runs the block first (downloads, cache builds), the others after it is done."""
    if not is_main_process():
        barrier()
    try:
        yield
    finally:
        if is_main_process():
            barrier()


def broadcast_object(value: T) -> T:
    """Rank 0's ``value`` on every rank (pickled; for small things such as paths)."""
    if not is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main_then_share(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and give every rank its result.

    If ``fn`` fails on rank 0, every rank raises (a ``UserError`` keeps its message and
    exit code): otherwise the other ranks would wait for a broadcast that never comes.
    """
    outcome: tuple[str, object] = ("ok", None)
    failure: Exception | None = None
    if is_main_process():
        try:
            outcome = ("ok", fn())
        except Exception as exc:
            if not is_initialized():
                raise
            failure = exc
            outcome = ("user" if isinstance(exc, UserError) else "error", str(exc))
    kind, value = broadcast_object(outcome)
    if failure is not None:
        raise failure
    if kind == "user":
        raise UserError(str(value))
    if kind == "error":
        raise RuntimeError(f"rank 0 failed: {value}")
    return value  # type: ignore[return-value]


def gradient_buckets(
    grads: Iterable[torch.Tensor], bucket_bytes: int = BUCKET_BYTES
) -> list[list[torch.Tensor]]:
    """Group gradients into buckets of one dtype and device, each at most ``bucket_bytes``
    (a single larger gradient gets a bucket of its own)."""
    buckets: list[list[torch.Tensor]] = []
    open_bucket: dict[tuple[torch.dtype, torch.device], tuple[list[torch.Tensor], int]] = {}
    for grad in grads:
        key = (grad.dtype, grad.device)
        size = grad.numel() * grad.element_size()
        bucket, used = open_bucket.get(key, ([], 0))
        if bucket and used + size > bucket_bytes:
            buckets.append(bucket)
            bucket, used = [], 0
        bucket.append(grad)
        open_bucket[key] = (bucket, used + size)
    buckets.extend(bucket for bucket, _ in open_bucket.values() if bucket)
    return buckets


def reduce_staging(
    parameters: Iterable[torch.nn.Parameter], bucket_bytes: int = BUCKET_BYTES
) -> dict[tuple[torch.dtype, torch.device], torch.Tensor]:
    """One flat buffer per dtype and device, as large as the largest bucket of several
    gradients, for ``average_gradients`` to copy buckets into.

    Made once, before the first forward (a gradient has its parameter's shape, dtype and
    device, so the buckets are known from the parameters): the reduce, which runs after
    the ranks agreed that the step worked, then allocates nothing, so it cannot run out of
    memory half-way when some ranks are already waiting in the collective.
    """
    trainable = [p for p in parameters if p.requires_grad]
    numels: dict[tuple[torch.dtype, torch.device], int] = {}
    for bucket in gradient_buckets(trainable, bucket_bytes):
        if len(bucket) > 1:
            key = (bucket[0].dtype, bucket[0].device)
            numels[key] = max(numels.get(key, 0), sum(t.numel() for t in bucket))
    return {key: torch.empty(n, dtype=key[0], device=key[1]) for key, n in numels.items()}


def average_gradients(
    parameters: Iterable[torch.nn.Parameter],
    staging: dict[tuple[torch.dtype, torch.device], torch.Tensor] | None = None,
    bucket_bytes: int = BUCKET_BYTES,
) -> None:
    """Average ``.grad`` over all ranks in place, the way DDP's reducer does.

    The guarded trainer runs every micro-batch under ``no_sync`` and calls this only after
    all ranks agreed that the step succeeded: DDP would start its all-reduce inside the
    last backward, where a peer that hit an OOM is not, and the ranks would hang or pair
    mismatched collectives.

    A gradient larger than a bucket is reduced where it lies (a flat copy would double it:
    +732 MiB for mT5's embedding); smaller ones are packed into ``staging`` (see
    ``reduce_staging``), or into a new flat bucket without it.
    """
    if not is_initialized():
        return
    world = dist.get_world_size()
    trainable = [p for p in parameters if p.requires_grad]
    for param in trainable:
        if param.grad is None:
            # Every rank must reduce the same tensors in the same order.
            param.grad = torch.zeros_like(param)
    for bucket in gradient_buckets([p.grad for p in trainable], bucket_bytes):
        if len(bucket) == 1 and bucket[0].is_contiguous():
            _all_reduce_mean(bucket[0], world)
        else:
            _reduce_bucket(bucket, world, staging)


def _all_reduce_mean(tensor: torch.Tensor, world: int) -> None:
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    tensor.div_(world)


def _reduce_bucket(
    bucket: list[torch.Tensor],
    world: int,
    staging: dict[tuple[torch.dtype, torch.device], torch.Tensor] | None,
) -> None:
    """Copy the bucket into one flat buffer, reduce it with one collective, copy back."""
    numel = sum(g.numel() for g in bucket)
    buffer = (staging or {}).get((bucket[0].dtype, bucket[0].device))
    if buffer is not None and buffer.numel() >= numel:
        flat = torch.cat([g.reshape(-1) for g in bucket], out=buffer[:numel])
    else:
        flat = torch.cat([g.reshape(-1) for g in bucket])
    _all_reduce_mean(flat, world)
    offset = 0
    for grad in bucket:
        n = grad.numel()
        grad.copy_(flat[offset : offset + n].view_as(grad))
        offset += n


def reduce_or_stop(
    model: torch.nn.Module,
    staging: dict[tuple[torch.dtype, torch.device], torch.Tensor] | None,
    *,
    step: int,
    hint: str | None,
) -> None:
    """``average_gradients`` for the guarded trainer. An OOM inside the collective's own
    buffers cannot be redone - the peers are already reducing - so it stops the run with
    the plan's next ladder step instead of a raw traceback (the launcher then stops the
    peers)."""
    from dialsum.training.oom_guard import OOMUnrecoverable, is_oom

    try:
        average_gradients(model.parameters(), staging)
        return
    except Exception as exc:  # noqa: BLE001 - only OOMs are handled, others re-raised
        # NCCL reports its own allocation failures as DistBackendError "... out of memory".
        if not (is_oom(exc) or "out of memory" in str(exc).lower()):
            raise
        error = first_line(exc)
    hint = hint or "a smaller model or more GPU memory per rank"
    raise OOMUnrecoverable(
        f"out of memory while averaging gradients over ranks, after every rank finished step "
        f"{step} ({error}); the peers are already inside the collective, so the step cannot "
        f"be redone. Next step: {hint}. Then continue from the last checkpoint with --resume.",
        hint=hint,
    )
