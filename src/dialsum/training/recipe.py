"""The training recipe, read top-down: check, prepare, start, fit, save, report.

``_train`` is the whole run as named steps. Data, model and plan are settled before the run
folder exists (``_prepare``): a bad CSV or a plan that does not fit leaves nothing behind.
Memory decisions (micro-batch, precision, checkpointing) come from
``settings.resolve_settings`` so the Trainer only ever sees concrete numbers, and the OOM
guard can change the micro-batch at run time. What ``predict`` shares (model, tables,
datasets) is ``run_setup``; the Trainer and its arguments are ``trainer_setup``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import set_seed

from dialsum.core.allocator_env import AllocatorSetting
from dialsum.core.config_schema import SectionConfig, TrainingConfig
from dialsum.core.errors import OutputError, UserError
from dialsum.core.outputs import require_folder_writable, storage_failure
from dialsum.core.run_inputs import INPUTS_FILE, training_inputs
from dialsum.core.run_lock import RunLock
from dialsum.core.runs import (
    RunDir,
    new_run,
    remove_unfinished_files,
    write_json_atomic,
    write_yaml_atomic,
)
from dialsum.core.torch_build import prepare_cuda_run
from dialsum.data.dataset import DialogueTable
from dialsum.models.architectures import is_causal
from dialsum.models.causal import prepare_for_kbit
from dialsum.models.lora import apply_lora
from dialsum.models.setup import setup_model
from dialsum.training import distributed
from dialsum.training.deepspeed import config_for_run, require_deepspeed
from dialsum.training.guarded_trainer import GuardedSeq2SeqTrainer
from dialsum.training.oom_guard import GuardState
from dialsum.training.resume import (
    LATEST,
    check_resumable,
    find_resume_run,
    record_changes,
    resumed_config,
)
from dialsum.training.run_data import (
    generation_kwargs,
    length_report,
    memory_cap,
    prompt_format,
    read_tables,
)
from dialsum.training.run_memory import MemorySummary
from dialsum.training.settings import Settings, resolve_settings, use_cuda
from dialsum.training.step_clock import step_time_metrics
from dialsum.training.stop_signal import StopOnSignal
from dialsum.training.trainer_args import build_trainer


@dataclass
class TrainResult:
    run: RunDir
    metrics: dict[str, float]
    settings: Settings


@dataclass
class _Ready:
    """What a run has settled before its folder exists: data, model and plan."""

    cfg: SectionConfig  # as loaded; the source length the run uses is ``settings.source_len``
    model: Any  # LoRA-wrapped once the run starts (``_start``)
    tokenizer: Any
    train_table: DialogueTable
    dev_table: DialogueTable | None
    settings: Settings
    guard: GuardState | None  # the resumed run's guard.json, if it has one
    finished: bool  # a resumed run already at its last step: nothing left to train


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


def run_training(
    cfg: SectionConfig,
    *,
    resume: str | bool | None = None,
    resume_overrides: list[str] | tuple[str, ...] = (),
    override_on_resume: bool = False,
    section: str | None = None,
    echo=print,
    **hooks,
) -> TrainResult:
    """Train ``cfg``: a new run, or ``resume`` (``"latest"``/``True`` or a run folder)
    continued exactly as saved (see ``resume.py``); ``section`` is the ``-s`` the user
    gave, if any (a run folder of another section is refused). A SIGTERM saves a
    checkpoint at the next step boundary and raises ``RunStopped`` (``stop_signal``)."""
    main = int(os.environ.get("RANK", "0")) == 0
    echo = echo if main else _silent
    locks: list[RunLock] = []  # one process per run folder, for the whole run
    stop = StopOnSignal()
    try:
        with stop.installed():
            resumed, changes = None, {}
            if resume:
                spec = LATEST if resume is True else str(resume)
                resumed = find_resume_run(cfg, spec)
                cfg, changes = resumed_config(
                    resumed[0], list(resume_overrides), allow_changes=override_on_resume, echo=echo
                )
                changes |= check_resumable(
                    resumed[0],
                    cfg,
                    section=section if spec != LATEST else None,
                    allow_changes=override_on_resume,
                    echo=echo,
                )
                if main:
                    locks.append(RunLock(resumed[0].path, echo=echo))
                    locks[-1].acquire()
                    remove_unfinished_files(resumed[0], echo=echo)
            return _train(cfg, resumed, locks, echo, stop=stop, changes=changes, **hooks)
    finally:
        for lock in locks:
            lock.release()


def _train(
    cfg: SectionConfig, resumed, locks: list[RunLock], echo, *, stop, changes, **hooks
) -> TrainResult:
    if resumed is None and distributed.is_main_process():
        require_folder_writable(Path(cfg.training.output_dir), "training.output_dir")
    allocator = _check_before_loading(cfg, echo)
    set_seed(cfg.training.seed)
    ready = _prepare(cfg, resumed, echo)
    if resumed is not None and distributed.is_main_process():
        record_changes(resumed[0], ready.cfg, changes, echo=echo)  # data, model, plan settled
    run, checkpoint = resumed if resumed is not None else (_new_run(ready.cfg, locks, echo), None)
    echo(f"run folder: {run.path}")
    trainer = _start(ready, run, hooks | {"callbacks": [*hooks.get("callbacks", ()), stop]})
    with memory_cap(ready.settings, ready.model):
        metrics = _fit(trainer, ready, run, checkpoint, echo, stop)
    try:
        save_best(trainer, ready.cfg, run, ready.tokenizer)
    except Exception as exc:
        _raise_if_storage_failed(exc, trainer, run, ready.cfg.name)
        raise
    _report(trainer, ready.settings, allocator, metrics, run, echo)
    return TrainResult(run=run, metrics=metrics, settings=ready.settings)


def _check_before_loading(cfg: SectionConfig, echo) -> AllocatorSetting | None:
    """What must hold before anything loads; returns the allocator setting made."""
    # Before anything touches CUDA or loads: allocator setting, then supported-GPU check.
    allocator = prepare_cuda_run(echo) if use_cuda(cfg) else None
    require_deepspeed(cfg.hardware.zero_stage, cuda=use_cuda(cfg))
    require_loggers(cfg.training)
    # Under torchrun/accelerate: start the process group now, so the ranks can agree on
    # the run folder before anything is written. Only rank 0 talks and writes run files.
    distributed.ensure_process_group(cpu=not use_cuda(cfg))
    return allocator


def _prepare(cfg: SectionConfig, resumed, echo) -> _Ready:
    """Data, model and plan, settled before anything is written: a bad CSV or a plan
    that does not fit leaves no run folder."""
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
            cfg,
            checkpoint=final_model(resumed[1]) if finished else None,
            device="cuda" if use_cuda(cfg) else "cpu",
        )
    report = length_report(cfg, train_table, tokenizer, prompt_format(cfg, model, tokenizer))
    echo(report.format())
    guard = None
    if resumed is not None and resumed[0].guard.is_file():
        guard = GuardState.load(resumed[0].guard)
    eval_report = None
    if dev_table is not None and cfg.training.eval_strategy != "no":
        # Evaluation is planned at the eval file's lengths, not the training file's.
        eval_report = length_report(cfg, dev_table, tokenizer, prompt_format(cfg, model, tokenizer))
    settings = resolve_settings(
        cfg, model.config, report=report, guard=guard, echo=echo, eval_report=eval_report
    )
    return _Ready(cfg, model, tokenizer, train_table, dev_table, settings, guard, finished)


def _start(ready: _Ready, run: RunDir, hooks: dict[str, Any]) -> GuardedSeq2SeqTrainer:
    """The run folder's plan and guard state written, the trainer built."""
    cfg, settings, guard = ready.cfg, ready.settings, ready.guard
    if guard is None:
        guard = GuardState(
            micro_batch_size=settings.micro_batch_size, eval_batch_size=settings.eval_batch_size
        )
    if cfg.model.adapters:
        ready.model = _with_adapters(ready.model, ready.tokenizer, cfg, settings)
    if distributed.is_main_process():
        write_json_atomic(run.plan, settings.to_json())
        guard.save(run.guard)
    deepspeed_config = _write_deepspeed_config(cfg, settings, ready.model.config, run)
    _configure_loggers(cfg.training, run)
    return build_trainer(
        cfg, settings, run, ready.model, ready.tokenizer, ready.train_table, ready.dev_table,
        generation_kwargs(cfg), guard, deepspeed_config=deepspeed_config, **hooks,
    )  # fmt: skip


