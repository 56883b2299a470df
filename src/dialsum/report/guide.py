"""The per-GPU guide, computed and written: Markdown + YAML + plots per model section.

Teams used to keep a hand-written "batch size per GPU" document; it guessed parameter
counts, let the effective batch drift from GPU to GPU and went stale with every length
change. ``build_guide`` plans every (section, GPU) pair with the memory planner and writes
what the team needs: exact model facts, the memory breakdown, per-GPU settings that keep
the effective batch, and ready-to-paste config snippets.

This module computes a section (``SectionGuide``), fills the trace cache in parallel
processes first, and writes the files; the text, YAML and plots are drawn by
``report.markdown``, ``report.snippets`` and ``report.plots``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dialsum.core.atomic import commit, staged_path
from dialsum.core.config_load import load_section, read_yaml
from dialsum.core.errors import ConfigError
from dialsum.core.runs import write_text_atomic
from dialsum.memory.overheads import required_bytes
from dialsum.memory.plan import Plan
from dialsum.memory.simulator import SimulationMemo, Simulator
from dialsum.report.facts import model_facts
from dialsum.report.markdown import REAL_SIMULATOR_LABEL, guide_markdown
from dialsum.report.plots import plot_path, render_plot, render_time_plot, time_plot_path
from dialsum.report.section_guide import SectionGuide
from dialsum.report.snippets import guide_yaml, yaml_text
from dialsum.report.time_side import section_times
from dialsum.speed.gpus import GPU, catalog, resolve_gpu
from dialsum.step.geometry import divisors
from dialsum.trace import answer_cache
from dialsum.trace.cache import fill_in_processes
from dialsum.trace.profile import MemoryProfile, TrainShape

PLOT_MAX_MICRO_BATCH = 32
"""Largest micro-batch on the plots: past it no catalog GPU fits a base-size model."""


# --------------------------------------------------------------------------------------
# Computing one section


def real_sections(config_path: str | Path) -> list[str]:
    """Sections whose model is a real checkpoint (not ``tiny:``), in file order."""
    sections = read_yaml(Path(config_path)).get("sections") or {}
    return [
        name
        for name in sections
        if not load_section(config_path, name).model.name.startswith("tiny:")
    ]


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
    from dialsum.memory.fit import plan_train_options, requested_options
    from dialsum.memory.section import (
        gpu_overheads,
        plan_for_section,
        request_for_section,
        section_model_config,
    )

    cfg = load_section(config_path, name)
    model_config = section_model_config(cfg)
    facts = model_facts(cfg.model.name, model_config)
    memo = SimulationMemo(simulator)
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
    overheads = gpu_overheads(cfg)
    curves: dict[str, list[tuple[int, int]]] = {}
    breakdowns: dict[str, MemoryProfile] = {}
    tok = cfg.tokenizer
    request = request_for_section(cfg, model_config)
    for precision in curve_precisions(list(plans.values())):
        options = requested_options(request, precision)
        points = []
        for micro in plot_micro_batches(cfg.training.effective_batch_size):
            shape = TrainShape(micro, tok.max_source_length, tok.max_target_length)
            profile = memo.train(model_config, shape, options)
            if micro == 1:
                breakdowns[precision] = profile
            points.append((micro, required_bytes(profile.peak_bytes, overheads)))
        curves[precision] = points
    times = section_times(
        cfg.model.name,
        model_config,
        plans,
        memo.train,
        overheads,
        lambda plan: plan_train_options(request, plan),
    )
    advance()
    return SectionGuide(
        name, cfg, facts, overheads, plans, errors, list(gpus), curves, breakdowns, times
    )


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
    """Worker: plan one section on every GPU; its traces land in the disk cache and the
    section itself in the answer cache, where the main pass reads it."""
    devices = [resolve_gpu(slug) for slug in gpu_slugs]
    section = _compute_section(name, config_path, devices, Simulator(), lambda: None)
    answer_cache.store("guide", _section_key(config_path, name, devices), section)
    return name


def _section_key(config_path: Path, name: str, devices: Sequence[GPU]) -> str | None:
    """Key of a section's computed guide (``trace.answer_cache``): the resolved section,
    the GPUs, the model's config bytes; None for a model only the hub knows."""
    cfg = load_section(config_path, name)
    model = answer_cache.model_source(cfg.model.name)
    if model is None:
        return None
    return answer_cache.answer_key(
        {
            "kind": "guide-section",
            "section": answer_cache.plain_dict(cfg),
            "gpus": [answer_cache.plain_dict(g) for g in devices],
            "model": model,
        }
    )


def _tracing_cost(config_path: Path, name: str) -> int:
    """Rough work of tracing a section (layers x width x vocabulary), to start the
    largest first: the others then share the remaining core."""
    try:
        cfg = load_section(config_path, name)
        fields = json.loads(_config_text(cfg.model.name))
    except (OSError, ValueError, ConfigError):
        return 0
    layers = sum(int(fields.get(k) or 0) for k in _LAYER_KEYS) or 1
    width = int(fields.get("d_model") or fields.get("hidden_size") or 1)
    return layers * width * int(fields.get("vocab_size") or 1)


