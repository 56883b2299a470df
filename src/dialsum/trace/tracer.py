"""Count live tensor storage while real model code runs on fake tensors.

``LiveStorageTracker`` is a ``TorchDispatchMode``: every aten op that reaches it is run,
and each output whose storage it has not seen yet is counted as an allocation of
``round_fn(storage.nbytes())`` bytes. A weak reference with a callback on the storage
observes its free: PyTorch keeps one Python object per storage alive for as long as the
C++ storage lives (autograd's saved tensors included), so the callback fires exactly when
the last view, saved tensor or ``.grad`` holding it goes away. Views and in-place ops
share the storage and are not counted twice.

Every storage carries a category; the tracker keeps the running total per category so the
breakdown at a peak is a cheap copy of a small dict, not a walk over live storages.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from dialsum.trace.allocator import round_allocation_bytes

RoundFn = Callable[[int], int]


_DEQUANTIZED = "dequantized_weights"
"""Outputs of bitsandbytes' ops (the dequantized weight and absmax of a 4-bit matmul)."""


@dataclass
class PeakRecord:
    """The largest live total seen, the phase it happened in and its split by category."""

    total_bytes: int = 0
    phase: str = ""
    by_category: dict[str, int] = field(default_factory=dict)


class LiveStorageTracker(TorchDispatchMode):
    """Running sum of live storage bytes, by category, with per-phase and overall peaks.

    ``default_category`` decides the category of a new op output; the driver changes it
    with the phase (e.g. ``activations`` in forward, ``temporaries`` elsewhere) and retags
    storages whose role it learns later (``.grad`` tensors, optimizer state).
    """

    def __init__(self, round_fn: RoundFn = round_allocation_bytes, record: bool = False) -> None:
        super().__init__()
        self._round_fn = round_fn
        # id(storage) -> [rounded bytes, category, weakref keeping the free callback alive,
        # raw bytes]
        self._live: dict[int, list] = {}
        # With ``record``: the timeline, replayable at other batch sizes and depths (see
        # ``timeline`` and ``depth``). Every event carries the sizes it needs, never a
        # reference to an earlier one: ``("a", raw, category)`` allocates,
        # ``("f", raw, category)`` frees, ``("r", raw, old, new)`` retags, ``("p", phase)``,
        # ``("reset",)`` and ``("step",)`` mark the step, ``("param", name)`` where work
        # on another parameter starts (``name_parameters``).
        self.events: list[tuple] | None = [] if record else None
        self._param_names: dict[int, str] | None = None
        self._last_param: str | None = None
        self._by_category: dict[str, int] = {}
        self.current_bytes = 0
        self.phase = "setup"
        self.default_category = "temporaries"
        self.phase_peaks: dict[str, int] = {}
        # Each phase's own peak with its split by category (depth extrapolation needs it).
        self.phase_records: dict[str, PeakRecord] = {}
        self.peak = PeakRecord()

    # -- bookkeeping -------------------------------------------------------------------

    def _add(self, category: str, nbytes: int) -> None:
        self._by_category[category] = self._by_category.get(category, 0) + nbytes
        self.current_bytes += nbytes
        if nbytes > 0:
            self._update_peaks()

    def _update_peaks(self) -> None:
        if self.current_bytes > self.phase_peaks.get(self.phase, 0):
            self.phase_peaks[self.phase] = self.current_bytes
            self.phase_records[self.phase] = PeakRecord(
                self.current_bytes, self.phase, dict(self._by_category)
            )
        if self.current_bytes > self.peak.total_bytes:
            self.peak = PeakRecord(self.current_bytes, self.phase, dict(self._by_category))

    def _on_free(self, key: int) -> None:
        entry = self._live.pop(key, None)
        if entry is not None:
            self._by_category[entry[1]] -= entry[0]
            self.current_bytes -= entry[0]
            if self.events is not None:
                self.events.append(("f", entry[3], entry[1]))

    def track(self, tensor: torch.Tensor, category: str | None = None) -> None:
        """Count ``tensor``'s storage if new; retag it when ``category`` is given."""
        storage = tensor.untyped_storage()
        key = id(storage)
        entry = self._live.get(key)
        if entry is None:
            raw = storage.nbytes()
            nbytes = self._round_fn(raw)
            ref = weakref.ref(storage, lambda _ref, key=key: self._on_free(key))
            category = category or self.default_category
            self._live[key] = [nbytes, category, ref, raw]
            if self.events is not None:
                self.events.append(("a", raw, category))
            self._add(category, nbytes)
        elif category is not None and entry[1] != category:
            self._by_category[entry[1]] -= entry[0]
            self._by_category[category] = self._by_category.get(category, 0) + entry[0]
            if self.events is not None:
                self.events.append(("r", entry[3], entry[1], category))
            entry[1] = category

    def track_all(self, tensors: Iterable[torch.Tensor], category: str | None = None) -> None:
        for tensor in tensors:
            self.track(tensor, category)

    def live_categories(self) -> dict[int, str]:
        """``id(storage)`` -> category of every counted storage alive now."""
        return {key: entry[1] for key, entry in self._live.items()}

    def bytes_of(self, category: str) -> int:
        return self._by_category.get(category, 0)

    def set_phase(self, phase: str, default_category: str = "temporaries") -> None:
        self.phase = phase
        self.default_category = default_category
        if self.events is not None:
            self.events.append(("p", phase))

    def name_parameters(self, names: dict[int, str] | None) -> None:
        """From now on (until None), record ``("param", name)`` when an op first touches a
        storage of ``names`` (``id(storage)`` -> name) other than the last one touched.

        An optimizer updates its parameters one by one, and the same layer's parameters
        do the same ops on the same sizes: without names, where one layer's updates end
        and the next one's start is ambiguous to ``depth``'s alignment (Adafactor on mT5);
        with the layer index taken out of the name, every layer still records the same
        events, and the names cut them per parameter."""
        self._param_names = names
        self._last_param = None

    def _mark_parameter(self, args: tuple) -> None:
        names = self._param_names
        for leaf in tree_leaves(args):
            if isinstance(leaf, torch.Tensor):
                name = names.get(id(leaf.untyped_storage()))  # type: ignore[union-attr]
                if name is not None:
                    if name != self._last_param:
                        self._last_param = name
                        self.events.append(("param", name))  # type: ignore[union-attr]
                    return

    def reset_peaks(self) -> None:
        """Forget peaks so far (e.g. after a warm-up step); live storages stay counted."""
        if self.events is not None:
            self.events.append(("reset",))
        self.phase_peaks = {}
        self.phase_records = {}
        self.peak = PeakRecord()

    # -- dispatch ----------------------------------------------------------------------

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.before_op(args)
        out = func(*args, **(kwargs or {}))
        self.after_op(func, out)
        return out

    def before_op(self, args: tuple) -> None:
        """What the tracker does before an op runs (this mode's, or a host's:
        ``trace_mode.TraceMode``)."""
        if self._param_names is not None and self.events is not None:
            self._mark_parameter(args)

    def after_op(self, func, out) -> None:
        """Count the op's new outputs."""
        # QLoRA: a 4-bit weight dequantized for a matmul is its own category.
        category = _DEQUANTIZED if getattr(func, "namespace", "") == "bitsandbytes" else None
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.track(leaf, category)