def _with_adapters(model, tokenizer, cfg: SectionConfig, settings: Settings):
    """LoRA adapters on the model (the base frozen); QLoRA first prepares the 4-bit base
    (``models.causal.prepare_for_kbit``: fp32 non-4-bit parameters, non-reentrant
    checkpointing when the run checkpoints)."""
    lora = cfg.model.lora
    causal = is_causal(model)
    if cfg.model.training_method == "qlora":
        model = prepare_for_kbit(model, settings.gradient_checkpointing)
    # Adapter weights start from the run's seed alone: loading the model may or may not
    # have drawn random numbers (a tiny model built on a cold cache does, a cached one not).
    set_seed(cfg.training.seed)
    # A causal run saves its adapters alone: the speaker/PII marker rows of the embedding
    # train with them and are saved with them (a reloaded base would hold other values).
    markers = [tokenizer.convert_tokens_to_ids(t) for t in cfg.tokenizer.special_tokens]
    return apply_lora(
        model,
        rank=lora.rank,
        alpha=lora.alpha,
        dropout=lora.dropout,
        target_modules=lora.target_modules,
        causal=causal,
        trainable_token_indices=sorted(set(markers)) if causal else (),
    )


def _fit(
    trainer, ready: _Ready, run: RunDir, checkpoint: Path | None, echo, stop: StopOnSignal
) -> dict[str, float]:
    """Train (a finished run: its recorded loss only), then the final evaluation."""
    if ready.finished:
        echo(f"{run.path}: training already finished at {checkpoint.name}; nothing to train")
        metrics: dict[str, float] = trainer.finished_run_metrics(checkpoint)
    else:
        stop.raise_if_requested(run.path, ready.cfg.name, None)  # a SIGTERM while loading
        resume_from = str(checkpoint) if checkpoint else None
        try:
            metrics = dict(trainer.train(resume_from_checkpoint=resume_from).metrics)
        except Exception as exc:
            _raise_if_storage_failed(exc, trainer, run, ready.cfg.name)
            raise
        stop.raise_if_requested(run.path, ready.cfg.name, run.last_checkpoint())
        metrics |= trainer.run_loss_metrics()
    if ready.dev_table is not None and ready.cfg.training.eval_strategy != "no":
        metrics.update(trainer.evaluate())
    return metrics


