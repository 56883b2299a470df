"""The Trainer a run trains with: its arguments, datasets and callbacks.

Every training key reaches the HF Trainer through ``training_arguments`` (and only there),
with the concrete numbers of the run's ``Settings``; ``build_trainer`` adds the tokenized
data, the metrics, and the memory monitor and step timer callbacks to the guarded trainer.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from transformers import EarlyStoppingCallback, GenerationConfig, Seq2SeqTrainingArguments

from dialsum.core.config_schema import SectionConfig, TrainingConfig
from dialsum.core.runs import RunDir
from dialsum.data import tokenize as data_tok
from dialsum.data.prompt import CausalCollator
from dialsum.metrics import make_compute_metrics
from dialsum.training.guarded_trainer import GuardedSeq2SeqTrainer
from dialsum.training.monitor import MemoryMonitorCallback
from dialsum.training.oom_guard import GuardState
from dialsum.training.run_data import prompt_format, tokenize_table
from dialsum.training.run_memory import PhasePeaks
from dialsum.training.settings import Settings
from dialsum.training.step_clock import StepTimer

# The guarded trainer builds the optimizer itself (``step.build_optimizer``, what the
# planner simulated); the name tells the Trainer (and DeepSpeed) which one it is.
_TRAINER_OPTIM = {
    "adamw": "adamw_torch_fused",
    "adamw_foreach": "adamw_torch",
    "adafactor": "adafactor",
    "adamw8bit": "adamw_bnb_8bit",
    "paged_adamw8bit": "paged_adamw_8bit",
    "sgd": "sgd",
}


def _checkpointing(t: TrainingConfig) -> tuple[str, bool, str]:
    """(save strategy, load the best model at the end, its metric) for ``t``."""
    evaluate = t.eval_strategy != "no"
    best_metric = (
        "eval_loss" if t.metric_for_best_model == "loss" else f"eval_{t.metric_for_best_model}"
    )
    save_strategy = t.save_strategy
    load_best = evaluate and save_strategy != "no"
    if load_best and save_strategy not in ("best", t.eval_strategy):
        # load_best_model_at_end needs checkpoints at evaluation points.
        save_strategy = t.eval_strategy
    return save_strategy, load_best, best_metric


def training_arguments(
    t: TrainingConfig,
    settings: Settings,
    run: RunDir,
    generation_config: GenerationConfig,
    deepspeed_config: Path | None = None,
) -> Seq2SeqTrainingArguments:
    """Every training key reaches the Trainer here (and only here)."""
    if deepspeed_config is None:
        # The guard micro-batches inside training_step; the Trainer sees one whole step.
        per_device, accumulation = settings.per_step_rows, 1
    else:
        # The DeepSpeed engine owns accumulation (see ``deepspeed.py``).
        per_device, accumulation = settings.micro_batch_size, settings.gradient_accumulation_steps
    save_strategy, load_best, best_metric = _checkpointing(t)
    report_to = [r for r in t.report_to if r != "none"] or "none"
    return Seq2SeqTrainingArguments(
        output_dir=str(run.checkpoints),
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=accumulation,
        per_device_eval_batch_size=settings.eval_batch_size,
        num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        warmup_steps=t.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio
        lr_scheduler_type=t.lr_scheduler_type,
        optim=_TRAINER_OPTIM[settings.optimizer],
        max_grad_norm=t.max_grad_norm,
        bf16=settings.precision == "bf16",
        fp16=settings.precision == "fp16",
        activation_checkpointing=settings.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False}
        if settings.gradient_checkpointing
        else None,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        eval_strategy=t.eval_strategy,
        eval_steps=t.eval_steps,
        save_strategy=save_strategy,
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=load_best,
        metric_for_best_model=best_metric if load_best else None,
        greater_is_better=t.metric_for_best_model != "loss" if load_best else None,
        logging_strategy="steps",
        logging_steps=t.logging_steps,
        # A NaN loss must stay NaN: the guarded trainer stops on it (``finite_guard``).
        logging_nan_inf_filter=False,
        report_to=report_to,
        seed=t.seed,
        predict_with_generate=True,
        generation_config=generation_config,
        dataloader_num_workers=t.dataloader_num_workers,
        remove_unused_columns=False,
        use_cpu=settings.device == "cpu",
        disable_tqdm=False,
        save_only_model=False,
        deepspeed=str(deepspeed_config) if deepspeed_config is not None else None,
        # The guarded step computes its own token-sum loss; only DeepSpeed's stock step
        # uses the Trainer's label smoother.
        label_smoothing_factor=t.label_smoothing if deepspeed_config is not None else 0.0,
        # A buffer broadcast is a collective at the start of every forward, where a rank
        # redoing a step after an OOM would not be; these models' buffers never change.
        ddp_broadcast_buffers=False,
    )


def build_trainer(
    cfg: SectionConfig,
    settings: Settings,
    run: RunDir,
    model,
    tokenizer,
    train_table,
    dev_table,
    gen: dict[str, Any],
    guard: GuardState,
    *,
    fault_injector=None,
    callbacks=(),
    deepspeed_config: Path | None = None,
) -> GuardedSeq2SeqTrainer:
    """The guarded trainer of a run: ``callbacks`` (tests, hooks) first, then the memory
    monitor, the step timer and, with ``load_best_model_at_end``, early stopping."""
    # Start from the model's own generation config (decoder start, eos, pad ids) and apply
    # the section's inference options on top.
    generation_config = copy.deepcopy(model.generation_config)
    generation_config.update(**gen)
    args = training_arguments(cfg.training, settings, run, generation_config, deepspeed_config)
    source_len = settings.source_len
    prompt = prompt_format(cfg, model, tokenizer)  # None: a seq2seq model
    train_ds = tokenize_table(cfg, train_table, tokenizer, source_len=source_len, prompt=prompt)
    eval_ds = (
        tokenize_table(cfg, dev_table, tokenizer, source_len=source_len, prompt=prompt)
        if dev_table is not None
        else None
    )
    collator = (
        data_tok.make_collator(tokenizer, model)
        if prompt is None
        else CausalCollator(tokenizer.pad_token_id)
    )
    refs = [r.references for r in dev_table.records] if dev_table is not None else None
    t = cfg.training
    cbs = list(callbacks)
    predicted = settings.plan.get("predicted_peak_bytes") if settings.plan else None
    monitor = MemoryMonitorCallback(predicted, phases=PhasePeaks.for_device(settings.device))
    cbs.append(monitor)
    cbs.append(StepTimer())
    if t.early_stopping_patience and args.load_best_model_at_end:
        cbs.append(
            EarlyStoppingCallback(
                early_stopping_patience=t.early_stopping_patience,
                early_stopping_threshold=t.early_stopping_threshold,
            )
        )
    return GuardedSeq2SeqTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds if t.eval_strategy != "no" else None,
        data_collator=collator,
        processing_class=tokenizer,
        compute_metrics=make_compute_metrics(tokenizer, refs),
        callbacks=cbs,
        guard=guard,
        guard_path=run.guard,
        ladder_hint=settings.next_ladder_step,
        label_smoothing=t.label_smoothing,
        fault_injector=fault_injector,
        optimizer_name=settings.optimizer,
        memory_phases=monitor.phases,
        causal=prompt is not None,
        generation=gen,
    )
