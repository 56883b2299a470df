"""What evaluation returns per batch, assembled: the chunks the OOM guard split a batch
into put back together, and a causal LM's prediction step.

A causal batch is prompt + summary rows: the loss is the training loss on them (labels
shifted, summary tokens only), then the prompts alone (left-padded) are generated from and
only the new tokens kept, with the summary labels right-padded beside them for the metrics.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dialsum.data.prompt import left_pad, prompts_and_targets
from dialsum.step.train_step import label_token_count, shift_causal_labels, token_sum_loss


def causal_prediction(
    model: nn.Module,
    inputs: dict[str, Any],
    *,
    pad_id: int,
    generation: Any,
    loss_context: Callable[[], contextlib.AbstractContextManager],
    loss_only: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(mean token loss, new tokens, summary labels) of a causal batch."""
    labels = inputs["labels"]  # [rows, seq], -100 on prompt and padding
    with torch.no_grad(), loss_context():
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        loss = token_sum_loss(logits.logits, shift_causal_labels(labels), 0.0)
        del logits
    loss = loss / label_token_count(labels, causal=True).clamp(min=1)
    if loss_only:
        return loss.detach(), None, None
    prompts, targets = prompts_and_targets(inputs["input_ids"], labels)
    ids, mask = left_pad(prompts, pad_id, device=labels.device)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, **generation)
    new_tokens = out[:, ids.shape[1] :]  # [rows, new]: the prompt is not the summary
    summary_labels, _ = left_pad(targets, -100, device=labels.device, side="right")
    return loss.detach(), new_tokens, summary_labels


def pad_cat(tensors: list[torch.Tensor], pad: int) -> torch.Tensor:
    """Concatenate [rows_i, len_i] tensors along rows, right-padding to the longest length."""
    width = max(t.shape[1] for t in tensors)
    padded = [
        F.pad(t, (0, width - t.shape[1]), value=pad) if t.shape[1] < width else t for t in tensors
    ]
    return torch.cat(padded, dim=0)


def concat_predictions(parts: list[tuple], pad_id: int) -> tuple:
    """One (loss, predictions, labels) from the chunks' (the mean of their losses)."""
    losses = [p[0] for p in parts if p[0] is not None]
    loss = torch.stack([torch.as_tensor(x) for x in losses]).mean() if losses else None
    preds = [p[1] for p in parts if p[1] is not None]
    labels = [p[2] for p in parts if p[2] is not None]
    return (
        loss,
        pad_cat(preds, pad_id) if preds else None,
        pad_cat(labels, -100) if labels else None,
    )
