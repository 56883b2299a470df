"""Plan vs run under DDP on the CPU: what each rank holds, planned and measured.

The planner plans a DDP rank as the single-process step plus what DDP keeps beside it
(``memory.fit.ddp_resident_bytes``: torch's ``Reducer`` bucket buffers, allocated when
the model is wrapped, and the guarded trainer's all-reduce staging buffer,
``training.distributed.reduce_staging``); evaluation under DDP carries the same bytes
(``memory.generation_batches``). This bench checks that sum against the real code.

For each model shape it runs ``bench/ddp_plan_vs_run_worker.py`` twice with the same code:

- as ``torchrun --nproc_per_node 2`` (gloo, one thread per rank): each rank runs two
  optimizer steps of the real guarded trainer at accumulation 1 (``checks.cpu_loop``'s
  ``make_trainer``: HF Trainer + accelerate wrap the model in ``DistributedDataParallel``
  inside ``trainer.train()``; the worker checks that they did) and one evaluation pass
  (beam search and the eval-loss forward on one batch per rank);
- as one plain process (no DDP) on the same shape, so DDP's share is visible.

Each phase's peak live tensor bytes is measured per rank with ``torch.profiler`` memory
events (``checks.measure.PhaseRecorder``: independent of the simulator; the worker's
docstring says which two profiler blind spots it avoids: the Trainer's copy of the
weights to ``cpu:0``, a free on gloo's thread). The prediction per rank is the
simulator's single-process step (``checks.cpu_loop.predict``, micro-batches 1,
``device="cpu"``) plus ``ddp_resident_bytes`` of the same profile - the planner's own
function, not a copy. Targets: train and optimizer within +-5 %, eval within +-10 %.

What it showed: a rank holds the single-process step plus DDP's bucket buffers (one fp32
gradient per trainable parameter: 0.99 MiB tiny, 230.8 MiB t5-60m) plus the staging
buffer, which is the largest bucket of several gradients - 0.99 MiB for the tiny model,
24.0 MiB for t5-60m - not a flat 25 MiB: ``ddp_resident_bytes`` now takes the smaller of
25 MiB and the trainable gradients' bytes (with a flat 25 MiB the tiny model at 512/64
was predicted at 1.43x its measured train peak, 5.0x its optimizer peak).

    uv run python bench/bench_plan_vs_run_ddp.py                    # tiny, t5-60m
    uv run python bench/bench_plan_vs_run_ddp.py --shapes tiny --source-len 128
    uv run python bench/bench_plan_vs_run_ddp.py --json bench/results/plan_vs_run_ddp_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_plan_vs_run_cpu import build  # noqa: E402 - the sibling bench's model shapes

from dialsum.checks.cpu_loop import Setup, compare, predict  # noqa: E402
from dialsum.memory.fit import ddp_resident_bytes  # noqa: E402
from dialsum.trace.profile import TrainOptions, TrainShape  # noqa: E402
from dialsum.trace.step_trace import simulate_train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("ddp_plan_vs_run_worker.py")
PHASES = ("train", "optimizer", "eval")
MIB = 2**20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch(spec: dict, folder: Path, ranks: int, timeout_s: int) -> list[dict]:
    """Run the worker on ``spec`` as one plain process (``ranks`` 1) or under torchrun;
    the ranks' JSON results, rank 0 first."""
    folder.mkdir(parents=True, exist_ok=True)
    spec_path = folder / "spec.json"
    spec_path.write_text(json.dumps({**spec, "out": str(folder)}))
    if ranks == 1:
        command = [sys.executable, str(WORKER), str(spec_path)]
    else:
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks),
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
            str(WORKER), str(spec_path),
        ]  # fmt: skip
    # One thread per process, in both runs: two ranks share the machine's cores, and the
    # plain run then uses the same kernels (thread count can change a kernel's scratch).
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    log = folder / "log.txt"
    with log.open("w") as handle:
        code = subprocess.run(
            command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout_s
        ).returncode
    if code != 0:
        sys.exit(f"worker failed ({code}):\n" + "".join(log.read_text().splitlines(True)[-30:]))
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in range(ranks)]


def print_rows(rows: dict[str, dict], single: dict[str, int] | None = None) -> None:
    for phase, row in rows.items():
        share = ""
        if single is not None:
            share = f"  (DDP share {(row['measured_bytes'] - single[phase]) / MIB:7.2f} MiB)"
        print(
            f"    {phase:9s} predicted {row['predicted_bytes'] / MIB:9.2f} MiB  measured "
            f"{row['measured_bytes'] / MIB:9.2f} MiB  ratio {row['ratio']:.3f}  "
            f"{'ok' if row['inside'] else 'OUTSIDE'} (+-{row['tolerance']:.0%}){share}"
        )


