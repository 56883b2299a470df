"""Korean ROUGE: tokenizer rules, hand-checked scores, CSV pairing, HF decoding."""

from __future__ import annotations

import csv
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from transformers.trainer_utils import EvalPrediction

from dialsum.core.errors import DataError
from dialsum.metrics import (
    KoreanTokenizer,
    decode_keep_special,
    evaluate_files,
    format_scores,
    make_compute_metrics,
    score_summaries,
    tokenize_batch,
    tokenize_ko,
)

PRED = "밥을 먹었다"
REF = "밥을 먹는다"
PRED_TOKENS = ["밥", "을", "먹", "었", "다"]
REF_TOKENS = ["밥", "을", "먹", "는다"]


def f1(overlap: int, n_pred: int, n_ref: int) -> float:
    p, r = Fraction(overlap, n_pred), Fraction(overlap, n_ref)
    return float(2 * p * r / (p + r))


# --------------------------------------------------------------------------- tokenizer


def test_tokenizer_morphemes_of_the_hand_example() -> None:
    # The expected scores below are counted from exactly these morphemes.
    assert tokenize_ko(PRED) == PRED_TOKENS
    assert tokenize_ko(REF) == REF_TOKENS


def test_masks_stay_single_verbatim_tokens() -> None:
    tokens = tokenize_ko("#Person1#은 #Person2#에게 #PhoneNumber#로 전화한다.")
    assert tokens[:4] == ["#Person1#", "은", "#Person2#", "에게"]
    assert "#PhoneNumber#" in tokens
    assert not any(
        t.startswith("#") and t not in {"#Person1#", "#Person2#", "#PhoneNumber#"} for t in tokens
    )
    assert tokenize_ko("#Person1##Person2#") == ["#Person1#", "#Person2#"]


def test_mask_keeps_context_of_following_word() -> None:
    # Cutting the text at the mask would analyse "입니다" alone as 이 + 이 + ᆸ니다.
    assert tokenize_ko("#PhoneNumber#입니다.") == ["#PhoneNumber#", "이", "ᆸ니다"]


def test_punctuation_dropped_and_latin_lowercased() -> None:
    assert tokenize_ko("OK! Hello, World?") == ["ok", "hello", "world"]
    assert tokenize_ko("!!! ... ?") == []
    assert tokenize_ko("") == []
    assert tokenize_ko("   ") == []


def test_batch_matches_single_and_keeps_order_with_duplicates() -> None:
    texts = [REF, PRED, "", REF]
    assert tokenize_batch(texts) == [REF_TOKENS, PRED_TOKENS, [], REF_TOKENS]
    assert tokenize_batch([]) == []


def test_rouge_tokenizer_object_caches() -> None:
    tok = KoreanTokenizer()
    tok.prime([PRED, PRED])
    first = tok.tokenize(PRED)
    assert first == PRED_TOKENS
    assert tok.tokenize(PRED) is first  # cache hit, no second Kiwi call
    assert tok.tokenize(REF) == REF_TOKENS  # unprimed text still works


# --------------------------------------------------------------------------- scoring


def test_identical_strings_score_100() -> None:
    text = "#Person1#은 #Person2#에게 내일 회의가 3시에 있다고 알려준다."
    scores = score_summaries([text], [[text]])
    assert scores["rouge1"] == pytest.approx(1.0)
    assert scores["rouge2"] == pytest.approx(1.0)
    assert scores["rougeL"] == pytest.approx(1.0)
    assert scores["score"] == pytest.approx(100.0)
    assert scores["n"] == 1


def test_hand_computed_example() -> None:
    scores = score_summaries([PRED], [[REF]])
    # unigrams: 밥 을 먹 shared → 3 of 5 predicted, 3 of 4 reference
    r1 = f1(3, 5, 4)
    assert r1 == pytest.approx(2 / 3)
    # bigrams: (밥,을) (을,먹) shared → 2 of 4 predicted, 2 of 3 reference
    r2 = f1(2, 4, 3)
    assert r2 == pytest.approx(4 / 7)
    # LCS 밥 을 먹 → length 3, same fractions as unigrams
    assert scores["rouge1"] == pytest.approx(r1)
    assert scores["rouge2"] == pytest.approx(r2)
    assert scores["rougeL"] == pytest.approx(r1)
    assert scores["score"] == pytest.approx(100 * (r1 + r2 + r1) / 3)
    assert scores["rouge1_mean_ref"] == pytest.approx(r1)


