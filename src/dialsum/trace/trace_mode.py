"""One Python dispatch layer for a whole trace.

A trace runs three tools on every aten op: the engine's in-place gradient sums put back
(``grad_accumulation.InPlaceAccumulation``), the live-storage count
(``tracer.LiveStorageTracker``) and the compute costs (``flops.CostMeter``). Each was a
``TorchDispatchMode`` of its own, stacked, and a Python dispatch layer costs ~10 us per op
on top of FakeTensor's own ~80 us (fake-tensor matmuls and relus with 0..4 pass-through
modes stacked; on a traced T5 step the saving is a few percent, near these machines'
noise). ``TraceMode`` hosts the three in one layer and runs them in the order the stack
did, top to bottom:

1. ``InPlaceAccumulation.in_place_sum`` (it reads reference counts, so it is asked first,
   as the top mode asked it), which may turn the op into ``add_``;
2. ``LiveStorageTracker.before_op`` (which parameter the op works on);
3. ``CostMeter``'s op run: the op itself (decomposed where the FLOP count needs it: the
   parts come back through this mode and go to the meter alone, as they went to the
   meter's own mode below the tracker) and its costs, flushed to the timeline;
4. ``LiveStorageTracker.after_op`` (the op's new outputs counted).

The timeline, peaks and costs are the stacked modes' exactly (the tests trace both ways).
"""

from __future__ import annotations

import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dialsum.trace.flops import CostMeter
from dialsum.trace.grad_accumulation import ArmingDispatchMode, InPlaceAccumulation
from dialsum.trace.tracer import LiveStorageTracker

_ADD_ = torch.ops.aten.add_.Tensor  # what an in-place engine sum becomes


class TraceMode(ArmingDispatchMode):
    """``with fake_mode, TraceMode(tracker, meter, accumulation):`` in place of
    ``with fake_mode, meter, tracker, accumulation:`` (``meter`` and ``accumulation``
    optional); function modes (CUDA emulation) go anywhere around it."""

    def __init__(
        self,
        tracker: LiveStorageTracker,
        meter: CostMeter | None = None,
        accumulation: InPlaceAccumulation | None = None,
    ) -> None:
        super().__init__()
        self._tracker = tracker
        self._runner = meter.op_runner if meter is not None else None
        self._accumulation = accumulation
        self._arming = accumulation.arming if accumulation is not None else contextlib.nullcontext()
        # The parts of a decomposed op come back through this dispatch mode alone: entering
        # the whole of it again would push the arming torch-function mode a second time,
        # and a decomposition's inner call would then go through it back to the full op.
        self._reentry = _DispatchOnly(self)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        runner = self._runner
        if runner is not None and runner.decomposing:
            return runner.run(func, args, kwargs or {}, self._reentry)  # a part: the meter's
        if self._accumulation is not None and self._accumulation.in_place_sum(func, args, kwargs):
            func, kwargs = _ADD_, {}
        tracker = self._tracker
        tracker.before_op(args)
        kwargs = kwargs or {}
        out = (
            func(*args, **kwargs)
            if runner is None
            else runner.run(func, args, kwargs, self._reentry)
        )
        tracker.after_op(func, out)
        return out


class _DispatchOnly:
    """Enters ``mode`` as the dispatch mode it is, without what its ``__enter__`` adds."""

    def __init__(self, mode: TorchDispatchMode) -> None:
        self._mode = mode

    def __enter__(self):
        return TorchDispatchMode.__enter__(self._mode)

    def __exit__(self, *exc_info):
        return TorchDispatchMode.__exit__(self._mode, *exc_info)
