"""Peak memory per phase against the plan: exact numbers, with fake allocator counters."""

from __future__ import annotations

import json

from dialsum.training.run_memory import (
    NOT_MEASURED,
    MemorySummary,
    PhasePeak,
    PhasePeaks,
    compare_phases,
    merge_into_metrics_file,
    planned_phases,
)

GIB = 2**30

PLAN = {
    "predicted_peak_bytes": 10 * GIB,
    "required_bytes": 11 * GIB,
    "breakdown": {"weights": 1 * GIB, "optimizer_state": 2 * GIB},
    "eval_peak_bytes": 3 * GIB,
    "eval_required_bytes": 6 * GIB,
    "generate_peak_bytes": 4 * GIB,
    "generate_required_bytes": 5 * GIB,
    "zero_states_per_rank": None,
}


class FakeCounters:
    """Allocator peak counters: each window reads the next value of ``windows``."""

    def __init__(self, windows: list[PhasePeak]) -> None:
        self.windows, self.resets = list(windows), 0

    def reset(self) -> None:
        self.resets += 1

    def read(self) -> PhasePeak:
        return self.windows.pop(0)


def test_planned_phases_adds_the_resident_optimizer_state_to_eval() -> None:
    assert planned_phases(PLAN) == {
        "train": {"peak_bytes": 10 * GIB, "required_bytes": 11 * GIB},
        "eval": {"peak_bytes": 5 * GIB, "required_bytes": 6 * GIB},  # 3 + 2 GiB of state
        "predict": {"peak_bytes": 4 * GIB, "required_bytes": 5 * GIB},
    }
    zero = PLAN | {"zero_states_per_rank": {"optimizer_state": GIB // 2}}
    assert planned_phases(zero)["eval"]["peak_bytes"] == 3 * GIB + GIB // 2
    assert planned_phases(None) == {}


def test_phase_peaks_keep_the_largest_window() -> None:
    counters = FakeCounters([PhasePeak(5, 9, 6), PhasePeak(7, 8, 7), PhasePeak(3, 4, 3)])
    phases = PhasePeaks(counters)
    for _ in range(2):
        phases.begin("train")
        phases.end("train")
    with phases.phase("eval"):
        pass
    assert phases.end("eval") is None  # not open: nothing read
    assert counters.resets == 3
    assert phases.peaks == {"train": PhasePeak(7, 9, 7), "eval": PhasePeak(3, 4, 3)}
    assert phases.logs("eval") == {
        "memory/eval/max_allocated_gib": 3 / GIB,
        "memory/eval/max_reserved_gib": 4 / GIB,
        "memory/eval/active_peak_gib": 3 / GIB,
    }
    assert phases.logs("predict") == {}


def test_cpu_phases_measure_nothing() -> None:
    phases = PhasePeaks.for_device("cpu")
    with phases.phase("train"):
        pass
    assert not phases.measured and phases.peaks == {}
    summary = MemorySummary.build(phases, PLAN)
    assert summary.lines() == [f"memory per phase: {NOT_MEASURED}"]
    assert NOT_MEASURED == "no GPU: not measured"
    assert summary.to_json()["note"] == NOT_MEASURED
    assert summary.to_json()["planned"]["train"]["peak_bytes"] == 10 * GIB


def test_compare_gives_measured_over_predicted() -> None:
    peaks = {
        "train": PhasePeak(9 * GIB, 10 * GIB, 9 * GIB + GIB // 2),
        "predict": PhasePeak(5 * GIB, 6 * GIB, 5 * GIB),
    }
    rows = compare_phases(peaks, planned_phases(PLAN))
    assert list(rows) == ["train", "predict"]
    assert rows["train"] == {
        "max_allocated_bytes": 9 * GIB,
        "max_reserved_bytes": 10 * GIB,
        "active_peak_bytes": 9 * GIB + GIB // 2,
        "predicted_peak_bytes": 10 * GIB,
        "planned_required_bytes": 11 * GIB,
        "allocated_ratio": 0.9,
        "active_ratio": 0.95,
        "reserved_ratio": 0.9091,
    }
    assert rows["predict"]["allocated_ratio"] == 1.25
    assert compare_phases(peaks, {})["train"]["allocated_ratio"] is None


def test_summary_lines_measured_vs_planned() -> None:
    phases = PhasePeaks(FakeCounters([PhasePeak(9 * GIB, 10 * GIB, 9 * GIB)]))
    with phases.phase("train"):
        pass
    lines = MemorySummary.build(phases, PLAN, {"mode": "expandable_segments"}).lines()
    assert lines == [
        "memory per phase, measured / planned GiB (ratio):",
        "  train    allocated 9.00 / 10.00 (0.90)  active 9.00 (0.90)  "
        "reserved 10.00 / 11.00 (0.91)",
    ]
    no_plan = MemorySummary.build(phases, None).lines()[1]
    assert "allocated 9.00 / n/a (n/a)" in no_plan


def test_predict_phase_is_merged_into_the_run_metrics(tmp_path) -> None:
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"eval_score": 1.0, "memory": {"measured": False,
                                "note": NOT_MEASURED, "phases": {}, "planned": {}}}))  # fmt: skip
    phases = PhasePeaks(FakeCounters([PhasePeak(5 * GIB, 6 * GIB, 5 * GIB)]))
    with phases.phase("predict"):
        pass
    merge_into_metrics_file(path, MemorySummary.build(phases, PLAN))
    data = json.loads(path.read_text())
    assert data["eval_score"] == 1.0
    assert data["memory"]["measured"] is True and "note" not in data["memory"]
    assert data["memory"]["phases"]["predict"]["allocated_ratio"] == 1.25
    # Nothing measured (a CPU predict): the file is left alone.
    before = path.read_text()
    merge_into_metrics_file(path, MemorySummary.build(PhasePeaks(None), PLAN))
    assert path.read_text() == before


