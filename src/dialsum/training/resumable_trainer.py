"""What a resumed run needs from the HF Trainer to continue exactly as if never stopped.

- The whole-run ``train_loss``: every checkpoint carries the loss sum of all steps so far
  (``dialsum_loss.json``), so a resumed run reports the mean over the whole run, not over
  its resumed part only; a run that had nothing left to train reports its recorded loss.
- The batch order: ``group_by_length`` batches depend on (seed, epoch) only
  (``EpochSeededLengthGroupedSampler``), not on the global RNG state the resume reaches.
- No false alarm: tied weights (saved once, under one name) are not "missing" on load.

``GuardedSeq2SeqTrainer`` (the OOM guard) builds on this trainer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import Seq2SeqTrainer
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

RUN_LOSS_FILE = "dialsum_loss.json"


class ResumableSeq2SeqTrainer(Seq2SeqTrainer):
    """Seq2SeqTrainer whose resumed runs report and train as one run (module docstring)."""

    def _issue_warnings_after_load(self, load_result: Any) -> None:
        """Drop tied weights from the "missing keys" warning of a resume: T5's encoder and
        decoder ``embed_tokens`` *are* ``shared`` (saved once), so nothing is missing."""
        really_missing = untied_missing_keys(self.model, load_result.missing_keys)
        super()._issue_warnings_after_load(load_result._replace(missing_keys=really_missing))

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if isinstance(sampler, LengthGroupedSampler):
            return EpochSeededLengthGroupedSampler(sampler, seed=self.args.seed)
        return sampler

    # ------------------------------------------------------------------ whole-run loss

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        # Read now: checkpoint rotation may delete the checkpoint during this run.
        self._prior = _read_run_loss(resume_from_checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _loss_sum_so_far(self) -> float:
        """Sum of the per-step losses of this process's part of the run (the Trainer's
        running total, plus the not yet logged remainder, averaged over ranks)."""
        remainder = self._tr_loss.detach()
        if self.accelerator.num_processes > 1:
            remainder = self.accelerator.gather(remainder.reshape(1)).mean()
        return float(self._total_loss_scalar) + float(remainder.item())

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        # The loss sum of every step so far travels with the checkpoint, so a resumed run
        # reports its train_loss over the whole run, not over the resumed part only.
        total = self._prior_loss()[0] + self._loss_sum_so_far()
        folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
        if self.is_world_process_zero() and folder.is_dir():
            from dialsum.core.runs import write_json_atomic

            write_json_atomic(
                folder / RUN_LOSS_FILE, {"loss_sum": total, "steps": self.state.global_step}
            )

    def _prior_loss(self) -> tuple[float, int | None]:
        """(loss sum, steps) of the run before the checkpoint this run resumed from;
        ``(0.0, 0)`` for a fresh run, ``(0.0, None)`` when the checkpoint has no record."""
        return getattr(self, "_prior", (0.0, 0))

    def run_loss_metrics(self) -> dict[str, Any]:
        """``train_loss`` over the whole run (all steps, resumed or not), and what it spans."""
        prior_sum, prior_steps = self._prior_loss()
        steps = int(self.state.global_step)
        if prior_steps is None:
            first = int(getattr(self, "_initial_global_step", 0)) + 1
            return {"train_loss_steps": f"{first}-{steps} (resumed part only: no record "
                    "of the earlier steps in the checkpoint)"}  # fmt: skip
        # After train() the Trainer has drained the remainder into its running total.
        total = prior_sum + float(self._total_loss_scalar)
        return {"train_loss": total / max(steps, 1), "train_loss_steps": f"1-{steps}"}

    def finished_run_metrics(self, checkpoint: Path) -> dict[str, Any]:
        """Metrics of a run that had nothing left to train: its recorded whole-run loss."""
        loss_sum, steps = _read_run_loss(str(checkpoint))
        if not steps:
            return {}
        self.state.global_step = steps
        return {"train_loss": loss_sum / steps, "train_loss_steps": f"1-{steps}"}


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """``group_by_length`` batches whose order depends on (seed, epoch) only.

    transformers' ``LengthGroupedSampler`` draws its permutation from the global RNG when
    iteration starts; a resumed run reaches that point with another RNG state, so it
    replays a *different* order than the run it continues (and the weights differ). The
    Trainer calls ``set_epoch`` on the sampler at every epoch, as for accelerate's seedable
    random sampler: the permutation of epoch ``e`` is then drawn from ``seed + e``.
    """

    def __init__(self, sampler: LengthGroupedSampler, seed: int) -> None:
        self.batch_size, self.lengths = sampler.batch_size, sampler.lengths
        self.generator, self.seed, self.epoch = None, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


def untied_missing_keys(model: nn.Module, missing_keys: list[str]) -> list[str]:
    """The missing keys whose parameter is not shared with a loaded one (tied weights are
    saved once, under one name: the others are not missing)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    missing = set(missing_keys)
    loaded = {id(p) for name, p in params.items() if name not in missing}
    return [k for k in missing_keys if k not in params or id(params[k]) not in loaded]


def _read_run_loss(checkpoint: str | bool | None) -> tuple[float, int | None]:
    """The loss record a checkpoint carries (see ``_save_checkpoint``)."""
    if not isinstance(checkpoint, str):
        return 0.0, 0
    try:
        data = json.loads((Path(checkpoint) / RUN_LOSS_FILE).read_text(encoding="utf-8"))
        return float(data["loss_sum"]), int(data["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0, None
