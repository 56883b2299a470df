"""What ``predict`` checks so that it never exits 0 with a wrong result or a lost input.

- The config a checkpoint was trained with sits next to it (``<run>/config.yaml``): without
  ``-s`` predict uses it; with an ``-s`` of another section it refuses (another prefix,
  other lengths and beams on this model would quietly give other summaries).
- ``--output`` must not be one of the user's inputs (the test CSV, the config, the training
  files): writing the submission there would replace the input.
- A model with NaN/inf weights generates empty strings; predict refuses it before
  generating, and refuses to write a submission whose summaries are all empty.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from dialsum.core.config_load import apply_overrides, section_from_dict
from dialsum.core.config_schema import SectionConfig
from dialsum.core.errors import OutputError, UserError


def run_folder_of(model_dir: Path) -> Path | None:
    """The run folder a model belongs to (<run>/best or <run>/checkpoints/checkpoint-N)."""
    model_dir = Path(model_dir)
    run = model_dir.parent if model_dir.name == "best" else model_dir.parent.parent
    return run if (run / "config.yaml").is_file() else None


def saved_section(run: Path) -> tuple[str, dict]:
    """(section name, raw mapping) of a run's ``config.yaml``."""
    path = run / "config.yaml"
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{path}: cannot read the run's config ({exc})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: not a saved section mapping; the run folder is damaged")
    return str(raw.pop("section", run.parent.name)), raw


def checkpoint_config(
    checkpoint: Path, section: str | None, overrides: list[str], echo=print
) -> SectionConfig | None:
    """The run's saved section (with ``overrides``) when ``checkpoint`` belongs to a run
    and no ``-s`` was given; ``None`` when the caller's section applies. Refuses an ``-s``
    that names another section than the one the checkpoint was trained with."""
    run = run_folder_of(checkpoint)
    if run is None:
        return None
    name, raw = saved_section(run)
    if section is not None:
        if section != name:
            raise UserError(
                f"--checkpoint {checkpoint} was trained with section '{name}' "
                f"({run / 'config.yaml'}), not '{section}': its prefix, lengths and beams "
                f"would not match the model. Drop -s (the run's own config is used) or pass "
                f"-s {name}"
            )
        return None
    echo(f"config: {run / 'config.yaml'} (section {name}, the one the checkpoint trained with)")
    return section_from_dict(apply_overrides(raw, overrides), name)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(os.path.abspath(a)) == Path(os.path.abspath(b))


def require_output_not_an_input(output: Path, inputs: Mapping[str, str | Path | None]) -> None:
    """``OutputError`` when ``output`` is one of ``inputs`` ({what: path})."""
    for what, path in inputs.items():
        if path and Path(path).exists() and _same_file(output, Path(path)):
            raise OutputError(
                f"--output {output} is the {what}: writing the submission there would replace "
                "it. Choose another file (e.g. --output submission.csv); nothing was written"
            )


def require_finite_model(named_parameters, model_dir: Path) -> None:
    """``UserError`` when the model holds NaN/inf weights (it would generate nothing)."""
    from dialsum.training.finite_guard import non_finite_tensors

    bad = non_finite_tensors(named_parameters)
    if bad:
        raise UserError(
            f"{model_dir}: the model has non-finite (NaN/inf) weights ({', '.join(bad)}): it "
            "would generate empty summaries. Use an earlier checkpoint (--checkpoint "
            "<run>/checkpoints/checkpoint-N) or train again; nothing was written"
        )


def require_summaries(summaries: Sequence[str], model_dir: Path, echo=print) -> None:
    """Refuse a submission of empty summaries; note how many are empty otherwise."""
    empty = sum(1 for s in summaries if not s.strip())
    if summaries and empty == len(summaries):
        raise UserError(
            f"every one of the {len(summaries)} summaries {model_dir} generated is empty; "
            "no submission was written. The model is untrained or broken: check its "
            "training run (train_loss, eval scores) or pass another --checkpoint"
        )
    if empty:
        echo(f"warning: {empty} of {len(summaries)} summaries are empty")
