"""Tiny models and tokenizers built offline: single-token markers, family ids, untied T5
head, determinism, and the cache behind ``resolve_model("tiny:...")``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM

from dialsum.core.errors import ConfigError
from dialsum.core.tokens import SPECIAL_TOKENS
from dialsum.models.architectures import count_params
from dialsum.models.setup import resolve_model
from dialsum.models.tiny import build_tiny_model, tiny_cache_key, tiny_config, train_tiny_tokenizer


def _strip(text: str, *tokens: str) -> str:
    for token in tokens:
        text = text.replace(token, "")
    return text


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_markers_are_single_tokens(family: str, texts: list[str]) -> None:
    tokenizer = train_tiny_tokenizer(texts, family=family, vocab_size=500)
    for marker in SPECIAL_TOKENS:
        assert tokenizer.tokenize(f"{marker}: 네")[0] == marker
    ids = tokenizer("#Person1#: 네")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids).count("#Person1#") == 1


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_decode_round_trips_korean_with_spaces(family: str, texts: list[str]) -> None:
    tokenizer = train_tiny_tokenizer(texts, family=family, vocab_size=500)
    for text in [*texts, "#Person1#: 오늘  날씨가 좋네요 #Person2#: 네 "]:
        ids = tokenizer(text)["input_ids"]
        decoded = tokenizer.decode(ids, skip_special_tokens=False)
        assert _strip(decoded, "<s>", "</s>", "<pad>") == text


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_family_special_ids(family: str, texts: list[str]) -> None:
    tokenizer = train_tiny_tokenizer(texts, family=family, vocab_size=500)
    if family == "t5":
        expected = {"<pad>": 0, "</s>": 1, "<unk>": 2}
        assert tokenizer("네")["input_ids"][-1] == 1
    else:
        expected = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
        ids = tokenizer("네")["input_ids"]
        assert (ids[0], ids[-1]) == (0, 2)
    assert {t: tokenizer.convert_tokens_to_ids(t) for t in expected} == expected
    assert tokenizer.pad_token_id == expected["<pad>"]


def test_t5_head_is_untied_and_counted(tiny_t5) -> None:
    model, tokenizer = tiny_t5
    assert model.lm_head.weight is not model.shared.weight
    tied = AutoModelForSeq2SeqLM.from_config(tiny_config("t5", len(tokenizer)))
    assert tied.lm_head.weight is tied.shared.weight  # what transformers 5.x builds by itself
    assert count_params(model) == count_params(tied) + len(tokenizer) * 64
    assert not torch.equal(model.lm_head.weight, model.shared.weight)


def test_t5_generation_ids(tiny_t5) -> None:
    model, _ = tiny_t5
    assert model.config.decoder_start_token_id == 0  # T5 starts decoding from pad
    assert model.generation_config.pad_token_id == 0
    assert model.generation_config.eos_token_id == 1


def test_bart_generates(tiny_bart, texts: list[str]) -> None:
    model, tokenizer = tiny_bart
    assert model.config.decoder_start_token_id == 2  # BART starts decoding from eos
    batch = tokenizer(texts[:2], return_tensors="pt", padding=True)
    out = model.generate(**batch, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape == (2, 5)
    assert out[:, 0].tolist() == [2, 2]


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_build_is_deterministic(family: str, texts: list[str]) -> None:
    model_a, tok_a = build_tiny_model(texts, family=family, vocab_size=500)
    model_b, tok_b = build_tiny_model(list(texts), family=family, vocab_size=500)
    assert tok_a.get_vocab() == tok_b.get_vocab()
    assert tok_a.backend_tokenizer.to_str() == tok_b.backend_tokenizer.to_str()
    for (name, a), (_, b) in zip(
        model_a.named_parameters(), model_b.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), name


def test_tiny_spec_errors(texts: list[str]) -> None:
    with pytest.raises(ConfigError, match="tiny_texts"):
        resolve_model("tiny:t5")
    with pytest.raises(ConfigError, match="unknown tiny model family"):
        resolve_model("tiny:gpt", tiny_texts=lambda: texts)


def test_resolve_tiny_caches(tmp_path: Path, texts: list[str]) -> None:
    calls: list[int] = []

    def tiny_texts() -> list[str]:
        calls.append(1)
        return texts

    model, tokenizer = resolve_model("tiny:bart", tiny_texts=tiny_texts, cache_dir=tmp_path)
    key = tiny_cache_key(texts, "bart", 2000)
    cached = tmp_path / f"tiny-bart-{key}"
    assert (cached / "config.json").is_file()
    stamp = (cached / "model.safetensors").stat().st_mtime_ns
    model2, tokenizer2 = resolve_model("tiny:bart", tiny_texts=tiny_texts, cache_dir=tmp_path)
    assert (cached / "model.safetensors").stat().st_mtime_ns == stamp  # loaded, not rebuilt
    assert tokenizer2.get_vocab() == tokenizer.get_vocab()
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)
    assert [p.name for p in tmp_path.iterdir()] == [cached.name]  # no staging dirs left
    assert tiny_cache_key(["ab", "c"], "t5", 10) != tiny_cache_key(["a", "bc"], "t5", 10)
