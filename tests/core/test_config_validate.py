"""Validation of the causal-LM keys (``check_model_method``): model.kind, model.method and
model.lora.enabled, LoRA targets, QLoRA's needs, the prompt template."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from dialsum.cli.app import main
from dialsum.core.config_load import load_section
from dialsum.core.config_schema import DEFAULT_PROMPT_TEMPLATE
from dialsum.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config.yaml"


def section(name: str, *overrides: str):
    return load_section(CONFIG, name, list(overrides))


def problems(name: str, *overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        section(name, *overrides)
    return str(info.value)


def no_bitsandbytes(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args, **kwargs):
        return None if name == "bitsandbytes" else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_the_method_is_resolved_once_and_lora_enabled_agrees() -> None:
    full = section("tiny_causal")
    assert (full.model.kind, full.model.method, full.model.lora.enabled) == (
        "causal",
        "full",
        False,
    )
    lora = section("tiny_causal", "model.method=lora")
    assert (lora.model.method, lora.model.lora.enabled, lora.model.adapters) == ("lora", True, True)
    # The existing switch still means LoRA.
    legacy = section("tiny", "model.lora.enabled=true")
    assert (legacy.model.method, legacy.model.training_method) == ("lora", "lora")
    # Unset stays unset (the planner may choose for a causal LM); it trains as full.
    unset = section("tiny")
    assert (unset.model.method, unset.model.training_method) == (None, "full")


def test_method_full_with_lora_enabled_is_a_disagreement() -> None:
    message = problems("tiny_causal", "model.method=full", "model.lora.enabled=true")
    assert "model.method: full disagrees with model.lora.enabled: true" in message


def test_qlora_on_a_seq2seq_model_says_what_is_supported() -> None:
    message = problems("tiny", "model.method=qlora")
    assert "model.method: qlora is not supported for tiny:t5" in message
    assert "seq2seq models (T5, mT5, BART) train with model.method full or lora" in message
    assert "causal" in problems("tiny", "model.kind=causal")
    assert "tiny:llama" in problems("tiny_causal", "model.kind=seq2seq")


def test_qlora_without_bitsandbytes_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    no_bitsandbytes(monkeypatch)
    assert "uv sync --extra bnb" in problems("tiny_causal", "model.method=qlora")


def test_qlora_without_bitsandbytes_exits_2_from_the_cli(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys
) -> None:
    no_bitsandbytes(monkeypatch)
    out = tmp_path / "runs"
    code = main(
        ["train", "-c", str(CONFIG), "-s", "tiny_causal", "--output-dir", str(out)]
        + ["--set", "model.method=qlora"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "uv sync --extra bnb" in err and "Traceback" not in err
    assert not out.exists()


def test_a_template_without_the_dialogue_names_the_key() -> None:
    message = problems("tiny_causal", "tokenizer.prompt_template=대화를 요약하세요")
    assert "tokenizer.prompt_template: must contain {dialogue} exactly once" in message
    assert "{dialogue}" in DEFAULT_PROMPT_TEMPLATE
    # A seq2seq prefix would be silently ignored by a causal LM: refused.
    message = problems("tiny_causal", "tokenizer.prefix=summarize")
    assert "tokenizer.prefix: 'summarize' is for seq2seq models" in message


def test_lora_targets() -> None:
    assert section("tiny_causal_lora").model.lora.target_modules == "all-linear"
    listed = section("tiny_causal", "model.lora.target_modules=[q_proj,v_proj]")
    assert listed.model.lora.target_modules == ["q_proj", "v_proj"]
    assert section("tiny").model.lora.target_modules is None  # the family's default
    assert "model.lora.target_modules: empty" in problems(
        "tiny_causal", "model.lora.target_modules=[]"
    )


def test_quantization_block() -> None:
    q = section("tiny_causal", "model.quantization.quant_type=fp4").model.quantization
    assert (q.quant_type, q.double_quant, q.compute_dtype) == ("fp4", True, "auto")
    message = problems("tiny_causal", "model.quantization.quant_type=int8")
    assert "model.quantization.quant_type: 'int8' is not one of 'nf4' | 'fp4'" in message
    assert "model.quantization.compute_dtyp: unknown key (did you mean compute_dtype?)" in (
        problems("tiny_causal", "model.quantization.compute_dtyp=bf16")
    )
