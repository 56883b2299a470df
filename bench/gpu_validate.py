"""The plan against the real dialsum runs on one CUDA GPU, for the three built-in models.

    uv run python bench/gpu_validate.py                # a CUDA machine: <= 8 minutes
    uv run python bench/gpu_validate.py --smoke        # CPU: the same code path, tiny model

For each architecture (eenzeenee T5, csebuetnlp mT5, digit82 KoBART: random weights from
the shipped config.json, the tiny tokenizer, no downloads; see ``dialsum.checks.gpu_runs``):

1. the real run: ``dialsum train --max-steps 3`` with evaluation, then ``dialsum
   predict``, at the settings the run plans for this GPU, on dialogues that fill the
   source length and generation forced to full length; per phase (train / eval /
   predict) the plan's predicted peak vs ``torch.cuda.max_memory_allocated`` (and the
   active peak), and the plan's required bytes vs ``max_memory_reserved``;
2. emulated smaller GPUs of 16, 24 and 40 GiB (``set_per_process_memory_fraction``): the
   planned micro-batch vs the largest that really trains, and OOMs at the planned
   settings (training steps, one evaluation, one generation pass).

``--smoke`` runs all of it on a one-layer tiny T5 at tiny shapes on the CPU, with no CUDA
call: the real run is planned against a 0.25 GiB live-bytes cap, a cap of 3, 4.5 and 7.5
MiB (the same proportions) stands in for the memory fraction, nothing is measured (the
JSON says ``"measured": false``) and the search goes up to 2x (not 4x) the planned
micro-batch. A test runs it.

Output: one JSON file (``--out``, default ``bench/results/gpu_validate[_smoke].json``):

    {"format": "gpu_validate/1", "smoke": bool, "device": str, "torch": str,
     "cuda": str | null, "allocator": {...} | null, "seconds": float,
     "runs": {ARCH: {"model": str, "settings": {micro_batch_size, precision, ...},
                     "measured": bool, "oom_recoveries": int, "predict_oom_splits": int,
                     "phases": {PHASE: {"predicted_peak_bytes", "max_allocated_bytes",
                                        "allocated_ratio", "active_peak_bytes",
                                        "active_ratio", "planned_required_bytes",
                                        "max_reserved_bytes", "reserved_ratio"}},
                     "run": str, "seconds": float}},
     "emulated": {ARCH: [{"gpu": "16GB", "size_bytes": int, "memory_fraction": float,
                          "planned_micro_batch": int, "planned_fits": bool,
                          "true_largest_micro_batch": int | null, "searched_up_to": int,
                          "largest_divisor_that_runs": int | null,
                          "ooms_at_planned": {"train": int, "eval": int, "predict": int,
                                              ["unrecoverable": {PHASE: message}]}
                                             | null (the plan does not fit),
                          "precision": str, "gradient_checkpointing": bool,
                          "seconds": float}]},
     "skipped": [str]}

Ratios are measured / predicted (null when not measured). Then one summary table.

Time: the plans of every run and emulated GPU are traced first, in parallel processes
(``--workers``, default cores - 1; a trace is Python on one core), into the on-disk trace
cache the runs then read. A budget (``--budget-s``, default 450) skips what would not end
within 8 minutes; what was skipped is listed in ``skipped``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from dialsum.checks import gpu_runs, prefill

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config.yaml"
GIB, MIB = 2**30, 2**20

# (section, model id, tiny tokenizer family)
ARCHITECTURES = [
    ("eenzeenee", "eenzeenee/t5-base-korean-summarization", "t5"),
    ("xlsum_mt5", "csebuetnlp/mT5_multilingual_XLSum", "t5"),
    ("kobart", "digit82/kobart-summarization", "bart"),
]
SIZES_GIB = (16, 24, 40)
# Rows per split: 3 steps of the effective batch, the eval and generation batch caps.
ROWS = {"train": 64, "dev": 64, "test": 256}
SMOKE_ROWS = {"train": 24, "dev": 4, "test": 8}
RUN_OVERRIDES = [
    "training.max_steps=3",
    "training.eval_strategy=steps",
    "training.eval_steps=1000",  # one evaluation: run_training's, after the steps
    "training.save_strategy=no",
    "training.logging_steps=1",
]
SMOKE_OVERRIDES = [
    "tokenizer.max_source_length=48",
    "tokenizer.max_target_length=12",
    "inference.max_new_tokens=6",
    "inference.num_beams=2",
    "inference.batch_size=auto",
    "training.effective_batch_size=4",
    "training.micro_batch_size=auto",
    "training.eval_batch_size=auto",
    "training.report_to=[none]",
    "hardware.memory_cap_gib=0.25",  # planned and capped like a device (CPU kernels)
]


def targets(smoke: bool):
    """(arch, section, model id, architecture config, tokenizer family)."""
    if smoke:
        from transformers import T5Config

        # The tiny T5 of the demo, one layer each side: every check costs half the ops.
        config = T5Config(vocab_size=2048, d_model=32, d_ff=64, d_kv=8, num_layers=1,
                          num_decoder_layers=1, num_heads=4, feed_forward_proj="relu",
                          tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
                          decoder_start_token_id=0)  # fmt: skip
        return [("tiny", "tiny", "tiny T5 (random init)", config, "t5")]
    from dialsum.models.architectures import known_config

    return [
        (sec, sec, model_id, known_config(model_id), fam) for sec, model_id, fam in ARCHITECTURES
    ]


def validate(smoke: bool, work: Path, budget_s: float, workers: int, echo) -> dict:
    from dialsum.models.setup import setup_model, tiny_texts_from
    from dialsum.training.run_data import length_report, read_tables

    started = time.perf_counter()
    out: dict = {"runs": {}, "emulated": {}, "skipped": []}
    data = gpu_runs.write_long_csvs(
        ROOT / "data/sample", work / "data", SMOKE_ROWS if smoke else ROWS
    )
    base = [f"data.{split}={path}" for split, path in data.items()]
    base += [f"training.output_dir={work / 'runs'}", *RUN_OVERRIDES]
    base += SMOKE_OVERRIDES if smoke else []
    if smoke:  # the same proportions in units of 3/16 MiB: 3, 4.5 and 7.5 MiB
        sizes = [(s * 3 * MIB // 16, f"{s * 3 / 16:g}MiB") for s in SIZES_GIB]
    else:
        sizes = [(s * GIB, f"{s}GB") for s in SIZES_GIB]
    emulations = [gpu_runs.Emulation(size, label, cuda=not smoke) for size, label in sizes]
    prepared = []
    for arch, name, model_id, config, family in targets(smoke):
        echo(f"[{arch}] model folder (random weights, tiny tokenizer)")
        texts = tiny_texts_from(gpu_runs.section(CONFIG, name, base))()
        folder = gpu_runs.write_model_folder(config, family, texts, work / arch)
        prepared.append((arch, name, model_id, [*base, f"model.name={folder}",
                                                 f"tokenizer.name={folder}"]))  # fmt: skip
    real_gpu = None if smoke else _detected_gpu()
    tasks = [prefill.PlanTask(CONFIG, name, tuple(o), real_gpu) for _, name, _, o in prepared]
    tasks += [prefill.PlanTask(CONFIG, name, (*o, *e.overrides()))
              for _, name, _, o in prepared for e in emulations]  # fmt: skip
    prefill.prefill_trace_cache(tasks, workers, echo=echo)

    ran = []
    for arch, name, model_id, overrides in prepared:
        if time.perf_counter() - started > budget_s:
            out["skipped"].append(f"{arch}: real run (time budget)")
            continue
        echo(f"[{arch}] dialsum train --max-steps 3 with evaluation, then dialsum predict")
        cfg = gpu_runs.section(CONFIG, name, overrides)
        out["runs"][arch] = {"model": model_id, **gpu_runs.real_run(cfg, work, echo=None)}
        ran.append((arch, name, overrides))
        _free()
    for arch, name, overrides in ran:
        cfg = gpu_runs.section(CONFIG, name, overrides)
        model, tokenizer = setup_model(cfg)
        train_table, _ = read_tables(cfg, dev=False, echo=lambda *_: None)
        report = length_report(cfg, train_table, tokenizer)
        rows = out["emulated"].setdefault(arch, [])
        for emulation in emulations:
            if time.perf_counter() - started > budget_s:
                out["skipped"].append(f"{arch}: emulated {emulation.label} (time budget)")
                continue
            echo(f"[{arch}] emulated {emulation.label}: the planned settings, then the largest "
                 "micro-batch that trains")  # fmt: skip
            cfg_for = lambda extra, name=name, overrides=overrides: gpu_runs.section(  # noqa: E731
                CONFIG, name, [*overrides, *extra]
            )
            search_factor = 2 if smoke else 4
            rows.append(
                gpu_runs.emulated(
                    model, tokenizer, cfg_for, report, emulation, work / "trials", search_factor
                )
            )
        del model
        _free()
    return out


def _detected_gpu():
    from dialsum.speed.gpus import detect_gpu

    return detect_gpu()


def _free() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _gib(n) -> str:
    return "-" if n is None else f"{n / GIB:.2f}"


def _ratio(r) -> str:
    return "-" if r is None else f"{r:.2f}"


def summary_table(result: dict):
    """One table: per architecture the phases of the real run (allocated / reserved), then
    the emulated GPUs (the largest micro-batch dividing the step's rows that trains /
    the planned one; OOMs at the planned settings as train/eval/predict)."""
    from rich.table import Table

    table = Table(title="plan vs run (GiB; ratios measured / planned)")
    for col in ("arch", "check", "planned", "measured", "measured/planned", "OOMs"):
        table.add_column(col, justify="left" if col in ("arch", "check") else "right")
    for arch, run in result["runs"].items():
        for phase, row in run["phases"].items():
            planned = (
                f"{_gib(row['predicted_peak_bytes'])} (req {_gib(row['planned_required_bytes'])})"
            )
            measured = f"{_gib(row['max_allocated_bytes'])} (res {_gib(row['max_reserved_bytes'])})"
            ratios = f"{_ratio(row['allocated_ratio'])} / {_ratio(row['reserved_ratio'])}"
            ooms = {"train": run["oom_recoveries"], "predict": run["predict_oom_splits"]}.get(
                phase, ""
            )
            table.add_row(
                arch,
                phase,
                planned,
                measured if run["measured"] else "not measured",
                ratios,
                str(ooms),
            )
        for row in result["emulated"].get(arch, []):
            planned = f"micro {row['planned_micro_batch']}" + (
                "" if row["planned_fits"] else " (no fit)"
            )
            divisor = row["largest_divisor_that_runs"]
            measured = f"largest {row['true_largest_micro_batch']} (divisor {divisor})"
            ratio = "-" if not divisor else f"{divisor / row['planned_micro_batch']:.2f}"
            ooms = row["ooms_at_planned"]
            oom_text = "-" if ooms is None else f"{ooms['train']}/{ooms['eval']}/{ooms['predict']}"
            if ooms and ooms.get("unrecoverable"):
                oom_text += " + failed " + ",".join(ooms["unrecoverable"])
            table.add_row(arch, f"emulated {row['gpu']}", planned, measured, ratio, oom_text)
    return table


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU (no CUDA)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    parser.add_argument("--budget-s", type=float, default=450.0, help="skip work beyond this")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes that trace the plans first (default: cores - 1; 0 with --smoke)",
    )
    args = parser.parse_args(argv)
    out_path = args.out or ROOT / "bench/results" / (
        "gpu_validate_smoke.json" if args.smoke else "gpu_validate.json"
    )
    allocator = None
    if not args.smoke:
        if not torch.cuda.is_available():
            sys.exit("gpu_validate needs a CUDA GPU; run it with --smoke on a CPU")
        from dialsum.core.torch_build import prepare_cuda_run

        allocator = prepare_cuda_run(print).to_json()  # before anything starts CUDA
    workers = args.workers
    if workers is None:
        workers = 0 if args.smoke else max(0, min((os.cpu_count() or 1) - 1, 12))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-validate-") as work:
        result = validate(
            args.smoke, Path(work), args.budget_s, workers, echo=lambda m: print(m, flush=True)
        )
    head = {
        "format": "gpu_validate/1",
        "smoke": args.smoke,
        "device": "cpu" if args.smoke else torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "allocator": allocator,
        "seconds": round(time.perf_counter() - started, 1),
    }
    result = head | result
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    from rich.console import Console

    Console(width=140).print(summary_table(result))
    print(f"wrote {out_path} ({result['seconds']}s)")
    return result


if __name__ == "__main__":
    main()
