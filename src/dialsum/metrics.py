"""Korean-aware ROUGE: morpheme tokens from Kiwi, scored by ``rouge_score``.

Whitespace words are a poor unit for Korean: "회의를" and "회의가" share the noun but
share no whitespace token, so ROUGE on words punishes correct content for its particle.
We score Kiwi morphemes instead and let ``rouge_score`` do the counting.

Tokenization rules (both sides of a comparison get the same treatment):

- ``#...#`` masks (``#Person1#``, ``#PhoneNumber#``) are one token each, kept verbatim.
  Left alone, Kiwi reads ``#Person1`` as a hashtag and glues the rest to the next
  word; we pin each mask span as a proper noun so the words around it keep their context.
- Everything else becomes Kiwi morpheme forms (``token.form``), e.g. "먹었다" →
  먹 / 었 / 다.
- Tokens made only of punctuation or symbols are dropped: a stray "." or "!" is not
  content, and keeping it rewards copying the reference's punctuation.
- Latin letters are lowercased ("OK" and "ok" are the same word).

``score`` is the competition number: the mean of ROUGE-1/2/L F1 (best reference per
example, averaged over the corpus) times 100.
"""

from __future__ import annotations

import functools
import re
import statistics
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rouge_score import rouge_scorer

from dialsum.core.errors import DataError
from dialsum.data.dataset import read_dialogue_csv, read_predictions_csv

if TYPE_CHECKING:
    from kiwipiepy import Kiwi

ROUGE_TYPES: tuple[str, ...] = ("rouge1", "rouge2", "rougeL")

# `\w` covers Hangul too, so Korean-named masks ("#사람1#") also stay whole.
_MASK_RE = re.compile(r"#\w+#")
_WHITESPACE_RE = re.compile(r"\s+")
_MAX_LISTED = 10


# --------------------------------------------------------------------------- tokenizer


@functools.lru_cache(maxsize=1)
def _kiwi() -> Kiwi:
    """The process-wide Kiwi analyser; building it loads a model (seconds), so once."""
    from kiwipiepy import Kiwi  # deferred: importing is cheap, building is not

    kiwi = Kiwi()
    # The first analysis loads more of the model (seconds); pay it here, with the build,
    # so that timings of the first scoring call mean what they say.
    kiwi.tokenize("가")
    return kiwi


def _is_punct_or_symbol(token: str) -> bool:
    return all(unicodedata.category(ch)[0] in "PS" for ch in token)


def _mask_spans(text: str) -> list[tuple[int, int, str]]:
    """Kiwi ``pretokenized`` spans that force each ``#...#`` mask to one proper noun.

    Pinning the spans (rather than cutting the text at the masks) keeps the context:
    in "#PhoneNumber#입니다" Kiwi still sees a noun before "입니다" and reads 이/VCP,
    whereas the cut-off piece "입니다" alone is misread as pronoun 이 + copula 이.
    """
    return [(m.start(), m.end(), "NNP") for m in _MASK_RE.finditer(text)]


def _clean_token(form: str) -> str | None:
    """The scored form of one morpheme, or None to drop it."""
    if _MASK_RE.fullmatch(form):
        return form  # verbatim: "#Person1#" must not become "#person1#"
    if not form.strip() or _is_punct_or_symbol(form):
        return None
    return form.lower()


def tokenize_batch(texts: Sequence[str]) -> list[list[str]]:
    """Tokenize many texts with one Kiwi call (Kiwi spreads a list over its threads)."""
    unique = list(dict.fromkeys(texts))  # each distinct text is analysed once
    analysed: dict[str, list[str]] = {}
    if unique:
        for text, tokens in zip(
            unique, _kiwi().tokenize(unique, pretokenized=_mask_spans), strict=True
        ):
            cleaned = (_clean_token(t.form) for t in tokens)
            analysed[text] = [form for form in cleaned if form is not None]
    return [analysed[text] for text in texts]


def tokenize_ko(text: str) -> list[str]:
    """Morpheme tokens of one text, as scored by ROUGE (see the module docstring)."""
    return tokenize_batch([text])[0]


