"""The planner, driven by an analytic fake simulator whose numbers we can check by hand.

Fake training memory (100M parameters):
    weights 4 B/param + gradients 4 B/param (2 + 2 in pure bf16)
    + optimizer state: AdamW 8, 8-bit AdamW 2, Adafactor 0, SGD 0 B/param
    + activations: 1 MiB per token per row in fp32, 0.5 MiB with mixed precision,
      a quarter of that with gradient checkpointing.
So fp32 AdamW needs 1.6e9 B + batch x (source + target) MiB.

Fake generation memory: weights (4 B/param fp32, 2 otherwise)
    + 64 KiB (fp32) or 32 KiB per token per row per beam, over source + new tokens.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from transformers import T5Config

import dialsum.step.train_step as step_mod
from dialsum.core.errors import ConfigError
from dialsum.memory.fit import ddp_resident_bytes
from dialsum.memory.generation_batches import EVAL_BATCH_CAP, GENERATION_BATCH_CAP
from dialsum.memory.ladder import ladder_steps
from dialsum.memory.overheads import Overheads, required_bytes, usable_bytes
from dialsum.memory.plan import Plan, bucket_table, make_plan
from dialsum.memory.request import PlanRequest, truncated_fraction
from dialsum.memory.simulator import Simulator
from dialsum.models.architectures import count_params, known_config, model_from_config
from dialsum.speed.gpus import GPU, catalog, resolve_gpu
from dialsum.step.geometry import divisors
from dialsum.trace.profile import (
    GenerateOptions,
    GenerateShape,
    MemoryProfile,
    TrainOptions,
    TrainShape,
)

KIB = 2**10
MIB = 2**20
GIB = 2**30
PARAMS = 100_000_000
STATIC_FP32_ADAMW = 1_600_000_000  # 16 bytes per parameter
TOKENS_512_64 = 576  # one row of 512 source + 64 target tokens: 576 MiB of fp32 activations

T5 = known_config("eenzeenee/t5-base-korean-summarization")
MT5 = known_config("csebuetnlp/mT5_multilingual_XLSum")
BART = known_config("digit82/kobart-summarization")

# No context, workspace, fragmentation or margin: a plan fits when the fake peak <= total.
ZERO = Overheads(
    cuda_context_bytes=0, library_workspace_bytes=0, fragmentation_fraction=0.0, margin_fraction=0.0
)

_STATE_BYTES_PER_PARAM = {"adamw": 8, "adamw8bit": 2, "adafactor": 0, "sgd": 0}


@dataclass
class FakeSimulator:
    train_calls: list[tuple[TrainShape, TrainOptions]] = field(default_factory=list)
    generate_calls: list[tuple[GenerateShape, GenerateOptions]] = field(default_factory=list)

    def train(self, config: object, shape: TrainShape, options: TrainOptions) -> MemoryProfile:
        self.train_calls.append((shape, options))
        half = options.precision == "pure_bf16"
        weights = PARAMS * (2 if half else 4)
        gradients = PARAMS * (2 if half else 4)
        state = PARAMS * _STATE_BYTES_PER_PARAM[options.optimizer]
        per_token = MIB if options.precision == "fp32" else MIB // 2
        if options.gradient_checkpointing:
            per_token //= 4
        activations = per_token * shape.batch * (shape.source_len + shape.target_len)
        breakdown = {
            "weights": weights,
            "gradients": gradients,
            "optimizer_state": state,
            "activations": activations,
            "temporaries": 0,
        }
        return MemoryProfile(
            params=PARAMS,
            trainable_params=PARAMS,
            peak_bytes=sum(breakdown.values()),
            peak_phase="backward",
            breakdown=breakdown,
        )

    def generate(
        self, config: object, shape: GenerateShape, options: GenerateOptions
    ) -> MemoryProfile:
        self.generate_calls.append((shape, options))
        fp32 = options.precision == "fp32"
        weights = PARAMS * (4 if fp32 or options.amp else 2)
        per_token = 64 * KIB if fp32 else 32 * KIB
        cache = (
            per_token * shape.batch * shape.num_beams * (shape.source_len + shape.max_new_tokens)
        )
        return MemoryProfile(
            params=PARAMS,
            trainable_params=0,
            peak_bytes=weights + cache,
            peak_phase="decode_step",
            breakdown={"weights": weights, "activations": cache},
        )

    def as_simulator(self) -> Simulator:
        return Simulator(train=self.train, generate=self.generate)


def gpu_with(total_bytes: int, bf16: bool = False) -> GPU:
    return GPU("test", "Test GPU", total_bytes, bf16=bf16, compute_capability=(7, 0))


def request(config: object = T5, **overrides: object) -> PlanRequest:
    values: dict[str, object] = {
        "model_config": config,
        "source_len": 512,
        "target_len": 64,
        "effective_batch_size": 32,
    }
    values.update(overrides)
    return PlanRequest(**values)  # type: ignore[arg-type]


def plan_for(req: PlanRequest, gpu: GPU, overheads: Overheads | None = ZERO) -> Plan:
    return make_plan(req, gpu, overheads=overheads, simulator=FakeSimulator().as_simulator())


def fp32_gpu_for_rows(rows: int, extra_bytes: int = 0) -> GPU:
    """A no-bf16 GPU where exactly ``rows`` rows of 512+64 tokens fit in fp32 AdamW."""
    return gpu_with(STATIC_FP32_ADAMW + rows * TOKENS_512_64 * MIB + extra_bytes)


# --- helpers -------------------------------------------------------------------------------


def test_truncated_fraction() -> None:
    lengths = [(100, 10), (200, 20), (300, 100), (600, 40)]
    assert truncated_fraction(lengths, 256) == 0.5
    assert truncated_fraction(lengths, 512, 64) == 0.5
    assert truncated_fraction(lengths, 1024) == 0.0
    assert truncated_fraction(None, 128) is None
    assert truncated_fraction([], 128) is None


# --- micro-batch and effective batch --------------------------------------------------------


def test_micro_batch_is_largest_fitting_divisor() -> None:
    # 7 rows fit; divisors of 24 are 1, 2, 3, 4, 6, 8, 12, 24 -> 6 x 4.
    plan = plan_for(request(effective_batch_size=24), fp32_gpu_for_rows(7))
    assert (plan.micro_batch_size, plan.gradient_accumulation_steps) == (6, 4)
    assert plan.effective_batch_size == 24
    assert plan.precision == "fp32"
    assert plan.gradient_checkpointing is False
    # 1.6e9 static + 6 rows x 576 MiB = 1,600,000,000 + 3,623,878,656; no overheads (ZERO).
    assert plan.predicted_peak_bytes == 5_223_878_656
    assert plan.required_bytes == 5_223_878_656
    assert plan.fits is True
    assert plan.next_ladder_step == "gradient_checkpointing"


def test_micro_batch_boundary_is_inclusive() -> None:
    plan = plan_for(request(effective_batch_size=24), fp32_gpu_for_rows(8))
    assert (plan.micro_batch_size, plan.gradient_accumulation_steps) == (8, 3)
    plan = plan_for(request(effective_batch_size=24), fp32_gpu_for_rows(8, extra_bytes=-1))
    assert plan.micro_batch_size == 6


def test_micro_batch_on_v100_with_default_overheads() -> None:
    # usable = 15,293,117,235 (see test_overheads). required(b) = ceil(1.08 x peak) + 64 MiB:
    # b=16: ceil(1.08 x 11,263,676,416) + 67,108,864 = 12,231,879,394  (fits)
    # b=32: far above; 20 rows would fit, but 20 does not divide 32.
    plan = plan_for(request(), resolve_gpu("v100-16gb"), overheads=None)
    assert plan.usable_bytes == 15_293_117_235
    assert (plan.micro_batch_size, plan.gradient_accumulation_steps) == (16, 2)
    assert plan.predicted_peak_bytes == 11_263_676_416
    assert plan.required_bytes == 12_231_879_394
    assert any("the largest divisor of 32 that fits" in reason for reason in plan.reasons)


@pytest.mark.parametrize("gpu", catalog(), ids=lambda gpu: gpu.slug)
@pytest.mark.parametrize("config", [T5, MT5, BART], ids=["t5", "mt5", "bart"])
def test_plan_keeps_effective_batch_on_every_gpu(gpu: GPU, config: object) -> None:
    req = request(config, effective_batch_size=48)
    plan = make_plan(req, gpu, simulator=FakeSimulator().as_simulator())
    assert plan.micro_batch_size * plan.gradient_accumulation_steps == 48
    assert plan.effective_batch_size == 48
    assert plan.fits
    # Largest: the next larger divisor would not fit.
    sim = FakeSimulator()
    options = TrainOptions(precision=plan.precision, optimizer="adamw")  # type: ignore[arg-type]
    larger = [d for d in divisors(48) if d > plan.micro_batch_size]
    usable = usable_bytes(gpu, Overheads())
    if larger:
        profile = sim.train(config, TrainShape(larger[0], 512, 64), options)
        assert required_bytes(profile.peak_bytes, Overheads()) > usable
    assert plan.required_bytes <= usable


DDP_RESIDENT = PARAMS * 4 + 25 * MIB  # DDP's fp32 buckets + the all-reduce staging bucket


def test_world_size_splits_batch_and_counts_ddp_buckets() -> None:
    # Per GPU 16 rows; DDP holds one fp32 gradient bucket per parameter (4e8 bytes) and the
    # guarded trainer's 25 MiB staging bucket besides what one GPU would need.
    req = request(effective_batch_size=32, world_size=2)
    plan = plan_for(req, fp32_gpu_for_rows(4, extra_bytes=DDP_RESIDENT))
    assert (plan.micro_batch_size, plan.gradient_accumulation_steps) == (4, 4)
    assert plan.micro_batch_size * plan.gradient_accumulation_steps * plan.world_size == 32
    # Peak 1.6e9 + 4 rows x 576 MiB = 4,015,919,104; plus 4e8 + 26,214,400.
    assert plan.predicted_peak_bytes == 4_015_919_104
    assert plan.required_bytes == 4_442_133_504
    plan = plan_for(req, fp32_gpu_for_rows(4, extra_bytes=DDP_RESIDENT - 1))
    assert plan.micro_batch_size == 2


def test_ddp_buckets_are_counted_at_a_peak_with_no_gradients_yet() -> None:
    """Issue 18, point 12: at accumulation 1 the peak comes before any .grad exists, but
    DDP's reducer has held its parameter-sized buckets since the model was wrapped."""

    class NoGradientsAtPeak(FakeSimulator):
        def train(self, config, shape, options):
            profile = super().train(config, shape, options)
            breakdown = dict(profile.breakdown, gradients=0)
            return replace(profile, breakdown=breakdown, peak_bytes=sum(breakdown.values()))

    req = request(effective_batch_size=8, world_size=2, micro_batch_size=4)
    plan = make_plan(req, gpu_with(16 * GIB), Overheads(), NoGradientsAtPeak().as_simulator())
    assert plan.gradient_accumulation_steps == 1
    assert plan.required_bytes == required_bytes(
        plan.predicted_peak_bytes + DDP_RESIDENT, Overheads()
    )


