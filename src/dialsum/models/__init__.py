"""Model architectures (shipped ``config.json`` files), loading, the tiny model, LoRA, and
``setup`` (the model and tokenizer a section names).

May import: ``data``, ``core``.
"""