def test_multi_reference_max_and_mean() -> None:
    scores = score_summaries([PRED], [[PRED, REF]])
    assert scores["rouge1"] == pytest.approx(1.0)
    assert scores["rouge1_mean_ref"] == pytest.approx((1 + 2 / 3) / 2)
    assert scores["rouge2_mean_ref"] == pytest.approx((1 + 4 / 7) / 2)
    for k in ("rouge1", "rouge2", "rougeL"):
        assert scores[k] >= scores[f"{k}_mean_ref"]


def test_corpus_mean_over_examples() -> None:
    scores = score_summaries([PRED, PRED], [[PRED], [REF]])
    assert scores["rouge1"] == pytest.approx((1 + 2 / 3) / 2)
    assert scores["n"] == 2


def test_empty_prediction_scores_zero() -> None:
    scores = score_summaries(["", "!!"], [[REF], [REF]])
    assert scores["rouge1"] == 0.0
    assert scores["score"] == 0.0
    assert scores["n"] == 2


def test_empty_corpus() -> None:
    assert score_summaries([], [])["n"] == 0


def test_length_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="2 predictions but 1"):
        score_summaries([PRED, PRED], [[REF]])


def test_bare_string_reference_rejected() -> None:
    # A str is a Sequence[str] of characters; scoring it would be silently wrong.
    with pytest.raises(ValueError, match="string"):
        score_summaries([PRED], [REF])  # type: ignore[list-item]


def test_format_scores() -> None:
    scores = {"rouge1": 0.41234, "rouge2": 0.20111, "rougeL": 0.38019, "score": 33.1213, "n": 60}
    assert format_scores(scores) == (
        "ROUGE-1 0.4123 | ROUGE-2 0.2011 | ROUGE-L 0.3802 | score 33.12 (n=60)"
    )


# --------------------------------------------------------------------------- CSV files


def write_csv(path: Path, rows: list[list[str]], encoding: str = "utf-8") -> Path:
    with path.open("w", encoding=encoding, newline="") as f:
        csv.writer(f).writerows(rows)
    return path


@pytest.fixture
def ref_csv(tmp_path: Path) -> Path:
    return write_csv(
        tmp_path / "dev.csv",
        [
            ["fname", "dialogue", "summary", "summary1"],
            ["dev_0", "#Person1#: 밥 먹었어?\n#Person2#: 응.", REF, PRED],
            ["dev_1", "#Person1#: 안녕", PRED, ""],
        ],
    )


def test_evaluate_files_multi_reference(tmp_path: Path, ref_csv: Path) -> None:
    pred = write_csv(
        tmp_path / "pred.csv", [["fname", "summary"], ["dev_1", PRED], ["dev_0", PRED]]
    )
    scores = evaluate_files(pred, ref_csv)
    assert scores["n"] == 2
    assert scores["rouge1"] == pytest.approx(1.0)  # dev_0 best reference is summary1
    assert scores["rouge1_mean_ref"] == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)


def test_evaluate_files_reads_bom_and_cp949(tmp_path: Path, ref_csv: Path) -> None:
    rows = [["fname", "summary"], ["dev_0", REF], ["dev_1", PRED]]
    bom = evaluate_files(write_csv(tmp_path / "bom.csv", rows, "utf-8-sig"), ref_csv)
    cp949 = evaluate_files(write_csv(tmp_path / "cp.csv", rows, "cp949"), ref_csv)
    assert bom == cp949
    assert bom["rouge1"] == pytest.approx(1.0)


def test_evaluate_files_missing_predictions(tmp_path: Path) -> None:
    refs = [["fname", "dialogue", "summary"]] + [[f"dev_{i}", "d", REF] for i in range(15)]
    ref = write_csv(tmp_path / "dev.csv", refs)
    pred = write_csv(tmp_path / "pred.csv", [["fname", "summary"], ["dev_0", PRED]])
    with pytest.raises(DataError) as err:
        evaluate_files(pred, ref)
    msg = str(err.value)
    assert "without a prediction 14: dev_1, dev_2" in msg
    assert "dev_10" in msg and "dev_11" not in msg  # first 10 listed
    assert "(+4 more)" in msg
    assert "dev.csv" in msg and "pred.csv" in msg


def test_evaluate_files_extra_predictions(tmp_path: Path, ref_csv: Path) -> None:
    rows = [["fname", "summary"], ["dev_0", PRED], ["dev_1", PRED], ["test_9", PRED]]
    with pytest.raises(DataError, match="not in the references 1: test_9"):
        evaluate_files(write_csv(tmp_path / "pred.csv", rows), ref_csv)


