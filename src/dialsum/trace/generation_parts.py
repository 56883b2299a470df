"""What the seq2seq and the causal generation traces share: the per-step logits work of
``generate()``, the cost phases and the profile of a generation trace."""

from __future__ import annotations

import torch

from dialsum.trace.model_run import full_breakdown
from dialsum.trace.profile import MemoryProfile
from dialsum.trace.tracer import PeakRecord

GENERATE_CATEGORIES = ("weights", "activations", "kv_cache", "logits", "temporaries")

GENERATE_COST_PHASES = ("encoder", "decode_step", "logits", "reorder", "eval_loss", "decode_short")


def process_logits(raw_logits: torch.Tensor, batch: int, num_beams: int) -> None:
    """``generate()``'s per-step logits work on ``raw_logits`` [batch*beams, 1, vocab]."""
    vocab = raw_logits.shape[-1]
    # fp32 copy of the last position: [batch*beams, vocab]
    logits = raw_logits[:, -1, :].to(copy=True, dtype=torch.float32)
    if num_beams == 1:
        # greedy: one processor output (e.g. masked_fill of banned tokens), then argmax.
        scores = logits.masked_fill(torch.zeros_like(logits[:1], dtype=torch.bool), 0.0)
        torch.argmax(scores, dim=-1)
        return
    # beam search: log_softmax, one processor output, + running beam scores, then topk
    # over [batch, beams*vocab] keeping 2*beams continuations.
    log_probs = torch.log_softmax(logits, dim=-1)
    log_probs = log_probs.masked_fill(torch.zeros_like(log_probs[:1], dtype=torch.bool), 0.0)
    running = torch.zeros(batch, num_beams, 1, dtype=torch.float32)
    accumulated = (log_probs.view(batch, num_beams, vocab) + running).reshape(batch, -1)
    torch.topk(accumulated, k=min(2 * num_beams, accumulated.shape[-1]), dim=-1)


def generate_profile(params: int, peak: PeakRecord, phases: dict[str, PeakRecord]) -> MemoryProfile:
    return MemoryProfile(
        params=params,
        trainable_params=0,
        peak_bytes=peak.total_bytes,
        peak_phase=peak.phase,
        breakdown=full_breakdown(peak, GENERATE_CATEGORIES),
        phase_peaks={k: r.total_bytes for k, r in phases.items() if k != "setup"},
    )
