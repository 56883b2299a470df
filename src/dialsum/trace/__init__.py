"""The fake-tensor machinery: real model code run on fake CPU tensors, counted as a CUDA
GPU would allocate it. Changes when torch or transformers change.

``tracer`` (live storage), ``allocator`` (block rounding), ``cuda_emulation``, ``fake_model``,
``model_run`` (what a training and a generation trace share), ``step_trace`` and
``generation_trace`` (the two simulations; ``causal_generation`` for decoder-only LLMs,
``generation_parts`` what both generation traces share), ``quantized`` (QLoRA's 4-bit
base as bitsandbytes lays it out), ``flops`` (cost of the same ops), ``timeline``
and ``reuse`` (replay at other batch sizes), ``depth`` (a deep stack's timeline from
shallow traces), ``cache`` (on disk), ``answer_cache`` (whole
answers by the question asked, keyed without torch), ``profile`` (the result
types), ``optimizers``, ``live_cap`` (the same tracker on real tensors: a CPU memory cap).

May import: ``step``, ``models``, ``data``, ``core``.
"""
