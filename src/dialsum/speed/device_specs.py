"""How fast a device is: each catalog GPU on paper, this CPU measured.

GPUs: dense peak FLOP/s per precision, memory bandwidth.

Numbers are the vendor data sheets' (NVIDIA), for the board named in each comment. Sheets
often print tensor-core figures "with sparsity" (2:4 structured sparsity, which training
does not use); the dense figure is half of that and is what is kept here. Consumer cards
(GeForce) are listed with FP32 accumulation, which is what PyTorch's fp16/bf16 matmuls use.

Keys of ``peak_flops``: ``fp32`` (CUDA cores, no tensor cores: what PyTorch's fp32 matmuls
run on by default, TF32 being off), ``tf32``, ``bf16``, ``fp16`` (tensor cores). A
precision a card lacks is missing. The time model (``step_time``) divides by these.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

from dialsum.speed.gpus import GPU

_T = 1e12
_GB_S = 1e9  # data sheets give decimal GB/s


@dataclass(frozen=True)
class DeviceSpec:
    """Peak speeds of one device.

    ``kernel_issue_s`` is the host time to issue one kernel in eager PyTorch (Python,
    dispatcher, launch): 10 us by default. PyTorch's dispatcher alone runs about 280,000
    trivial ops a second (~3.6 us each; H. He, "Making Deep Learning Go Brrrr From First
    Principles", 2022); transformers' module code around each op roughly doubles or
    triples that. On a GPU it overlaps with the device's work, so it only matters when
    kernels are too small to hide it (micro-batch 1 of a base-size model); on the CPU
    (``overlapped`` False) the same thread runs the kernels, so the two add up.
    """

    slug: str
    peak_flops: dict[str, float]
    bandwidth_bytes_per_s: float
    kernel_issue_s: float = 10e-6
    overlapped: bool = True
    source: str = "vendor data sheet"
    notes: dict[str, str] = field(default_factory=dict)


def _gpu(slug: str, fp32: float, tf32: float | None, half: float, bf16: bool, gb_s: float):
    peaks = {"fp32": fp32 * _T, "fp16": half * _T}
    if tf32 is not None:
        peaks["tf32"] = tf32 * _T
    if bf16:
        peaks["bf16"] = half * _T
    return DeviceSpec(slug, peaks, gb_s * _GB_S)


# fmt: off
_SPECS: dict[str, DeviceSpec] = {s.slug: s for s in (
    # NVIDIA V100 Tensor Core GPU data sheet (2020), V100 SXM2: FP32 15.7 TFLOPS, tensor
    # (FP16) 125 TFLOPS, HBM2 900 GB/s. (PCIe board: 14 / 112 TFLOPS, same bandwidth.)
    _gpu("v100-16gb", 15.7, None, 125.0, bf16=False, gb_s=900),
    # NVIDIA T4 Tensor Core GPU data sheet: FP32 8.1 TFLOPS, mixed precision (FP16/FP32)
    # 65 TFLOPS, GDDR6 320 GB/s.
    _gpu("t4-16gb", 8.1, None, 65.0, bf16=False, gb_s=320),
    # NVIDIA Ampere GA102 GPU Architecture whitepaper, GeForce RTX 3080: FP32 29.8, TF32
    # tensor 29.8, FP16/BF16 tensor with FP32 accumulate 59.5 TFLOPS (dense); 760 GB/s.
    _gpu("rtx3080-10gb", 29.8, 29.8, 59.5, bf16=True, gb_s=760),
    # Same whitepaper, GeForce RTX 3090: FP32 35.6, TF32 35.6, FP16/BF16 (FP32 acc.) 71 TFLOPS;
    # 936 GB/s.
    _gpu("rtx3090-24gb", 35.6, 35.6, 71.0, bf16=True, gb_s=936),
    # NVIDIA Ada GPU Architecture whitepaper, GeForce RTX 4090: FP32 82.6, TF32 82.6,
    # FP16/BF16 (FP32 acc.) 165.2 TFLOPS (330.3 with sparsity); 1008 GB/s.
    _gpu("rtx4090-24gb", 82.6, 82.6, 165.2, bf16=True, gb_s=1008),
    # NVIDIA L4 Tensor Core GPU data sheet: FP32 30.3, TF32 120*, FP16/BF16 242* TFLOPS
    # (* with sparsity: dense 60 / 121); 300 GB/s.
    _gpu("l4-24gb", 30.3, 60.0, 121.0, bf16=True, gb_s=300),
    # NVIDIA A100 Tensor Core GPU data sheet: FP32 19.5, TF32 156, BF16/FP16 312 TFLOPS
    # (dense); A100 40GB 1,555 GB/s.
    _gpu("a100-40gb", 19.5, 156.0, 312.0, bf16=True, gb_s=1555),
    # Same data sheet, A100 80GB SXM: 2,039 GB/s (PCIe: 1,935 GB/s).
    _gpu("a100-80gb", 19.5, 156.0, 312.0, bf16=True, gb_s=2039),
    # NVIDIA H100 Tensor Core GPU data sheet, H100 SXM: FP32 67, TF32 989*, BF16/FP16
    # 1,979* TFLOPS (* with sparsity: dense 494.5 / 989.5); HBM3 3.35 TB/s.
    _gpu("h100-80gb", 67.0, 494.5, 989.5, bf16=True, gb_s=3350),
    # NVIDIA H200 Tensor Core GPU data sheet, H200 SXM: same compute as H100 SXM; HBM3e
    # 4.8 TB/s.
    _gpu("h200-141gb", 67.0, 494.5, 989.5, bf16=True, gb_s=4800),
)}
# fmt: on


def spec_for(gpu: GPU) -> DeviceSpec | None:
    """The catalog GPU's spec; this CPU's measured one for ``--gpu cpu``; None when the
    card is unknown (a GPU given only by its memory size)."""
    if gpu.is_cpu:
        return measured_cpu_spec()
    return _SPECS.get(gpu.slug)


def known_slugs() -> list[str]:
    return list(_SPECS)


# --------------------------------------------------------------------------------------
# This CPU's "data sheet", measured: what ``--gpu cpu`` plans and the CPU bench use.
#
# A CPU has no vendor number that PyTorch reaches, so the three speeds of ``DeviceSpec`` are
# measured once per process (about half a second):
#
# - peak FLOP/s: the best of a few fp32 ``[1024, 1024] @ [1024, 1024]`` matmuls (2·n³ FLOPs);
# - bandwidth: bytes read + written per second by the element-wise kernels a transformer
#   step runs (add, multiply, GELU, softmax, layer norm, dropout; equal bytes each) on
#   8 MiB tensors. A CPU runs these far below its copy bandwidth (dropout draws a random
#   mask: about 1 GB/s on one core, against 15-30 GB/s for a copy), and the model's bytes
#   moved are mostly theirs;
# - kernel issue time: forward + backward of a small MLP with tiny tensors, whose time is
#   all overhead, divided by the aten ops it ran (counted by ``flops.CostMeter``).
#
# Kernels run on the calling thread, so compute, memory and issue time add up
# (``overlapped=False``). Under contention for the cores, fewer threads measure (and run)
# more steadily: an OpenMP thread that is descheduled stalls every parallel op.


def _best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: thread pool, allocator
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def matmul_flops_per_s(n: int = 1024, repeats: int = 7) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / _best_seconds(lambda: a @ b, repeats)


def elementwise_bytes_per_s(rows: int = 2048, width: int = 1024, repeats: int = 7) -> float:
    """Bytes per second over a mix of element-wise kernels (see module docstring)."""
    import torch
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
    import torch

    from dialsum.trace.flops import CostMeter

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
    """This CPU's speeds (measured once per process; see the section above)."""
    import torch

    fp32 = matmul_flops_per_s()
    return DeviceSpec(
        slug="cpu",
        peak_flops={"fp32": fp32},
        bandwidth_bytes_per_s=elementwise_bytes_per_s(),
        kernel_issue_s=kernel_issue_seconds(),
        overlapped=False,
        source=f"measured on this CPU ({torch.get_num_threads()} threads)",
    )
