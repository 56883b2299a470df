from __future__ import annotations

import pytest
import torch

from dialsum.cli.app import app, main

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

    ref = Path(__file__).resolve().parents[2] / "data/sample/dev.csv"
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


def test_plan_from_a_folder_with_only_config_json(tmp_path, capsys) -> None:
    import json

    from transformers import T5Config

    config = T5Config(
        vocab_size=512, d_model=32, d_ff=64, d_kv=8, num_layers=1, num_heads=2,
        tie_word_embeddings=False, decoder_start_token_id=0, pad_token_id=0,
    )  # fmt: skip
    config.save_pretrained(tmp_path)
    argv = ["plan", "--model", str(tmp_path), "--source-len", "64", "--target-len", "16"]
    assert main([*argv, "--gpu", "10GB", "--effective-batch", "8", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    # Counted by hand (attention inner size 2 heads x 8 = 16, 32 relative-position buckets):
    # shared embedding 512 x 32 = 16,384; encoder block: q, k, v, o 4 x 16 x 32 = 2,048,
    # position bias 32 x 2 = 64, feed-forward 2 x 32 x 64 = 4,096, 2 layer norms 64, then the
    # final norm 32 -> 6,304; decoder: self-attention 2,048 + 64, cross-attention 2,048,
    # feed-forward 4,096, 3 norms 96, final norm 32 -> 8,384; the untied lm_head 512 x 32 =
    # 16,384 (a tied head would drop it). 16,384 + 6,304 + 8,384 + 16,384 = 47,456.
    assert plan["params"] == 47_456
    assert plan["micro_batch_size"] * plan["gradient_accumulation_steps"] == 8
    assert plan["effective_batch_size"] == 8
    for key in ("eval_batch_size", "generation_batch_size", "precision", "gradient_checkpointing",
                "predicted_peak_bytes", "usable_bytes", "breakdown"):  # fmt: skip
        assert key in plan


# -- usage errors: usage line, error, close match, exit 2, never a traceback ----------------

USAGE_CASES = [
    (["train", "--max_steps", "10"], "--max-steps"),  # the seed's spelling
    (["train", "--max-steps"], "requires an argument"),
    (["train", "--max-steps", "ten"], "valid integer"),
    (["predict", "--outptu", "x.csv"], "--output"),
    (["evaluate", "--pred"], "requires an argument"),
    (["plan", "--gpu"], "requires an argument"),
    (["plan", "--num-gpus", "two"], "valid integer"),
    (["guide", "--nope"], "No such option"),
    (["demo", "--max-steps", "x"], "valid integer"),
    (["monitor", "--interval", "fast"], "Invalid value"),
    (["probe", "--bogus"], "No such option"),
    (["trian"], "No such command"),
]


@pytest.mark.parametrize(("argv", "expected"), USAGE_CASES)
def test_usage_errors_exit_2_with_usage_and_a_hint(argv, expected, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert "Usage:" in err
    assert "Traceback" not in err


def test_ctrl_c_exits_130_with_one_line(monkeypatch, capsys) -> None:
    import dialsum.training.recipe as train_mod

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "run_training", interrupted)
    assert main(["train", "-s", "tiny"]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "--resume" in err


def test_a_config_error_does_not_wait_for_torch() -> None:
    # Checked in a fresh interpreter: importing torch/transformers takes seconds.
    import subprocess
    import sys

    code = (
        "import sys; from dialsum.cli.app import main; rc = main(['train', '-s', 'nope']); "
        "print(rc, 'torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["2", "False", "False"]


def test_guide_out_under_a_file_is_refused_before_any_planning(tmp_path, monkeypatch, capsys):
    """Issue 18, point 8: the guide used to fail after all its computation."""
    import dialsum.report.guide as guide_mod

    monkeypatch.setattr(guide_mod, "build_guide", lambda *a, **k: pytest.fail("planned"))
    blocker = tmp_path / "docs"
    blocker.write_text("a file", encoding="utf-8")
    assert main(["guide", "--out", str(blocker / "guide.md")]) == 2
    assert f"{blocker} is a file" in capsys.readouterr().err.replace("\n", "")


def test_a_tilde_after_an_equals_sign_is_the_home_folder(tmp_path, monkeypatch, capsys) -> None:
    """Issue 18, point 4: the shell expands ``~`` only at the start of a word."""
    import dialsum.training.recipe as train_mod

    seen = {}

    def record(cfg, **kwargs):
        seen["output_dir"], seen["resume"] = cfg.training.output_dir, kwargs["resume"]
        raise KeyboardInterrupt

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(train_mod, "run_training", record)
    assert main(["train", "-s", "tiny", "--output-dir=~/runs", "--resume=~/runs/tiny/x"]) == 130
    assert seen == {"output_dir": f"{tmp_path}/runs", "resume": f"{tmp_path}/runs/tiny/x"}
