"""The run's data: tokenized at the settings' source length, the section left as loaded."""

from __future__ import annotations

from pathlib import Path

from dialsum.models.setup import setup_model
from dialsum.training.run_data import read_tables, tokenize_table
from helpers import tiny_section


def test_tokenize_table_cuts_sources_at_the_given_length(tmp_path: Path) -> None:
    cfg = tiny_section(tmp_path)
    _, tokenizer = setup_model(cfg)
    train, _ = read_tables(cfg, dev=False, echo=lambda *_: None)
    full = tokenize_table(cfg, train, tokenizer, source_len=cfg.tokenizer.max_source_length)
    cut = tokenize_table(cfg, train, tokenizer, source_len=16)
    longest = max(len(r["input_ids"]) for r in full.rows)
    assert longest > 16
    assert max(len(r["input_ids"]) for r in cut.rows) == 16
    # Labels do not depend on the source length; the section is not rewritten.
    assert [r["labels"] for r in cut.rows] == [r["labels"] for r in full.rows]
    assert cfg.tokenizer.max_source_length >= longest
