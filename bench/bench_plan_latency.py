"""How long `dialsum plan` and `dialsum guide` take, cold and warm, against the targets.

    uv run python bench/bench_plan_latency.py [--baseline /path/to/old/checkout] [--repeat 3]
        [--skip-plans] [--skip-large] [--skip-guide] [--gpu rtx3080-10gb]
        [--out bench/results/plan_latency.json]

Every measurement is a fresh Python process, as a user runs the command:

- `dialsum plan -c config.yaml -s SECTION --gpu GPU` for the three built-in sections, cold
  (an empty trace cache: ``DIALSUM_CACHE_DIR`` is a new folder) and warm (the same folder
  again);
- a large model: a local folder holding only the ``config.json`` of a 24-layer mT5
  (mT5-large's shape, 1.2B parameters), planned with ``--model FOLDER`` cold and warm;
- `dialsum guide --sections eenzeenee,xlsum_mt5,kobart` (the 3 seq2seq sections x the 10
  catalog GPUs) cold and warm, each section of its Markdown compared byte for byte with
  the same section of ``docs/guide.md`` and each section of its YAML with ``docs/guide.yaml``
  (``docs/`` holds every section of ``config.yaml``, the decoder-only LLMs too);
- with ``--baseline``: the same cold/warm eenzeenee plan in another checkout (its own
  ``.venv``; e.g. ``git worktree add /tmp/base 6cd0a3b && (cd /tmp/base && uv sync)``),
  interleaved with ours, so that the ratio compares two runs under the same load.

Bytecode is compiled once first (into a private ``PYTHONPYCACHEPREFIX``, so no checkout
or virtual environment is written to): a user's second run never recompiles. The machine
may be shared: the load average is printed with every run; ratios measured in the same
run are the figure to read, absolute seconds only on an idle machine. CPU seconds (user +
system of the child) are printed too: they move less with the load than wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("eenzeenee", "xlsum_mt5", "kobart")
TARGETS_S = {"plan cold": 15.0, "plan warm": 1.5, "guide cold": 60.0, "guide warm": 5.0}

# mT5-large's published shape: 24 + 24 layers, 1.23B parameters with the untied head.
LARGE_MT5 = {
    "model_type": "mt5",
    "architectures": ["MT5ForConditionalGeneration"],
    "d_model": 1024,
    "d_ff": 2816,
    "d_kv": 64,
    "num_heads": 16,
    "num_layers": 24,
    "num_decoder_layers": 24,
    "vocab_size": 250112,
    "feed_forward_proj": "gated-gelu",
    "relative_attention_num_buckets": 32,
    "tie_word_embeddings": False,
    "decoder_start_token_id": 0,
    "pad_token_id": 0,
    "eos_token_id": 1,
}


def _python(checkout: Path) -> str:
    venv = checkout / ".venv" / "bin" / "python"
    return str(venv) if venv.is_file() else sys.executable


def _env(cache_dir: Path, pycache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "DIALSUM_CACHE_DIR": str(cache_dir), "PYTHONPYCACHEPREFIX": str(pycache)}


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> dict:
    """Wall and CPU seconds of one process; its stdout for comparisons."""
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-3000:])
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "load": load, "stdout": done.stdout}


# Tiny config-only models of the three families: planning them once runs every code path
# a real plan runs (transformers imports its modeling code lazily), in seconds.
_TINY = {
    "t5": {"model_type": "t5", "feed_forward_proj": "gated-gelu"},
    "mt5": {"model_type": "mt5", "feed_forward_proj": "gated-gelu"},
    "bart": {"model_type": "bart", "encoder_layers": 1, "decoder_layers": 1,
             "encoder_attention_heads": 2, "decoder_attention_heads": 2,
             "encoder_ffn_dim": 32, "decoder_ffn_dim": 32, "max_position_embeddings": 128},
}  # fmt: skip
_TINY_COMMON = {"vocab_size": 128, "d_model": 16, "d_ff": 32, "d_kv": 8, "num_layers": 1,
                "num_heads": 2, "decoder_start_token_id": 0, "pad_token_id": 0}  # fmt: skip


def _compile_bytecode(checkout: Path, pycache: Path) -> None:
    """Import and run once what a plan imports and runs, so that every timed run finds
    bytecode (a user's second run never recompiles)."""
    script = (
        "import dialsum, torch, transformers, matplotlib.pyplot\n"
        "import importlib, pkgutil\n"
        "for m in pkgutil.walk_packages(dialsum.__path__, 'dialsum.'):\n"
        "    try: importlib.import_module(m.name)\n"
        "    except Exception: pass\n"
    )
    env = _env(Path(tempfile.mkdtemp()), pycache)
    subprocess.run([_python(checkout), "-c", script], cwd=checkout, env=env, capture_output=True)
    for family, fields in _TINY.items():
        folder = Path(tempfile.mkdtemp(prefix=f"dialsum-tiny-{family}-"))
        (folder / "config.json").write_text(json.dumps({**_TINY_COMMON, **fields}))
        plan = ["--model", str(folder), "--source-len", "32", "--target-len", "8",
                "--effective-batch", "4", "--gpu", "a100-40gb"]  # fmt: skip
        subprocess.run(_plan_cmd(checkout, plan), cwd=checkout, env=env, capture_output=True)


def _plan_cmd(checkout: Path, args: list[str]) -> list[str]:
    return [_python(checkout), "-m", "dialsum", "plan", *args]


def _cold_warm(checkout: Path, args: list[str], pycache: Path) -> tuple[dict, dict]:
    cache = Path(tempfile.mkdtemp(prefix="dialsum-bench-"))
    cold = _run(_plan_cmd(checkout, args), checkout, _env(cache, pycache))
    warm = _run(_plan_cmd(checkout, args), checkout, _env(cache, pycache))
    if cold["stdout"] != warm["stdout"]:
        raise SystemExit(f"cold and warm plans print different answers: {args}")
    return cold, warm


def _line(name: str, run: dict, target: float | None = None, note: str = "") -> str:
    text = f"  {name:<24} {run['wall_s']:7.2f} s wall {run['cpu_s']:7.2f} s CPU"
    text += f"  load {run['load']:.1f}"
    if target is not None:
        ok = run["wall_s"] <= target
        text += f"  target {target:g} s: " + ("met" if ok else "NOT MET")
    return text + (f"  {note}" if note else "")


def _median(runs: list[dict]) -> dict:
    return {key: statistics.median(r[key] for r in runs) for key in ("wall_s", "cpu_s", "load")}


def bench_plans(args: argparse.Namespace, pycache: Path, report: dict) -> None:
    gpu = ["--gpu", args.gpu]
    print(f"\nplan, -c config.yaml --gpu {args.gpu} (median of {args.repeat}):")
    for section in args.sections:
        plan_args = ["-c", "config.yaml", "-s", section, *gpu]
        ours, base = [], []
        for _ in range(args.repeat):
            ours.append(_cold_warm(ROOT, plan_args, pycache))
            if args.baseline and section == "eenzeenee":
                base.append(_cold_warm(args.baseline, plan_args, pycache))
        entry: dict = {}
        for i, phase in enumerate(("cold", "warm")):
            run = _median([pair[i] for pair in ours])
            entry[phase] = run
            target = TARGETS_S[f"plan {phase}"] if section == "eenzeenee" else None
            note = ""
            if base:
                old = _median([pair[i] for pair in base])
                entry[f"baseline_{phase}"] = old
                ratio = run["wall_s"] / old["wall_s"]
                cpu_ratio = run["cpu_s"] / old["cpu_s"]
                entry[f"ratio_{phase}"] = ratio
                verdict = ("met" if ratio <= 1.0 else "NOT MET") if phase == "cold" else ""
                note = (
                    f"baseline {old['wall_s']:.2f} s wall {old['cpu_s']:.2f} s CPU -> ratio "
                    f"{ratio:.2f} wall, {cpu_ratio:.2f} CPU"
                    + (f" (<= 1.0: {verdict})" if verdict else "")
                )
            print(_line(f"{section} {phase}", run, target, note))
        report["plans"][section] = entry


def bench_large_model(args: argparse.Namespace, pycache: Path, report: dict) -> None:
    folder = Path(tempfile.mkdtemp(prefix="dialsum-mt5-large-"))
    (folder / "config.json").write_text(json.dumps(LARGE_MT5, indent=2))
    plan_args = ["--model", str(folder), "--source-len", "512", "--target-len", "64",
                 "--effective-batch", "32", "--gpu", "a100-80gb"]  # fmt: skip
    print("\nlarge model: config-only 24-layer mT5 (1.2B parameters), --gpu a100-80gb:")
    cold, warm = _cold_warm(ROOT, plan_args, pycache)
    print(_line("mt5-large-shape cold", cold))
    print(_line("mt5-large-shape warm", warm, TARGETS_S["plan warm"]))
    report["large_model"] = {"cold": cold, "warm": warm}


def _markdown_sections(text: str) -> dict[str, str]:
    """``## name`` -> that section's Markdown, up to the next ``## ``."""
    parts = re.split(r"^## ", text, flags=re.MULTILINE)[1:]
    return {part.split("\n", 1)[0].strip(): part for part in parts}


def _same_as_docs(out: Path, sections: list[str]) -> bool:
    """Each section of the guide written to ``out`` equals its section in ``docs/``."""
    docs_md = _markdown_sections((ROOT / "docs" / "guide.md").read_text())
    ours_md = _markdown_sections(out.read_text())
    docs_yaml = yaml.safe_load((ROOT / "docs" / "guide.yaml").read_text())["sections"]
    ours_yaml = yaml.safe_load(out.with_suffix(".yaml").read_text())["sections"]
    return all(
        ours_md.get(name) == docs_md.get(name) and ours_yaml.get(name) == docs_yaml.get(name)
        for name in sections
    )


def bench_guide(args: argparse.Namespace, pycache: Path, report: dict) -> None:
    cache = Path(tempfile.mkdtemp(prefix="dialsum-bench-guide-"))
    names = ",".join(SECTIONS)
    print(f"\nguide --sections {names} (x 10 catalog GPUs), compared with docs/:")
    entry: dict = {"sections": list(SECTIONS)}
    for phase in ("cold", "warm"):
        out = Path(tempfile.mkdtemp(prefix="dialsum-guide-")) / "guide.md"
        cmd = [_python(ROOT), "-m", "dialsum", "guide", "-c", "config.yaml",
               "--sections", names, "--out", str(out)]  # fmt: skip
        run = _run(cmd, ROOT, _env(cache, pycache))
        same = _same_as_docs(out, list(SECTIONS))
        run["identical_to_docs"] = same
        entry[phase] = run
        note = "each section's Markdown and YAML " + (
            "identical to docs/" if same else "DIFFER from docs/"
        )
        print(_line(f"guide {phase}", run, TARGETS_S[f"guide {phase}"], note))
    report["guide"] = entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", type=Path, help="another checkout to compare with")
    parser.add_argument("--repeat", type=int, default=1, help="runs per plan (median)")
    parser.add_argument("--gpu", default="rtx3080-10gb")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS))
    parser.add_argument("--skip-plans", action="store_true")
    parser.add_argument("--skip-guide", action="store_true")
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument("--out", type=Path, help="write the numbers as JSON")
    args = parser.parse_args()
    pycache = Path(tempfile.mkdtemp(prefix="dialsum-pycache-"))
    print(f"{os.cpu_count()} CPUs; load average at start {os.getloadavg()}")
    for checkout in [ROOT] + ([args.baseline] if args.baseline else []):
        _compile_bytecode(checkout, pycache)
    report: dict = {"cpus": os.cpu_count(), "plans": {}}
    if not args.skip_plans:
        bench_plans(args, pycache, report)
    if not args.skip_large:
        bench_large_model(args, pycache, report)
    if not args.skip_guide:
        bench_guide(args, pycache, report)
    print(f"\nload average at the end {os.getloadavg()}")
    if args.out:
        args.out.write_text(json.dumps(_without_stdout(report), indent=2) + "\n")


def _without_stdout(value):
    """``value`` with every run's printed output left out (temp paths, long text)."""
    if isinstance(value, dict):
        return {k: _without_stdout(v) for k, v in value.items() if k != "stdout"}
    return value


if __name__ == "__main__":
    main()