_LAYER_KEYS = (
    "num_layers",
    "num_decoder_layers",
    "encoder_layers",
    "decoder_layers",
    "num_hidden_layers",  # decoder-only LLMs
)


def _config_text(name: str) -> str:
    from importlib.resources import files

    shipped = files("dialsum.models") / "configs" / f"{name.replace('/', '--')}.json"
    if shipped.is_file():
        return shipped.read_text(encoding="utf-8")
    path = Path(name)
    return (path / "config.json" if path.is_dir() else path).read_text(encoding="utf-8")


def _prefill_trace_cache(
    config_path: Path, names: Sequence[str], devices: Sequence[GPU], progress: bool
) -> None:
    """Trace sections in parallel processes (one per core) before the ordered pass.

    A trace runs Python on one core, so on a 2-core machine two sections trace at once,
    the largest first (``_tracing_cost``). Workers only fill the on-disk trace cache; the
    main pass then reads it. Catalog GPUs are passed by slug; a detected or custom GPU
    keeps the sequential path.
    """
    workers = min(len(names), os.cpu_count() or 1)
    slugs = [g.slug for g in devices]
    known = {g.slug for g in catalog()}
    if workers < 2 or not set(slugs) <= known:
        return
    if progress:
        import sys

        print(f"tracing {len(names)} sections in {workers} processes...", file=sys.stderr)
    ordered = sorted(names, key=lambda name: -_tracing_cost(config_path, name))
    calls = [(config_path, name, slugs) for name in ordered]
    for job in fill_in_processes(_prefill_section, calls, workers):
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

    Everything is computed, and every plot drawn to a temp file, before anything is
    written: a failure there leaves an earlier guide untouched. The files are then replaced
    one by one (YAML, Markdown, each plot), each atomically (a reader never sees half a
    file) but not all together: a crash between two renames can leave new files next to
    old ones.
    """
    started = time.perf_counter()
    config_path = Path(config_path)
    out = Path(out)
    names = sections if sections is not None else real_sections(config_path)
    devices = _resolve_gpus(gpus)
    sim = simulator if simulator is not None else Simulator()
    # A section computed before (same section, GPUs, model, code, libraries) is read back
    # whole; only the real simulator's sections are kept.
    keys = {n: _section_key(config_path, n, devices) for n in names} if simulator is None else {}
    done = {n: answer_cache.load("guide", key) for n, key in keys.items()}
    done = {n: guide for n, guide in done.items() if isinstance(guide, SectionGuide)}
    if simulator is None:
        _prefill_trace_cache(config_path, [n for n in names if n not in done], devices, progress)
        for name, key in keys.items():
            if name not in done and isinstance(
                hit := answer_cache.load("guide", key), SectionGuide
            ):
                done[name] = hit
    computed: list[SectionGuide] = []
    with _progress(progress, len(devices) + 1) as start:
        for name in names:
            advance = start(name)
            if name in done:
                computed.append(done[name])
                for _ in range(len(devices) + 1):
                    advance()
                continue
            computed.append(_compute_section(name, config_path, devices, sim, advance))
            if name in keys:
                answer_cache.store("guide", keys[name], computed[-1])
    label = REAL_SIMULATOR_LABEL if simulator is None else _custom_label(sim)
    plot_paths = _write_guide(computed, config_path.name, out, label)
    return GuideResult(
        markdown_path=out,
        yaml_path=out.with_suffix(".yaml"),
        plot_paths=plot_paths,
        plans={s.name: dict(s.plans) for s in computed},
        errors={s.name: dict(s.errors) for s in computed if s.errors},
        seconds=time.perf_counter() - started,
    )


def _write_guide(
    computed: Sequence[SectionGuide], config_name: str, out: Path, label: str
) -> dict[str, Path]:
    """Draw the plots to temp files, then replace the YAML, the Markdown and each plot, in
    that order (see ``build_guide``). Returns the plot paths."""
    plots = {s.name: plot_path(out, s.name) for s in computed}
    time_plots = {
        s.name: time_plot_path(plots[s.name])
        for s in computed
        if s.times is not None and any(c.points for c in s.times.curves)
    }
    markdown = guide_markdown(computed, {k: p.name for k, p in plots.items()}, config_name, label)
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
        write_text_atomic(yaml_path, yaml_text(guide_yaml(computed, config_name)))
        write_text_atomic(out, markdown)
        for name, tmp in staged.items():
            commit(tmp, targets[name])
    return targets


def _custom_label(simulator: Simulator) -> str:
    if simulator == Simulator():
        return REAL_SIMULATOR_LABEL
    return "an injected simulator (not the fake-tensor trace); numbers are only as good as it."
