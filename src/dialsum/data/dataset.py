"""Competition CSVs in, tokenized examples out.

The competition files look like ``fname,dialogue,summary[,topic]`` (test: ``fname,dialogue``),
with optional extra references ``summary1..summary3``. Dialogues are ``#Person1#: ...`` turns
separated by newlines *inside quoted fields*, so the files must go through the ``csv`` module,
never through line splitting. Files come as UTF-8 (often with a BOM and CRLF from Excel) or as
CP949/EUC-KR from Korean Windows tools.

Every user mistake becomes one ``DataError`` that lists all problems of each kind with their
line numbers as a spreadsheet shows them (header = line 1, first data row = line 2).
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from dialsum.core.atomic import atomic_open
from dialsum.core.errors import DataError

if TYPE_CHECKING:  # reading CSVs (dialsum evaluate) must not wait for transformers
    from transformers import DataCollatorForSeq2Seq, PreTrainedTokenizerBase

Split = Literal["train", "dev", "test"]

SPLITS: tuple[str, ...] = ("train", "dev", "test")
EXTRA_REFERENCE_COLUMNS: tuple[str, ...] = ("summary1", "summary2", "summary3")
# Order matters: the first encoding that decodes the whole file wins. UTF-8 is strict enough
# that a CP949 file with Korean text essentially never decodes as UTF-8 by accident.
ENCODINGS: tuple[str, ...] = ("utf-8-sig", "cp949")
MAX_LISTED = 10  # problems listed per kind before "and N more"

_LINE_NOTE = "line numbers count the header as line 1, as a spreadsheet shows them"


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


# --------------------------------------------------------------------------- problems


@dataclass
class _Problems:
    """Collects problems by kind so one error can report all of them at once."""

    path: Path
    items: dict[str, list[str]] = field(default_factory=dict)
    hints: dict[str, str] = field(default_factory=dict)
    line_kinds: set[str] = field(default_factory=set)

    def add(self, kind: str, where: str, hint: str) -> None:
        self.items.setdefault(kind, []).append(where)
        self.hints[kind] = hint

    def add_line(self, kind: str, line: int, hint: str) -> None:
        self.line_kinds.add(kind)
        self.add(kind, str(line), hint)

    def raise_if_any(self) -> None:
        if not self.items:
            return
        total = sum(len(v) for v in self.items.values())
        lines = [f"{self.path}: {total} problem(s) found ({_LINE_NOTE}):"]
        for kind, wheres in self.items.items():
            where = _listing(wheres)
            if kind in self.line_kinds:
                where = ("line " if len(wheres) == 1 else "lines ") + where
            lines.append(f"  - {kind}: {where}; {self.hints[kind]}")
        raise DataError("\n".join(lines))


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    rest = len(items) - MAX_LISTED
    return f"{shown} and {rest} more" if rest > 0 else shown


# --------------------------------------------------------------------------- cleaning

_LITERAL_NEWLINE = re.compile(r"\\r\\n|\\n")  # the two characters backslash + n
_BR_TAG = re.compile(r"<br\s*/?>", re.IGNORECASE)
_MANY_NEWLINES = re.compile(r"\n{3,}")


def clean_text(text: str) -> str:
    """Normalise a dialogue or summary field.

    Scraped and re-exported data carries newlines as literal ``\\n`` or ``<br>``; models and
    ROUGE should see real newlines. Speaker tags like ``#Person1#:`` are left untouched.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _LITERAL_NEWLINE.sub("\n", text)
    text = _BR_TAG.sub("\n", text)
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = _MANY_NEWLINES.sub("\n\n", text)
    return text.strip()


def _clean_counted(value: str) -> tuple[str, bool]:
    """Clean ``value``; the flag says whether content changed beyond line endings.

    CRLF inside quoted fields is what every Windows export produces, so counting it would
    make the "cleaned N fields" message noise for most users.
    """
    cleaned = clean_text(value)
    return cleaned, cleaned != value.replace("\r\n", "\n")


# --------------------------------------------------------------------------- reading


