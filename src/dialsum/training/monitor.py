"""Memory monitoring: a Trainer callback (peaks per phase) and a live per-process GPU view.

The callback reads PyTorch's allocator peaks (what our predictions model) per phase
(``run_memory.PhasePeaks``: train here, eval in the trainer's ``evaluate``, predict in
``predict``) and, at logging steps only, NVML's device numbers (what nvidia-smi shows:
allocator reserve + CUDA context + other processes). It warns when a step's peak is more
than 10% above the prediction, because the plan's safety margin is then being eaten.

NVML numbers its devices in PCI order; CUDA orders them fastest first
(``CUDA_DEVICE_ORDER=FASTEST_FIRST``, the default) and renumbers them under
``CUDA_VISIBLE_DEVICES``, so CUDA device 0 is often not NVML device 0. ``NvmlDevice``
finds the handle by the device's PCI bus id (or UUID), never by index.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from transformers import TrainerCallback

log = logging.getLogger(__name__)

GIB = 1024**3


def pci_bus_id_text(domain: int, bus: int, device: int) -> str:
    """NVML's PCI bus id format, ``"00000000:3B:00.0"`` (domain:bus:device.function)."""
    return f"{domain:08X}:{bus:02X}:{device:02X}.0"


def _import_pynvml():
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


class NvmlDevice:
    """NVML, started once, and the handle of one CUDA device (see module docstring)."""

    def __init__(self, nvml, handle) -> None:
        self.nvml, self.handle, self.closed = nvml, handle, False

    @classmethod
    def for_cuda_device(cls, index: int, nvml=None) -> NvmlDevice | None:
        """The NVML handle of CUDA device ``index``; None without NVML or a match."""
        nvml = nvml or _import_pynvml()
        if nvml is None:
            return None
        try:
            nvml.nvmlInit()
        except Exception:  # noqa: BLE001 - NVMLError_LibraryNotFound, DriverNotLoaded, ...
            return None
        props = torch.cuda.get_device_properties(index)
        keys = [
            (nvml.nvmlDeviceGetHandleByPciBusId,
             pci_bus_id_text(props.pci_domain_id, props.pci_bus_id, props.pci_device_id)),
            (nvml.nvmlDeviceGetHandleByUUID, f"GPU-{props.uuid}"),
        ]  # fmt: skip
        for lookup, key in keys:
            try:
                return cls(nvml, lookup(key))
            except Exception:  # noqa: BLE001 - NVMLError_NotFound, InvalidArgument
                continue
        log.warning("no NVML device matches CUDA device %d (%s); device numbers not logged",
                    index, keys[0][1])  # fmt: skip
        nvml.nvmlShutdown()
        return None

    def memory(self) -> tuple[int, int]:
        """(used, total) bytes of the device, as nvidia-smi shows them."""
        info = self.nvml.nvmlDeviceGetMemoryInfo(self.handle)
        return int(info.used), int(info.total)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.nvml.nvmlShutdown()


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
    """Training-phase peaks every step, NVML at logging steps; warns on overshoot.

    ``phases`` (a ``run_memory.PhasePeaks``) is shared with the trainer (eval phase) and
    the run summary; without it, or on a CPU run, nothing is read.
    """

    def __init__(
        self,
        predicted_peak_bytes: int | None = None,
        tolerance: float = 0.10,
        phases=None,
        nvml_device=None,
    ) -> None:
        self.predicted_peak_bytes = predicted_peak_bytes
        self.tolerance = tolerance
        self.phases = phases
        self._open_nvml = nvml_device or NvmlDevice.for_cuda_device
        self._nvml: NvmlDevice | None = None
        self._nvml_tried = False
        self.warned = False

    @property
    def measuring(self) -> bool:
        return self.phases is not None and self.phases.measured

    def on_step_begin(self, args, state, control, **kwargs: Any):
        if self.measuring:
            self.phases.begin("train")

    def on_step_end(self, args, state, control, **kwargs: Any):
        if not self.measuring:
            return
        step = self.phases.end("train")
        predicted = self.predicted_peak_bytes
        if step is None or not predicted or self.warned:
            return
        if exceeds_prediction(step.max_allocated_bytes, predicted, self.tolerance):
            self.warned = True
            log.warning(
                "measured peak %.2f GiB is %.0f%% above the predicted %.2f GiB at step %d; "
                "the plan's margin is being used up",
                step.max_allocated_bytes / GIB,
                100 * (step.max_allocated_bytes / predicted - 1),
                predicted / GIB,
                state.global_step,
            )

    def device_memory(self) -> dict[str, float]:
        """NVML's used/total of this process's device; NVML starts at the first call."""
        if not self._nvml_tried and self.measuring:
            self._nvml_tried = True
            self._nvml = self._open_nvml(torch.cuda.current_device())
        if self._nvml is None or self._nvml.closed:
            return {}
        used, total = self._nvml.memory()
        return {"memory/device_used_gib": used / GIB, "memory/device_total_gib": total / GIB}

    def on_log(self, args, state, control, logs=None, **kwargs: Any):
        # Adding to `logs` sends the numbers to every configured logger (TensorBoard, W&B).
        # Only the logging steps' logs (they carry "loss"): the eval and end-of-training
        # logs are the dicts evaluate() and train() return, the run's metrics.
        if logs is None or "loss" not in logs or not self.measuring:
            return
        logs.update(self.phases.logs("train"))
        logs.update(self.device_memory())

    def on_train_end(self, args, state, control, **kwargs: Any):
        if self._nvml is not None:
            self._nvml.close()


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
