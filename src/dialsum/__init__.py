"""dialsum: memory-aware seq2seq summarization for Korean dialogue.

Package map, along the data flow (config -> data -> model -> plan -> run -> outputs). Layers,
bottom first; every import points down (checked in CI by import-linter, ``pyproject.toml``):

    core/       config schema + strict loading, errors, run folders, atomic writes, csv_files,
                special tokens, launcher ranks, torch-build check
    data/       competition CSVs: dataset (rows, predictions), clean, tokenize
    models/     shipped architectures (configs/*.json), loading, tiny model, LoRA, setup
    metrics.py  Korean ROUGE (beside models: neither imports the other)
    step/       what planner and trainer share: train_step (the micro-batches the trainer
                runs and the simulator traces), geometry, decisions, token_budget
    trace/      fake-tensor machinery: tracer, CUDA emulation, allocator, step_trace and
                generation_trace, FLOPs, timeline replay, cache
    speed/      gpus (catalog), device_specs (GPU sheets, this CPU), step and epoch time
    memory/     planning: request -> precision -> ladder -> fit (choose_micro_batch DECIDES
                the micro-batch) -> generation_batches -> alternatives -> plan (Plan)
    training/   settings APPLIES every plan decision -> guarded_trainer (the OOM guard alone
                changes the micro-batch at run time), recipe, DDP, DeepSpeed, resume
    inference/  predict: token-budget batches, OOM-safe generation, submission CSV
    checks/     plan vs real runs     report/  the per-GPU guide (markdown, YAML, plots)
    cli/        verbs and printers only
"""

__version__ = "0.1.0"