def test_ddp_staging_buffer_is_at_most_the_trainable_gradients() -> None:
    """The guarded trainer's staging buffer is its largest bucket of several gradients
    (``training.distributed.reduce_staging``): all of them when they fit one 25 MiB bucket
    (the tiny model's 259,200 parameters, measured by bench/bench_plan_vs_run_ddp.py:
    0.99 MiB of buckets + 0.99 MiB of staging), 25 MiB at most otherwise."""

    def profile(trainable: int) -> MemoryProfile:
        return MemoryProfile(params=trainable, trainable_params=trainable, peak_bytes=0,
                             peak_phase="forward")  # fmt: skip

    assert ddp_resident_bytes(profile(259_200)) == 2 * 259_200 * 4
    assert ddp_resident_bytes(profile(PARAMS)) == DDP_RESIDENT


def test_effective_batch_not_divisible_by_world_size() -> None:
    with pytest.raises(ConfigError, match="not a multiple of the 4 GPU.*use 28 or 32"):
        plan_for(request(effective_batch_size=30, world_size=4), fp32_gpu_for_rows(8))


def test_all_request_errors_reported_at_once() -> None:
    req = request(source_len=0, precision="fp8", optimizer="lion", micro_batch_size=0)
    with pytest.raises(ConfigError) as caught:
        plan_for(req, fp32_gpu_for_rows(8))
    message = str(caught.value)
    for key in ("source_len", "precision", "optimizer", "micro_batch_size"):
        assert key in message


