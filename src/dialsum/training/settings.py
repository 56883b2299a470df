"""Concrete run settings: every ``auto`` in a section resolved, every plan decision applied.

On a GPU the memory planner decides and the run applies *all* of its decisions - batch
geometry, precision, optimizer, gradient checkpointing, source length (when the ladder
shortened it), eval batch, generation batch, token budget and row cap - or refuses to
start: a plan that does not fit raises a ``UserError`` that lists what would fit, before
any run folder exists. On a CPU there is no device memory to plan against, so simple,
documented defaults are used - unless ``hardware.memory_cap_gib`` emulates a device of
that size: then the CPU run is planned (CPU kernels) and capped like a GPU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch

from dialsum.core.config_rules import model_limit_problems
from dialsum.core.config_schema import SectionConfig
from dialsum.core.errors import ConfigError, UserError
from dialsum.core.launch import launched_world_size
from dialsum.memory.request import resolve_optimizer
from dialsum.step.decisions import RunDecisions
from dialsum.step.geometry import BatchGeometry, per_rank_rows
from dialsum.step.token_budget import generation_token_budget

_GIB = 2**30

CPU_MICRO_BATCH_CAP = 16
"""Largest micro-batch an unplanned CPU run uses (CPU memory is rarely the limit)."""

CPU_BATCH = 32
"""Eval and generation batch of an unplanned CPU run."""


@dataclass
class Settings(RunDecisions):
    """The decisions a run applies (every one the plan's, or the run refuses) and where."""

    device: str  # "cpu" | "cuda"
    predict_precision: str = "fp32"  # weights dtype of post-training generation
    gpu: str | None = None
    memory_cap_bytes: int | None = None  # CPU runs emulating a smaller device
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    next_ladder_step: str | None = None
    plan: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("geometry")
        out.update(self.geometry.to_json())
        out["per_step_rows"] = self.per_step_rows
        return out


def world_size() -> int:
    return int(torch.distributed.get_world_size()) if _dist_ready() else launched_world_size()


def _dist_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def use_cuda(cfg: SectionConfig) -> bool:
    return (
        torch.cuda.is_available() and not cfg.hardware.cpu and cfg.hardware.memory_cap_gib is None
    )


def memory_cap_bytes(cfg: SectionConfig) -> int | None:
    cap = cfg.hardware.memory_cap_gib
    return None if cap is None else int(cap * _GIB)


def resolve_settings(
    cfg: SectionConfig,
    model_config,
    *,
    report=None,
    guard=None,
    echo=print,
    purpose: Literal["train", "predict"] = "train",
    eval_report=None,
) -> Settings:
    """Settings for ``cfg`` on this machine; ``UserError`` when the plan does not fit.

    ``purpose`` predict plans generation only: a training step that would not fit the
    predicting GPU does not stop a prediction that fits."""
    problems = model_limit_problems(cfg, model_config)
    if problems:  # an IndexError in the first step (CPU) or a device assert (GPU) otherwise
        raise ConfigError(f"section '{cfg.name}':\n  - " + "\n  - ".join(problems))
    if cfg.hardware.gpu != "auto":
        _require_known_gpu(cfg.hardware.gpu)  # a typo is ignored on CPU otherwise
    _require_fp16_allowed(cfg, model_config)
    world = world_size()
    per_rank_rows(cfg.training.effective_batch_size, world)  # exact split, or a clear error
    if use_cuda(cfg) or memory_cap_bytes(cfg) is not None:
        settings = _planned_settings(cfg, model_config, world, report, purpose, eval_report)
    else:
        settings = _cpu_settings(cfg, world)
    recovered = guard is not None and _keep_recovered_batches(settings, guard)
    asserted = cfg.training.gradient_accumulation_steps
    if recovered and asserted is not None:
        # The saved run already trained at the smaller micro-batch (same effective batch,
        # more accumulation); the asserted accumulation described the run before the OOM.
        settings.reasons.append(
            f"training.gradient_accumulation_steps {asserted} no longer applies: the run "
            "went on at the recovered micro-batch"
        )
        asserted = None
    micro = settings.micro_batch_size
    if settings.per_step_rows % micro:
        # A micro-batch set for one process can exceed (or not divide) the rows each of
        # several processes gets per step; the effective batch stays what was asked.
        fitted = settings.geometry.largest_micro_batch_at_most(micro)
        settings.reasons.append(
            f"micro-batch {micro} -> {fitted}: it must divide the {settings.per_step_rows} "
            f"rows each of {world} process(es) gets per step"
        )
        micro = fitted
    settings.geometry = BatchGeometry.build(
        cfg.training.effective_batch_size,
        world,
        micro,
        asserted_accumulation=asserted,
    )
    _require_optimizer(settings)
    echo(describe(settings))
    return settings


def _require_fp16_allowed(cfg: SectionConfig, model_config) -> None:
    """The planner's fp16 rule for T5/mT5 (``memory.precision``), on every path: a CPU run
    named fp16 would otherwise train into NaN losses."""
    from dialsum.models.architectures import is_t5_like, model_family

    t = cfg.training
    if model_config is None or t.precision != "fp16" or t.allow_fp16_for_t5:
        return
    if is_t5_like(model_family(model_config)):
        raise ConfigError(
            "training.precision: fp16 with a T5/mT5 model overflows (NaN losses); use bf16 "
            "or fp32, or set training.allow_fp16_for_t5: true to insist"
        )


def _require_known_gpu(spec: str) -> None:
    from dialsum.speed.gpus import resolve_gpu

    try:
        resolve_gpu(spec)
    except ConfigError as exc:
        raise ConfigError(f"hardware.gpu: {exc}") from None


def _keep_recovered_batches(settings: Settings, guard) -> bool:
    """--resume after an OOM recovery: keep the smaller batches that proved to fit.

    True when the micro-batch is the recovered one.
    """
    recovered = guard.micro_batch_size < settings.micro_batch_size
    if recovered:
        settings.reasons.append(
            f"micro-batch {guard.micro_batch_size} kept from the run state (OOM recovery)"
        )
        settings.geometry = BatchGeometry(
            settings.effective_batch_size, settings.world_size, guard.micro_batch_size
        )
    if guard.eval_batch_size and guard.eval_batch_size < settings.eval_batch_size:
        settings.eval_batch_size = guard.eval_batch_size
    return recovered


def _require_optimizer(settings: Settings) -> None:
    from dialsum.step.train_step import optimizer_available

    name = settings.optimizer
    if name in ("adamw8bit", "paged_adamw8bit") and (
        settings.device != "cuda" or not optimizer_available(name)
    ):
        raise ConfigError(
            f"training.optimizer {name} needs a CUDA GPU and the bitsandbytes package "
            "(`uv sync --extra bnb`); use auto, adamw or adafactor"
        )


def _cpu_settings(cfg: SectionConfig, world: int) -> Settings:
    t, inf = cfg.training, cfg.inference
    reasons = ["no CUDA device in use: memory planning skipped (CPU memory is the limit)"]
    rows = per_rank_rows(t.effective_batch_size, world)
    if t.micro_batch_size == "auto":
        # The one refit rule (also used when a saved micro-batch no longer divides).
        one = BatchGeometry(t.effective_batch_size, world, 1)
        micro = one.largest_micro_batch_at_most(CPU_MICRO_BATCH_CAP)
        reasons.append(
            f"micro-batch {micro}: largest divisor of {rows} up to {CPU_MICRO_BATCH_CAP} on CPU"
        )
    else:
        micro = t.micro_batch_size
    precision = "fp32" if t.precision == "auto" else t.precision
    if precision != "fp32":
        reasons.append(f"precision {precision} requested; CPU autocast will be used")
    eval_bs = CPU_BATCH if t.eval_batch_size == "auto" else t.eval_batch_size
    gen_bs = CPU_BATCH if inf.batch_size == "auto" else inf.batch_size
    source_len = cfg.tokenizer.max_source_length
    return Settings(
        device="cpu",
        geometry=BatchGeometry(t.effective_batch_size, world, micro),
        eval_batch_size=eval_bs,
        generation_batch_size=gen_bs,
        generation_token_budget=generation_token_budget(
            gen_bs, source_len, cfg.max_new_tokens, inf.num_beams
        ),
        generation_row_cap=gen_bs,
        precision=precision,
        optimizer=resolve_optimizer(t.optimizer),
        gradient_checkpointing=t.gradient_checkpointing is True,
        source_len=source_len,
        method=cfg.model.training_method,
        predict_precision="fp32",
        reasons=reasons,
    )


def not_fitting_message(plan, cfg: SectionConfig) -> str:
    """What does not fit, and the options the planner checked that would."""
    lines = [
        f"section '{cfg.name}' does not fit on {plan.gpu.name}: micro-batch "
        f"{plan.micro_batch_size} at source length {plan.source_len} needs "
        f"{plan.required_bytes / _GIB:.2f} GiB, {plan.usable_bytes / _GIB:.2f} GiB usable, "
        "after the fallback steps this section allows.",
        "Nothing was started. What would fit:",
    ]
    lines += [f"  - {option}" for option in plan.alternatives] or ["  - a larger device"]
    where = f"--gpu {plan.gpu.slug}"
    if plan.gpu.is_cpu and cfg.hardware.memory_cap_gib is not None:
        where = f"--gpu cpu --set hardware.memory_cap_gib={cfg.hardware.memory_cap_gib}"
    lines.append(f"See `dialsum plan -s {cfg.name} {where}` for the details.")
    return "\n".join(lines)


def _planned_settings(
    cfg: SectionConfig,
    model_config,
    world: int,
    report,
    purpose: str = "train",
    eval_report=None,
) -> Settings:
    from dialsum.memory.section import plan_for_section
    from dialsum.speed.gpus import cpu_device

    cap = memory_cap_bytes(cfg)
    gpu = cpu_device(cap) if cap is not None else None
    predict = purpose == "predict"
    plan = plan_for_section(
        cfg,
        model_config,
        report=report,
        world=world,
        gpu=gpu,
        generation_only=predict,
        eval_report=eval_report if evaluates(cfg) else None,
    )
    if predict and not plan.fits:
        raise UserError(generation_not_fitting_message(plan, cfg))
    if not plan.fits:
        raise UserError(not_fitting_message(plan, cfg))
    if not predict and evaluates(cfg) and plan.eval_required_bytes > plan.usable_bytes:
        raise UserError(eval_not_fitting_message(plan, cfg))
    _require_loaded_method(plan, cfg)
    inf = cfg.inference
    reasons = list(plan.reasons)
    source_len = cfg.tokenizer.max_source_length
    if plan.source_len_cut:
        source_len = plan.source_len
        reasons.append(f"tokenizer.max_source_length {cfg.tokenizer.max_source_length} -> "
                       f"{source_len}: the planner shortened the source to fit")  # fmt: skip
    if inf.batch_size == "auto":
        gen_bs, budget, row_cap = (
            plan.generation_batch_size,
            plan.generation_token_budget,
            plan.generation_row_cap,
        )
    else:
        gen_bs, row_cap = inf.batch_size, inf.batch_size
        budget = generation_token_budget(gen_bs, source_len, cfg.max_new_tokens, inf.num_beams)
    return settings_from_plan(
        plan,
        cfg,
        generation_batch_size=gen_bs,
        generation_token_budget=budget,
        generation_row_cap=row_cap,
        source_len=source_len,
        gpu=plan.gpu.slug,
        reasons=reasons,
        warnings=list(plan.warnings),
        next_ladder_step=plan.next_ladder_step,
        plan=plan.to_json_dict(),
    )


def evaluates(cfg: SectionConfig) -> bool:
    """Whether a run generates evaluation summaries (during or after training)."""
    return cfg.training.eval_strategy != "no"


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"


def eval_not_fitting_message(plan, cfg: SectionConfig) -> str:
    """Training fits, but its evaluation (generation next to the optimizer state) does not:
    the run would fail at its first evaluation, after training for a while."""
    return (
        f"section '{cfg.name}' on {plan.gpu.name}: training fits, but evaluation at batch "
        f"{plan.eval_batch_size} ({cfg.inference.num_beams} beams, the optimizer state "
        f"resident) needs {_gib(plan.eval_required_bytes)} of {_gib(plan.usable_bytes)} "
        "usable. Lower inference.num_beams or tokenizer.max_source_length, set "
        "training.eval_batch_size: auto (or smaller), or training.eval_strategy: no and "
        "evaluate after training with `dialsum predict` + `dialsum evaluate`."
    )


def generation_not_fitting_message(plan, cfg: SectionConfig) -> str:
    return (
        f"section '{cfg.name}' on {plan.gpu.name}: generating one summary "
        f"({cfg.inference.num_beams} beams, source {plan.source_len} tokens, weights in "
        f"{plan.predict_precision}) needs {_gib(plan.generate_required_bytes)} of "
        f"{_gib(plan.usable_bytes)} usable. Lower inference.num_beams or "
        "tokenizer.max_source_length, or predict on a larger GPU."
    )


def _require_loaded_method(plan, cfg: SectionConfig) -> None:
    """The model is loaded as ``model.method`` says (a 4-bit base, adapters) before the plan
    exists; when the ladder chose another method (``model.method`` left unset: LoRA or QLoRA
    because full fine-tuning does not fit) the run refuses and names the setting."""
    loaded = cfg.model.training_method
    if plan.method == loaded:
        return
    raise UserError(
        f"section '{cfg.name}': {loaded} fine-tuning does not fit on {plan.gpu.name}; the plan "
        f"fits with method {plan.method} (micro-batch {plan.micro_batch_size} x "
        f"{plan.gradient_accumulation_steps}). Nothing was started: set model.method: "
        f"{plan.method} (--set model.method={plan.method}) to train that way."
    )


def settings_from_plan(plan, cfg: SectionConfig, /, **overrides: Any) -> Settings:
    """Settings that apply every decision of ``plan`` as it stands (``overrides`` replace
    fields), on the device it is for: a CPU emulating one under ``hardware.memory_cap_gib``,
    else CUDA. Also the settings of a plan that does not fit (the GPU check searches it)."""
    cap = memory_cap_bytes(cfg)
    values: dict[str, Any] = dict(
        device="cpu" if cap is not None else "cuda",
        geometry=plan.geometry,
        eval_batch_size=plan.eval_batch_size,
        generation_batch_size=plan.generation_batch_size,
        generation_token_budget=plan.generation_token_budget,
        generation_row_cap=plan.generation_row_cap,
        precision="bf16" if plan.precision == "pure_bf16" else plan.precision,
        optimizer=plan.optimizer,
        gradient_checkpointing=plan.gradient_checkpointing,
        source_len=plan.source_len,
        method=plan.method,
        predict_precision=plan.predict_precision,
        memory_cap_bytes=cap,
    )
    return Settings(**(values | overrides))


def describe(s: Settings) -> str:
    cap = f", capped at {s.memory_cap_bytes / _GIB:.2f} GiB" if s.memory_cap_bytes else ""
    lines = [
        f"settings ({s.device}{', ' + s.gpu if s.gpu else ''}{cap}, {s.world_size} process(es)):",
        f"  micro-batch {s.micro_batch_size} x accumulation {s.gradient_accumulation_steps} x "
        f"{s.world_size} process(es) = effective batch {s.effective_batch_size}",
        f"  precision {s.precision}, optimizer {s.optimizer}, "
        f"gradient checkpointing {'on' if s.gradient_checkpointing else 'off'}, "
        f"source length {s.source_len}",
        f"  eval batch {s.eval_batch_size}, generation batch {s.generation_batch_size} "
        f"(token budget {s.generation_token_budget}, at most {s.generation_row_cap} rows)",
    ]
    lines += [f"  - {r}" for r in s.reasons]
    lines += [f"  ! {w}" for w in s.warnings]
    return "\n".join(lines)
