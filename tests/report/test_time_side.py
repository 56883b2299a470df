"""The guide's time side, driven by test_report's analytic fake plus analytic costs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from test_guide import CONFIG, PNG_MAGIC, FakeSimulator, fake_params, table_rows

from dialsum.report.guide import build_guide
from dialsum.report.plots import time_plot_path
from dialsum.report.seed_guide import effective_batches_text, seed_settings
from dialsum.report.time_side import GUIDE_EPOCH_DIALOGUES, plan_epoch
from dialsum.speed.gpus import resolve_gpu
from dialsum.trace.profile import MemoryProfile, TrainOptions, TrainShape

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


def test_seed_guide_gives_the_old_effective_batches_on_catalog_gpus() -> None:
    # By hand from the old guide's rows, micro-batch x accumulation in its order:
    # 1x4, 4x2, 4x2, 8x2, 1x8, 2x1.
    assert effective_batches_text() == "4, 8, 8, 16, 8 and 2"
    assert {slug for setting in seed_settings() for slug in setting.slugs} <= {
        g.slug for g in map(resolve_gpu, ("v100-16gb", "a100-40gb", "rtx3080-10gb", "rtx4090"))
    }


# By hand from CostingSimulator (P = 50,358 x 768 = 38,674,944), the data sheets and the
# default efficiencies; a micro-batch is compute-bound, the optimizer memory-bound:
# - a100-40gb, bf16, 16 x 1: 3 x 2P x 16 x 576 = 2.1386e12 FLOPs / (312e12 x 0.3) = 22.848 ms,
#   + optimizer 12P bytes / 1555 GB/s = 0.298 ms -> 23.146 ms.
# - v100-16gb, fp32, 4 x 4: 4 x 5.3464e11 FLOPs / (15.7e12 x 0.6) = 227.024 ms,
#   + 12P / 900 GB/s = 0.516 ms -> 227.540 ms.
HAND_STEP_SECONDS = {"a100-40gb": 0.0231464, "v100-16gb": 0.2275401}


def test_gpu_rows_have_step_and_epoch_time(guide) -> None:
    markdown = guide.markdown_path.read_text()
    assert "| step time | epoch time (12,457 dialogues) |" in markdown
    for slug in GPUS:
        plan = guide.plans["eenzeenee"][slug]
        row = table_rows(markdown, slug)[0]
        if slug in HAND_STEP_SECONDS:
            assert plan.timing.step.seconds == pytest.approx(HAND_STEP_SECONDS[slug], rel=1e-5)
        assert row[-2].startswith("~") and row[-1].startswith("~")  # estimated
        epoch = plan_epoch(plan)
        assert epoch.records == GUIDE_EPOCH_DIALOGUES
        assert epoch.steps == 779  # 12,457 dialogues / effective batch 16, rounded up


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
    # The plan there, by hand: fp32 rows take 4 MiB x 576 = 2.25 GiB of fake activations;
    # micro-batch 4 needs 9.93 GiB of the 14.24 GiB usable, 8 would need 18+ GiB.
    assert v100[4] == "4 x 4 (16)"
    # Fewer optimizer steps and fewer kernels per row with larger micro-batches: faster.
    assert float(v100[6].rstrip("x")) >= 1.0
    assert "rtx3080-10gb (RTX 3080/4090)" in markdown


def test_published_hand_set_batch_next_to_the_plan_with_the_plans_method(tmp_path) -> None:
    # The 2025 winners' SOLAR QLoRA batch 2, on each GPU at the section's effective
    # batch 16 (accumulation 8), traced as the plan runs: QLoRA, not a full fine-tune.
    simulator = CostingSimulator()
    result = build_guide(
        CONFIG,
        sections=["solar_qlora"],
        gpus=["rtx3090-24gb", "a100-40gb"],
        out=tmp_path / "guide.md",
        simulator=simulator.as_simulator(),
        progress=False,
    )
    markdown = result.markdown_path.read_text()
    assert "Hand-set by a team on this task: micro-batch 2" in markdown
    assert "1st place" in markdown
    rows = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in markdown.splitlines()
        if line.startswith("| rtx3090-24gb (GeForce RTX 3090 24GB) | 2 x 8 |")
    ]
    assert len(rows) == 1
    plan = result.plans["solar_qlora"]["rtx3090-24gb"]
    assert rows[0][4] == f"{plan.micro_batch_size} x {plan.gradient_accumulation_steps}"
    # Every training step the guide traced for this section (plans, curves, the time
    # side and the published row) is QLoRA with the section's rank.
    assert simulator.train_calls
    assert all(
        options.quantization == "nf4" and options.lora and options.lora_rank == 8
        for _, _, options in simulator.train_calls
    )
    published = [
        shape
        for _, shape, _ in simulator.train_calls
        if shape.batch == 2 and shape.source_len == 896
    ]
    assert published


def test_no_published_setting_no_table(guide) -> None:
    assert "Hand-set by a team" not in guide.markdown_path.read_text()
