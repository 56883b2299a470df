"""Time model on the CPU: predicted vs measured step time of the real guarded trainer.

No GPU is needed to check the time model's arithmetic end to end. For each setting this
runs optimizer steps of the real ``GuardedSeq2SeqTrainer`` (``checks.cpu_loop.make_trainer``:
fixed-length rows, its micro-batches, token-sum loss and optimizer) on the CPU, times
them with the trainer's own ``StepTimer`` (the first step is warm-up), and predicts the
same step from the traced cost (``simulate_train`` with ``device="cpu"``: FLOPs, bytes
moved, kernels) and this CPU's measured speeds (``device_specs.measured_cpu_spec``: GEMM
peak, copy bandwidth, per-kernel issue time).

1. Uncalibrated: the default fp32 efficiency (``timing.DEFAULT_EFFICIENCY``).
2. Calibration: the achieved efficiency of one setting of the ~60M model (what
   ``dialsum probe`` does on a GPU), then every *other* setting predicted with it.

On a shared machine other processes change the CPU's speed from minute to minute, so each
setting re-measures the CPU's speeds right before its steps and is predicted with them,
and both sides take the best case (the fastest of the timed steps, as the speeds are the
best of a few runs). Prints predicted / measured per setting (goal after calibration:
within +-25 %) and writes ``bench/results/time_model_cpu.json``.

    uv run python bench/bench_time_model.py
    uv run python bench/bench_time_model.py --steps 5 --threads 0   # all cores
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_plan_vs_run_cpu import Bench, build  # noqa: E402 - the same models and tokenizer

from dialsum.checks.cpu_loop import Setup, make_trainer  # noqa: E402
from dialsum.speed.device_specs import measured_cpu_spec  # noqa: E402
from dialsum.speed.step_time import (  # noqa: E402
    DEFAULT_EFFICIENCY,
    achieved_step_efficiency,
    step_time_of,
    train_step_cost,
)
from dialsum.trace.profile import TrainOptions, TrainShape  # noqa: E402
from dialsum.trace.step_trace import simulate_train  # noqa: E402
from dialsum.training.step_clock import StepTimer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 0.25


@dataclass(frozen=True)
class Case:
    model: str
    setup: Setup
    calibrate: bool = False


def _setup(source: int, target: int, micro: int, accumulation: int) -> Setup:
    return Setup(source, target, micro, accumulation, eval_batch=2, beams=1, new_tokens=4)


CASES = (
    Case("t5-60m", _setup(128, 32, 2, 2), calibrate=True),
    Case("t5-60m", _setup(256, 64, 4, 1)),
    Case("t5-60m", _setup(64, 16, 1, 4)),
    Case("tiny", _setup(128, 32, 8, 1)),
    Case("tiny", _setup(256, 64, 16, 1)),
    Case("tiny", _setup(64, 16, 2, 4)),
)


def measure_s(bench: Bench, setup: Setup, steps: int, out: Path) -> float:
    """Fastest of ``steps`` optimizer steps of the guarded trainer (after a warm-up one)."""
    timer = StepTimer()
    trainer = make_trainer(bench.model, bench.tokenizer, bench.cfg, setup, out, [timer])
    trainer.args.max_steps = steps + 1
    trainer.train()
    del trainer
    gc.collect()
    return min(timer.seconds[1:])


def profile_of(bench: Bench, setup: Setup):
    """The traced step (CPU kernels), as ``plan --gpu cpu`` traces it."""
    options = TrainOptions(device="cpu", micro_batches=2 if setup.accumulation > 1 else 1)
    shape = TrainShape(setup.micro, setup.source_len, setup.target_len)
    return simulate_train(bench.model.config, shape, options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per setting")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: steady on a shared machine; 0 = torch's default)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/time_model_cpu.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    print(f"CPU: {torch.get_num_threads()} thread(s)")
    benches = {name: build(name, None, []) for name in sorted({c.model for c in CASES})}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            bench, setup = benches[case.model], case.setup
            profile = profile_of(bench, setup)
            cost = train_step_cost(profile, setup.accumulation)
            measured_cpu_spec.cache_clear()
            spec = measured_cpu_spec()  # this minute's speeds
            measured = measure_s(bench, setup, args.steps, Path(tmp))
            rows.append(
                {
                    "case": case,
                    "profile": profile,
                    "cost": cost,
                    "spec": spec,
                    "measured_s": measured,
                }
            )
            print(
                f"  {case.model} micro {setup.micro} x {setup.accumulation} at "
                f"{setup.source_len}/{setup.target_len}: measured {measured:.4f} s, "
                f"{cost.flops / 1e9:.1f} GFLOP, {cost.bytes_moved / 1e9:.2f} GB, "
                f"{cost.kernels} kernels; CPU {spec.peak_flops['fp32'] / 1e9:.0f} GFLOP/s, "
                f"{spec.bandwidth_bytes_per_s / 1e9:.1f} GB/s, {spec.kernel_issue_s * 1e6:.1f} us"
            )
    calibration = next(r for r in rows if r["case"].calibrate)
    efficiency = achieved_step_efficiency(
        calibration["profile"],
        calibration["case"].setup.accumulation,
        calibration["spec"],
        "fp32",
        calibration["measured_s"],
    )
    print(
        f"\ncalibrated on {calibration['case'].model} micro {calibration['case'].setup.micro}: "
        f"achieved efficiency {efficiency:.1%} (default {DEFAULT_EFFICIENCY['fp32']:.0%})\n"
    )
    columns = ("measured", "default", "ratio", "calib.", "ratio")
    print(f"{'setting':38s} " + " ".join(f"{c:>9s}" for c in columns))
    results = []
    for row in rows:
        case, setup, spec = row["case"], row["case"].setup, row["spec"]
        default = step_time_of(row["profile"], setup.accumulation, spec, "fp32").seconds
        calibrated = step_time_of(
            row["profile"], setup.accumulation, spec, "fp32", efficiency
        ).seconds
        measured = row["measured_s"]
        label = (
            f"{case.model} {setup.micro}x{setup.accumulation} {setup.source_len}/{setup.target_len}"
            + (" (calibration)" if case.calibrate else "")
        )
        print(
            f"{label:38s} {measured:9.4f} {default:9.4f} {default / measured:9.2f} "
            f"{calibrated:9.4f} {calibrated / measured:9.2f}"
        )
        results.append(
            {
                "model": case.model,
                "source_len": setup.source_len,
                "target_len": setup.target_len,
                "micro_batch": setup.micro,
                "accumulation": setup.accumulation,
                "calibration_setting": case.calibrate,
                "flops": row["cost"].flops,
                "bytes_moved": row["cost"].bytes_moved,
                "kernels": row["cost"].kernels,
                "cpu_peak_flops": spec.peak_flops["fp32"],
                "cpu_bandwidth_bytes_per_s": spec.bandwidth_bytes_per_s,
                "cpu_kernel_issue_s": spec.kernel_issue_s,
                "measured_s": round(measured, 5),
                "predicted_default_s": round(default, 5),
                "predicted_calibrated_s": round(calibrated, 5),
                "ratio_default": round(default / measured, 3),
                "ratio_calibrated": round(calibrated / measured, 3),
                "inside": abs(calibrated / measured - 1) <= TOLERANCE,
            }
        )
    checked = [r for r in results if not r["calibration_setting"]]
    inside = sum(r["inside"] for r in checked)
    print(
        f"\n{inside}/{len(checked)} settings within +-{TOLERANCE:.0%} after calibration; "
        f"took {time.perf_counter() - started:.0f} s"
    )
    summary = {
        "cpu_threads": torch.get_num_threads(),
        "calibrated_efficiency": efficiency,
        "tolerance": TOLERANCE,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
