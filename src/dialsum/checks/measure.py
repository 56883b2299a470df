"""Measure each phase's peak live CPU tensor memory with ``torch.profiler``.

An independent check of the simulator: nothing here uses dialsum's tracer. The real code
runs on the CPU with real tensors under ``torch.profiler.profile(activities=[CPU],
profile_memory=True)``; ``PhaseRecorder.phase(name)`` marks a region with
``record_function("phase:<name>")``. With memory profiling on, c10's CPU allocator
(``ProfiledCPUMemoryReporter``) reports every allocation and every free to the profiler,
which keeps each one as an event named ``"[memory]"`` carrying the signed byte delta
(``nbytes()``, negative for a free) and a nanosecond timestamp (``start_ns()``). After
the run the deltas are sorted by time and summed from ``baseline_bytes`` (what was
allocated before profiling: the caller knows its parameter/buffer/batch bytes); a phase's
peak is the largest running total inside its time window, starting with the total at
the moment the phase was entered.

Which profiler output, and why: the raw events of ``prof.profiler.kineto_results`` (the
``_KinetoEvent`` list that ``prof.events()`` itself is built from).

- ``prof.events()`` (public) folds each ``[memory]`` record into the innermost op whose
  time range contains it (``FunctionEvent.cpu_memory_usage``, a net sum) and keeps only
  the records outside every op as separate ``[memory]`` events. A net sum per op hides
  peaks inside it (an op that allocates 8 MiB and frees 4 MiB nets 4 MiB), so a phase
  peak cannot be rebuilt from it.
- ``prof._memory_profile()`` / ``torch.profiler._memory_profiler.MemoryProfile`` gives a
  categorised timeline but is private, needs ``record_shapes=True`` and
  ``with_stack=True`` (slower, and changes what is recorded), and its public front end
  ``export_memory_timeline`` is deprecated in this torch (2.15).
- The kineto events are the profiler's own record: one event per allocation/free with a
  nanosecond timestamp (``FunctionEvent`` converts to float microseconds relative to the
  trace start; we keep the integers and sort stably, so equal stamps keep the profiler's
  order). ``kineto_results`` is an
  attribute of the public ``torch.autograd.profiler.profile`` and the names
  (``name``, ``nbytes``, ``start_ns``, ``end_ns``, ``device_type``) are those
  ``_parse_kineto_results`` reads, so they move only when torch's own parser does.

Limits:

- A block allocated before profiling started and freed during it produces no event (c10
  logs "Memory block of unknown size was allocated before the profiling started"): the
  running total then over-counts by that block. Keep such tensors alive through the run
  (parameters, the batch) and count them in ``baseline_bytes``.
- Only allocations through c10's CPU allocator are seen (MKLDNN/IDEEP ones included, as
  torch's parser does). Memory from numpy (``torch.from_numpy``) or other native
  libraries is not. Kernel scratch buffers *are* seen, which a dispatch-level counter
  such as ``dialsum.trace.live_cap.LiveBytesCap`` does not see.
- Bytes are the requested sizes (``storage.nbytes()``), not the allocator's aligned block
  sizes; a CUDA caching allocator would round each to 512 bytes.
- Phase windows are wall-clock intervals: an allocation on another thread during a
  phase counts in that phase. Nested phases both see the inner allocations. Threads the
  profiler does not follow are not seen at all: gloo's worker threads sometimes free
  DDP's start-up broadcast buffer (one flat copy of the weights), and that free is lost
  (``bench/bench_plan_vs_run_ddp.py`` corrects for it).
- Any ``TorchDispatchMode`` active during the run changes what it allocates: the autograd
  engine then sums a multi-use tensor's gradients out of place (see
  ``dialsum.trace.grad_accumulation``). Measure runs with no mode, or with
  ``InPlaceAccumulation`` on top.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

from torch.autograd import DeviceType
from torch.autograd.profiler_util import MEMORY_EVENT_NAME
from torch.profiler import ProfilerActivity, profile, record_function

PHASE_PREFIX = "phase:"

# Device types whose allocations torch's own profiler parser counts as CPU memory.
_CPU_DEVICE_TYPES = (DeviceType.CPU, DeviceType.MKLDNN, DeviceType.IDEEP)


@dataclass(frozen=True)
class PhaseWindow:
    name: str
    start_ns: int
    end_ns: int


class PhaseRecorder:
    """Profile a block of code and report the peak live CPU bytes of each named phase.

    ``with PhaseRecorder(baseline_bytes=weights) as rec:`` then ``with rec.phase("fwd"):``
    around each region; after the ``with`` block ``rec.peaks()`` maps each phase name to
    its peak (a name used several times, e.g. once per step, keeps the largest).
    """

    def __init__(self, baseline_bytes: int = 0) -> None:
        self.baseline_bytes = baseline_bytes
        self._profiler: profile | None = None
        # (time_ns, signed bytes) of every CPU allocation and free, in time order.
        self.deltas: list[tuple[int, int]] = []
        self.windows: list[PhaseWindow] = []
        self._times_ns: list[int] = []
        self._totals_bytes: list[int] = []

    def __enter__(self) -> PhaseRecorder:
        self._profiler = profile(
            activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=False
        )
        self._profiler.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        assert self._profiler is not None
        self._profiler.__exit__(*exc_info)
        self._collect(self._profiler.profiler.kineto_results.events())

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        with record_function(PHASE_PREFIX + name):
            yield

    def _collect(self, events) -> None:
        memory = [e for e in events if e.name() == MEMORY_EVENT_NAME]
        # sorted() is stable: records with equal timestamps keep the profiler's order.
        self.deltas = sorted(
            ((e.start_ns(), e.nbytes()) for e in memory if e.device_type() in _CPU_DEVICE_TYPES),
            key=lambda item: item[0],
        )
        self.windows = [
            PhaseWindow(e.name()[len(PHASE_PREFIX) :], e.start_ns(), e.end_ns())
            for e in events
            if e.name().startswith(PHASE_PREFIX)
        ]
        self._times_ns = [time_ns for time_ns, _ in self.deltas]
        running = self.baseline_bytes
        self._totals_bytes = []
        for _, delta_bytes in self.deltas:
            running += delta_bytes
            self._totals_bytes.append(running)

    def _total_before(self, index: int) -> int:
        return self._totals_bytes[index - 1] if index > 0 else self.baseline_bytes

    def window_peak_bytes(self, window: PhaseWindow) -> int:
        """Largest live total in ``window``, counting the total when it was entered."""
        first = bisect.bisect_left(self._times_ns, window.start_ns)
        last = bisect.bisect_right(self._times_ns, window.end_ns)
        return max([self._total_before(first), *self._totals_bytes[first:last]])

    def peaks(self) -> dict[str, int]:
        """``{phase: peak live bytes}`` over all windows of each phase name."""
        result: dict[str, int] = {}
        for window in self.windows:
            peak_bytes = self.window_peak_bytes(window)
            result[window.name] = max(result.get(window.name, peak_bytes), peak_bytes)
        return result

    @property
    def peak_bytes(self) -> int:
        """Largest live total of the whole run, inside a phase or not."""
        return max([self.baseline_bytes, *self._totals_bytes])

    @property
    def end_bytes(self) -> int:
        """Live total when profiling stopped (baseline plus all deltas)."""
        return self._total_before(len(self._totals_bytes))


def measure_phase_peaks(
    fn: Callable[[Callable[[str], AbstractContextManager[None]]], object],
    baseline_bytes: int = 0,
) -> dict[str, int]:
    """Run ``fn(phase)`` under a ``PhaseRecorder`` and return its phase peaks.

    ``fn`` marks its regions with ``with phase("forward"): ...``.
    """
    with PhaseRecorder(baseline_bytes) as recorder:
        fn(recorder.phase)
    return recorder.peaks()