def test_summary_round_trips_and_merges() -> None:
    train = MemorySummary(True, {"train": {"max_allocated_bytes": 1}}, {"train": {}}, None)
    predict = MemorySummary(True, {"predict": {"max_allocated_bytes": 2}}, {}, {"mode": "x"})
    merged = MemorySummary.from_json(train.to_json()).merged(predict)
    assert list(merged.phases) == ["train", "predict"]
    assert merged.allocator == {"mode": "x"}


def test_a_run_records_train_and_eval_peaks_and_prints_them(monkeypatch, tmp_path, capsys):
    """The tiny CPU run with the allocator counters faked (as if on a GPU): train peaks every
    step, eval peaks in evaluate(), both in metrics.json, printed against the plan."""
    from pathlib import Path

    import torch

    from dialsum.cli.app import main
    from dialsum.training.monitor import NvmlDevice

    class Constant:
        def reset(self) -> None:
            pass

        def read(self) -> PhasePeak:
            return PhasePeak(3 * 2**20, 4 * 2**20, 3 * 2**20)

    monkeypatch.setattr(PhasePeaks, "for_device", classmethod(lambda cls, device: cls(Constant())))
    monkeypatch.setattr(NvmlDevice, "for_cuda_device", classmethod(lambda cls, index: None))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    out = tmp_path / "runs"
    config = Path(__file__).resolve().parents[2] / "config.yaml"
    code = main(
        ["train", "-c", str(config), "-s", "tiny", "--max-steps", "2", "--output-dir", str(out)]
        + [
            f"--set={key}"
            for key in (
                "hardware.memory_cap_gib=1",  # planned (CPU kernels): the plan has phase peaks
                "training.eval_strategy=steps",
                "training.eval_steps=2",
                "training.logging_steps=1",
                "training.report_to=[none]",
                "training.effective_batch_size=4",
                "training.micro_batch_size=4",
                "data.max_train_samples=8",
                "data.max_eval_samples=4",
                "tokenizer.max_source_length=64",
                "inference.max_new_tokens=4",
            )
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    (run,) = list((out / "tiny").iterdir())
    memory = json.loads((run / "metrics.json").read_text())["memory"]
    assert memory["measured"] is True
    assert set(memory["phases"]) == {"train", "eval"}
    train_row = memory["phases"]["train"]
    assert train_row["max_allocated_bytes"] == 3 * 2**20
    assert train_row["predicted_peak_bytes"] == memory["planned"]["train"]["peak_bytes"] > 0
    assert train_row["allocated_ratio"] == round(3 * 2**20 / train_row["predicted_peak_bytes"], 4)
    assert "memory per phase, measured / planned GiB (ratio):" in printed
    assert "  train    allocated 0.00 / " in printed and "  eval     allocated" in printed
