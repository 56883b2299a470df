"""Time Korean ROUGE: batched + cached tokenization against one Kiwi call per text.

    uv run python bench/bench_metrics.py [--n 500] [--refs 3]

Prints seconds for each path and the speed-up ratio; both paths must give equal scores.
"""

from __future__ import annotations

import argparse
import csv
import time
from collections.abc import Callable
from pathlib import Path

from rouge_score import rouge_scorer

from dialsum.metrics import ROUGE_TYPES, _kiwi, score_summaries, tokenize_ko

SAMPLE_DEV = Path(__file__).resolve().parents[1] / "data" / "sample" / "dev.csv"
FALLBACK = ["#Person1#은 회색 셔츠를 3만 5천 원에 카드로 산다.", "#Person2#는 내일 회의에 온다."]


class _PerTextTokenizer:
    """Baseline: what a plain custom tokenizer does (one Kiwi call per text, no cache)."""

    def tokenize(self, text: str) -> list[str]:
        return tokenize_ko(text)


def _summaries() -> list[str]:
    if not SAMPLE_DEV.is_file():
        return FALLBACK
    with SAMPLE_DEV.open(encoding="utf-8-sig", newline="") as f:
        return [row["summary"] for row in csv.DictReader(f)] or FALLBACK


def _corpus(n: int, n_refs: int) -> tuple[list[str], list[list[str]]]:
    # Pair up sample summaries so every text is distinct, as in a real dev set.
    pool = _summaries()

    def text(i: int) -> str:
        return f"{pool[i % len(pool)]} {pool[(i * 7 + 1) % len(pool)]}"

    preds = [text(i) for i in range(n)]
    refs = [[text(i + 1 + j * n) for j in range(n_refs)] for i in range(n)]
    return preds, refs


def _baseline(preds: list[str], refs: list[list[str]]) -> float:
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), tokenizer=_PerTextTokenizer())
    total = 0.0
    for pred, rs in zip(preds, refs, strict=True):
        per_ref = [scorer.score(r, pred) for r in rs]
        total += sum(max(s[k].fmeasure for s in per_ref) for k in ROUGE_TYPES) / 3
    return 100 * total / len(preds)


def _timed(fn: Callable[[], float]) -> tuple[float, float]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="examples")
    parser.add_argument("--refs", type=int, default=3, help="references per example")
    args = parser.parse_args()
    preds, refs = _corpus(args.n, args.refs)

    build_s, _ = _timed(lambda: float(_kiwi() is not None))
    fast_s, fast = _timed(lambda: score_summaries(preds, refs)["score"])
    slow_s, slow = _timed(lambda: _baseline(preds, refs))
    assert abs(fast - slow) < 1e-9, (fast, slow)

    print(f"kiwi build + warm-up{build_s:7.2f} s")
    print(f"score_summaries      {fast_s:7.2f} s  (n={args.n}, refs={args.refs}, score {fast:.2f})")
    print(f"per-text baseline    {slow_s:7.2f} s")
    print(f"speed-up             {slow_s / fast_s:7.1f}x")


if __name__ == "__main__":
    main()