def test_evaluate_files_bad_inputs(tmp_path: Path, ref_csv: Path) -> None:
    # Both files go through the strict dialogue reader: its messages and spreadsheet line numbers.
    no_col = write_csv(tmp_path / "a.csv", [["fname", "text"], ["dev_0", PRED]])
    with pytest.raises(DataError, match="missing required column.*summary"):
        evaluate_files(no_col, ref_csv)
    dup = write_csv(tmp_path / "b.csv", [["fname", "summary"], ["dev_0", PRED], ["dev_0", PRED]])
    with pytest.raises(DataError, match=r"duplicate fname: 'dev_0' \(lines 2, 3\)"):
        evaluate_files(dup, ref_csv)
    rows = [["fname", "dialogue", "summary"], ["dev_0", "a\nb\nc", REF], ["dev_0", "d", REF]]
    with pytest.raises(DataError, match=r"(?s)dup_ref.csv.*'dev_0' \(lines 2, 3\)"):
        evaluate_files(ref_csv, write_csv(tmp_path / "dup_ref.csv", rows))
    with pytest.raises(DataError, match="not found"):
        evaluate_files(tmp_path / "nope.csv", ref_csv)
    no_ref = write_csv(tmp_path / "dev2.csv", [["fname", "dialogue", "summary"], ["x", "d", ""]])
    with pytest.raises(DataError, match="empty summary: line 2; a dev file needs a reference"):
        evaluate_files(write_csv(tmp_path / "c.csv", [["fname", "summary"], ["x", PRED]]), no_ref)


# --------------------------------------------------------------------------- HF decoding

PAD, EOS, UNK, P1, P2 = 0, 1, 2, 9, 10


@pytest.fixture(scope="module")
def hf_tokenizer() -> PreTrainedTokenizerFast:
    """A sentencepiece-style (Metaspace '▁') tokenizer with speaker tokens; no downloads."""
    vocab = [
        ("<pad>", 0.0),  # 0
        ("</s>", 0.0),  # 1
        ("<unk>", 0.0),  # 2
        ("▁", -2.0),  # 3
        ("▁회의", -1.0),  # 4
        ("가", -1.0),  # 5
        ("▁있다", -1.0),  # 6
        ("는", -1.0),  # 7
        ("▁오늘", -1.0),  # 8
    ]
    tok = Tokenizer(models.Unigram(vocab, unk_id=UNK, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    tok.decoder = decoders.Metaspace(prepend_scheme="first")
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=["#Person1#", "#Person2#"],
    )
    assert hf.convert_tokens_to_ids(["#Person1#", "#Person2#"]) == [P1, P2]
    return hf


def test_decode_keep_special(hf_tokenizer: PreTrainedTokenizerFast) -> None:
    ids = np.array(
        [
            [P1, 4, 5, 6, EOS, PAD, PAD],  # #Person1# ▁회의 가 ▁있다 </s>
            [8, 3, P2, 7, 3, UNK, -100],  # ▁오늘 ▁ #Person2# 는 ▁ <unk> (label padding)
            [PAD, P1, 3, 3, P2, EOS, -100],
        ]
    )
    expected = ["#Person1# 회의가 있다", "오늘 #Person2#는", "#Person1# #Person2#"]
    assert decode_keep_special(hf_tokenizer, ids) == expected
    assert decode_keep_special(hf_tokenizer, torch.tensor(ids)) == expected
    assert decode_keep_special(hf_tokenizer, ids.tolist()) == expected


def test_compute_metrics_from_labels(hf_tokenizer: PreTrainedTokenizerFast) -> None:
    preds = np.array([[P1, 4, 5, 6, EOS, PAD], [8, 4, EOS, PAD, PAD, PAD]])
    labels = np.array([[P1, 4, 5, 6, EOS, -100], [8, 4, 5, 6, EOS, -100]])
    fn = make_compute_metrics(hf_tokenizer)
    out = fn(EvalPrediction(predictions=preds, label_ids=labels))
    assert set(out) == {"rouge1", "rouge2", "rougeL", "score"}
    assert all(isinstance(v, float) for v in out.values())
    assert 0 < out["rouge1"] < 1
    # A tuple of (ids, extras) and a plain (predictions, labels) pair give the same.
    assert fn(EvalPrediction(predictions=(preds, np.zeros(1)), label_ids=labels)) == out
    assert fn((preds, labels)) == out


def test_compute_metrics_with_references(hf_tokenizer: PreTrainedTokenizerFast) -> None:
    preds = np.array([[P1, 4, 5, 6, EOS]])
    labels = np.full_like(preds, -100)  # ignored when references are given
    fn = make_compute_metrics(hf_tokenizer, references=[["오늘 회의", "#Person1# 회의가 있다"]])
    out = fn(EvalPrediction(predictions=preds, label_ids=labels))
    assert out["score"] == pytest.approx(100.0)
