from __future__ import annotations

import json

import pytest
from transformers import BartConfig, T5Config

from dialsum.models.architectures import (
    KNOWN_PARAM_COUNTS,
    architecture_facts,
    count_params,
    is_causal,
    known_config,
    load_config,
    model_family,
    model_from_config,
    model_kind,
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


T5_ID = "eenzeenee/t5-base-korean-summarization"
MT5_ID = "csebuetnlp/mT5_multilingual_XLSum"
BART_ID = "digit82/kobart-summarization"

# The facts of the published config.json files (literal numbers, not read from the files).
EXPECTED_FACTS = {
    T5_ID: {
        "model_type": "t5",
        "ffn": "gated-gelu",
        "activation": "gelu_new",
        "d_model": 768,
        "d_ff": 2048,
        "vocab_size": 50_358,
        "encoder_layers": 12,
        "decoder_layers": 12,
        "attention_heads": 12,
        "tied_lm_head": False,
    },
    MT5_ID: {
        "model_type": "mt5",
        "ffn": "gated-gelu",
        "activation": "gelu_new",
        "d_model": 768,
        "d_ff": 2048,
        "vocab_size": 250_112,
        "encoder_layers": 12,
        "decoder_layers": 12,
        "attention_heads": 12,
        "tied_lm_head": False,
    },
    BART_ID: {
        "model_type": "bart",
        "ffn": "gelu",
        "activation": "gelu",
        "d_model": 768,
        "d_ff": 3072,
        "vocab_size": 30_000,
        "encoder_layers": 6,
        "decoder_layers": 6,
        "attention_heads": 16,
        "tied_lm_head": True,
    },
}


SOLAR_ID = "upstage/SOLAR-10.7B-Instruct-v1.0"
QWEN_ID = "Qwen/Qwen2.5-3B-Instruct"
LLAMA_ID = "meta-llama/Llama-3.2-3B-Instruct"
GEMMA_ID = "google/gemma-2-2b-it"


def _causal(model_type, act, d, ff, vocab, layers, heads, kv, head_dim, tied):  # noqa: PLR0913
    return {
        "model_type": model_type,
        "ffn": "gated-" + ("gelu" if act.startswith("gelu") else act),
        "activation": act,
        "d_model": d,
        "d_ff": ff,
        "vocab_size": vocab,
        "encoder_layers": 0,
        "decoder_layers": layers,
        "attention_heads": heads,
        "kv_heads": kv,
        "head_dim": head_dim,
        "tied_lm_head": tied,
    }


# The published config.json fields of the four decoder-only LLMs (literal numbers).
EXPECTED_FACTS |= {
    SOLAR_ID: _causal("llama", "silu", 4096, 14_336, 32_000, 48, 32, 8, 128, False),
    QWEN_ID: _causal("qwen2", "silu", 2048, 11_008, 151_936, 36, 16, 2, 128, True),
    LLAMA_ID: _causal("llama", "silu", 3072, 8192, 128_256, 28, 24, 8, 128, True),
    GEMMA_ID: _causal("gemma2", "gelu_pytorch_tanh", 2304, 9216, 256_000, 26, 8, 4, 256, True),
}


def test_every_known_model_has_facts_and_a_count() -> None:
    assert set(EXPECTED_FACTS) == set(KNOWN_PARAM_COUNTS)
    assert KNOWN_PARAM_COUNTS == {
        T5_ID: 275_579_136,
        MT5_ID: 582_401_280,
        BART_ID: 123_859_968,
        SOLAR_ID: 10_731_524_096,
        QWEN_ID: 3_085_938_688,
        LLAMA_ID: 3_212_749_824,
        GEMMA_ID: 2_614_341_888,
    }
    assert known_config("someone/unknown-model") is None


@pytest.mark.parametrize("model_id", sorted(EXPECTED_FACTS))
def test_known_config_facts(model_id: str) -> None:
    config = known_config(model_id)
    facts = architecture_facts(config)
    assert facts == EXPECTED_FACTS[model_id]
    assert json.loads(json.dumps(facts)) == facts
    # The built model (untied config) reports the same architecture.
    model = model_from_config(config, device="meta")
    assert architecture_facts(model.config) == facts
    assert (model.lm_head.weight is model.get_input_embeddings().weight) is facts["tied_lm_head"]
    assert count_params(model) == KNOWN_PARAM_COUNTS[model_id]
    assert config.name_or_path == model_id
    assert load_config(model_id).to_dict() == config.to_dict()


@pytest.mark.parametrize("model_id", [T5_ID, MT5_ID])
def test_t5_ffn_is_gated_gelu_not_relu_3072(model_id: str) -> None:
    # A ReLU FFN with d_ff 3072 has exactly the same parameter count as a gated FFN with
    # d_ff 2048 (2 x 768 x 3072 == 3 x 768 x 2048); check the modules themselves.
    model = model_from_config(known_config(model_id), device="meta")
    ffns = [m for name, m in model.named_modules() if name.endswith("DenseReluDense")]
    assert len(ffns) == 24  # 12 encoder + 12 decoder blocks
    for ffn in ffns:
        assert type(ffn).__name__.endswith("DenseGatedActDense")
        assert not hasattr(ffn, "wi")
        assert tuple(ffn.wi_0.weight.shape) == (2048, 768)
        assert tuple(ffn.wi_1.weight.shape) == (2048, 768)
        assert tuple(ffn.wo.weight.shape) == (768, 2048)
        assert ffn.act.__class__.__name__ == "NewGELUActivation"


def test_relu_3072_twin_has_same_count_but_other_facts() -> None:
    # The hand-typed config this package once had: same count, wrong FFN.
    twin = T5Config(
        vocab_size=50_358,
        d_model=768,
        d_ff=3072,
        d_kv=64,
        num_layers=12,
        num_heads=12,
        feed_forward_proj="relu",
        tie_word_embeddings=False,
    )
    assert count_params(model_from_config(twin, device="meta")) == KNOWN_PARAM_COUNTS[T5_ID]
    facts = architecture_facts(twin)
    assert (facts["ffn"], facts["activation"], facts["d_ff"]) == ("relu", "relu", 3072)
    assert facts != EXPECTED_FACTS[T5_ID]


def test_bart_ffn_and_buffers() -> None:
    config = known_config(BART_ID)
    assert isinstance(config, BartConfig)
    assert config.activation_function == "gelu"
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (0, 1, 3)
    assert config.decoder_start_token_id == 2
    assert config.forced_eos_token_id == 2
    assert config.max_position_embeddings == 1026
    model = model_from_config(config, device="meta")
    layer = model.model.encoder.layers[0]
    assert tuple(layer.fc1.weight.shape) == (3072, 768)
    assert model.final_logits_bias.numel() == 30_000
    assert "final_logits_bias" not in dict(model.named_parameters())


def test_t5_token_ids() -> None:
    for model_id in (T5_ID, MT5_ID):
        config = known_config(model_id)
        assert (config.decoder_start_token_id, config.pad_token_id, config.eos_token_id) == (
            0,
            0,
            1,
        )


def test_known_config_is_a_fresh_object_each_call() -> None:
    first = known_config(T5_ID)
    first.d_ff = 3072
    first.feed_forward_proj = "relu"
    first.dense_act_fn = "relu"
    first.vocab_size = 7
    second = known_config(T5_ID)
    assert second is not first
    assert architecture_facts(second) == EXPECTED_FACTS[T5_ID]


def test_architecture_facts_of_partial_and_raw_configs() -> None:
    assert architecture_facts({}) == {
        "model_type": None,
        "ffn": None,
        "activation": None,
        "d_model": None,
        "d_ff": None,
        "vocab_size": None,
        "encoder_layers": None,
        "decoder_layers": None,
        "attention_heads": None,
        "tied_lm_head": True,
    }
    # A user's raw config.json dict (T5 v1.1 style): gated from feed_forward_proj alone.
    raw = {
        "model_type": "t5",
        "feed_forward_proj": "gated-gelu",
        "d_model": 512,
        "num_layers": 8,
        "tie_word_embeddings": False,
    }
    facts = architecture_facts(raw)
    assert facts["ffn"] == "gated-gelu"
    assert facts["activation"] == "gelu_new"
    assert facts["decoder_layers"] == 8
    assert facts["d_ff"] is None
    assert facts["tied_lm_head"] is False
    assert architecture_facts(T5Config(feed_forward_proj="gated-silu"))["ffn"] == "gated-silu"
    assert architecture_facts(T5Config())["ffn"] == "relu"
    bart = architecture_facts(BartConfig(activation_function="relu", encoder_ffn_dim=64))
    assert (bart["ffn"], bart["d_ff"], bart["tied_lm_head"]) == ("relu", 64, True)


def test_model_family_of_configs_and_models() -> None:
    from types import SimpleNamespace

    from dialsum.models.architectures import is_t5_like, model_family

    t5, mt5, bart = (known_config(m) for m in (T5_ID, MT5_ID, BART_ID))
    assert (model_family(t5), model_family(mt5), model_family(bart)) == ("t5", "mt5", "bart")
    assert model_family(model_from_config(bart, device="meta")) == "bart"  # a model: its config
    assert model_family(SimpleNamespace(model_type="gpt2")) == "other"
    assert [is_t5_like(f) for f in ("t5", "mt5", "bart", "other")] == [True, True, False, False]


def test_model_kind_and_family() -> None:
    kinds = {mid: (model_kind(known_config(mid)), model_family(known_config(mid))) for mid in
             KNOWN_PARAM_COUNTS}  # fmt: skip
    assert kinds == {
        T5_ID: ("seq2seq", "t5"),
        MT5_ID: ("seq2seq", "mt5"),
        BART_ID: ("seq2seq", "bart"),
        SOLAR_ID: ("causal", "llama"),
        QWEN_ID: ("causal", "llama"),
        LLAMA_ID: ("causal", "llama"),
        GEMMA_ID: ("causal", "gemma"),
    }
    # Unknown model types: what the config says of itself decides, else nothing.
    from transformers import PretrainedConfig

    odd = PretrainedConfig(architectures=["FooForCausalLM"])
    assert model_kind(odd) == "causal" and is_causal(odd)
    assert model_kind(PretrainedConfig(is_encoder_decoder=True)) == "seq2seq"
    assert model_kind(PretrainedConfig()) is None


def test_local_llama_style_configs_count_exactly(tmp_path) -> None:
    # A Mistral-style and a Qwen3-style config folder, built as from_pretrained would.
    from transformers import MistralConfig, Qwen3Config

    for config in (
        # 2 layers x (4 attn: 64x64 q/o + 2x 64x32 k/v; 3 MLP 64x128) + norms + embed/head
        (MistralConfig(vocab_size=100, hidden_size=64, intermediate_size=128,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       tie_word_embeddings=False)),
        (Qwen3Config(vocab_size=100, hidden_size=64, intermediate_size=128,
                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     head_dim=16, tie_word_embeddings=True)),
    ):  # fmt: skip
        folder = tmp_path / config.model_type
        config.save_pretrained(folder)
        loaded = load_config(str(folder))
        assert model_kind(loaded) == "causal"
        model = model_from_config(loaded, device="meta")
        d, ff, vocab, kv = 64, 128, 100, 2 * 16
        attention = 2 * d * d + 2 * d * kv
        mlp = 3 * d * ff
        norms = 2 * d + (2 * 16 if config.model_type == "qwen3" else 0)  # qwen3: q/k norms
        head = 0 if config.tie_word_embeddings else vocab * d
        assert count_params(model) == 2 * (attention + mlp + norms) + d + vocab * d + head
