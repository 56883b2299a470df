"""The questions a plan will ask after its first training step, named before it starts.

A plan asks the simulator in order: the step at the full per-rank micro-batch, then (when
it does not fit) steps with gradient accumulation, then evaluation's and prediction's
generation. Each new question is a new trace key (seconds of tracing); only the first
depends on nothing. Naming the others up front lets the real simulator trace them on
another core while this one climbs the ladder (``Simulator.ahead``). A guess the ladder
makes wrong (it switches precision, checkpointing or the source length) costs only the
other core's time: the answers still come from the questions actually asked.
"""

from __future__ import annotations

from dialsum.memory.fit import Planner, PlanState
from dialsum.memory.generation_batches import eval_lengths
from dialsum.memory.precision import eval_generate_options, predict_generate_options
from dialsum.trace.profile import GenerateShape, TrainShape

_BATCH = 2
"""Any batch above 1 names the same timelines (``trace.reuse``: recorded at 2 and 3)."""


def ask_ahead(planner: Planner, state: PlanState) -> None:
    """Name prediction's, evaluation's and the accumulating step's questions, in the order
    the helper should take them: the last the plan asks for first (the plan itself takes
    any it reaches before the helper does)."""
    request = planner.request
    options = state.options
    predict = predict_generate_options(options.precision, "cuda", options)
    new, beams = request.new_tokens, request.num_beams
    planner.ask_ahead(GenerateShape(_BATCH, state.source_len, new, beams, 0), predict)
    source, labels = eval_lengths(planner, state)
    evaluation = eval_generate_options(options.precision, "cuda", options)
    planner.ask_ahead(GenerateShape(_BATCH, source, new, beams, labels), evaluation)
    accumulating = planner.step_options(1, options)
    if accumulating.micro_batches > 1:
        planner.ask_ahead(TrainShape(_BATCH, state.source_len, request.target_len), accumulating)
