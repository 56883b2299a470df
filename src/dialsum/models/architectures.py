"""Architectures we know by heart, and building a model from a config alone.

Two kinds of model: seq2seq (T5, mT5, BART: an encoder reads the dialogue, a decoder
writes the summary) and causal, decoder-only LLMs (Llama, Mistral, Qwen2/3, Gemma/Gemma-2,
EXAONE: one stack reads prompt + summary; ``model_kind``).

The planner must work offline, so the ``config.json`` of each of the models our
users run ships with the package (``dialsum/models/configs/<owner>--<name>.json``, copied
verbatim from the checkpoints) and is loaded through transformers' own config classes.
Nothing is typed in by hand: a hand-typed T5 config once had a ReLU FFN with d_ff 3072
where the checkpoint has a gated-GELU FFN with d_ff 2048, which has *exactly* the same
parameter count but not the same activation memory. ``architecture_facts`` reports the
FFN type so that tests (and reports) can tell the two apart.

Both T5 checkpoints have an *untied* ``lm_head``; transformers 5.x forces
``tie_word_embeddings=True`` in ``T5Config`` (the intent survives only as
``scale_decoder_outputs=False``) and ``MT5Config`` drops it, so a config-only build would
silently share the head with the input embedding and lose 38.7M (T5) or 192.1M (mT5)
parameters, with their gradients and optimizer state. ``model_from_config`` unties them
again. Generation defaults in a ``config.json`` (``num_beams``, ``max_length``, ...) are
dropped by transformers 5.x when the config is built; ours come from ``config.yaml``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, PretrainedConfig

from dialsum.models.kinds import (  # noqa: F401 - re-exported: the family tests live there
    CAUSAL_FAMILIES,
    CAUSAL_MODEL_TYPES,
    KNOWN_PARAM_COUNTS,
    SEQ2SEQ_MODEL_TYPES,
    Family,
    Kind,
    config_file_name,
    is_causal,
    is_t5_like,
    model_family,
    model_kind,
    shipped_config_fields,
)


def known_config(model_id: str) -> PretrainedConfig | None:
    """The shipped config of a known hub model (a new object on every call), or ``None``.

    Built like ``AutoConfig.from_pretrained(model_id)`` would build it from the hub, but
    offline and without remote code: the config class is picked by ``model_type`` from
    transformers' own mapping, and ``name_or_path`` is the model id.
    """
    if model_id not in KNOWN_PARAM_COUNTS:
        return None
    fields = shipped_config_fields(model_id)
    assert fields is not None  # every known model ships its config
    model_type = fields.pop("model_type")
    # from_pretrained also replaces a saved `_name_or_path` (mT5's says google/mt5-base).
    fields.pop("_name_or_path", None)
    return AutoConfig.for_model(model_type, name_or_path=model_id, **fields)


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
        scale = getattr(config, "scale_decoder_outputs", None)
        if scale is None:  # not a transformers 5.x T5Config (e.g. a raw config.json dict)
            return getattr(config, "tie_word_embeddings", True) is False
        return scale is False
    return not getattr(config, "tie_word_embeddings", True)


def _act_family(activation: str | None) -> str | None:
    """``gelu_new``/``gelu_fast``/``gelu_pytorch_tanh`` -> ``gelu``; ``swish`` -> ``silu``."""
    if not activation:
        return None
    name = activation.lower()
    for family in ("gelu", "relu", "silu"):
        if name.startswith(family):
            return family
    return "silu" if name == "swish" else name


def _first(config: Any, *names: str) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return None


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def architecture_facts(config: PretrainedConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The architecture of a T5/mT5/BART-like config as a plain, JSON-safe dict.

    ``ffn`` is the feed-forward type the built model runs (``"gated-gelu"``, ``"relu"``,
    ``"gelu"``, ...), ``activation`` the exact function name (``"gelu_new"``). For T5/mT5
    they come from ``is_gated_act``/``dense_act_fn`` (what the modelling code reads), else
    from ``feed_forward_proj``; for BART from ``activation_function`` (never gated).
    ``d_ff`` is the encoder's FFN width for BART. A field the config lacks is ``None``;
    ``config`` may also be the dict of a ``config.json``.
    """
    if isinstance(config, Mapping):
        config = SimpleNamespace(**config)
    if model_kind(config) == "causal":
        return _causal_facts(config)
    t5_like = (
        getattr(config, "model_type", None) in ("t5", "mt5", "umt5", "longt5")
        or _first(config, "feed_forward_proj", "d_ff", "num_heads") is not None
    )
    if t5_like:
        proj = getattr(config, "feed_forward_proj", None)
        proj_parts = proj.split("-") if isinstance(proj, str) and proj else []
        gated = getattr(config, "is_gated_act", None)
        if gated is None:
            gated = len(proj_parts) > 1 and proj_parts[0] == "gated"
        activation = getattr(config, "dense_act_fn", None)
        if activation is None and proj_parts:
            activation = "gelu_new" if proj == "gated-gelu" else proj_parts[-1]
        d_ff = _first(config, "d_ff")
        encoder_layers = _first(config, "num_layers", "encoder_layers")
        decoder_layers = _first(config, "num_decoder_layers", "decoder_layers") or encoder_layers
        heads = _first(config, "num_heads", "encoder_attention_heads", "num_attention_heads")
    else:
        gated = False
        activation = getattr(config, "activation_function", None)
        d_ff = _first(config, "encoder_ffn_dim", "decoder_ffn_dim", "ffn_dim")
        encoder_layers = _first(config, "encoder_layers", "num_hidden_layers")
        decoder_layers = _first(config, "decoder_layers") or encoder_layers
        heads = _first(config, "encoder_attention_heads", "num_attention_heads")
    family = _act_family(activation if isinstance(activation, str) else None)
    return {
        "model_type": getattr(config, "model_type", None) or None,
        "ffn": None if family is None else ("gated-" if gated else "") + family,
        "activation": activation if isinstance(activation, str) else None,
        "d_model": _int_or_none(_first(config, "d_model", "hidden_size")),
        "d_ff": _int_or_none(d_ff),
        "vocab_size": _int_or_none(getattr(config, "vocab_size", None)),
        "encoder_layers": _int_or_none(encoder_layers),
        "decoder_layers": _int_or_none(decoder_layers),
        "attention_heads": _int_or_none(heads),
        "tied_lm_head": not wants_untied_head(config),
    }