class KoreanTokenizer:
    """The ``tokenizer`` object ``RougeScorer`` wants, with a per-text cache.

    ``prime`` tokenizes a whole batch in one Kiwi call; ``RougeScorer.score`` then asks
    for texts one at a time and gets cache hits. A reference compared against several
    predictions (or a prediction against several references) is analysed once.
    """

    def __init__(self) -> None:
        self._cache: dict[str, list[str]] = {}

    def prime(self, texts: Iterable[str]) -> None:
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            self._cache.update(zip(missing, tokenize_batch(missing), strict=True))

    def tokenize(self, text: str) -> list[str]:
        if text not in self._cache:
            self._cache[text] = tokenize_ko(text)
        return self._cache[text]


# --------------------------------------------------------------------------- scoring


def _check_inputs(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if len(predictions) != len(references):
        raise ValueError(
            f"{len(predictions)} predictions but {len(references)} reference lists; "
            "they must pair up one to one"
        )
    for i, refs in enumerate(references):
        if isinstance(refs, str):
            raise ValueError(
                f"references[{i}] is a string; pass a list of reference strings per example"
            )
        if len(refs) == 0:
            raise ValueError(f"references[{i}] is empty; each example needs a reference")


def _example_f1(
    scorer: rouge_scorer.RougeScorer, prediction: str, refs: Sequence[str]
) -> tuple[dict[str, float], dict[str, float]]:
    """(max over references, mean over references) of each ROUGE F1 for one example."""
    per_ref = [scorer.score(ref, prediction) for ref in refs]  # score(target, prediction)
    best = {k: max(s[k].fmeasure for s in per_ref) for k in ROUGE_TYPES}
    mean = {k: statistics.fmean(s[k].fmeasure for s in per_ref) for k in ROUGE_TYPES}
    return best, mean


def score_summaries(
    predictions: Sequence[str], references: Sequence[Sequence[str]]
) -> dict[str, float]:
    """Corpus ROUGE F1 (0..1) with several references per example.

    Returns ``rouge1``/``rouge2``/``rougeL`` (per example the best reference, then the
    corpus mean), ``rouge1_mean_ref``/... (per example the mean over references),
    ``score`` (mean of the three best-reference F1 × 100) and ``n``. An empty
    prediction scores 0 for its example.
    """
    _check_inputs(predictions, references)
    tokenizer = KoreanTokenizer()
    tokenizer.prime([*predictions, *(r for refs in references for r in refs)])
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), tokenizer=tokenizer)
    best_sum = dict.fromkeys(ROUGE_TYPES, 0.0)
    mean_sum = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, refs in zip(predictions, references, strict=True):
        best, mean = _example_f1(scorer, prediction, refs)
        for k in ROUGE_TYPES:
            best_sum[k] += best[k]
            mean_sum[k] += mean[k]
    n = len(predictions)
    scores: dict[str, float] = {k: best_sum[k] / n if n else 0.0 for k in ROUGE_TYPES}
    scores.update({f"{k}_mean_ref": mean_sum[k] / n if n else 0.0 for k in ROUGE_TYPES})
    scores["score"] = 100.0 * statistics.fmean(scores[k] for k in ROUGE_TYPES)
    scores["n"] = n
    return scores


def format_scores(scores: dict[str, float]) -> str:
    """One line: ``ROUGE-1 0.4123 | ROUGE-2 0.2011 | ROUGE-L 0.3802 | score 33.12 (n=60)``."""
    return (
        f"ROUGE-1 {scores['rouge1']:.4f} | ROUGE-2 {scores['rouge2']:.4f} | "
        f"ROUGE-L {scores['rougeL']:.4f} | score {scores['score']:.2f} (n={int(scores['n'])})"
    )


# --------------------------------------------------------------------------- CSV files


