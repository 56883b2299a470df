"""The `predict` verb: best checkpoint → test dialogues → submission CSV."""

from __future__ import annotations

from pathlib import Path

import torch

from dialsum.core.config import SectionConfig
from dialsum.core.gpu_support import prepare_cuda_run
from dialsum.core.outputs import require_writable, write_or_rescue
from dialsum.core.runs import RunDir, find_best_model
from dialsum.data import dataset as data_mod
from dialsum.inference.generate import predict_table, write_submission
from dialsum.training.recipe import apply_source_len, memory_cap, setup_model
from dialsum.training.run_memory import (
    MemorySummary,
    PhasePeaks,
    log_to_tensorboard,
    merge_into_metrics_file,
)
from dialsum.training.settings import resolve_settings, use_cuda

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def run_predict(
    cfg: SectionConfig,
    *,
    checkpoint: Path | None = None,
    output: Path | None = None,
    echo=print,
    **kwargs,
) -> tuple[Path, int]:
    """Write ``fname,summary`` for every test dialogue; returns (path, rows)."""
    # Before anything touches CUDA or loads: allocator setting, then supported-GPU check.
    allocator = prepare_cuda_run(echo) if use_cuda(cfg) else None
    table = data_mod.read_dialogue_csv(Path(cfg.data.test), "test")
    if table.encoding not in ("utf-8", "utf-8-sig"):
        echo(f"note: decoded {cfg.data.test} as {table.encoding}")
    model_dir = (
        Path(checkpoint) if checkpoint else find_best_model(cfg.training.output_dir, cfg.name)
    )
    echo(f"model: {model_dir}")
    if output is None:
        output = Path(cfg.inference.output) if cfg.inference.output else _default_output(model_dir)
    require_writable(output)  # before minutes of loading and generating, not after
    model, tokenizer = setup_model(cfg, checkpoint=model_dir)
    settings = resolve_settings(cfg, model.config, echo=echo)
    cfg = apply_source_len(cfg, settings)
    if use_cuda(cfg):
        # Generation in the dtype the plan simulated: bf16/fp16 where training used it
        # (half the weight and cache memory), fp32 otherwise.
        model.to("cuda", dtype=_DTYPES[settings.predict_precision])
    phases = PhasePeaks.for_device(settings.device)
    with memory_cap(settings, model), phases.phase("predict"):
        summaries = predict_table(cfg, model, tokenizer, table, settings, **kwargs)
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


def _run_of(model_dir: Path) -> RunDir | None:
    """The run folder a model belongs to: <run>/best or <run>/checkpoints/checkpoint-N."""
    run = model_dir.parent if model_dir.name == "best" else model_dir.parent.parent
    return RunDir(run) if (run / "config.yaml").is_file() else None


def _default_output(model_dir: Path) -> Path:
    # <run>/best or <run>/checkpoints/checkpoint-N → <run>/submission.csv
    run = _run_of(model_dir)
    return run.submission if run is not None else Path("submission.csv")
