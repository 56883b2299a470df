"""The training recipe: setup → train → save → report, read top-down.

Each ``_setup_*`` takes only its own config block. Memory decisions (micro-batch, precision,
checkpointing) come from ``settings.resolve_settings`` so the Trainer only ever sees
concrete numbers, and the OOM guard can change the micro-batch at run time.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset
from transformers import EarlyStoppingCallback, GenerationConfig, Seq2SeqTrainingArguments, set_seed

from dialsum.core.config import SectionConfig, TrainingConfig
from dialsum.core.errors import UserError
from dialsum.core.gpu_support import prepare_cuda_run
from dialsum.core.run_lock import RunLock
from dialsum.core.runs import (
    RunDir,
    new_run,
    remove_unfinished_files,
    write_json_atomic,
    write_yaml_atomic,
)
from dialsum.data import dataset as data_mod
from dialsum.metrics import make_compute_metrics
from dialsum.models.architectures import set_dropout
from dialsum.models.loading import apply_lora, load_model, load_tokenizer, resolve_model
from dialsum.training import distributed
from dialsum.training.deepspeed import config_for_run, require_deepspeed
from dialsum.training.guarded_trainer import GuardedSeq2SeqTrainer
from dialsum.training.monitor import MemoryMonitorCallback
from dialsum.training.oom_guard import GuardState
from dialsum.training.resume import LATEST, find_resume_run, resumed_config
from dialsum.training.run_memory import MemorySummary, PhasePeaks
from dialsum.training.settings import Settings, resolve_settings, use_cuda
from dialsum.training.step_timer import StepTimer, step_time_metrics

log = logging.getLogger(__name__)


class ListDataset(Dataset):
    """Tokenized rows (dicts of int lists) for the Trainer; no `datasets` dependency needed."""

    def __init__(self, rows: list[dict[str, list[int]]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.rows[index]


@dataclass
class Prepared:
    """Everything the train and predict paths share after setup."""

    cfg: SectionConfig
    tokenizer: Any
    model: Any
    train_table: data_mod.DialogueTable | None
    dev_table: data_mod.DialogueTable | None


@dataclass
class TrainResult:
    run: RunDir
    metrics: dict[str, float]
    settings: Settings


def tiny_texts_from(cfg: SectionConfig):
    """Texts a tiny tokenizer is trained on: the training dialogues and summaries."""

    def texts() -> list[str]:
        table = data_mod.read_dialogue_csv(Path(cfg.data.train), "train")
        out: list[str] = []
        for rec in table.records:
            out.append(cfg.tokenizer.prefix + rec.dialogue)
            out.extend(rec.references)
        return out

    return texts


def tiny_cache_dir() -> Path:
    root = os.environ.get("DIALSUM_CACHE_DIR")
    return Path(root) / "tiny" if root else Path.home() / ".cache" / "dialsum" / "tiny"


def setup_model(cfg: SectionConfig, checkpoint: str | Path | None = None):
    """(model, tokenizer): a checkpoint folder, a hub id / local folder, or a tiny model."""
    try:
        return _setup_model(cfg, checkpoint)
    except OSError as exc:
        # transformers raises OSError for unreachable hubs, unknown repos and missing files.
        name = checkpoint or cfg.model.name
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"could not load model '{name}' (model.name): {first} "
            "Without network access, download it where there is network (e.g. "
            f"`hf download {name} --local-dir DIR`), copy DIR here and set model.name to DIR; "
            "or use tiny:t5 to try the pipeline."
        ) from None


def _setup_model(cfg: SectionConfig, checkpoint: str | Path | None = None):
    remote = cfg.model.trust_remote_code
    if checkpoint is not None:
        tokenizer = load_tokenizer(str(checkpoint), trust_remote_code=remote)
        model = load_model(str(checkpoint), tokenizer, trust_remote_code=remote)
    elif cfg.tokenizer.name and not cfg.model.name.startswith("tiny:"):
        tokenizer = load_tokenizer(cfg.tokenizer.name, trust_remote_code=remote)
        model = load_model(cfg.model.name, tokenizer, trust_remote_code=remote)
    else:
        model, tokenizer = resolve_model(
            cfg.model.name,
            tiny_texts=tiny_texts_from(cfg),
            cache_dir=tiny_cache_dir(),
            trust_remote_code=remote,
        )
    if cfg.model.dropout is not None:
        set_dropout(model, cfg.model.dropout)
    return model, tokenizer


def read_tables(cfg: SectionConfig, *, train: bool = True, dev: bool = True, echo=print):
    out = {}
    for split, wanted, path in (("train", train, cfg.data.train), ("dev", dev, cfg.data.dev)):
        if not wanted:
            continue
        table = data_mod.read_dialogue_csv(Path(path), split)
        if table.encoding not in ("utf-8", "utf-8-sig"):
            echo(f"note: decoded {path} as {table.encoding}")
        limit = cfg.data.max_train_samples if split == "train" else cfg.data.max_eval_samples
        if limit is not None:
            table.records = table.records[:limit]
        out[split] = table
    return out.get("train"), out.get("dev")


def tokenize_table(cfg: SectionConfig, table, tokenizer, *, with_labels: bool = True):
    return ListDataset(
        data_mod.tokenize_records(
            table.records,
            tokenizer,
            prefix=cfg.tokenizer.prefix,
            max_source_len=cfg.tokenizer.max_source_length,
            max_target_len=cfg.tokenizer.max_target_length,
            with_labels=with_labels,
        )
    )


def length_report(cfg: SectionConfig, table, tokenizer) -> data_mod.LengthReport:
    return data_mod.length_report(
        table.records,
        tokenizer,
        prefix=cfg.tokenizer.prefix,
        max_source_len=cfg.tokenizer.max_source_length,
        max_target_len=cfg.tokenizer.max_target_length,
    )


def generation_kwargs(cfg: SectionConfig) -> dict[str, Any]:
    inf = cfg.inference
    kwargs: dict[str, Any] = {
        "num_beams": inf.num_beams,
        "max_new_tokens": cfg.max_new_tokens,
        "min_new_tokens": inf.min_new_tokens,
        "length_penalty": inf.length_penalty,
        "early_stopping": inf.early_stopping if inf.num_beams > 1 else False,
    }
    if inf.no_repeat_ngram_size:
        kwargs["no_repeat_ngram_size"] = inf.no_repeat_ngram_size
    return kwargs


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
        # The DeepSpeed engine owns accumulation (see deepspeed_config.py).
        per_device, accumulation = settings.micro_batch_size, settings.gradient_accumulation_steps
    evaluate = t.eval_strategy != "no"
    best_metric = (
        "eval_loss" if t.metric_for_best_model == "loss" else f"eval_{t.metric_for_best_model}"
    )
    save_strategy = t.save_strategy
    load_best = evaluate and save_strategy != "no"
    if load_best and save_strategy not in ("best", t.eval_strategy):
        # load_best_model_at_end needs checkpoints at evaluation points.
        save_strategy = t.eval_strategy
    report_to = [r for r in t.report_to if r != "none"] or "none"
    # The guarded trainer builds the optimizer itself (``step.build_optimizer``, what the
    # planner simulated); the name tells the Trainer (and DeepSpeed) which one it is.
    optim = {
        "adamw": "adamw_torch_fused",
        "adamw_foreach": "adamw_torch",
        "adafactor": "adafactor",
        "adamw8bit": "adamw_bnb_8bit",
        "sgd": "sgd",
    }[settings.optimizer]
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
        optim=optim,
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


def require_loggers(t: TrainingConfig) -> None:
    """Fail before anything is written when a configured logger is not installed."""
    import importlib.util

    if "wandb" in t.report_to and importlib.util.find_spec("wandb") is None:
        raise UserError(
            "training.report_to includes wandb, but wandb is not installed: run "
            "`uv sync --extra wandb` (W&B runs offline by default: training.wandb.mode), "
            "or remove wandb from training.report_to"
        )


def _configure_loggers(t: TrainingConfig, run: RunDir) -> None:
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(run.logs)
    if "wandb" in t.report_to:
        if t.wandb.project:
            os.environ.setdefault("WANDB_PROJECT", t.wandb.project)
        os.environ.setdefault("WANDB_MODE", t.wandb.mode)
        os.environ.setdefault("WANDB_DIR", str(run.logs))


def _silent(*_: object) -> None:
    return None


def _write_deepspeed_config(
    cfg: SectionConfig, settings: Settings, model_config, run: RunDir
) -> Path | None:
    """Rank 0 writes ``ds_config.json``; every rank reads it (hence the barrier)."""
    if cfg.hardware.zero_stage == 0:
        return None
    if distributed.is_main_process():
        write_json_atomic(run.deepspeed_config, config_for_run(cfg, settings, model_config))
    distributed.barrier()
    return run.deepspeed_config


def apply_source_len(cfg: SectionConfig, settings: Settings) -> SectionConfig:
    """The section as the run tokenizes it: the planner's source length when it cut it."""
    if settings.source_len >= cfg.tokenizer.max_source_length:
        return cfg
    tokenizer = dataclasses.replace(cfg.tokenizer, max_source_length=settings.source_len)
    return dataclasses.replace(cfg, tokenizer=tokenizer)


