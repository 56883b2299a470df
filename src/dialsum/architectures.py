"""Architectures we know by heart, and building a model from a config alone.

The planner must work offline, so the configs of the three models our users run are
kept here (values from their ``config.json`` on the hub). Both T5 checkpoints have an
*untied* ``lm_head``; transformers 5.x forces ``tie_word_embeddings=True`` in
``T5Config``, so a config-only build would silently share the head with the input
embedding and lose 38.7M (T5) or 192.1M (mT5) parameters, with their gradients and
optimizer state. ``model_from_config`` unties them again.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForSeq2SeqLM,
    BartConfig,
    MT5Config,
    PretrainedConfig,
    T5Config,
)

# Exact parameter counts of the real checkpoints (tests assert them).
KNOWN_PARAM_COUNTS: dict[str, int] = {
    "eenzeenee/t5-base-korean-summarization": 275_579_136,
    "csebuetnlp/mT5_multilingual_XLSum": 582_401_280,
    "digit82/kobart-summarization": 123_859_968,
}


def _eenzeenee() -> PretrainedConfig:
    # T5-base layout with a 50,358-token Korean vocabulary; untied head, no output scaling.
    return T5Config(
        vocab_size=50358,
        d_model=768,
        d_ff=3072,
        d_kv=64,
        num_layers=12,
        num_decoder_layers=12,
        num_heads=12,
        feed_forward_proj="relu",
        tie_word_embeddings=False,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )


def _xlsum_mt5() -> PretrainedConfig:
    # mT5-base: gated-GELU FFN (2 input projections), 250,112-token vocabulary, untied head.
    return MT5Config(
        vocab_size=250112,
        d_model=768,
        d_ff=2048,
        d_kv=64,
        num_layers=12,
        num_decoder_layers=12,
        num_heads=12,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )


def _kobart() -> PretrainedConfig:
    # BART-base layout, 30,000-token vocabulary, tied head, learned positions (1024 + 2 offset).
    return BartConfig(
        vocab_size=30000,
        d_model=768,
        encoder_layers=6,
        decoder_layers=6,
        encoder_ffn_dim=3072,
        decoder_ffn_dim=3072,
        encoder_attention_heads=16,
        decoder_attention_heads=16,
        max_position_embeddings=1026,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=3,
        decoder_start_token_id=1,
        forced_eos_token_id=1,
        tie_word_embeddings=True,
    )


_KNOWN_CONFIGS = {
    "eenzeenee/t5-base-korean-summarization": _eenzeenee,
    "csebuetnlp/mT5_multilingual_XLSum": _xlsum_mt5,
    "digit82/kobart-summarization": _kobart,
}


def known_config(model_id: str) -> PretrainedConfig | None:
    """The built-in config of a known hub model, or ``None``."""
    factory = _KNOWN_CONFIGS.get(model_id)
    return factory() if factory is not None else None


def wants_untied_head(config: PretrainedConfig) -> bool:
    """True when the checkpoint keeps a separate ``lm_head`` (T5 v1.1 / mT5 style).

    ``T5Config`` always reports ``tie_word_embeddings=True`` in transformers 5.x; the
    original intent survives as ``scale_decoder_outputs=False`` (untied checkpoints do not
    rescale decoder outputs). ``MT5Config`` drops the flag altogether.
    """
    model_type = getattr(config, "model_type", "")
    if model_type in ("mt5", "umt5"):
        # Every released mT5/umT5 checkpoint has a separate head; MT5Config drops the flag.
        return True
    if model_type == "t5":
        return getattr(config, "scale_decoder_outputs", True) is False
    return not getattr(config, "tie_word_embeddings", True)


def untie_lm_head(model: nn.Module) -> bool:
    """Give ``model.lm_head`` its own weight when the config asks for an untied head.

    Returns True when a head was untied. The copy starts equal to the input embedding,
    which is what a freshly initialised untied checkpoint would train from.
    """
    config = model.config
    head = getattr(model, "lm_head", None)
    embed = model.get_input_embeddings()
    if head is None or not wants_untied_head(config) or head.weight is not embed.weight:
        return False
    head.weight = nn.Parameter(embed.weight.detach().clone())
    config.tie_word_embeddings = False
    # Stop later ``tie_weights()`` calls (resize, save, load) from tying it back.
    tied = dict(getattr(model, "_tied_weights_keys", None) or {})
    tied.pop("lm_head.weight", None)
    model._tied_weights_keys = tied
    return True


def model_from_config(config: PretrainedConfig, device: str | torch.device = "cpu") -> nn.Module:
    """Build a seq2seq LM from a config (random weights; ``device="meta"`` for no memory).

    The config is copied: untying writes ``tie_word_embeddings=False`` into the model's
    config, and building again from such a config would also untie T5's encoder/decoder
    input embeddings (2 x vocab x d_model parameters too many).
    """
    config = copy.deepcopy(config)
    if getattr(config, "model_type", "") in ("t5", "mt5", "umt5"):
        # T5 ties encoder/decoder input embeddings to `shared` only while this flag is set;
        # the head's own intent is read from `wants_untied_head` and applied below.
        config.tie_word_embeddings = True
    with torch.device(device):
        model = AutoModelForSeq2SeqLM.from_config(config)
    untie_lm_head(model)
    return model


def load_config(name_or_path: str) -> PretrainedConfig:
    """Config of a known model id, a local directory/``config.json``, or a hub id (network)."""
    config = known_config(name_or_path)
    if config is not None:
        return config
    return AutoConfig.from_pretrained(name_or_path, trust_remote_code=False)


def count_params(model: nn.Module) -> int:
    """Unique parameters (a tied weight is counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


_DROPOUT_CONFIG_KEYS = ("dropout_rate", "dropout", "attention_dropout", "activation_dropout")


def set_dropout(model: nn.Module, p: float) -> int:
    """Set every dropout probability of ``model`` to ``p``; returns how many were changed.

    T5 keeps ``nn.Dropout`` modules; BART keeps plain float attributes (``self.dropout``,
    ``self.activation_dropout``) read at every forward, so both kinds are updated, and the
    config too so that a saved checkpoint reloads the same way.
    """
    changed = 0
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
            changed += 1
        for attr in ("dropout", "activation_dropout", "attention_dropout"):
            if isinstance(getattr(module, attr, None), float):
                setattr(module, attr, p)
                changed += 1
    config = getattr(model, "config", None)
    for key in _DROPOUT_CONFIG_KEYS:
        if config is not None and isinstance(getattr(config, key, None), float):
            setattr(config, key, p)
    return changed
