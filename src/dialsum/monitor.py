"""Memory monitoring: a Trainer callback (per-step peaks) and a live per-process GPU view.

The callback reads PyTorch's allocator peaks (what our predictions model) and NVML's
device numbers (what nvidia-smi shows: allocator reserve + CUDA context + other
processes), logs both, and warns when the measured peak is more than 10% above the
prediction, because the plan's safety margin is then being eaten.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from transformers import TrainerCallback

log = logging.getLogger(__name__)

GIB = 1024**3


@dataclass
class DeviceMemory:
    index: int
    name: str
    used_bytes: int
    total_bytes: int
    processes: list[tuple[int, str, int]]  # (pid, process name, used bytes)


def nvml_devices() -> list[DeviceMemory] | None:
    """Per-device memory via NVML; None when no NVIDIA driver/GPU is present."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - NVMLError_LibraryNotFound, DriverNotLoaded, ...
        return None
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            procs = []
            for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                procs.append((p.pid, _process_name(p.pid), int(p.usedGpuMemory or 0)))
            out.append(
                DeviceMemory(
                    i,
                    name.decode() if isinstance(name, bytes) else name,
                    int(mem.used),
                    int(mem.total),
                    procs,
                )
            )
        return out
    finally:
        pynvml.nvmlShutdown()


def _process_name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode(errors="replace").strip()[:60]
    except OSError:
        return "?"


def exceeds_prediction(measured_bytes: int, predicted_bytes: int, tolerance: float = 0.10) -> bool:
    """True when the measured peak is more than ``tolerance`` above the prediction."""
    return predicted_bytes > 0 and measured_bytes > predicted_bytes * (1 + tolerance)


class MemoryMonitorCallback(TrainerCallback):
    """Logs per-step peak allocated/reserved and device used/total; warns on overshoot."""

    def __init__(self, predicted_peak_bytes: int | None = None, tolerance: float = 0.10) -> None:
        self.predicted_peak_bytes = predicted_peak_bytes
        self.tolerance = tolerance
        self.max_allocated_bytes = 0
        self.warned = False
        self.last: dict[str, float] = {}

    def on_step_begin(self, args, state, control, **kwargs: Any):
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_step_end(self, args, state, control, **kwargs: Any):
        if not torch.cuda.is_available():
            return
        allocated = int(torch.cuda.max_memory_allocated())
        reserved = int(torch.cuda.max_memory_reserved())
        self.max_allocated_bytes = max(self.max_allocated_bytes, allocated)
        self.last = {
            "memory/peak_allocated_gib": allocated / GIB,
            "memory/peak_reserved_gib": reserved / GIB,
        }
        devices = nvml_devices()
        if devices:
            index = torch.cuda.current_device()
            dev = devices[index] if index < len(devices) else devices[0]
            self.last["memory/device_used_gib"] = dev.used_bytes / GIB
            self.last["memory/device_total_gib"] = dev.total_bytes / GIB
        predicted = self.predicted_peak_bytes
        if (
            predicted
            and not self.warned
            and exceeds_prediction(allocated, predicted, self.tolerance)
        ):
            self.warned = True
            log.warning(
                "measured peak %.2f GiB is %.0f%% above the predicted %.2f GiB at step %d; "
                "the plan's margin is being used up",
                allocated / GIB,
                100 * (allocated / predicted - 1),
                predicted / GIB,
                state.global_step,
            )

    def on_log(self, args, state, control, logs=None, **kwargs: Any):
        # Adding to `logs` sends the numbers to every configured logger (TensorBoard, W&B).
        if logs is not None and self.last:
            logs.update(self.last)


def render_devices(devices: list[DeviceMemory]) -> str:
    lines = []
    for d in devices:
        pct = 100 * d.used_bytes / max(d.total_bytes, 1)
        lines.append(
            f"GPU {d.index} {d.name}: {d.used_bytes / GIB:6.2f} / {d.total_bytes / GIB:6.2f} GiB"
            f" ({pct:4.1f}%)"
        )
        for pid, name, used in sorted(d.processes, key=lambda p: -p[2]):
            lines.append(f"    pid {pid:>7}  {used / GIB:6.2f} GiB  {name}")
        if not d.processes:
            lines.append("    (no compute processes)")
    return "\n".join(lines)
