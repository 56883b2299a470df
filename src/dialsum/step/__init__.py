"""What the planner and the trainer share, so the plan is the run.

``train_step`` (the micro-batches' forward/backward, the token-sum loss, the optimizer the
trainer builds), ``geometry`` (micro-batch x accumulation x world = effective batch, and the
one refit rule), ``decisions`` (the fields a plan decides and a run applies) and
``token_budget`` (the generation-batching formula of plan and predict).

May import: ``models``, ``data``, ``core``.
"""