def test_fixed_micro_batch_must_divide() -> None:
    with pytest.raises(ConfigError, match=r"micro_batch_size 5 does not divide.*\[1, 2, 4, 8"):
        plan_for(request(micro_batch_size=5), fp32_gpu_for_rows(8))


def test_fixed_micro_batch_is_kept() -> None:
    plan = plan_for(request(micro_batch_size=2), fp32_gpu_for_rows(8))
    assert (plan.micro_batch_size, plan.gradient_accumulation_steps) == (2, 16)


def test_source_longer_than_bart_positions() -> None:
    with pytest.raises(ConfigError, match="source_len 2048 is longer than the model's 1026"):
        plan_for(request(BART, source_len=2048), fp32_gpu_for_rows(8))


def test_simulator_calls_are_few() -> None:
    sim = FakeSimulator()
    make_plan(request(effective_batch_size=1024), fp32_gpu_for_rows(7), ZERO, sim.as_simulator())
    # Bisection over 11 divisors plus the reason's look at the next divisor.
    assert len(sim.train_calls) <= 6
    assert len({call for call in sim.train_calls}) == len(sim.train_calls)


# --- precision ------------------------------------------------------------------------------


def test_t5_on_v100_uses_fp32_never_fp16() -> None:
    for config in (T5, MT5):
        plan = plan_for(request(config), resolve_gpu("v100-16gb"))
        assert plan.precision == "fp32"
        assert any("overflows in fp16" in reason for reason in plan.reasons)
        assert plan.reasons[0].startswith("precision fp32: Tesla V100 16GB has no bf16")


