"""What one simulated training step runs on: the model and its optimizer, on fake tensors.

Built as the guarded trainer builds them (``step.train_step.build_optimizer``: parameter
groups, fused AdamW), with gradient checkpointing switched on as transformers does;
bitsandbytes' 8-bit AdamW runs on CUDA only, so its state is modelled
(``trace.optimizers``). ``params`` counts the base model (4-bit weights by their values,
not their packed bytes), ``trainable`` the parameters that train.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from transformers import PretrainedConfig

from dialsum.step.train_step import build_optimizer
from dialsum.trace.cuda_emulation import checkpoint_context_fn
from dialsum.trace.fake_model import fake_model_from_config, trainable_params, unique_params
from dialsum.trace.model_run import amp_dtype, quantization_of, weights_dtype
from dialsum.trace.optimizers import AdamW8bitModel
from dialsum.trace.profile import TrainOptions


@dataclass
class TrainRig:
    """Everything one simulated training run needs, built on fake tensors."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    params: int
    trainable: int


def build_train_rig(
    config: PretrainedConfig, options: TrainOptions, mode: FakeTensorMode
) -> TrainRig:
    """The model on fake tensors as the run builds it (dtype, LoRA/QLoRA, checkpointing)
    and the run's optimizer over its trainable parameters."""
    lora_rank = options.lora_rank if options.lora else None
    model = fake_model_from_config(
        config, mode, weights_dtype(options.precision), lora_rank, quantization_of(options)
    )
    if options.gradient_checkpointing:
        amp = amp_dtype(options.precision) if options.device == "cuda" else None
        context_fn = checkpoint_context_fn(amp) if options.device == "cuda" else None
        checkpoint_kwargs = {"use_reentrant": False}
        if context_fn is not None:
            checkpoint_kwargs["context_fn"] = context_fn
        # transformers renames this to activation_checkpointing_enable (old name deprecated).
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=checkpoint_kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpoint_kwargs)
        if options.lora:
            # What HF/peft do so checkpointed blocks of a frozen base still get gradients.
            with mode:
                model.enable_input_require_grads()
    model.train()
    trainable = trainable_params(model)
    with mode:
        if options.optimizer in ("adamw8bit", "paged_adamw8bit"):
            # Paged: the same states in CUDA unified memory; counted on the GPU, where they
            # live until the driver pages them out under pressure (an upper bound).
            # bitsandbytes runs on CUDA only: its state is modelled (see ``trace.optimizers``).
            optimizer = AdamW8bitModel(trainable)
        else:
            # The trainer's own optimizer construction (parameter groups, fused AdamW).
            optimizer = build_optimizer(model, options.optimizer, lr=1e-4, weight_decay=0.01)
    total = sum(p.numel() for p in unique_params(model))
    trainable_count = sum(p.numel() for p in trainable)
    # ``params`` is the base model; with LoRA the adapters are the trainable part on top.
    # A 4-bit weight's parameter holds packed bytes: count its values from the layer.
    total += _unpacked_4bit_values(model)
    base = total - trainable_count if options.lora else total
    return TrainRig(model, optimizer, base, trainable_count)


def _unpacked_4bit_values(model: nn.Module) -> int:
    """Values of the 4-bit weights beyond their packed parameters (``numel`` of a packed
    weight is half its ``out x in`` values), so ``params`` counts the model's parameters."""
    from dialsum.trace.quantized import is_4bit_linear

    extra = 0
    for module in model.modules():
        if is_4bit_linear(module):
            extra += module.out_features * module.in_features - module.weight.numel()
    return extra
