"""What would fit when nothing on the fallback ladder does, each checked with the simulator.

A plan that does not fit ends with concrete ways out, each with the config key to set: a
smaller micro-batch (when one was fixed), a shorter source, a larger device (the smallest
catalog GPU that fits; a higher memory cap on the CPU), 2/4/8 GPUs with DeepSpeed ZeRO-3
and CPU offload, LoRA adapters.
"""

from __future__ import annotations

from dataclasses import replace

from dialsum.memory.fit import Planner, PlanState, largest_fitting
from dialsum.memory.overheads import usable_bytes
from dialsum.memory.request import truncation_note
from dialsum.speed.gpus import catalog
from dialsum.step.geometry import divisors


def suggest_alternatives(planner: Planner, state: PlanState, fixed_micro: int | None) -> list[str]:
    """What would fit when nothing on the ladder does (each checked with the simulator)."""
    request = planner.request
    options = state.options
    micro = fixed_micro or 1
    out: list[str] = []
    if fixed_micro is not None and fixed_micro > 1:
        smaller = largest_fitting(
            [d for d in divisors(request.per_rank_batch) if d < fixed_micro],
            lambda m: planner.train_need(m, options, state.source_len).fits,
        )
        if smaller is not None:
            out.append(
                f"a smaller micro-batch: training.micro_batch_size=auto (micro-batch {smaller} "
                "fits, the effective batch stays the same)"
            )
    lengths = list(range(32, state.source_len, 32))
    shorter = largest_fitting(lengths, lambda n: planner.train_need(micro, options, n).fits)
    if shorter is not None:
        out.append(
            f"a shorter source: tokenizer.max_source_length={shorter}"
            + truncation_note(request.data_lengths, shorter)
        )
    need = planner.train_need(micro, options, state.source_len)
    if planner.gpu.is_cpu:
        margin = planner.overheads.margin_fraction
        cap_gib = need.required_bytes / (1 - margin) / 2**30
        out.append(f"a larger device: hardware.memory_cap_gib={cap_gib:.3f} or more")
        return out
    larger = [
        g
        for g in catalog()
        if g.total_bytes > planner.gpu.total_bytes
        and need.required_bytes <= usable_bytes(g, planner.overheads)
    ]
    if larger:
        best = min(larger, key=lambda g: g.total_bytes)
        out.append(f"a larger GPU: {best.slug} ({best.total_gib:.0f} GiB) or more")
    if request.zero_stage == 0:
        for world in (2, 4, 8):
            if request.effective_batch_size % world:
                continue
            sharded = replace(request, zero_stage=3, offload=True, world_size=world)
            trial = Planner(sharded, planner.gpu, planner.overheads, planner.simulator)
            if trial.train_need(micro, options, state.source_len).fits:
                out.append(
                    f"{world} GPUs with DeepSpeed ZeRO-3 and CPU offload "
                    "(hardware.zero_stage=3, hardware.offload=true)"
                )
                break
    if not request.lora:
        lora = replace(options, lora=True, lora_rank=request.lora_rank)
        if planner.train_need(micro, lora, state.source_len).fits:
            out.append("LoRA adapters instead of full fine-tuning (model.lora.enabled=true)")
    return out