def test_t5_fp16_only_when_allowed_and_then_warned() -> None:
    plan = plan_for(request(allow_fp16_for_t5=True), resolve_gpu("v100-16gb"))
    assert plan.precision == "fp16"
    assert any("NaN" in warning for warning in plan.warnings)
    with pytest.raises(ConfigError, match="allow_fp16_for_t5"):
        plan_for(request(precision="fp16"), resolve_gpu("v100-16gb"))


def test_bart_on_v100_uses_fp16() -> None:
    plan = plan_for(request(BART), resolve_gpu("v100-16gb"))
    assert plan.precision == "fp16"
    assert plan.reasons[0].startswith("precision fp16 (mixed): Tesla V100 16GB has no bf16")
    assert plan.warnings == []


def test_bf16_on_a100() -> None:
    for config in (T5, MT5, BART):
        plan = plan_for(request(config), resolve_gpu("a100-40gb"))
        assert plan.precision == "bf16"
        assert "A100 40GB supports bf16" in plan.reasons[0]
    assert "T5 overflows in fp16" in plan_for(request(T5), resolve_gpu("A100")).reasons[0]


def test_bf16_requested_on_v100_is_an_error() -> None:
    with pytest.raises(ConfigError, match="has no bf16"):
        plan_for(request(BART, precision="bf16"), resolve_gpu("v100-16gb"))


def test_unknown_family_on_old_gpu_is_fp32() -> None:
    plan = plan_for(request(BART, family="other"), resolve_gpu("t4"))
    assert plan.precision == "fp32"


def test_generic_gpu_warning_is_carried() -> None:
    plan = plan_for(request(), resolve_gpu("24GB"))
    assert plan.precision == "bf16"
    assert any("assumed" in warning for warning in plan.warnings)


# --- the fallback ladder --------------------------------------------------------------------


def test_ladder_engages_gradient_checkpointing() -> None:
    # 200 MiB free: one row needs 576 MiB of activations, 144 MiB with checkpointing.
    plan = plan_for(request(effective_batch_size=8), gpu_with(STATIC_FP32_ADAMW + 200 * MIB))
    assert plan.fits
    assert plan.gradient_checkpointing is True
    assert plan.optimizer == "adamw"
    assert (plan.micro_batch_size, plan.gradient_accumulation_steps) == (1, 8)
    assert plan.required_bytes == STATIC_FP32_ADAMW + 144 * MIB
    assert any(reason.startswith("gradient checkpointing on") for reason in plan.reasons)
    assert plan.next_ladder_step == "optimizer=adafactor"


