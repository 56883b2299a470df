"""This CPU's "data sheet", measured: what ``--gpu cpu`` plans and the CPU bench use.

A CPU has no vendor number that PyTorch reaches, so the three speeds of ``DeviceSpec`` are
measured once per process (about half a second):

- peak FLOP/s: the best of a few fp32 ``[1024, 1024] @ [1024, 1024]`` matmuls (2·n³ FLOPs);
- bandwidth: a 64 MiB copy (bytes read + written per second);
- kernel issue time: forward + backward of a small MLP with tiny tensors, whose time is
  all overhead, divided by the aten ops it ran (counted by ``flops.CostMeter``).

Kernels run on the calling thread, so issue time adds to compute (``overlapped=False``).
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


def matmul_flops_per_s(n: int = 1024, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / _best_seconds(lambda: a @ b, repeats)


def copy_bytes_per_s(n_bytes: int = 64 * 2**20, repeats: int = 5) -> float:
    src = torch.ones(n_bytes // 4)
    dst = torch.empty_like(src)
    return 2 * n_bytes / _best_seconds(lambda: dst.copy_(src), repeats)


def kernel_issue_seconds(repeats: int = 5) -> float:
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
        bandwidth_bytes_per_s=copy_bytes_per_s(),
        kernel_issue_s=kernel_issue_seconds(),
        overlapped=False,
        source=f"measured on this CPU ({torch.get_num_threads()} threads)",
    )
