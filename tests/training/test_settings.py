"""`auto` settings: CPU defaults, and the GPU path through the planner (fake simulator)."""

from __future__ import annotations

from pathlib import Path

import pytest

import dialsum.memory.section as section_plan
import dialsum.step.train_step as step_mod
import dialsum.training.settings as settings_mod
from dialsum.core.config_load import load_section
from dialsum.core.errors import ConfigError, UserError
from dialsum.memory.simulator import Simulator
from dialsum.models.architectures import known_config
from dialsum.step.geometry import BatchGeometry
from dialsum.trace.profile import MemoryProfile
from dialsum.training.oom_guard import GuardState
from dialsum.training.settings import resolve_settings

ROOT = Path(__file__).resolve().parents[2]
quiet = lambda *_: None  # noqa: E731
GIB = 1024**3


def fake_profile(weights: int, per_row: int, rows: int) -> MemoryProfile:
    parts = {"weights": weights, "activations": per_row * rows}
    return MemoryProfile(1, 1, sum(parts.values()), "backward", parts)


# Training: 4 GiB of model states + 1 GiB per row; generation: 1 GiB + 0.25 GiB per row.
FAKE = Simulator(
    train=lambda config, shape, options: fake_profile(4 * GIB, GIB, shape.batch),
    generate=lambda config, shape, precision: fake_profile(GIB, GIB // 4, shape.batch),
)


def test_cpu_auto_micro_batch_is_a_divisor() -> None:
    cfg = load_section(ROOT / "config.yaml", "tiny", ["training.micro_batch_size=auto"])
    s = resolve_settings(cfg, None, echo=quiet)
    assert (s.device, s.micro_batch_size, s.gradient_accumulation_steps) == ("cpu", 16, 1)
    assert BatchGeometry(24, 1, 1).largest_micro_batch_at_most(16) == 12
    assert BatchGeometry(7, 1, 1).largest_micro_batch_at_most(4) == 1


def test_gpu_auto_settings_come_from_the_plan(monkeypatch) -> None:
    real_plan = section_plan.plan_for_section

    def plan_with_fake(cfg, model_config, **kwargs):
        return real_plan(cfg, model_config, simulator=FAKE, **kwargs)

    monkeypatch.setattr(settings_mod, "use_cuda", lambda cfg: True)
    monkeypatch.setattr(section_plan, "plan_for_section", plan_with_fake)
    cfg = load_section(ROOT / "config.yaml", "eenzeenee", ["hardware.gpu=v100-16gb"])
    s = resolve_settings(cfg, known_config(cfg.model.name), echo=quiet)
    assert s.device == "cuda" and s.gpu == "v100-16gb"
    assert s.precision == "fp32"  # T5 on V100: never fp16
    assert s.micro_batch_size * s.gradient_accumulation_steps == 16
    # 14.24 GiB usable, need = (4 + m) GiB x 1.08 + 64 MiB: m = 8 fits, 16 does not
    assert s.micro_batch_size == 8
    assert s.plan["effective_batch_size"] == 16
    assert any("fp16" in r for r in s.reasons)

    # --resume after an OOM recovery keeps the smaller micro-batch
    guard = GuardState(micro_batch_size=1, eval_batch_size=2)
    resumed = resolve_settings(cfg, known_config(cfg.model.name), guard=guard, echo=quiet)
    assert (resumed.micro_batch_size, resumed.gradient_accumulation_steps) == (1, 16)


def test_resume_after_recovery_with_asserted_accumulation(monkeypatch) -> None:
    # The config asserts accumulation 2 (micro 8 x 2 = 16 on a V100); an OOM recovery then
    # shrank the micro-batch to 4, so the run went on at 4 x 4. --resume continues there
    # instead of refusing over the assertion the recovery had to break.
    _use_fake_gpu(monkeypatch)
    cfg, model_config = _eenzeenee(
        "hardware.gpu=v100-16gb", "training.gradient_accumulation_steps=2"
    )
    fresh = resolve_settings(cfg, model_config, echo=quiet)
    assert (fresh.micro_batch_size, fresh.gradient_accumulation_steps) == (8, 2)
    guard = GuardState(micro_batch_size=4, eval_batch_size=2)
    resumed = resolve_settings(cfg, model_config, guard=guard, echo=quiet)
    assert (resumed.micro_batch_size, resumed.gradient_accumulation_steps) == (4, 4)
    assert any("gradient_accumulation_steps 2 no longer applies" in r for r in resumed.reasons)


def test_effective_batch_must_split_over_processes(monkeypatch) -> None:
    monkeypatch.setattr(settings_mod, "world_size", lambda: 3)
    cfg = load_section(ROOT / "config.yaml", "tiny")
    with pytest.raises(ConfigError, match="not a multiple of the 3 GPU"):
        resolve_settings(cfg, None, echo=quiet)


# -- every plan decision is applied, or the run refuses --------------------------------


def _use_fake_gpu(monkeypatch, simulator: Simulator = FAKE) -> None:
    """Plan as on a CUDA machine, with an analytic simulator instead of traces."""
    real_plan = section_plan.plan_for_section

    def plan_with_fake(cfg, model_config, **kwargs):
        return real_plan(cfg, model_config, simulator=simulator, **kwargs)

    monkeypatch.setattr(settings_mod, "use_cuda", lambda cfg: True)
    monkeypatch.setattr(section_plan, "plan_for_section", plan_with_fake)
    # 8-bit AdamW is never a ladder step, whether or not bitsandbytes is installed here.
    monkeypatch.setattr(step_mod, "optimizer_available", lambda name: name != "adamw8bit")


def _eenzeenee(*overrides: str):
    cfg = load_section(ROOT / "config.yaml", "eenzeenee", list(overrides))
    return cfg, known_config(cfg.model.name)


def test_a_plan_that_does_not_fit_refuses_with_what_would_fit(monkeypatch) -> None:
    _use_fake_gpu(monkeypatch)
    # 4 GiB of model states alone exceed a 2 GiB GPU: no micro-batch, no ladder step fits.
    cfg, model_config = _eenzeenee("hardware.gpu=2GB")
    with pytest.raises(UserError) as info:
        resolve_settings(cfg, model_config, echo=quiet)
    message = str(info.value)
    assert "section 'eenzeenee' does not fit on GPU with 2GiB" in message
    assert "micro-batch 1 at source length 512 needs" in message
    assert "Nothing was started. What would fit:" in message
    options = [line for line in message.splitlines() if line.startswith("  - ")]
    assert any("a larger GPU" in line for line in options), message
    # Every option is checked with the simulator: the fake's LoRA needs as much, so no LoRA.
    assert not any("model.lora.enabled=true" in line for line in options), message
    assert "dialsum plan -s eenzeenee --gpu generic-2gib" in message
    assert not isinstance(info.value, ConfigError)  # a plan verdict, not a config typo


def _source_dependent(config, shape, options) -> MemoryProfile:
    # 4 GiB of model states + 12 GiB per row at 512 source tokens (linear in the source).
    return fake_profile(4 * GIB, 12 * GIB * shape.source_len // 512, shape.batch)


def test_the_planned_source_length_is_the_one_the_run_tokenizes_at(monkeypatch) -> None:
    simulator = Simulator(train=_source_dependent, generate=FAKE.generate)
    _use_fake_gpu(monkeypatch, simulator)
    cfg, model_config = _eenzeenee("hardware.gpu=v100-16gb")
    # v100-16gb: 14.24 GiB usable, need = x GiB x 1.08 + 64 MiB. At 512 tokens micro-batch 1
    # needs x = 16 (no); checkpointing and Adafactor change nothing here; at 256, x = 10.
    plan = section_plan.plan_for_section(cfg, model_config)
    assert plan.fits and plan.source_len_cut
    assert (plan.requested_source_len, plan.source_len, plan.micro_batch_size) == (512, 256, 1)

    s = resolve_settings(cfg, model_config, echo=quiet)
    assert s.source_len == 256
    assert (s.plan["source_len"], s.plan["requested_source_len"]) == (256, 512)
    assert any("tokenizer.max_source_length 512 -> 256" in r for r in s.reasons)
    assert cfg.tokenizer.max_source_length == 512  # the loaded section is never rewritten
    # nothing cut: the section is used as it is
    roomy, _ = _eenzeenee("hardware.gpu=a100-80gb")
    s_roomy = resolve_settings(roomy, model_config, echo=quiet)
    assert s_roomy.source_len == 512


def test_adamw8bit_without_bitsandbytes_is_refused(monkeypatch) -> None:
    # On the CPU it is refused whatever is installed.
    cpu = load_section(ROOT / "config.yaml", "tiny", ["training.optimizer=adamw8bit"])
    with pytest.raises(ConfigError, match="bitsandbytes"):
        resolve_settings(cpu, None, echo=quiet)
    # On a GPU it is refused when bitsandbytes is missing.
    _use_fake_gpu(monkeypatch)
    monkeypatch.setattr(step_mod, "optimizer_available", lambda name: False)
    cfg, model_config = _eenzeenee("hardware.gpu=a100-80gb", "training.optimizer=adamw8bit")
    with pytest.raises(ConfigError, match="bitsandbytes"):
        resolve_settings(cfg, model_config, echo=quiet)
    monkeypatch.setattr(step_mod, "optimizer_available", lambda name: True)
    assert resolve_settings(cfg, model_config, echo=quiet).optimizer == "adamw8bit"


_OPTIMIZER_STATE_GIB = {"adamw": 4, "adamw_foreach": 4, "adafactor": 0, "adamw8bit": 1, "sgd": 0}


def _optimizer_dependent(config, shape, options) -> MemoryProfile:
    # 4 GiB of weights and gradients + the optimizer's state + 6 GiB per row at 512 tokens.
    states = (4 + _OPTIMIZER_STATE_GIB[options.optimizer]) * GIB
    return fake_profile(states, 6 * GIB * shape.source_len // 512, shape.batch)


def test_a_named_optimizer_is_kept_when_memory_is_short(monkeypatch) -> None:
    simulator = Simulator(train=_optimizer_dependent, generate=FAKE.generate)
    _use_fake_gpu(monkeypatch, simulator)
    # micro-batch 1 at 512 tokens: AdamW needs x = 14 (no), Adafactor 10; AdamW at 256: 11.
    auto, model_config = _eenzeenee("hardware.gpu=v100-16gb")
    switched = resolve_settings(auto, model_config, echo=quiet)
    assert (switched.optimizer, switched.source_len) == ("adafactor", 512)

    named, _ = _eenzeenee("hardware.gpu=v100-16gb", "training.optimizer=adamw_foreach")
    kept = resolve_settings(named, model_config, echo=quiet)
    assert kept.optimizer == "adamw_foreach"
    assert kept.plan["optimizer"] == "adamw_foreach"
    assert kept.source_len == 256  # the ladder went on to the next step instead


def test_asserted_accumulation_is_checked_for_the_process_count(monkeypatch) -> None:
    monkeypatch.setattr(settings_mod, "world_size", lambda: 2)
    base = ["training.micro_batch_size=4"]
    # 16 rows over 2 processes at micro-batch 4: 2 accumulation steps, not 16 / 4 = 4.
    wrong = load_section(
        ROOT / "config.yaml", "tiny", base + ["training.gradient_accumulation_steps=4"]
    )
    with pytest.raises(ConfigError, match="gradient_accumulation_steps 4 does not match") as info:
        resolve_settings(wrong, None, echo=quiet)
    assert "set it to 2" in str(info.value)
    right = load_section(
        ROOT / "config.yaml", "tiny", base + ["training.gradient_accumulation_steps=2"]
    )
    s = resolve_settings(right, None, echo=quiet)
    assert (s.world_size, s.micro_batch_size, s.gradient_accumulation_steps) == (2, 4, 2)


def test_an_unknown_hardware_gpu_is_refused_on_cpu_too() -> None:
    """Issue 18, point 7: a CPU run used to ignore ``hardware.gpu: foo`` silently."""
    cfg = load_section(ROOT / "config.yaml", "tiny", ["hardware.gpu=foo"])
    with pytest.raises(ConfigError, match="hardware.gpu: unknown GPU 'foo'"):
        resolve_settings(cfg, known_config("eenzeenee/t5-base-korean-summarization"), echo=quiet)


def test_positions_beyond_bart_s_table_are_refused_by_the_run() -> None:
    cfg = load_section(ROOT / "config.yaml", "tiny", ["inference.max_new_tokens=2000"])
    kobart = known_config("digit82/kobart-summarization")
    with pytest.raises(ConfigError, match="inference.max_new_tokens: 2000 is above the 1026"):
        resolve_settings(cfg, kobart, echo=quiet)


def test_predict_plans_generation_only(monkeypatch) -> None:
    """Issue 18, point 15: 4 GiB of training states do not fit a 3 GiB GPU, but generating
    (1 GiB + 0.25 GiB per row) does: predict goes ahead, train refuses."""
    _use_fake_gpu(monkeypatch)
    cfg, model_config = _eenzeenee("hardware.gpu=3GB")
    with pytest.raises(UserError, match="does not fit on GPU with 3GiB"):
        resolve_settings(cfg, model_config, echo=quiet)
    s = resolve_settings(cfg, model_config, echo=quiet, purpose="predict")
    assert s.generation_batch_size >= 1 and s.source_len == 512  # no training ladder cut
    assert s.plan["fits"] and s.plan["predicted_peak_bytes"] == s.plan["generate_peak_bytes"]


def test_a_plan_whose_generation_does_not_fit_refuses_to_predict(monkeypatch) -> None:
    _use_fake_gpu(monkeypatch)
    cfg, model_config = _eenzeenee("hardware.gpu=1GB")
    with pytest.raises(UserError, match="generating one summary .* needs"):
        resolve_settings(cfg, model_config, echo=quiet, purpose="predict")


def test_a_run_whose_evaluation_does_not_fit_refuses_before_training(monkeypatch) -> None:
    """Issue 18, point 13: training fits (1 GiB + 0.1 GiB per row), evaluation at batch 1
    (4 GiB) does not: the run would fail at its first evaluation, after training."""
    eval_heavy = Simulator(
        train=lambda config, shape, options: fake_profile(GIB, GIB // 10, shape.batch),
        generate=lambda config, shape, precision: fake_profile(4 * GIB, GIB // 4, shape.batch),
    )
    _use_fake_gpu(monkeypatch, eval_heavy)
    cfg, model_config = _eenzeenee("hardware.gpu=3GB")
    with pytest.raises(UserError, match="training fits, but evaluation at batch 1"):
        resolve_settings(cfg, model_config, echo=quiet)
    no_eval, _ = _eenzeenee("hardware.gpu=3GB", "training.eval_strategy=no")
    assert resolve_settings(no_eval, model_config, echo=quiet).device == "cuda"


def test_evaluation_is_planned_at_the_eval_files_lengths(monkeypatch) -> None:
    """Issue 18, point 14: the eval batch came from the training table's lengths."""
    from types import SimpleNamespace

    by_source = Simulator(
        train=lambda config, shape, options: fake_profile(GIB, GIB // 10, shape.batch),
        generate=lambda config, shape, precision: fake_profile(
            GIB, GIB * shape.source_len // 512, shape.batch
        ),
    )
    _use_fake_gpu(monkeypatch, by_source)
    cfg, model_config = _eenzeenee("hardware.gpu=16GB")  # training at source 512 (no report)
    at_train_lengths = resolve_settings(cfg, model_config, echo=quiet)
    short_dev = SimpleNamespace(longest_source=128, longest_target=32)
    at_dev_lengths = resolve_settings(cfg, model_config, echo=quiet, eval_report=short_dev)
    # 1 GiB per row at 512 tokens, a quarter of it at 128: four times the rows fit.
    assert at_dev_lengths.eval_batch_size >= 3 * at_train_lengths.eval_batch_size
    assert at_dev_lengths.micro_batch_size == at_train_lengths.micro_batch_size


def test_fp16_for_t5_is_refused_on_cpu_as_the_planner_refuses_it() -> None:
    cfg = load_section(ROOT / "config.yaml", "tiny", ["training.precision=fp16"])
    t5 = known_config("eenzeenee/t5-base-korean-summarization")
    with pytest.raises(ConfigError, match="training.precision: fp16 with a T5/mT5 model"):
        resolve_settings(cfg, t5, echo=quiet)
    insisted = load_section(
        ROOT / "config.yaml", "tiny", ["training.precision=fp16", "training.allow_fp16_for_t5=true"]
    )
    assert resolve_settings(insisted, t5, echo=quiet).precision == "fp16"
