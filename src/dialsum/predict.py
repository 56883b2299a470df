"""The `predict` verb: best checkpoint → test dialogues → submission CSV."""

from __future__ import annotations

from pathlib import Path

import torch

from dialsum import data as data_mod
from dialsum.config import SectionConfig
from dialsum.infer import predict_table, write_submission
from dialsum.runs import RunDir, find_best_model
from dialsum.settings import resolve_settings, use_cuda
from dialsum.train import apply_source_len, memory_cap, setup_model

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
    table = data_mod.read_dialogue_csv(Path(cfg.data.test), "test")
    if table.encoding not in ("utf-8", "utf-8-sig"):
        echo(f"note: decoded {cfg.data.test} as {table.encoding}")
    model_dir = (
        Path(checkpoint) if checkpoint else find_best_model(cfg.training.output_dir, cfg.name)
    )
    echo(f"model: {model_dir}")
    model, tokenizer = setup_model(cfg, checkpoint=model_dir)
    settings = resolve_settings(cfg, model.config, echo=echo)
    cfg = apply_source_len(cfg, settings)
    if use_cuda(cfg):
        # Generation in the dtype the plan simulated: bf16/fp16 where training used it
        # (half the weight and cache memory), fp32 otherwise.
        model.to("cuda", dtype=_DTYPES[settings.predict_precision])
    with memory_cap(settings, model):
        summaries = predict_table(cfg, model, tokenizer, table, settings, **kwargs)
    if output is None:
        output = Path(cfg.inference.output) if cfg.inference.output else _default_output(model_dir)
    write_submission(output, table, summaries)
    return output, len(summaries)


def _default_output(model_dir: Path) -> Path:
    # <run>/best or <run>/checkpoints/checkpoint-N → <run>/submission.csv
    run = model_dir.parent if model_dir.name == "best" else model_dir.parent.parent
    if (run / "config.yaml").is_file():
        return RunDir(run).submission
    return Path("submission.csv")
