from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from dialsum.training.monitor import (
    DeviceMemory,
    MemoryMonitorCallback,
    NvmlDevice,
    exceeds_prediction,
    pci_bus_id_text,
    render_devices,
)
from dialsum.training.run_memory import PhasePeak, PhasePeaks


def test_exceeds_prediction_uses_ten_percent() -> None:
    assert not exceeds_prediction(110, 100)
    assert exceeds_prediction(111, 100)
    assert not exceeds_prediction(10**9, 0)  # no prediction, no warning


def test_render_devices_lists_processes_by_memory() -> None:
    gib = 1024**3
    dev = DeviceMemory(0, "H200", 10 * gib, 140 * gib, [(11, "python a", gib), (12, "b", 3 * gib)])
    text = render_devices([dev])
    assert "GPU 0 H200:  10.00 / 140.00 GiB" in text
    assert text.index("pid      12") < text.index("pid      11")


# --------------------------------------------------------------------------- NVML mapping

GIB = 1024**3


class FakeNvml:
    """pynvml with two GPUs, NVML index 0 = bus 0x1B and index 1 = bus 0x3B. The CUDA
    device 0 of the tests is the one on bus 0x3B (FASTEST_FIRST put it first)."""

    def __init__(self, known_bus_ids=("00000000:1B:00.0", "00000000:3B:00.0")) -> None:
        self.calls: list[str] = []
        self.known = list(known_bus_ids)

    def nvmlInit(self):
        self.calls.append("init")

    def nvmlShutdown(self):
        self.calls.append("shutdown")

    def nvmlDeviceGetHandleByIndex(self, index):
        raise AssertionError("the CUDA index must never be used as the NVML index")

    def nvmlDeviceGetHandleByPciBusId(self, bus_id):
        self.calls.append(f"bus {bus_id}")
        if bus_id not in self.known:
            raise RuntimeError("NVMLError_NotFound")
        return ("handle", bus_id)

    def nvmlDeviceGetHandleByUUID(self, uuid):
        self.calls.append(f"uuid {uuid}")
        return ("handle", uuid)

    def nvmlDeviceGetMemoryInfo(self, handle):
        self.calls.append("memory")
        used = 30 * GIB if handle == ("handle", "00000000:3B:00.0") else 1 * GIB
        return SimpleNamespace(used=used, total=80 * GIB)


@pytest.fixture
def cuda_device_on_bus_3b(monkeypatch: pytest.MonkeyPatch) -> None:
    props = SimpleNamespace(pci_domain_id=0, pci_bus_id=0x3B, pci_device_id=0,
                            uuid="5e1f-aa")  # fmt: skip
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


def test_pci_bus_id_text() -> None:
    assert pci_bus_id_text(0, 0x3B, 0) == "00000000:3B:00.0"
    assert pci_bus_id_text(1, 0xA1, 0x1F) == "00000001:A1:1F.0"


@pytest.mark.usefixtures("cuda_device_on_bus_3b")
def test_nvml_handle_found_by_pci_bus_id_not_index() -> None:
    nvml = FakeNvml()
    device = NvmlDevice.for_cuda_device(0, nvml=nvml)
    assert device is not None
    assert device.memory() == (30 * GIB, 80 * GIB)  # the bus-0x3B GPU, not NVML index 0
    device.close()
    device.close()
    assert nvml.calls == ["init", "bus 00000000:3B:00.0", "memory", "shutdown"]


@pytest.mark.usefixtures("cuda_device_on_bus_3b")
def test_nvml_falls_back_to_the_uuid() -> None:
    nvml = FakeNvml(known_bus_ids=())
    device = NvmlDevice.for_cuda_device(0, nvml=nvml)
    assert device is not None and device.handle == ("handle", "GPU-5e1f-aa")


class FakeCounters:
    def __init__(self, allocated: list[int]) -> None:
        self.allocated = list(allocated)

    def reset(self) -> None:
        pass

    def read(self) -> PhasePeak:
        n = self.allocated.pop(0)
        return PhasePeak(n, n + GIB, n)


@pytest.mark.usefixtures("cuda_device_on_bus_3b")
def test_callback_samples_nvml_at_logging_steps_only(caplog) -> None:
    nvml = FakeNvml()
    phases = PhasePeaks(FakeCounters([8 * GIB, 10 * GIB, 12 * GIB, 9 * GIB]))
    callback = MemoryMonitorCallback(
        10 * GIB, phases=phases, nvml_device=lambda index: NvmlDevice.for_cuda_device(index, nvml)
    )
    state = SimpleNamespace(global_step=0)
    logged = []
    for step in range(1, 5):
        state.global_step = step
        callback.on_step_begin(None, state, None)
        callback.on_step_end(None, state, None)
        if step % 2 == 0:  # logging_steps = 2
            logs: dict[str, float] = {"loss": 1.0}
            callback.on_log(None, state, None, logs=logs)
            logged.append(logs)
    callback.on_train_end(None, state, None)
    # NVML started once, read at the two logging steps only, shut down at the end.
    assert nvml.calls == ["init", "bus 00000000:3B:00.0", "memory", "memory", "shutdown"]
    assert logged[0]["memory/train/max_allocated_gib"] == 10.0
    assert logged[1]["memory/train/max_allocated_gib"] == 12.0
    assert logged[1]["memory/train/max_reserved_gib"] == 13.0
    assert logged[1]["memory/device_used_gib"] == 30.0
    assert phases.peaks["train"] == PhasePeak(12 * GIB, 13 * GIB, 12 * GIB)
    # 12 GiB is 20% above the 10 GiB predicted: one warning, at step 3.
    warnings = [r.getMessage() for r in caplog.records if "above the predicted" in r.getMessage()]
    assert len(warnings) == 1 and "at step 3" in warnings[0]


def test_callback_on_cpu_reads_nothing() -> None:
    def no_nvml(index):
        raise AssertionError("NVML must not start on a CPU run")

    callback = MemoryMonitorCallback(10, phases=PhasePeaks(None), nvml_device=no_nvml)
    state = SimpleNamespace(global_step=1)
    callback.on_step_begin(None, state, None)
    callback.on_step_end(None, state, None)
    logs: dict[str, float] = {}
    callback.on_log(None, state, None, logs=logs)
    assert logs == {}


def test_callback_leaves_eval_and_final_metrics_alone() -> None:
    phases = PhasePeaks(FakeCounters([GIB]))
    callback = MemoryMonitorCallback(None, phases=phases, nvml_device=lambda index: None)
    state = SimpleNamespace(global_step=1)
    callback.on_step_begin(None, state, None)
    callback.on_step_end(None, state, None)
    for logs in ({"eval_loss": 1.0}, {"train_loss": 1.0, "train_runtime": 2.0}):
        before = dict(logs)
        callback.on_log(None, state, None, logs=logs)
        assert logs == before
