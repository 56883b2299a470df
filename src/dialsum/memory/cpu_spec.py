"""This CPU's "data sheet", measured: what ``--gpu cpu`` plans and the CPU bench use.

A CPU has no vendor number that PyTorch reaches, so the three speeds of ``DeviceSpec`` are
measured once per process (about half a second):

- peak FLOP/s: the best of a few fp32 ``[1024, 1024] @ [1024, 1024]`` matmuls (2·n³ FLOPs);
- bandwidth: bytes read + written per second by the element-wise kernels a transformer
  step runs (add, multiply, GELU, softmax, layer norm, dropout; equal bytes each) on
  8 MiB tensors. A CPU runs these far below its copy bandwidth (dropout draws a random
  mask: about 1 GB/s on one core, against 15-30 GB/s for a copy), and the model's bytes
  moved are mostly theirs;
- kernel issue time: forward + backward of a small MLP with tiny tensors, whose time is
  all overhead, divided by the aten ops it ran (counted by ``flops.CostMeter``).

Kernels run on the calling thread, so compute, memory and issue time add up
(``overlapped=False``). Under contention for the cores, fewer threads measure (and run)
more steadily: an OpenMP thread that is descheduled stalls every parallel op.
"""

from __future__ import annotations

import functools
import time

import torch

from dialsum.memory.flops import CostMeter
from dialsum.memory.gpu_specs import DeviceSpec


def _best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: thread pool, allocator
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def matmul_flops_per_s(n: int = 1024, repeats: int = 7) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / _best_seconds(lambda: a @ b, repeats)


def elementwise_bytes_per_s(rows: int = 2048, width: int = 1024, repeats: int = 7) -> float:
    """Bytes per second over a mix of element-wise kernels (see module docstring)."""
    import torch.nn.functional as F

    x, y = torch.randn(rows, width), torch.randn(rows, width)
    weight, bias = torch.ones(width), torch.zeros(width)
    nbytes = x.numel() * x.element_size()
    # (kernel, tensors it reads + writes)
    kernels = (
        (lambda: x + y, 3),
        (lambda: x * y, 3),
        (lambda: F.gelu(x), 2),
        (lambda: torch.softmax(x, dim=-1), 2),
        (lambda: F.layer_norm(x, (width,), weight, bias), 2),
        (lambda: F.dropout(x, 0.1, training=True), 3),  # input, output, mask
    )
    seconds = sum(_best_seconds(fn, repeats) for fn, _ in kernels)
    return sum(n for _, n in kernels) * nbytes / seconds


def kernel_issue_seconds(repeats: int = 7) -> float:
    """Seconds per aten op of an eager forward/backward whose kernels do no real work."""
    layers = [torch.nn.Linear(8, 8) for _ in range(8)]
    model = torch.nn.Sequential(*[m for layer in layers for m in (layer, torch.nn.GELU())])
    x = torch.randn(2, 8)

    def step() -> None:
        model(x).sum().backward()

    with CostMeter(lambda: "probe") as meter:
        step()
    kernels = max(1, meter.costs["kernels"].get("probe", 1))
    return _best_seconds(step, repeats) / kernels


@functools.lru_cache(maxsize=1)
def measured_cpu_spec() -> DeviceSpec:
    """This CPU's speeds (measured once per process; see module docstring)."""
    fp32 = matmul_flops_per_s()
    return DeviceSpec(
        slug="cpu",
        peak_flops={"fp32": fp32},
        bandwidth_bytes_per_s=elementwise_bytes_per_s(),
        kernel_issue_s=kernel_issue_seconds(),
        overlapped=False,
        source=f"measured on this CPU ({torch.get_num_threads()} threads)",
    )
