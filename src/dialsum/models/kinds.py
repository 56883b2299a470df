"""What kind of model a config describes (seq2seq or causal), its family, and the configs
that ship with the package: all without torch.

Read from the config's fields alone, so the planner's request checks and a guide read back
from the answer cache never import torch or transformers (``models.architectures``, which
builds models, re-exports these).
"""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from torch import nn
    from transformers import PretrainedConfig

# Exact parameter counts of the real checkpoints (tests assert them). The keys are also
# the model ids whose config.json ships in ``dialsum/models/configs``.
KNOWN_PARAM_COUNTS: dict[str, int] = {
    "eenzeenee/t5-base-korean-summarization": 275_579_136,
    "csebuetnlp/mT5_multilingual_XLSum": 582_401_280,
    "digit82/kobart-summarization": 123_859_968,
    # Decoder-only LLMs teams fine-tune with LoRA/QLoRA on this task (counts built with
    # AutoModelForCausalLM.from_config on meta; a tied head is counted once).
    "upstage/SOLAR-10.7B-Instruct-v1.0": 10_731_524_096,
    "Qwen/Qwen2.5-3B-Instruct": 3_085_938_688,
    "meta-llama/Llama-3.2-3B-Instruct": 3_212_749_824,
    "google/gemma-2-2b-it": 2_614_341_888,
}

SEQ2SEQ_MODEL_TYPES = frozenset({"t5", "mt5", "umt5", "longt5", "bart", "mbart"})
"""Encoder-decoder model types the planner and trainer support."""

CAUSAL_MODEL_TYPES = frozenset(
    {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "exaone", "phi3"}
)
"""Decoder-only model types with the Llama layout (RMSNorm, rotary positions, gated MLP
``gate_proj``/``up_proj``/``down_proj``, attention ``q/k/v/o_proj``) that transformers
builds natively (no remote code)."""

Kind = Literal["seq2seq", "causal"]

CAUSAL_FAMILIES = frozenset({"llama", "gemma"})
"""The ``model_family`` values of decoder-only LLMs."""

Family = Literal["t5", "mt5", "bart", "llama", "gemma", "other"]


def model_kind(model_or_config: nn.Module | PretrainedConfig) -> Kind | None:
    """``seq2seq``, ``causal``, or None when the config is neither kind we support.

    Read from ``model_type`` first, then from what the config says of itself
    (``is_encoder_decoder``, an ``architectures`` entry ending in ``ForCausalLM``).
    """
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", "")
    if model_type in SEQ2SEQ_MODEL_TYPES:
        return "seq2seq"
    if model_type in CAUSAL_MODEL_TYPES:
        return "causal"
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    architectures = getattr(config, "architectures", None) or []
    if any(str(name).endswith("ForCausalLM") for name in architectures):
        return "causal"
    return None


def is_causal(model_or_config: nn.Module | PretrainedConfig) -> bool:
    return model_kind(model_or_config) == "causal"


def model_family(model_or_config: nn.Module | PretrainedConfig) -> Family:
    """``t5`` (T5, LongT5), ``mt5`` (mT5, umT5), ``bart`` (BART, mBART), ``llama`` (the
    Llama-layout LLMs: Llama, Mistral, Qwen2/3, EXAONE, Phi-3), ``gemma`` (Gemma, Gemma-2:
    trained in bf16, their activations overflow fp16) or ``other``.

    The one family test of the package. mT5 is its own family for the planner (fp16 rules
    and labels differ from T5) but behaves as T5 where only the architecture matters
    (decoder start = pad, the same module names for LoRA): ask ``is_t5_like``.
    """
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", "")
    if model_type in ("t5", "longt5"):
        return "t5"
    if model_type in ("mt5", "umt5"):
        return "mt5"
    if model_type in ("bart", "mbart"):
        return "bart"
    if model_type in ("gemma", "gemma2"):
        return "gemma"
    if model_type in CAUSAL_MODEL_TYPES:
        return "llama"
    return "other"


def is_t5_like(family: Family) -> bool:
    """T5 and mT5 share the architecture (relative attention, pad as decoder start)."""
    return family in ("t5", "mt5")


def config_file_name(model_id: str) -> str:
    """File name of a shipped config: ``owner/name`` -> ``owner--name.json``."""
    return model_id.replace("/", "--") + ".json"


@cache
def _shipped_config_text(model_id: str) -> str | None:
    resource = files("dialsum.models") / "configs" / config_file_name(model_id)
    return resource.read_text(encoding="utf-8") if resource.is_file() else None


def shipped_config_fields(model_id: str) -> dict[str, Any] | None:
    """The fields of the ``config.json`` shipped for ``model_id`` (a new dict on every
    call), or None when none ships. Plain JSON: ``is_causal`` and ``model_family`` read it
    as they read a config."""
    text = _shipped_config_text(model_id)
    return json.loads(text) if text is not None else None
