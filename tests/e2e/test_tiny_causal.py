"""End to end on CPU, no download: the tiny causal LM (tiny:llama) trains, predicts and is
scored through the real CLI with full fine-tuning, LoRA and QLoRA (real bitsandbytes 4-bit
layers; skipped without the bnb extra)."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest

from dialsum.cli.app import main

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config.yaml"
DEV = ROOT / "data/sample/dev.csv"
FAST = [
    "--set", "data.max_train_samples=16",
    "--set", "data.max_eval_samples=4",
    "--set", "training.report_to=[none]",
    "--set", "inference.max_new_tokens=8",
    # Predict the dev dialogues, so the submission can be scored against their references.
    "--set", f"data.test={DEV}",
]  # fmt: skip
HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize(
    "method",
    [
        "full",
        "lora",
        pytest.param(
            "qlora",
            marks=pytest.mark.skipif(not HAS_BNB, reason="needs bitsandbytes: uv sync --extra bnb"),
        ),
    ],
)
def test_tiny_causal_trains_predicts_and_scores(method: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "runs"
    common = ["-c", str(CONFIG), "-s", "tiny_causal", "--set", f"model.method={method}", *FAST]
    # LoRA also evaluates (loss + ROUGE of generations from the prompts) and checkpoints.
    evaluate = ["--set", "training.eval_strategy=steps", "--set", "training.eval_steps=2"]
    evaluate += ["--set", "training.save_strategy=steps", "--set", "training.save_steps=2"]
    extra = evaluate if method == "lora" else ["--set", "training.eval_strategy=no"]
    code = main(["train", *common, "--max-steps", "2", "--output-dir", str(out), *extra])
    assert code == 0, capsys.readouterr().err
    (run,) = list((out / "tiny_causal").iterdir())
    saved = {p.name for p in (run / "best").iterdir()}
    if method == "full":
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= saved
    else:  # adapters and tokenizer only; predict puts them back on the base
        assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= saved
        assert "config.json" not in saved
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["train_loss"] > 0
    if method == "lora":
        assert 0 <= metrics["eval_score"] <= 100 and metrics["eval_loss"] > 0

    submission = tmp_path / "submission.csv"
    code = main(
        ["predict", *common, "--output", str(submission), "--set", f"training.output_dir={out}"]
    )
    assert code == 0, capsys.readouterr().err
    predicted = rows(submission)
    assert [r["fname"] for r in predicted] == [r["fname"] for r in rows(DEV)]
    assert all(r["summary"].strip() for r in predicted)
    assert not any("요약하세요" in r["summary"] for r in predicted)  # no prompt echoed
    assert main(["evaluate", "--pred", str(submission), "--ref", str(DEV)]) == 0
