"""Plan the GPU validation's runs ahead, in parallel processes, to fill the trace cache.

The validation (``bench/gpu_validate.py``) plans each architecture for the real GPU and
for every emulated smaller one; each plan traces the model on fake tensors, Python on one
core. Tracing them all first in parallel processes leaves the real runs, the emulations
and the micro-batch search only cache reads.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dialsum.checks.gpu_runs import section
from dialsum.trace.cache import fill_in_processes


@dataclass(frozen=True)
class PlanTask:
    """One plan the validation will make: a section (with overrides) on a device."""

    config: Path
    section: str
    overrides: tuple[str, ...]
    gpu: Any = None  # a speed.gpus.GPU; None: the section's hardware.gpu / memory cap


def plan_in_worker(task: PlanTask) -> str:
    """Make ``task``'s plan as the run will (same model config, same data lengths), so its
    traces land in the on-disk trace cache."""
    from dialsum.memory.section import plan_for_section
    from dialsum.models.setup import setup_model
    from dialsum.training.run_data import length_report, prompt_format, read_tables

    cfg = section(task.config, task.section, list(task.overrides))
    model, tokenizer = setup_model(cfg)
    train_table, _ = read_tables(cfg, dev=False, echo=lambda *_: None)
    prompt = prompt_format(cfg, model, tokenizer)  # a causal LM: the prompt is the source
    report = length_report(cfg, train_table, tokenizer, prompt)
    plan_for_section(cfg, model.config, report=report, gpu=task.gpu)
    return task.section


def prefill_trace_cache(tasks: list[PlanTask], workers: int, echo=print) -> None:
    """Trace every plan in parallel processes first (a trace is Python on one core; the
    real run, the emulated devices and the search then read the cache). A failed worker
    only costs time: the main pass traces what is missing."""
    if workers < 2 or not tasks:
        return
    started = time.perf_counter()
    for job in fill_in_processes(plan_in_worker, [(task,) for task in tasks], workers):
        try:
            job.result()
        except Exception as exc:  # noqa: BLE001 - reported; the main pass recomputes
            echo(f"prefill: a plan failed in a worker ({exc}); it is traced again later")
    echo(f"prefill: {len(tasks)} plans traced in {time.perf_counter() - started:.0f}s")
