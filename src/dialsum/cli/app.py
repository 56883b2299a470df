"""Command line: the ``dialsum`` typer app, one function per verb, and ``main``.

A verb parses its options and calls into the package; printing is ``cli.printers``,
flags become config overrides in ``cli.overrides``, and argv and usage errors are
handled in ``cli.usage``. User errors (``UserError``) print one clear message and exit
with code 2, no traceback.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from dialsum.cli.overrides import flag_overrides, load_with_overrides
from dialsum.cli.printers import console, echo, err_console, print_json, print_metrics
from dialsum.cli.usage import USAGE_ERRORS, bare_resume, show_usage_error
from dialsum.core.errors import RunStopped, UserError

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(
    name="dialsum",
    help="Memory-aware fine-tuning and inference of seq2seq summarizers (T5, mT5, BART) "
    "on Korean dialogue data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

DEFAULT_SECTION = "eenzeenee"
ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="YAML config file.")]
SectionOpt = Annotated[str, typer.Option("--section", "-s", help="Section of the config file.")]
OptionalSectionOpt = Annotated[
    str | None,
    typer.Option(
        "--section",
        "-s",
        help=f"Section of the config file (default: {DEFAULT_SECTION}; with --checkpoint or "
        "--resume RUN: the run's own section).",
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a key relative to the section: training.seed=1."),
]


def _home(path: Path | None) -> Path | None:
    """``~`` expanded: the shell leaves ``--output=~/x`` (after ``=``) as it is."""
    return None if path is None else path.expanduser()


@app.command()
def train(
    config: ConfigOpt = Path("config.yaml"),
    section: OptionalSectionOpt = None,
    set_: SetOpt = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after N optimizer steps.")] = None,
    save_steps: Annotated[int | None, typer.Option(help="Checkpoint every N steps.")] = None,
    train_data: Annotated[Path | None, typer.Option(help="Training CSV.")] = None,
    val_data: Annotated[Path | None, typer.Option(help="Validation CSV.")] = None,
    output_dir: Annotated[Path | None, typer.Option(help="Folder for run folders.")] = None,
    resume: Annotated[
        str | None,
        typer.Option(
            help="Continue a run exactly as saved: 'latest' (the newest run of the section "
            "with a checkpoint; a bare --resume means this) or a run folder PATH."
        ),
    ] = None,
    override_on_resume: Annotated[
        bool,
        typer.Option(help="With --resume: apply the given flags/--set to the saved config."),
    ] = False,
) -> None:
    """Fine-tune a model on a config section.

    \b
    Examples:
      dialsum train -c config.yaml -s eenzeenee
      dialsum train -s kobart --set training.learning_rate=3e-5 --max-steps 100
      dialsum train -s eenzeenee --resume
      dialsum train -s eenzeenee --resume runs/eenzeenee/20260101-120000
      dialsum train -s eenzeenee --resume --max-steps 2000 --override-on-resume
      torchrun --nproc_per_node 4 -m dialsum train -s kobart   # 4 GPUs, same config
    """
    overrides = flag_overrides(
        set_,
        max_steps=max_steps,
        save_steps=save_steps,
        train_data=train_data,
        val_data=val_data,
        output_dir=output_dir,
    )
    # The config is checked before torch/transformers are imported (seconds).
    cfg = load_with_overrides(_home(config), section or DEFAULT_SECTION, overrides)
    from dialsum.training.distributed import is_main_process
    from dialsum.training.recipe import run_training

    if resume not in (None, "latest"):
        resume = os.path.expanduser(resume)
    result = run_training(
        cfg,
        resume=resume,
        resume_overrides=overrides,
        override_on_resume=override_on_resume,
        section=section,
        echo=echo,
    )
    if not is_main_process():
        return
    print_metrics("training finished", result.metrics)
    echo(f"run folder: {result.run.path}")
    echo(f"best model: {result.run.best}")


@app.command()
def predict(
    config: ConfigOpt = Path("config.yaml"),
    section: OptionalSectionOpt = None,
    set_: SetOpt = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="Model folder; default: best model of the latest run.")
    ] = None,
    test_data: Annotated[Path | None, typer.Option(help="Test CSV (fname, dialogue).")] = None,
    output: Annotated[Path | None, typer.Option(help="Submission CSV to write.")] = None,
) -> None:
    """Summarize the test dialogues and write the submission CSV (fname,summary).

    \b
    Examples:
      dialsum predict -c config.yaml -s eenzeenee
      dialsum predict -s kobart --checkpoint runs/kobart/20260101-120000/best --output sub.csv
    """
    if int(os.environ.get("RANK", "0")) != 0:
        # Prediction is not sharded: under a launcher rank 0 writes the one submission.
        return
    checkpoint, output = _home(checkpoint), _home(output)
    overrides = flag_overrides(set_, test_data=test_data)
    from dialsum.inference.safety import checkpoint_config

    cfg = checkpoint_config(checkpoint, section, overrides, echo=echo) if checkpoint else None
    if cfg is None:
        cfg = load_with_overrides(_home(config), section or DEFAULT_SECTION, overrides)
    from dialsum.inference.predict import run_predict

    path, n = run_predict(cfg, checkpoint=checkpoint, output=output, echo=echo)
    echo(f"wrote {n} summaries to {path}")


@app.command()
def evaluate(
    pred: Annotated[Path, typer.Option(help="Predictions CSV (fname,summary).")],
    ref: Annotated[
        Path, typer.Option(help="Reference CSV (fname,dialogue,summary[,summary1..3]).")
    ],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Score predictions with Korean morpheme ROUGE (multi-reference).

    \b
    Example:
      dialsum evaluate --pred runs/tiny/.../dev_predictions.csv --ref data/sample/dev.csv
    """

    from dialsum.metrics import evaluate_files, format_scores

    scores = evaluate_files(_home(pred), _home(ref))
    if json_out:
        print_json(scores)
    else:
        echo(format_scores(scores))


