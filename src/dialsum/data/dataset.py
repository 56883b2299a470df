"""Competition dialogue CSVs in, validated and cleaned records out.

The competition files look like ``fname,dialogue,summary[,topic]`` (test: ``fname,dialogue``),
with optional extra references ``summary1..summary3``. Dialogues are ``#Person1#: ...`` turns
separated by newlines *inside quoted fields*. Reading, decoding and the strict CSV checks are
``dialsum.core.csv_files``' job; this module knows the columns: which are required per split,
which rows are incomplete, and which fields are references. Prediction files
(``fname,summary``, what ``dialsum evaluate`` scores) get the same reader and cleaning.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dialsum.core.csv_files import (
    Problems,
    check_duplicates,
    check_field_count,
    field_value,
    read_csv_rows,
)
from dialsum.core.errors import DataError
from dialsum.data.clean import clean_counted, clean_text

Split = Literal["train", "dev", "test"]

SPLITS: tuple[str, ...] = ("train", "dev", "test")
EXTRA_REFERENCE_COLUMNS: tuple[str, ...] = ("summary1", "summary2", "summary3")


@dataclass
class Record:
    """One dialogue. ``references`` = [summary] + non-empty summary1..3; empty without one."""

    fname: str
    dialogue: str
    summary: str | None
    references: list[str]
    topic: str | None


@dataclass
class DialogueTable:
    """A validated CSV: ``encoding`` is what decoded it, ``cleaned`` how many fields changed."""

    path: Path
    split: str
    records: list[Record]
    encoding: str
    cleaned: int


def _required_columns(split: str) -> tuple[str, ...]:
    return ("fname", "dialogue") if split == "test" else ("fname", "dialogue", "summary")


def read_dialogue_csv(path: str | os.PathLike[str], split: Split) -> DialogueTable:
    """Read, validate and clean a competition CSV for ``split`` (train/dev need summaries)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = Path(path)
    header, rows, encoding = read_csv_rows(path, f"{split} file", _required_columns(split))
    if not rows:
        raise DataError(f"{path}: the file has a header but no data rows")

    problems = Problems(path)
    records: list[Record] = []
    lines_by_fname: dict[str, list[int]] = {}
    cleaned = 0
    for line, fields in rows:
        check_field_count(problems, header, line, fields)
        record, changed = _make_record(problems, header, line, fields, split)
        cleaned += changed
        if record.fname:
            lines_by_fname.setdefault(record.fname, []).append(line)
        records.append(record)
    check_duplicates(problems, lines_by_fname)
    problems.raise_if_any()
    return DialogueTable(path, split, records, encoding, cleaned)


def _make_record(
    problems: Problems, header: list[str], line: int, fields: list[str], split: str
) -> tuple[Record, int]:
    """Build one Record, adding its problems; also return how many fields cleaning changed."""
    changed = 0
    fname = field_value(fields, header, "fname").strip()
    if not fname:
        problems.add_line("empty fname", line, "give every row a unique fname")
    dialogue, flag = clean_counted(field_value(fields, header, "dialogue"))
    changed += flag
    if not dialogue:
        problems.add_line("empty dialogue", line, "fill in the dialogue or delete the row")
    summary, flag = clean_counted(field_value(fields, header, "summary"))
    changed += flag
    if not summary and split != "test":
        problems.add_line(
            "empty summary",
            line,
            f"a {split} file needs a reference summary in every row; fill it in or delete the row",
        )
    references = [summary] if summary else []
    for name in EXTRA_REFERENCE_COLUMNS:
        extra, flag = clean_counted(field_value(fields, header, name))
        changed += flag
        if extra and summary:
            references.append(extra)
    topic = field_value(fields, header, "topic").strip() or None
    return Record(fname, dialogue, summary or None, references, topic), changed


def read_predictions_csv(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read a ``fname,summary`` prediction/submission file into {fname: summary}.

    Summaries get the ``clean_text`` the references get. Empty summaries are allowed: a
    model can generate nothing, and that should score 0 rather than stop an evaluation.
    """
    path = Path(path)
    header, rows, _ = read_csv_rows(path, "predictions file", ("fname", "summary"))
    problems = Problems(path)
    predictions: dict[str, str] = {}
    lines_by_fname: dict[str, list[int]] = {}
    for line, fields in rows:
        check_field_count(problems, header, line, fields)
        fname = field_value(fields, header, "fname").strip()
        if not fname:
            problems.add_line("empty fname", line, "give every row the fname it predicts")
            continue
        lines_by_fname.setdefault(fname, []).append(line)
        predictions[fname] = clean_text(field_value(fields, header, "summary"))
    check_duplicates(problems, lines_by_fname)
    problems.raise_if_any()
    return predictions
