"""The per-GPU guide, computed: Markdown + YAML + one plot per model section.

Teams used to keep a hand-written "batch size per GPU" document; it guessed parameter
counts, let the effective batch drift from GPU to GPU and went stale with every length
change. ``build_guide`` plans every (section, GPU) pair with the memory planner and writes
what the team needs: exact model facts, the memory breakdown, per-GPU settings that keep
the effective batch, and ready-to-paste config snippets.

Also the small printers the ``dialsum plan`` command uses: ``format_plan``,
``breakdown_table`` and ``plan_json``.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from rich.table import Table

from dialsum.core.atomic import commit, staged_path
from dialsum.core.config import SectionConfig, load_section, read_yaml
from dialsum.core.errors import ConfigError
from dialsum.core.runs import write_text_atomic
from dialsum.memory.gpus import GPU, catalog, resolve_gpu
from dialsum.memory.overheads import Overheads, default_overheads, required_bytes, usable_bytes
from dialsum.memory.plan import Plan, Simulator, divisors, resolve_optimizer
from dialsum.memory.profile import (
    GenerateOptions,
    GenerateShape,
    MemoryProfile,
    TrainOptions,
    TrainShape,
)
from dialsum.report.time_side import (
    TIME_METHOD,
    render_time_plot,
    time_cells,
    time_markdown,
    time_plot_path,
    time_yaml,
)

if TYPE_CHECKING:
    from transformers import PretrainedConfig

_GIB = 2**30
_MIB = 2**20

TRAIN_CATEGORIES: tuple[str, ...] = (
    "weights",
    "gradients",
    "optimizer_state",
    "activations",
    "temporaries",
)
"""Training breakdown rows, in the order a reader adds them up."""

PLOT_MAX_MICRO_BATCH = 32
"""Largest micro-batch on the plots: past it no catalog GPU fits a base-size model."""

_WEIGHT_DTYPE_BYTES: dict[str, int] = {"fp32": 4, "bf16": 2, "int8": 1}

# What the old hand-written guide claimed; the guide prints the measured counts next to them.
_OLD_GUIDE_PARAM_CLAIMS: dict[str, str] = {
    "csebuetnlp/mT5_multilingual_XLSum": "1.2B",
    "eenzeenee/t5-base-korean-summarization": "220M",
}
_OLD_GUIDE_EFFECTIVE_BATCHES = "4, 8, 8, 16, 8 and 2"

_PRECISION_LABELS: dict[str, str] = {
    "fp32": "fp32",
    "bf16": "bf16 mixed",
    "fp16": "fp16 mixed",
    "pure_bf16": "pure bf16",
}


# --------------------------------------------------------------------------------------
# Small formatters


def gib(n_bytes: int) -> float:
    """Bytes -> GiB (binary, as PyTorch and the planner count)."""
    return n_bytes / _GIB


def _gib_text(n_bytes: int) -> str:
    return f"{gib(n_bytes):.2f}"


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


# --------------------------------------------------------------------------------------
# Printers for `dialsum plan`


def breakdown_table(profile: MemoryProfile, title: str | None = None) -> Table:
    """The profile's peak split into categories, in GiB and as a share of the peak."""
    table = Table(title=title or f"memory at the peak ({profile.peak_phase})")
    table.add_column("category")
    table.add_column("GiB", justify="right")
    table.add_column("share", justify="right")
    known = [c for c in TRAIN_CATEGORIES if c in profile.breakdown]
    # Generation profiles have other categories (kv_cache, logits): keep them, after ours.
    names = known + [c for c in profile.breakdown if c not in known]
    for name in names:
        value = profile.breakdown[name]
        table.add_row(name.replace("_", " "), _gib_text(value), _percent(value, profile.peak_bytes))
    table.add_section()
    table.add_row("peak", _gib_text(profile.peak_bytes), "100.0%" if profile.peak_bytes else "-")
    return table


