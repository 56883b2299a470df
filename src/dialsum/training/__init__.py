"""The training run: settings applied from the plan, the shared step, the OOM-guarded trainer."""
