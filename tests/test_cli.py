from __future__ import annotations

import pytest
import torch

from dialsum.cli import app, main

VERBS = [c.name or c.callback.__name__ for c in app.registered_commands]


def test_every_verb_has_help_with_examples(capsys) -> None:
    assert {"train", "predict", "evaluate", "demo", "plan", "guide", "monitor", "probe"} <= set(
        VERBS
    )
    for verb in VERBS:
        assert main([verb, "--help"]) == 0
        out = capsys.readouterr().out
        assert "Example" in out, verb


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
@pytest.mark.parametrize("argv", [["monitor", "--once"], ["probe", "-s", "tiny"]])
def test_gpu_only_verbs_exit_2_without_a_gpu(argv, capsys) -> None:
    assert main(argv) == 2
    assert "GPU" in capsys.readouterr().err


def test_unknown_section_exits_2(capsys) -> None:
    assert main(["predict", "-s", "tinny"]) == 2
    assert "did you mean tiny?" in capsys.readouterr().err


def test_evaluate_json_is_parseable(tmp_path, capsys) -> None:
    import csv
    import json
    from pathlib import Path

    ref = Path(__file__).resolve().parents[1] / "data/sample/dev.csv"
    with ref.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    pred = tmp_path / "pred.csv"
    with pred.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["fname", "summary"])
        writer.writerows([r["fname"], r["summary"]] for r in rows)
    assert main(["evaluate", "--pred", str(pred), "--ref", str(ref), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["score"] == 100.0 and scores["n"] == len(rows)
