"""Close the loop on the CPU: the plan's numbers against the real dialsum run, measured.

With no GPU at hand, the planner is checked against what ``train`` and ``predict`` really
execute, on the CPU with real tensors: the guarded trainer's optimizer steps (its
micro-batches, token-sum loss and optimizer, built by
``training.trainer_args.training_arguments``), an evaluation pass (beam-search
``generate()`` and the eval-loss forward, next to the resident optimizer state) and a
``predict`` pass (``inference.predict.generate_summaries``). Each phase's peak live tensor
bytes is measured with ``torch.profiler`` memory events (``checks.measure``: independent of
the simulator) and predicted by the simulator with ``device="cpu"`` (CPU kernels, exact
bytes), as ``dialsum plan --gpu cpu`` does.

A decoder-only LLM (``Setup.method`` full, lora or qlora) runs the same way: rows are
prompt + summary with the prompt's labels masked, the model is prepared as ``train``
prepares it (``models.causal.prepare_for_kbit`` for QLoRA, ``models.lora.apply_lora`` on
every linear layer), and the simulator traces the same method.

Rows have a fixed length (every second one a token shorter, so batches are padded as
real ones are) and generation runs to its full length (``min_new_tokens =
max_new_tokens``): the plan is for the longest rows and the longest summaries.
``bench/bench_plan_vs_run_cpu.py`` runs this on three model shapes; a test runs it on the
tiny model.
"""

from __future__ import annotations

import copy
import gc
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import SequentialSampler
from transformers import TrainerCallback

from dialsum.checks.measure import PhaseRecorder
from dialsum.core.config_schema import SectionConfig
from dialsum.core.runs import new_run
from dialsum.data.prompt import CausalCollator
from dialsum.data.tokenize import make_collator
from dialsum.inference.predict import generate_summaries
from dialsum.models.architectures import is_causal
from dialsum.step.geometry import BatchGeometry
from dialsum.trace.generation_trace import simulate_generate
from dialsum.trace.optimizers import state_tensors
from dialsum.trace.profile import GenerateOptions, GenerateShape, TrainOptions, TrainShape
from dialsum.trace.step_trace import simulate_train
from dialsum.training.guarded_trainer import GuardedSeq2SeqTrainer
from dialsum.training.oom_guard import GuardState
from dialsum.training.run_data import ListDataset
from dialsum.training.settings import Settings
from dialsum.training.trainer_args import training_arguments

PHASES: tuple[str, ...] = ("train", "optimizer", "eval", "predict")
TRAIN_TOLERANCE, GENERATION_TOLERANCE = 0.05, 0.10
"""Targets: training phases within +-5 %, generation phases within +-10 %."""


@dataclass(frozen=True)
class Setup:
    """One checked configuration: fixed lengths, micro-batch x accumulation, generation."""

    source_len: int
    target_len: int
    micro: int
    accumulation: int
    eval_batch: int
    beams: int
    new_tokens: int
    optimizer: str = "adamw"
    method: str = "full"  # full | lora | qlora (causal LMs; seq2seq: full)
    gradient_checkpointing: bool = False


def tensor_bytes(model: torch.nn.Module) -> int:
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}.values()
    return sum(t.untyped_storage().nbytes() for t in tensors)


def fixed_rows(
    n: int, source_len: int, target_len: int, vocab: int, seed: int, causal: bool = False
) -> list[dict]:
    """Rows of ``source_len`` tokens, every second one a token shorter, and ``target_len``
    labels: every batch of two or more rows is padded to ``source_len``, as real batches
    are (a padded batch makes attention build its ``[batch, heads, L, L]`` mask; the
    simulator always assumes one). ``causal``: one sequence of prompt + summary, the
    prompt's labels -100 (``data.prompt.tokenize_causal``'s rows)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        length = source_len - (i % 2)
        ids = torch.randint(4, vocab, (length,), generator=g).tolist()
        labels = torch.randint(4, vocab, (target_len,), generator=g).tolist()
        if causal:
            rows.append(
                {
                    "input_ids": ids + labels,
                    "attention_mask": [1] * (length + target_len),
                    "labels": [-100] * length + labels,
                }
            )
        else:
            rows.append({"input_ids": ids, "attention_mask": [1] * length, "labels": labels})
    return rows


class InOrderTrainer(GuardedSeq2SeqTrainer):
    """The guarded trainer taking rows in order: with ``fixed_rows`` (lengths alternating
    full and one shorter) every micro-batch is padded, as the plan assumes. A
    length-grouped or random order would put equal lengths together (no padding, no
    ``[batch, heads, L, L]`` mask) and measure a lighter step than the plan's."""

    def _get_train_sampler(self, train_dataset=None):
        return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)


class PhaseMarks(TrainerCallback):
    """Marks the trainer's phases for the profiler: the step's forward/backward over its
    micro-batches, then the optimizer step."""

    def __init__(self, recorder: PhaseRecorder) -> None:
        self.recorder, self.open = recorder, None

    def _switch(self, name: str | None) -> None:
        if self.open is not None:
            self.open.__exit__(None, None, None)
        self.open = self.recorder.phase(name) if name else None
        if self.open is not None:
            self.open.__enter__()

    def on_step_begin(self, *_, **__):
        self._switch("train")

    def on_pre_optimizer_step(self, *_, **__):
        self._switch("optimizer")

    def on_optimizer_step(self, *_, **__):
        self._switch(None)


