"""The `plan` verb: a section (or a bare model id) + a GPU → Plan, printed or as JSON."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dialsum.core.config_load import load_section, section_from_dict
from dialsum.core.config_schema import SectionConfig
from dialsum.core.errors import ConfigError


@dataclass
class PlanResult:
    """What ``dialsum plan`` prints (text or JSON), kept whole by ``cli.plan_cache``.

    Printing needs no ``Plan`` (its text is kept), so a cached result prints without
    torch; ``plan`` is planned again, from the trace cache, only when asked for.
    """

    cfg: SectionConfig
    json: dict[str, Any]
    plan_text: str  # cli.printers.format_plan
    train_profile: Any  # trace.profile.MemoryProfile: the breakdown table
    per_rank: list[str] = field(default_factory=list)  # per_rank_lines
    buckets: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    speed: list[str] = field(default_factory=list)  # cli.epoch_estimate.time_lines
    epoch: Any = None  # speed.epoch_time.EpochTime of the data, when known
    epoch_data: Any = None  # cli.epoch_estimate.EpochData
    _plan: Any = field(default=None, repr=False)
    _replan: Callable[[], PlanResult] | None = field(default=None, repr=False)

    @property
    def plan(self):
        """The ``memory.plan.Plan`` (planned again when this result came from the cache)."""
        if self._plan is None and self._replan is not None:
            self._plan = self._replan().plan
        return self._plan

    def __getstate__(self) -> dict[str, Any]:
        # Cached without the Plan (unpickling it would import torch) and the closure.
        return {**self.__dict__, "_plan": None, "_replan": None}

    def print(self, console) -> None:
        from rich.table import Table

        from dialsum.cli.printers import breakdown_table

        for note in self.notes:
            console.print(note, markup=False)
        console.print(self.plan_text, markup=False)
        console.print(breakdown_table(self.train_profile))
        for line in self.speed:
            console.print(line, markup=False)
        for line in self.per_rank:
            console.print(line, markup=False)
        if self.buckets:
            table = Table(title="largest micro-batch per length bucket")
            for col in ("source_len", "target_len", "micro_batch_size", "truncated_fraction"):
                table.add_column(col, justify="right")
            for row in self.buckets:
                frac = row.get("truncated_fraction")
                table.add_row(
                    str(row["source_len"]),
                    str(row["target_len"]),
                    str(row["micro_batch_size"]),
                    "-" if frac is None else f"{100 * frac:.1f}%",
                )
            console.print(table)


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"


def per_rank_lines(plan) -> list[str]:
    """What each of ``plan.world_size`` GPUs holds (empty for one GPU without ZeRO)."""
    if plan.world_size == 1 and plan.zero_stage == 0:
        return []
    engine = f"DeepSpeed ZeRO-{plan.zero_stage}" if plan.zero_stage else "DDP"
    if plan.offload:
        engine += " + CPU offload"
    lines = [
        f"per-rank memory ({plan.world_size} GPU(s), {engine}):",
        f"  predicted peak {_gib(plan.predicted_peak_bytes)}; with overheads "
        f"{_gib(plan.required_bytes)} of {_gib(plan.usable_bytes)} usable",
    ]
    states = plan.zero_states
    if states is not None:
        lines.append(
            f"  model states on the GPU {_gib(states.gpu_bytes)}: weights "
            f"{_gib(states.weights_bytes)}, gradients {_gib(states.gradients_bytes)}, "
            f"optimizer {_gib(states.optimizer_state_bytes)}, gathered layer "
            f"{_gib(states.gathered_layer_bytes)}"
        )
        if states.cpu_bytes:
            lines.append(f"  offloaded to CPU memory per rank {_gib(states.cpu_bytes)}")
    return lines


def _section_for_model(
    model: str, source_len: int | None, target_len: int | None, overrides: list[str]
) -> SectionConfig:
    from dialsum.core.config_load import apply_overrides

    raw: dict[str, Any] = {"model": {"name": model}, "tokenizer": {}}
    if source_len is not None:  # 0 is refused by validation, not replaced by the default
        raw["tokenizer"]["max_source_length"] = source_len
    if target_len is not None:
        raw["tokenizer"]["max_target_length"] = target_len
    return section_from_dict(apply_overrides(raw, overrides), name=model)


def _data_lengths(cfg: SectionConfig, data: Path):
    """(report, [(source_len, target_len)]) of the CSV with the section's tokenizer; kept
    by the file's content (``cli.plan_cache.lengths_key``): tokenizing takes seconds."""
    from dialsum.cli import plan_cache

    key = plan_cache.lengths_key(cfg, data)
    cached = plan_cache.load("lengths", key)
    if cached is not None:
        return cached
    found = _tokenized_lengths(cfg, data)
    plan_cache.store("lengths", key, found)
    return found


def _tokenized_lengths(cfg: SectionConfig, data: Path):
    from dialsum.data import dataset as data_mod
    from dialsum.models.setup import setup_model
    from dialsum.training.run_data import length_report, prompt_format, tokenize_table

    table = data_mod.read_dialogue_csv(data, "train")
    model, tokenizer = setup_model(cfg)
    prompt = prompt_format(cfg, model, tokenizer)  # a causal LM: the prompt is the source
    report = length_report(cfg, table, tokenizer, prompt)
    rows = tokenize_table(
        cfg, table, tokenizer, source_len=cfg.tokenizer.max_source_length, with_labels=True,
        prompt=prompt,
    ).rows  # fmt: skip
    if prompt is not None:  # one sequence per row: (prompt, summary + EOS) lengths
        targets = [sum(label != -100 for label in r["labels"]) for r in rows]
        return report, [(len(r["input_ids"]) - t, t) for r, t in zip(rows, targets, strict=True)]
    return report, [(len(r["input_ids"]), len(r["labels"])) for r in rows]


