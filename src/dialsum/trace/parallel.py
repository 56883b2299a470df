"""A second process for traces (a trace is Python on one core).

Two kinds of work go to it:

- **now**: a deep model is planned from two or three shallow traces per batch size
  (``repeat.deep``), independent computations; the deepest runs in the helper while this
  process traces the others (``submit``), queued behind at most one other job;
- **ahead**: traces a plan will ask for later (``speculate``; ``reuse.speculate`` names
  them): another training key, the generation keys. They are queued here and sent one at
  a time when the helper is idle. When the plan gets to one (``claim``), it takes the
  helper's result, waits for it if the helper is on it, or withdraws it from the queue
  and traces it itself: nothing is done twice, and a guess the plan never needs only cost
  the other core.

The helper is one spawned process (never forked: a fork after torch started its threads
can hang). It exists only between ``start`` and ``stop``, which ``dialsum plan`` calls
around a plan: started first, its start-up (importing torch and transformers, seconds) runs
on the other core while this process reads its config and data; ended with the plan,
without waiting for a guess in flight. Anywhere else (``train`` and ``predict`` planning
before a run, the guide's worker processes, tests of other modules) everything is traced
in the calling process: a helper's start-up would cost more than tiny models' traces, and
a run must not have one beside it.

Results are the same as tracing here: a trace depends only on its arguments (the fake
cache's hits are sized as computed, ``fake_model.SizedCacheFakeTensorMode``). Nothing is
sent when the work cannot be pickled (a closure in a test), when the machine has one core,
inside a worker process of any dialsum pool (the guide already runs one per core), or
with ``DIALSUM_TRACE_WORKERS=0``. A helper that fails only costs time: the trace is redone
here.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pickle
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ProcessPoolExecutor

WORKERS_ENV = "DIALSUM_TRACE_WORKERS"
"""``0`` keeps every trace in this process."""

_IN_WORKER_ENV = "DIALSUM_IN_TRACE_WORKER"
_pool: ProcessPoolExecutor | None = None

# Work sent ahead: (name, fn, args) not yet sent, in order; name -> future once sent.
_lock = threading.RLock()
_queued: list[tuple[Hashable, Callable, tuple]] = []
_sent: dict[Hashable, Future] = {}
_running: set[Future] = set()  # everything sent to the helper and not finished


def mark_worker() -> None:
    """Pool initializer: a worker never starts a pool of its own."""
    os.environ[_IN_WORKER_ENV] = "1"


def _allowed() -> bool:
    return not (
        os.environ.get(_IN_WORKER_ENV)
        or os.environ.get(WORKERS_ENV) == "0"
        or (os.cpu_count() or 1) < 2
    )


def _helper() -> ProcessPoolExecutor | None:
    """The helper, if ``start`` made one and it may be used here."""
    return _pool if _pool is not None and _allowed() else None


def active() -> bool:
    """Whether work can go to a helper now (cheap: checked before naming any work)."""
    return _helper() is not None


def _picklable(fn: Callable, args: tuple) -> bool:
    try:
        pickle.dumps((fn, args))
    except (pickle.PicklingError, AttributeError, TypeError):
        return False
    return True


def _warm() -> None:
    """Runs first in the helper: the imports every trace starts with (seconds)."""
    import transformers  # noqa: F401
    from torch._subclasses.fake_tensor import FakeTensorMode

    FakeTensorMode()  # its first construction imports torch._dynamo


def start() -> None:
    """Make the helper (where allowed), its start-up overlapping this process's work."""
    global _pool
    if _pool is not None or not _allowed():
        return
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    _pool = ProcessPoolExecutor(1, mp_context=context, initializer=mark_worker)
    atexit.register(_pool.shutdown, wait=False, cancel_futures=True)
    with contextlib.suppress(RuntimeError):  # a broken pool: traces run here
        _track(_pool.submit(_warm))


def stop() -> None:
    """End the helper now: queued guesses are dropped and one in flight is not waited for
    (a finished plan needs none of them)."""
    global _pool
    with _lock:
        _queued.clear()
        _sent.clear()
        _running.clear()
        pool, _pool = _pool, None
    if pool is None:
        return
    for process in list(getattr(pool, "_processes", {}).values()):
        process.terminate()
    pool.shutdown(wait=False, cancel_futures=True)


def speculate(name: Hashable, fn: Callable, *args) -> bool:
    """Queue ``fn(*args)`` for the helper's idle time under ``name`` (``claim`` takes it);
    False when there is no helper or the work cannot be pickled."""
    if _helper() is None or not _picklable(fn, args):
        return False
    with _lock:
        if name not in _sent and all(job[0] != name for job in _queued):
            _queued.append((name, fn, args))
    _feed()
    return True


def _track(future: Future) -> Future:
    """Count ``future`` as the helper's work until it finishes; then send a guess."""
    with _lock:
        _running.add(future)
    future.add_done_callback(_finished)
    return future


def _finished(future: Future) -> None:
    with _lock:
        _running.discard(future)
    _feed()


def _feed() -> None:
    """Send the next queued guess if the helper is idle."""
    with _lock:
        if not _queued or _pool is None or _running:
            return
        name, fn, args = _queued.pop(0)
        try:
            future = _pool.submit(fn, *args)
        except RuntimeError:  # the pool broke or shut down: the plan traces it itself
            _queued.clear()
            return
        _sent[name] = future
        _track(future)


def claim(name: Hashable) -> Future | None:
    """The helper's future for ``name`` (running or done), or None: then the caller
    computes it (a queued guess that has not started is withdrawn)."""
    with _lock:
        if name in _sent:
            return _sent.pop(name)
        _queued[:] = [job for job in _queued if job[0] != name]
    return None


def submit(fn: Callable, *args) -> Future | None:
    """``fn(*args)`` started in the helper process, or None (then call it here): also when
    the helper already has more than one job (this one would wait too long)."""
    pool = _helper()
    if pool is None or not _picklable(fn, args):
        return None
    with _lock:
        if len(_running) > 1:
            return None
        try:
            return _track(pool.submit(fn, *args))
        except RuntimeError:  # the pool broke or shut down: trace here
            return None