def make_trainer(
    model, tokenizer, cfg: SectionConfig, setup: Setup, out: Path, callbacks=()
) -> GuardedSeq2SeqTrainer:
    """The guarded trainer as ``train`` builds it, on fixed-length rows, two steps."""
    rows = setup.micro * setup.accumulation
    cfg = replace(
        cfg,
        training=replace(
            cfg.training,
            max_steps=2,
            eval_strategy="no",
            save_strategy="no",
            report_to=["none"],
            logging_steps=1000,
            group_by_length=False,
            effective_batch_size=rows,
            micro_batch_size=setup.micro,
            eval_batch_size=setup.eval_batch,
            optimizer=setup.optimizer,
        ),
    )
    settings = Settings(
        device="cpu",
        geometry=BatchGeometry.build(rows, 1, setup.micro),
        eval_batch_size=setup.eval_batch,
        generation_batch_size=setup.eval_batch,
        generation_token_budget=0,
        generation_row_cap=setup.eval_batch,
        precision="fp32",
        optimizer=setup.optimizer,
        gradient_checkpointing=setup.gradient_checkpointing,
        source_len=setup.source_len,
        method=setup.method,
    )
    gen_config = copy.deepcopy(model.generation_config)
    gen_config.update(**gen_kwargs(setup))
    args = training_arguments(cfg.training, settings, new_run(out, cfg.name), gen_config)
    vocab = min(model.config.vocab_size, len(tokenizer))
    causal = is_causal(model)
    return InOrderTrainer(
        model=model,
        args=args,
        train_dataset=ListDataset(
            fixed_rows(rows * 2, setup.source_len, setup.target_len, vocab, 0, causal)
        ),
        eval_dataset=ListDataset(
            fixed_rows(setup.eval_batch, setup.source_len, setup.target_len, vocab, 1, causal)
        ),
        data_collator=(
            CausalCollator(tokenizer.pad_token_id) if causal else make_collator(tokenizer, model)
        ),
        causal=causal,
        processing_class=tokenizer,
        guard=GuardState(micro_batch_size=setup.micro, eval_batch_size=setup.eval_batch),
        optimizer_name=setup.optimizer,
        # As in a real run: with metrics to compute, evaluation generates (without, the
        # Trainer would only run the eval-loss forward).
        compute_metrics=lambda _: {},
        callbacks=list(callbacks),
    )


def gen_kwargs(setup: Setup) -> dict:
    """Beam search forced to its full length (the plan sizes the longest summary)."""
    return {
        "num_beams": setup.beams,
        "max_new_tokens": setup.new_tokens,
        "min_new_tokens": setup.new_tokens,
        "early_stopping": False,
        "length_penalty": 1.0,
    }


def measure(
    model, tokenizer, cfg: SectionConfig, setup: Setup, out: Path
) -> tuple[dict[str, int], int]:
    """Measured phase peaks of the real run, and the optimizer state bytes it kept."""
    # Free what earlier runs in this process left in reference cycles first: freed inside
    # the profiled window, it would be counted against this run.
    gc.collect()
    baseline = tensor_bytes(model)
    with PhaseRecorder(baseline_bytes=baseline) as recorder:
        trainer = make_trainer(model, tokenizer, cfg, setup, out)
        trainer.add_callback(PhaseMarks(recorder))
        trainer.train()
        with recorder.phase("eval"):
            trainer.evaluate()
    peaks = recorder.peaks()
    state_bytes = sum(t.untyped_storage().nbytes() for t in state_tensors(trainer.optimizer))
    del trainer
    gc.collect()
    rows = fixed_rows(
        setup.eval_batch, setup.source_len, 0, min(model.config.vocab_size, len(tokenizer)), 2
    )
    with PhaseRecorder(baseline_bytes=tensor_bytes(model)) as recorder, recorder.phase("predict"):
        generate_summaries(
            model,
            tokenizer,
            rows,
            gen_kwargs(setup),
            token_budget=10**9,
            max_batch_size=setup.eval_batch,
            progress=False,
            causal=is_causal(model),
        )
    peaks.update(recorder.peaks())
    return peaks, state_bytes


def predict(config, setup: Setup, state_bytes: int) -> dict[str, int]:
    """The simulator's phase peaks for ``setup`` on the CPU (``state_bytes``: the optimizer
    state evaluation runs next to, as the planner adds it)."""
    quantization = "nf4" if setup.method == "qlora" else None
    options = TrainOptions(
        optimizer=setup.optimizer,  # type: ignore[arg-type]
        device="cpu",
        micro_batches=2 if setup.accumulation > 1 else 1,
        gradient_checkpointing=setup.gradient_checkpointing,
        lora=setup.method != "full",
        quantization=quantization,
    )
    train = simulate_train(
        config, TrainShape(setup.micro, setup.source_len, setup.target_len), options
    )
    gen = GenerateOptions(
        "fp32", device="cpu", quantization=quantization, lora=setup.method != "full"
    )
    shape = GenerateShape(setup.eval_batch, setup.source_len, setup.new_tokens, setup.beams)
    evaluation = simulate_generate(config, replace(shape, label_len=setup.target_len), gen)
    return {
        "train": max(train.phase_peaks["forward"], train.phase_peaks["backward"]),
        "optimizer": train.phase_peaks["optimizer"],
        "eval": evaluation.peak_bytes + state_bytes,
        "predict": simulate_generate(config, shape, gen).peak_bytes,
    }


def compare(
    predicted: dict[str, int], measured: dict[str, int], phases: tuple[str, ...] = PHASES
) -> dict[str, dict]:
    """Per phase of ``phases``: predicted, measured, their ratio and whether it is inside
    the target."""
    rows = {}
    for phase in phases:
        ratio = predicted[phase] / measured[phase]
        tolerance = TRAIN_TOLERANCE if phase in ("train", "optimizer") else GENERATION_TOLERANCE
        rows[phase] = {
            "predicted_bytes": predicted[phase],
            "measured_bytes": measured[phase],
            "ratio": round(ratio, 4),
            "tolerance": tolerance,
            "inside": abs(ratio - 1) <= tolerance,
        }
    return rows
