"""The training step and the optimizer that both the trainer and the planner use.

"The plan is the run": the memory planner traces these functions on fake tensors and the
guarded trainer calls them on real ones, so what is simulated is what runs - the same
code objects, not a re-creation:

- ``step_forward_backward``: one optimizer step's forward/backward over micro-batches,
  with the token-sum loss normalised by the whole step's label tokens. The logits of a
  micro-batch are released before its backward (cross entropy saved what backward needs;
  holding the ``[micro, tgt_len, vocab]`` logits through backward would cost one more
  logits tensor at the backward peak - 0.2 GiB for T5-base at micro-batch 16 in bf16).
- ``build_optimizer``: the optimizer with the Trainer's weight-decay parameter groups.
  ``adamw`` is the fused AdamW kernel (what transformers picks on torch >= 2.8): it
  updates in place. ``adamw_foreach`` keeps the multi-tensor kernel, whose ``step()``
  makes a parameter-sized temporary (+1 GiB for T5-base); both are simulated as they run.

Causal LMs (``causal=True``) run the same step: one sequence per row (prompt + summary +
EOS, right-padded), labels -100 on prompt and padding, and the labels shifted one position
left so that position ``t``'s logits predict token ``t + 1`` - the logits are not sliced
(a ``[micro, seq-1, vocab]`` slice would copy the largest tensor of the step).

Generation is shared with the planner the same way, in ``step.token_budget``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Keys whose second dimension is the source / target length, used to trim padding per chunk.
_SOURCE_KEYS = ("input_ids", "attention_mask")
_TARGET_KEYS = ("labels", "decoder_input_ids", "decoder_attention_mask")

OPTIMIZER_NAMES: tuple[str, ...] = (
    "adamw",
    "adamw_foreach",
    "adafactor",
    "adamw8bit",
    "paged_adamw8bit",
    "sgd",
)
_BNB_OPTIMIZERS = ("adamw8bit", "paged_adamw8bit")


# -- training step ----------------------------------------------------------------------


def slice_rows(
    inputs: dict[str, Any], start: int, end: int, trim: bool = True, causal: bool = False
) -> dict[str, Any]:
    """Rows ``start:end`` of every tensor in the batch.

    With ``trim``, padding beyond the chunk's longest row is cut so a short micro-batch
    does not pay for the longest row of the whole step (reads values: real tensors only).
    A causal batch is one right-padded sequence per row: every ``[rows, seq]`` tensor is
    cut at the longest attended length.
    """
    out = {k: v[start:end] if torch.is_tensor(v) else v for k, v in inputs.items()}
    if not trim:
        return out
    if causal:
        seq_len = int(out["attention_mask"].sum(dim=1).max().item()) or 1
        return {
            k: v[:, :seq_len] if torch.is_tensor(v) and v.dim() >= 2 else v for k, v in out.items()
        }
    if "attention_mask" in out:
        src_len = int(out["attention_mask"].sum(dim=1).max().item()) or 1
        for key in _SOURCE_KEYS:
            if key in out:
                out[key] = out[key][:, :src_len]
    if "labels" in out:
        tgt_len = int((out["labels"] != -100).sum(dim=1).max().item()) or 1
        for key in _TARGET_KEYS:
            if key in out and out[key].dim() >= 2:
                out[key] = out[key][:, :tgt_len]
    return out


def token_sum_loss(
    logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float
) -> torch.Tensor:
    """Sum of per-token cross entropy.

    ``logits`` [batch, tgt_len, vocab], ``labels`` [batch, tgt_len] with -100 for padding.
    """
    return F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        ignore_index=-100,
        reduction="sum",
        label_smoothing=label_smoothing,
    )


def shift_causal_labels(labels: torch.Tensor) -> torch.Tensor:
    """``labels`` [rows, seq] one position left, -100 at the end: position ``t`` of the
    logits is scored against token ``t + 1``. Label -100 at position 0 (always a prompt
    token) drops out, so the count of scored tokens is unchanged."""
    return F.pad(labels[:, 1:], (0, 1), value=-100)


def micro_batch_forward_backward(
    model: Callable[..., Any],
    chunk: dict[str, Any],
    normalizer: float,
    *,
    label_smoothing: float = 0.0,
    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    causal: bool = False,
) -> torch.Tensor:
    """Forward, token-sum loss / ``normalizer``, backward for one micro-batch; detached loss.

    The model gets ``decoder_input_ids`` (the collator shifts the labels) but not the
    labels: the loss is ours, so its normalisation is exact over micro-batches. A causal
    model gets ``input_ids`` / ``attention_mask`` and its labels are shifted here.
    """
    labels = chunk["labels"]
    if causal:
        labels = shift_causal_labels(labels)  # [micro, seq]
    inputs = {k: v for k, v in chunk.items() if k != "labels"}
    with context():
        logits = model(**inputs).logits  # [micro, tgt_len, vocab]; causal: [micro, seq, vocab]
        loss = token_sum_loss(logits, labels, label_smoothing) / normalizer
        del logits  # see module docstring: not kept alive through backward
    backward(loss)
    return loss.detach()


def step_forward_backward(
    model: Callable[..., Any],
    inputs: dict[str, Any],
    micro: int,
    normalizer: float,
    *,
    label_smoothing: float = 0.0,
    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    before_micro_batch: Callable[[dict[str, Any]], None] | None = None,
    trim: bool = True,
    causal: bool = False,
) -> torch.Tensor:
    """Forward/backward of every ``micro``-row chunk of ``inputs``; gradients add up.

    Returns the step's loss (sum of the micro-batch losses, detached). ``context`` wraps
    each forward (DDP ``no_sync``, autocast); ``backward`` is the trainer's (loss scaling)
    or plain autograd; ``before_micro_batch(chunk)`` is a hook (fault injection);
    ``causal``: a decoder-only model (module docstring).
    """
    rows = int(inputs["labels"].shape[0])
    total = torch.zeros((), device=inputs["labels"].device)
    for start in range(0, rows, micro):
        chunk = slice_rows(inputs, start, start + micro, trim=trim, causal=causal)
        if before_micro_batch is not None:
            before_micro_batch(chunk)
        total += micro_batch_forward_backward(
            model,
            chunk,
            normalizer,
            label_smoothing=label_smoothing,
            backward=backward,
            context=context,
            causal=causal,
        )
    return total


def label_token_count(labels: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """Label tokens (not -100) in ``labels`` [rows, tgt_len], as a float scalar tensor;
    ``causal``: the tokens scored after the shift (position 0 predicts nothing)."""
    if causal:
        labels = labels[:, 1:]
    return (labels != -100).sum().float()


# -- optimizer ----------------------------------------------------------------------------

# Parameter names without weight decay, as transformers' Trainer decides
# (``Trainer.get_decay_parameter_names``): biases and every norm's weights.
_NO_DECAY_PATTERNS = (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")


def decay_parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """The Trainer's two parameter groups: with weight decay, and without (biases, norms)."""
    from transformers.trainer_pt_utils import get_parameter_names

    decay = set(get_parameter_names(model, [nn.LayerNorm], list(_NO_DECAY_PATTERNS)))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in named if n in decay], "weight_decay": weight_decay},
        {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0},
    ]


