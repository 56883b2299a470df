"""dialsum: memory-aware seq2seq summarization for Korean dialogue.

Package map, along the data flow (config -> data -> model -> plan -> run -> outputs):

    core/       config schema + strict loading, errors, run folders, atomic writes, csv_files
    data/       competition CSVs: dataset (rows, predictions), clean, tokenize, special tokens
    models/     shipped architectures (configs/*.json), loading, tiny model, LoRA
    memory/     prediction only: simulate (fake-tensor trace) -> request -> planner, where
                choose_micro_batch DECIDES the micro-batch -> plan (Plan), gpus, overheads
    training/   settings APPLIES every plan decision (RunDecisions) -> geometry -> step (the
                micro-batches the trainer and the simulator run) -> guarded_trainer, recipe
    inference/  predict: token-budget batches, OOM-safe generation, submission CSV
    metrics.py  Korean ROUGE          report/  the per-GPU guide (markdown, YAML, plots)
    checks/     plan vs real runs     cli/     verbs and printers only
"""

__version__ = "0.1.0"
