"""Build a seq2seq model whose parameters are fake CPU tensors (no weight memory).

The model is built on the ``meta`` device (fast, no initialisation work) through
``architectures.model_from_config`` (which unties T5/mT5 heads), then every parameter and
buffer is replaced by an uninitialised fake CPU tensor of the same shape, dtype and
stride. Tied parameters (BART's shared embedding) stay one object.
"""

from __future__ import annotations

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from transformers import PretrainedConfig

from dialsum.architectures import model_from_config

# LoRA targets per family: the attention projections.
LORA_TARGETS: dict[str, list[str]] = {
    "t5": ["q", "k", "v", "o"],
    "mt5": ["q", "k", "v", "o"],
    "umt5": ["q", "k", "v", "o"],
    "bart": ["q_proj", "k_proj", "v_proj", "out_proj"],
    "mbart": ["q_proj", "k_proj", "v_proj", "out_proj"],
}


def _fake_like(tensor: torch.Tensor, mode: FakeTensorMode, dtype: torch.dtype) -> torch.Tensor:
    with mode:
        return torch.empty_strided(tensor.shape, tensor.stride(), dtype=dtype, device="cpu")


def _target_dtype(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype:
    # Only floating tensors follow a model-wide cast, as ``model.to(dtype)`` does.
    if dtype is not None and tensor.is_floating_point():
        return dtype
    return tensor.dtype


def fake_model_from_config(
    config: PretrainedConfig, mode: FakeTensorMode, dtype: torch.dtype | None = None
) -> nn.Module:
    """The model of ``config`` with fake CPU parameters/buffers, optionally cast to ``dtype``."""
    model = model_from_config(config, device="meta")
    converted: dict[int, torch.Tensor] = {}

    def convert(tensor: torch.Tensor) -> torch.Tensor:
        if id(tensor) not in converted:
            fake = _fake_like(tensor, mode, _target_dtype(tensor, dtype))
            if isinstance(tensor, nn.Parameter):
                fake = nn.Parameter(fake, requires_grad=tensor.requires_grad)
            converted[id(tensor)] = fake
        return converted[id(tensor)]

    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is not None:
                module._parameters[name] = convert(param)
        for name, buffer in list(module._buffers.items()):
            if buffer is not None:
                module._buffers[name] = convert(buffer)
    return model


def lora_targets(config: PretrainedConfig) -> list[str]:
    model_type = getattr(config, "model_type", "")
    if model_type not in LORA_TARGETS:
        raise ValueError(
            f"no LoRA target modules known for model_type {model_type!r}; "
            f"known: {sorted(LORA_TARGETS)}"
        )
    return LORA_TARGETS[model_type]


def apply_lora(model: nn.Module, rank: int, mode: FakeTensorMode) -> nn.Module:
    """Wrap ``model`` with peft LoRA adapters (created as fake tensors); the base is frozen."""
    from peft import LoraConfig, TaskType, get_peft_model

    lora_config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        lora_dropout=0.05,
        target_modules=lora_targets(model.config),
        task_type=TaskType.SEQ_2_SEQ_LM,
    )
    with mode:
        return get_peft_model(model, lora_config)


def unique_params(model: nn.Module) -> list[nn.Parameter]:
    return list({id(p): p for p in model.parameters()}.values())


def trainable_params(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in unique_params(model) if p.requires_grad]
