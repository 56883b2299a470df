"""What a traced step costs in compute: FLOPs, bytes moved and kernels, per phase.

The memory trace already runs every aten op of the real step on fake tensors; a
``CostMeter`` rides along on the same ops (run by the trace's one dispatch layer,
``trace_mode.TraceMode``, before the tracker counts an op's outputs; the tracker sees
exactly the ops it saw without it):

- **FLOPs** are counted with the formulas of ``torch.utils.flop_counter`` (as its
  ``FlopCounterMode`` counts them, in one dispatch mode with the traffic below: 2·m·n·k per
  matmul, the two attention matmuls of SDPA kernels, and their backward formulas). Only
  matmul-like ops have FLOP formulas: element-wise work is memory traffic, counted next.
  Gradient checkpointing's recompute runs inside ``loss.backward()`` and is counted in
  the ``backward`` phase, as it runs.
- **Bytes moved**: what an eager, unfused kernel reads and writes: every input tensor plus
  every output (and every argument the op mutates in place), once per op. View ops move
  nothing; allocations (``empty``) launch nothing.
- **Kernels**: one per op that moves bytes (what the host must issue to the device).

The numbers of one phase are sums over its ops; they scale exactly with the batch (every
size does), so they replay from the recordings at two batch sizes like the memory
timeline does (``interpolate``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextlib import AbstractContextManager
from fractions import Fraction

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_leaves

_aten = torch.ops.aten

# Ops that allocate without running a kernel: no traffic, nothing to issue.
_NO_KERNEL = frozenset(
    {
        _aten.empty,
        _aten.empty_strided,
        _aten.empty_like,
        _aten.new_empty,
        _aten.new_empty_strided,
        _aten.lift_fresh,
        _aten._local_scalar_dense,
    }
)

COSTS: tuple[str, ...] = ("flops", "bytes_moved", "kernels")
_COST_INDEX = {name: index for index, name in enumerate(COSTS)}


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes a kernel touches in ``tensor``: its elements, but no more than its storage
    (an expanded ``[B, H, L, S]`` view of a ``[1, H, L, S]`` bias reads the small one)."""
    itemsize = tensor.element_size()
    try:
        stored = tensor.untyped_storage().nbytes()
    except (RuntimeError, NotImplementedError):  # tensors without storage (sparse, nested)
        stored = tensor.numel() * itemsize
    return min(tensor.numel() * itemsize, stored)


def _tensors(tree) -> list[torch.Tensor]:
    return [t for t in tree_leaves(tree) if isinstance(t, torch.Tensor)]


def _flat_tensors(value, out: list[torch.Tensor]) -> list[torch.Tensor]:
    """The tensors in ``value`` (an op's argument or output: a tensor, or lists, tuples and
    dicts of them) in ``tree_leaves`` order, appended to ``out``; a plain walk is several
    times cheaper than pytree on the ~50k ops of a step."""
    if isinstance(value, torch.Tensor):
        out.append(value)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _flat_tensors(item, out)
    elif isinstance(value, dict):
        for item in value.values():
            _flat_tensors(item, out)
    return out


# op -> ((position, name), ...) of the arguments it writes in place (``Tensor(a!)``).
_WRITTEN_ARGS: dict = {}


def _written_args(func) -> tuple[tuple[int, str], ...]:
    spec = _WRITTEN_ARGS.get(func)
    if spec is None:
        spec = tuple(
            (position, argument.name)
            for position, argument in enumerate(func._schema.arguments)
            if argument.alias_info is not None and argument.alias_info.is_write
        )
        _WRITTEN_ARGS[func] = spec
    return spec


