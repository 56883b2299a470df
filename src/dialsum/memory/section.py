"""Glue between a config section and the memory planner.

Builds a ``PlanRequest`` from a section (lengths from the data when known, else the
config limits) and picks the GPU: ``hardware.gpu`` / ``--gpu`` when given, the detected
device otherwise.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from dialsum.core.config_rules import model_limit_problems
from dialsum.core.config_schema import SectionConfig
from dialsum.core.errors import ConfigError, first_line
from dialsum.memory.overheads import Overheads, default_overheads
from dialsum.memory.plan import Plan, make_generation_plan, make_plan
from dialsum.memory.request import PlanRequest
from dialsum.models.architectures import (
    architecture_problems,
    config_with_dropout,
    load_config,
)
from dialsum.speed.gpus import GPU, detect_gpu, named_device, resolve_gpu


def section_model_config(cfg: SectionConfig):
    """The architecture config of the section's model, without loading weights: a built-in
    or local ``config.json``, a hub id (network), or the offline tiny model's config."""
    if cfg.model.name.startswith("tiny:"):
        from dialsum.models.setup import setup_model

        return setup_model(cfg)[0].config
    try:
        config = load_config(cfg.model.name)
    except OSError as exc:
        first = first_line(exc)
        raise ConfigError(
            f"could not read the architecture of '{cfg.model.name}' (model.name): {first} "
            "Without network access, point model.name to a folder holding its config.json."
        ) from None
    except ValueError as exc:  # no config.json, not a JSON object, no or unknown model_type
        raise ConfigError(_unreadable_config(cfg.model.name, exc)) from None
    problems = architecture_problems(config) + model_limit_problems(cfg, config)
    if problems:
        listing = "\n  - ".join(problems)
        raise ConfigError(f"model '{cfg.model.name}' (model.name):\n  - {listing}")
    if cfg.model.dropout is not None:
        # What ``train`` runs: setup_model applies model.dropout to the built model.
        config = config_with_dropout(config, cfg.model.dropout)
    return config


def _unreadable_config(name: str, exc: ValueError) -> str:
    folder = Path(name)
    config_json = folder / "config.json"
    if folder.is_dir() and not config_json.is_file():
        why = f"the folder {folder} has no config.json"
    elif config_json.is_file():
        try:
            data = json.loads(config_json.read_text(encoding="utf-8"))
        except (OSError, ValueError) as read_error:
            data, why = None, f"{config_json} is not valid JSON ({first_line(read_error)})"
        else:
            why = (
                f"{config_json} is not a JSON object"
                if not isinstance(data, dict)
                else f"{config_json} has no known model_type ({first_line(exc)})"
            )
    else:
        why = first_line(exc)
    return (
        f"could not read the architecture of '{name}' (model.name): {why}. Point model.name "
        "(or --model) to a folder whose config.json is the model's own."
    )


def device_for_section(cfg: SectionConfig, spec: str | None = None) -> GPU:
    """The device to plan for: ``spec`` (``--gpu``) or ``hardware.gpu``; ``cpu`` (or no GPU
    named while ``hardware.memory_cap_gib`` is set) is this CPU, capped when a cap is set."""
    device = named_device(spec or cfg.hardware.gpu, cfg.hardware.memory_cap_gib)
    return device if device is not None else pick_gpu(None)


def pick_gpu(spec: str | None) -> GPU:
    """``auto``/None → the detected GPU; else a catalog slug, alias or size (24GB)."""
    if spec and spec != "auto":
        return resolve_gpu(spec)
    gpu = detect_gpu()
    if gpu is None:
        raise ConfigError(
            "no GPU detected and none named: pass --gpu (e.g. --gpu a100-40gb or --gpu 24GB) "
            "or set hardware.gpu in the config"
        )
    return gpu


