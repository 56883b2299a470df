"""Model architectures (shipped ``config.json`` files), ``stacks`` (their repeated layers),
loading, the tiny model, LoRA, and
``setup`` (the model and tokenizer a section names).

May import: ``data``, ``core``.
"""
