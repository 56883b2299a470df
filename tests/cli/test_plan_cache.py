"""`dialsum plan` answers cached by the question: same output, no torch, new key on change."""

from __future__ import annotations

import subprocess
import sys

import pytest
from transformers import T5Config

from dialsum.cli import plan as plan_mod
from dialsum.cli import plan_cache
from dialsum.cli.app import main
from dialsum.core.config_load import section_from_dict


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DIALSUM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("DIALSUM_CALIBRATION", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture
def model_dir(tmp_path):
    config = T5Config(
        vocab_size=256, d_model=32, d_ff=64, d_kv=8, num_layers=1, num_heads=4,
        tie_word_embeddings=False, decoder_start_token_id=0, pad_token_id=0,
    )  # fmt: skip
    folder = tmp_path / "model"
    config.save_pretrained(folder)
    return folder


def _argv(model_dir, gpu: str = "t4-16gb") -> list[str]:
    return ["plan", "--model", str(model_dir), "--source-len", "64", "--target-len", "16",
            "--effective-batch", "8", "--gpu", gpu]  # fmt: skip


def test_a_repeated_plan_is_printed_from_the_cache_without_planning(
    model_dir, capsys, monkeypatch
) -> None:
    assert main(_argv(model_dir)) == 0
    first = capsys.readouterr().out

    def no_planning(*args, **kwargs):
        raise AssertionError("planned again")

    monkeypatch.setattr(plan_mod, "_plan_result", no_planning)
    assert main(_argv(model_dir)) == 0
    assert capsys.readouterr().out == first
    # Another GPU is another question: it plans (and here, fails loudly).
    with pytest.raises(AssertionError, match="planned again"):
        main(_argv(model_dir, "a100-40gb"))


def test_a_cached_result_plans_again_only_when_its_plan_is_asked_for(model_dir) -> None:
    kwargs = dict(
        config=None, section=None, model=str(model_dir), gpu="t4-16gb", source_len=64,
        target_len=16, effective_batch=8, num_beams=None, num_gpus=1, data=None,
        overrides=[], buckets=False,
    )  # fmt: skip
    fresh = plan_mod.plan_command(**kwargs)
    cached = plan_mod.plan_command(**kwargs)
    assert cached is not fresh and cached._plan is None
    assert cached.json == fresh.json
    assert cached.plan.to_json_dict() == fresh.plan.to_json_dict()


def test_the_key_follows_every_file_the_plan_reads(model_dir, tmp_path) -> None:
    data = tmp_path / "train.csv"
    data.write_text("fname,dialogue,summary\na,hello,hi\n")
    cfg = section_from_dict({"model": {"name": str(model_dir)}})
    key = plan_cache.plan_key(cfg, gpu="t4-16gb", num_gpus=1, data=data, buckets=False)
    assert key == plan_cache.plan_key(cfg, gpu="t4-16gb", num_gpus=1, data=data, buckets=False)
    assert key != plan_cache.plan_key(cfg, gpu="a100-40gb", num_gpus=1, data=data, buckets=False)
    data.write_text("fname,dialogue,summary\na,hello,hello\n")
    changed_data = plan_cache.plan_key(cfg, gpu="t4-16gb", num_gpus=1, data=data, buckets=False)
    assert changed_data != key
    config = (model_dir / "config.json").read_text()
    (model_dir / "config.json").write_text(config.replace('"d_ff": 64', '"d_ff": 128'))
    assert changed_data != plan_cache.plan_key(
        cfg, gpu="t4-16gb", num_gpus=1, data=data, buckets=False
    )


def test_a_detected_gpu_or_a_hub_only_model_is_not_cached(model_dir) -> None:
    cfg = section_from_dict({"model": {"name": str(model_dir)}})
    assert plan_cache.plan_key(cfg, gpu=None, num_gpus=1, data=None, buckets=False) is None
    hub = section_from_dict({"model": {"name": "someone/not-shipped-model"}})
    assert plan_cache.plan_key(hub, gpu="t4-16gb", num_gpus=1, data=None, buckets=False) is None


def test_a_warm_plan_imports_neither_torch_nor_transformers(model_dir, tmp_path) -> None:
    assert main(_argv(model_dir)) == 0
    script = (
        "import sys\n"
        "from dialsum.cli.app import main\n"
        f"assert main({_argv(model_dir)!r}) == 0\n"
        "heavy = sorted({'torch', 'transformers'} & set(sys.modules))\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "micro-batch" in done.stdout


def test_data_lengths_are_tokenized_once_per_file_content(model_dir, tmp_path, monkeypatch) -> None:
    data = tmp_path / "train.csv"
    data.write_text("fname,dialogue,summary\na,hello,hi\n")
    cfg = section_from_dict({"model": {"name": str(model_dir)}})
    calls: list[int] = []

    def tokenized(cfg, path):
        calls.append(1)
        return ("report", [(len(path.read_text()), len(calls))])

    monkeypatch.setattr(plan_mod, "_tokenized_lengths", tokenized)
    first = plan_mod._data_lengths(cfg, data)
    assert plan_mod._data_lengths(cfg, data) == first and len(calls) == 1
    data.write_text("fname,dialogue,summary\na,hello there,hi\n")
    assert plan_mod._data_lengths(cfg, data) != first and len(calls) == 2