def plan_command(
    *,
    config: Path | None,
    section: str | None,
    model: str | None,
    gpu: str | None,
    source_len: int | None,
    target_len: int | None,
    effective_batch: int | None,
    num_beams: int | None,
    num_gpus: int,
    data: Path | None,
    overrides: list[str],
    buckets: bool,
    zero_stage: int | None = None,
    offload: bool | None = None,
) -> PlanResult:
    from dialsum.cli import plan_cache

    overrides = _option_overrides(overrides, effective_batch, num_beams, zero_stage, offload)
    cfg = _section_to_plan(config, section, model, source_len, target_len, overrides)
    if num_gpus < 1:
        raise ConfigError("--num-gpus must be >= 1")

    def replan() -> PlanResult:
        return _plan_result(cfg, gpu, num_gpus, data, buckets)

    key = plan_cache.plan_key(cfg, gpu=gpu, num_gpus=num_gpus, data=data, buckets=buckets)
    cached = plan_cache.load("plans", key)
    if isinstance(cached, PlanResult):
        cached.cfg, cached._replan = cfg, replan
        return cached
    from dialsum.trace import parallel

    # The helper process starts now: its imports run on the other core while this one
    # imports, reads the model and the data; it ends with the plan, guesses and all.
    parallel.start()
    try:
        out = replan()
    finally:
        parallel.stop()
    plan_cache.store("plans", key, out)
    return out


def _plan_result(
    cfg: SectionConfig, gpu: str | None, num_gpus: int, data: Path | None, buckets: bool
) -> PlanResult:
    """Plan ``cfg`` (traces from the trace cache when there) and everything printed."""
    from dialsum.cli.printers import format_plan, plan_json
    from dialsum.memory.section import device_for_section, plan_for_section, section_model_config

    model_config = section_model_config(cfg)
    report, lengths, notes = None, None, []
    if data is not None:
        report, lengths = _data_lengths(cfg, data)
        notes.append(report.format())
    device = device_for_section(cfg, gpu)
    plan = plan_for_section(
        cfg, model_config, report=report, world=num_gpus, gpu=device, data_lengths=lengths
    )
    out = PlanResult(
        cfg=cfg,
        json=plan_json(plan, plan.train_profile.params),
        plan_text=format_plan(plan),
        train_profile=plan.train_profile,
        per_rank=per_rank_lines(plan),
        _plan=plan,
    )
    out.json["per_rank"] = _per_rank_json(plan)
    out.notes = notes
    from dialsum.cli.epoch_estimate import epoch_json, plan_speed, time_lines

    out.epoch, out.epoch_data = plan_speed(plan, cfg, model_config, lengths, data)
    out.speed = time_lines(plan, out.epoch, out.epoch_data)
    out.json["epoch"] = epoch_json(out.epoch, out.epoch_data)
    if buckets:
        out.buckets = _bucket_rows(cfg, model_config, device, num_gpus, lengths)
        out.json["buckets"] = out.buckets
    return out


def _option_overrides(
    overrides: list[str],
    effective_batch: int | None,
    num_beams: int | None,
    zero_stage: int | None,
    offload: bool | None,
) -> list[str]:
    """``overrides`` plus the command-line options given, as ``key=value`` overrides."""
    overrides = list(overrides)
    if effective_batch is not None:
        overrides.append(f"training.effective_batch_size={effective_batch}")
    if num_beams is not None:
        overrides.append(f"inference.num_beams={num_beams}")
    if zero_stage is not None:
        overrides.append(f"hardware.zero_stage={zero_stage}")
    if offload is not None:
        overrides.append(f"hardware.offload={str(offload).lower()}")
    return overrides


def _section_to_plan(
    config: Path | None,
    section: str | None,
    model: str | None,
    source_len: int | None,
    target_len: int | None,
    overrides: list[str],
) -> SectionConfig:
    """A bare model id (``--model``), or section ``section`` of ``config`` with the
    command line's lengths."""
    if model:
        return _section_for_model(model, source_len, target_len, overrides)
    if not section:
        raise ConfigError("plan: pass -c CONFIG -s SECTION, or --model HUB_ID_OR_DIR")
    if source_len is not None:
        overrides.append(f"tokenizer.max_source_length={source_len}")
    if target_len is not None:
        overrides.append(f"tokenizer.max_target_length={target_len}")
    return load_section(config or Path("config.yaml"), section, overrides)


def _per_rank_json(plan) -> dict[str, Any]:
    from dialsum.memory.plan import zero_states_json

    return {
        "world_size": plan.world_size,
        "zero_stage": plan.zero_stage,
        "offload": plan.offload,
        "predicted_peak_bytes": plan.predicted_peak_bytes,
        "required_bytes": plan.required_bytes,
        "model_states": zero_states_json(plan.zero_states),
    }


def _bucket_rows(cfg: SectionConfig, model_config, device, num_gpus: int, lengths):
    """``bucket_table`` over the buckets up to the section's length limits."""
    from dialsum.memory.plan import bucket_table
    from dialsum.memory.section import overheads_for, request_for_section

    request = request_for_section(
        cfg, model_config, report=None, world=num_gpus, data_lengths=lengths
    )
    limit = cfg.tokenizer.max_source_length
    return bucket_table(
        request,
        device,
        overheads_for(cfg, device),
        source_lens=[n for n in (128, 256, 512, 1024) if n <= max(limit, 128)],
        target_lens=[n for n in (32, 64, 128) if n <= max(cfg.tokenizer.max_target_length, 32)],
    )
