"""The guide's Markdown: per section the model facts, the memory breakdown, the per-GPU
table with reasons, the time plot and the old guide's settings, the config snippets; then
how it was computed and the corrections to the old hand-written guide.

It formats what ``report.guide`` computed (one ``SectionGuide`` per section); the only
arithmetic here is units, the generation need with overheads and each plan's epoch time.
"""

from __future__ import annotations

import platform
import re
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

from dialsum.memory.overheads import Overheads, required_bytes
from dialsum.memory.plan import Plan
from dialsum.memory.request import resolve_optimizer
from dialsum.models.kinds import KNOWN_PARAM_COUNTS, is_causal, shipped_config_fields
from dialsum.report.facts import WEIGHT_DTYPE_BYTES, ModelFacts
from dialsum.report.formats import PRECISION_LABELS, TRAIN_CATEGORIES, gib, gib_text, yes_no
from dialsum.report.plots import time_plot_path
from dialsum.report.seed_guide import effective_batches_text, param_claims
from dialsum.report.snippets import settings_snippet, yaml_text
from dialsum.report.time_side import (
    GUIDE_EPOCH_DIALOGUES,
    PublishedRow,
    SectionTimes,
    SeedRow,
    plan_epoch,
)
from dialsum.speed.step_time import format_duration

if TYPE_CHECKING:
    from dialsum.report.section_guide import SectionGuide

_MIB = 2**20

REAL_SIMULATOR_LABEL = (
    "the real model code traced on fake tensors (shapes and autograd real, no weights, no "
    "GPU), two full training steps with AdamW/Adafactor state, CUDA allocator rounding; "
    "generation as encoder pass + one decoder step at the longest cache + logits processing."
)
"""What the guide says the memory numbers come from when the real simulator ran."""

TIME_METHOD = (
    "- Time (columns *step time* and *epoch time*, `~` = estimated): FLOPs, bytes moved and "
    "kernels of the traced step (`torch.utils.flop_counter` on the same fake tensors), "
    "step time = max(FLOPs / (dense peak x efficiency), bytes / memory bandwidth, kernels x "
    "10 us issue time) with data-sheet peaks and efficiency 0.3 (bf16/fp16), 0.6 (fp32) "
    "until `dialsum probe` measures it on the GPU; an epoch is "
    f"{GUIDE_EPOCH_DIALOGUES:,} dialogues padded to the config limits (an upper bound)."
)


def _facts_markdown(facts: ModelFacts) -> list[str]:
    lines = [f"- Model: `{facts.model_id}`", f"- Parameters: **{facts.params:,}**"]
    fields = shipped_config_fields(facts.model_id)
    if facts.untied_head_params and fields is not None and is_causal(SimpleNamespace(**fields)):
        # A causal LM's head follows tie_word_embeddings as published: nothing to warn.
        lines.append(f"  (includes an untied `lm_head` of {facts.untied_head_params:,})")
    elif facts.untied_head_params:
        lines.append(
            f"  (includes an untied `lm_head` of {facts.untied_head_params:,}; a config-only "
            "build in transformers 5.x would tie it and silently drop these)"
        )
    for buffer, count in facts.buffers.items():
        lines.append(f"  (plus a {count:,}-element `{buffer}` buffer, not trained)")
    sizes = ", ".join(
        f"{dtype} {gib(n_bytes):.2f} GiB ({n_bytes / 1e9:.2f} GB)"
        for dtype, n_bytes in ((d, facts.weight_bytes(d)) for d in WEIGHT_DTYPE_BYTES)
    )
    lines.append(f"- Weights: {sizes}")
    return lines


