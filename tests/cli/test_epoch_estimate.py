"""Speed in `dialsum plan`: FLOPs and step time in the JSON, epoch of the data, --compare,
calibration by a (fake) measured step, and the trainer's measured-vs-predicted summary."""

from __future__ import annotations

import json
import types

import pytest
from transformers import T5Config

from dialsum.checks.step_probe import calibrate_step_time
from dialsum.cli.app import main
from dialsum.training.step_clock import StepTimer, step_time_metrics


@pytest.fixture(autouse=True)
def _no_calibration_file(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("DIALSUM_CALIBRATION", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture
def model_dir(tmp_path):
    # Wide enough that a step is compute-bound on a T4, small enough to trace in seconds.
    config = T5Config(
        vocab_size=512, d_model=512, d_ff=2048, d_kv=64, num_layers=2, num_heads=8,
        tie_word_embeddings=False, decoder_start_token_id=0, pad_token_id=0,
    )  # fmt: skip
    folder = tmp_path / "model"
    config.save_pretrained(folder)
    return folder


def _plan_argv(model_dir, *gpus: str) -> list[str]:
    argv = ["plan", "--model", str(model_dir), "--source-len", "256", "--target-len", "64"]
    argv += ["--effective-batch", "16"]
    for gpu in gpus:
        argv += ["--gpu", gpu]
    return argv


def test_plan_json_has_flops_step_time_and_epoch(model_dir, capsys) -> None:
    assert main([*_plan_argv(model_dir, "a100-40gb"), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    timing = plan["timing"]
    assert plan["flops_per_step"] == timing["flops_per_step"] > 0
    phases = timing["flops_by_phase"]
    assert plan["flops_per_step"] == phases["forward"] + phases["backward"] + phases["optimizer"]
    tokens = plan["effective_batch_size"] * (256 + 64)
    assert plan["flops_per_token"] == pytest.approx(plan["flops_per_step"] / tokens)
    assert plan["step_time_s"] > 0 and plan["time_estimated"] is True
    assert plan["tokens_per_s"] == pytest.approx(tokens / plan["step_time_s"])
    assert timing["generate_flops"]["total"] > timing["generate_flops"]["encoder"] > 0
    # No --data: the section's default training CSV, counted, at the config limits.
    epoch = plan["epoch"]
    assert epoch["records"] == 400 and epoch["lengths_from"] == "config limits"
    assert epoch["steps"] == 400 // 16
    assert epoch["seconds"] == pytest.approx(epoch["steps"] * plan["step_time_s"], rel=1e-6)


def test_compare_ranks_gpus_by_epoch_time(model_dir, capsys) -> None:
    argv = _plan_argv(model_dir, "t4-16gb", "a100-40gb", "10GB")
    assert main([*argv, "--compare", "--json"]) == 0
    ranked = json.loads(capsys.readouterr().out)["gpus"]
    assert [r["gpu"] for r in ranked] == ["a100-40gb", "t4-16gb", "generic-10gib"]
    assert ranked[0]["epoch"]["seconds"] < ranked[1]["epoch"]["seconds"]
    assert ranked[2]["epoch"] is None  # a GPU known only by its size has no data sheet
    assert all(r["fits"] for r in ranked)
    assert main([*argv, "--compare"]) == 0
    text = capsys.readouterr().out
    assert "ranked by epoch time" in text and text.index("a100-40gb") < text.index("t4-16gb")


def test_a_measured_step_calibrates_later_plans(model_dir, tmp_path, monkeypatch, capsys) -> None:
    from dialsum.cli.plan import plan_command
    from dialsum.speed.gpus import resolve_gpu
    from dialsum.speed.step_time import read_efficiencies

    kwargs = dict(
        config=None, section=None, model=str(model_dir), source_len=256, target_len=64,
        effective_batch=16, num_beams=None, num_gpus=1, data=None, overrides=[], buckets=False,
    )  # fmt: skip
    plan = plan_command(gpu="a100-40gb", **kwargs).plan
    path = tmp_path / "calibration.json"
    # A fake measurement, far slower than predicted: the step is then compute-bound.
    calibration = calibrate_step_time(plan, measured_s=2.0, path=path)
    assert calibration.after.seconds == pytest.approx(2.0) and calibration.after.calibrated
    efficiency = float(f"{calibration.efficiency:.4g}")
    assert read_efficiencies(path) == {"a100-40gb": {"bf16": efficiency}}
    assert resolve_gpu("a100-40gb").slug == "a100-40gb"
    monkeypatch.setenv("DIALSUM_CALIBRATION", str(path))
    again = plan_command(gpu="a100-40gb", **kwargs).plan
    assert again.timing.step.calibrated
    assert again.timing.step.seconds == pytest.approx(2.0, rel=1e-3)  # efficiency is rounded
    assert again.to_json_dict()["time_estimated"] is False


def test_step_timer_summary_measured_vs_predicted() -> None:
    timer = StepTimer()
    timer.seconds = [5.0, 0.2, 0.4, 0.3]  # the first step (warm-up) is left out
    trainer = types.SimpleNamespace(callback_handler=types.SimpleNamespace(callbacks=[timer]))
    metrics = step_time_metrics(trainer, {"step_time_s": 0.25, "time_estimated": True})
    assert metrics == {
        "step_time_s_measured": 0.3,
        "step_time_s_predicted": 0.25,
        "step_time_prediction": "estimated",
        "step_time_measured_over_predicted": 1.2,
    }
    assert step_time_metrics(trainer, None) == {"step_time_s_measured": 0.3}


def test_probe_path_measures_and_calibrates_on_the_cpu(tmp_path) -> None:
    from dialsum.checks.step_probe import probe_step_time
    from dialsum.core.config_load import load_section
    from dialsum.models.setup import setup_model
    from dialsum.speed.gpus import cpu_device
    from dialsum.speed.step_time import read_efficiencies

    cfg = load_section(
        "config.yaml",
        "tiny",
        ["tokenizer.max_source_length=64", "tokenizer.max_target_length=16",
         "training.effective_batch_size=4", "training.micro_batch_size=auto"],
    )  # fmt: skip
    model, _ = setup_model(cfg)
    path = tmp_path / "calibration.json"
    lines: list[str] = []
    result = probe_step_time(cfg, model, cpu_device(), path, echo=lines.append, device="cpu")
    assert result["measured_s"] > 0 and result["matmul_precision"] == "fp32"
    assert read_efficiencies(path)["cpu"]["fp32"] == float(f"{result['achieved_efficiency']:.4g}")
    assert "measured" in lines[0] and "written to" in lines[0]
