"""Two-process DDP on CPU (gloo, torchrun): same weights on both ranks, the same as one
process with the same effective batch, and an OOM on one rank shrinks both ranks.

One torchrun launch runs both DDP trainings (start-up dominates a tiny run). Every step
sees all 8 training rows (effective batch 8 = max_train_samples), so DDP's
DistributedSampler and a single process's RandomSampler feed the same set of rows per step
whatever their order; SGD makes the update proportional to the gradient (see
tests/test_guarded_trainer.py) and dropout is off.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dialsum.core.config_load import load_section
from dialsum.core.runs import latest_run
from dialsum.training.oom_guard import GuardState
from dialsum.training.recipe import run_training

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("ddp_worker.py")
LAUNCH_TIMEOUT_S = 420  # a hang (ranks waiting on each other) fails the test, not the suite

COMMON = [
    "data.max_train_samples=8",
    "training.effective_batch_size=8",
    "training.micro_batch_size=4",
    "training.max_steps=2",
    "training.optimizer=sgd",
    "training.learning_rate=0.5",
    "training.group_by_length=false",
    "training.report_to=[none]",
    "training.eval_strategy=no",
    "training.save_strategy=no",
    "training.logging_steps=1",
    "model.dropout=0.0",
]


# Evaluation once, after training: 4 rows, 2 per rank, in one batch of 2 per rank.
EVAL = [
    "training.eval_strategy=steps",
    "training.eval_steps=1000",
    "data.max_eval_samples=4",
    "training.eval_batch_size=2",
    "inference.max_new_tokens=4",
]


def cli_args(output_dir: Path, *extra: str) -> list[str]:
    args = ["train", "-c", str(ROOT / "config.yaml"), "-s", "tiny"]
    for item in [*COMMON, f"training.output_dir={output_dir}", *extra]:
        args += ["--set", item]
    return args


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch(spec_path: Path, log: Path) -> int:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(WORKER),
        str(spec_path),
    ]
    # One thread per rank: two ranks share the test machine's cores.
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    with log.open("w") as handle:
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            return proc.wait(timeout=LAUNCH_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"DDP run did not finish in {LAUNCH_TIMEOUT_S}s (hang?); log: {log}")


@pytest.fixture(scope="module")
def ddp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    # The single-process reference runs first: it also fills the tiny-model cache the
    # ranks then load (DIALSUM_CACHE_DIR is inherited).
    single = load_section(
        ROOT / "config.yaml", "tiny", [*COMMON, f"training.output_dir={out}/single"]
    )
    result = run_training(single, echo=lambda *_: None)
    torch.save(load_file(str(result.run.best / "model.safetensors")), out / "single.pt")
    spec = {
        "out": str(out),
        "runs": [
            {"name": "plain", "argv": cli_args(out / "plain-runs")},
            {"name": "oom", "argv": cli_args(out / "oom-runs"), "oom_rank": 1, "oom_above": 2},
            {
                "name": "eval_oom",
                "argv": cli_args(out / "eval-oom-runs", *EVAL),
                "oom_rank": 1,
                "oom_above": 1,
                "oom_phase": "eval",
            },
        ],
    }
    spec_path = out / "spec.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    code = launch(spec_path, out / "torchrun.log")
    assert code == 0, (out / "torchrun.log").read_text(encoding="utf-8")[-4000:]
    return out


def rank_weights(out: Path, name: str, rank: int) -> dict[str, torch.Tensor]:
    return torch.load(out / name / f"rank{rank}.pt")


def rank_record(out: Path, name: str, rank: int) -> dict:
    return json.loads((out / name / f"rank{rank}.json").read_text(encoding="utf-8"))


def assert_same_weights(a: dict, b: dict, **tolerance) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key, **tolerance)


def test_ddp_ranks_agree_and_match_a_single_process(ddp: Path) -> None:
    w0, w1 = rank_weights(ddp, "plain", 0), rank_weights(ddp, "plain", 1)
    assert_same_weights(w0, w1, rtol=0, atol=0)  # bitwise: gradients were averaged
    for rank in (0, 1):
        record = rank_record(ddp, "plain", rank)
        # 8 = 4 rows per rank x 1 micro-batch x 2 ranks, two steps of one micro-batch.
        assert record["world_size"] == 2
        assert record["per_device_train_batch_size"] == 4
        assert record["step_attempts"] == [4, 4]
    # Rank 0's saved model (the run folder's best/) is the model it trained.
    (run,) = list((ddp / "plain-runs" / "tiny").iterdir())
    saved = load_file(str(run / "best" / "model.safetensors"))
    assert_same_weights(saved, {k: w0[k] for k in saved}, rtol=0, atol=0)
    single = torch.load(ddp / "single.pt")
    assert_same_weights(single, {k: w0[k] for k in single}, rtol=1e-4, atol=1e-6)


def test_ddp_run_folder_is_written_once_by_rank_zero(ddp: Path) -> None:
    runs = list((ddp / "plain-runs" / "tiny").iterdir())
    assert len(runs) == 1  # both ranks used the folder rank 0 created
    names = sorted(p.name for p in runs[0].iterdir())
    assert names == [
        "best",
        "checkpoints",
        "config.yaml",
        "guard.json",
        "inputs.json",
        "metrics.json",
        "plan.json",
    ]
    plan = json.loads((runs[0] / "plan.json").read_text(encoding="utf-8"))
    assert (plan["world_size"], plan["per_step_rows"], plan["micro_batch_size"]) == (2, 4, 4)
    assert plan["gradient_accumulation_steps"] == 1


def test_oom_on_one_rank_shrinks_both_ranks_together(ddp: Path) -> None:
    records = [rank_record(ddp, "oom", rank) for rank in (0, 1)]
    for record in records:
        # Step 1: micro-batch 4 fails on rank 1, both redo it at 2; step 2 runs at 2.
        assert record["step_attempts"] == [4, 2, 2]
        assert record["events"] == [[0, 4, 2]]
        assert record["micro_batch_size"] == 2
    run = latest_run(ddp / "oom-runs", "tiny")
    state = GuardState.load(run.guard)
    assert [(e.old_batch, e.new_batch) for e in state.events] == [(4, 2)]
    assert state.events[0].message == "a peer rank ran out of memory"  # rank 0's view
    w0, w1 = rank_weights(ddp, "oom", 0), rank_weights(ddp, "oom", 1)
    assert_same_weights(w0, w1, rtol=0, atol=0)
    # The redo at a smaller micro-batch computes the same step.
    assert_same_weights(w0, rank_weights(ddp, "plain", 0), rtol=1e-5, atol=1e-6)


def test_eval_oom_on_rank_one_reaches_rank_zeros_guard_file(ddp: Path) -> None:
    # Rank 1 halves its eval batch 2 -> 1; rank 0, which writes guard.json, never ran out
    # of memory, yet must keep the smaller batch for the next evaluation and --resume.
    records = [rank_record(ddp, "eval_oom", rank) for rank in (0, 1)]
    assert [r["eval_batch_size"] for r in records] == [1, 1]
    state = GuardState.load(latest_run(ddp / "eval-oom-runs", "tiny").guard)
    assert state.eval_batch_size == 1
    assert [(e.phase, e.old_batch, e.new_batch, e.message) for e in state.events] == [
        ("eval", 2, 1, "a peer rank ran out of memory")
    ]