def run_shape(name: str, args: argparse.Namespace, folder: Path) -> dict:
    # Micro-batch x accumulation 1 per rank: the step's peak comes before any .grad
    # exists, with DDP's buckets already allocated (the case the planner adds them to).
    setup = Setup(args.source_len, args.target_len, args.batch, 1, args.eval_batch, args.beams,
                  args.target_len, args.optimizer)  # fmt: skip
    model = build(name, None, ["model.dropout=0.0"]).model
    config, params = model.config, sum(p.numel() for p in model.parameters())
    del model
    print(
        f"{name}: {params / 1e6:.2f}M parameters, {setup.source_len}/{setup.target_len} "
        f"tokens, micro-batch {setup.micro} x 1 per rank, eval batch {setup.eval_batch} per "
        f"rank, {setup.beams} beams, {setup.optimizer}",
        flush=True,
    )
    spec = {"shape": name, "setup": setup.__dict__}
    start = time.perf_counter()
    (single,) = launch(spec, folder / name / "single", 1, args.timeout)
    single_s = time.perf_counter() - start
    ranks = launch(spec, folder / name / "ddp", 2, args.timeout)
    ddp_s = time.perf_counter() - start - single_s
    for result in ranks:
        # The case exists only if the Trainer really ran two processes and wrapped the model.
        if not (result["num_processes"] == 2 and result["is_ddp"]):
            sys.exit(f"rank {result['rank']} did not run under DDP: {result}")

    # The prediction: the single-process step as the planner simulates it, plus DDP's
    # resident bytes from the same profile (the planner's formula).
    profile = simulate_train(
        config,
        TrainShape(setup.micro, setup.source_len, setup.target_len),
        TrainOptions(optimizer=setup.optimizer, device="cpu", micro_batches=1),  # type: ignore[arg-type]
    )
    resident = ddp_resident_bytes(profile)
    single_pred = predict(config, setup, single["optimizer_state_bytes"])
    single_rows = compare(single_pred, single["peaks"], PHASES)
    print("  one process (no DDP):")
    print_rows(single_rows)
    print(
        f"  DDP resident predicted {resident / MIB:.2f} MiB ({profile.trainable_params:,} "
        f"trainable parameters x 4 B + staging), per rank:"
    )
    entry: dict = {
        "params": params,
        "setup": setup.__dict__,
        "predicted_ddp_resident_bytes": resident,
        "single": {"phases": single_rows, "run": single},
        "ranks": {},
    }
    for result in ranks:
        predicted = predict(config, setup, result["optimizer_state_bytes"])
        rows = compare({p: predicted[p] + resident for p in PHASES}, result["peaks"], PHASES)
        ddp = result.get("ddp", {})
        print(
            f"  rank {result['rank']} ({result['wrapper']}, buckets {ddp.get('bucket_sizes')} "
            f"B, staging {result['staging_bytes'] / MIB:.2f} MiB, before the first step "
            f"{result['before_first_step_bytes'] / MIB:.2f} MiB, unseen free corrected "
            f"{result['unseen_free_bytes'] / MIB:.2f} MiB):"
        )
        print_rows(rows, single["peaks"])
        entry["ranks"][str(result["rank"])] = {"phases": rows, "run": result}
    entry["seconds"] = {"single": round(single_s, 1), "ddp": round(ddp_s, 1)}
    print(f"  {single_s:.0f} s one process, {ddp_s:.0f} s DDP", flush=True)
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--shapes", nargs="+", default=["tiny", "t5-60m"], choices=["tiny", "t5-60m", "bart-60m"]
    )
    parser.add_argument("--source-len", type=int, default=512)
    parser.add_argument("--target-len", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2, help="micro-batch per rank")
    parser.add_argument("--eval-batch", type=int, default=2, help="eval batch per rank")
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument(
        "--optimizer", default="adamw", choices=["adamw", "adamw_foreach", "adafactor", "sgd"]
    )
    parser.add_argument("--timeout", type=int, default=900, help="seconds per launch")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    command = "uv run python bench/bench_plan_vs_run_ddp.py " + " ".join(sys.argv[1:])
    results: dict = {"command": command.strip(), "torch": torch.__version__, "shapes": {}}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.shapes:
            results["shapes"][name] = run_shape(name, args, Path(tmp))
    results["seconds"] = round(time.perf_counter() - start, 1)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    inside = all(
        row["inside"]
        for shape in results["shapes"].values()
        for rank in [shape["single"], *shape["ranks"].values()]
        for row in rank["phases"].values()
    )
    print(f"{results['seconds']:.0f} s in all")
    print("all phases inside the targets" if inside else "some phases OUTSIDE the targets")


if __name__ == "__main__":
    main()
