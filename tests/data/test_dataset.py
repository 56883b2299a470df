"""Tests for dialsum.data.dataset: reading, validating and cleaning competition CSVs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from dialsum.core.errors import DataError, UserError
from dialsum.data.dataset import read_dialogue_csv

REPO = Path(__file__).resolve().parents[2]
SAMPLE_DIR = REPO / "data" / "sample"

HEADER = "fname,dialogue,summary,topic\n"


def write(tmp_path: Path, text: str, name: str = "train.csv", encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def error_of(path: Path, split: str = "train") -> str:
    with pytest.raises(DataError) as info:
        read_dialogue_csv(path, split)  # type: ignore[arg-type]
    return str(info.value)


# --------------------------------------------------------------------------- encodings


def test_utf8_bom_and_crlf(tmp_path: Path) -> None:
    header = "\ufefffname,dialogue,summary,topic\r\n"
    text = header + 't_0,"#Person1#: 안녕\r\n#Person2#: 네",인사한다.,인사\r\n'
    table = read_dialogue_csv(write(tmp_path, text), "train")
    assert table.encoding == "utf-8-sig"
    (record,) = table.records
    assert record.fname == "t_0"  # the BOM must not end up in the first column name
    assert record.dialogue == "#Person1#: 안녕\n#Person2#: 네"
    assert record.summary == "인사한다."
    assert record.references == ["인사한다."]
    assert record.topic == "인사"
    assert table.cleaned == 0  # CRLF inside fields is normal, not a "cleaned" field


def test_plain_utf8_is_reported_as_utf8(tmp_path: Path) -> None:
    table = read_dialogue_csv(write(tmp_path, HEADER + "a,대화,요약,주제\n"), "train")
    assert table.encoding == "utf-8"


def test_cp949_file(tmp_path: Path) -> None:
    text = HEADER + 'd_0,"#Person1#: 병원 예약하고 싶어요.\n#Person2#: 네.",예약한다.,병원\n'
    table = read_dialogue_csv(write(tmp_path, text, encoding="cp949"), "dev")
    assert table.encoding == "cp949"
    assert table.records[0].dialogue == "#Person1#: 병원 예약하고 싶어요.\n#Person2#: 네."
    assert table.records[0].summary == "예약한다."


def test_undecodable_file_names_file_and_fix(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(HEADER.encode() + b"a,\xff\xfe\xff,b,c\n")
    message = error_of(path)
    assert str(path) in message
    assert "line 2" in message and "UTF-8" in message


# --------------------------------------------------------------------------- csv structure


def test_embedded_newlines_commas_and_quotes(tmp_path: Path) -> None:
    dialogue = '#Person1#: 사과, 배 주세요.\n#Person2#: "네" 알겠습니다.\n#Person1#: 고마워요.'
    quoted = '"' + dialogue.replace('"', '""') + '"'
    text = HEADER + f"t_0,{quoted},과일을 산다.,쇼핑\nt_1,짧은 대화,요약,기타\n"
    table = read_dialogue_csv(write(tmp_path, text), "train")
    assert [r.fname for r in table.records] == ["t_0", "t_1"]
    assert table.records[0].dialogue == dialogue


def test_extra_columns_ignored_and_extra_references(tmp_path: Path) -> None:
    header = "id2,fname,dialogue,summary,summary1,summary2,summary3,note\n"
    text = header + "9,d_0,대화,요약,다른 요약,,셋째,x\n"
    (record,) = read_dialogue_csv(write(tmp_path, text), "dev").records
    assert record.references == ["요약", "다른 요약", "셋째"]
    assert record.topic is None


def test_unterminated_quote_is_an_error(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, HEADER + 't_0,"대화가 안 끝남,요약,주제\nt_1,a,b,c\n'))
    assert "unclosed quote in record 2 (fname 't_0')" in message
    assert "dialogue field opens a quote on text line 2" in message


# --------------------------------------------------------------------------- cleaning


def test_cleaning_is_counted(tmp_path: Path) -> None:
    text = HEADER + "t_0,#Person1#: 가\\n#Person2#: 나,요약<br>둘째,a\nt_1,깨끗,요약,b\n"
    table = read_dialogue_csv(write(tmp_path, text), "train")
    assert table.records[0].dialogue == "#Person1#: 가\n#Person2#: 나"
    assert table.records[0].summary == "요약\n둘째"
    assert table.cleaned == 2


# --------------------------------------------------------------------------- validation


def test_missing_file_and_empty_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    assert str(missing) in error_of(missing)
    empty = write(tmp_path, "")
    assert "empty" in error_of(empty)
    assert "no data rows" in error_of(write(tmp_path, HEADER, name="header_only.csv"))


def test_data_error_is_a_user_error() -> None:
    assert issubclass(DataError, UserError)


def test_missing_columns_named_with_found_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "fname,text\na,b\n")
    message = error_of(path)
    assert str(path) in message
    assert "missing required column(s) dialogue, summary" in message
    assert "found columns: fname, text" in message


def test_semicolon_file_gets_a_hint(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, "fname;dialogue;summary\na;b;c\n"))
    assert "not comma-separated" in message


def test_empty_dialogues_named_by_spreadsheet_line(tmp_path: Path) -> None:
    # Row t_0 spans two text lines; line numbers must still count rows (header = line 1).
    text = (
        HEADER
        + 't_0,"#Person1#: 가\n#Person2#: 나",요약,a\nt_1,,요약,a\nt_2,대화,요약,a\nt_3,  ,요약,a\n'
    )
    message = error_of(write(tmp_path, text))
    assert "empty dialogue: lines 3, 5;" in message
    assert "fill in the dialogue" in message


def test_duplicate_fnames_listed_with_lines(tmp_path: Path) -> None:
    rows = [f"t_{i},대화,요약,a" for i in range(12)] * 2
    message = error_of(write(tmp_path, HEADER + "\n".join(rows) + "\n"))
    assert "'t_0' (lines 2, 14)" in message
    assert "'t_9' (lines 11, 23)" in message
    assert "'t_10'" not in message
    assert "and 2 more" in message


def test_all_problem_kinds_reported_at_once(tmp_path: Path) -> None:
    text = HEADER + "t_0,,요약,a\nt_0,대화,,a\n,대화,요약,a\n"
    message = error_of(write(tmp_path, text))
    assert "4 problem(s)" in message
    for kind in (
        "empty dialogue: line 2;",
        "empty summary: line 3;",
        "empty fname: line 4;",
        "duplicate fname: 't_0' (lines 2, 3);",
    ):
        assert kind in message


def test_summary_required_for_train_but_not_test(tmp_path: Path) -> None:
    no_summary = write(tmp_path, "fname,dialogue\nx_0,대화\nx_1,대화 둘\n")
    message = error_of(no_summary, "train")
    assert "missing required column(s) summary" in message
    table = read_dialogue_csv(no_summary, "test")
    assert [(r.summary, r.references, r.topic) for r in table.records] == [(None, [], None)] * 2

    empty_summary = write(tmp_path, HEADER + "x_0,대화,,a\n", name="dev.csv")
    assert "empty summary: line 2;" in error_of(empty_summary, "dev")
    assert read_dialogue_csv(empty_summary, "test").records[0].summary is None


def test_shifted_row_is_reported(tmp_path: Path) -> None:
    message = error_of(write(tmp_path, HEADER + "t_0,대화,요약,a,밀린 값\n"))
    assert "more fields than the 4 header columns: line 2;" in message


def test_unknown_split_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        read_dialogue_csv(write(tmp_path, HEADER + "a,b,c,d\n"), "valid")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- bundled sample


def test_sample_files_read_cleanly() -> None:
    expected = {"train": 400, "dev": 80, "test": 80}
    topics: set[str] = set()
    for split, rows in expected.items():
        table = read_dialogue_csv(SAMPLE_DIR / f"{split}.csv", split)  # type: ignore[arg-type]
        assert len(table.records) == rows
        assert (table.encoding, table.cleaned) == ("utf-8", 0)
        assert table.records[0].fname == f"{split}_0"
        assert all(r.dialogue.startswith("#Person") for r in table.records)
        if split == "test":
            assert all(r.summary is None for r in table.records)
        else:
            assert all(r.summary and r.topic for r in table.records)
            topics |= {r.topic for r in table.records if r.topic}
    assert len(topics) >= 12


def test_sample_generator_reproduces_bundled_files(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location(
        "make_sample_data", REPO / "scripts" / "make_sample_data.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--out-dir", str(tmp_path)])
    for name in ("train.csv", "dev.csv", "test.csv"):
        assert (tmp_path / name).read_bytes() == (SAMPLE_DIR / name).read_bytes(), name
