"""Planning decoder-only LLMs: the method ladder (full -> LoRA -> QLoRA), precision per
family, positions of prompt + summary, and the method a run must load."""

from __future__ import annotations

from dataclasses import replace

import pytest

from dialsum.core.errors import ConfigError
from dialsum.memory.fit import plan_train_options
from dialsum.memory.ladder import ladder_steps, method_of
from dialsum.memory.overheads import Overheads
from dialsum.memory.plan import make_plan
from dialsum.memory.request import PlanRequest
from dialsum.memory.simulator import Simulator
from dialsum.models.architectures import known_config
from dialsum.speed.gpus import GPU
from dialsum.trace.profile import MemoryProfile, TrainOptions

GIB = 2**30
SOLAR = known_config("upstage/SOLAR-10.7B-Instruct-v1.0")
GEMMA = known_config("google/gemma-2-2b-it")
T5 = known_config("eenzeenee/t5-base-korean-summarization")
ZERO = Overheads(
    cuda_context_bytes=0, library_workspace_bytes=0, fragmentation_fraction=0.0, margin_fraction=0.0
)

# Exact fake needs per method at micro-batch 1 (GiB), growing 1 GiB per extra row.
NEED_GIB = {"full": 170, "lora": 22, "qlora": 8}


def _train(config, shape, options: TrainOptions) -> MemoryProfile:
    need = (NEED_GIB[method_of(options)] + (shape.batch - 1)) * GIB
    return MemoryProfile(
        params=10, trainable_params=1, peak_bytes=need, peak_phase="backward",
        breakdown={"weights": need},
    )  # fmt: skip


def _generate(config, shape, options) -> MemoryProfile:
    need = (6 if options.quantization else 21) * GIB + shape.batch * GIB // 8
    return MemoryProfile(
        params=10, trainable_params=0, peak_bytes=need, peak_phase="decode_step",
        breakdown={"weights": need},
    )  # fmt: skip


FAKE = Simulator(train=_train, generate=_generate)


def _gpu(gib: int, bf16: bool = True) -> GPU:
    return GPU("test", "Test GPU", gib * GIB, bf16=bf16, compute_capability=(8, 6))


def _request(**overrides) -> PlanRequest:
    values = dict(
        model_config=SOLAR, source_len=896, target_len=128, effective_batch_size=16,
        gradient_checkpointing=True, num_beams=1,
    )  # fmt: skip
    values.update(overrides)
    return PlanRequest(**values)


def test_ladder_goes_full_then_lora_then_qlora_for_an_auto_method() -> None:
    options = TrainOptions(precision="bf16", gradient_checkpointing=True)
    names = [s.name for s in ladder_steps(_request(), options, 896)]
    assert names[:2] == ["method=lora", "method=qlora"]
    qlora = ladder_steps(_request(), options, 896)[1]
    assert (qlora.options.lora, qlora.options.quantization) == (True, "nf4")
    # A method the user named is kept; seq2seq models never get these steps.
    assert "method=lora" not in [
        s.name for s in ladder_steps(_request(method="full"), options, 896)
    ]
    seq2seq = _request(model_config=T5, source_len=512, target_len=64)
    assert not [s for s in ladder_steps(seq2seq, options, 512) if s.name.startswith("method")]


@pytest.mark.parametrize(
    ("gib", "method", "micro"),
    # Least change first: LoRA at micro-batch 2 beats QLoRA at 16 (speed is not the ladder's).
    [(200, "full", 16), (40, "lora", 16), (24, "lora", 2), (20, "qlora", 8), (12, "qlora", 4)],
)
def test_plan_picks_the_least_change_that_fits(gib: int, method: str, micro: int) -> None:
    plan = make_plan(_request(), _gpu(gib), ZERO, FAKE)
    assert plan.fits and plan.method == method
    assert plan.micro_batch_size == micro  # largest divisor of 16 that fits
    assert plan.micro_batch_size * plan.gradient_accumulation_steps == 16
    assert plan.to_json_dict()["method"] == method


@pytest.mark.parametrize(("gib", "method"), [(200, "full"), (24, "lora"), (12, "qlora")])
def test_plan_train_options_are_the_method_the_ladder_chose(gib: int, method: str) -> None:
    # What the guide traces for a plan's time side: its method, not the request's "auto".
    request = _request(lora_rank=16)
    plan = make_plan(request, _gpu(gib), ZERO, FAKE)
    options = plan_train_options(request, plan)
    assert method_of(options) == method == plan.method
    assert (options.precision, options.optimizer) == (plan.precision, plan.optimizer)
    assert options.gradient_checkpointing is plan.gradient_checkpointing
    assert options.lora_rank == 16


def test_named_qlora_is_planned_as_qlora_and_not_for_seq2seq() -> None:
    plan = make_plan(_request(method="qlora"), _gpu(200), ZERO, FAKE)
    assert plan.method == "qlora"
    with pytest.raises(ConfigError, match="QLoRA is supported for decoder-only LLMs"):
        make_plan(_request(model_config=T5, method="qlora"), _gpu(200), ZERO, FAKE)


def test_prompt_plus_summary_must_fit_the_positions() -> None:
    with pytest.raises(ConfigError, match="source_len \\+ target_len = 8200"):
        make_plan(_request(model_config=GEMMA, source_len=8000, target_len=200), _gpu(80))


def test_precision_per_family_without_bf16() -> None:
    t4 = replace(_gpu(200, bf16=False), compute_capability=(7, 5))
    assert make_plan(_request(), t4, ZERO, FAKE).precision == "fp16"  # Llama layout
    assert make_plan(_request(model_config=GEMMA), t4, ZERO, FAKE).precision == "fp32"
    assert make_plan(_request(), _gpu(200), ZERO, FAKE).precision == "bf16"
