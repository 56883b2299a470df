"""A Seq2SeqTrainer that survives CUDA OOM inside the optimizer step.

How it sits inside the HF Trainer: the Trainer runs with ``gradient_accumulation_steps=1``
and a per-device batch of all rows one rank processes per optimizer step
(``effective_batch_size / world_size``). ``training_step`` cuts that batch into
micro-batches of ``guard.micro_batch_size`` rows, runs forward/backward per micro-batch
and lets gradients add up. If a micro-batch raises an OOM, the gradients of the partial
step are zeroed, memory is freed, the micro-batch shrinks to the next divisor, and the
*same* step is redone. No example is skipped or counted twice, and the loss of every
micro-batch is a token *sum* divided by the token count of the whole step (exact loss
normalisation): without dropout, the step's gradient is the same whatever the
micro-batch, up to floating-point summation order.

With dropout it is not: every micro-batch draws its masks from the global random stream,
and other chunk shapes draw other masks. A redo therefore restores the random state (CPU
and CUDA generators) the step started with, so the redone step depends only on the
weights, the rows, that state and the new micro-batch: it is exactly the step a run
switched to the smaller micro-batch at the start of this step takes (what
tests/training/test_oom_paths.py checks, with dropout on). It does not reproduce the
failed attempt's masks (the redo cuts the stream into smaller chunks: at most its first
chunk can share masks with the failed attempt's first one), nor match a run that used the
smaller micro-batch from the start, which reaches this step with another random state
(unless it is the run's first step).

The forward/backward itself is ``step.step_forward_backward``, the function the memory
planner traces, and the optimizer is ``step.build_optimizer`` (its ``step()`` is retried
once after an OOM that updated nothing: ``optimizer_guard``).

Evaluation batches are cut into chunks of ``guard.eval_batch_size`` rows in
``prediction_step``, halved after an OOM (no accumulation: no divisor rule).

Causal LMs (``causal=True``) run the same step with shifted labels (``step.train_step``);
their evaluation scores the token-sum loss on prompt + summary, then generates from the
prompts alone (left-padded, cut from each row where its labels start) and scores the new
tokens only.

Several ranks (DDP): every micro-batch runs under ``no_sync`` and gradients are averaged
over ranks only after all ranks agreed that the step succeeded (``agree_on_batch``). DDP
would start its all-reduce inside the last backward, where a rank that hit an OOM never
arrives: the ranks would hang, or pair the reduce with the agreement collective. The cost
is that communication no longer overlaps the last backward.

DeepSpeed: the engine owns gradient accumulation (``engine.backward`` scales and
accumulates into its own, possibly partitioned, buffers; ``engine.step`` steps only at its
accumulation boundary), so gradients of a half-done step cannot be zeroed and redone from
here. Under DeepSpeed the Trainer accumulates ``micro_batch_size`` rows at a time, the stock
``training_step`` runs, and an OOM stops the run with the next smaller micro-batch to set.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dialsum.core.errors import first_line
from dialsum.core.runs import RunDir
from dialsum.step.train_step import (
    build_optimizer,
    label_token_count,
    step_forward_backward,
)
from dialsum.training.distributed import reduce_or_stop, reduce_staging
from dialsum.training.eval_predictions import causal_prediction, concat_predictions
from dialsum.training.finite_guard import (
    NonFiniteTraining,
    non_finite_problem,
    non_finite_tensors,
    stop_message,
)
from dialsum.training.oom_guard import (
    GuardState,
    OOMUnrecoverable,
    RecoveryEvent,
    agree_on_batch,
    free_device_memory,
    is_oom,
    next_eval_batch,
    next_micro_batch,
    run_with_oom_retry,
)
from dialsum.training.optimizer_guard import guard_optimizer_step
from dialsum.training.resumable_trainer import ResumableSeq2SeqTrainer

log = logging.getLogger(__name__)


class GuardedSeq2SeqTrainer(ResumableSeq2SeqTrainer):
    """Seq2SeqTrainer with micro-batching and OOM recovery (see module docstring), on the
    trainer that makes ``--resume`` exact (``resumable_trainer``)."""

    def __init__(
        self,
        *args: Any,
        guard: GuardState,
        guard_path: Path | None = None,
        ladder_hint: str | None = None,
        label_smoothing: float = 0.0,
        fault_injector: Callable[[str, int], None] | None = None,
        optimizer_name: str = "adamw",
        memory_phases=None,
        causal: bool = False,
        generation: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.causal = causal
        # Causal evaluation calls generate() itself, with the section's inference options.
        self.generation = dict(generation or {})
        self.optimizer_name = optimizer_name
        # run_memory.PhasePeaks shared with the monitor callback: evaluate() is its eval phase.
        self.memory_phases = memory_phases
        self.guard = guard
        self.guard_path = guard_path
        self.ladder_hint = ladder_hint
        self.label_smoothing = label_smoothing
        # Test hook: called as (phase, batch_rows) before each micro-batch; may raise an OOM.
        self.fault_injector = fault_injector
        self.step_attempts: list[int] = []
        self._reduce_staging: dict | None = None  # DDP: see ``_ensure_reduce_staging``

    # ------------------------------------------------------------------ training

    def training_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        if self.is_deepspeed_enabled:
            return self._deepspeed_training_step(model, inputs, num_items_in_batch)
        model.train()
        inputs = self._prepare_inputs(inputs)
        rows = int(inputs["labels"].shape[0])
        per_step_rows = self.args.per_device_train_batch_size
        normalizer = self._token_normalizer(inputs["labels"])
        # A redo replays the step from the random state it started with: its dropout masks
        # are those of a step started at the smaller micro-batch (see the module docstring).
        rng = _rng_state()
        while True:
            micro = min(self.guard.micro_batch_size, rows)
            self.step_attempts.append(micro)
            error_msg = None
            try:
                self._ensure_reduce_staging(model)
                loss = self._forward_backward(model, inputs, rows, micro, normalizer)
            except Exception as exc:  # noqa: BLE001 - only OOMs are handled, others re-raised
                if not is_oom(exc):
                    raise
                # Keep only the message: holding the exception would keep its traceback's
                # frames, and with them the failed attempt's activations, alive.
                error_msg = first_line(exc)
            failed = error_msg is not None
            # All ranks agree on the smallest micro-batch any of them needs (a collective,
            # run by every rank every step, so no rank waits for a peer that gave up).
            new_micro = (next_micro_batch(micro, per_step_rows) or 0) if failed else micro
            agreed = agree_on_batch(new_micro)
            if agreed == micro and not failed:
                if self._is_data_parallel():
                    step = self.state.global_step + 1
                    reduce_or_stop(model, self._reduce_staging, step=step, hint=self.ladder_hint)
                return loss.detach()
            # Redo the step from zeroed gradients: nothing of the failed attempt is kept.
            loss = None
            model.zero_grad(set_to_none=True)
            free_device_memory()
            if agreed < 1:
                raise OOMUnrecoverable(self._unrecoverable_message(micro, error_msg))
            self._record("train", micro, agreed, error_msg or "a peer rank ran out of memory")
            _set_rng_state(rng)

    def _forward_backward(
        self, model: nn.Module, inputs: dict[str, Any], rows: int, micro: int, normalizer: float
    ) -> torch.Tensor:
        del rows  # the shared step reads the rows from the labels

        def context() -> contextlib.ExitStack:
            # DDP never reduces inside backward here: ``training_step`` averages the
            # gradients once every rank is known to have finished the step.
            stack = contextlib.ExitStack()
            if self._is_data_parallel():
                stack.enter_context(self.accelerator.no_sync(model))
            stack.enter_context(self.compute_loss_context_manager())
            return stack

        def before(chunk: dict[str, Any]) -> None:
            if self.fault_injector is not None:
                self.fault_injector("train", int(chunk["labels"].shape[0]))

        return step_forward_backward(
            model,
            inputs,
            micro,
            normalizer,
            label_smoothing=self.label_smoothing,
            backward=self.accelerator.backward,
            context=context,
            before_micro_batch=before,
            causal=self.causal,
        )

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """The optimizer the planner simulated (``step.build_optimizer``); DeepSpeed builds
        its own from ``ds_config.json``."""
        if self.is_deepspeed_enabled or self.optimizer is not None:
            return super().create_optimizer(model)
        self.optimizer = build_optimizer(
            self.model if model is None else model,
            self.optimizer_name,
            lr=self.args.learning_rate,
            weight_decay=self.args.weight_decay,
            betas=(self.args.adam_beta1, self.args.adam_beta2),
            eps=self.args.adam_epsilon,
        )
        # Adam's state is created inside the first step(): an OOM there is retried once.
        guard_optimizer_step(self.optimizer, on_retry=self._optimizer_retry, hint=self.ladder_hint)
        return self.optimizer

    def _optimizer_retry(self, message: str) -> None:
        micro = self.guard.micro_batch_size  # unchanged: the state does not shrink with it
        self._record("train", micro, micro, message)

    def _ensure_reduce_staging(self, model: nn.Module) -> None:
        """DDP: the flat buffer the gradient reduce packs small gradients into, made before
        the first forward and kept. Made here, inside the attempt, an OOM is one the ranks
        agree on like any other; made after the agreement, it would leave the peers waiting
        in the collective for a rank that died."""
        if self._is_data_parallel() and self._reduce_staging is None:
            self._reduce_staging = reduce_staging(model.parameters())

    def _is_data_parallel(self) -> bool:
        return self.accelerator.num_processes > 1

    def _deepspeed_training_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        num_items_in_batch: torch.Tensor | int | None,
    ) -> torch.Tensor:
        """The stock step (the engine accumulates); an OOM names the micro-batch to try."""
        rows = int(inputs["labels"].shape[0])
        if self.fault_injector is not None:
            self.fault_injector("train", rows)
        try:
            return super().training_step(model, inputs, num_items_in_batch)
        except Exception as exc:  # noqa: BLE001 - only OOMs are handled, others re-raised
            if not is_oom(exc):
                raise
            error_msg = first_line(exc)
        per_step_rows = rows * self.args.gradient_accumulation_steps
        smaller = next_micro_batch(rows, per_step_rows)
        advice = (
            f"set training.micro_batch_size={smaller} (the engine keeps the effective batch)"
            if smaller
            else self.ladder_hint or "raise hardware.zero_stage or turn on hardware.offload"
        )
        raise OOMUnrecoverable(
            f"CUDA out of memory at micro-batch {rows} under DeepSpeed ({error_msg}). "
            f"DeepSpeed owns gradient accumulation, so the step cannot be redone in place: "
            f"{advice}, then run again."
        )

    # ------------------------------------------------------------------ non-finite stop

    def _get_grad_norm(self, model: nn.Module, grad_norm=None):
        """The Trainer's gradient norm, taken after backward and before the optimizer step:
        the place to stop a step whose loss or gradients are not finite (``finite_guard``)."""
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        # The loss since the last log (the Trainer's NaN filter is off: a NaN stays NaN).
        loss = self._tr_loss.detach()
        if self.accelerator.num_processes > 1:
            loss = self.accelerator.reduce(loss.clone(), reduction="mean")
        norm = float(grad_norm) if grad_norm is not None else None
        problem = non_finite_problem(float(loss), norm, check_grad=not self.args.fp16)
        if problem:
            self._stop_non_finite(problem, self.state.global_step + 1)
        return grad_norm

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        self.require_finite_weights("before saving checkpoint")
        super()._save_checkpoint(model, trial)

    def require_finite_weights(self, when: str) -> None:
        """Stop (``NonFiniteTraining``) when a weight holds a NaN or inf: an update from
        finite gradients can still overflow, and such weights must never be saved."""
        bad = non_finite_tensors(self.model.named_parameters())
        if bad:
            problem = f"weights became non-finite ({', '.join(bad)}; {when})"
            self._stop_non_finite(problem, self.state.global_step)

    def _stop_non_finite(self, problem: str, step: int) -> None:
        last = RunDir(Path(self.args.output_dir).parent).last_checkpoint()
        precision = "fp16" if self.args.fp16 else "bf16" if self.args.bf16 else "fp32"
        raise NonFiniteTraining(stop_message(problem, step, last, precision))

    def _token_normalizer(self, labels: torch.Tensor) -> float:
        """Label tokens of the whole step over all ranks, divided by the world size (DDP then
        averages gradients over ranks, so the result is the global per-token mean)."""
        tokens = label_token_count(labels, causal=self.causal)
        world = self.accelerator.num_processes
        if world > 1:
            tokens = self.accelerator.reduce(tokens, reduction="sum")
        return max(float(tokens.item()), 1.0) / world

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        """The stock evaluation, measured as the run's eval phase; its peaks are logged
        after it (the Trainer logs the eval metrics before ``evaluate`` returns)."""
        phases = self.memory_phases
        if phases is None or not phases.measured:
            return super().evaluate(*args, **kwargs)
        with phases.phase("eval"):
            metrics = super().evaluate(*args, **kwargs)
        self.log(phases.logs("eval"))
        return metrics

    def evaluation_loop(self, *args: Any, **kwargs: Any):
        output = super().evaluation_loop(*args, **kwargs)
        self._agree_on_eval_batch()
        return output

    def _agree_on_eval_batch(self) -> None:
        """Adopt the smallest eval batch of any rank once an evaluation is over.

        An eval OOM on a rank other than 0 shrinks only that rank's batch, and rank 0 writes
        guard.json: without this, ``--resume`` and the next evaluation would OOM on that
        rank again. Agreed once per evaluation loop, which every rank runs, rather than per
        batch: ranks need not see the same number of eval batches, and a collective one
        rank skips would hang the others.
        """
        own = self.guard.eval_batch_size or _NO_LIMIT  # 0: no limit, the whole batch
        agreed = agree_on_batch(own)
        if agreed < own:
            self._record("eval", own, agreed, "a peer rank ran out of memory")

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
        **gen_kwargs: Any,
    ):
        rows = int(next(v for v in inputs.values() if torch.is_tensor(v)).shape[0])

        def predict_in_chunks(size: int):
            parts = []
            for start in range(0, rows, size):
                chunk = {
                    k: v[start : start + size] if torch.is_tensor(v) else v
                    for k, v in inputs.items()
                }
                if self.fault_injector is not None:
                    self.fault_injector("eval", min(size, rows - start))
                if self.causal:
                    parts.append(self._causal_prediction_step(model, chunk, prediction_loss_only))
                    continue
                parts.append(
                    super(GuardedSeq2SeqTrainer, self).prediction_step(
                        model, chunk, prediction_loss_only, ignore_keys, **gen_kwargs
                    )
                )
            return concat_predictions(parts, self._pad_id())

        def on_oom(old: int, new: int, exc: BaseException) -> None:
            # GuardState.record adopts the smaller eval batch for the following batches.
            self._record("eval", old, new, first_line(exc))

        result, _ = run_with_oom_retry(
            predict_in_chunks,
            min(self.guard.eval_batch_size or rows, rows),
            next_eval_batch,
            on_oom,
            hint="lower inference.num_beams or tokenizer.max_source_length",
        )
        return result

    def _causal_prediction_step(
        self, model: nn.Module, inputs: dict[str, Any], prediction_loss_only: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        return causal_prediction(
            model,
            self._prepare_inputs(inputs),
            pad_id=self._pad_id(),
            generation=self.generation,
            loss_context=self.compute_loss_context_manager,
            loss_only=prediction_loss_only or self.args.prediction_loss_only,
        )

    def _pad_id(self) -> int:
        tok = self.processing_class
        return int(getattr(tok, "pad_token_id", 0) or 0)

    # ------------------------------------------------------------------ bookkeeping

    def _record(self, phase: str, old: int, new: int, message: str) -> None:
        event = RecoveryEvent(
            step=int(self.state.global_step),
            phase=phase,
            old_batch=old,
            new_batch=new,
            message=message,
        )
        self.guard.record(event)
        log.warning(
            "OOM during %s at step %d: batch %d -> %d (effective batch unchanged)",
            phase,
            event.step,
            old,
            new,
        )
        if self.guard_path is not None and self.is_world_process_zero():
            self.guard.save(self.guard_path)

    def _unrecoverable_message(self, micro: int, error_msg: str | None) -> str:
        msg = f"CUDA out of memory at micro-batch {micro}: nothing smaller is left."
        if error_msg:
            msg += f" ({error_msg})"
        if self.ladder_hint:
            msg += f" Next step: {self.ladder_hint}."
        return msg


_NO_LIMIT = 2**31 - 1


def _rng_state() -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[torch.Tensor, list[torch.Tensor] | None]) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
