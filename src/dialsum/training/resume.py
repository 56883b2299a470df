"""``train --resume``: which run to continue, and with which config.

A resumed run continues *exactly as saved*: the run folder's ``config.yaml`` is the
config, not the current config file or command line (a 40-step run resumed without its
flags must not become a 750-step run). Flags given with ``--resume`` are applied on top
of the saved config only with ``--override-on-resume``; the change is then recorded in
the run folder (``resume_overrides.yaml``) and ``config.yaml`` is rewritten to what runs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from dialsum.core.config_load import apply_overrides, section_from_dict
from dialsum.core.config_schema import SectionConfig
from dialsum.core.errors import UserError
from dialsum.core.run_inputs import INPUTS_FILE, changed_inputs, read_inputs, training_inputs
from dialsum.core.runs import RunDir, list_runs, write_json_atomic, write_yaml_atomic

LATEST = "latest"


def find_resume_run(cfg: SectionConfig, spec: str) -> tuple[RunDir, Path]:
    """(run, its last checkpoint): ``latest`` = the newest run of the section that has a
    checkpoint (a newer run without one, e.g. interrupted early, is skipped); else the
    run folder ``spec``."""
    if spec != LATEST:
        run = RunDir(Path(spec))
        if not run.config.is_file():
            raise UserError(
                f"--resume {spec}: not a run folder (no config.yaml); pass a folder such as "
                f"{Path(cfg.training.output_dir) / cfg.name / 'YYYYMMDD-HHMMSS'} or --resume "
                "alone for the latest run"
            )
        checkpoint = run.last_checkpoint()
        if checkpoint is None:
            raise UserError(f"--resume {spec}: the run has no checkpoint to continue from")
        return run, checkpoint
    runs = list_runs(cfg.training.output_dir, cfg.name)
    for run in reversed(runs):
        checkpoint = run.last_checkpoint()
        if checkpoint is not None:
            return run, checkpoint
    where = Path(cfg.training.output_dir) / cfg.name
    if runs:
        raise UserError(
            f"--resume: none of the {len(runs)} run(s) under {where} has a checkpoint yet; "
            "set training.save_strategy (e.g. --save-steps N) or start a new run"
        )
    raise UserError(
        f"--resume: no earlier run of section '{cfg.name}' under {where}; start one "
        "without --resume"
    )


def saved_config(run: RunDir) -> tuple[SectionConfig, dict[str, Any]]:
    """The section a run was started with (validated), and its raw mapping."""
    try:
        raw = yaml.safe_load(run.config.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{run.config}: cannot read the run's config ({exc})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{run.config}: not a saved section mapping; the run folder is damaged")
    name = raw.pop("section", run.path.parent.name)
    return section_from_dict(raw, name), raw


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def config_changes(before: SectionConfig, after: SectionConfig) -> dict[str, tuple[Any, Any]]:
    """``{key.path: (saved, given)}`` for every value that differs."""
    old, new = _flatten(before.to_dict()), _flatten(after.to_dict())
    keys = sorted(set(old) | set(new))
    return {k: (old.get(k), new.get(k)) for k in keys if old.get(k) != new.get(k)}


def resumed_config(
    run: RunDir, overrides: list[str], *, allow_changes: bool, echo=print
) -> tuple[SectionConfig, dict[str, tuple[Any, Any]]]:
    """The config a resumed run continues with (see module docstring), and the changes the
    command line makes to the saved one. Nothing is written here: ``record_changes`` does
    it once the run has settled data, model and plan (a resume that fails before that
    leaves the run folder as it was)."""
    saved, raw = saved_config(run)
    if not overrides:
        echo(f"resuming {run.path} with its saved config")
        return saved, {}
    given = section_from_dict(apply_overrides(raw, overrides), saved.name)
    changes = config_changes(saved, given)
    if not changes:
        return saved, {}
    if not allow_changes:
        raise UserError(
            f"--resume {run.path}: the command line changes the saved config:\n"
            f"{_listing(changes)}\nA resumed run continues as saved: drop these flags, or add "
            "--override-on-resume to apply them (the change is recorded in the run folder)."
        )
    return given, changes


def _listing(changes: dict[str, tuple[Any, Any]]) -> str:
    return "\n".join(f"  - {k}: {old!r} (saved) -> {new!r}" for k, (old, new) in changes.items())


def check_resumable(
    run: RunDir, cfg: SectionConfig, *, section: str | None, allow_changes: bool, echo=print
) -> dict[str, tuple[Any, Any]]:
    """Refuse a resume that cannot continue the saved run, before anything is written: a
    section (``-s``) other than the run's, or training data that changed since the run
    started (``core.run_inputs``; accepted with ``--override-on-resume``, and recorded).
    Returns the data changes to record."""
    if section is not None and section != cfg.name:
        raise UserError(
            f"--resume {run.path}: the run was started with section '{cfg.name}', not "
            f"'{section}'. Drop -s (a resumed run continues with its saved config) or pass "
            f"-s {cfg.name}"
        )
    saved = read_inputs(run.path)
    if saved is None:
        return {}
    changed = changed_inputs(saved, training_inputs(cfg))
    if not changed:
        return {}
    listing = "\n".join(f"  - {line}" for line in changed)
    if not allow_changes:
        raise UserError(
            f"--resume {run.path}: the training data changed since the run started:\n"
            f"{listing}\nThe resumed run would continue on other rows than the ones it skipped "
            "as trained. Restore the files, start a new run, or add --override-on-resume to "
            "continue on the new data anyway (recorded in the run folder)."
        )
    echo(f"warning: continuing on changed training data:\n{listing}")
    return {"data files": ("as at the start", "; ".join(changed))}


def record_changes(
    run: RunDir, cfg: SectionConfig, changes: dict[str, tuple[Any, Any]], echo=print
) -> None:
    """Write what ``--override-on-resume`` changed: ``resume_overrides.yaml``, the new
    ``config.yaml`` and fingerprints of the data the run now continues on."""
    if not changes:
        return
    _record_changes(run, changes)
    write_yaml_atomic(run.config, cfg.to_dict() | {"section": cfg.name})
    write_json_atomic(run.path / INPUTS_FILE, training_inputs(cfg))
    echo(
        f"resuming {run.path} with changed settings (see resume_overrides.yaml):\n"
        f"{_listing(changes)}"
    )


def _record_changes(run: RunDir, changes: dict[str, tuple[Any, Any]]) -> None:
    path = run.path / "resume_overrides.yaml"
    history = []
    if path.is_file():
        history = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    history.append(
        {
            "at": time.strftime("%Y-%m-%d %H:%M:%S"),
            "changes": {k: {"saved": old, "given": new} for k, (old, new) in changes.items()},
        }
    )
    write_yaml_atomic(path, history)
