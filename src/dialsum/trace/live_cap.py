"""Emulate a smaller device on the CPU: a live-bytes cap that raises a real OOM.

``LiveBytesCap`` is a ``LiveStorageTracker`` (``dialsum.trace.tracer``) run on real
tensors: every aten op that reaches the dispatch mode is executed, each output with a new
storage is counted as an allocation of ``round_fn(storage.nbytes())`` bytes, and a weak
reference on the storage takes it off the total when the storage dies. When a new
allocation would lift the live total above ``cap_bytes`` the mode raises
``torch.OutOfMemoryError`` instead of counting it. The op has already created the tensor,
so it exists until the exception's traceback (whose frames hold it and the partial step,
as on a GPU) is dropped, e.g. by ``guard.run_with_oom_retry``; it is never counted, and
what the partial step did count leaves the total as its storages die. Registering
tensors beyond the cap raises the same way, like loading a model onto a small device.
The message reads like the CUDA allocator's, and the type is what
``dialsum.training.oom_guard.is_oom`` recognises, so retry code is exercised end to end.

Entering the cap also enters ``grad_accumulation.InPlaceAccumulation`` above it: any
dispatch mode makes the autograd engine sum a multi-use tensor's gradients out of place,
where a run without the cap sums them in place (one gradient-sized tensor more at the
backward peak: 244 MiB for a 250k x 256 shared embedding). With it, the capped run holds
what the uncapped run holds.

Where it works: forward, autograd backward (CPU backward runs on the calling thread, which
carries the dispatch mode; the OOM reaches the caller of ``backward()`` as the very same
``torch.OutOfMemoryError`` object, not wrapped), ``optimizer.step()`` and
``model.generate()``. ``.grad`` tensors are op outputs of the backward graph (or the
incoming gradient stolen by ``AccumulateGrad``, already counted), so they are included.

Limits:

- Only tensors created while the mode is active are counted, plus what the caller
  registers with ``track`` / ``track_all`` (parameters, buffers, an input batch made
  before entry). A tensor alive before entry and not registered is invisible, and so are
  its views and in-place results: an output sharing an input's storage is never a new
  allocation.
- Scratch buffers that a CPU kernel allocates internally (below the dispatcher, e.g. a
  packed copy inside a matmul) are not op outputs and are not counted; a real device
  allocator would see them.
- Allocations made on other threads (DataLoader workers, ``torch.compile`` workers) do
  not carry the thread-local dispatch mode and are not counted.
- A storage is counted once, whole, however many views share it; the default rounding is
  exact bytes, pass ``round_allocation_bytes`` to mimic the CUDA caching allocator's
  512-byte blocks. Allocator fragmentation and reserved-but-free memory are not modelled.
"""

from __future__ import annotations

import torch
from torch.utils._pytree import tree_leaves

from dialsum.trace.allocator import exact_bytes
from dialsum.trace.grad_accumulation import InPlaceAccumulation
from dialsum.trace.tracer import LiveStorageTracker, RoundFn

# ``torch.tensor(data)`` / ``torch.as_tensor`` build the tensor below the dispatcher and
# hand it to ``lift_fresh``, which returns its input: that input is the fresh allocation.
_LIFT_FRESH = torch.ops.aten.lift_fresh.default


def _storage_ids(tree) -> set[int]:
    return {
        id(leaf.untyped_storage()) for leaf in tree_leaves(tree) if isinstance(leaf, torch.Tensor)
    }


def _format_bytes(nbytes: int) -> str:
    """``12.00 MiB (12582912 bytes)``: readable like the CUDA message, exact for tests."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if nbytes >= 1 << shift:
            return f"{nbytes / (1 << shift):.2f} {unit} ({nbytes} bytes)"
    return f"{nbytes} bytes"


class LiveBytesCap(LiveStorageTracker):
    """Dispatch mode that raises ``torch.OutOfMemoryError`` above ``cap_bytes`` live bytes.

    Use as ``with LiveBytesCap(cap) as cap: ...`` after (or right after entering)
    ``cap.track_all(model.parameters())`` and ``cap.track_all(model.buffers())``.
    ``peak_bytes`` / ``current_bytes`` read the running totals; ``reset_peak()`` restarts
    the peak from what is live now. Phases of the base tracker (``set_phase``) still work.
    """

    def __init__(self, cap_bytes: int, round_fn: RoundFn = exact_bytes) -> None:
        if cap_bytes < 0:
            raise ValueError(f"cap_bytes must be >= 0, got {cap_bytes}")
        super().__init__(round_fn=round_fn)
        self.cap_bytes = cap_bytes
        self.oom_count = 0
        self.accumulation = InPlaceAccumulation()

    def __enter__(self):
        super().__enter__()
        self.accumulation.__enter__()  # on top: it must see the engine's sums first
        return self

    def __exit__(self, *exc_info):
        try:
            self.accumulation.__exit__(*exc_info)
        finally:
            super().__exit__(*exc_info)

    @property
    def peak_bytes(self) -> int:
        return self.peak.total_bytes

    def reset_peak(self) -> None:
        """Start the peak (overall and per phase) from the bytes live now, like CUDA's
        ``reset_peak_memory_stats``; live storages stay counted."""
        self.reset_peaks()
        self._update_peaks()

    def _out_of_memory(self, request_bytes: int) -> torch.OutOfMemoryError:
        self.oom_count += 1
        return torch.OutOfMemoryError(
            "CPU live-bytes cap: out of memory. "
            f"Tried to allocate {_format_bytes(request_bytes)}; "
            f"{_format_bytes(self.current_bytes)} of {_format_bytes(self.cap_bytes)} in use."
        )

    def track(self, tensor: torch.Tensor, category: str | None = None) -> None:
        """Count ``tensor``'s storage if new, raising instead when it would not fit."""
        storage = tensor.untyped_storage()
        if id(storage) not in self._live:
            request_bytes = self._round_fn(storage.nbytes())
            if self.current_bytes + request_bytes > self.cap_bytes:
                # Checked before counting: the overflowing storage never enters the total,
                # and once the exception unwinds nothing holds it.
                raise self._out_of_memory(request_bytes)
        super().track(tensor, category)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outputs = [leaf for leaf in tree_leaves(out) if isinstance(leaf, torch.Tensor)]
        if outputs and func is not _LIFT_FRESH:
            # Views and in-place ops return an input's storage: no allocation happened,
            # even when that input was never registered (alive before entry).
            shared = _storage_ids((args, kwargs))
            outputs = [t for t in outputs if id(t.untyped_storage()) not in shared]
        for tensor in outputs:
            self.track(tensor)
        return out
