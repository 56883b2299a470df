"""Concrete run settings: every ``auto`` in a section resolved to a number.

On a GPU the memory planner decides (micro-batch, precision, checkpointing, eval and
generation batch). On a CPU there is no device memory to plan against, so simple,
documented defaults are used and the plan says so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from dialsum.config import SectionConfig
from dialsum.errors import ConfigError


@dataclass
class Settings:
    device: str  # "cpu" | "cuda"
    world_size: int
    per_step_rows: int  # rows one rank processes per optimizer step
    micro_batch_size: int
    gradient_accumulation_steps: int
    effective_batch_size: int
    eval_batch_size: int
    generation_batch_size: int
    generation_token_budget: int | None
    precision: str
    optimizer: str
    gradient_checkpointing: bool
    gpu: str | None = None
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    next_ladder_step: str | None = None
    plan: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def world_size() -> int:
    return int(torch.distributed.get_world_size()) if _dist_ready() else _env_world_size()


def _dist_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _env_world_size() -> int:
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


def use_cuda(cfg: SectionConfig) -> bool:
    return torch.cuda.is_available() and not cfg.hardware.cpu


def largest_divisor_at_most(n: int, cap: int) -> int:
    """Largest d with d | n and d <= cap (micro-batches must divide the step's rows)."""
    return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)


def per_step_rows(cfg: SectionConfig, world: int) -> int:
    eff = cfg.training.effective_batch_size
    if eff % world:
        raise ConfigError(
            f"training.effective_batch_size {eff} is not divisible by the {world} processes; "
            f"use a multiple of {world} (e.g. {eff + world - eff % world})"
        )
    return eff // world


def resolve_settings(
    cfg: SectionConfig, model_config, *, report=None, guard=None, echo=print
) -> Settings:
    world = world_size()
    rows = per_step_rows(cfg, world)
    if use_cuda(cfg):
        settings = _gpu_settings(cfg, model_config, rows, world, report)
    else:
        settings = _cpu_settings(cfg, rows, world)
    if guard is not None:
        # --resume after an OOM recovery: keep the smaller batches that proved to fit.
        if guard.micro_batch_size < settings.micro_batch_size:
            settings.reasons.append(
                f"micro-batch {guard.micro_batch_size} kept from the run state (OOM recovery)"
            )
            settings.micro_batch_size = guard.micro_batch_size
        if guard.eval_batch_size and guard.eval_batch_size < settings.eval_batch_size:
            settings.eval_batch_size = guard.eval_batch_size
    if rows % settings.micro_batch_size:
        # A micro-batch set for one process can exceed (or not divide) the rows each of
        # several processes gets per step; the effective batch stays what was asked.
        fitted = largest_divisor_at_most(rows, settings.micro_batch_size)
        settings.reasons.append(
            f"micro-batch {settings.micro_batch_size} -> {fitted}: it must divide the {rows} "
            f"rows each of {world} process(es) gets per step"
        )
        settings.micro_batch_size = fitted
    settings.gradient_accumulation_steps = rows // settings.micro_batch_size
    echo(describe(settings))
    return settings


def _cpu_settings(cfg: SectionConfig, rows: int, world: int) -> Settings:
    t, inf = cfg.training, cfg.inference
    reasons = ["no CUDA device in use: memory planning skipped (CPU memory is the limit)"]
    if t.micro_batch_size == "auto":
        micro = largest_divisor_at_most(rows, 16)
        reasons.append(f"micro-batch {micro}: largest divisor of {rows} up to 16 on CPU")
    else:
        micro = t.micro_batch_size
    precision = "fp32" if t.precision == "auto" else t.precision
    if precision != "fp32":
        reasons.append(f"precision {precision} requested; CPU autocast will be used")
    eval_bs = 32 if t.eval_batch_size == "auto" else t.eval_batch_size
    gen_bs = 32 if inf.batch_size == "auto" else inf.batch_size
    return Settings(
        device="cpu",
        world_size=world,
        per_step_rows=rows,
        micro_batch_size=micro,
        gradient_accumulation_steps=rows // micro,
        effective_batch_size=t.effective_batch_size,
        eval_batch_size=eval_bs,
        generation_batch_size=gen_bs,
        generation_token_budget=gen_bs * cfg.tokenizer.max_source_length,
        precision=precision,
        optimizer=t.optimizer,
        gradient_checkpointing=t.gradient_checkpointing is True,
        reasons=reasons,
    )


def _gpu_settings(cfg: SectionConfig, model_config, rows: int, world: int, report) -> Settings:
    from dialsum.planning import plan_for_section

    plan = plan_for_section(cfg, model_config, report=report, world=world)
    t, inf = cfg.training, cfg.inference
    micro = plan.micro_batch_size if t.micro_batch_size == "auto" else t.micro_batch_size
    eval_bs = plan.eval_batch_size if t.eval_batch_size == "auto" else t.eval_batch_size
    gen_bs = plan.generation_batch_size if inf.batch_size == "auto" else inf.batch_size
    gc = (
        plan.gradient_checkpointing
        if t.gradient_checkpointing == "auto"
        else t.gradient_checkpointing
    )
    precision = plan.precision if t.precision == "auto" else t.precision
    return Settings(
        device="cuda",
        world_size=world,
        per_step_rows=rows,
        micro_batch_size=micro,
        gradient_accumulation_steps=rows // micro,
        effective_batch_size=t.effective_batch_size,
        eval_batch_size=eval_bs,
        generation_batch_size=gen_bs,
        generation_token_budget=plan.generation_token_budget if inf.batch_size == "auto" else None,
        precision="bf16" if precision == "pure_bf16" else precision,
        optimizer=plan.optimizer if t.optimizer == "adamw" else t.optimizer,
        gradient_checkpointing=bool(gc),
        gpu=plan.gpu.slug,
        reasons=list(plan.reasons),
        warnings=list(plan.warnings),
        next_ladder_step=plan.next_ladder_step,
        plan=plan.to_json_dict(),
    )


def describe(s: Settings) -> str:
    lines = [
        f"settings ({s.device}{', ' + s.gpu if s.gpu else ''}, {s.world_size} process(es)):",
        f"  micro-batch {s.micro_batch_size} x accumulation {s.gradient_accumulation_steps} x "
        f"{s.world_size} process(es) = effective batch {s.effective_batch_size}",
        f"  precision {s.precision}, optimizer {s.optimizer}, "
        f"gradient checkpointing {'on' if s.gradient_checkpointing else 'off'}",
        f"  eval batch {s.eval_batch_size}, generation batch {s.generation_batch_size}",
    ]
    lines += [f"  - {r}" for r in s.reasons]
    lines += [f"  ! {w}" for w in s.warnings]
    return "\n".join(lines)
