"""Block rounding of PyTorch's CUDA caching allocator (``c10/cuda/CUDACachingAllocator.cpp``).

What is implemented, with the allocator's constants:

- ``round_allocation_bytes`` is the allocator's ``round_size``: every request is rounded up
  to a multiple of ``kMinBlockSize`` = 512 bytes, with at least 512 bytes. This is the
  size of the block a tensor occupies and what ``torch.cuda.memory_allocated()`` counts.
  Zero-byte requests return a null pointer and occupy nothing. The optional
  ``roundup_power2_divisions`` setting of ``PYTORCH_CUDA_ALLOC_CONF`` is off by default
  and not modelled.
- ``segment_bytes`` is the allocator's ``get_allocation_size``: the ``cudaMalloc`` segment
  a request opens when no cached block fits. Requests of at most ``kSmallSize`` = 1 MiB
  come from the small pool, packed into 2 MiB segments; requests under
  ``kMinLargeAlloc`` = 10 MiB open a 20 MiB segment that later requests may split; larger
  requests open a segment rounded up to a multiple of ``kRoundLarge`` = 2 MiB.

The simulator sums ``round_allocation_bytes`` of live tensors (the allocated view). The
reserved view (segments, fragmentation) is left to a calibration overhead.
"""

from __future__ import annotations

MIN_BLOCK_BYTES = 512  # kMinBlockSize
SMALL_SIZE_BYTES = 1 << 20  # kSmallSize: largest request served by the small pool
SMALL_BUFFER_BYTES = 2 << 20  # kSmallBuffer: small-pool segment
LARGE_BUFFER_BYTES = 20 << 20  # kLargeBuffer: segment for 1-10 MiB requests
MIN_LARGE_ALLOC_BYTES = 10 << 20  # kMinLargeAlloc
ROUND_LARGE_BYTES = 2 << 20  # kRoundLarge


def _round_up(nbytes: int, multiple: int) -> int:
    return -(-nbytes // multiple) * multiple


def round_allocation_bytes(nbytes: int) -> int:
    """Bytes of the block the CUDA caching allocator hands out for a ``nbytes`` request."""
    if nbytes <= 0:
        return 0
    return max(MIN_BLOCK_BYTES, _round_up(nbytes, MIN_BLOCK_BYTES))


def segment_bytes(nbytes: int) -> int:
    """Bytes of the ``cudaMalloc`` segment opened for a ``nbytes`` request on a cache miss."""
    if nbytes <= 0:
        return 0
    if nbytes <= SMALL_SIZE_BYTES:
        return SMALL_BUFFER_BYTES
    if nbytes < MIN_LARGE_ALLOC_BYTES:
        return LARGE_BUFFER_BYTES
    return _round_up(nbytes, ROUND_LARGE_BYTES)


def exact_bytes(nbytes: int) -> int:
    """No rounding: for comparisons against allocators that do not round (the CPU one)."""
    return max(nbytes, 0)