def test_ladder_then_adafactor() -> None:
    # Without optimizer state (8e8 bytes of weights and gradients) 144 MiB fits.
    plan = plan_for(request(effective_batch_size=8), gpu_with(800_000_000 + 200 * MIB))
    assert plan.fits
    assert (plan.gradient_checkpointing, plan.optimizer) == (True, "adafactor")
    assert plan.required_bytes == 800_000_000 + 144 * MIB
    ladder_reasons = [r for r in plan.reasons if "usable; with it" in r]
    assert [r.split(":")[0] for r in ladder_reasons] == [
        "gradient checkpointing on (recomputes activations in backward, ~30% slower)",
        "Adafactor instead of AdamW (factored second moments, almost no state; T5 was "
        "pre-trained with it)",
    ]
    # 8-bit AdamW holds more state than Adafactor: nothing left but the source length.
    assert plan.next_ladder_step == "source_len=256"


@pytest.fixture
def bitsandbytes_installed(monkeypatch):
    monkeypatch.setattr(step_mod, "optimizer_available", lambda name: True)


def test_ladder_8bit_adamw_when_adafactor_not_allowed(bitsandbytes_installed) -> None:
    fallbacks = ("gradient_checkpointing", "adamw8bit", "source_len")
    plan = plan_for(
        request(effective_batch_size=8, fallbacks=fallbacks),
        gpu_with(1_000_000_000 + 200 * MIB),
    )
    assert (plan.gradient_checkpointing, plan.optimizer, plan.fits) == (True, "adamw8bit", True)
    assert any("bitsandbytes" in reason for reason in plan.reasons)


def test_ladder_never_offers_8bit_adamw_without_bitsandbytes(monkeypatch) -> None:
    monkeypatch.setattr(step_mod, "optimizer_available", lambda name: name != "adamw8bit")
    steps = ladder_steps(request(), TrainOptions(), 512)
    assert [s.name for s in steps] == [
        "gradient_checkpointing",
        "optimizer=adafactor",
        "source_len=256",
    ]


def test_ladder_keeps_an_optimizer_the_user_named(bitsandbytes_installed) -> None:
    steps = ladder_steps(request(optimizer="adamw"), TrainOptions(), 512)
    assert [s.name for s in steps] == ["gradient_checkpointing", "source_len=256"]


def test_ladder_then_shorter_source_with_truncation_numbers() -> None:
    # Checkpointed activations per row: (512 + 64) / 4 = 144 MiB, (256 + 64) / 4 = 80 MiB.
    lengths = [(100, 10), (200, 20), (300, 30), (600, 40)]
    plan = plan_for(
        request(effective_batch_size=8, data_lengths=lengths),
        gpu_with(800_000_000 + 100 * MIB),
    )
    assert plan.fits
    assert (plan.gradient_checkpointing, plan.optimizer, plan.source_len) == (
        True,
        "adafactor",
        256,
    )
    assert plan.predicted_peak_bytes == 800_000_000 + 80 * MIB
    # Prediction in fp32: 4e8 weights + b x 4 beams x (256 + 64) tokens x 64 KiB = b x 80 MiB
    # fits 8e8 + 100 MiB for b <= 6.02 -> 6 among 1, 2, 3, 4, 6, 8.
    assert plan.generation_batch_size == 6
    # (source + new tokens) x beams per row: 6 x (256 + 64) x 4.
    assert plan.generation_token_budget == 7680
    step = "max source length 512 -> 256 (truncates 50.0% of dialogues: 2 of 4)"
    assert any(reason.startswith(step) for reason in plan.reasons)
    assert any(step in warning for warning in plan.warnings)
    assert plan.next_ladder_step == "source_len=128"


def test_ladder_halves_down_to_floor_then_gives_up() -> None:
    # At 128 source tokens one checkpointed row still needs (128 + 64) / 4 = 48 MiB > 10 MiB.
    lengths = [(100, 10), (200, 20), (300, 30), (600, 40)]
    plan = plan_for(
        request(effective_batch_size=8, data_lengths=lengths),
        gpu_with(800_000_000 + 10 * MIB),
    )
    assert plan.fits is False
    assert (plan.source_len, plan.micro_batch_size, plan.gradient_accumulation_steps) == (
        128,
        1,
        8,
    )
    assert plan.effective_batch_size == 8
    step = "max source length 256 -> 128 (truncates 75.0% of dialogues: 3 of 4)"
    assert any(r.startswith(step) for r in plan.reasons)
    assert [w for w in plan.warnings if "cut shorter" in w] == [
        f"source text is cut shorter: {step}"
    ]
    assert any(
        r.startswith("does not fit: micro-batch 1 at source length 128") for r in plan.reasons
    )
    assert plan.next_ladder_step is None