def _listed(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    more = f" (+{len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else ""
    return f"{len(names)}: {shown}{more}"


def _check_fnames(
    pred_csv: Path, ref_csv: Path, preds: dict[str, str], refs: dict[str, list[str]]
) -> None:
    missing = [f for f in refs if f not in preds]
    extra = [f for f in preds if f not in refs]
    problems = []
    if missing:
        problems.append(f"fnames in {ref_csv} without a prediction {_listed(missing)}")
    if extra:
        problems.append(f"fnames in {pred_csv} not in the references {_listed(extra)}")
    if problems:
        raise DataError(
            f"{pred_csv} does not match {ref_csv}: "
            + "; ".join(problems)
            + ". Predict every reference fname and nothing else."
        )


def evaluate_files(pred_csv: str | Path, ref_csv: str | Path) -> dict[str, float]:
    """Score a prediction CSV (``fname,summary``) against a reference CSV.

    The reference CSV is the competition dev format ``fname,dialogue,summary`` with
    optional extra references in ``summary1..summary3``. Both files go through the strict
    reader training and ``predict`` use (``dialsum.core.csv_files``): the same encodings, the
    same row checks (a row shifted by an unquoted comma is an error, not half a summary) and
    the same cleaning (``dialsum.data.clean``), so this scores exactly what training-time
    evaluation scores. Rows pair up by fname; a prediction missing or extra is a
    ``DataError``.
    """
    pred_path, ref_path = Path(pred_csv), Path(ref_csv)
    preds = read_predictions_csv(pred_path)
    refs = {r.fname: r.references for r in read_dialogue_csv(ref_path, "dev").records}
    _check_fnames(pred_path, ref_path, preds, refs)
    fnames = list(refs)  # reference order, so results line up with the dev file
    return score_summaries([preds[f] for f in fnames], [refs[f] for f in fnames])


# --------------------------------------------------------------------------- HF trainer


def _strip_strings(tokenizer: Any) -> list[str]:
    """Special-token strings to delete from decoded text (speaker/PII masks stay).

    Only the framework tokens: pad/eos/bos/unk, plus cls/sep/mask where a tokenizer
    defines them (BART-style vocabularies). Longest first, so no string is cut by a
    shorter one it contains.
    """
    names = ("pad", "eos", "bos", "unk", "cls", "sep", "mask")
    strings = {getattr(tokenizer, f"{name}_token", None) for name in names}
    return sorted((str(s) for s in strings if s), key=len, reverse=True)


def _as_id_rows(ids_batch: Any, pad_id: int) -> list[list[int]]:
    """Plain int rows with -100 (ignored label positions) and other negatives → pad."""
    rows = ids_batch.tolist() if hasattr(ids_batch, "tolist") else ids_batch
    return [[int(i) if int(i) >= 0 else pad_id for i in row] for row in rows]


def decode_keep_special(tokenizer: Any, ids_batch: Any) -> list[str]:
    """Decode generated ids, keeping ``#PersonN#``/PII tokens and dropping pad/eos/bos.

    ``skip_special_tokens=True`` would also delete the speaker tags (they are added
    special tokens), yet the references contain them and they are scored as words. So
    decode everything, remove the framework tokens as text, and collapse whitespace
    (sentencepiece '▁' becomes a space in decoding; removed tokens leave gaps).
    """
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    texts = tokenizer.batch_decode(
        _as_id_rows(ids_batch, pad_id),
        skip_special_tokens=False,
        clean_up_tokenization_spaces=False,
    )
    strip = _strip_strings(tokenizer)
    cleaned = []
    for text in texts:
        for s in strip:
            text = text.replace(s, " ")
        cleaned.append(_WHITESPACE_RE.sub(" ", text).strip())
    return cleaned


def _prediction_ids(predictions: Any) -> Any:
    """Token ids from ``EvalPrediction.predictions``.

    Some models return a tuple (ids or logits first, then extras); without
    ``predict_with_generate`` the first element is logits, shaped (batch, len, vocab).
    """
    if isinstance(predictions, tuple):
        predictions = predictions[0]
    if getattr(predictions, "ndim", 2) == 3:
        predictions = predictions.argmax(-1)
    return predictions


def _unpack_eval_pred(eval_pred: Any) -> tuple[Any, Any]:
    if hasattr(eval_pred, "predictions"):
        return eval_pred.predictions, eval_pred.label_ids
    return eval_pred[0], eval_pred[1]


def make_compute_metrics(
    tokenizer: Any, references: list[list[str]] | None = None
) -> Callable[[Any], dict[str, float]]:
    """``compute_metrics`` for ``Seq2SeqTrainer(predict_with_generate=True)``.

    With ``references`` (one list per eval example, in eval order) predictions are
    scored against all of them; otherwise against the decoded labels (one reference).
    """

    def compute_metrics(eval_pred: Any) -> dict[str, float]:
        raw_preds, label_ids = _unpack_eval_pred(eval_pred)
        predictions = decode_keep_special(tokenizer, _prediction_ids(raw_preds))
        if references is not None:
            refs = references
        else:
            refs = [[label] for label in decode_keep_special(tokenizer, label_ids)]
        scores = score_summaries(predictions, refs)
        return {k: float(scores[k]) for k in (*ROUGE_TYPES, "score")}

    return compute_metrics
