"""Loading models and tokenizers: special tokens, untied heads kept, save/reload, generation
ids, and clear errors for incomplete model folders."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dialsum.core.errors import ConfigError
from dialsum.core.tokens import SPECIAL_TOKENS
from dialsum.models.loading import (
    load_model,
    load_tokenizer,
    resize_to_tokenizer,
    save_pretrained,
    set_generation_ids,
)
from dialsum.models.setup import resolve_model


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_save_reload_same_logits(
    family: str, tmp_path: Path, texts: list[str], tiny_t5, tiny_bart
) -> None:
    model, tokenizer = tiny_t5 if family == "t5" else tiny_bart
    save_pretrained(model, tokenizer, tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    tokenizer2 = load_tokenizer(str(tmp_path))
    model2 = load_model(str(tmp_path), tokenizer2)
    assert len(tokenizer2) == len(tokenizer)
    assert tokenizer2(texts)["input_ids"] == tokenizer(texts)["input_ids"]
    batch = tokenizer(texts[:3], return_tensors="pt", padding=True)
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


def _unset_ids_model(model_type: str, decoder_start: int | None = None) -> SimpleNamespace:
    """What set_generation_ids reads: a config and a generation config, ids unset."""
    config = SimpleNamespace(
        model_type=model_type,
        pad_token_id=None,
        eos_token_id=None,
        decoder_start_token_id=decoder_start,
    )
    generation = SimpleNamespace(pad_token_id=None, eos_token_id=None, decoder_start_token_id=None)
    return SimpleNamespace(config=config, generation_config=generation)


@pytest.mark.parametrize(
    ("model_type", "start"),
    # T5-like models start decoding from pad (7), BART and others from eos (9).
    [("t5", 7), ("mt5", 7), ("umt5", 7), ("longt5", 7), ("bart", 9), ("mbart", 9), ("x", 9)],
)
def test_set_generation_ids_fills_what_the_checkpoint_left_unset(
    model_type: str, start: int
) -> None:
    model = _unset_ids_model(model_type)
    set_generation_ids(model, SimpleNamespace(pad_token_id=7, eos_token_id=9))
    ids = ("pad_token_id", "eos_token_id", "decoder_start_token_id")
    assert [getattr(model.config, name) for name in ids] == [7, 9, start]
    assert [getattr(model.generation_config, name) for name in ids] == [7, 9, start]


def test_set_generation_ids_keeps_the_checkpoint_decoder_start() -> None:
    model = _unset_ids_model("bart", decoder_start=1)  # KoBART starts from its eos id 1
    set_generation_ids(model, SimpleNamespace(pad_token_id=3, eos_token_id=1))
    assert model.config.decoder_start_token_id == 1
    assert model.generation_config.decoder_start_token_id == 1


def test_local_dir_without_config_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config.json") as err:
        resolve_model(str(tmp_path))
    assert str(tmp_path) in str(err.value)
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_model(str(tmp_path / "missing"))


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