def _causal_facts(config: Any) -> dict[str, Any]:
    """``architecture_facts`` of a decoder-only LLM: every one we support has a gated MLP
    (``act(gate_proj(x)) * up_proj(x)``), so the FFN is ``gated-<activation>``."""
    activation = _first(config, "hidden_activation", "hidden_act")
    family = _act_family(activation if isinstance(activation, str) else None)
    heads = _int_or_none(getattr(config, "num_attention_heads", None))
    hidden = _int_or_none(getattr(config, "hidden_size", None))
    head_dim = _int_or_none(getattr(config, "head_dim", None))
    if head_dim is None and heads and hidden:
        head_dim = hidden // heads
    return {
        "model_type": getattr(config, "model_type", None) or None,
        "ffn": None if family is None else "gated-" + family,
        "activation": activation if isinstance(activation, str) else None,
        "d_model": hidden,
        "d_ff": _int_or_none(getattr(config, "intermediate_size", None)),
        "vocab_size": _int_or_none(getattr(config, "vocab_size", None)),
        "encoder_layers": 0,
        "decoder_layers": _int_or_none(getattr(config, "num_hidden_layers", None)),
        "attention_heads": heads,
        "kv_heads": _int_or_none(_first(config, "num_key_value_heads", "num_attention_heads")),
        "head_dim": head_dim,
        "tied_lm_head": bool(getattr(config, "tie_word_embeddings", False)),
    }


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


def model_from_config(
    config: PretrainedConfig, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> nn.Module:
    """Build the LM of a config, seq2seq or causal (random weights; ``device="meta"`` for no
    memory; ``dtype`` builds floating weights in that dtype, as ``from_pretrained`` loads
    them).

    The config is copied: untying writes ``tie_word_embeddings=False`` into the model's
    config, and building again from such a config would also untie T5's encoder/decoder
    input embeddings (2 x vocab x d_model parameters too many).
    """
    config = copy.deepcopy(config)
    if getattr(config, "model_type", "") in ("t5", "mt5", "umt5"):
        # T5 ties encoder/decoder input embeddings to `shared` only while this flag is set;
        # the head's own intent is read from `wants_untied_head` and applied below.
        config.tie_word_embeddings = True
    kwargs = {} if dtype is None else {"dtype": dtype}
    if model_kind(config) == "causal":
        # A causal LM's head follows ``tie_word_embeddings`` as published (no T5 quirk).
        with torch.device(device):
            return AutoModelForCausalLM.from_config(config, **kwargs)
    with torch.device(device):
        model = AutoModelForSeq2SeqLM.from_config(config, **kwargs)
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


# Size fields of a config (d_model, num_heads, max_position_embeddings, ...): a negative
# one fails deep in torch ("negative dimension") after minutes of planning.
_SIZE_KEY = re.compile(r"(size|dim|d_model|d_ff|d_kv|layers|heads|positions|embeddings)$")
_NONZERO = ("d_model", "hidden_size", "vocab_size", "num_heads", "num_attention_heads", "d_kv")


def architecture_problems(config: PretrainedConfig) -> list[str]:
    """What makes ``config`` unusable here: a model type that is neither a seq2seq nor a
    causal LM we build, or a size that is negative (or zero where nothing can be built)."""
    problems = []
    if model_kind(config) is None:
        problems.append(
            f"model_type {getattr(config, 'model_type', None)!r} is not supported: dialsum "
            f"trains seq2seq models ({', '.join(sorted(SEQ2SEQ_MODEL_TYPES))}) and causal LMs "
            f"({', '.join(sorted(CAUSAL_MODEL_TYPES))})"
        )
    for key, value in sorted(config.to_dict().items()):
        if not isinstance(value, int) or isinstance(value, bool) or not _SIZE_KEY.search(key):
            continue
        if value < 0 or (value == 0 and key in _NONZERO):
            problems.append(f"{key}: {value} is not a size (must be > 0)")
    return problems


def config_with_dropout(config: PretrainedConfig, p: float) -> PretrainedConfig:
    """A copy of ``config`` with every dropout probability ``p``: the config ``set_dropout``
    leaves on a built model, for what is planned from a config alone (``model.dropout``
    changes activation memory: each dropout keeps a mask for backward)."""
    config = copy.deepcopy(config)
    for key in _DROPOUT_CONFIG_KEYS:
        if isinstance(getattr(config, key, None), float):
            setattr(config, key, p)
    return config
