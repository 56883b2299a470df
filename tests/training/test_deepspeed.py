"""The DeepSpeed JSON a run writes (no DeepSpeed needed), and the real run where it can be."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dialsum.core.config_load import load_section
from dialsum.core.errors import UserError
from dialsum.step.geometry import BatchGeometry
from dialsum.training.deepspeed import (
    STEPS_PER_PRINT,
    build_deepspeed_config,
    config_for_run,
    deepspeed_available,
    require_deepspeed,
)
from dialsum.training.settings import Settings

ROOT = Path(__file__).resolve().parents[2]

ADAMW = {
    "type": "AdamW",
    "params": {"lr": 5e-5, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01},
}


def build(**overrides):
    values = {
        "zero_stage": 2,
        "offload": False,
        "micro_batch_size": 4,
        "gradient_accumulation_steps": 2,
        "world_size": 4,
        "precision": "bf16",
        "max_grad_norm": 1.0,
        "optimizer": "adamw",
        "learning_rate": 5e-5,
        "weight_decay": 0.01,
        "hidden_size": 768,
    }
    return build_deepspeed_config(**(values | overrides))


def test_zero2_bf16() -> None:
    assert build() == {
        "train_batch_size": 32,  # 4 x 2 x 4 GPUs = the effective batch
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": 2,
        "gradient_clipping": 1.0,
        "bf16": {"enabled": True},
        "fp16": {"enabled": False, "loss_scale": 0},
        "zero_optimization": {
            "stage": 2,
            "overlap_comm": True,
            "contiguous_gradients": True,
            "reduce_bucket_size": 50_000_000,
            "allgather_bucket_size": 50_000_000,
        },
        "steps_per_print": STEPS_PER_PRINT,
        "wall_clock_breakdown": False,
        "optimizer": ADAMW,
    }


def test_zero3_offload_fp16() -> None:
    config = build(zero_stage=3, offload=True, precision="fp16", world_size=2)
    assert config["train_batch_size"] == 16
    assert config["fp16"] == {"enabled": True, "loss_scale": 0}
    assert config["bf16"] == {"enabled": False}
    assert config["zero_optimization"] == {
        "stage": 3,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": 589_824,  # 768^2
        "stage3_prefetch_bucket_size": 530_841,  # 0.9 x 768^2
        "stage3_param_persistence_threshold": 7_680,  # 10 x 768
        "stage3_gather_16bit_weights_on_model_save": True,
        "offload_optimizer": {"device": "cpu", "pin_memory": True},
        "offload_param": {"device": "cpu", "pin_memory": True},
    }


def test_zero1_offload_with_the_trainers_optimizer() -> None:
    config = build(zero_stage=1, offload=True, optimizer="adafactor", precision="fp32")
    assert "optimizer" not in config  # the Trainer's Adafactor is handed to the engine
    assert config["zero_force_ds_cpu_optimizer"] is False
    assert config["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert "offload_param" not in config["zero_optimization"]  # stage 3 only
    assert (config["bf16"]["enabled"], config["fp16"]["enabled"]) == (False, False)


def test_stage_zero_has_no_deepspeed_config() -> None:
    with pytest.raises(ValueError, match="zero_stage 1, 2 or 3"):
        build(zero_stage=0)


def test_config_for_run_follows_the_resolved_settings() -> None:
    cfg = load_section(
        ROOT / "config.yaml",
        "kobart",
        ["hardware.zero_stage=3", "training.max_grad_norm=0.5", "training.effective_batch_size=32"],
    )
    settings = Settings(
        device="cuda",
        geometry=BatchGeometry.build(32, 4, 2),
        eval_batch_size=8,
        generation_batch_size=8,
        generation_token_budget=8 * (512 + 64) * 4,
        generation_row_cap=8,
        precision="bf16",
        optimizer="adamw",
        gradient_checkpointing=False,
        source_len=512,
    )
    config = config_for_run(cfg, settings, type("C", (), {"d_model": 1024})())
    assert (config["train_batch_size"], config["train_micro_batch_size_per_gpu"]) == (32, 2)
    assert config["gradient_accumulation_steps"] == 4
    assert config["gradient_clipping"] == 0.5
    assert config["zero_optimization"]["reduce_bucket_size"] == 1024 * 1024
    assert config["optimizer"]["params"]["lr"] == 5e-5  # kobart's learning_rate in config.yaml


@pytest.mark.skipif(deepspeed_available(), reason="DeepSpeed is installed here")
def test_missing_deepspeed_says_how_to_install(tmp_path: Path) -> None:
    from dialsum.cli.app import main

    require_deepspeed(0)  # no ZeRO, no DeepSpeed needed
    with pytest.raises(UserError, match=r"uv sync --extra deepspeed"):
        require_deepspeed(2)
    code = main(
        ["train", "-c", str(ROOT / "config.yaml"), "-s", "tiny"]
        + ["--set", "hardware.zero_stage=2", "--output-dir", str(tmp_path / "o")]
    )
    assert code == 2
    assert not (tmp_path / "o").exists()  # checked before anything is written


def test_zero_without_a_gpu_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import dialsum.training.deepspeed as module

    monkeypatch.setattr(module, "deepspeed_available", lambda: True)
    module.require_deepspeed(3, cuda=True)
    with pytest.raises(UserError, match="runs on CUDA GPUs"):
        module.require_deepspeed(3, cuda=False)


@pytest.mark.skipif(
    not torch.cuda.is_available() or not deepspeed_available(),
    reason="a real DeepSpeed run needs a CUDA GPU and `uv sync --extra deepspeed`",
)
def test_real_deepspeed_zero2_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # One process, one GPU: DeepSpeed still runs its ZeRO engine (world size 1); it wants
    # the launcher's rendezvous variables even then.
    from dialsum.training.recipe import run_training

    for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29517")

    cfg = load_section(
        ROOT / "config.yaml",
        "tiny",
        [
            "hardware.cpu=false",
            "hardware.gpu=auto",
            "hardware.zero_stage=2",
            "data.max_train_samples=16",
            "training.effective_batch_size=8",
            "training.micro_batch_size=4",
            "training.max_steps=2",
            "training.report_to=[none]",
            f"training.output_dir={tmp_path}",
        ],
    )
    result = run_training(cfg, echo=lambda *_: None)
    written = json.loads(result.run.deepspeed_config.read_text(encoding="utf-8"))
    assert written["train_micro_batch_size_per_gpu"] == result.settings.micro_batch_size
    assert written["zero_optimization"]["stage"] == 2
    assert (result.run.best / "config.json").is_file()