def _breakdown_markdown(section: SectionGuide) -> list[str]:
    precisions = list(section.breakdowns)
    header = "| category | " + " | ".join(f"{PRECISION_LABELS.get(p, p)} GiB" for p in precisions)
    lines = [
        f"Training memory at micro-batch 1 ({resolve_optimizer(section.cfg.training.optimizer)}, "
        f"{section.cfg.tokenizer.max_source_length} source / "
        f"{section.cfg.tokenizer.max_target_length} target tokens), tensors only:",
        "",
        header + " |",
        "|---|" + "---:|" * len(precisions),
    ]
    # QLoRA/LoRA profiles split their weights (weights_4bit, adapters, ...): list those too.
    extra = {c for p in precisions for c in section.breakdowns[p].breakdown} - set(TRAIN_CATEGORIES)
    for category in [*TRAIN_CATEGORIES, *sorted(extra)]:
        cells = [gib_text(section.breakdowns[p].breakdown.get(category, 0)) for p in precisions]
        lines.append(f"| {category.replace('_', ' ')} | " + " | ".join(cells) + " |")
    peaks = [
        f"**{gib_text(section.breakdowns[p].peak_bytes)}** ({section.breakdowns[p].peak_phase})"
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
        gib_text(plan.usable_bytes),
        PRECISION_LABELS.get(plan.precision, plan.precision),
        str(plan.micro_batch_size),
        str(plan.gradient_accumulation_steps),
        str(plan.effective_batch_size),
        str(plan.eval_batch_size),
        str(plan.generation_batch_size),
        yes_no(plan.gradient_checkpointing),
        gib_text(plan.required_bytes),
        gib_text(generate_bytes),
        f"{yes_no(plan.fits)} [{note}]",
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
        text = yaml_text(settings_snippet(plan, section.cfg))
        if not plan.fits:
            text = "# predicted NOT to fit, see the notes above\n" + text
        groups.setdefault(text, []).append(slug)
    lines = [f"Ready to paste into `sections.{section.name}`:", ""]
    for text, slugs in groups.items():
        lines += [f"{', '.join(slugs)}:", "", "```yaml", text.rstrip(), "```", ""]
    return lines


def time_cells(plan) -> list[str]:
    """The guide table's "step time" and "epoch time" cells for ``plan``."""
    step = plan.timing.step if plan.timing else None
    epoch = plan_epoch(plan)
    mark = "" if step is None or step.calibrated else "~"
    return [
        f"{mark}{format_duration(step.seconds)}" if step else "-",
        f"{mark}{format_duration(epoch.seconds)}" if epoch else "-",
    ]


def time_markdown(times: SectionTimes | None, memory_plot_name: str) -> list[str]:
    """The time plot and the old guide's settings, for the section's part of the guide."""
    if times is None:
        return []
    lines = []
    if any(c.points for c in times.curves):
        name = time_plot_path(Path(memory_plot_name)).name
        lines += [f"![estimated epoch time vs micro-batch]({name})", ""]
    lines += seed_markdown(times.seeds)
    lines += [""] if times.seeds else []
    lines += published_markdown(times.published)
    return lines + ([""] if times.published else [])


def seed_markdown(rows: Sequence[SeedRow]) -> list[str]:
    """The side-by-side table (empty when the model was not in the old guide)."""
    if not rows:
        return []
    lines = [
        f"The old hand-written guide's settings on the same GPUs, estimated epoch time for "
        f"{GUIDE_EPOCH_DIALOGUES:,} dialogues (same precision and optimizer as the plan, so "
        "only micro-batch and accumulation differ; its effective batch also differed):",
        "",
        "| GPU | old micro-batch x accum. (effective) | old fits | old epoch "
        "| planned micro-batch x accum. (effective) | planned epoch | speed-up (estimated) |",
        "|---|---|---|---:|---|---:|---:|",
    ]
    for r in rows:
        speedup = f"{r.speedup:.2f}x" if r.speedup is not None else "-"
        lines.append(
            f"| {r.slug} ({r.gpu_label}) | {r.micro} x {r.accumulation} "
            f"({r.micro * r.accumulation}) | {'yes' if r.fits else 'no'} "
            f"| ~{format_duration(r.seed_epoch.seconds if r.seed_epoch else None)} "
            f"| {r.plan_micro} x {r.plan_accumulation} ({r.plan_micro * r.plan_accumulation}) "
            f"| ~{format_duration(r.plan_epoch.seconds if r.plan_epoch else None)} "
            f"| {speedup} |"
        )
    return lines


def published_markdown(rows: Sequence[PublishedRow]) -> list[str]:
    """Published hand-set micro-batches next to the plan (empty when none is known)."""
    lines: list[str] = []
    for setting in dict.fromkeys(r.setting for r in rows):
        lines += [
            f"Hand-set by a team on this task: micro-batch {setting.micro} ({setting.source}; "
            f"{setting.recipe}). On each GPU at this section's effective batch (accumulation "
            "fills it up), same method, precision and optimizer as the plan, estimated epoch "
            f"time for {GUIDE_EPOCH_DIALOGUES:,} dialogues:",
            "",
            "| GPU | hand-set micro-batch x accum. | fits | epoch "
            "| planned micro-batch x accum. | planned epoch | speed-up (estimated) |",
            "|---|---|---|---:|---|---:|---:|",
        ]
        for r in (p.row for p in rows if p.setting == setting):
            speedup = f"{r.speedup:.2f}x" if r.speedup is not None else "-"
            lines.append(
                f"| {r.slug} ({r.gpu_label}) | {r.micro} x {r.accumulation} "
                f"| {'yes' if r.fits else 'no'} "
                f"| ~{format_duration(r.seed_epoch.seconds if r.seed_epoch else None)} "
                f"| {r.plan_micro} x {r.plan_accumulation} "
                f"| ~{format_duration(r.plan_epoch.seconds if r.plan_epoch else None)} "
                f"| {speedup} |"
            )
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


def _torch_version() -> str:
    """``torch.__version__`` (with its build tag, ``2.15.0+cu132``, which the package
    metadata lacks), read from torch's ``version.py`` so that a guide read back from the
    answer cache does not import torch (seconds)."""
    try:
        text = Path(str(metadata.distribution("torch").locate_file("torch/version.py")))
        found = re.search(r"^__version__ = '([^']+)'", text.read_text(), re.MULTILINE)
    except (metadata.PackageNotFoundError, OSError):
        found = None
    if found is not None:
        return found.group(1)
    import torch

    return torch.__version__


def _library_versions() -> str:
    from dialsum import __version__

    return (
        f"dialsum {__version__}, torch {_torch_version()}, transformers "
        f"{metadata.version('transformers')}, Python {platform.python_version()}"
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
    measured = {s.facts.model_id: s.facts.params for s in sections}
    lines = ["### Corrections to the old hand-written guide", ""]
    for model_id, claim in param_claims().items():
        count = measured.get(model_id, KNOWN_PARAM_COUNTS[model_id])
        lines.append(
            f"- `{model_id}` has {count:,} parameters ({gib(count * 4):.2f} GiB in fp32), "
            f"not {claim}."
        )
    lines += [
        "- fp16 for T5/mT5 gives NaN losses (activations overflow fp16's range); the plans use "
        "bf16 where the GPU has it and fp32 otherwise (V100, T4).",
        "- The effective batch is kept on every GPU; the old guide's settings silently gave "
        f"{effective_batches_text()} on different GPUs, which changes learning dynamics.",
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


def guide_markdown(
    sections: Sequence[SectionGuide],
    plot_names: dict[str, str],
    config_name: str,
    simulator_label: str = REAL_SIMULATOR_LABEL,
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