def _raise_if_storage_failed(exc: Exception, trainer, run: RunDir, section: str) -> None:
    """A checkpoint (or log) write the storage refused - disk full, quota, read-only - is
    the user's to fix: one message, not a traceback. The unfinished checkpoint folder is
    dropped by the next ``--resume`` (``remove_unfinished_files``)."""
    problem = storage_failure(exc)
    if problem is None:
        return
    last = run.last_checkpoint()
    kept = f"the last complete checkpoint is {last}" if last else "no checkpoint is complete"
    raise OutputError(
        f"training stopped at step {trainer.state.global_step}: could not write to "
        f"{run.path} ({problem}); {kept}. Free space (or fix the folder), then continue with "
        f"`dialsum train -s {section} --resume {run.path}`"
    ) from None


def _report(trainer, settings: Settings, allocator, metrics: dict, run: RunDir, echo) -> None:
    """Complete ``metrics`` (best checkpoint, OOM recoveries, step time vs plan), print the
    memory per phase, and write guard.json and metrics.json (rank 0)."""
    guard = trainer.guard
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
        write_json_atomic(run.path / INPUTS_FILE, training_inputs(cfg))  # --resume checks it
        return run

    return distributed.on_main_then_share(create)


def save_best(trainer, cfg: SectionConfig, run: RunDir, tokenizer) -> None:
    """Save the (best) model: a whole model (seq2seq LoRA adapters merged first), or for a
    causal LoRA/QLoRA run its adapters and the tokenizer, which `predict` puts back on the
    section's base model (a 4-bit base cannot be merged into and saved exactly)."""
    trainer.require_finite_weights("before saving best/")
    if not cfg.model.lora.enabled or is_causal(trainer.model):
        trainer.save_model(str(run.best))
        return
    if trainer.is_world_process_zero():
        merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
        merged.save_pretrained(str(run.best), safe_serialization=True)
        tokenizer.save_pretrained(str(run.best))