def format_plan(plan: Plan) -> str:
    """A plan as a few lines of plain text: settings, memory, reasons, warnings."""
    gpu = plan.gpu
    lines = [
        f"GPU: {gpu.name} ({gpu.slug}), {_gib_text(plan.usable_bytes)} GiB usable of "
        f"{gpu.total_gib:.2f} GiB",
        f"precision: {_PRECISION_LABELS.get(plan.precision, plan.precision)}, optimizer: "
        f"{plan.optimizer}, gradient checkpointing: {_yes_no(plan.gradient_checkpointing)}",
        f"micro-batch {plan.micro_batch_size} x {plan.gradient_accumulation_steps} accumulation"
        f" x {plan.world_size} GPU(s) = effective batch {plan.effective_batch_size}",
        f"eval batch {plan.eval_batch_size}, generation batch {plan.generation_batch_size}",
        f"lengths: source {plan.source_len}, target {plan.target_len} tokens",
        f"predicted training peak {_gib_text(plan.predicted_peak_bytes)} GiB "
        f"({plan.train_profile.peak_phase}); with overheads {_gib_text(plan.required_bytes)} "
        f"GiB of {_gib_text(plan.usable_bytes)} GiB usable -> "
        + ("fits" if plan.fits else "DOES NOT FIT"),
    ]
    if plan.reasons:
        lines.append("why:")
        lines += [f"  - {reason}" for reason in plan.reasons]
    if plan.warnings:
        lines.append("warnings:")
        lines += [f"  - {warning}" for warning in plan.warnings]
    if not plan.fits and plan.next_ladder_step:
        lines.append(f"next fallback step: {plan.next_ladder_step}")
    return "\n".join(lines)


def plan_json(plan: Plan, params: int | None = None) -> dict[str, Any]:
    """``Plan.to_json_dict`` with ``params`` replaced by the exact count when given.

    The simulator's count comes from its own model build; the caller may know the exact
    count of the checkpoint (``count_params`` on the real or meta model).
    """
    data = plan.to_json_dict()
    if params is not None:
        data["params"] = params
    return data


# --------------------------------------------------------------------------------------
# Model facts


@dataclass(frozen=True)
class ModelFacts:
    """What the guide says about a model before any memory is simulated."""

    model_id: str
    params: int
    untied_head_params: int
    """Parameters of a separate ``lm_head`` (0 when the head shares the input embedding)."""
    buffers: dict[str, int]
    """Non-parameter tensors saved with the model, name -> elements (e.g. final_logits_bias)."""

    def weight_bytes(self, dtype: str) -> int:
        return self.params * _WEIGHT_DTYPE_BYTES[dtype]