def _mutated(func, args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """Arguments the op writes in place (``Tensor(a!)`` in its schema)."""
    out: list[torch.Tensor] = []
    for position, name in _written_args(func):
        _flat_tensors(args[position] if position < len(args) else kwargs.get(name), out)
    return out


def _storage_key(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage()._cdata


def _op_cost(func, args: tuple, kwargs: dict, out) -> int | None:
    """Bytes the op moves if it launches a kernel, else None (see ``runs_kernel`` and
    ``op_traffic_bytes``; one walk over the arguments serves both)."""
    if func.is_view or func._overloadpacket in _NO_KERNEL:
        return None
    mutated = _mutated(func, args, kwargs)
    outputs = _flat_tensors(out, [])
    if not mutated and not outputs:
        return None
    inputs = _flat_tensors(kwargs, _flat_tensors(args, []))
    if not mutated:
        seen = {_storage_key(t) for t in inputs}
        if all(_storage_key(t) in seen for t in outputs):
            return None  # every output is a view of an input: nothing written
    read = sum(tensor_bytes(t) for t in inputs)
    written = {id(t): t for t in outputs + mutated}
    return read + sum(tensor_bytes(t) for t in written.values())


@functools.lru_cache(maxsize=1024)
def in_place_add_cost(nbytes: int) -> tuple[int, int, int]:
    """(FLOPs, bytes moved, kernels) that ``_CostMode`` books for ``a.add_(b)`` on two
    dense tensors of ``nbytes`` each (the engine adding a gradient into ``.grad``): an
    element-wise op without a FLOP formula, one kernel reading both and writing ``a``.
    (Meta tensors made outside any mode: a tracer running now must not count them.)"""
    with _disable_current_modes():
        a, b = (torch.empty(nbytes, dtype=torch.uint8, device="meta") for _ in range(2))
        return 0, _op_cost(_aten.add_.Tensor, (a, b), {}, a) or 0, 1


def runs_kernel(func, args: tuple, kwargs: dict, out) -> bool:
    """Whether the op launches a kernel: it writes a tensor that is not a view of an input.

    Metadata queries (``prim.device``, sizes), views (also ``_unsafe_view``, which the
    schema does not mark) and bare allocations (``empty``) launch nothing.
    """
    return _op_cost(func, args, kwargs, out) is not None


def op_traffic_bytes(func, args: tuple, kwargs: dict, out) -> int:
    """Bytes read (every input tensor) + written (every output and mutated argument)."""
    read = sum(tensor_bytes(t) for t in _tensors((args, kwargs)))
    written = {id(t): t for t in _tensors(out) + _mutated(func, args, kwargs)}
    return read + sum(tensor_bytes(t) for t in written.values())


# Metadata queries ``FlopCounterMode`` leaves to the modes below it (no kernel, no FLOPs).
_METADATA_OPS = frozenset(
    {
        _aten.sym_is_contiguous.default,
        _aten.is_contiguous.default,
        _aten.is_contiguous.memory_format,
        _aten.is_strides_like_format.default,
        _aten.is_non_overlapping_and_dense.default,
        _aten.size.default,
        _aten.sym_size.default,
        _aten.stride.default,
        _aten.sym_stride.default,
        _aten.storage_offset.default,
        _aten.sym_storage_offset.default,
        _aten.numel.default,
        _aten.sym_numel.default,
        _aten.dim.default,
        torch.ops.prim.layout.default,
    }
)

# op -> whether ``op.decompose`` can do anything (a CompositeImplicitAutograd kernel).
_DECOMPOSABLE: dict = {}


def _decomposable(func) -> bool:
    known = _DECOMPOSABLE.get(func)
    if known is None:
        key = torch._C.DispatchKey.CompositeImplicitAutograd
        known = key in func.py_kernels or torch._C._dispatch_has_kernel_for_dispatch_key(
            func.name(), key
        )
        _DECOMPOSABLE[func] = known
    return known


class _CostMode(TorchDispatchMode):
    """FLOPs, bytes moved and kernels of every op, booked to the meter's current phase.

    One mode does what ``FlopCounterMode`` (FLOPs, from ``flop_registry``; an op without
    a formula is decomposed when it can be, and its parts counted) and a traffic counter
    stacked above it did, with the same counts: the traffic is the op's as issued, its
    FLOPs those of what ran. One layer instead of two, per-op schema facts cached and a
    plain argument walk halve the meter's share of a trace.

    ``run`` is the whole of it, for this mode and for a mode that hosts the meter in its
    own dispatch (``trace_mode.TraceMode``: one Python layer per op instead of one per
    tool); ``decomposing`` tells that host an op is a part of a decomposed one.
    """

    def __init__(self, meter: CostMeter) -> None:
        super().__init__()
        self._meter = meter
        from torch.utils.flop_counter import flop_registry

        self._registry = dict(flop_registry)
        self.decomposing = 0

    def _count_flops(self, packet, out, args: tuple, kwargs: dict) -> None:
        formula = self._registry.get(packet)
        if formula is not None:
            flops = formula(*args, **kwargs, out_val=out)
            if flops:
                self._meter.add("flops", flops)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return self.run(func, args, kwargs or {}, self)

    def run(self, func, args: tuple, kwargs: dict, host: AbstractContextManager):
        """Run ``func`` and book its costs; entering ``host`` makes the dispatch mode that
        runs it active again (the parts of a decomposed op run through it)."""
        if func in _METADATA_OPS:
            return func(*args, **kwargs)
        packet = func._overloadpacket
        out = NotImplemented
        if (
            packet not in self._registry
            and func is not torch.ops.prim.device.default
            and _decomposable(func)
        ):
            self.decomposing += 1
            try:
                with host:  # the parts run through this mode: their FLOPs count
                    out = func.decompose(*args, **kwargs)
            finally:
                self.decomposing -= 1
        if out is NotImplemented:
            out = func(*args, **kwargs)
            self._count_flops(packet, out, args, kwargs)
        if self.decomposing:
            return out  # a part of a decomposed op: its traffic is the op's
        moved = _op_cost(func, args, kwargs, out)
        if moved is not None:
            self._meter.add("bytes_moved", moved)
            self._meter.add("kernels", 1)
        self._meter.flush()
        return out


class CostMeter:
    """FLOPs, bytes moved and kernels of the ops run inside it, split by phase.

    ``phase_of()`` names the phase of the op being run (the tracer's phase). A trace
    hands the meter to ``trace_mode.TraceMode`` with its tracker; entered on its own (a
    cost probe) the meter is a dispatch mode of its own.

    With a ``sink`` (the tracker's recorded timeline) each op's costs are also appended to
    it as one event ``("c", phase, flops, bytes moved, kernels)``, in order with the
    memory events: a layer's events then carry its costs, so a timeline repeated from
    shallow traces (``trace.depth``) has the costs of the whole model (``cost_events``).
    The meter's totals are the sums of its events. Phases in ``unsunk`` stay out of the
    sink: an optimizer runs ``_foreach`` ops over every parameter at once, one op whose
    cost grows with the depth, which no repeated layer carries (its cost does not depend
    on the batch: ``repeat.deep_pair`` extrapolates it in the depth instead).
    """

    def __init__(
        self,
        phase_of: Callable[[], str],
        sink: list | None = None,
        unsunk: frozenset[str] = frozenset(),
    ) -> None:
        self.phase_of = phase_of
        self.costs: dict[str, dict[str, int]] = {name: {} for name in COSTS}
        self.sink = sink
        self._unsunk = unsunk
        self._pending: dict[str, list[int]] = {}
        self._mode = _CostMode(self)

    @property
    def op_runner(self) -> _CostMode:
        """What runs an op and books it (``_CostMode.run``), for a hosting dispatch mode."""
        return self._mode

    def add(self, cost: str, amount: int) -> None:
        by_phase = self.costs[cost]
        phase = self.phase_of()
        by_phase[phase] = by_phase.get(phase, 0) + amount
        if self.sink is not None and phase not in self._unsunk:
            self._pending.setdefault(phase, [0, 0, 0])[_COST_INDEX[cost]] += amount

    def flush(self) -> None:
        """End of an op: its costs become one event per phase in the sink."""
        if self._pending:
            if self.sink is not None:
                self.sink.extend(("c", phase, *amounts) for phase, amounts in self._pending.items())
            self._pending = {}

    def reset(self) -> None:
        self.costs = {name: {} for name in COSTS}

    def phases(self, names: tuple[str, ...] | None = None) -> dict[str, dict[str, int]]:
        """``{cost: {phase: amount}}`` for ``names`` (every phase seen when None; a named
        phase without ops counts 0)."""
        out: dict[str, dict[str, int]] = {}
        for cost, by_phase in self.costs.items():
            keys = names if names is not None else tuple(by_phase)
            out[cost] = {phase: int(by_phase.get(phase, 0)) for phase in keys}
        return out

    def __enter__(self) -> CostMeter:
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)


# -- replay across batch sizes -----------------------------------------------------------


def interpolate(
    lo: dict[str, int], hi: dict[str, int], lo_batch: int, hi_batch: int, batch: int
) -> dict[str, int] | None:
    """Per-phase counts at ``batch`` from counts at ``lo_batch`` and ``hi_batch``.

    Every count is a sum over ops whose sizes are affine in the batch, so the count is too;
    None when some interpolated value is not a non-negative integer (not affine: the
    caller traces directly instead).
    """
    if set(lo) != set(hi):
        return None
    out: dict[str, int] = {}
    for phase in lo:
        value = Fraction(lo[phase]) + Fraction(batch - lo_batch, hi_batch - lo_batch) * (
            hi[phase] - lo[phase]
        )
        if value.denominator != 1 or value < 0:
            return None
        out[phase] = int(value)
    return out


def interpolate_costs(
    lo: dict[str, dict[str, int]],
    hi: dict[str, dict[str, int]],
    lo_batch: int,
    hi_batch: int,
    batch: int,
) -> dict[str, dict[str, int]] | None:
    """``interpolate`` for each of ``COSTS``; None if any is not exactly affine."""
    out = {}
    for cost in COSTS:
        value = interpolate(lo.get(cost, {}), hi.get(cost, {}), lo_batch, hi_batch, batch)
        if value is None:
            return None
        out[cost] = value
    return out
