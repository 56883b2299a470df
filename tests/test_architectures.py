from __future__ import annotations

import pytest
from transformers import T5Config

from dialsum.architectures import (
    KNOWN_PARAM_COUNTS,
    count_params,
    known_config,
    model_from_config,
    set_dropout,
    wants_untied_head,
)


@pytest.mark.parametrize(("model_id", "params"), sorted(KNOWN_PARAM_COUNTS.items()))
def test_known_architectures_have_exact_parameter_counts(model_id: str, params: int) -> None:
    model = model_from_config(known_config(model_id), device="meta")
    assert count_params(model) == params
    # Building again from the built model's (untied) config must not untie anything else.
    assert count_params(model_from_config(model.config, device="meta")) == params


def test_t5_heads_are_untied_and_bart_head_tied() -> None:
    t5 = model_from_config(known_config("eenzeenee/t5-base-korean-summarization"), "meta")
    assert t5.lm_head.weight is not t5.shared.weight
    assert t5.encoder.embed_tokens.weight is t5.shared.weight
    bart = model_from_config(known_config("digit82/kobart-summarization"), "meta")
    assert bart.lm_head.weight is bart.model.shared.weight


def test_untied_flag_survives_transformers_forcing_tie() -> None:
    # T5Config forces tie_word_embeddings=True; the intent survives as scale_decoder_outputs.
    assert wants_untied_head(T5Config(tie_word_embeddings=False))
    assert not wants_untied_head(T5Config())
    assert wants_untied_head(known_config("csebuetnlp/mT5_multilingual_XLSum"))


def test_set_dropout_reaches_modules_and_config() -> None:
    tiny = T5Config(vocab_size=64, d_model=16, d_ff=32, num_layers=1, num_heads=2, d_kv=8)
    model = model_from_config(tiny)
    assert set_dropout(model, 0.0) > 0
    assert model.config.dropout_rate == 0.0
    assert all(m.p == 0.0 for m in model.modules() if m.__class__.__name__ == "Dropout")
