"""Tests for dialsum.data.dataset: reading, validating, cleaning, tokenizing, batching, writing."""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from dialsum.core.errors import DataError, UserError
from dialsum.data.dataset import (
    Record,
    clean_text,
    length_report,
    make_collator,
    read_dialogue_csv,
    read_predictions_csv,
    tokenize_records,
    write_csv_atomic,
)

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


def test_clean_text_newline_forms() -> None:
    raw = "#Person1#: 안녕\\n#Person2#: 네<br>#Person1#: 좋아<BR />#Person2#: 응<br/>끝"
    assert clean_text(raw) == "#Person1#: 안녕\n#Person2#: 네\n#Person1#: 좋아\n#Person2#: 응\n끝"


def test_clean_text_whitespace() -> None:
    raw = "  \r\n#Person1#: 가   \r\n\r\n\r\n\r\n#Person2#: 나  \n"
    assert clean_text(raw) == "#Person1#: 가\n\n#Person2#: 나"
    assert clean_text("#Person1#: #PhoneNumber#로 연락") == "#Person1#: #PhoneNumber#로 연락"


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


# --------------------------------------------------------------------------- tokenization


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """Whitespace word-level tokenizer that appends </s>, like T5's; built in process."""
    core = Tokenizer(models.WordLevel(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    words = " ".join(["summarize:"] + [f"w{i}" for i in range(30)])
    core.train_from_iterator(
        [words], trainers.WordLevelTrainer(special_tokens=["<pad>", "</s>", "<unk>"])
    )
    eos_id = core.token_to_id("</s>")
    core.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", eos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def words(n: int, start: int = 0) -> str:
    return " ".join(f"w{start + i}" for i in range(n))


def record(source_words: int, target_words: int | None, fname: str = "r") -> Record:
    summary = None if target_words is None else words(target_words, start=20)
    return Record(fname, words(source_words), summary, [summary] if summary else [], None)


def test_tokenize_records_truncates_and_keeps_eos(tokenizer: PreTrainedTokenizerFast) -> None:
    records = [record(3, 2), record(10, 8)]
    examples = tokenize_records(
        records,
        tokenizer,
        prefix="summarize: ",
        max_source_len=6,
        max_target_len=4,
        with_labels=True,
    )
    eos = tokenizer.eos_token_id
    short, long = examples
    assert short["input_ids"] == tokenizer.convert_tokens_to_ids(
        ["summarize:", "w0", "w1", "w2"]
    ) + [eos]
    assert short["attention_mask"] == [1] * 5
    assert short["labels"] == tokenizer.convert_tokens_to_ids(["w20", "w21"]) + [eos]
    assert len(long["input_ids"]) == 6 and long["input_ids"][-1] == eos
    assert len(long["attention_mask"]) == 6
    assert len(long["labels"]) == 4 and long["labels"][-1] == eos
    assert all(isinstance(i, int) for i in long["input_ids"])


def test_tokenize_records_without_labels(tokenizer: PreTrainedTokenizerFast) -> None:
    (example,) = tokenize_records(
        [record(3, None)],
        tokenizer,
        prefix="",
        max_source_len=10,
        max_target_len=4,
        with_labels=False,
    )
    assert set(example) == {"input_ids", "attention_mask"}
    with pytest.raises(ValueError, match="without a summary"):
        tokenize_records(
            [record(3, None, fname="t_7")],
            tokenizer,
            prefix="",
            max_source_len=10,
            max_target_len=4,
            with_labels=True,
        )


def test_length_report_numbers(tokenizer: PreTrainedTokenizerFast) -> None:
    # Untruncated lengths (prefix + words + eos): sources 5, 7, 12; targets 2, 3, 7.
    records = [record(3, 1), record(5, 2), record(10, 6)]
    kwargs = {"prefix": "summarize: ", "max_source_len": 8, "max_target_len": 4}
    report = length_report(records, tokenizer, **kwargs)
    assert (report.n_records, report.n_targets) == (3, 3)
    assert (report.source_over, round(report.source_over_pct, 1)) == (1, 33.3)
    assert (report.source_p50, report.source_p95, report.source_max) == (7, 12, 12)
    assert (report.target_over, report.target_p50, report.target_max) == (1, 3, 7)
    assert (report.longest_source, report.longest_target) == (8, 4)
    # The planner trusts longest_* as the real shapes: they must match tokenize_records.
    examples = tokenize_records(records, tokenizer, with_labels=True, **kwargs)
    assert max(len(e["input_ids"]) for e in examples) == report.longest_source
    assert max(len(e["labels"]) for e in examples) == report.longest_target
    text = report.format()
    assert "max 12" in text and "1 (33.3%) longer than max_source_len 8" in text
    assert "longest source 8" in text and "longest target 4" in text


def test_length_report_without_summaries(tokenizer: PreTrainedTokenizerFast) -> None:
    report = length_report(
        [record(4, None)], tokenizer, prefix="", max_source_len=3, max_target_len=4
    )
    assert (report.n_targets, report.target_max, report.longest_target) == (0, 0, 0)
    assert (report.source_max, report.longest_source) == (5, 3)
    assert "target" not in report.format().splitlines()[0]
    assert len(report.format().splitlines()) == 2


# --------------------------------------------------------------------------- collator


def test_collator_pads_labels_with_ignore_index(tokenizer: PreTrainedTokenizerFast) -> None:
    examples = tokenize_records(
        [record(2, 1), record(6, 4)],
        tokenizer,
        prefix="",
        max_source_len=16,
        max_target_len=16,
        with_labels=True,
    )
    batch = make_collator(tokenizer, pad_to_multiple_of=8)(examples)
    assert batch["input_ids"].shape == (2, 8)
    assert batch["input_ids"][0, 3:].tolist() == [tokenizer.pad_token_id] * 5
    assert batch["attention_mask"][0].tolist() == [1, 1, 1] + [0] * 5
    assert batch["labels"].shape == (2, 8)
    assert batch["labels"][0, 2:].tolist() == [-100] * 6
    assert "decoder_input_ids" not in batch


class _ShiftingModel:
    """Stands in for a seq2seq model: the collator only calls this one method on it.

    (Importing a real T5 class costs tens of seconds on a small CPU machine.)
    """

    def __init__(self, start_id: int) -> None:
        self.start_id = start_id
        self.seen_labels: torch.Tensor | None = None

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        self.seen_labels = labels
        shifted = torch.full_like(labels, self.start_id)
        shifted[:, 1:] = labels[:, :-1].clamp(min=0)
        return shifted


def test_collator_with_model_builds_decoder_inputs(tokenizer: PreTrainedTokenizerFast) -> None:
    model = _ShiftingModel(start_id=tokenizer.pad_token_id)
    examples = tokenize_records(
        [record(2, 1), record(3, 3)],
        tokenizer,
        prefix="",
        max_source_len=16,
        max_target_len=16,
        with_labels=True,
    )
    batch = make_collator(tokenizer, model=model)(examples)
    assert model.seen_labels is not None and model.seen_labels[0, -1].item() == -100
    decoder = batch["decoder_input_ids"]
    assert decoder.shape == batch["labels"].shape
    assert decoder[:, 0].tolist() == [tokenizer.pad_token_id] * 2
    assert torch.equal(decoder[1, 1:], batch["labels"][1, :-1])


# --------------------------------------------------------------------------- writing


def test_write_csv_atomic_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "out" / "nested" / "submission.csv"
    rows = [("t_0", "첫 줄\n둘째 줄, 쉼표"), ("t_1", '"따옴표"')]
    write_csv_atomic(path, ["fname", "summary"], rows)
    raw = path.read_bytes()
    assert not raw.startswith(b"\xef\xbb\xbf") and b"\r\n" not in raw
    assert read_predictions_csv(path) == {"t_0": "첫 줄\n둘째 줄, 쉼표", "t_1": '"따옴표"'}
    assert sorted(os.listdir(path.parent)) == ["submission.csv"]


def test_write_csv_atomic_failure_leaves_destination_untouched(tmp_path: Path) -> None:
    path = tmp_path / "submission.csv"
    path.write_text("fname,summary\nold,이전 결과\n", encoding="utf-8")
    before = path.read_bytes()

    def rows() -> Iterator[tuple[str, str]]:
        yield ("t_0", "새 결과")
        raise RuntimeError("generation crashed")

    with pytest.raises(RuntimeError, match="generation crashed"):
        write_csv_atomic(path, ["fname", "summary"], rows())
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["submission.csv"]  # the temporary file is gone


def test_read_predictions_duplicates_and_columns(tmp_path: Path) -> None:
    dup = write(tmp_path, "fname,summary\nt_0,a\nt_1,b\nt_0,c\n", name="pred.csv")
    with pytest.raises(DataError, match=re.escape("'t_0' (lines 2, 4)")):
        read_predictions_csv(dup)
    wrong = write(tmp_path, "fname,prediction\nt_0,a\n", name="wrong.csv")
    with pytest.raises(DataError, match="missing required column.*summary.*found columns"):
        read_predictions_csv(wrong)


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
