"""Build a model whose parameters are fake CPU tensors (no weight memory).

The model (seq2seq or causal) is built on the ``meta`` device (fast, no initialisation
work) through ``architectures.model_from_config`` (which unties T5/mT5 heads), then every
parameter and buffer is replaced by an uninitialised fake CPU tensor of the same shape,
dtype and stride. Tied parameters (BART's shared embedding, a tied LLM head) stay one
object. For QLoRA the linear layers become 4-bit first (``trace.quantized``).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch._prims_common import are_strides_like_channels_last_or_false
from torch._subclasses.fake_tensor import (
    FakeTensor,
    FakeTensorMode,
    TensorMetadata,
    in_kernel_invocation_manager,
)
from transformers import PretrainedConfig

from dialsum.models.architectures import is_causal, model_from_config
from dialsum.trace.quantized import Quantization, fake_4bit_linears, quantize_meta_model

# LoRA targets per family: the attention projections.
LORA_TARGETS: dict[str, list[str]] = {
    "t5": ["q", "k", "v", "o"],
    "mt5": ["q", "k", "v", "o"],
    "umt5": ["q", "k", "v", "o"],
    "bart": ["q_proj", "k_proj", "v_proj", "out_proj"],
    "mbart": ["q_proj", "k_proj", "v_proj", "out_proj"],
}


# Argument types ``FakeTensorMode._prep_args_for_hash`` keys as (type, value), its last
# branch: nothing before it matches them.
_PLAIN_ARGS = frozenset({int, float, bool, str, type(None), torch.dtype, torch.memory_format})
_SEQUENCES = (tuple, list, torch.Size)
# ``TensorMetadata``'s fields, in the order ``_flatten_into`` appends them; the fast key
# below appends the same values in this order, and is off for any other torch.
_METADATA_FIELDS = (
    "dtype", "shape", "stride", "device", "layout", "memory_format", "storage_offset",
    "storage_bytes", "requires_grad", "is_quantized", "is_conj", "is_neg", "is_inference",
    "is_sparse", "is_coalesced", "dense_dim", "sparse_dim",
)  # fmt: skip
_FAST_KEYS = tuple(f.name for f in dataclasses.fields(TensorMetadata)) == _METADATA_FIELDS


class SizedCacheFakeTensorMode(FakeTensorMode):
    """``FakeTensorMode`` whose cached outputs hold the storage the kernel allocated, and
    whose cache keys are built faster (the same keys).

    FakeTensor caches each op's output metadata (shape, strides, *and* the storage's
    bytes) in one dict shared by every mode of the process, and rebuilds a cached output
    with ``empty_strided``: minimal storage for its strides. A computed output keeps what
    the meta kernel allocated, sometimes more: memory-efficient attention's padded bias
    gradient ``[2, 4, 24, 24]`` with strides ``(3072, 768, 32, 1)`` holds 6,144 elements
    when computed, 6,136 when rebuilt. Here a rebuilt output's storage is resized to the
    bytes the cache recorded, so a cache hit and a miss allocate the same and a step
    traced twice records the same events twice (``step_trace`` relies on it).

    The key of an op is a flat list: each tensor argument's metadata, each shape and
    stride element as ``(int, value)``, each plain argument as ``(type, value)``.
    ``_prep_args_for_hash`` builds it through a chain of ``isinstance`` tests per element
    and a generic walk over the metadata's fields: about a quarter of a training trace.
    ``_prep_args_for_hash`` here appends the very same values for the common arguments
    (our dense fake tensors, integer shapes, plain scalars) and hands anything else to
    FakeTensor's own (``tests/trace/test_trace_mode.py`` compares the keys).
    """

    def _get_output_tensor_from_cache_entry(self, state, entry, key, args):
        out = super()._get_output_tensor_from_cache_entry(state, entry, key, args)
        metadata = entry.metadata
        fresh = entry.inplace_idx is None and entry.view_idx is None
        if out is not None and fresh and isinstance(metadata.storage_bytes, int):
            storage = out.untyped_storage()
            if storage.nbytes() != metadata.storage_bytes:
                with in_kernel_invocation_manager(self):
                    storage.resize_(metadata.storage_bytes)
        return out

    def _prep_args_for_hash(self, result, args, state, id_hashed_objects) -> None:
        if isinstance(args, dict) or not _FAST_KEYS:
            super()._prep_args_for_hash(result, args, state, id_hashed_objects)
            return
        if isinstance(args, (list, tuple)):
            result.append(type(args))
            result.append(f"length_{len(args)}")
        for arg in args:
            kind = type(arg)
            if kind in _PLAIN_ARGS:
                result.append(kind)
                result.append(arg)
            elif kind is FakeTensor and self._append_dense(result, arg):
                pass
            elif kind in _SEQUENCES and all(type(v) is int for v in arg):
                _append_ints(result, arg)
            else:  # one argument, no container marks: FakeTensor's own walk
                super()._prep_args_for_hash(result, iter((arg,)), state, id_hashed_objects)

    def _append_dense(self, result: list, t: FakeTensor) -> bool:
        """``extract_tensor_metadata(t)._flatten_into(result)`` for a dense strided fake
        tensor of this mode with integer sizes; False (nothing appended) for any other,
        which FakeTensor's walk then keys or bypasses (another mode's tensor, a constant,
        sparse, mkldnn, symbolic sizes). One ``layout`` read instead of five: on a fake
        tensor each is a dispatch of ``prim.layout``."""
        if (
            t.fake_mode is not self
            or t.constant is not None
            or t.layout is not torch.strided  # not sparse, not mkldnn
            or t._has_symbolic_sizes_strides
        ):
            return False
        shape, stride = t.shape, t.stride()
        # ``suggest_memory_format``, then kept only if the tensor is contiguous in it.
        memory_format: torch.memory_format | None = torch.contiguous_format
        if are_strides_like_channels_last_or_false(shape, stride):
            memory_format = torch.channels_last if t.ndim == 4 else torch.channels_last_3d
        if not t.is_contiguous(memory_format=memory_format):
            memory_format = None
        result.append(t.dtype)
        _append_ints(result, shape)
        _append_ints(result, stride)
        result.extend(
            (
                t.device,
                torch.strided,
                memory_format,
                t.storage_offset(),
                t.untyped_storage().nbytes(),
                t.requires_grad,
                t.is_quantized,
                t.is_conj(),
                t.is_neg(),
                t.is_inference(),
                t.is_sparse,
                None,  # is_coalesced, dense_dim, sparse_dim: sparse tensors only
                None,
                None,
            )
        )
        return True


def _append_ints(result: list, values) -> None:
    """A shape, stride or int list as ``_prep_args_for_hash`` keys it."""
    result.append(type(values))
    result.append(f"length_{len(values)}")
    for value in values:
        result.append(int)
        result.append(value)


def fresh_fake_mode() -> FakeTensorMode:
    """A ``SizedCacheFakeTensorMode``. Its dispatch cache is the process's (shared by every
    mode): what earlier traces cached is reused, and since a cache hit allocates what the
    kernel did, nothing a trace records depends on what ran before it in the process."""
    return SizedCacheFakeTensorMode()


def _fake_like(tensor: torch.Tensor, mode: FakeTensorMode) -> torch.Tensor:
    with mode:
        return torch.empty_strided(tensor.shape, tensor.stride(), dtype=tensor.dtype, device="cpu")


def _meta_to_fake(model: nn.Module, mode: FakeTensorMode) -> None:
    """Replace every meta parameter/buffer of ``model`` by a fake CPU tensor, in place."""
    converted: dict[int, torch.Tensor] = {}

    def convert(tensor: torch.Tensor) -> torch.Tensor:
        if not tensor.is_meta:
            return tensor  # already fake (a 4-bit weight with its quantization state)
        if id(tensor) not in converted:
            fake = _fake_like(tensor, mode)
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


def fake_model_from_config(
    config: PretrainedConfig,
    mode: FakeTensorMode,
    dtype: torch.dtype | None = None,
    lora_rank: int | None = None,
    quantization: Quantization | None = None,
    kbit_training: bool = True,
    device: str = "cuda",
) -> nn.Module:
    """The model of ``config`` with fake CPU parameters/buffers.

    ``dtype`` casts floating weights as ``model.to(dtype)`` does; ``lora_rank`` wraps the
    model with peft LoRA adapters (base frozen). Both happen on ``meta``, before the
    conversion to fake tensors (peft's device moves cannot swap fake parameters).

    ``quantization`` (QLoRA): the linear layers become ``Linear4bit`` as ``from_pretrained``
    makes them; with ``kbit_training`` (training) ``prepare_model_for_kbit_training`` then
    freezes the base and leaves every unquantized parameter fp32, without it (prediction)
    they stay in ``dtype``. The 4-bit weights get fake packed values and quantization state.
    """
    if quantization is None:
        model = model_from_config(config, device="meta")
        if dtype is not None:
            model = model.to(dtype)
    else:
        # from_pretrained loads the unquantized parts in ``dtype`` (a quantized model cannot
        # be cast afterwards); prepare_model_for_kbit_training then upcasts them to fp32.
        model = model_from_config(config, device="meta", dtype=dtype)
        quantize_meta_model(model, quantization)
        if kbit_training:
            from peft import prepare_model_for_kbit_training

            # Checkpointing is switched on by the caller, as for the other methods.
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if lora_rank is not None:
        model = apply_lora(model, lora_rank)
    if quantization is not None:
        fake_4bit_linears(model, mode, quantization, device)
    _meta_to_fake(model, mode)
    return model


def lora_targets(config: PretrainedConfig) -> list[str]:
    """The attention projections of a seq2seq model (a causal LM: ``apply_lora``)."""
    model_type = getattr(config, "model_type", "")
    if model_type not in LORA_TARGETS:
        raise ValueError(
            f"no LoRA target modules known for model_type {model_type!r}; "
            f"known: {sorted(LORA_TARGETS)}"
        )
    return LORA_TARGETS[model_type]


def apply_lora(model: nn.Module, rank: int) -> nn.Module:
    """Wrap ``model`` with peft LoRA adapters (``lora_targets``); base frozen.

    peft keeps adapters in fp32 even on a bf16 base (``autocast_adapter_dtype=True``).
    A causal LM gets the run's own adapters (``models.lora.apply_lora``): every linear
    layer, and the speaker/PII marker rows of the embedding training with them (peft's
    trainable tokens: each forward builds a merged copy of the whole embedding matrix,
    and of the head it is tied to - for a 256k vocabulary the largest tensor of the step).
    """
    from peft import LoraConfig, TaskType, get_peft_model

    if is_causal(model.config):
        from dialsum.core.tokens import SPECIAL_TOKENS
        from dialsum.models.lora import apply_lora as run_apply_lora

        # Which rows train does not change memory; how many barely does (rows x width).
        markers = range(min(len(SPECIAL_TOKENS), model.config.vocab_size))
        return run_apply_lora(model, rank, causal=True, trainable_token_indices=markers)

    lora_config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        lora_dropout=0.05,
        target_modules=lora_targets(model.config),
        task_type=TaskType.SEQ_2_SEQ_LM,
    )
    return get_peft_model(model, lora_config)


def unique_params(model: nn.Module) -> list[nn.Parameter]:
    return list({id(p): p for p in model.parameters()}.values())


def trainable_params(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in unique_params(model) if p.requires_grad]