def test_ladder_respects_explicit_no_checkpointing() -> None:
    plan = plan_for(
        request(effective_batch_size=8, gradient_checkpointing=False),
        gpu_with(800_000_000 + 700 * MIB),
    )
    assert (plan.gradient_checkpointing, plan.optimizer, plan.fits) == (False, "adafactor", True)


def test_ladder_skips_a_step_that_does_not_help(bitsandbytes_installed) -> None:
    # A simulator where Adafactor costs more than AdamW (say, large temporaries).
    fake = FakeSimulator()

    def train(config: object, shape: TrainShape, options: TrainOptions) -> MemoryProfile:
        if options.optimizer == "adafactor":
            options = dataclasses.replace(options, optimizer="adamw")
        return fake.train(config, shape, options)

    sim = Simulator(train=train, generate=fake.generate)
    plan = make_plan(
        request(effective_batch_size=8), gpu_with(1_000_000_000 + 200 * MIB), ZERO, sim
    )
    assert plan.optimizer == "adamw8bit"
    assert any(r.startswith("Adafactor instead of AdamW") and "skipped" in r for r in plan.reasons)


def test_ladder_steps_as_data(bitsandbytes_installed) -> None:
    req = request(data_lengths=[(100, 10), (600, 10)])
    steps = ladder_steps(req, TrainOptions(), 512)
    assert [step.name for step in steps] == [
        "gradient_checkpointing",
        "optimizer=adafactor",
        "optimizer=adamw8bit",
        "source_len=256",
    ]
    assert steps[0].options == TrainOptions(gradient_checkpointing=True)
    assert steps[3].source_len == 256
    assert steps[3].description.endswith("(truncates 50.0% of dialogues: 1 of 2)")
    done = TrainOptions(optimizer="adafactor", gradient_checkpointing=True)
    assert ladder_steps(req, done, 128) == []


# --- eval and generation batches ------------------------------------------------------------


def test_eval_and_generation_batches() -> None:
    # Train fits 4 rows: total = 1.6e9 + 4 x 576 MiB = 4,015,919,104.
    # One row of generation with 4 beams over 576 tokens: 4 x 576 x 64 KiB = 144 MiB.
    # Eval keeps AdamW state (8e8) resident: 4e8 + 8e8 + b x 144 MiB fits for b <= 18.
    # Prediction: 4e8 + b x 144 MiB fits for b <= 23 -> 16 among 1, 2, 3, 4, 6, 8, 12, 16, 24.
    plan = plan_for(request(effective_batch_size=8), fp32_gpu_for_rows(4))
    assert plan.micro_batch_size == 4
    assert plan.eval_batch_size == 18
    assert plan.generation_batch_size == 16
    assert plan.generation_token_budget == 16 * (512 + 64) * 4
    assert plan.generate_profile.peak_bytes == 400_000_000 + 16 * 144 * MIB


def test_eval_and_generation_caps_on_a_big_gpu() -> None:
    plan = plan_for(request(), resolve_gpu("h200-141gb"))
    assert plan.eval_batch_size == EVAL_BATCH_CAP
    assert plan.generation_batch_size == GENERATION_BATCH_CAP


def test_fixed_eval_batch_too_big_is_warned() -> None:
    plan = plan_for(request(effective_batch_size=8, eval_batch_size=64), fp32_gpu_for_rows(4))
    assert plan.eval_batch_size == 64
    assert any("evaluation at batch 64 is predicted not to fit" in w for w in plan.warnings)


def test_generation_uses_max_new_tokens_and_beams() -> None:
    sim = FakeSimulator()
    make_plan(
        request(num_beams=2, max_new_tokens=100), fp32_gpu_for_rows(4), ZERO, sim.as_simulator()
    )
    assert {(shape.num_beams, shape.max_new_tokens) for shape, _ in sim.generate_calls} == {
        (2, 100)
    }


# --- output ---------------------------------------------------------------------------------


