"""The guide's YAML: the config snippet a user pastes into a section to run a GPU's plan
without planning again, and the machine-readable guide file (``guide.yaml``) that holds
those snippets with the predictions per section per GPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import yaml

from dialsum.memory.overheads import required_bytes
from dialsum.memory.plan import Plan
from dialsum.memory.request import resolve_optimizer
from dialsum.report.time_side import GUIDE_EPOCH_DIALOGUES, plan_epoch

if TYPE_CHECKING:
    from dialsum.core.config_schema import SectionConfig
    from dialsum.report.section_guide import SectionGuide


def settings_snippet(plan: Plan, cfg: SectionConfig) -> dict[str, Any]:
    """The config keys a section should set to run ``plan``'s GPU without planning again."""
    training: dict[str, Any] = {
        "effective_batch_size": plan.effective_batch_size,
        "micro_batch_size": plan.micro_batch_size,
        # Derived by the trainer; kept here so the config validates micro x accumulation.
        "gradient_accumulation_steps": plan.gradient_accumulation_steps,
        "eval_batch_size": plan.eval_batch_size,
        "precision": plan.precision,
        "gradient_checkpointing": plan.gradient_checkpointing,
    }
    if plan.optimizer != resolve_optimizer(cfg.training.optimizer):
        training["optimizer"] = plan.optimizer  # the fallback ladder changed it
    snippet: dict[str, Any] = {
        "training": training,
        "inference": {"batch_size": plan.generation_batch_size},
    }
    if plan.source_len != cfg.tokenizer.max_source_length:
        snippet["tokenizer"] = {"max_source_length": plan.source_len}
    return snippet


def yaml_text(data: Any) -> str:
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)


def time_yaml(plan) -> dict[str, Any]:
    """Predicted times for the guide's YAML (None when unknown)."""
    step = plan.timing.step if plan.timing else None
    epoch = plan_epoch(plan)
    return {
        "flops_per_step": plan.timing.flops_per_step if plan.timing else None,
        "step_time_s": round(step.seconds, 4) if step else None,
        "epoch_time_s": round(epoch.seconds, 1) if epoch else None,
        "epoch_dialogues": GUIDE_EPOCH_DIALOGUES,
        "time_estimated": not step.calibrated if step else True,
    }


def guide_yaml(sections: Sequence[SectionGuide], config_name: str) -> dict[str, Any]:
    """Machine-readable guide: per section per GPU the settings and the predictions."""
    out: dict[str, Any] = {"generated_by": "dialsum guide", "config": config_name, "sections": {}}
    for s in sections:
        gpus: dict[str, Any] = {}
        for slug, plan in s.plans.items():
            gpus[slug] = {
                "fits": plan.fits,
                "settings": settings_snippet(plan, s.cfg),
                "predicted": {
                    "train_peak_bytes": plan.predicted_peak_bytes,
                    "train_required_bytes": plan.required_bytes,
                    "generate_peak_bytes": plan.generate_profile.peak_bytes,
                    "generate_required_bytes": required_bytes(
                        plan.generate_profile.peak_bytes, s.overheads
                    ),
                    "usable_bytes": plan.usable_bytes,
                    "peak_phase": plan.train_profile.peak_phase,
                    **time_yaml(plan),
                },
                "warnings": list(plan.warnings),
            }
        for slug, error in s.errors.items():
            gpus[slug] = {"fits": False, "error": error}
        out["sections"][s.name] = {
            "model": s.facts.model_id,
            "params": s.facts.params,
            "source_len": s.cfg.tokenizer.max_source_length,
            "target_len": s.cfg.tokenizer.max_target_length,
            "effective_batch_size": s.cfg.training.effective_batch_size,
            "gpus": gpus,
        }
    return out