def model_facts(model_id: str, model_config: PretrainedConfig) -> ModelFacts:
    """Exact parameter count from the model built on the meta device (no memory, no download).

    Cached next to the traces: building the model imports its modeling code, which is most
    of a warm guide's time.
    """
    import json

    from dialsum.memory import cache as trace_cache

    path = (
        trace_cache.default_cache_dir()
        / f"facts-{trace_cache.cache_key('facts', model_config)}.json"
    )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return ModelFacts(model_id, data["params"], data["untied_head_params"], data["buffers"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    facts = _build_model_facts(model_id, model_config)
    try:
        from dialsum.core.runs import write_json_atomic

        write_json_atomic(
            path,
            {
                "params": facts.params,
                "untied_head_params": facts.untied_head_params,
                "buffers": facts.buffers,
            },
        )
    except OSError:
        pass  # a read-only cache must never break the guide
    return facts


def _build_model_facts(model_id: str, model_config: PretrainedConfig) -> ModelFacts:
    from dialsum.models.architectures import count_params, model_from_config

    model = model_from_config(model_config, device="meta")
    head = getattr(model, "lm_head", None)
    embed = model.get_input_embeddings()
    untied = 0
    if head is not None and head.weight is not embed.weight:
        untied = head.weight.numel()
    buffers = {name: buffer.numel() for name, buffer in model.named_buffers()}
    return ModelFacts(model_id, count_params(model), untied, buffers)


# --------------------------------------------------------------------------------------
# Simulation memo across GPUs


class _SectionMemo:
    """Remembers simulations of one section across GPUs and plots.

    ``make_plan`` memoizes within one call only; the guide plans ten GPUs that revisit the
    same shapes, and the plots and the breakdown reuse them again.
    """

    def __init__(self, simulator: Simulator) -> None:
        self._simulator = simulator
        self._train: dict[tuple[TrainShape, TrainOptions], MemoryProfile] = {}
        self._generate: dict[tuple[GenerateShape, GenerateOptions], MemoryProfile] = {}

    def train(
        self, config: PretrainedConfig, shape: TrainShape, options: TrainOptions
    ) -> MemoryProfile:
        key = (shape, options)
        if key not in self._train:
            self._train[key] = self._simulator.train(config, shape, options)
        return self._train[key]

    def generate(
        self, config: PretrainedConfig, shape: GenerateShape, options: GenerateOptions
    ) -> MemoryProfile:
        key = (shape, options)
        if key not in self._generate:
            self._generate[key] = self._simulator.generate(config, shape, options)
        return self._generate[key]

    def as_simulator(self) -> Simulator:
        return Simulator(train=self.train, generate=self.generate)

    @property
    def calls(self) -> int:
        return len(self._train) + len(self._generate)


# --------------------------------------------------------------------------------------
# Computing one section


@dataclass
class SectionGuide:
    """Everything the guide shows for one section (computed before anything is written)."""

    name: str
    cfg: SectionConfig
    facts: ModelFacts
    overheads: Overheads
    plans: dict[str, Plan]
    errors: dict[str, str]
    """GPU slug -> why no plan exists (e.g. a precision the GPU lacks)."""
    gpus: list[GPU]
    curves: dict[str, list[tuple[int, int]]]
    """Precision -> [(micro-batch, required bytes incl. overheads)] for the plot."""
    breakdowns: dict[str, MemoryProfile]
    """Precision -> training profile at micro-batch 1."""
    times: Any = None
    """``report_time.SectionTimes``: epoch time vs micro-batch, the old guide's settings."""


def real_sections(config_path: str | Path) -> list[str]:
    """Sections whose model is a real checkpoint (not ``tiny:``), in file order."""
    sections = read_yaml(Path(config_path)).get("sections") or {}
    return [
        name
        for name in sections
        if not load_section(config_path, name).model.name.startswith("tiny:")
    ]


def section_overheads(cfg: SectionConfig) -> Overheads:
    """The overheads ``plan_for_section`` plans with (the section's own safety margin)."""
    return replace(default_overheads(), margin_fraction=cfg.hardware.memory_margin)


def section_train_options(cfg: SectionConfig, precision: str) -> TrainOptions:
    """Training options as the section asks for them, at ``precision`` (no fallback ladder)."""
    t = cfg.training
    return TrainOptions(
        precision=precision,  # type: ignore[arg-type]
        optimizer=resolve_optimizer(t.optimizer),  # type: ignore[arg-type]
        gradient_checkpointing=t.gradient_checkpointing is True,
        lora=cfg.model.lora.enabled,
        lora_rank=cfg.model.lora.rank,
    )


def plot_micro_batches(effective_batch_size: int, cap: int = PLOT_MAX_MICRO_BATCH) -> list[int]:
    """Powers of two up to ``cap`` plus the divisors the planner tries (their traces exist)."""
    powers = {2**k for k in range(cap.bit_length()) if 2**k <= cap}
    return sorted(powers | {d for d in divisors(effective_batch_size) if d <= cap})


def curve_precisions(plans: Sequence[Plan]) -> list[str]:
    """The precisions the plans chose (bf16 GPUs first), plus fp32 as the reference."""
    chosen = sorted({p.precision for p in plans}, key=lambda p: (p != "bf16", p))
    return chosen + (["fp32"] if "fp32" not in chosen else [])


def _compute_section(
    name: str,
    config_path: Path,
    gpus: Sequence[GPU],
    simulator: Simulator,
    advance: Callable[[], None],
) -> SectionGuide:
    from dialsum.memory.section import plan_for_section, section_model_config

    cfg = load_section(config_path, name)
    model_config = section_model_config(cfg)
    facts = model_facts(cfg.model.name, model_config)
    memo = _SectionMemo(simulator)
    plans: dict[str, Plan] = {}
    errors: dict[str, str] = {}
    for gpu in gpus:
        try:
            plans[gpu.slug] = plan_for_section(
                cfg, model_config, gpu=gpu, simulator=memo.as_simulator()
            )
        except ConfigError as exc:
            # One GPU that cannot run the request must not sink the whole guide.
            errors[gpu.slug] = str(exc)
        advance()
    overheads = section_overheads(cfg)
    curves: dict[str, list[tuple[int, int]]] = {}
    breakdowns: dict[str, MemoryProfile] = {}
    tok = cfg.tokenizer
    for precision in curve_precisions(list(plans.values())):
        options = section_train_options(cfg, precision)
        points = []
        for micro in plot_micro_batches(cfg.training.effective_batch_size):
            shape = TrainShape(micro, tok.max_source_length, tok.max_target_length)
            profile = memo.train(model_config, shape, options)
            if micro == 1:
                breakdowns[precision] = profile
            points.append((micro, required_bytes(profile.peak_bytes, overheads)))
        curves[precision] = points
    from dialsum.report.time_side import section_times

    times = section_times(cfg.model.name, model_config, plans, memo.train, overheads)
    advance()
    return SectionGuide(
        name, cfg, facts, overheads, plans, errors, list(gpus), curves, breakdowns, times
    )


# --------------------------------------------------------------------------------------
# Snippets (YAML a user pastes into the section)


def settings_snippet(plan: Plan, cfg: SectionConfig) -> dict[str, Any]:
    """The config keys a section should set to run ``plan``'s GPU without planning again."""
    training: dict[str, Any] = {
        "effective_batch_size": plan.effective_batch_size,
        "micro_batch_size": plan.micro_batch_size,
        # Derived by the trainer; kept here so the config validates micro x accumulation.
        "gradient_accumulation_steps": plan.gradient_accumulation_steps,
        "eval_batch_size": plan.eval_batch_size,
        "precision": plan.precision,
        "gradient_checkpointing": plan.gradient_checkpointing,
    }
    if plan.optimizer != resolve_optimizer(cfg.training.optimizer):
        training["optimizer"] = plan.optimizer  # the fallback ladder changed it
    snippet: dict[str, Any] = {
        "training": training,
        "inference": {"batch_size": plan.generation_batch_size},
    }
    if plan.source_len != cfg.tokenizer.max_source_length:
        snippet["tokenizer"] = {"max_source_length": plan.source_len}
    return snippet


def _yaml_text(data: Any) -> str:
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


# --------------------------------------------------------------------------------------
# Markdown


def _facts_markdown(facts: ModelFacts) -> list[str]:
    lines = [f"- Model: `{facts.model_id}`", f"- Parameters: **{facts.params:,}**"]
    if facts.untied_head_params:
        lines.append(
            f"  (includes an untied `lm_head` of {facts.untied_head_params:,}; a config-only "
            "build in transformers 5.x would tie it and silently drop these)"
        )
    for buffer, count in facts.buffers.items():
        lines.append(f"  (plus a {count:,}-element `{buffer}` buffer, not trained)")
    sizes = ", ".join(
        f"{dtype} {gib(n_bytes):.2f} GiB ({n_bytes / 1e9:.2f} GB)"
        for dtype, n_bytes in ((d, facts.weight_bytes(d)) for d in _WEIGHT_DTYPE_BYTES)
    )
    lines.append(f"- Weights: {sizes}")
    return lines


def _breakdown_markdown(section: SectionGuide) -> list[str]:
    precisions = list(section.breakdowns)
    header = "| category | " + " | ".join(f"{_PRECISION_LABELS.get(p, p)} GiB" for p in precisions)
    lines = [
        f"Training memory at micro-batch 1 ({resolve_optimizer(section.cfg.training.optimizer)}, "
        f"{section.cfg.tokenizer.max_source_length} source / "
        f"{section.cfg.tokenizer.max_target_length} target tokens), tensors only:",
        "",
        header + " |",
        "|---|" + "---:|" * len(precisions),
    ]
    for category in TRAIN_CATEGORIES:
        cells = [_gib_text(section.breakdowns[p].breakdown.get(category, 0)) for p in precisions]
        lines.append(f"| {category.replace('_', ' ')} | " + " | ".join(cells) + " |")
    peaks = [
        f"**{_gib_text(section.breakdowns[p].peak_bytes)}** ({section.breakdowns[p].peak_phase})"
        for p in precisions
    ]
    lines.append("| peak (phase) | " + " | ".join(peaks) + " |")
    return lines


_GPU_TABLE_HEADER = (
    "| GPU | usable GiB | precision | micro-batch | grad. accum. | effective batch "
    "| eval batch | generation batch | grad. checkpointing | train peak GiB "
    "| generation peak GiB | fits | step time | epoch time (12,457 dialogues) |\n"
    "|---|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---|---:|---:|"
)


def _gpu_row(plan: Plan, overheads: Overheads, note: int) -> str:
    generate_bytes = required_bytes(plan.generate_profile.peak_bytes, overheads)
    cells = [
        f"{plan.gpu.slug}",
        _gib_text(plan.usable_bytes),
        _PRECISION_LABELS.get(plan.precision, plan.precision),
        str(plan.micro_batch_size),
        str(plan.gradient_accumulation_steps),
        str(plan.effective_batch_size),
        str(plan.eval_batch_size),
        str(plan.generation_batch_size),
        _yes_no(plan.gradient_checkpointing),
        _gib_text(plan.required_bytes),
        _gib_text(generate_bytes),
        f"{_yes_no(plan.fits)} [{note}]",
        *time_cells(plan),
    ]
    return "| " + " | ".join(cells) + " |"


def _notes_markdown(notes: list[tuple[int, str, list[str], list[str]]]) -> list[str]:
    lines = ["<details><summary>Why these numbers (per GPU)</summary>", ""]
    for number, slug, reasons, warnings in notes:
        lines.append(f"[{number}] **{slug}**")
        lines += [f"- warning: {w}" for w in warnings]
        lines += [f"- {r}" for r in reasons]
        lines.append("")
    lines.append("</details>")
    return lines


def _snippets_markdown(section: SectionGuide) -> list[str]:
    # GPUs that get the same settings share one block: fewer blocks to scroll past.
    groups: dict[str, list[str]] = {}
    for slug, plan in section.plans.items():
        text = _yaml_text(settings_snippet(plan, section.cfg))
        if not plan.fits:
            text = "# predicted NOT to fit, see the notes above\n" + text
        groups.setdefault(text, []).append(slug)
    lines = [f"Ready to paste into `sections.{section.name}`:", ""]
    for text, slugs in groups.items():
        lines += [f"{', '.join(slugs)}:", "", "```yaml", text.rstrip(), "```", ""]
    return lines


def section_markdown(section: SectionGuide, plot_name: str) -> str:
    """One model section of the guide."""
    effective = section.cfg.training.effective_batch_size
    lines = [f"## {section.name}", ""]
    lines += _facts_markdown(section.facts)
    lines += [""] + _breakdown_markdown(section) + [""]
    lines += [
        f"Per GPU. The effective batch **{effective}** (`training.effective_batch_size`) is "
        "kept on every GPU: micro-batch x accumulation is always "
        f"{effective}. Peaks include fragmentation and library workspaces and are compared "
        "with usable memory (total - CUDA context - margin).",
        "",
        _GPU_TABLE_HEADER,
    ]
    notes = []
    for number, (slug, plan) in enumerate(section.plans.items(), start=1):
        lines.append(_gpu_row(plan, section.overheads, number))
        notes.append((number, slug, plan.reasons, plan.warnings))
    for slug, error in section.errors.items():
        flat = " ".join(error.split())  # a table cell holds one line
        lines.append(f"| {slug} | | | | | | | | | | | cannot run: {flat} | | |")
    lines += [""] + _notes_markdown(notes) + [""]
    lines += [f"![training peak vs micro-batch]({plot_name})", ""]
    lines += time_markdown(section.times, plot_name)
    lines += _snippets_markdown(section)
    return "\n".join(lines)


def _library_versions() -> str:
    import torch
    import transformers

    from dialsum import __version__

    return (
        f"dialsum {__version__}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}, Python {platform.python_version()}"
    )


def _overheads_markdown(overheads: Overheads) -> str:
    source = "documented defaults" if overheads.source == "defaults" else "calibration file"
    if overheads.source != "defaults":
        source += f" `{Path(overheads.source).name}`"
        if overheads.gpu:
            source += f" (measured on {overheads.gpu})"
    return (
        f"- Overheads ({source}): CUDA context {overheads.cuda_context_bytes / _MIB:.0f} MiB, "
        f"library workspaces {overheads.library_workspace_bytes / _MIB:.0f} MiB, "
        f"fragmentation {overheads.fragmentation_fraction:.0%} of the peak, safety margin "
        f"{overheads.margin_fraction:.0%} of total memory (`hardware.memory_margin`)."
    )


def _corrections_markdown(sections: Sequence[SectionGuide]) -> list[str]:
    from dialsum.models.architectures import KNOWN_PARAM_COUNTS

    measured = {s.facts.model_id: s.facts.params for s in sections}
    lines = ["### Corrections to the old hand-written guide", ""]
    for model_id, claim in _OLD_GUIDE_PARAM_CLAIMS.items():
        count = measured.get(model_id, KNOWN_PARAM_COUNTS[model_id])
        lines.append(
            f"- `{model_id}` has {count:,} parameters ({gib(count * 4):.2f} GiB in fp32), "
            f"not {claim}."
        )
    lines += [
        "- fp16 for T5/mT5 gives NaN losses (activations overflow fp16's range); the plans use "
        "bf16 where the GPU has it and fp32 otherwise (V100, T4).",
        "- The effective batch is kept on every GPU; the old guide's settings silently gave "
        f"{_OLD_GUIDE_EFFECTIVE_BATCHES} on different GPUs, which changes learning dynamics.",
    ]
    return lines


def how_computed_markdown(sections: Sequence[SectionGuide], simulator_label: str) -> str:
    """The closing section: method, overheads, lengths, versions, corrections."""
    lines = [
        "## How this was computed",
        "",
        f"- Memory: {simulator_label}",
    ]
    if sections:
        lines.append(_overheads_markdown(sections[0].overheads))
        lines.append(TIME_METHOD)
    for s in sections:
        tok, inf = s.cfg.tokenizer, s.cfg.inference
        lines.append(
            f"- `{s.name}`: {tok.max_source_length} source / {tok.max_target_length} target "
            f"tokens (config limits, every row padded to them: a worst case); generation with "
            f"{inf.num_beams} beams, {s.cfg.max_new_tokens} new tokens; optimizer "
            f"{resolve_optimizer(s.cfg.training.optimizer)}."
        )
    lines += [f"- Versions: {_library_versions()}.", ""]
    lines += _corrections_markdown(sections)
    return "\n".join(lines)


_REAL_SIMULATOR_LABEL = (
    "the real model code traced on fake tensors (shapes and autograd real, no weights, no "
    "GPU), two full training steps with AdamW/Adafactor state, CUDA allocator rounding; "
    "generation as encoder pass + one decoder step at the longest cache + logits processing."
)


def guide_markdown(
    sections: Sequence[SectionGuide],
    plot_names: dict[str, str],
    config_name: str,
    simulator_label: str = _REAL_SIMULATOR_LABEL,
) -> str:
    """The whole guide document."""
    lines = [
        "# Batch settings per GPU",
        "",
        f"Computed by `dialsum guide` from `{config_name}` (sections: "
        f"{', '.join(s.name for s in sections)}). Regenerate it after changing models, "
        "lengths or batch sizes; do not edit by hand. Machine-readable settings: the `.yaml` "
        "file next to this one.",
        "",
    ]
    for section in sections:
        lines += [section_markdown(section, plot_names[section.name]), ""]
    lines.append(how_computed_markdown(sections, simulator_label))
    return "\n".join(lines).rstrip() + "\n"


def guide_yaml(sections: Sequence[SectionGuide], config_name: str) -> dict[str, Any]:
    """Machine-readable guide: per section per GPU the settings and the predictions."""
    out: dict[str, Any] = {"generated_by": "dialsum guide", "config": config_name, "sections": {}}
    for s in sections:
        gpus: dict[str, Any] = {}
        for slug, plan in s.plans.items():
            gpus[slug] = {
                "fits": plan.fits,
                "settings": settings_snippet(plan, s.cfg),
                "predicted": {
                    "train_peak_bytes": plan.predicted_peak_bytes,
                    "train_required_bytes": plan.required_bytes,
                    "generate_peak_bytes": plan.generate_profile.peak_bytes,
                    "generate_required_bytes": required_bytes(
                        plan.generate_profile.peak_bytes, s.overheads
                    ),
                    "usable_bytes": plan.usable_bytes,
                    "peak_phase": plan.train_profile.peak_phase,
                    **time_yaml(plan),
                },
                "warnings": list(plan.warnings),
            }
        for slug, error in s.errors.items():
            gpus[slug] = {"fits": False, "error": error}
        out["sections"][s.name] = {
            "model": s.facts.model_id,
            "params": s.facts.params,
            "source_len": s.cfg.tokenizer.max_source_length,
            "target_len": s.cfg.tokenizer.max_target_length,
            "effective_batch_size": s.cfg.training.effective_batch_size,
            "gpus": gpus,
        }
    return out


# --------------------------------------------------------------------------------------
# Plot


def gpu_line_labels(usable: dict[str, int], min_gap_bytes: int) -> list[tuple[int, str]]:
    """One (bytes, label) per group of GPUs whose usable memory is within ``min_gap_bytes``.

    Labels of lines closer than about a text line's height overlap (A100 80GB and H100
    80GB differ by a few MiB; V100 and T4 by 1 GiB on a 130 GiB axis): join them instead.
    """
    groups: list[tuple[int, list[str]]] = []
    for slug, n_bytes in sorted(usable.items(), key=lambda item: item[1]):
        if groups and n_bytes - groups[-1][0] < min_gap_bytes:
            groups[-1][1].append(slug)
        else:
            groups.append((n_bytes, [slug]))
    return [(n_bytes, ", ".join(slugs)) for n_bytes, slugs in groups]


def render_plot(section: SectionGuide, path: Path) -> None:
    """Training need (incl. overheads) vs micro-batch, with each GPU's usable memory."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A bare Figure on the Agg canvas: no pyplot global state, no display needed.
    fig = Figure(figsize=(9, 6), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for precision, points in section.curves.items():
        xs = [m for m, _ in points]
        ax.plot(xs, [gib(b) for _, b in points], marker="o", label=_PRECISION_LABELS[precision])
    usable = {gpu.slug: usable_bytes(gpu, section.overheads) for gpu in section.gpus}
    top_bytes = max([*usable.values(), *(b for pts in section.curves.values() for _, b in pts)])
    # 3% of the axis is about one line of 7-point text on a 6-inch-high figure.
    for n_bytes in usable.values():
        ax.axhline(gib(n_bytes), color="grey", linewidth=0.7, linestyle="--")
    for n_bytes, label in gpu_line_labels(usable, min_gap_bytes=int(0.03 * top_bytes)):
        ax.annotate(
            label,
            (1.0, gib(n_bytes)),
            xycoords=("axes fraction", "data"),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=7,
            color="dimgrey",
        )
    ax.set_xscale("log", base=2)
    micro_batches = sorted({m for points in section.curves.values() for m, _ in points})
    ax.set_xticks(micro_batches, [str(m) for m in micro_batches])
    ax.minorticks_off()
    ax.set_xlabel("micro-batch (rows)")
    ax.set_ylabel("predicted training need (GiB, incl. overheads)")
    ax.set_title(
        f"{section.name}: {section.facts.model_id}, "
        f"{section.cfg.tokenizer.max_source_length}/{section.cfg.tokenizer.max_target_length} "
        f"tokens, {resolve_optimizer(section.cfg.training.optimizer)}"
    )
    ax.legend(loc="upper left")
    ax.grid(True, which="major", alpha=0.3)
    fig.subplots_adjust(right=0.78)
    fig.savefig(path, format="png")


# --------------------------------------------------------------------------------------
# Writing


@contextmanager
def _staged_pngs(targets: dict[str, Path]) -> Iterator[dict[str, Path]]:
    """Temp paths next to each target; removed unless the caller moved them into place."""
    staged: dict[str, Path] = {}
    try:
        for key, target in targets.items():
            staged[key] = staged_path(target, ".png")
        yield staged
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)


@dataclass
class GuideResult:
    """What ``build_guide`` wrote and planned."""

    markdown_path: Path
    yaml_path: Path
    plot_paths: dict[str, Path]
    plans: dict[str, dict[str, Plan]]
    """Section -> GPU slug -> Plan."""
    errors: dict[str, dict[str, str]] = field(default_factory=dict)
    """Section -> GPU slug -> why there is no plan."""
    seconds: float = 0.0

    @property
    def paths(self) -> list[Path]:
        return [self.markdown_path, self.yaml_path, *self.plot_paths.values()]

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "paths": [str(p) for p in self.paths],
            "plans": {
                section: {slug: plan.to_json_dict() for slug, plan in plans.items()}
                for section, plans in self.plans.items()
            },
            "errors": self.errors,
            "seconds": self.seconds,
        }


def plot_path(out: Path, section: str) -> Path:
    return out.parent / f"{out.stem}-{section}.png"


@contextmanager
def _progress(enabled: bool, total_steps: int) -> Iterator[Callable[[str], Callable[[], None]]]:
    """Yields ``start(section) -> advance()``; a no-op when progress is off."""
    if not enabled:
        yield lambda _section: lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    from rich.console import Console

    # stderr: stdout stays clean for what the command prints (tables, JSON).
    with Progress(*columns, console=Console(stderr=True)) as progress:

        def start(section: str) -> Callable[[], None]:
            task = progress.add_task(f"planning {section}", total=total_steps)
            return lambda: progress.advance(task)

        yield start


def _resolve_gpus(gpus: Sequence[str] | None) -> list[GPU]:
    return catalog() if gpus is None else [resolve_gpu(spec) for spec in gpus]


def _prefill_section(config_path: Path, name: str, gpu_slugs: list[str]) -> str:
    """Worker: plan one section on every GPU so its traces land in the disk cache."""
    devices = [resolve_gpu(slug) for slug in gpu_slugs]
    _compute_section(name, config_path, devices, Simulator(), lambda: None)
    return name


def _prefill_trace_cache(
    config_path: Path, names: Sequence[str], devices: Sequence[GPU], progress: bool
) -> None:
    """Trace sections in parallel processes (one per core) before the ordered pass.

    A trace runs Python on one core, so on a 2-core machine two sections trace at once.
    Workers only fill the on-disk trace cache; the main pass then reads it. Catalog GPUs
    are passed by slug; a detected or custom GPU keeps the sequential path.
    """
    import concurrent.futures as futures
    import multiprocessing

    workers = min(len(names), os.cpu_count() or 1)
    slugs = [g.slug for g in devices]
    known = {g.slug for g in catalog()}
    if workers < 2 or not set(slugs) <= known:
        return
    if progress:
        import sys

        print(f"tracing {len(names)} sections in {workers} processes...", file=sys.stderr)
    context = multiprocessing.get_context("spawn")  # no fork after torch threads started
    with futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        jobs = [pool.submit(_prefill_section, config_path, n, slugs) for n in names]
        for job in futures.as_completed(jobs):
            job.result()  # re-raise a worker's error here


def build_guide(
    config_path: str | Path,
    *,
    sections: list[str] | None = None,
    gpus: list[str] | None = None,
    out: Path = Path("docs/guide.md"),
    simulator: Simulator | None = None,
    progress: bool = True,
) -> GuideResult:
    """Plan every section on every GPU and write the guide (Markdown, YAML, plots).

    Everything is computed before anything is written, and every file is replaced
    atomically: a failure half-way leaves an earlier guide untouched.
    """
    started = time.perf_counter()
    config_path = Path(config_path)
    out = Path(out)
    names = sections if sections is not None else real_sections(config_path)
    devices = _resolve_gpus(gpus)
    sim = simulator if simulator is not None else Simulator()
    if simulator is None:
        _prefill_trace_cache(config_path, names, devices, progress)
    computed: list[SectionGuide] = []
    with _progress(progress, len(devices) + 1) as start:
        for name in names:
            computed.append(_compute_section(name, config_path, devices, sim, start(name)))

    plots = {s.name: plot_path(out, s.name) for s in computed}
    time_plots = {
        s.name: time_plot_path(plots[s.name])
        for s in computed
        if s.times is not None and any(c.points for c in s.times.curves)
    }
    label = _REAL_SIMULATOR_LABEL if simulator is None else _custom_label(sim)
    markdown = guide_markdown(
        computed, {k: p.name for k, p in plots.items()}, config_path.name, label
    )
    yaml_path = out.with_suffix(".yaml")
    targets = {**plots, **{f"{name}-time": path for name, path in time_plots.items()}}
    with _staged_pngs(targets) as staged:
        for section in computed:
            render_plot(section, staged[section.name])
            if section.name in time_plots:
                render_time_plot(
                    f"{section.name}: {section.facts.model_id}, estimated epoch time",
                    section.times.curves,
                    staged[f"{section.name}-time"],
                )
        write_text_atomic(yaml_path, _yaml_text(guide_yaml(computed, config_path.name)))
        write_text_atomic(out, markdown)
        for name, tmp in staged.items():
            commit(tmp, targets[name])
    return GuideResult(
        markdown_path=out,
        yaml_path=yaml_path,
        plot_paths=targets,
        plans={s.name: dict(s.plans) for s in computed},
        errors={s.name: dict(s.errors) for s in computed if s.errors},
        seconds=time.perf_counter() - started,
    )


def _custom_label(simulator: Simulator) -> str:
    if simulator == Simulator():
        return _REAL_SIMULATOR_LABEL
    return "an injected simulator (not the fake-tensor trace); numbers are only as good as it."