def request_for_section(
    cfg: SectionConfig,
    model_config=None,
    *,
    report=None,
    world: int = 1,
    data_lengths=None,
    eval_report=None,
) -> PlanRequest:
    """A planner request for ``cfg``; ``report`` (a data LengthReport) narrows the lengths
    to the longest the data really produces after truncation; ``eval_report`` does the same
    for evaluation, from the eval file."""
    if model_config is None:
        model_config = section_model_config(cfg)
    t, tok, inf = cfg.training, cfg.tokenizer, cfg.inference
    source_len, target_len = tok.max_source_length, tok.max_target_length
    if report is not None:
        source_len = max(1, min(source_len, report.longest_source))
        target_len = max(1, min(target_len, report.longest_target))
    return PlanRequest(
        model_config=model_config,
        source_len=source_len,
        target_len=target_len,
        effective_batch_size=t.effective_batch_size,
        world_size=world,
        precision="auto" if t.precision == "auto" else t.precision,
        optimizer=t.optimizer,
        gradient_checkpointing=t.gradient_checkpointing,
        num_beams=inf.num_beams,
        max_new_tokens=cfg.max_new_tokens,
        eval_batch_size=t.eval_batch_size,
        micro_batch_size=t.micro_batch_size,
        allow_fp16_for_t5=t.allow_fp16_for_t5,
        data_lengths=data_lengths,
        lora=cfg.model.lora.enabled,
        lora_rank=cfg.model.lora.rank,
        zero_stage=cfg.hardware.zero_stage,
        offload=cfg.hardware.offload,
        eval_lengths=None if eval_report is None else _longest(cfg, eval_report),
        # A method left unset may be chosen by the ladder (causal LMs: LoRA, then QLoRA).
        method=cfg.model.method or "auto",
        quant_type=cfg.model.quantization.quant_type,
        double_quant=cfg.model.quantization.double_quant,
    )


def _longest(cfg: SectionConfig, report) -> tuple[int, int]:
    """(source, target): the longest rows of ``report`` after the config's truncation."""
    tok = cfg.tokenizer
    return (
        max(1, min(tok.max_source_length, report.longest_source)),
        max(1, min(tok.max_target_length, report.longest_target)),
    )


def overheads_for(cfg: SectionConfig, gpu: GPU) -> Overheads:
    """The overheads a plan for ``gpu`` uses, with the section's safety margin.

    A CPU run has no CUDA context, no cuBLAS workspace and no caching allocator: what it
    needs is the live tensor bytes themselves (what a live-bytes cap counts).
    """
    if gpu.is_cpu:
        return Overheads(
            cuda_context_bytes=0,
            library_workspace_bytes=0,
            fragmentation_fraction=0.0,
            margin_fraction=cfg.hardware.memory_margin,
            source="CPU: live tensor bytes only",
        )
    return gpu_overheads(cfg)


def gpu_overheads(cfg: SectionConfig) -> Overheads:
    """A GPU's overheads (allocator, CUDA context, libraries) with the section's margin."""
    return replace(default_overheads(), margin_fraction=cfg.hardware.memory_margin)


def plan_for_section(
    cfg: SectionConfig,
    model_config=None,
    *,
    report=None,
    world: int = 1,
    gpu: str | GPU | None = None,
    data_lengths=None,
    simulator=None,
    generation_only: bool = False,
    eval_report=None,
) -> Plan:
    """The plan of ``cfg`` on ``gpu``; ``generation_only``: what ``predict`` runs
    (``make_generation_plan``)."""
    request = request_for_section(
        cfg,
        model_config,
        report=report,
        world=world,
        data_lengths=data_lengths,
        eval_report=eval_report,
    )
    device = gpu if isinstance(gpu, GPU) else device_for_section(cfg, gpu)
    planner = make_generation_plan if generation_only else make_plan
    plan = planner(request, device, overheads=overheads_for(cfg, device), simulator=simulator)
    from dialsum.core.torch_build import plan_warning

    unsupported = plan_warning(device)  # the installed torch build lacks this GPU's kernels
    if unsupported:
        plan.warnings.append(unsupported)
    return plan