def fused_adamw_supported(params: Iterable[torch.Tensor]) -> bool:
    """Fused AdamW runs on CUDA, and on CPU from torch 2.4, for floating parameters."""
    return all(p.is_floating_point() and p.device.type in ("cuda", "cpu") for p in params)


def build_optimizer(
    model: nn.Module,
    name: str,
    *,
    lr: float,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.Optimizer:
    """The optimizer ``name`` over ``model``'s trainable parameters (see module docstring).

    ``adamw8bit`` needs bitsandbytes (``uv sync --extra bnb``, CUDA only); the planner
    offers it only when installed and simulates its state analytically.
    ``paged_adamw8bit`` is the same states in CUDA unified memory, which the driver pages
    out to CPU memory under pressure (the QLoRA recipes' ``paged_adamw_8bit``).
    """
    groups = decay_parameter_groups(model, weight_decay)
    params = [p for g in groups for p in g["params"]]
    if name == "adamw":
        fused = fused_adamw_supported(params)
        return torch.optim.AdamW(
            groups, lr=lr, betas=betas, eps=eps, fused=fused, foreach=None if fused else True
        )
    if name == "adamw_foreach":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, foreach=True)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(
            groups, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False
        )
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.0, foreach=True)
    if name in _BNB_OPTIMIZERS:
        try:
            import bitsandbytes as bnb
        except ImportError:
            from dialsum.core.errors import UserError

            raise UserError(
                f"training.optimizer {name} needs the bitsandbytes package: run "
                "`uv sync --extra bnb` (CUDA only), or use adamw or adafactor"
            ) from None
        if name == "paged_adamw8bit":
            return bnb.optim.PagedAdamW8bit(groups, lr=lr, betas=betas, eps=eps)
        return bnb.optim.AdamW8bit(groups, lr=lr, betas=betas, eps=eps)
    raise ValueError(f"unknown optimizer {name!r}; use one of {', '.join(OPTIMIZER_NAMES)}")


def optimizer_available(name: str) -> bool:
    """Whether ``name`` can be built here (8-bit AdamW needs bitsandbytes installed)."""
    if name not in _BNB_OPTIMIZERS:
        return name in OPTIMIZER_NAMES
    import importlib.util

    return importlib.util.find_spec("bitsandbytes") is not None
