"""A second process for the shallow traces of one key (a trace is Python on one core).

A deep model is planned from two or three shallow traces per batch size (``reuse._deep``):
independent computations, so on a machine with two or more cores the deepest of them runs
in a helper process while this one traces the others. The helper is one spawned process
(never forked: a fork after torch started its threads can hang), made on first use and
kept for the life of this process, so its start-up (importing torch and transformers,
a few seconds on the other core) is paid once per command.

Results are the same as tracing here: a trace depends only on its arguments (the fake
cache's hits are sized as computed, ``fake_model.SizedCacheFakeTensorMode``). Nothing is
sent when the work cannot be pickled (a closure in a test), when the machine has one core,
inside a worker process of any dialsum pool (the guide already runs one per core), or
with ``DIALSUM_TRACE_WORKERS=0``. A helper that fails only costs time: the trace is redone
here.
"""

from __future__ import annotations

import atexit
import os
import pickle
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor

WORKERS_ENV = "DIALSUM_TRACE_WORKERS"
"""``0`` keeps every trace in this process."""

_IN_WORKER_ENV = "DIALSUM_IN_TRACE_WORKER"
_pool: ProcessPoolExecutor | None = None


def mark_worker() -> None:
    """Pool initializer: a worker never starts a pool of its own."""
    os.environ[_IN_WORKER_ENV] = "1"


def _helper() -> ProcessPoolExecutor | None:
    global _pool
    if (
        os.environ.get(_IN_WORKER_ENV)
        or os.environ.get(WORKERS_ENV) == "0"
        or (os.cpu_count() or 1) < 2
    ):
        return None
    if _pool is None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        _pool = ProcessPoolExecutor(1, mp_context=context, initializer=mark_worker)
        atexit.register(_pool.shutdown, wait=False, cancel_futures=True)
    return _pool


def submit(fn: Callable, *args) -> Future | None:
    """``fn(*args)`` started in the helper process, or None (then call it here)."""
    try:
        pickle.dumps((fn, args))
    except (pickle.PicklingError, AttributeError, TypeError):
        return None
    pool = _helper()
    if pool is None:
        return None
    try:
        return pool.submit(fn, *args)
    except RuntimeError:  # the pool broke or shut down: trace here
        return None