def run_training(
    cfg: SectionConfig,
    *,
    resume: str | bool | None = None,
    resume_overrides: list[str] | tuple[str, ...] = (),
    override_on_resume: bool = False,
    echo=print,
    **hooks,
) -> TrainResult:
    """Train ``cfg``: a new run, or ``resume`` (``"latest"``/``True`` or a run folder)
    continued exactly as saved (see ``resume.py``)."""
    main = int(os.environ.get("RANK", "0")) == 0
    echo = echo if main else _silent
    locks: list[RunLock] = []  # one process per run folder, for the whole run
    try:
        resumed = None
        if resume:
            resumed = find_resume_run(cfg, LATEST if resume is True else str(resume))
            if main:
                locks.append(RunLock(resumed[0].path, echo=echo))
                locks[-1].acquire()
                remove_unfinished_files(resumed[0], echo=echo)
            cfg = resumed_config(
                resumed[0], list(resume_overrides), allow_changes=override_on_resume, echo=echo
            )
        return _train(cfg, resumed, locks, echo, **hooks)
    finally:
        for lock in locks:
            lock.release()


def _train(cfg: SectionConfig, resumed, locks: list[RunLock], echo, **hooks) -> TrainResult:
    # Before anything touches CUDA or loads: allocator setting, then supported-GPU check.
    allocator = prepare_cuda_run(echo) if use_cuda(cfg) else None
    require_deepspeed(cfg.hardware.zero_stage, cuda=use_cuda(cfg))
    require_loggers(cfg.training)
    # Under torchrun/accelerate: start the process group now, so the ranks can agree on
    # the run folder before anything is written. Only rank 0 talks and writes run files.
    distributed.ensure_process_group(cpu=not use_cuda(cfg))
    main = distributed.is_main_process()
    set_seed(cfg.training.seed)
    # Data, model and plan are settled before anything is written: a bad CSV or a plan
    # that does not fit leaves no run folder.
    train_table, dev_table = read_tables(cfg, echo=echo)
    # A resumed run that already reached its last step is not trained again (the Trainer
    # would run one more step): its last checkpoint is the trained model.
    finished = (
        resumed is not None
        and not cfg.model.lora.enabled
        and run_finished(resumed[1], cfg.training)
    )
    with distributed.main_process_first():  # rank 0 fills the download / tiny-model cache
        model, tokenizer = setup_model(
            cfg, checkpoint=final_model(resumed[1]) if finished else None
        )
    report = length_report(cfg, train_table, tokenizer)
    echo(report.format())
    guard = None
    if resumed is not None and resumed[0].guard.is_file():
        guard = GuardState.load(resumed[0].guard)
    settings = resolve_settings(cfg, model.config, report=report, guard=guard, echo=echo)
    cfg = apply_source_len(cfg, settings)
    run, checkpoint = resumed if resumed is not None else (_new_run(cfg, locks, echo), None)
    echo(f"run folder: {run.path}")
    if guard is None:
        guard = GuardState(
            micro_batch_size=settings.micro_batch_size, eval_batch_size=settings.eval_batch_size
        )
    if cfg.model.lora.enabled:
        lora = cfg.model.lora
        model = apply_lora(model, rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout)
    if main:
        write_json_atomic(run.plan, settings.to_json())
        guard.save(run.guard)
    deepspeed_config = _write_deepspeed_config(cfg, settings, model.config, run)
    _configure_loggers(cfg.training, run)
    trainer = build_trainer(
        cfg, settings, run, model, tokenizer, train_table, dev_table, generation_kwargs(cfg),
        guard, deepspeed_config=deepspeed_config, **hooks,
    )  # fmt: skip
    with memory_cap(settings, model):
        if finished:
            echo(f"{run.path}: training already finished at {checkpoint.name}; nothing to train")
            metrics: dict[str, float] = trainer.finished_run_metrics(checkpoint)
        else:
            resume_from = str(checkpoint) if checkpoint else None
            metrics = dict(trainer.train(resume_from_checkpoint=resume_from).metrics)
            metrics |= trainer.run_loss_metrics()
        if dev_table is not None and cfg.training.eval_strategy != "no":
            metrics.update(trainer.evaluate())
    save_best(trainer, cfg, run, tokenizer)
    if trainer.state.best_model_checkpoint:
        metrics["best_checkpoint"] = trainer.state.best_model_checkpoint
    metrics["micro_batch_size_final"] = guard.micro_batch_size
    metrics["oom_recoveries"] = len(guard.events)
    metrics.update(step_time_metrics(trainer, settings.plan))  # measured vs predicted
    allocator_json = allocator.to_json() if allocator else None
    memory = MemorySummary.build(trainer.memory_phases, settings.plan, allocator_json)
    for line in memory.lines():
        echo(line)
    if trainer.is_world_process_zero():
        guard.save(run.guard)
        write_json_atomic(run.metrics, metrics | {"memory": memory.to_json()})
    return TrainResult(run=run, metrics=metrics, settings=settings)


