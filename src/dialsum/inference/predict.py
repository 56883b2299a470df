"""Prediction: the ``predict`` verb and the OOM-safe, token-budget generation behind it.

``run_predict``: best checkpoint → test dialogues → ``fname,summary`` submission CSV, written
atomically (and rescued elsewhere if the output cannot be written after generating).

``generate_summaries``: rows are sorted by source length (longest first, so an OOM shows up
at once rather than at the end) and grouped so that ``rows x generation_cost(longest
source)`` - that is ``rows x (source + new tokens) x beams``, what the decoder caches hold -
stays within the planner's token budget, and no batch exceeds the planner's row cap (the
per-row logits and beam bookkeeping do not shrink with the source): short dialogues travel
in big batches, long ones in small batches, and little compute is spent on padding. A batch
that still OOMs is split in halves. Outputs are put back in input order.

Causal LMs generate from the prompt (``data.prompt``) padded on the left, with the KV
cache; the source of the cost formula is the prompt, and the output is cut after the
prompt's columns, so only the new tokens are decoded and cleaned. A LoRA/QLoRA run's
``best/`` holds adapters: ``setup_model`` loads the section's base (4-bit for QLoRA) with
them on it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from dialsum.core.config_schema import SectionConfig
from dialsum.core.csv_files import write_csv_atomic
from dialsum.core.outputs import require_writable, write_or_rescue
from dialsum.core.runs import RunDir, find_best_model
from dialsum.core.torch_build import prepare_cuda_run
from dialsum.data.dataset import DialogueTable, read_dialogue_csv
from dialsum.inference.safety import (
    require_finite_model,
    require_output_not_an_input,
    require_summaries,
)
from dialsum.metrics import decode_keep_special
from dialsum.models.setup import setup_model
from dialsum.step.token_budget import (
    generation_cost,
    restore_order,
    split_batch,
    token_budget_batches,
)
from dialsum.training.oom_guard import free_device_memory, is_oom
from dialsum.training.run_data import (
    generation_kwargs,
    memory_cap,
    prompt_format,
    tokenize_table,
)
from dialsum.training.run_memory import (
    MemorySummary,
    PhasePeaks,
    log_to_tensorboard,
    merge_into_metrics_file,
)
from dialsum.training.settings import resolve_settings, use_cuda

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- generation


@dataclass
class GenerationStats:
    """What one generation pass did: how many batches it split after an OOM."""

    oom_splits: int = 0


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


def _generate_rows(
    model,
    tokenizer,
    rows: list[dict[str, list[int]]],
    gen: dict[str, Any],
    causal: bool = False,
):
    features = [{"input_ids": r["input_ids"], "attention_mask": r["attention_mask"]} for r in rows]
    # A causal LM continues each row after its last token: pad on the left (data.prompt).
    batch = tokenizer.pad(features, return_tensors="pt", padding_side="left" if causal else "right")
    device = _device_of(model)
    with torch.inference_mode():
        out = model.generate(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            **gen,
        )
    if causal:
        out = out[:, batch["input_ids"].shape[1] :]  # [rows, new]: the prompt is not output
    return decode_keep_special(tokenizer, out.cpu().tolist())


def generate_summaries(
    model,
    tokenizer,
    rows: Sequence[dict[str, list[int]]],
    gen: dict[str, Any],
    *,
    token_budget: int,
    max_batch_size: int | None = None,
    progress: bool = True,
    fault_injector=None,
    stats: GenerationStats | None = None,
    causal: bool = False,
) -> list[str]:
    """Summaries for tokenized ``rows`` in input order.

    ``token_budget`` counts ``batching.generation_cost`` tokens (the ``num_beams`` and
    ``max_new_tokens`` of ``gen``); ``max_batch_size`` caps the rows of a batch.
    On an OOM the failing batch is split in halves and retried; a single row that still
    does not fit raises (nothing smaller is possible). ``causal``: rows are prompts of a
    decoder-only LM (module docstring).
    """
    stats = stats if stats is not None else GenerationStats()
    model.eval()
    beams, new_tokens = int(gen.get("num_beams", 1) or 1), int(gen.get("max_new_tokens") or 0)
    lengths = [generation_cost(len(r["input_ids"]), new_tokens, beams) for r in rows]
    batches = token_budget_batches(lengths, token_budget, max_batch_size)
    pending = list(batches)
    done_batches: list[list[int]] = []
    outputs: list[list[str]] = []
    bar = tqdm(total=len(rows), desc="generate", unit="dlg", disable=not progress, leave=False)
    while pending:
        indices = pending.pop(0)
        texts = None
        try:
            if fault_injector is not None:
                fault_injector("predict", len(indices))
            texts = _generate_rows(model, tokenizer, [rows[i] for i in indices], gen, causal)
        except Exception as exc:  # noqa: BLE001 - only OOMs are handled
            if not is_oom(exc) or len(indices) == 1:
                raise
        if texts is None:
            # Recover outside the except block so the failed call's tensors can be freed.
            free_device_memory()
            stats.oom_splits += 1
            log.warning("OOM while generating %d rows: splitting the batch", len(indices))
            pending[:0] = split_batch(indices, 2)
            continue
        done_batches.append(indices)
        outputs.append(texts)
        bar.update(len(indices))
    bar.close()
    return restore_order(done_batches, outputs, len(rows))


def predict_table(
    cfg: SectionConfig, model, tokenizer, table: DialogueTable, settings, **kwargs
) -> list[str]:
    """Summaries of every record of ``table``, in order, at the run's ``settings``."""
    prompt = prompt_format(cfg, model, tokenizer)  # None: a seq2seq model
    rows = tokenize_table(
        cfg, table, tokenizer, source_len=settings.source_len, with_labels=False, prompt=prompt
    ).rows
    return generate_summaries(
        model,
        tokenizer,
        rows,
        generation_kwargs(cfg),
        token_budget=settings.generation_token_budget,
        max_batch_size=settings.generation_row_cap,
        causal=prompt is not None,
        **kwargs,
    )


