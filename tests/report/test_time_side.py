"""The guide's time side, driven by test_report's analytic fake plus analytic costs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from test_guide import CONFIG, PNG_MAGIC, FakeSimulator, fake_params, table_rows

from dialsum.memory.gpus import resolve_gpu
from dialsum.memory.profile import MemoryProfile, TrainOptions, TrainShape
from dialsum.memory.timing import step_time_of
from dialsum.report.guide import _OLD_GUIDE_EFFECTIVE_BATCHES, build_guide
from dialsum.report.time_side import (
    GUIDE_EPOCH_DIALOGUES,
    SEED_SETTINGS,
    plan_epoch,
    time_plot_path,
)

GPUS = ["v100-16gb", "rtx3080-10gb", "a100-40gb"]
KERNELS_PER_MICRO_BATCH = 1000


class CostingSimulator(FakeSimulator):
    """test_report's fake memory, plus FLOPs 2 x P per token forward, 2x that backward
    (3x with checkpointing's recompute), 1 KiB moved per token, 1000 kernels per
    micro-batch and a 12-bytes-per-parameter optimizer."""

    def train(self, config, shape: TrainShape, options: TrainOptions) -> MemoryProfile:
        profile = super().train(config, shape, options)
        params = fake_params(config)
        forward = 2 * params * shape.batch * (shape.source_len + shape.target_len)
        backward = (3 if options.gradient_checkpointing else 2) * forward
        moved = 1024 * shape.batch * (shape.source_len + shape.target_len)
        return replace(
            profile,
            flops={"forward": forward, "backward": backward, "optimizer": 0},
            bytes_moved={"forward": moved, "backward": 2 * moved, "optimizer": 12 * params},
            kernels={
                "forward": KERNELS_PER_MICRO_BATCH // 2,
                "backward": KERNELS_PER_MICRO_BATCH // 2,
                "optimizer": 4,
            },
        )


@pytest.fixture(autouse=True)
def _no_calibration_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DIALSUM_CALIBRATION", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def guide(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("guide") / "guide.md"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("DIALSUM_CALIBRATION", raising=False)
        mp.setenv("HOME", str(tmp_path_factory.mktemp("home")))
        result = build_guide(
            CONFIG,
            sections=["eenzeenee"],
            gpus=GPUS,
            out=out,
            simulator=CostingSimulator().as_simulator(),
            progress=False,
        )
    return result


def test_seed_settings_are_the_old_guides_rows() -> None:
    effective = [micro * accumulation for _, _, _, micro, accumulation in SEED_SETTINGS]
    assert ", ".join(map(str, effective[:-1])) + f" and {effective[-1]}" == (
        _OLD_GUIDE_EFFECTIVE_BATCHES
    )
    assert {slug for _, slugs, _, _, _ in SEED_SETTINGS for slug in slugs} <= {
        g.slug for g in map(resolve_gpu, ("v100-16gb", "a100-40gb", "rtx3080-10gb", "rtx4090"))
    }


def test_gpu_rows_have_step_and_epoch_time(guide) -> None:
    markdown = guide.markdown_path.read_text()
    assert "| step time | epoch time (12,457 dialogues) |" in markdown
    for slug in GPUS:
        plan = guide.plans["eenzeenee"][slug]
        row = table_rows(markdown, slug)[0]
        step = step_time_of(
            plan.train_profile,
            plan.gradient_accumulation_steps,
            _spec(slug),
            plan.timing.step.precision,
        )
        assert plan.timing.step.seconds == pytest.approx(step.seconds)
        assert row[-2].startswith("~") and row[-1].startswith("~")  # estimated
        epoch = plan_epoch(plan)
        assert epoch.records == GUIDE_EPOCH_DIALOGUES
        assert epoch.steps == -(-GUIDE_EPOCH_DIALOGUES // plan.effective_batch_size)


def _spec(slug: str):
    from dialsum.memory.gpu_specs import spec_for

    return spec_for(resolve_gpu(slug))


def test_time_plot_and_yaml(guide) -> None:
    plot = time_plot_path(guide.plot_paths["eenzeenee"])
    assert plot.read_bytes().startswith(PNG_MAGIC)
    assert f"]({plot.name})" in guide.markdown_path.read_text()
    import yaml

    data = yaml.safe_load(guide.yaml_path.read_text())
    predicted = data["sections"]["eenzeenee"]["gpus"]["a100-40gb"]["predicted"]
    assert predicted["step_time_s"] > 0 and predicted["time_estimated"] is True
    assert predicted["epoch_dialogues"] == GUIDE_EPOCH_DIALOGUES


def test_old_settings_side_by_side(guide) -> None:
    markdown = guide.markdown_path.read_text()
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")]
        for line in markdown.splitlines()
        if line.startswith("| ") and ("(V100 16GB)" in line or "(A100 40GB)" in line)
    }
    v100 = rows["v100-16gb (V100 16GB)"]
    assert v100[1] == "4 x 2 (8)"  # eenzeenee on their V100: batch 4, accumulation 2
    plan = guide.plans["eenzeenee"]["v100-16gb"]
    assert v100[4] == (
        f"{plan.micro_batch_size} x {plan.gradient_accumulation_steps} "
        f"({plan.effective_batch_size})"
    )
    # Fewer optimizer steps and fewer kernels per row with larger micro-batches: faster.
    assert float(v100[6].rstrip("x")) >= 1.0
    assert "rtx3080-10gb (RTX 3080/4090)" in markdown