def final_model(checkpoint: Path) -> Path:
    """The model a finished run ends with: its best checkpoint when one was tracked (as
    ``load_best_model_at_end`` would load), else its last checkpoint."""
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
        best = state.get("best_model_checkpoint")
    except (OSError, ValueError):
        best = None
    if best and (Path(best) / "config.json").is_file():
        return Path(best)
    return checkpoint


def run_finished(checkpoint: Path, t: TrainingConfig) -> bool:
    """Whether the checkpoint already reached the run's end: ``training.max_steps`` when set,
    else ``num_train_epochs`` (as the config says now: --override-on-resume may extend it)."""
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
        if t.max_steps > 0:
            return int(state["global_step"]) >= t.max_steps
        return float(state["epoch"]) >= t.num_train_epochs
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _new_run(cfg: SectionConfig, locks: list[RunLock], echo) -> RunDir:
    """Rank 0 creates the folder, locks it and writes ``config.yaml`` at once (an
    interruption right after leaves a folder that says what it was); the other ranks get
    its path from rank 0 (a timestamp read from each rank's clock could differ)."""

    def create() -> RunDir:
        run = new_run(cfg.training.output_dir, cfg.name)
        locks.append(RunLock(run.path, echo=echo))
        locks[-1].acquire()
        write_yaml_atomic(run.config, cfg.to_dict() | {"section": cfg.name})
        return run

    return distributed.on_main_then_share(create)


