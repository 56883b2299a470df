"""Every CSV the tool reads or writes goes through here: strict by default.

Competition files come as UTF-8 (often with a BOM and CRLF from Excel) or as CP949/EUC-KR
from Korean Windows tools, and their fields hold newlines *inside quotes*, so they must go
through the ``csv`` module (never line splitting) with ``strict=True``: an unterminated
quote is an error, not the rest of the file swallowed into one field.

Every user mistake becomes one ``DataError`` that lists all problems of each kind with their
line numbers as a spreadsheet shows them (header = line 1, first data row = line 2); a
broken quote names the record and the line where the quote opened. Writing is atomic
(``write_csv_atomic``), so a reader never sees half a submission.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dialsum.core.atomic import atomic_open
from dialsum.core.errors import DataError

# Order matters: the first encoding that decodes the whole file wins. UTF-8 is strict enough
# that a CP949 file with Korean text essentially never decodes as UTF-8 by accident.
ENCODINGS: tuple[str, ...] = ("utf-8-sig", "cp949")
MAX_LISTED = 10  # problems listed per kind before "and N more"

_LINE_NOTE = "line numbers count the header as line 1, as a spreadsheet shows them"

# (spreadsheet line, fields) of one data row
Row = tuple[int, list[str]]


# --------------------------------------------------------------------------- problems


@dataclass
class Problems:
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
            where = listing(wheres)
            if kind in self.line_kinds:
                where = ("line " if len(wheres) == 1 else "lines ") + where
            lines.append(f"  - {kind}: {where}; {self.hints[kind]}")
        raise DataError("\n".join(lines))


def listing(items: Sequence[str]) -> str:
    """The first ``MAX_LISTED`` items, comma-separated, then "and N more"."""
    shown = ", ".join(items[:MAX_LISTED])
    rest = len(items) - MAX_LISTED
    return f"{shown} and {rest} more" if rest > 0 else shown


# --------------------------------------------------------------------------- reading


def read_csv_rows(
    path: Path, what: str, required: Sequence[str]
) -> tuple[list[str], list[Row], str]:
    """(normalised header, data rows, encoding) of a CSV that has the ``required`` columns.

    ``what`` names the file in errors ("train file", "predictions file").
    """
    text, encoding = _read_text(path, what)
    header, rows = _parse_csv(path, text)
    _require_columns(path, header, required, what)
    return header, rows, encoding


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


def _parse_csv(path: Path, text: str) -> tuple[list[str], list[Row]]:
    """Split into a normalised header and (spreadsheet line, fields) data rows."""
    # strict=True makes an unterminated quote an error instead of silently swallowing the
    # rest of the file into one field.
    # No field is longer than the whole text: lift the module's 131,072-character field
    # limit to that, so a long (valid) dialogue is not reported as a quoting error.
    csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[Row] = []
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
    rows: list[Row],
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


# --------------------------------------------------------------------------- row checks


def field_value(fields: list[str], header: list[str], name: str) -> str:
    """Value of column ``name``; short rows (missing trailing fields) read as empty."""
    if name not in header:
        return ""
    index = header.index(name)
    return fields[index] if index < len(fields) else ""


def check_field_count(problems: Problems, header: list[str], line: int, fields: list[str]) -> None:
    # Extra non-empty fields mean an unquoted comma shifted the row: its columns are wrong.
    if len(fields) > len(header) and any(f.strip() for f in fields[len(header) :]):
        problems.add_line(
            f"row with more fields than the {len(header)} header columns",
            line,
            "quote fields that contain commas",
        )


def check_duplicates(problems: Problems, lines_by_fname: dict[str, list[int]]) -> None:
    for fname, lines in lines_by_fname.items():
        if len(lines) > 1:
            where = f"{fname!r} (lines {', '.join(str(n) for n in lines)})"
            problems.add("duplicate fname", where, "every fname must be unique")


# --------------------------------------------------------------------------- predictions


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
