"""dialsum.core.csv_files: one strict CSV reader for training, prediction and ``dialsum
evaluate`` (issue 10, items 6 and 11), one atomic writer. An unclosed quote names the record
and the line its field started on; evaluate rejects shifted rows and scores exactly what
training-time scoring scores."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from dialsum.core.csv_files import write_csv_atomic
from dialsum.core.errors import DataError
from dialsum.data.dataset import read_dialogue_csv, read_predictions_csv
from dialsum.metrics import evaluate_files, score_summaries

# Text lines: 1 header, 2 t_0, 3-4 t_1 (its dialogue opens a quote on line 3 and never
# closes it), 5 t_2, 6 t_3: the quote at the start of t_3's dialogue is read as the end of
# t_1's field, and the parser gives up there, three lines after the real mistake.
UNCLOSED = (
    "fname,dialogue,summary,topic\n"
    "t_0,대화,요약,주제\n"
    't_1,"#Person1#: 안녕\n'
    "#Person2#: 네,요약,주제\n"
    "t_2,대화,요약,주제\n"
    't_3,"대화" 끝,요약,주제\n'
    "t_4,대화,요약,주제\n"
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_unclosed_quote_names_the_record_and_the_line_it_opened_on(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        read_dialogue_csv(write(tmp_path, "train.csv", UNCLOSED), "train")
    message = str(info.value)
    assert "unclosed quote" in message
    assert "record 3 (fname 't_1')" in message
    assert "dialogue field opens a quote on text line 3" in message
    assert "gave up at text line 6" in message
    assert '""' in message  # what to do


def test_unclosed_quote_to_the_end_of_the_file(tmp_path: Path) -> None:
    text = 'fname,dialogue,summary\nt_0,a,b\nt_1,c,"요약이\n끝나지\n않음\n'
    with pytest.raises(DataError) as info:
        read_dialogue_csv(write(tmp_path, "dev.csv", text), "dev")
    message = str(info.value)
    assert "record 3 (fname 't_1')" in message
    assert "summary field opens a quote on text line 3" in message
    assert "end of the file" in message


def test_evaluate_reports_an_unclosed_quote_not_a_missing_fname(tmp_path: Path) -> None:
    ref = write(tmp_path, "dev.csv", "fname,dialogue,summary\nd_0,a,요약\nd_1,b,요약\n")
    pred = write(tmp_path, "pred.csv", 'fname,summary\nd_0,"요약\nd_1,요약\n')
    with pytest.raises(DataError) as info:
        evaluate_files(pred, ref)
    message = str(info.value)
    assert "pred.csv" in message and "unclosed quote" in message
    assert "record 2 (fname 'd_0')" in message and "text line 2" in message
    assert "without a prediction" not in message


def test_evaluate_rejects_rows_with_extra_fields_like_training(tmp_path: Path) -> None:
    # An unquoted comma splits the summary: "98.75" from half a summary was exit 0 before.
    ref = write(tmp_path, "dev.csv", "fname,dialogue,summary\nd_0,a,철수가 밥을 먹는다\n")
    pred = write(tmp_path, "pred.csv", "fname,summary\nd_0,철수가 밥을,먹는다\n")
    with pytest.raises(DataError, match=r"more fields than the 2 header columns: line 2"):
        evaluate_files(pred, ref)
    shifted_ref = write(tmp_path, "ref2.csv", "fname,dialogue,summary\nd_0,a,밥을,먹는다\n")
    good_pred = write(tmp_path, "good.csv", "fname,summary\nd_0,밥을 먹는다\n")
    with pytest.raises(DataError, match=r"(?s)ref2.csv.*more fields than the 3 header columns"):
        evaluate_files(good_pred, shifted_ref)


def test_evaluate_scores_what_training_time_scoring_scores(tmp_path: Path) -> None:
    # Artifacts that cleaning removes (literal \n, <br>, trailing spaces) in both files, and
    # an extra reference column: evaluate must see what training-time scoring sees.
    ref = write(
        tmp_path,
        "dev.csv",
        "fname,dialogue,summary,summary1\n"
        "d_0,대화,#Person1#은 밥을<br>먹는다.,#Person1#이 식사한다\n"
        'd_1,대화,"회의가\\n내일 있다  ",\n'
        "d_2,대화,날씨가 좋다,\n",
    )
    pred = write(
        tmp_path,
        "dev_predictions.csv",
        "fname,summary\n"
        "d_0,#Person1#은 밥을<br>먹었다\n"
        "d_1,회의는\\n내일이다\n"
        'd_2,"오늘 날씨가 좋다  "\n',
    )
    # Training-time scoring: the generated summaries against the references as training
    # reads them (read_dialogue_csv), both written out here by hand.
    generated = ["#Person1#은 밥을\n먹었다", "회의는\n내일이다", "오늘 날씨가 좋다"]
    references = [
        ["#Person1#은 밥을\n먹는다.", "#Person1#이 식사한다"],
        ["회의가\n내일 있다"],
        ["날씨가 좋다"],
    ]
    assert [r.references for r in read_dialogue_csv(ref, "dev").records] == references
    assert read_predictions_csv(pred) == dict(zip(["d_0", "d_1", "d_2"], generated, strict=True))
    expected = score_summaries(generated, references)
    assert evaluate_files(pred, ref) == expected
    # The artifacts matter: left in ("br", "n" are words to ROUGE), the score differs.
    raw = ["#Person1#은 밥을<br>먹었다", "회의는\\n내일이다", "오늘 날씨가 좋다  "]
    assert score_summaries(raw, references)["score"] != expected["score"]


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
    dup = write(tmp_path, "pred.csv", "fname,summary\nt_0,a\nt_1,b\nt_0,c\n")
    with pytest.raises(DataError, match=re.escape("'t_0' (lines 2, 4)")):
        read_predictions_csv(dup)
    wrong = write(tmp_path, "wrong.csv", "fname,prediction\nt_0,a\n")
    with pytest.raises(DataError, match="missing required column.*summary.*found columns"):
        read_predictions_csv(wrong)


def test_a_200000_character_dialogue_is_read_not_reported_as_a_quoting_error(
    tmp_path: Path,
) -> None:
    """Python's csv module caps a field at 131,072 characters by default (issue 18, 11)."""
    dialogue = "#Person1#: " + "가" * 200_000
    path = write(tmp_path, "long.csv", f'fname,dialogue,summary\nt_0,"{dialogue}",요약\n')
    table = read_dialogue_csv(path, "train")
    assert table.records[0].dialogue == dialogue