def _read_text(path: Path, what: str) -> tuple[str, str]:
    """Return (text, encoding name) or raise a DataError saying how to fix the file."""
    if not path.exists():
        raise DataError(
            f"{what} not found: {path}; check the path (relative paths are resolved "
            f"from the current directory: {Path.cwd()})"
        )
    if not path.is_file():
        raise DataError(f"{what} is not a file: {path}; point to a .csv file")
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"{path}: the file is empty; expected a CSV with a header line")
    for encoding in ENCODINGS:
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError:
            continue
        if encoding == "utf-8-sig" and not raw.startswith(b"\xef\xbb\xbf"):
            encoding = "utf-8"
        return text, encoding
    bad_line = _first_bad_utf8_line(raw)
    raise DataError(
        f"{path}: cannot decode the file as UTF-8 (first invalid byte on text line {bad_line}) "
        "nor as CP949/EUC-KR; re-save it as 'CSV UTF-8'"
    )


def _first_bad_utf8_line(raw: bytes) -> int:
    try:
        raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return raw.count(b"\n", 0, exc.start) + 1
    return 0


def _parse_csv(path: Path, text: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Split into a normalised header and (spreadsheet line, fields) data rows."""
    # strict=True makes an unterminated quote an error instead of silently swallowing the
    # rest of the file into one field.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[tuple[int, list[str]]] = []
    record_start = 1  # text line of the record being read
    try:
        for line, fields in enumerate(reader, start=1):
            rows.append((line, fields))
            record_start = reader.line_num + 1
    except csv.Error as exc:
        raise _syntax_error(path, text, rows, record_start, reader.line_num, exc) from None
    if not rows:
        raise DataError(f"{path}: the file is empty; expected a CSV with a header line")
    header = [name.strip().lstrip("\ufeff").lower() for name in rows[0][1]]
    # Blank lines between rows are not data; spreadsheet line numbers still count them.
    data = [(line, fields) for line, fields in rows[1:] if any(f.strip() for f in fields)]
    return header, data


_QUOTE_FIX = 'a field that starts with " must end with " and quotes inside it must be doubled ("")'
_FIELD_END = re.compile(r"[,\r\n]")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # how the csv reader counts text lines


def _syntax_error(
    path: Path,
    text: str,
    rows: list[tuple[int, list[str]]],
    record_start: int,
    gave_up: int,
    exc: csv.Error,
) -> DataError:
    """Name the record and the line where its broken quoted field *opened*.

    The parser only notices a missing closing quote where it finds the next quote (often
    in a later record, read as the closing one) or at the end of the file, which can be
    hundreds of lines below the mistake.
    """
    offset = _line_offset(text, record_start)
    broken = _broken_quote(text, offset)
    if broken is None:
        return DataError(f"{path}: CSV syntax error near text line {gave_up} ({exc}); {_QUOTE_FIX}")
    index, opened_at, before = broken
    header = [name.strip().lstrip("\ufeff").lower() for name in rows[0][1]] if rows else []
    column = header[index] if index < len(header) else f"field {index + 1}"
    fname = before[header.index("fname")].strip() if "fname" in header[:index] else ""
    record = f"record {len(rows) + 1}" + (f" (fname {fname!r})" if fname else "")
    opened = len(_LINE_BREAK.findall(text, 0, opened_at)) + 1
    end = "the end of the file" if "end of data" in str(exc) else f"text line {gave_up}"
    return DataError(
        f"{path}: unclosed quote in {record}, which starts on text line {record_start}: "
        f"its {column} field opens a quote on text line {opened} that is not closed "
        f"where the field ends (the parser gave up at {end}); {_QUOTE_FIX}. Records count "
        "the header as record 1 (a spreadsheet's rows), text lines as an editor shows them"
    )


def _line_offset(text: str, line: int) -> int:
    """Character offset where text line ``line`` (1-based) starts."""
    offset = 0
    for number, match in enumerate(_LINE_BREAK.finditer(text), start=2):
        if number > line:
            break
        offset = match.end()
    return offset


def _broken_quote(text: str, pos: int) -> tuple[int, int, list[str]] | None:
    """Walk one record from ``pos`` as the csv module does; for a quoted field that never
    closes properly return (field index, offset of its opening quote, fields before it)."""
    fields: list[str] = []
    while True:
        if text.startswith('"', pos):
            opened_at, value, pos = pos, [], pos + 1
            while True:
                close = text.find('"', pos)
                if close < 0:
                    return len(fields), opened_at, fields  # the file ends inside the quote
                value.append(text[pos:close])
                pos = close + 1
                if not text.startswith('"', pos):
                    break
                value.append('"')  # a doubled quote is a literal one
                pos += 1
            if pos < len(text) and text[pos] not in ",\r\n":
                return len(fields), opened_at, fields  # closed, then more text: misread
            fields.append("".join(value))
        else:
            match = _FIELD_END.search(text, pos)
            end = match.start() if match else len(text)
            fields.append(text[pos:end])
            pos = end
        if pos >= len(text) or text[pos] != ",":
            return None  # the record ended normally: the error is something else
        pos += 1


def _require_columns(path: Path, header: list[str], required: Sequence[str], what: str) -> None:
    missing = [name for name in required if name not in header]
    if not missing:
        return
    found = ", ".join(name for name in header if name) or "(none)"
    message = (
        f"{path}: missing required column(s) {', '.join(missing)}; found columns: {found}. "
        f"A {what} needs the columns {', '.join(required)}"
    )
    if len(header) == 1 and any(sep in header[0] for sep in ("\t", ";", "|")):
        message += "; the header has a single column, so the file is probably not comma-separated"
    raise DataError(message)


def _field(fields: list[str], header: list[str], name: str) -> str:
    """Value of column ``name``; short rows (missing trailing fields) read as empty."""
    if name not in header:
        return ""
    index = header.index(name)
    return fields[index] if index < len(fields) else ""


def _check_field_count(
    problems: _Problems, header: list[str], line: int, fields: list[str]
) -> None:
    # Extra non-empty fields mean an unquoted comma shifted the row: its columns are wrong.
    if len(fields) > len(header) and any(f.strip() for f in fields[len(header) :]):
        problems.add_line(
            f"row with more fields than the {len(header)} header columns",
            line,
            "quote fields that contain commas",
        )


def _check_duplicates(problems: _Problems, lines_by_fname: dict[str, list[int]]) -> None:
    for fname, lines in lines_by_fname.items():
        if len(lines) > 1:
            where = f"{fname!r} (lines {', '.join(str(n) for n in lines)})"
            problems.add("duplicate fname", where, "every fname must be unique")


def _required_columns(split: str) -> tuple[str, ...]:
    return ("fname", "dialogue") if split == "test" else ("fname", "dialogue", "summary")


def read_dialogue_csv(path: str | os.PathLike[str], split: Split) -> DialogueTable:
    """Read, validate and clean a competition CSV for ``split`` (train/dev need summaries)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = Path(path)
    text, encoding = _read_text(path, f"{split} file")
    header, rows = _parse_csv(path, text)
    _require_columns(path, header, _required_columns(split), f"{split} file")
    if not rows:
        raise DataError(f"{path}: the file has a header but no data rows")

    problems = _Problems(path)
    records: list[Record] = []
    lines_by_fname: dict[str, list[int]] = {}
    cleaned = 0
    for line, fields in rows:
        _check_field_count(problems, header, line, fields)
        record, changed = _make_record(problems, header, line, fields, split)
        cleaned += changed
        if record.fname:
            lines_by_fname.setdefault(record.fname, []).append(line)
        records.append(record)
    _check_duplicates(problems, lines_by_fname)
    problems.raise_if_any()
    return DialogueTable(path, split, records, encoding, cleaned)


def _make_record(
    problems: _Problems, header: list[str], line: int, fields: list[str], split: str
) -> tuple[Record, int]:
    """Build one Record, adding its problems; also return how many fields cleaning changed."""
    changed = 0
    fname = _field(fields, header, "fname").strip()
    if not fname:
        problems.add_line("empty fname", line, "give every row a unique fname")
    dialogue, flag = _clean_counted(_field(fields, header, "dialogue"))
    changed += flag
    if not dialogue:
        problems.add_line("empty dialogue", line, "fill in the dialogue or delete the row")
    summary, flag = _clean_counted(_field(fields, header, "summary"))
    changed += flag
    if not summary and split != "test":
        problems.add_line(
            "empty summary",
            line,
            f"a {split} file needs a reference summary in every row; fill it in or delete the row",
        )
    references = [summary] if summary else []
    for name in EXTRA_REFERENCE_COLUMNS:
        extra, flag = _clean_counted(_field(fields, header, name))
        changed += flag
        if extra and summary:
            references.append(extra)
    topic = _field(fields, header, "topic").strip() or None
    return Record(fname, dialogue, summary or None, references, topic), changed


def read_predictions_csv(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read a ``fname,summary`` prediction/submission file into {fname: summary}.

    Empty summaries are allowed: a model can generate nothing, and that should score 0
    rather than stop an evaluation.
    """
    path = Path(path)
    text, _ = _read_text(path, "predictions file")
    header, rows = _parse_csv(path, text)
    _require_columns(path, header, ("fname", "summary"), "predictions file")
    problems = _Problems(path)
    predictions: dict[str, str] = {}
    lines_by_fname: dict[str, list[int]] = {}
    for line, fields in rows:
        _check_field_count(problems, header, line, fields)
        fname = _field(fields, header, "fname").strip()
        if not fname:
            problems.add_line("empty fname", line, "give every row the fname it predicts")
            continue
        lines_by_fname.setdefault(fname, []).append(line)
        predictions[fname] = clean_text(_field(fields, header, "summary"))
    _check_duplicates(problems, lines_by_fname)
    problems.raise_if_any()
    return predictions


# --------------------------------------------------------------------------- writing


def write_csv_atomic(
    path: str | os.PathLike[str], header: list[str], rows: Iterable[Sequence[str]]
) -> None:
    """Write UTF-8 CSV (no BOM, LF) so that readers never see a half-written file.

    Rows go to a temporary file in the destination directory (same filesystem, so the final
    ``os.replace`` is atomic); on any error the temporary file is removed and an existing
    destination is left as it was.
    """
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        for row in rows:
            if len(row) != len(header):
                raise ValueError(f"row has {len(row)} fields, header has {len(header)}")
            writer.writerow(row)


# --------------------------------------------------------------------------- tokenization


def _sources(records: Sequence[Record], prefix: str) -> list[str]:
    return [prefix + record.dialogue for record in records]


def _targets(records: Sequence[Record]) -> list[str]:
    missing = [record.fname for record in records if record.summary is None]
    if missing:
        raise ValueError(f"records without a summary cannot have labels: {_listing(missing)}")
    return [record.summary or "" for record in records]


def tokenize_records(
    records: Sequence[Record],
    tokenizer: PreTrainedTokenizerBase,
    *,
    prefix: str,
    max_source_len: int,
    max_target_len: int,
    with_labels: bool,
) -> list[dict[str, list[int]]]:
    """Tokenize to unpadded, truncated examples; padding happens per batch in the collator."""
    if not records:
        return []
    sources = tokenizer(
        _sources(records, prefix),
        max_length=max_source_len,
        truncation=True,
        return_attention_mask=True,
    )
    examples = [
        {"input_ids": list(ids), "attention_mask": list(mask)}
        for ids, mask in zip(sources["input_ids"], sources["attention_mask"], strict=True)
    ]
    if with_labels:
        # text_target routes through the target tokenizer (matters for mBART-style models);
        # truncation keeps the eos the post-processor appends.
        targets = tokenizer(
            text_target=_targets(records), max_length=max_target_len, truncation=True
        )
        for example, labels in zip(examples, targets["input_ids"], strict=True):
            example["labels"] = list(labels)
    return examples


@dataclass
class LengthReport:
    """Token lengths of sources (prefix + dialogue) and targets (summary).

    Percentiles and ``*_over`` use untruncated lengths (what truncation throws away);
    ``longest_*`` are lengths after truncation: the real tensor shapes for memory planning.
    """

    n_records: int
    n_targets: int
    max_source_len: int
    max_target_len: int
    source_over: int
    source_over_pct: float
    target_over: int
    target_over_pct: float
    source_p50: int
    source_p95: int
    source_max: int
    target_p50: int
    target_p95: int
    target_max: int
    longest_source: int
    longest_target: int

    def format(self) -> str:
        lines = [
            f"source (prefix + dialogue), {self.n_records} records: p50 {self.source_p50}, "
            f"p95 {self.source_p95}, max {self.source_max} tokens; {self.source_over} "
            f"({self.source_over_pct:.1f}%) longer than max_source_len {self.max_source_len}",
        ]
        if self.n_targets:
            lines.append(
                f"target (summary), {self.n_targets} records: p50 {self.target_p50}, "
                f"p95 {self.target_p95}, max {self.target_max} tokens; {self.target_over} "
                f"({self.target_over_pct:.1f}%) longer than max_target_len {self.max_target_len}"
            )
        lines.append(
            f"after truncation: longest source {self.longest_source}, "
            f"longest target {self.longest_target} tokens"
        )
        return "\n".join(lines)


def _percentile(sorted_values: Sequence[int], pct: float) -> int:
    """Nearest-rank percentile: always an observed length, never an interpolated one."""
    if not sorted_values:
        return 0
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def _untruncated_lengths(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], target: bool
) -> list[int]:
    if not texts:
        return []
    # verbose=False: lengths above model_max_length are exactly what we are measuring.
    kwargs: dict[str, Any] = {"truncation": False, "verbose": False}
    encoded = tokenizer(text_target=texts, **kwargs) if target else tokenizer(texts, **kwargs)
    return sorted(len(ids) for ids in encoded["input_ids"])


def _pct(count: int, total: int) -> float:
    return 100.0 * count / total if total else 0.0


def length_report(
    records: Sequence[Record],
    tokenizer: PreTrainedTokenizerBase,
    *,
    prefix: str,
    max_source_len: int,
    max_target_len: int,
) -> LengthReport:
    """Measure how much truncation at these limits loses; records without summary skip targets."""
    sources = _untruncated_lengths(tokenizer, _sources(records, prefix), target=False)
    with_summary = [record for record in records if record.summary is not None]
    targets = _untruncated_lengths(tokenizer, _targets(with_summary), target=True)
    source_over = sum(n > max_source_len for n in sources)
    target_over = sum(n > max_target_len for n in targets)
    source_max = sources[-1] if sources else 0
    target_max = targets[-1] if targets else 0
    return LengthReport(
        n_records=len(sources),
        n_targets=len(targets),
        max_source_len=max_source_len,
        max_target_len=max_target_len,
        source_over=source_over,
        source_over_pct=_pct(source_over, len(sources)),
        target_over=target_over,
        target_over_pct=_pct(target_over, len(targets)),
        source_p50=_percentile(sources, 50),
        source_p95=_percentile(sources, 95),
        source_max=source_max,
        target_p50=_percentile(targets, 50),
        target_p95=_percentile(targets, 95),
        target_max=target_max,
        longest_source=min(source_max, max_source_len),
        longest_target=min(target_max, max_target_len),
    )


# --------------------------------------------------------------------------- batching


def make_collator(
    tokenizer: PreTrainedTokenizerBase,
    model: Any = None,
    pad_to_multiple_of: int | None = None,
) -> DataCollatorForSeq2Seq:
    """Pad a batch dynamically; labels pad with -100 so the loss ignores them.

    With ``model`` the collator also builds ``decoder_input_ids`` (shifted labels), which
    the model would otherwise derive itself; passing it keeps shapes explicit for tracing.
    """
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(
        tokenizer,
        model=model,
        padding=True,
        pad_to_multiple_of=pad_to_multiple_of,
        label_pad_token_id=-100,
        return_tensors="pt",
    )
