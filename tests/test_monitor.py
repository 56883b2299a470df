from __future__ import annotations

from dialsum.monitor import DeviceMemory, exceeds_prediction, render_devices


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
