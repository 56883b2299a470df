"""Decoder-only LMs (Llama, Qwen2, Gemma2, Mistral style): which kind a model is, loading
one in full precision or 4-bit (QLoRA), and loading base + trained adapters.

A causal LM sees ``prompt + summary + EOS`` as one sequence (``data.prompt``); it has no
decoder start id and pads on the left when generating. Many checkpoints ship without a pad
token: the EOS token pads (padding is masked in attention and labels, so it never trains).

QLoRA: ``from_pretrained(..., quantization_config=BitsAndBytesConfig(load_in_4bit=True))``
replaces every ``nn.Linear`` but the head by a bitsandbytes ``Linear4bit`` (packed uint8
weight plus quantization state); embeddings, norms and the head stay in the load dtype.
``prepare_for_kbit`` then upcasts those to fp32 and freezes the base, as
``peft.prepare_model_for_kbit_training`` does, before the adapters go on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from dialsum.core.config_schema import ModelConfig, ModelKind, QuantizationConfig
from dialsum.core.config_validate import SUPPORTED_METHODS
from dialsum.core.errors import ConfigError
from dialsum.core.launch import local_rank
from dialsum.models.architectures import model_kind
from dialsum.models.loading import (
    _check_local_dir,
    _prefer_safetensors,
    resize_to_tokenizer,
)

ADAPTER_CONFIG = "adapter_config.json"
"""peft writes it beside ``adapter_model.safetensors``: a folder holding trained adapters."""


# --------------------------------------------------------------------------- kind


def resolve_kind(model_cfg: ModelConfig, config: PretrainedConfig) -> ModelKind:
    """The kind ``model.kind`` names, checked against the model's config (``auto`` = the
    config's, ``architectures.model_kind``); a ``ConfigError`` when they disagree, the
    config is neither kind, or the method needs the other kind."""
    found = model_kind(config)
    name = model_cfg.name
    arch = ", ".join(getattr(config, "architectures", None) or [str(config.model_type)])
    if found is None:
        raise ConfigError(
            f"model.name: {name} ({arch}) is neither a seq2seq model we support (T5, mT5, "
            "BART) nor a Llama-layout causal LM (Llama, Mistral, Qwen2/3, Gemma/Gemma-2)"
        )
    if model_cfg.kind not in ("auto", found):
        raise ConfigError(
            f"model.kind: {model_cfg.kind}, but {name} is a {found} model ({arch}); set "
            f"model.kind: {found} or auto"
        )
    if found == "seq2seq" and model_cfg.training_method == "qlora":
        raise ConfigError(f"model.method: qlora is not supported for {name}: {SUPPORTED_METHODS}")
    return found


def is_adapter_folder(path: str | Path) -> bool:
    """A folder written by peft's ``save_pretrained``: adapters, not a whole model."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


# --------------------------------------------------------------------------- tokenizer


def prepare_causal_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Pad with EOS when the tokenizer has no pad token; right padding for training (the
    generation path asks for left padding per call)."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError(
                f"tokenizer {tokenizer.name_or_path!r} has neither a pad nor an eos token; a "
                "causal LM needs an eos token to end summaries"
            )
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


# --------------------------------------------------------------------------- 4-bit


def compute_dtype(name: str, device: str) -> torch.dtype:
    """``quantization.compute_dtype``: auto = bf16 where the GPU has it, fp16 on older
    GPUs, fp32 on CPU."""
    if name == "auto":
        if device != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def bnb_config(q: QuantizationConfig, device: str):
    """The ``BitsAndBytesConfig`` of a QLoRA run."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.quant_type,
        bnb_4bit_use_double_quant=q.double_quant,
        bnb_4bit_compute_dtype=compute_dtype(q.compute_dtype, device),
    )


def _require_bitsandbytes() -> None:
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(
            "model.method: qlora needs the bitsandbytes package: run `uv sync --extra bnb`"
        )


def prepare_for_kbit(model: PreTrainedModel, gradient_checkpointing: bool) -> PreTrainedModel:
    """``peft.prepare_model_for_kbit_training``: the base frozen, every non-4-bit floating
    parameter (embeddings, norms, head) upcast to fp32, input embeddings' outputs made to
    require grad (so checkpointed blocks have a graph), and non-reentrant checkpointing."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(
        model,
        use_gradient_checkpointing=gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )


# --------------------------------------------------------------------------- loading


def load_causal_model(
    name_or_path: str,
    tokenizer: PreTrainedTokenizerBase,
    *,
    quantization: QuantizationConfig | None = None,
    device: str = "cpu",
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """A causal LM from a hub id or local folder, matched to ``tokenizer``.

    With ``quantization`` the linear layers load as bitsandbytes 4-bit (``device`` "cuda"
    places them on this process's GPU: 4-bit weights are quantized while loading, on the
    device they run on); without it the weights load in fp32 (the trainer's autocast or the plan's
    precision casts later, as for seq2seq). The embedding grows when the tokenizer did.
    """
    _check_local_dir(name_or_path, "model")
    kwargs: dict[str, Any] = {
        "trust_remote_code": trust_remote_code,
        "use_safetensors": _prefer_safetensors(name_or_path),
    }
    if quantization is not None:
        _require_bitsandbytes()
        config = bnb_config(quantization, device)
        kwargs["quantization_config"] = config
        kwargs["dtype"] = config.bnb_4bit_compute_dtype
        # Each process quantizes onto its own GPU (torchrun sets LOCAL_RANK).
        kwargs["device_map"] = {"": local_rank()} if device == "cuda" else {"": "cpu"}
    else:
        kwargs["dtype"] = torch.float32
    model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    resize_to_tokenizer(model, tokenizer)
    set_causal_generation_ids(model, tokenizer)
    return model


def set_causal_generation_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Pad and eos ids in config and generation config (a causal LM has no decoder start)."""
    config = model.config
    config.pad_token_id = tokenizer.pad_token_id
    if getattr(config, "eos_token_id", None) is None:
        config.eos_token_id = tokenizer.eos_token_id
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        generation.pad_token_id = tokenizer.pad_token_id
        if generation.eos_token_id is None:
            generation.eos_token_id = tokenizer.eos_token_id


def load_adapters(model: PreTrainedModel, adapter_dir: str | Path) -> PreTrainedModel:
    """Base ``model`` with the trained adapters of ``adapter_dir`` on it (for generation)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