def test_to_json_dict() -> None:
    plan = plan_for(request(effective_batch_size=24), fp32_gpu_for_rows(7))
    data = plan.to_json_dict()
    expected_keys = {
        "params",
        "micro_batch_size",
        "gradient_accumulation_steps",
        "effective_batch_size",
        "eval_batch_size",
        "generation_batch_size",
        "precision",
        "gradient_checkpointing",
        "predicted_peak_bytes",
        "usable_bytes",
        "breakdown",
    }
    assert expected_keys <= set(data)
    assert data["params"] == PARAMS
    assert (data["micro_batch_size"], data["gradient_accumulation_steps"]) == (6, 4)
    assert data["breakdown"]["optimizer_state"] == 800_000_000
    # 1.6e9 + 7 rows x 576 MiB = 1,600,000,000 + 4,227,858,432.
    assert data["gpu"] == {"slug": "test", "name": "Test GPU", "total_bytes": 5_827_858_432}
    assert json.loads(json.dumps(data)) == data


# --- bucketed table -------------------------------------------------------------------------


def test_bucket_table() -> None:
    # 8 rows of 576 tokens fit: 4608 token-rows of fp32 activations. Divisors of 32.
    lengths = [(100, 10), (200, 20), (300, 100), (600, 40)]
    rows = bucket_table(
        request(data_lengths=lengths),
        fp32_gpu_for_rows(8),
        overheads=ZERO,
        simulator=FakeSimulator().as_simulator(),
        source_lens=(128, 256, 512),
        target_lens=(64, 128),
    )
    table = {
        (row["source_len"], row["target_len"]): (
            row["micro_batch_size"],
            row["gradient_accumulation_steps"],
            row["truncated_fraction"],
        )
        for row in rows
    }
    assert table == {
        (128, 64): (16, 2, 0.75),  # 4608 / 192 = 24 rows
        (128, 128): (16, 2, 0.75),  # 4608 / 256 = 18
        (256, 64): (8, 4, 0.5),  # 4608 / 320 = 14.4
        (256, 128): (8, 4, 0.5),  # 4608 / 384 = 12
        (512, 64): (8, 4, 0.5),  # 4608 / 576 = 8
        (512, 128): (4, 8, 0.25),  # 4608 / 640 = 7.2
    }
    assert all(row["fits"] for row in rows)


def test_bucket_table_drops_lengths_past_positions_and_marks_misfits() -> None:
    rows = bucket_table(
        request(BART, effective_batch_size=4),
        fp32_gpu_for_rows(1),
        overheads=ZERO,
        simulator=FakeSimulator().as_simulator(),
        source_lens=(512, 1024, 2048),
        target_lens=(64,),
    )
    assert [(row["source_len"], row["micro_batch_size"], row["fits"]) for row in rows] == [
        (512, 2, True),  # BART on a no-bf16 GPU: fp16 halves activations
        (1024, 1, True),
    ]
    rows = bucket_table(
        request(T5, effective_batch_size=4),
        fp32_gpu_for_rows(1),
        overheads=ZERO,
        simulator=FakeSimulator().as_simulator(),
        source_lens=(1024,),
        target_lens=(64,),
    )
    assert rows[0]["micro_batch_size"] == 0
    assert rows[0]["gradient_accumulation_steps"] is None
    assert rows[0]["fits"] is False


# --- the real simulator ---------------------------------------------------------------------


def test_plan_with_real_simulator_smoke(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("dialsum.trace.step_trace")
    from dialsum.trace.cache import CACHE_DIR_ENV

    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path))  # keep traces out of the user's cache
    # A tiny T5 so that the dozen traces of a plan take seconds, not minutes.
    tiny = T5Config(
        vocab_size=512, d_model=64, d_ff=128, d_kv=16, num_layers=2, num_heads=4,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    req = request(tiny, source_len=64, target_len=16, effective_batch_size=8, num_beams=2)
    plan = make_plan(req, resolve_gpu("a100-40gb"))
    assert plan.precision == "bf16"
    assert plan.fits
    assert (plan.micro_batch_size, plan.gradient_accumulation_steps) == (8, 1)
    # All 8 rows in one micro-batch (no accumulation), bf16 AMP, fused AdamW, CUDA's
    # kernels: the plan's peak is that step's traced peak, asked of the simulator directly.
    from dialsum.trace.step_trace import simulate_train

    step = TrainOptions(precision="bf16", optimizer="adamw", micro_batches=1, device="cuda")
    assert plan.predicted_peak_bytes == simulate_train(tiny, TrainShape(8, 64, 16), step).peak_bytes
    # At least the model states: fp32 weights and gradients, AdamW's two fp32 moments.
    params = count_params(model_from_config(tiny, device="meta"))
    assert plan.predicted_peak_bytes > 16 * params
    assert plan.generate_profile.peak_bytes > 0
