"""The plan against dialsum's own runs on a device, and under emulated smaller devices.

The building blocks of ``bench/gpu_validate.py``. Nothing here is a re-creation of a run:

- ``real_run`` writes a model folder (random weights from an architecture config, the tiny
  tokenizer: memory does not depend on the values, and nothing is downloaded) and runs
  ``recipe.run_training`` and ``predict.run_predict`` on it, the functions behind
  ``dialsum train`` and ``dialsum predict``. The run plans itself for the device, applies
  the plan and writes each phase's measured peaks next to the planned ones
  (``metrics.json``, ``run_memory``). Every dialogue fills the source length, every
  summary the target length, and generation runs to its full length
  (``inference.min_new_tokens``): the phases run at the shapes the plan is for.
- ``emulated`` plans for a smaller device and runs the guarded trainer (built by
  ``trainer_setup.training_arguments``, as ``train`` builds it), evaluation and generation at the
  planned settings under that device's limit, counting OOMs (the guard's recoveries, the
  generation's batch splits); then it searches the largest micro-batch that trains
  without an OOM. The limit is ``torch.cuda.set_per_process_memory_fraction`` on a GPU (what
  ``dialsum probe`` does) and the live-bytes cap of ``hardware.memory_cap_gib`` on a CPU.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from dialsum.checks.cpu_loop import fixed_rows
from dialsum.core.config_load import load_section
from dialsum.core.config_schema import SectionConfig
from dialsum.core.csv_files import write_csv_atomic
from dialsum.core.errors import first_line
from dialsum.data.dataset import read_dialogue_csv
from dialsum.step.geometry import BatchGeometry
from dialsum.training.oom_guard import GuardState, OOMUnrecoverable, is_oom

GIB, MIB = 2**30, 2**20


# -- inputs ------------------------------------------------------------------------------


def write_long_csvs(sample: Path, out: Path, rows: dict[str, int], repeat: int = 4) -> dict:
    """Train/dev/test CSVs whose every dialogue (and summary) is ``repeat`` bundled ones
    joined, so tokenization cuts each at the section's limits; ``rows`` per split."""
    source = read_dialogue_csv(sample / "train.csv", "train").records
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, count in rows.items():
        path = out / f"{split}.csv"
        lines = []
        for i in range(count):
            picked = [source[(i * repeat + k) % len(source)] for k in range(repeat)]
            dialogue = "\n".join(r.dialogue for r in picked)
            summary = " ".join(r.summary or "" for r in picked)
            lines.append([f"{split}_{i}", dialogue] + ([] if split == "test" else [summary]))
        header = ["fname", "dialogue"] + ([] if split == "test" else ["summary"])
        write_csv_atomic(path, header, lines)
        paths[split] = path
    return paths


def write_model_folder(model_config, family: str, texts: list[str], out: Path) -> Path:
    """A model folder ``load_model`` reads: random weights for ``model_config`` and a tiny
    tokenizer trained on ``texts`` (its ids fit any vocabulary above 2,000)."""
    from dialsum.models.architectures import model_from_config
    from dialsum.models.loading import save_pretrained, set_generation_ids
    from dialsum.models.tiny import train_tiny_tokenizer

    tokenizer = train_tiny_tokenizer(texts, family=family)  # type: ignore[arg-type]
    torch.manual_seed(0)
    model = model_from_config(copy.deepcopy(model_config))
    set_generation_ids(model, tokenizer)
    save_pretrained(model, tokenizer, out)
    del model
    gc.collect()
    return out


def section(config: Path, name: str, overrides: list[str]) -> SectionConfig:
    """The section with the generation forced to its full length (the plan's longest)."""
    cfg = load_section(config, name, overrides)
    return load_section(
        config, name, [*overrides, f"inference.min_new_tokens={cfg.max_new_tokens}"]
    )


# -- the real run ----------------------------------------------------------------------


def real_run(cfg: SectionConfig, out: Path, echo=None) -> dict[str, Any]:
    """``dialsum train`` (with its evaluation) and ``dialsum predict`` on ``cfg``; the
    planned vs measured memory of each phase, as the run recorded it."""
    from dialsum.inference.predict import GenerationStats, run_predict
    from dialsum.training.recipe import run_training

    echo = echo or (lambda *_: None)
    started = time.perf_counter()
    result = run_training(cfg, echo=echo)
    stats = GenerationStats()
    # Memory is measured here, not text: an untrained tiny model may write only empty ones.
    run_predict(cfg, checkpoint=result.run.best, output=out / f"{cfg.name}.csv", echo=echo,
                stats=stats, require_text=False)  # fmt: skip
    metrics = json.loads(result.run.metrics.read_text(encoding="utf-8"))
    memory = metrics.get("memory", {})
    plan = json.loads(result.run.plan.read_text(encoding="utf-8"))
    return {
        "settings": {k: plan.get(k) for k in _SETTINGS_KEYS},
        "measured": bool(memory.get("measured")),
        "phases": phase_rows(memory),
        "oom_recoveries": metrics.get("oom_recoveries"),
        "predict_oom_splits": stats.oom_splits,
        "run": str(result.run.path),
        "seconds": round(time.perf_counter() - started, 1),
    }


