"""The bundled demo: tiny model, bundled data, CPU, no downloads.

dev ROUGE before training → train → dev ROUGE after → test predictions, with every
output's location printed at the end.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from dialsum.core.config_schema import SectionConfig
from dialsum.inference.predict import predict_table, write_submission
from dialsum.metrics import format_scores, score_summaries
from dialsum.models.setup import setup_model
from dialsum.training.recipe import run_training
from dialsum.training.run_data import read_tables
from dialsum.training.run_memory import MemorySummary, PhasePeaks
from dialsum.training.settings import resolve_settings


def _dev_scores(
    cfg: SectionConfig, model, tokenizer, dev_table, settings
) -> tuple[dict, list[str]]:
    summaries = predict_table(cfg, model, tokenizer, dev_table, settings)
    refs = [r.references for r in dev_table.records]
    return score_summaries(summaries, refs), summaries


def _memory_summary(result, predict: MemorySummary) -> MemorySummary:
    """Training's phases (from the run's metrics.json) and the test prediction's."""
    try:
        saved = json.loads(result.run.metrics.read_text(encoding="utf-8")).get("memory", {})
    except (OSError, ValueError):
        saved = {}
    return MemorySummary.from_json(saved).merged(predict)


def run_demo(cfg: SectionConfig, echo=print) -> dict:
    started = time.time()
    from dialsum.data import dataset as data_mod

    _, dev_table = read_tables(cfg, train=False, dev=True, echo=echo)
    test_table = data_mod.read_dialogue_csv(Path(cfg.data.test), "test")

    echo("[1/4] building the tiny model and scoring it on dev before training")
    model, tokenizer = setup_model(cfg)
    quiet = lambda *_: None  # noqa: E731 - settings are printed once, by training
    settings = resolve_settings(cfg, model.config, echo=quiet)
    before, _ = _dev_scores(cfg, model, tokenizer, dev_table, settings)
    echo(f"dev before training: {format_scores(before)}")

    echo("[2/4] training")
    result = run_training(cfg, echo=echo)

    echo("[3/4] scoring the trained model on dev")
    model, tokenizer = setup_model(cfg, checkpoint=result.run.best)
    after, dev_summaries = _dev_scores(cfg, model, tokenizer, dev_table, settings)
    dev_pred = result.run.path / "dev_predictions.csv"
    write_submission(dev_pred, dev_table, dev_summaries)
    echo(f"dev after training:  {format_scores(after)}")

    echo("[4/4] predicting the test dialogues")
    phases = PhasePeaks.for_device(result.settings.device)
    with phases.phase("predict"):
        summaries = predict_table(cfg, model, tokenizer, test_table, settings)
    memory = _memory_summary(result, MemorySummary.build(phases, result.settings.plan))
    write_submission(result.run.submission, test_table, summaries)

    elapsed = time.time() - started
    echo("")
    echo(f"ROUGE score (mean F1 x 100): before {before['score']:.2f} -> after {after['score']:.2f}")
    echo(f"run folder:        {result.run.path}")
    echo(f"resolved config:   {result.run.config}")
    echo(f"plan:              {result.run.plan}")
    echo(f"TensorBoard logs:  {result.run.logs}")
    echo(f"trained model:     {result.run.best}")
    echo(f"dev predictions:   {dev_pred}")
    echo(f"submission:        {result.run.submission} ({len(summaries)} rows)")
    for line in memory.lines():
        echo(line)
    echo(f"took {elapsed:.0f}s")
    echo(f"score it yourself: dialsum evaluate --pred {dev_pred} --ref {cfg.data.dev}")
    return {"before": before, "after": after, "run": result.run, "seconds": elapsed}
