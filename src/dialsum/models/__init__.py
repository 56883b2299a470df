"""Model architectures (shipped ``config.json`` files), loading, the tiny model, LoRA."""