_SETTINGS_KEYS = ("gpu", "micro_batch_size", "gradient_accumulation_steps", "precision",
                  "optimizer", "gradient_checkpointing", "source_len", "eval_batch_size",
                  "generation_batch_size", "generation_token_budget")  # fmt: skip


def phase_rows(memory: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every planned phase with its measurement (None where nothing was measured)."""
    from dialsum.training.run_memory import PHASES

    planned_all, measured_all = memory.get("planned") or {}, memory.get("phases") or {}
    rows = {}
    for phase in [p for p in PHASES if p in planned_all or p in measured_all]:
        planned = planned_all.get(phase, {})
        rows[phase] = measured_all.get(phase) or {
            "predicted_peak_bytes": planned.get("peak_bytes"),
            "planned_required_bytes": planned.get("required_bytes"),
            "max_allocated_bytes": None,
            "max_reserved_bytes": None,
            "active_peak_bytes": None,
            "allocated_ratio": None,
            "active_ratio": None,
            "reserved_ratio": None,
        }
    return rows


# -- emulated smaller devices -------------------------------------------------------------


class TrialOOM(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Stops a search trial at its first OOM (the guard would recover and go on)."""


@dataclass(frozen=True)
class Emulation:
    """A smaller device on this one. ``size_bytes``: the device's total memory."""

    size_bytes: int
    label: str
    cuda: bool

    def overrides(self) -> list[str]:
        if self.cuda:
            return [f"hardware.gpu={self.size_bytes / GIB:g}GB"]  # read as GiB
        return [f"hardware.memory_cap_gib={self.size_bytes / GIB!r}"]

    def fraction(self) -> float:
        """Share of the real GPU the allocator may use: what the emulated card leaves."""
        from dialsum.checks.probe import emulate
        from dialsum.speed.gpus import detect_gpu, resolve_gpu

        return emulate(resolve_gpu(f"{self.size_bytes / GIB:g}GB"), detect_gpu())

    @contextlib.contextmanager
    def limit(self, settings, model):
        from dialsum.training.run_data import memory_cap

        _free(self.cuda)
        if not self.cuda:
            with memory_cap(settings, model):
                yield
            return
        torch.cuda.set_per_process_memory_fraction(self.fraction())
        try:
            yield
        finally:
            _free(True)
            torch.cuda.set_per_process_memory_fraction(1.0)


def _free(cuda: bool) -> None:
    # On a GPU the cycles of a finished trainer still hold device memory. On a CPU a new
    # live-bytes cap counts only what is created under it: collecting (0.5 s) buys nothing.
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()


def trial_trainer(model, tokenizer, cfg: SectionConfig, settings, out: Path, *, steps: int,
                  target_len: int, stop_at_oom: bool):  # fmt: skip
    """The guarded trainer as ``train`` builds it, on ``steps`` steps of full-length rows."""
    from dialsum.checks.calibrate import set_checkpointing
    from dialsum.core.runs import new_run
    from dialsum.data.tokenize import make_collator
    from dialsum.training.guarded_trainer import GuardedSeq2SeqTrainer
    from dialsum.training.run_data import ListDataset, generation_kwargs
    from dialsum.training.trainer_args import training_arguments

    t = replace(cfg.training, max_steps=steps, eval_strategy="no", save_strategy="no",
                report_to=["none"], logging_steps=1000)  # fmt: skip
    gen_config = copy.deepcopy(model.generation_config)
    gen_config.update(**generation_kwargs(cfg))
    args = training_arguments(t, settings, new_run(out, cfg.name), gen_config)
    set_checkpointing(model, settings.gradient_checkpointing)  # a shared model: reset each time
    vocab = min(model.config.vocab_size, len(tokenizer))
    guard = GuardState(micro_batch_size=settings.micro_batch_size,
                       eval_batch_size=settings.eval_batch_size)  # fmt: skip

    def stop(phase: str, rows: int) -> None:
        if guard.events:
            raise TrialOOM

    rows = settings.per_step_rows * steps
    return GuardedSeq2SeqTrainer(
        model=model,
        args=args,
        train_dataset=ListDataset(fixed_rows(rows, settings.source_len, target_len, vocab, 0)),
        eval_dataset=ListDataset(
            fixed_rows(settings.eval_batch_size, settings.source_len, target_len, vocab, 1)
        ),
        data_collator=make_collator(tokenizer, model),
        processing_class=tokenizer,
        guard=guard,
        optimizer_name=settings.optimizer,
        compute_metrics=lambda _: {},  # with metrics, evaluation generates (as in a run)
        fault_injector=stop if stop_at_oom else None,
    )


def trains_without_oom(model, tokenizer, cfg, settings, emulation, out, target_len) -> bool:
    """Two optimizer steps at ``settings``' geometry under the limit; False at an OOM."""
    trainer = trial_trainer(model, tokenizer, cfg, settings, out, steps=2,
                            target_len=target_len, stop_at_oom=True)  # fmt: skip
    try:
        with emulation.limit(settings, model):
            trainer.train()
        return not trainer.guard.events
    except Exception as exc:  # noqa: BLE001 - an OOM of any kind is the answer "no"
        if isinstance(exc, (TrialOOM, OOMUnrecoverable)) or is_oom(exc):
            return False
        raise
    finally:
        del trainer
        model.zero_grad(set_to_none=True)
        _free(emulation.cuda)


def ooms_at_planned(model, tokenizer, cfg, settings, emulation, out, target_len) -> dict:
    """OOMs of two training steps, one evaluation and one generation pass at the plan."""
    from dialsum.inference.predict import GenerationStats, generate_summaries
    from dialsum.training.run_data import generation_kwargs

    trainer = trial_trainer(model, tokenizer, cfg, settings, out, steps=2,
                            target_len=target_len, stop_at_oom=False)  # fmt: skip
    failed: dict[str, str] = {}  # phase -> the OOM nothing smaller could recover from
    with emulation.limit(settings, model):
        for phase, run in (("train", trainer.train), ("eval", trainer.evaluate)):
            with _unrecoverable(failed, phase):
                run()
    events = [e.phase for e in trainer.guard.events]
    del trainer
    model.zero_grad(set_to_none=True)
    rows = fixed_rows(settings.generation_row_cap, settings.source_len, 0,
                      min(model.config.vocab_size, len(tokenizer)), 2)  # fmt: skip
    stats = GenerationStats()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(settings.predict_precision)
    if emulation.cuda and dtype is not None:
        model.to(dtype)  # generation in the dtype predict casts to
    try:
        with emulation.limit(settings, model), _unrecoverable(failed, "predict"):
            generate_summaries(model, tokenizer, rows, generation_kwargs(cfg), progress=False,
                               token_budget=settings.generation_token_budget,
                               max_batch_size=settings.generation_row_cap, stats=stats)  # fmt: skip
    finally:
        model.to(torch.float32)
    counts = {"train": events.count("train"), "eval": events.count("eval"),
              "predict": stats.oom_splits}  # fmt: skip
    return counts | ({"unrecoverable": failed} if failed else {})


@contextlib.contextmanager
def _unrecoverable(failed: dict[str, str], phase: str):
    """Record an OOM the guard could not recover from (even one row or micro-batch 1)
    instead of ending the whole validation."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - only OOMs are recorded
        if not (isinstance(exc, OOMUnrecoverable) or is_oom(exc)):
            raise
        failed[phase] = first_line(exc)[:200]


def emulated(
    model, tokenizer, cfg_for, report, emulation: Emulation, out: Path, search_factor: int = 4
) -> dict:
    """Planned micro-batch vs the true largest that trains (searched up to
    ``search_factor`` x the planned one, at most 128), and OOMs at the planned settings, on
    the emulated device; ``cfg_for(overrides)`` gives the section."""
    from dialsum.core.errors import UserError
    from dialsum.memory.fit import largest_fitting
    from dialsum.memory.section import plan_for_section
    from dialsum.training.settings import resolve_settings, settings_from_plan

    started = time.perf_counter()
    cfg = cfg_for(emulation.overrides())
    try:  # the settings a run would apply, with the plan they come from
        settings = resolve_settings(cfg, model.config, report=report, echo=lambda *_: None)
        plan = settings.plan or {}
        base = settings
    except UserError:  # the plan does not fit: the run would refuse to start
        settings = None
        unfit = plan_for_section(cfg, model.config, report=report)
        plan, base = unfit.to_json_dict(), settings_from_plan(unfit, cfg)
    micro = int(plan["micro_batch_size"])
    row: dict[str, Any] = {"gpu": emulation.label, "size_bytes": emulation.size_bytes,
                           "planned_micro_batch": micro, "planned_fits": bool(plan["fits"]),
                           "precision": plan["precision"],
                           "gradient_checkpointing": plan["gradient_checkpointing"]}  # fmt: skip
    if emulation.cuda:
        row["memory_fraction"] = round(emulation.fraction(), 4)
    target_len = int(plan["target_len"])
    row["ooms_at_planned"] = (
        None
        if settings is None
        else ooms_at_planned(model, tokenizer, cfg, settings, emulation, out, target_len)
    )
    accumulation = 1 if plan["gradient_accumulation_steps"] == 1 else 2
    cap = min(max(search_factor * micro, 2 * search_factor), 128)
    # The planned micro-batch trained without an OOM above: search only beyond it.
    ooms = row["ooms_at_planned"]
    known = micro if ooms is not None and ooms["train"] == 0 else 0

    def runs(size: int) -> bool:
        geometry = BatchGeometry.build(size * accumulation, 1, size)
        trial = replace(base, geometry=geometry)
        return trains_without_oom(model, tokenizer, cfg, trial, emulation, out, target_len)

    true = largest_fitting(list(range(known + 1, cap + 1)), runs) or known or None
    per_step = int(plan["per_rank_rows"])
    row.update({
        "true_largest_micro_batch": true,
        "searched_up_to": cap,
        "largest_divisor_that_runs": max((d for d in range(1, (true or 0) + 1)
                                          if per_step % d == 0), default=None),
        "seconds": round(time.perf_counter() - started, 1),
    })  # fmt: skip
    return row
