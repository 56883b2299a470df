"""The training run: settings applied from the plan, the OOM-guarded trainer, DDP and
DeepSpeed, resume, monitoring.

May import: ``memory`` (the planner) and everything below it.
"""
