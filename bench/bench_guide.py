"""Time `dialsum guide` with the real simulator: cold trace cache, then warm.

    uv run python bench/bench_guide.py [--gpus v100-16gb a100-40gb] [--sections eenzeenee]

Runs the full guide (default: every real section x the whole GPU catalog) twice, each in a
fresh Python process as a user would run the command: first with an empty trace cache
(``DIALSUM_CACHE_DIR`` pointing to a new temporary folder), then again with the same
folder. Prints both times and their ratio against the targets (cold <= 60 s, warm <= 5 s).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config.yaml"
COLD_TARGET_S = 60.0
WARM_TARGET_S = 5.0


def _child(args: argparse.Namespace) -> None:
    """One guide build; prints its JSON summary as the last stdout line."""
    from dialsum.report.guide import build_guide

    result = build_guide(
        args.config,
        sections=args.sections,
        gpus=args.gpus,
        out=Path(args.child_out),
        progress=True,
    )
    rows = sum(len(plans) for plans in result.plans.values())
    print(json.dumps({"seconds": result.seconds, "rows": rows}))


def _run_once(args: argparse.Namespace, cache_dir: Path, out: Path) -> tuple[float, dict]:
    cmd = [sys.executable, __file__, "--child-out", str(out), "--config", str(args.config)]
    if args.sections:
        cmd += ["--sections", *args.sections]
    if args.gpus:
        cmd += ["--gpus", *args.gpus]
    env = {**os.environ, "DIALSUM_CACHE_DIR": str(cache_dir)}
    start = time.perf_counter()
    # stderr (the progress bars) goes straight to the terminal.
    done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True)
    wall_s = time.perf_counter() - start
    return wall_s, json.loads(done.stdout.strip().splitlines()[-1])


def _verdict(seconds: float, target_s: float) -> str:
    ratio = seconds / target_s
    return f"{seconds:7.1f} s  ({ratio:.2f}x the {target_s:.0f} s target: " + (
        "ok)" if ratio <= 1 else "TOO SLOW)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--sections", nargs="*", default=None, help="default: real models")
    parser.add_argument("--gpus", nargs="*", default=None, help="default: the whole catalog")
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_out:
        _child(args)
        return
    with tempfile.TemporaryDirectory(prefix="dialsum-bench-guide-") as tmp:
        cache_dir, out = Path(tmp) / "traces", Path(tmp) / "guide" / "guide.md"
        cold_wall, cold = _run_once(args, cache_dir, out)
        warm_wall, warm = _run_once(args, cache_dir, out)
        traces = len(list(cache_dir.glob("*.json")))
    print(f"guide: {cold['rows']} (section, GPU) plans, {traces} cached traces")
    print("                 build_guide        process (incl. imports)")
    print(f"cold  {_verdict(cold['seconds'], COLD_TARGET_S)}   {cold_wall:7.1f} s")
    print(f"warm  {_verdict(warm['seconds'], WARM_TARGET_S)}   {warm_wall:7.1f} s")
    print(f"cold / warm: {cold['seconds'] / max(warm['seconds'], 1e-9):.1f}x")


if __name__ == "__main__":
    main()