def memory_cap(settings: Settings, model):
    """A CPU run emulating a smaller device: live tensor bytes beyond the cap raise
    ``torch.OutOfMemoryError`` (the guard recovers from it as from a CUDA OOM)."""
    if settings.memory_cap_bytes is None:
        return contextlib.nullcontext()
    from dialsum.memory.live_cap import LiveBytesCap

    cap = LiveBytesCap(settings.memory_cap_bytes)
    cap.track_all(model.parameters())
    cap.track_all(model.buffers())
    return cap


def save_best(trainer, cfg: SectionConfig, run: RunDir, tokenizer) -> None:
    """Save the (best) model as a full model: LoRA adapters are merged first, so `predict`
    loads it like any other checkpoint."""
    if not cfg.model.lora.enabled:
        trainer.save_model(str(run.best))
        return
    if trainer.is_world_process_zero():
        merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
        merged.save_pretrained(str(run.best), safe_serialization=True)
        tokenizer.save_pretrained(str(run.best))


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
    # Start from the model's own generation config (decoder start, eos, pad ids) and apply
    # the section's inference options on top.
    generation_config = copy.deepcopy(model.generation_config)
    generation_config.update(**gen)
    args = training_arguments(cfg.training, settings, run, generation_config, deepspeed_config)
    train_ds = tokenize_table(cfg, train_table, tokenizer)
    eval_ds = tokenize_table(cfg, dev_table, tokenizer) if dev_table is not None else None
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
        data_collator=data_mod.make_collator(tokenizer, model),
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
    )
