"""Planning: request -> precision -> ladder -> micro-batch (``fit.choose_micro_batch``
decides it) -> generation batches -> alternatives -> ``Plan``; the overheads a real GPU
adds, ZeRO's per-rank model states, and the glue from a config section (``section``).

Prediction only: nothing here runs a real step. The run applies a plan in
``training.settings``; the checks against real runs live in ``checks``.

May import: ``speed``, ``trace``, ``step``, ``models``, ``data``, ``core``; never
``training``, ``inference``, ``checks``, ``report`` or ``cli``.
"""
