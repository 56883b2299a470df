"""SIGTERM during training: a checkpoint at the next step boundary, one line, the lock
released, exit 143, and ``--resume`` continues from that checkpoint (issue 18, point 5)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from dialsum.core.runs import checkpoint_complete

ROOT = Path(__file__).resolve().parents[2]


def _train(output_dir: Path, *extra: str) -> list[str]:
    sets = [
        "data.max_train_samples=16", "training.effective_batch_size=8",
        "training.micro_batch_size=8", "training.report_to=[none]",
        "training.logging_steps=1", "training.save_strategy=no",
    ]  # fmt: skip
    argv = [sys.executable, "-m", "dialsum", "train", "-c", str(ROOT / "config.yaml")]
    argv += ["-s", "tiny", "--output-dir", str(output_dir), *extra]
    for item in sets:
        argv += ["--set", item]
    return argv


def _wait_for(predicate, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_sigterm_saves_at_the_next_step_releases_the_lock_and_exits_143(tmp_path: Path) -> None:
    # Far more steps than the test waits for, and no saving of its own: only the SIGTERM saves.
    proc = subprocess.Popen(
        _train(tmp_path, "--max-steps", "100000"),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # plan.json is written right before the Trainer starts its steps.
        _wait_for(lambda: any(tmp_path.glob("tiny/*/plan.json")), 300)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr[-2000:]
    (run,) = [p for p in (tmp_path / "tiny").iterdir()]
    lines = [line for line in stderr.splitlines() if "SIGTERM" in line]
    assert len(lines) == 1 and lines[0].startswith("stopped by SIGTERM at step "), lines
    (checkpoint,) = list((run / "checkpoints").iterdir())
    assert checkpoint_complete(checkpoint)
    assert f"saved {checkpoint}" in lines[0]
    assert not (run / "run.lock").exists()
    assert not (run / "best").exists()  # stopped, not finished: no evaluation, no best/
    step = int(checkpoint.name.removeprefix("checkpoint-"))
    # The saved run continues from its checkpoint (to a near end, for time).
    done = subprocess.run(
        _train(
            tmp_path, "--resume", str(run), "--override-on-resume", "--max-steps", str(step + 1)
        ),
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (run / "best" / "model.safetensors").is_file()
