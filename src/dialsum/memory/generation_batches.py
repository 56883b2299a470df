"""The eval and prediction batch sizes of a plan, from simulated generation.

Evaluation runs inside training: its generation (AMP as in training) and the eval-loss
forward share the GPU with the resident optimizer state. Prediction runs after training
with the weights cast to the training's low dtype; its batches are token-budgeted
(``step.token_budget``), so besides the batch at the longest source the plan checks a
row cap at the budget's worst point (many short rows).
"""

from __future__ import annotations

from dataclasses import dataclass

from dialsum.memory.fit import (
    Need,
    Planner,
    PlanState,
    ddp_resident_bytes,
    format_gib,
    largest_fitting,
)
from dialsum.memory.precision import (
    PREDICT_PRECISION,
    eval_generate_options,
    predict_generate_options,
)
from dialsum.step.token_budget import generation_cost, generation_token_budget

EVAL_BATCH_CAP = 64
"""Largest eval batch planned: past it generation gains little and padding waste grows."""

GENERATION_BATCH_CAP = 256
"""Largest prediction batch planned (same reason; length-sorted batches pad little)."""


def _nice_batch_sizes(cap: int) -> list[int]:
    """1, 2, 3, 4, 6, 8, 12, 16, ... up to ``cap``: powers of two and 1.5x powers of two."""
    sizes = {1}
    power = 1
    while power <= cap:
        sizes.update(n for n in (power, power * 3 // 2) if n <= cap)
        power *= 2
    return sorted(sizes)


def _resident_bytes(need: Need) -> int:
    """Optimizer state that stays on the GPU while evaluation generates."""
    if need.zero_states is not None:
        return need.zero_states.optimizer_state_bytes
    return need.profile.breakdown.get("optimizer_state", 0)


def choose_eval_batch(planner: Planner, state: PlanState) -> tuple[int, Need]:
    """Eval batch: generation (AMP state as in training) and the eval-loss forward, next
    to the resident optimizer state."""
    request = planner.request
    assert state.need is not None
    resident = _resident_bytes(state.need)
    if request.world_size > 1 and request.zero_stage == 0:
        resident += ddp_resident_bytes(state.need.profile)  # DDP's buckets outlive the step
    options = eval_generate_options(state.options.precision, "cuda", state.options)

    source_len, label_len = eval_lengths(planner, state)

    def need_at(batch: int) -> Need:
        return planner.generate_need(batch, source_len, options, resident, label_len=label_len)

    if request.eval_batch_size != "auto":
        batch = int(request.eval_batch_size)
    else:
        batch = largest_fitting(range(1, EVAL_BATCH_CAP + 1), lambda b: need_at(b).fits) or 1
        state.reasons.append(
            f"eval batch {batch}: largest (up to {EVAL_BATCH_CAP}) whose generation with "
            f"{request.num_beams} beams and eval-loss forward fit next to the resident "
            f"optimizer state ({format_gib(resident)})"
        )
    need = need_at(batch)
    if not need.fits:
        state.warnings.append(
            f"evaluation at batch {batch} is predicted not to fit ({request.num_beams} beams, "
            "optimizer state resident)"
        )
    return batch, need


def eval_lengths(planner: Planner, state: PlanState) -> tuple[int, int]:
    """(source, label) lengths evaluation runs at: the eval file's longest rows when the
    request knows them (cut to the planned source when the ladder shortened it), else the
    training lengths."""
    request = planner.request
    if request.eval_lengths is None:
        return state.source_len, request.target_len
    source, target = request.eval_lengths
    if state.source_len < request.source_len:  # the ladder cut the source: eval is cut too
        source = min(source, state.source_len)
    return source, target


@dataclass(frozen=True)
class Generation:
    batch: int
    token_budget: int
    row_cap: int
    need: Need


def choose_generation(planner: Planner, state: PlanState) -> Generation:
    """Prediction batch at the longest source, its token budget, and a row cap checked at
    the worst point of the budget (many short rows)."""
    request = planner.request
    beams, new = request.num_beams, request.new_tokens
    options = predict_generate_options(state.options.precision, "cuda", state.options)

    def need_at(batch: int, source_len: int) -> Need:
        return planner.generate_need(batch, source_len, options, 0)

    batch = largest_fitting(
        _nice_batch_sizes(GENERATION_BATCH_CAP), lambda b: need_at(b, state.source_len).fits
    )
    if batch is None:
        batch = 1
        state.warnings.append("prediction at batch 1 is predicted not to fit")
    budget = generation_token_budget(batch, state.source_len, new, beams)

    def source_at(rows: int) -> int:
        # The longest source ``rows`` rows may have within the budget.
        return max(1, min(state.source_len, budget // (rows * beams) - new))

    most_rows = max(batch, budget // generation_cost(1, new, beams))
    candidates = [r for r in _nice_batch_sizes(GENERATION_BATCH_CAP) if batch <= r <= most_rows]
    row_cap = largest_fitting(candidates, lambda r: need_at(r, source_at(r)).fits) or batch
    need = need_at(batch, state.source_len)
    state.reasons.append(
        f"generation batch {batch} at source length {state.source_len} ({beams} beams, "
        f"{new} new tokens, weights in {PREDICT_PRECISION[state.options.precision]}): needs "
        f"{format_gib(need.required_bytes)}; token budget {budget} = {batch} x "
        f"({state.source_len} + {new}) x {beams}, at most {row_cap} rows per batch"
    )
    return Generation(batch, budget, row_cap, need)
