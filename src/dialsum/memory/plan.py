"""Plan batch settings for one GPU from simulated memory, keeping the user's effective batch.

The planner asks the simulator (injected, so tests can use an exact analytic fake) how
much a training step needs, adds the overheads a real GPU has (``memory.overheads``) and
picks:

- precision: bf16 mixed precision where the GPU has bf16; else fp32 for T5/mT5 (they
  overflow in fp16) and fp16 mixed precision for BART (``memory.precision``);
- micro-batch: the largest *divisor* of the per-GPU batch that fits, so that
  ``micro x accumulation x world_size`` is exactly the effective batch asked for
  (``memory.fit.choose_micro_batch``);
- when even micro-batch 1 does not fit, the fallback ladder: gradient checkpointing,
  Adafactor, 8-bit AdamW, then halving the source length (down to 128 tokens;
  ``memory.ladder``, taken by ``memory.fit.climb_ladder``);
- eval and generation batch sizes from simulated generation (``memory.generation_batches``);
- when nothing fits, the alternatives that would (``memory.alternatives``).

Memory is assumed monotone in batch size and sequence length, so searches bisect.

This module holds the result (``Plan``, with its ``plan.json`` form), ``make_plan``: the
pipeline of those steps, and ``bucket_table``, which plans per length bucket from the
same setup.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dialsum.memory.ahead import ask_ahead
from dialsum.memory.alternatives import suggest_alternatives
from dialsum.memory.fit import (
    Need,
    Planner,
    PlanSetup,
    PlanState,
    choose_micro_batch,
    climb_ladder,
    explain_engine,
    largest_fitting,
    set_up_plan,
)
from dialsum.memory.generation_batches import Generation, choose_eval_batch, choose_generation
from dialsum.memory.ladder import ladder_steps, method_of
from dialsum.memory.overheads import Overheads
from dialsum.memory.precision import PREDICT_PRECISION, eval_generate_options
from dialsum.memory.request import PlanRequest, max_source_positions, truncated_fraction
from dialsum.memory.simulator import Simulator
from dialsum.memory.zero import ZeroStateBytes
from dialsum.models.kinds import CAUSAL_FAMILIES
from dialsum.speed.device_specs import spec_for
from dialsum.speed.gpus import GPU
from dialsum.speed.plan_cost import PlanTiming, plan_timing
from dialsum.speed.step_time import efficiency_for, matmul_precision
from dialsum.step.decisions import RunDecisions
from dialsum.step.geometry import BatchGeometry, divisors
from dialsum.trace.profile import GenerateOptions, MemoryProfile


@dataclass
class Plan(RunDecisions):
    """Batch settings for one GPU, with the numbers and the reasons behind them.

    ``generation_token_budget`` counts ``step.token_budget.generation_cost`` tokens
    ((source + new) x beams per row) and ``generation_row_cap`` bounds the rows of a batch
    of short dialogues (their logits and beam bookkeeping do not shrink with the source).
    """

    gpu: GPU
    target_len: int
    predicted_peak_bytes: int
    required_bytes: int
    usable_bytes: int
    train_profile: MemoryProfile
    generate_profile: MemoryProfile
    fits: bool
    family: str = "other"
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    next_ladder_step: str | None = None
    zero_stage: int = 0
    offload: bool = False
    zero_states: ZeroStateBytes | None = None  # per-rank model states under ZeRO
    requested_source_len: int = 0  # before the ladder (0: same as source_len)
    eval_profile: MemoryProfile | None = None
    eval_required_bytes: int = 0
    generate_required_bytes: int = 0
    alternatives: list[str] = field(default_factory=list)
    architecture: dict[str, Any] = field(default_factory=dict)
    timing: PlanTiming | None = None  # FLOPs and predicted step time (``speed.step_time``)

    @property
    def source_len_cut(self) -> bool:
        """Whether the ladder shortened the source (the run must tokenize at ``source_len``)."""
        return bool(self.requested_source_len) and self.source_len < self.requested_source_len

    @property
    def eval_generate_options(self) -> GenerateOptions:
        return eval_generate_options(self.precision, "cpu" if self.gpu.is_cpu else "cuda")

    @property
    def predict_precision(self) -> str:
        return PREDICT_PRECISION[self.precision]

    def to_json_dict(self) -> dict[str, Any]:
        """Plain JSON-safe dict (what the run folder's ``plan.json`` holds)."""
        eval_options = self.eval_generate_options
        return {
            "gpu": {
                "slug": self.gpu.slug,
                "name": self.gpu.name,
                "total_bytes": self.gpu.total_bytes,
            },
            "device": "cpu" if self.gpu.is_cpu else "cuda",
            "family": self.family,
            "architecture": dict(self.architecture),
            "params": self.train_profile.params,
            "trainable_params": self.train_profile.trainable_params,
            **self.geometry.to_json(),
            "eval_batch_size": self.eval_batch_size,
            "eval_precision": (
                f"{eval_options.precision} autocast, fp32 weights"
                if eval_options.amp
                else eval_options.precision
            ),
            "generation_batch_size": self.generation_batch_size,
            "generation_token_budget": self.generation_token_budget,
            "generation_row_cap": self.generation_row_cap,
            "predict_precision": self.predict_precision,
            "precision": self.precision,
            "optimizer": self.optimizer,
            "gradient_checkpointing": self.gradient_checkpointing,
            "source_len": self.source_len,
            "requested_source_len": self.requested_source_len or self.source_len,
            "target_len": self.target_len,
            "predicted_peak_bytes": self.predicted_peak_bytes,
            "peak_phase": self.train_profile.peak_phase,
            "required_bytes": self.required_bytes,
            "usable_bytes": self.usable_bytes,
            "breakdown": dict(self.train_profile.breakdown),
            "phase_peaks": dict(self.train_profile.phase_peaks),
            "eval_peak_bytes": self.eval_profile.peak_bytes if self.eval_profile else None,
            "eval_phase_peaks": dict(self.eval_profile.phase_peaks) if self.eval_profile else {},
            "eval_required_bytes": self.eval_required_bytes,
            "generate_peak_bytes": self.generate_profile.peak_bytes,
            "generate_phase_peaks": dict(self.generate_profile.phase_peaks),
            "generate_breakdown": dict(self.generate_profile.breakdown),
            "generate_required_bytes": self.generate_required_bytes,
            "fits": self.fits,
            "reasons": list(self.reasons),
            "warnings": list(self.warnings),
            "alternatives": list(self.alternatives),
            "next_ladder_step": self.next_ladder_step,
            "zero_stage": self.zero_stage,
            "offload": self.offload,
            "zero_states_per_rank": zero_states_json(self.zero_states),
            **_timing_json(self.timing),
            # Decoder-only LLMs: full | lora | qlora (seq2seq plans keep their keys).
            **({"method": self.method} if self.family in CAUSAL_FAMILIES else {}),
        }


def _timing_json(timing: PlanTiming | None) -> dict[str, Any]:
    """Speed keys of ``plan.json``: per GPU, one optimizer step; ``time_estimated`` is
    False only when the step time uses an efficiency measured by ``dialsum probe``."""
    step = timing.step if timing else None
    return {
        "flops_per_step": timing.flops_per_step if timing else None,
        "flops_per_token": timing.flops_per_token if timing else None,
        "step_time_s": step.seconds if step else None,
        "tokens_per_s": timing.tokens_per_s if timing else None,
        "time_estimated": not step.calibrated if step else True,
        "timing": timing.to_json() if timing else None,
    }


def zero_states_json(states: ZeroStateBytes | None) -> dict[str, int] | None:
    if states is None:
        return None
    return {
        "weights": states.weights_bytes,
        "gradients": states.gradients_bytes,
        "optimizer_state": states.optimizer_state_bytes,
        "gathered_layer": states.gathered_layer_bytes,
        "gpu": states.gpu_bytes,
        "cpu": states.cpu_bytes,
    }


# --------------------------------------------------------------------------------------
# make_plan: a pipeline of named steps over one mutable state


def make_plan(
    request: PlanRequest,
    gpu: GPU,
    overheads: Overheads | None = None,
    simulator: Simulator | None = None,
) -> Plan:
    """Plan micro-batch, accumulation, precision and eval/generation batches for ``gpu``.

    ``overheads`` defaults to ``Overheads()`` (pass ``default_overheads()`` to use a
    calibration file); ``simulator`` defaults to the real tracing simulator.
    Raises ``ConfigError`` for an invalid request or one the GPU cannot run.
    """
    setup = set_up_plan(request, gpu, overheads, simulator)  # request checked, precision chosen
    if gpu.warning:
        setup.warnings.append(gpu.warning)
    planner = setup.planner
    state = PlanState(setup.options, request.source_len, setup.reasons, setup.warnings)
    fixed_micro = request.micro_batch_size if request.micro_batch_size != "auto" else None

    ask_ahead(planner, state)
    climb_ladder(planner, state, smallest=fixed_micro or 1, search=fixed_micro is None)
    fits = state.need is not None and state.need.fits
    choose_micro_batch(planner, state, fixed_micro)
    geometry = request.geometry(state.micro)
    explain_engine(planner, state, geometry)
    evaluation = choose_eval_batch(planner, state)
    generation = choose_generation(planner, state)
    alternatives = [] if fits else suggest_alternatives(planner, state, fixed_micro)
    timing = _estimate_time(planner, state, geometry, generation)
    return _plan_of(setup, state, geometry, fits, evaluation, generation, alternatives, timing)


def make_generation_plan(
    request: PlanRequest,
    gpu: GPU,
    overheads: Overheads | None = None,
    simulator: Simulator | None = None,
) -> Plan:
    """What ``predict`` runs: generation only, at the request's source length.

    No training step is traced and no ladder climbed (a training step that does not fit
    this GPU, or a source the training ladder would shorten, says nothing about
    generation): precision is the GPU's, the weights are cast to the prediction dtype, and
    ``fits`` says whether generation fits at batch 1. The plan's peak is generation's.
    """
    setup = set_up_plan(request, gpu, overheads, simulator)
    if gpu.warning:
        setup.warnings.append(gpu.warning)
    state = PlanState(setup.options, request.source_len, setup.reasons, setup.warnings)
    generation = choose_generation(setup.planner, state)
    state.need = generation.need
    geometry = request.geometry(request.per_rank_batch)
    fits = generation.need.fits
    plan = _plan_of(setup, state, geometry, fits, (1, generation.need), generation, [], None)
    plan.eval_profile = None  # no evaluation in predict
    return plan


def _plan_of(
    setup: PlanSetup,
    state: PlanState,
    geometry: BatchGeometry,
    fits: bool,
    evaluation: tuple[int, Need],
    generation: Generation,
    alternatives: list[str],
    timing: PlanTiming | None,
) -> Plan:
    """The ``Plan`` the steps decided; ``next_ladder_step`` skips steps found useless."""
    planner, request = setup.planner, setup.planner.request
    eval_batch, eval_need = evaluation
    open_steps = [
        s
        for s in ladder_steps(request, state.options, state.source_len, planner.gpu)
        if s.name not in state.rejected
    ]
    need = state.need
    assert need is not None
    return Plan(
        gpu=planner.gpu,
        geometry=geometry,
        eval_batch_size=eval_batch,
        generation_batch_size=generation.batch,
        generation_token_budget=generation.token_budget,
        generation_row_cap=generation.row_cap,
        precision=setup.precision,
        optimizer=state.options.optimizer,
        gradient_checkpointing=state.options.gradient_checkpointing,
        source_len=state.source_len,
        method=method_of(state.options),
        target_len=request.target_len,
        predicted_peak_bytes=need.peak_bytes,
        required_bytes=need.required_bytes,
        usable_bytes=planner.usable,
        train_profile=need.profile,
        generate_profile=generation.need.profile,
        fits=fits,
        family=setup.family,
        reasons=state.reasons,
        warnings=state.warnings,
        next_ladder_step=open_steps[0].name if open_steps else None,
        zero_stage=request.zero_stage,
        offload=request.offload,
        zero_states=need.zero_states,
        requested_source_len=request.source_len,
        eval_profile=eval_need.profile,
        eval_required_bytes=eval_need.required_bytes,
        generate_required_bytes=generation.need.required_bytes,
        alternatives=alternatives,
        architecture=_architecture(request),
        timing=timing,
    )


def _architecture(request: PlanRequest) -> dict[str, Any]:
    # Imported here: reading a cached plan or guide back must not import torch.
    from dialsum.models.architectures import architecture_facts

    return architecture_facts(request.model_config)


def _estimate_time(
    planner: Planner, state: PlanState, geometry: BatchGeometry, generation: Generation
) -> PlanTiming | None:
    """FLOPs of the planned step and generation (from their traces), and the step's
    predicted time on this GPU (``speed.step_time``)."""
    assert state.need is not None
    spec = spec_for(planner.gpu)
    efficiency, calibrated = (None, False)
    if spec is not None:
        precision = matmul_precision(state.options.precision)
        efficiency, calibrated = efficiency_for(spec.slug, precision)
    return plan_timing(
        state.need.profile,
        generation.need.profile,
        micro=geometry.micro_batch_size,
        accumulation=geometry.gradient_accumulation_steps,
        source_len=state.source_len,
        target_len=planner.request.target_len,
        generate_batch=generation.batch,
        new_tokens=planner.request.new_tokens,
        spec=spec,
        precision=state.options.precision,
        efficiency=efficiency,
        calibrated=calibrated,
    )


# --------------------------------------------------------------------------------------
# Bucketed table


def bucket_table(
    request: PlanRequest,
    gpu: GPU,
    overheads: Overheads | None = None,
    simulator: Simulator | None = None,
    source_lens: Sequence[int] = (128, 256, 512, 1024),
    target_lens: Sequence[int] = (64, 128, 256),
) -> list[dict[str, Any]]:
    """Largest micro-batch per (source_len, target_len) bucket, for length-bucketed batching.

    Uses the request's precision/optimizer/checkpointing (no fallback ladder). Lengths above
    the model's position limit are dropped. ``micro_batch_size`` is the largest divisor of
    the per-GPU batch that fits, 0 when none does; ``truncated_fraction`` is the share of
    ``data_lengths`` rows longer than the bucket (None without data).
    """
    setup = set_up_plan(request, gpu, overheads, simulator)
    limit = max_source_positions(request.model_config)
    sources = sorted({n for n in source_lens if limit is None or n <= limit})
    targets = sorted({n for n in target_lens if limit is None or n <= limit})
    candidates = divisors(request.per_rank_batch)
    # Memory grows with length, so a bucket's micro-batch is at most its shorter neighbours'.
    best: dict[tuple[int, int], int] = {}
    rows: list[dict[str, Any]] = []
    for source_len in sources:
        for target_len in targets:
            bounds = [
                value
                for (shorter_source, shorter_target), value in best.items()
                if shorter_source <= source_len and shorter_target <= target_len
            ]
            upper = min(bounds) if bounds else candidates[-1]
            open_candidates = [m for m in candidates if m <= upper]
            micro = _bucket_micro_batch(setup, open_candidates, source_len, target_len)
            best[(source_len, target_len)] = micro
            rows.append(_bucket_row(setup, micro, source_len, target_len))
    return rows


def _bucket_micro_batch(
    setup: PlanSetup, candidates: Sequence[int], source_len: int, target_len: int
) -> int:
    """The largest of ``candidates`` that fits the bucket, 0 when none does."""

    def fits(m: int) -> bool:
        return setup.planner.train_need(m, setup.options, source_len, target_len).fits

    return largest_fitting(candidates, fits) or 0


def _bucket_row(setup: PlanSetup, micro: int, source_len: int, target_len: int) -> dict[str, Any]:
    planner, request = setup.planner, setup.planner.request
    need = planner.train_need(max(micro, 1), setup.options, source_len, target_len)
    return {
        "source_len": source_len,
        "target_len": target_len,
        "micro_batch_size": micro,
        "gradient_accumulation_steps": request.per_rank_batch // micro if micro else None,
        "predicted_peak_bytes": need.peak_bytes,
        "required_bytes": need.required_bytes,
        "usable_bytes": planner.usable,
        "fits": micro > 0,
        "truncated_fraction": truncated_fraction(request.data_lengths, source_len, target_len),
    }
