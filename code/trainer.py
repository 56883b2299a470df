"""Seed-compatible entry point: a thin shim over ``dialsum train`` (then ``predict``).

    uv run python code/trainer.py --config config.yaml --config-section eenzeenee \
        --max_steps 10 --save_steps 1000

Trains the section, then writes the test predictions into the run folder, as the old
trainer did. Every other option lives in the config (or ``--set key=value``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="config.yaml", help="YAML config file")
    p.add_argument("--config-section", "--config_section", dest="section", required=True)
    p.add_argument("--max_steps", "--max-steps", type=int, default=None)
    p.add_argument("--save_steps", "--save-steps", type=int, default=None)
    p.add_argument("--train-data", "--train_data", default=None)
    p.add_argument("--val-data", "--val_data", default=None)
    p.add_argument("--test-data", "--test_data", default=None)
    p.add_argument("--output-dir", "--output_dir", default=None)
    p.add_argument("--set", action="append", default=[], help="key.path=value override")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--no-predict", action="store_true", help="skip test predictions")
    return p


def to_cli_args(ns: argparse.Namespace) -> tuple[list[str], list[str]]:
    """(train argv, predict argv) for the dialsum CLI."""
    common = ["-c", ns.config, "-s", ns.section]
    for item in ns.set:
        common += ["--set", item]
    train = ["train", *common]
    for flag, value in (
        ("--max-steps", ns.max_steps),
        ("--save-steps", ns.save_steps),
        ("--train-data", ns.train_data),
        ("--val-data", ns.val_data),
        ("--output-dir", ns.output_dir),
    ):
        if value is not None:
            train += [flag, str(value)]
    if ns.resume:
        train.append("--resume")
    predict = ["predict", *common]
    if ns.test_data:
        predict += ["--test-data", ns.test_data]
    if ns.output_dir:
        predict += ["--set", f"training.output_dir={ns.output_dir}"]
    return train, predict


def check_test_file(ns: argparse.Namespace) -> int:
    """Validate the test CSV before training: a bad path or file must not cost a run."""
    from dialsum.cli.printers import err_console
    from dialsum.core.config_load import load_section
    from dialsum.core.errors import UserError
    from dialsum.data.dataset import read_dialogue_csv

    try:
        cfg = load_section(ns.config, ns.section, list(ns.set))
        read_dialogue_csv(Path(ns.test_data or cfg.data.test), "test")
    except UserError as exc:
        err_console.print(f"error: {exc}", markup=False, soft_wrap=True)
        return exc.exit_code
    return 0


def main(argv: list[str] | None = None) -> int:
    from dialsum.cli.app import main as dialsum_main

    ns = build_parser().parse_args(argv)
    train, predict = to_cli_args(ns)
    if not ns.no_predict and (code := check_test_file(ns)) != 0:
        return code
    code = dialsum_main(train)
    if code != 0 or ns.no_predict:
        return code
    return dialsum_main(predict)


if __name__ == "__main__":
    sys.exit(main())
