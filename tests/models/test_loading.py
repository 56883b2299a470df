"""Tiny models and tokenizers built offline: special tokens, untied heads, save/reload, LoRA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM

from dialsum.core.errors import ConfigError
from dialsum.data.tokens import SPECIAL_TOKENS
from dialsum.models.architectures import count_params
from dialsum.models.loading import (
    apply_lora,
    build_tiny_model,
    load_model,
    load_tokenizer,
    prepare_for_family,
    resize_to_tokenizer,
    resolve_model,
    save_pretrained,
    tiny_cache_key,
    tiny_config,
    train_tiny_tokenizer,
)

TEXTS = [
    "#Person1#: 안녕하세요, 오늘 날씨가 정말 좋네요.",
    "#Person2#: 네, 산책하기 좋은 날이에요.",
    "#Person1#: 제 전화번호는 #PhoneNumber# 입니다.",
    "#Person2#: 알겠습니다. 내일 다시 연락드릴게요.",
    "#Person1#: 주소는 #Address# 로 보내 주세요.",
    "#Person2#: 회의는 오후 세 시에 시작합니다.",
    "#Person1#: 점심으로 비빔밥을 먹을까요?",
    "#Person2#: 좋아요, 근처 식당에 가요.",
    "두 사람은 날씨와 산책에 대해 이야기한다.",
    "#Person1#은 #Person2#에게 전화번호를 알려준다.",
    "두 사람은 오후 회의 시간을 확인한다.",
    "#Person1#과 #Person2#는 점심 메뉴를 정한다.",
]


def _strip(text: str, *tokens: str) -> str:
    for token in tokens:
        text = text.replace(token, "")
    return text


@pytest.fixture(scope="module")
def tiny_t5():
    return build_tiny_model(TEXTS, family="t5", vocab_size=500)


@pytest.fixture(scope="module")
def tiny_bart():
    return build_tiny_model(TEXTS, family="bart", vocab_size=500)


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_markers_are_single_tokens(family: str) -> None:
    tokenizer = train_tiny_tokenizer(TEXTS, family=family, vocab_size=500)
    for marker in SPECIAL_TOKENS:
        assert tokenizer.tokenize(f"{marker}: 네")[0] == marker
    ids = tokenizer("#Person1#: 네")["input_ids"]
    assert tokenizer.convert_ids_to_tokens(ids).count("#Person1#") == 1


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_decode_round_trips_korean_with_spaces(family: str) -> None:
    tokenizer = train_tiny_tokenizer(TEXTS, family=family, vocab_size=500)
    for text in [*TEXTS, "#Person1#: 오늘  날씨가 좋네요 #Person2#: 네 "]:
        ids = tokenizer(text)["input_ids"]
        decoded = tokenizer.decode(ids, skip_special_tokens=False)
        assert _strip(decoded, "<s>", "</s>", "<pad>") == text


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_family_special_ids(family: str) -> None:
    tokenizer = train_tiny_tokenizer(TEXTS, family=family, vocab_size=500)
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


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_save_reload_same_logits(family: str, tmp_path: Path, tiny_t5, tiny_bart) -> None:
    model, tokenizer = tiny_t5 if family == "t5" else tiny_bart
    save_pretrained(model, tokenizer, tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    tokenizer2 = load_tokenizer(str(tmp_path))
    model2 = load_model(str(tmp_path), tokenizer2)
    assert len(tokenizer2) == len(tokenizer)
    assert tokenizer2(TEXTS)["input_ids"] == tokenizer(TEXTS)["input_ids"]
    batch = tokenizer(TEXTS[:3], return_tensors="pt", padding=True)
    model.eval(), model2.eval()
    with torch.no_grad():
        logits = model(**batch, decoder_input_ids=batch.input_ids).logits
        logits2 = model2(**batch, decoder_input_ids=batch.input_ids).logits
    assert torch.equal(logits, logits2)
    if family == "t5":
        assert model2.lm_head.weight is not model2.shared.weight


def test_resize_keeps_head_untied(tiny_t5, tmp_path: Path) -> None:
    model, tokenizer = tiny_t5
    save_pretrained(model, tokenizer, tmp_path)
    tokenizer2 = load_tokenizer(str(tmp_path), special_tokens=[*SPECIAL_TOKENS, "#Extra#"])
    assert len(tokenizer2) == len(tokenizer) + 1
    # load_model grows the reloaded model; its T5Config says "tied" again.
    model2 = load_model(str(tmp_path), tokenizer2)
    rows = model2.shared.weight.shape[0]
    assert rows >= len(tokenizer2) and rows % 8 == 0
    assert model2.lm_head.weight.shape == model2.shared.weight.shape
    assert model2.lm_head.weight is not model2.shared.weight
    assert model2.encoder.embed_tokens.weight is model2.shared.weight
    # A later tie_weights (Trainer, peft) must not tie it back either.
    model2.tie_weights()
    assert model2.lm_head.weight is not model2.shared.weight
    assert not resize_to_tokenizer(model2, tokenizer2)  # never shrinks, no-op when covered


def test_bart_generates(tiny_bart) -> None:
    model, tokenizer = tiny_bart
    facts = prepare_for_family(model, tokenizer)
    assert facts == {"family": "bart", "decoder_start_token_id": 2, "needs_prefix": False}
    batch = tokenizer(TEXTS[:2], return_tensors="pt", padding=True)
    out = model.generate(**batch, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape == (2, 5)
    assert out[:, 0].tolist() == [2, 2]


def test_t5_family_facts(tiny_t5) -> None:
    model, tokenizer = tiny_t5
    facts = prepare_for_family(model, tokenizer)
    assert facts == {"family": "t5", "decoder_start_token_id": 0, "needs_prefix": True}
    assert model.generation_config.pad_token_id == 0
    assert model.generation_config.eos_token_id == 1


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_build_is_deterministic(family: str) -> None:
    model_a, tok_a = build_tiny_model(TEXTS, family=family, vocab_size=500)
    model_b, tok_b = build_tiny_model(list(TEXTS), family=family, vocab_size=500)
    assert tok_a.get_vocab() == tok_b.get_vocab()
    assert tok_a.backend_tokenizer.to_str() == tok_b.backend_tokenizer.to_str()
    for (name, a), (_, b) in zip(
        model_a.named_parameters(), model_b.named_parameters(), strict=True
    ):
        assert torch.equal(a, b), name


def test_local_dir_without_config_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config.json") as err:
        resolve_model(str(tmp_path))
    assert str(tmp_path) in str(err.value)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_model(str(tmp_path / "missing"))


def test_tiny_spec_errors() -> None:
    with pytest.raises(ConfigError, match="tiny_texts"):
        resolve_model("tiny:t5")
    with pytest.raises(ConfigError, match="unknown tiny model family"):
        resolve_model("tiny:gpt", tiny_texts=lambda: TEXTS)


def test_resolve_tiny_caches(tmp_path: Path) -> None:
    calls: list[int] = []

    def texts() -> list[str]:
        calls.append(1)
        return TEXTS

    model, tokenizer = resolve_model("tiny:bart", tiny_texts=texts, cache_dir=tmp_path)
    key = tiny_cache_key(TEXTS, "bart", 2000)
    cached = tmp_path / f"tiny-bart-{key}"
    assert (cached / "config.json").is_file()
    stamp = (cached / "model.safetensors").stat().st_mtime_ns
    model2, tokenizer2 = resolve_model("tiny:bart", tiny_texts=texts, cache_dir=tmp_path)
    assert (cached / "model.safetensors").stat().st_mtime_ns == stamp  # loaded, not rebuilt
    assert tokenizer2.get_vocab() == tokenizer.get_vocab()
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)
    assert [p.name for p in tmp_path.iterdir()] == [cached.name]  # no staging dirs left
    assert tiny_cache_key(["ab", "c"], "t5", 10) != tiny_cache_key(["a", "bc"], "t5", 10)


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_lora_trains_only_adapters(family: str) -> None:
    model, _ = build_tiny_model(TEXTS, family=family, vocab_size=500)
    peft_model = apply_lora(model, rank=4, alpha=8)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable
    assert all("lora_" in n for n in trainable)
    if family == "t5":
        base = peft_model.get_base_model()
        assert base.lm_head.weight is not base.shared.weight


def test_lora_unknown_family_needs_targets() -> None:
    model, _ = build_tiny_model(TEXTS, family="t5", vocab_size=500)
    model.config.model_type = "mystery"
    with pytest.raises(ConfigError, match="target_modules"):
        apply_lora(model)


def test_a_folder_without_tokenizer_files_is_refused(tiny_t5, tmp_path: Path) -> None:
    # A checkpoint cut while saving, or weights + config only: transformers would load
    # another tokenizer and the summaries would be nonsense with exit 0.
    model, tokenizer = tiny_t5
    save_pretrained(model, tokenizer, tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "spiece.model"):
        (tmp_path / name).unlink(missing_ok=True)
    with pytest.raises(ConfigError, match="has no tokenizer files") as err:
        load_tokenizer(str(tmp_path))
    assert str(tmp_path) in str(err.value)