@app.command()
def demo(
    config: ConfigOpt = Path("config.yaml"),
    section: SectionOpt = "tiny",
    output_dir: Annotated[Path | None, typer.Option(help="Folder for run folders.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after N optimizer steps.")] = None,
) -> None:
    """Train a tiny model on the bundled data on CPU, then predict and evaluate.

    Prints dev ROUGE before and after training and where everything went.
    \b
    Example:
      dialsum demo
    """
    from dialsum.cli.demo import run_demo

    cfg = load_with_overrides(
        _home(config), section, flag_overrides(None, max_steps=max_steps, output_dir=output_dir)
    )
    run_demo(cfg, echo=echo)


@app.command()
def plan(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config.")] = None,
    section: Annotated[str | None, typer.Option("--section", "-s", help="Config section.")] = None,
    model: Annotated[
        str | None, typer.Option(help="Hub id or local folder (config.json is enough).")
    ] = None,
    gpu: Annotated[
        list[str] | None,
        typer.Option(help="GPU slug (a100-40gb) or size (24GB); default: detected; repeatable."),
    ] = None,
    compare: Annotated[
        bool, typer.Option(help="Plan on every --gpu; one table ranked by epoch time.")
    ] = False,
    source_len: Annotated[int | None, typer.Option(help="Encoder tokens (with --model).")] = None,
    target_len: Annotated[int | None, typer.Option(help="Decoder tokens (with --model).")] = None,
    effective_batch: Annotated[
        int | None, typer.Option(help="Effective batch size to keep.")
    ] = None,
    num_beams: Annotated[int | None, typer.Option(help="Beams for generation.")] = None,
    num_gpus: Annotated[int, typer.Option(help="GPUs (data-parallel ranks).")] = 1,
    zero_stage: Annotated[
        int | None, typer.Option(help="DeepSpeed ZeRO stage 0-3 (default: the config's).")
    ] = None,
    offload: Annotated[
        bool | None,
        typer.Option(help="DeepSpeed: optimizer state (stage 3: also weights) on CPU."),
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="Training CSV: plan with its real token lengths.")
    ] = None,
    buckets: Annotated[
        bool, typer.Option(help="Also print largest micro-batch per length.")
    ] = False,
    set_: SetOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Predict peak GPU memory and plan batch settings for one GPU, offline.

    \b
    Examples:
      dialsum plan -c config.yaml -s eenzeenee --gpu v100-16gb
      dialsum plan -c config.yaml -s xlsum_mt5 --gpu 24GB --json
      dialsum plan -c config.yaml -s xlsum_mt5 --gpu v100-16gb --num-gpus 4 --zero-stage 2
      dialsum plan --model digit82/kobart-summarization --source-len 512 \\
          --target-len 100 --gpu a100-40gb
      dialsum plan -c config.yaml -s kobart --gpu t4-16gb --gpu a100-40gb --compare
    """

    from dialsum.cli.compare import compare_command
    from dialsum.cli.plan import plan_command

    gpus = list(gpu or [])
    command = plan_command
    if compare or len(gpus) > 1:
        command = lambda **kw: compare_command(gpus=gpus, **kw)  # noqa: E731
    elif gpus:
        command = lambda **kw: plan_command(gpu=gpus[0], **kw)  # noqa: E731
    result = command(
        config=_home(config),
        section=section,
        model=model,
        source_len=source_len,
        target_len=target_len,
        effective_batch=effective_batch,
        num_beams=num_beams,
        num_gpus=num_gpus,
        zero_stage=zero_stage,
        offload=offload,
        data=_home(data),
        overrides=list(set_ or []),
        buckets=buckets,
    )
    if json_out:
        print_json(result.json)
    else:
        result.print(console)


@app.command()
def guide(
    config: ConfigOpt = Path("config.yaml"),
    gpus: Annotated[
        str | None, typer.Option(help="Comma-separated GPU slugs; default: the whole catalog.")
    ] = None,
    sections: Annotated[
        str | None, typer.Option(help="Comma-separated sections; default: every real model.")
    ] = None,
    out: Annotated[Path, typer.Option(help="Markdown file to write.")] = Path("docs/guide.md"),
) -> None:
    """Write the per-GPU guide (Markdown + YAML + PNG plot) for every model section.

    \b
    Examples:
      dialsum guide -c config.yaml
      dialsum guide -c config.yaml --gpus v100-16gb,a100-40gb,h100-80gb --out docs/guide.md
    """
    from dialsum.core.outputs import require_writable

    out = out.expanduser()
    require_writable(out, "--out")  # before minutes of planning, not after
    from dialsum.report.guide import build_guide

    split = lambda text: [x.strip() for x in text.split(",") if x.strip()] if text else None  # noqa: E731
    result = build_guide(_home(config), sections=split(sections), gpus=split(gpus), out=out)
    for path in result.paths:
        echo(f"wrote {path}")
    echo(f"took {result.seconds:.1f}s")


@app.command()
def probe(
    config: ConfigOpt = Path("config.yaml"),
    section: SectionOpt = "eenzeenee",
    set_: SetOpt = None,
    emulate_gpu: Annotated[
        list[str] | None,
        typer.Option(help="Emulate a smaller GPU (slug or size); repeat for several."),
    ] = None,
    search: Annotated[bool, typer.Option(help="Search the true largest micro-batch.")] = True,
    calibration: Annotated[
        Path | None, typer.Option(help="Calibration file to write (default: user cache).")
    ] = None,
) -> None:
    """Run real steps on this machine's CUDA GPU: predicted vs measured, and calibrate.

    \b
    Examples:
      dialsum probe -c config.yaml -s eenzeenee
      dialsum probe -s xlsum_mt5 --emulate-gpu v100-16gb --emulate-gpu 24GB
    """
    from dialsum.checks.probe import run_probe

    cfg = load_with_overrides(_home(config), section, list(set_ or []))
    run_probe(
        cfg, emulate_gpus=emulate_gpu, search=search, calibration=_home(calibration), echo=echo
    )


@app.command()
def monitor(
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.")] = 1.0,
    once: Annotated[bool, typer.Option(help="Print one snapshot and exit.")] = False,
) -> None:
    """Live GPU memory per device and per process (like `watch nvidia-smi`).

    \b
    Examples:
      dialsum monitor
      dialsum monitor --once
    """
    from rich.live import Live
    from rich.text import Text

    from dialsum.training.monitor import nvml_devices, render_devices

    devices = nvml_devices()
    if devices is None:
        raise UserError(
            "no NVIDIA GPU found (NVML could not be initialised): dialsum monitor needs an "
            "NVIDIA driver and GPU. On this machine training runs on the CPU."
        )
    if once:
        echo(render_devices(devices))
        return
    try:
        with Live(Text(render_devices(devices)), console=console, refresh_per_second=4) as live:
            while True:
                time.sleep(interval)
                live.update(Text(render_devices(nvml_devices() or [])))
    except KeyboardInterrupt:
        pass


INTERRUPTED = 130


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``dialsum`` script; returns the exit code."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "accelerate", "torch"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    started = time.time()
    args = bare_resume(sys.argv[1:] if argv is None else argv)
    try:
        code = app(args=args, standalone_mode=False)
    except UserError as exc:
        err_console.print(f"error: {exc}", markup=False, soft_wrap=True)
        return exc.exit_code
    except RunStopped as exc:
        err_console.print(str(exc), markup=False, soft_wrap=True)
        return exc.exit_code
    except typer.Exit as exc:
        code = exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        code = INTERRUPTED
    except USAGE_ERRORS as exc:
        show_usage_error(exc, args)
        return exc.exit_code
    finally:
        logging.getLogger(__name__).debug("took %.1fs", time.time() - started)
    if code == INTERRUPTED:
        err_console.print(
            "interrupted (Ctrl-C). A training run continues from its last checkpoint with "
            "`dialsum train -s SECTION --resume`.",
            markup=False,
            soft_wrap=True,
        )
    return code if isinstance(code, int) else 0
