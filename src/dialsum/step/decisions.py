"""What a plan decides and a run applies: one type for both.

``memory.plan.Plan`` (what the planner decided for a GPU) and ``training.settings.Settings``
(what the run applies) both extend ``RunDecisions``: a decision added here is a field of
both, and ``training.settings`` copies each one from the plan or refuses to start.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dialsum.step.geometry import BatchGeometry, GeometryView


@dataclass
class RunDecisions(GeometryView):
    geometry: BatchGeometry  # effective batch, GPUs, micro-batch, accumulation
    eval_batch_size: int  # rows per eval generation batch (the Trainer's eval batch)
    generation_batch_size: int  # most rows of a predict batch
    generation_token_budget: int  # step.token_budget.generation_cost per predict batch
    generation_row_cap: int  # most rows of a batch of short dialogues
    precision: str  # fp32 | bf16 | fp16 | pure_bf16
    optimizer: str  # trace.profile.OPTIMIZERS
    gradient_checkpointing: bool
    source_len: int  # tokenizer.max_source_length the run tokenizes at
    # full | lora | qlora: what is trained (causal LMs; the ladder may switch an "auto").
    method: str = field(default="full", kw_only=True)