def write_submission(path: Path, table: DialogueTable, summaries: list[str]) -> None:
    """``fname,summary`` in input order, written atomically (temp file + rename)."""
    if len(summaries) != len(table.records):
        raise RuntimeError("internal error: one summary per dialogue expected")
    write_csv_atomic(
        path,
        ["fname", "summary"],
        ([r.fname, s] for r, s in zip(table.records, summaries, strict=True)),
    )


# --------------------------------------------------------------------------- the verb

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def run_predict(
    cfg: SectionConfig,
    *,
    checkpoint: Path | None = None,
    output: Path | None = None,
    echo=print,
    require_text: bool = True,
    **kwargs,
) -> tuple[Path, int]:
    """Write ``fname,summary`` for every test dialogue; returns (path, rows).

    ``require_text=False`` is for the memory checks (``checks.gpu_runs``), which run an
    untrained tiny model whose summaries may all be empty: a user's ``predict`` refuses
    such a submission."""
    # Before anything touches CUDA or loads: allocator setting, then supported-GPU check.
    allocator = prepare_cuda_run(echo) if use_cuda(cfg) else None
    table = read_dialogue_csv(Path(cfg.data.test), "test")
    if table.encoding not in ("utf-8", "utf-8-sig"):
        echo(f"note: decoded {cfg.data.test} as {table.encoding}")
    model_dir = (
        Path(checkpoint) if checkpoint else find_best_model(cfg.training.output_dir, cfg.name)
    )
    echo(f"model: {model_dir}")
    if output is None:
        output = Path(cfg.inference.output) if cfg.inference.output else _default_output(model_dir)
    require_writable(output)  # before minutes of loading and generating, not after
    require_output_not_an_input(output, _inputs(cfg))
    model, tokenizer = setup_model(
        cfg, checkpoint=model_dir, device="cuda" if use_cuda(cfg) else "cpu"
    )
    require_finite_model(model.named_parameters(), model_dir)
    settings = resolve_settings(cfg, model.config, echo=echo, purpose="predict")
    if use_cuda(cfg) and not getattr(model, "is_loaded_in_4bit", False):
        # Generation in the dtype the plan simulated: bf16/fp16 where training used it
        # (half the weight and cache memory), fp32 otherwise.
        model.to("cuda", dtype=_DTYPES[settings.predict_precision])
    phases = PhasePeaks.for_device(settings.device)
    with memory_cap(settings, model), phases.phase("predict"):
        summaries = predict_table(cfg, model, tokenizer, table, settings, **kwargs)
    if require_text:
        require_summaries(summaries, model_dir, echo)
    run = _run_of(model_dir)
    # The summaries first: nothing that runs after generation may lose them.
    rescue_folders = [run.path] if run is not None else []
    write_or_rescue(
        output, lambda p: write_submission(p, table, summaries), rescue_folders, "summaries"
    )
    memory = MemorySummary.build(phases, settings.plan, allocator.to_json() if allocator else None)
    for line in memory.lines():
        echo(line)
    if run is not None and memory.measured:
        merge_into_metrics_file(run.metrics, memory)
        log_to_tensorboard(run.logs, phases.logs("predict"))
    return output, len(summaries)


def _inputs(cfg: SectionConfig) -> dict[str, str]:
    """The user's files a submission must never replace."""
    return {
        "test CSV (data.test)": cfg.data.test,
        "training CSV (data.train)": cfg.data.train,
        "validation CSV (data.dev)": cfg.data.dev,
        "config file": cfg.source,
    }


def _run_of(model_dir: Path) -> RunDir | None:
    """The run folder a model belongs to: <run>/best or <run>/checkpoints/checkpoint-N."""
    run = model_dir.parent if model_dir.name == "best" else model_dir.parent.parent
    return RunDir(run) if (run / "config.yaml").is_file() else None


def _default_output(model_dir: Path) -> Path:
    # <run>/best or <run>/checkpoints/checkpoint-N → <run>/submission.csv
    run = _run_of(model_dir)
    return run.submission if run is not None else Path("submission.csv")
