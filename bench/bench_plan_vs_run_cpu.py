"""Plan vs run on the CPU: the planner's numbers against the real dialsum code, measured.

No GPU is needed to check that "the plan is the run". For each model shape this runs, on
the CPU with real tensors:

- two optimizer steps of the real guarded trainer (``GuardedSeq2SeqTrainer`` built from
  ``training.trainer_args.training_arguments``: its micro-batches, its token-sum loss,
  its optimizer);
- an evaluation pass (``trainer.evaluate()``: beam-search ``generate()`` plus the eval-loss
  forward, next to the resident optimizer state);
- a ``predict`` pass (``inference.predict.generate_summaries``, after the trainer is gone);

and measures each phase's peak live tensor bytes with ``torch.profiler`` memory events
(``dialsum.checks.measure``: independent of the simulator). The simulator predicts the
same phases with ``device="cpu"`` (CPU kernels, exact bytes), as ``dialsum plan --gpu cpu``
does. Targets: training within +-5 %, generation within +-10 %.

Generation is forced to its full length (``min_new_tokens = max_new_tokens``): the plan
sizes the cache for the longest summary, and random weights would otherwise stop early.

Cap mode (``--caps``, on by default for the tiny model; ``--cap-gib X`` to choose): the
device is X GiB of live tensors. For each cap the planner (``make_plan`` against
``cpu_device(X)``) picks a micro-batch. The true largest micro-batch comes from the
allocator, not from dialsum's own tracker: each candidate (the divisors of the step's
rows) runs two real steps uncapped under ``torch.profiler`` and fits if its measured peak
is at most X. Then a ``LiveBytesCap`` makes the run at the planned micro-batch raise a
real ``torch.OutOfMemoryError`` above X, and the bench counts the OOMs the guard recovered
from. Goals: planned / true >= 0.95, 0 OOMs.

    uv run python bench/bench_plan_vs_run_cpu.py                      # tiny, t5-60m, bart-60m
    uv run python bench/bench_plan_vs_run_cpu.py --shapes tiny --source-len 128
    uv run python bench/bench_plan_vs_run_cpu.py --shapes mt5-250k --source-len 128 \
        --target-len 32 --beams 2                                   # large vocabulary
    uv run python bench/bench_plan_vs_run_cpu.py --model DIR --source-len 512 --batch 2
    uv run python bench/bench_plan_vs_run_cpu.py --shapes tiny --cap-gib 0.05 --cap-gib 0.08

Decoder-only LLMs (``--causal``): a tiny Llama-style model and a tiny Gemma-2-style one (a
vocabulary large for its width: logits dominate), each trained full, with LoRA and with
QLoRA (real bitsandbytes 4-bit layers on the CPU), loaded and prepared as ``train`` does
(``models.causal``, ``models.lora``); the simulator traces the same method:

    uv run python bench/bench_plan_vs_run_cpu.py --causal --source-len 96 --target-len 32
    uv run python bench/bench_plan_vs_run_cpu.py --causal-caps --source-len 32 --target-len 16
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from transformers import BartConfig, Gemma2Config, LlamaConfig, MT5Config, T5Config

from dialsum.checks.cpu_loop import (
    Setup,
    compare,
    make_trainer,
    measure,
    predict,
    tensor_bytes,
)
from dialsum.checks.measure import PhaseRecorder
from dialsum.core.config_load import load_section
from dialsum.memory.fit import largest_fitting
from dialsum.memory.plan import Plan, make_plan
from dialsum.memory.request import PlanRequest
from dialsum.memory.section import overheads_for
from dialsum.models.architectures import load_config, model_from_config
from dialsum.models.setup import setup_model
from dialsum.speed.gpus import cpu_device
from dialsum.step.geometry import divisors
from dialsum.trace.live_cap import LiveBytesCap
from dialsum.trace.profile import TrainOptions, TrainShape
from dialsum.trace.step_trace import simulate_train

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30


# -- models --------------------------------------------------------------------------------


def t5_60m() -> T5Config:
    # t5-small's layout (60.5M parameters, tied head): 6+6 layers, d_model 512, ReLU d_ff 2048.
    return T5Config(
        vocab_size=32128,
        d_model=512,
        d_ff=2048,
        d_kv=64,
        num_layers=6,
        num_decoder_layers=6,
        num_heads=8,
        feed_forward_proj="relu",
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )


def bart_60m() -> BartConfig:
    # A BART-base layout at d_model 512 (59.8M parameters): 6+6 layers, 8 heads, GELU 2048.
    return BartConfig(
        vocab_size=30000,
        d_model=512,
        encoder_layers=6,
        decoder_layers=6,
        encoder_attention_heads=8,
        decoder_attention_heads=8,
        encoder_ffn_dim=2048,
        decoder_ffn_dim=2048,
        max_position_embeddings=1026,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=1,
        decoder_start_token_id=1,
        forced_eos_token_id=1,
    )


def mt5_250k() -> MT5Config:
    # mT5's 250,112-token vocabulary on a small body (d_model 256, 4+4 layers, untied head):
    # the embedding and head (2 x 244 MiB) dominate. The shared embedding's two gradients
    # (encoder and decoder lookups) are summed in place by the real backward; under any
    # dispatch mode the engine copies instead (see ``dialsum.trace.grad_accumulation``).
    return MT5Config(
        vocab_size=250112, d_model=256, d_ff=512, d_kv=32, num_heads=8, num_layers=4,
        num_decoder_layers=4, tie_word_embeddings=False, decoder_start_token_id=0,
        pad_token_id=0, eos_token_id=1,
    )  # fmt: skip


def llama_tiny() -> LlamaConfig:
    # Llama layout: grouped-query attention, gated SiLU MLP, untied head.
    return LlamaConfig(
        vocab_size=4096, hidden_size=128, intermediate_size=384, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=0, pad_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )  # fmt: skip


def gemma_tiny() -> Gemma2Config:
    # Gemma-2 layout (tied head, logit soft-capping, head_dim 32 x 4 heads, sliding window)
    # with a vocabulary 250x its width, as gemma-2-2b's 256k is ~110x its 2,304.
    return Gemma2Config(
        vocab_size=16384, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=1024,
        sliding_window=512, bos_token_id=0, pad_token_id=1, eos_token_id=2,
    )  # fmt: skip


def llama_wide() -> LlamaConfig:
    # Weights dominate (wide MLP, short rows): full, LoRA and QLoRA need clearly different
    # memory, so a cap can leave room for one method and not the one before it.
    return LlamaConfig(
        vocab_size=2048, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=0, pad_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )  # fmt: skip


SEQ2SEQ_SHAPES = {"t5-60m": t5_60m, "bart-60m": bart_60m, "mt5-250k": mt5_250k}
CAUSAL_SHAPES = {"llama-tiny": llama_tiny, "gemma-tiny": gemma_tiny, "llama-wide": llama_wide}
CAUSAL_METHODS = ("full", "lora", "qlora")


@dataclass
class Bench:
    name: str
    model: torch.nn.Module
    tokenizer: object
    cfg: object  # the tiny section, with the bench's overrides


def build(name: str, model_dir: str | None, overrides: list[str]) -> Bench:
    """The model under test and a tokenizer (the bundled tiny one: ids only matter)."""
    cfg = load_section(ROOT / "config.yaml", "tiny", overrides)
    tiny_model, tokenizer = setup_model(cfg)
    if name == "tiny":
        model = tiny_model
    else:
        config = load_config(model_dir) if name == "model" else SEQ2SEQ_SHAPES[name]()
        model = model_from_config(config)
    model.generation_config.pad_token_id = model.config.pad_token_id
    model.generation_config.decoder_start_token_id = model.config.decoder_start_token_id
    model.generation_config.eos_token_id = model.config.eos_token_id
    return Bench(name, model, tokenizer, cfg)


# -- cap mode ------------------------------------------------------------------------------


def run_capped(bench: Bench, setup: Setup, cap_bytes: int, out: Path) -> int:
    """OOMs the guard recovered from in two capped steps at ``setup.micro`` (-1: failed)."""
    model = bench.model
    trainer = make_trainer(bench.model, bench.tokenizer, bench.cfg, setup, out)
    cap = LiveBytesCap(cap_bytes)
    cap.track_all(model.parameters())
    cap.track_all(model.buffers())
    try:
        with cap:
            trainer.train()
        return len(trainer.guard.events)
    except Exception as exc:  # noqa: BLE001 - an unrecoverable OOM counts as failure
        print(f"    micro-batch {setup.micro}: {type(exc).__name__}: {str(exc)[:80]}")
        return -1
    finally:
        del trainer
        gc.collect()


def measured_peak(bench: Bench, setup: Setup, out: Path) -> int:
    """Peak live tensor bytes of two real steps at ``setup``, uncapped, from the allocator
    (``torch.profiler`` memory events: independent of dialsum's tracker)."""
    gc.collect()
    with PhaseRecorder(baseline_bytes=tensor_bytes(bench.model)) as recorder:
        trainer = make_trainer(bench.model, bench.tokenizer, bench.cfg, setup, out)
        trainer.train()
        del trainer
        gc.collect()
    return recorder.peak_bytes


def cap_rows(bench: Bench, setup: Setup, caps: list[float], out: Path) -> list[dict]:
    rows = setup.micro * setup.accumulation
    request = PlanRequest(
        model_config=bench.model.config,
        source_len=setup.source_len,
        target_len=setup.target_len,
        effective_batch_size=rows,
        optimizer=setup.optimizer,
        gradient_checkpointing=False,
        num_beams=setup.beams,
        max_new_tokens=setup.new_tokens,
        fallbacks=(),
    )
    results = []
    measured: dict[int, int] = {}  # micro-batch -> measured peak bytes (shared by the caps)
    for cap_gib in caps:
        cap_bytes = int(cap_gib * GIB)
        gpu = cpu_device(cap_bytes)
        plan: Plan = make_plan(
            request,
            gpu,
            overheads_for(
                replace(bench.cfg, hardware=replace(bench.cfg.hardware, memory_margin=0.0)), gpu
            ),
        )
        planned = plan.micro_batch_size if plan.fits else 0

        def runs(m: int, cap_bytes: int = cap_bytes) -> bool:
            if m not in measured:
                at_m = replace(setup, micro=m, accumulation=rows // m)
                measured[m] = measured_peak(bench, at_m, out)
            return measured[m] <= cap_bytes

        true_max = largest_fitting(divisors(rows), runs) or 0
        ooms = (
            run_capped(
                bench, replace(setup, micro=planned, accumulation=rows // planned), cap_bytes, out
            )
            if planned
            else None
        )
        results.append(
            {
                "cap_gib": cap_gib,
                "planned_micro_batch": planned,
                "true_largest": true_max,
                "measured_peak_mib": {m: round(b / 2**20, 3) for m, b in sorted(measured.items())},
                "ratio": round(planned / true_max, 3) if true_max else None,
                "ooms_at_planned": ooms,
            }
        )
        print(
            f"  cap {cap_gib:.4f} GiB: planned {planned}, true largest {true_max}, "
            f"ratio {results[-1]['ratio']}, OOMs at planned {ooms}"
        )
    return results


def default_caps(bench: Bench, setup: Setup) -> list[float]:
    """Three caps half-way between the predicted needs of micro-batches m and 2m."""
    config = bench.model.config
    rows = setup.micro * setup.accumulation
    caps = []
    for m in [d for d in divisors(rows) if 2 * d in divisors(rows)][:3]:
        needs = []
        for micro in (m, 2 * m):
            options = TrainOptions(
                optimizer=setup.optimizer, device="cpu", micro_batches=2 if rows // micro > 1 else 1
            )
            needs.append(
                simulate_train(
                    config, TrainShape(micro, setup.source_len, setup.target_len), options
                ).peak_bytes
            )
        caps.append((needs[0] + needs[1]) / 2 / GIB)
    return caps


# -- decoder-only LLMs -----------------------------------------------------------------------


def causal_model(name: str, method: str, tokenizer, cfg, folder: Path, checkpointing: bool):
    """The model as ``train`` loads and prepares it: saved with random weights, loaded by
    ``models.causal.load_causal_model`` (4-bit for QLoRA, fp32 compute on the CPU), then
    QLoRA's ``prepare_for_kbit`` and LoRA adapters on every linear layer (the markers'
    embedding rows training with them)."""
    from dialsum.core.config_schema import QuantizationConfig
    from dialsum.models.causal import load_causal_model, prepare_for_kbit
    from dialsum.models.lora import apply_lora

    if not (folder / "config.json").exists():
        torch.manual_seed(0)
        model_from_config(CAUSAL_SHAPES[name]()).save_pretrained(folder)
    quantization = QuantizationConfig(compute_dtype="fp32") if method == "qlora" else None
    model = load_causal_model(str(folder), tokenizer, quantization=quantization, device="cpu")
    if method == "qlora":
        model = prepare_for_kbit(model, checkpointing)
    if method != "full":
        markers = [tokenizer.convert_tokens_to_ids(t) for t in cfg.tokenizer.special_tokens]
        model = apply_lora(
            model, rank=8, alpha=16, dropout=0.05, causal=True,
            trainable_token_indices=sorted({m for m in markers if m is not None}),
        )  # fmt: skip
    return model


def run_causal(name: str, method: str, args: argparse.Namespace, out: Path) -> dict:
    cfg = load_section(ROOT / "config.yaml", "tiny_causal", ["model.dropout=0.0"])
    _, tokenizer = setup_model(cfg)
    checkpointing = method != "full"  # the QLoRA recipes checkpoint; full runs without
    model = causal_model(name, method, tokenizer, cfg, out / name, checkpointing)
    setup = Setup(args.source_len, args.target_len, args.batch, 2, args.eval_batch, args.beams,
                  args.target_len, args.optimizer, method, checkpointing)  # fmt: skip
    params = sum(p.numel() for p in model.parameters())
    print(f"{name} {method}: {params / 1e6:.2f}M parameter values (4-bit packed count 1/2), "
          f"{setup.source_len}+{setup.target_len} tokens, micro-batch {setup.micro} x "
          f"{setup.accumulation}, checkpointing {checkpointing}")  # fmt: skip
    start = time.perf_counter()
    measured, state_bytes = measure(model, tokenizer, cfg, setup, out)
    base_config = CAUSAL_SHAPES[name]()
    rows = compare(predict(base_config, setup, state_bytes), measured)
    print_rows(rows)
    return {"setup": setup.__dict__, "phases": rows,
            "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip


def causal_caps(args: argparse.Namespace, out: Path) -> list[dict]:
    """Forced cases: a cap where full fine-tuning does not fit but LoRA does, and one where
    only QLoRA does. The planner (method left ``auto``) must pick that method; the real
    trainer then runs it at the planned micro-batch under the cap with no OOM, and the
    method before it fails at micro-batch 1."""
    cfg = load_section(ROOT / "config.yaml", "tiny_causal", ["model.dropout=0.0"])
    _, tokenizer = setup_model(cfg)
    config, rows = llama_wide(), 4
    source_len, target_len = args.source_len, args.target_len
    options = TrainOptions(device="cpu", micro_batches=2, gradient_checkpointing=True)
    needs = {
        method: simulate_train(
            config, TrainShape(1, source_len, target_len),
            replace(options, lora=method != "full",
                    quantization="nf4" if method == "qlora" else None),
        ).peak_bytes
        for method in CAUSAL_METHODS
    }  # fmt: skip
    results = []
    for method, before in (("lora", "full"), ("qlora", "lora")):
        cap_bytes = (needs[method] + needs[before]) // 2
        gpu = cpu_device(cap_bytes)
        request = PlanRequest(
            model_config=config, source_len=source_len, target_len=target_len,
            effective_batch_size=rows, optimizer="adamw", gradient_checkpointing=True,
            num_beams=1, max_new_tokens=target_len, fallbacks=("lora", "qlora"),
        )  # fmt: skip
        no_margin = replace(cfg, hardware=replace(cfg.hardware, memory_margin=0.0))
        plan = make_plan(request, gpu, overheads_for(no_margin, gpu))

        def capped_run(run_method: str, micro: int, cap: int = cap_bytes) -> int:
            model = causal_model("llama-wide", run_method, tokenizer, cfg, out / "llama-wide",
                                 checkpointing=True)  # fmt: skip
            setup = Setup(source_len, target_len, micro, rows // micro, 1, 1, target_len,
                          "adamw", run_method, True)  # fmt: skip
            try:
                return run_capped(Bench("llama-wide", model, tokenizer, cfg), setup, cap, out)
            except torch.OutOfMemoryError:
                return -1  # the weights alone exceed the cap

        ooms = capped_run(plan.method, plan.micro_batch_size) if plan.fits else None
        before_fails = capped_run(before, 1) == -1
        row = {
            "cap_mib": round(cap_bytes / 2**20, 2),
            "predicted_need_mib": {k: round(v / 2**20, 2) for k, v in needs.items()},
            "expected_method": method,
            "planned_method": plan.method,
            "planned_micro_batch": plan.micro_batch_size,
            "ooms_at_planned": ooms,
            f"{before}_fails_at_micro_1": before_fails,
        }
        print(f"  cap {row['cap_mib']} MiB: planned {plan.method} micro-batch "
              f"{plan.micro_batch_size} (expected {method}); OOMs at planned {ooms}; "
              f"{before} at micro-batch 1 fails: {before_fails}")  # fmt: skip
        results.append(row)
    return results


# -- main ----------------------------------------------------------------------------------


def print_rows(rows: dict[str, dict]) -> None:
    for phase, row in rows.items():
        print(
            f"  {phase:9s} predicted {row['predicted_bytes'] / 2**20:9.2f} MiB  measured "
            f"{row['measured_bytes'] / 2**20:9.2f} MiB  ratio {row['ratio']:.3f}  "
            f"{'ok' if row['inside'] else 'OUTSIDE'} (+-{row['tolerance']:.0%})"
        )


def run_shape(name: str, args: argparse.Namespace, out: Path) -> dict:
    bench = build(name, args.model, ["model.dropout=0.0"])
    new_tokens = args.target_len
    setup = Setup(args.source_len, args.target_len, args.batch, 2, args.eval_batch, args.beams,
                  new_tokens, args.optimizer)  # fmt: skip
    params = sum(p.numel() for p in bench.model.parameters())
    print(
        f"{name}: {params / 1e6:.1f}M parameters, {setup.source_len}/{setup.target_len} "
        f"tokens, micro-batch {setup.micro} x {setup.accumulation}, eval batch "
        f"{setup.eval_batch}, {setup.beams} beams, {setup.optimizer}"
    )
    start = time.perf_counter()
    measured, state_bytes = measure(bench.model, bench.tokenizer, bench.cfg, setup, out)
    rows = compare(predict(bench.model.config, setup, state_bytes), measured)
    print_rows(rows)
    entry = {
        "params": params,
        "setup": setup.__dict__,
        "phases": rows,
        "seconds": round(time.perf_counter() - start, 1),
    }
    if (args.cap_gib or name == "tiny") and not args.no_caps:
        # Four micro-batch candidates per step (1, 2, 4, 8): room for the bisection.
        capped = replace(setup, micro=2, accumulation=4)
        caps = args.cap_gib or default_caps(bench, capped)
        entry["caps"] = cap_rows(bench, capped, caps, out)
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--shapes",
        nargs="+",
        default=["tiny", "t5-60m", "bart-60m"],
        choices=["tiny", *SEQ2SEQ_SHAPES],
    )
    parser.add_argument("--model", help="a folder with config.json (random weights)")
    parser.add_argument("--source-len", type=int, default=512)
    parser.add_argument("--target-len", type=int, default=64)
    parser.add_argument(
        "--batch", type=int, default=2, help="micro-batch (2 micro-batches per step)"
    )
    parser.add_argument("--eval-batch", type=int, default=2)
    parser.add_argument("--beams", type=int, default=4)
    parser.add_argument(
        "--optimizer", default="adamw", choices=["adamw", "adamw_foreach", "adafactor", "sgd"]
    )
    parser.add_argument(
        "--cap-gib", type=float, action="append", help="cap mode at this size (repeat)"
    )
    parser.add_argument("--no-caps", action="store_true", help="skip cap mode")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument(
        "--causal", action="store_true", help="the decoder-only shapes x full/LoRA/QLoRA"
    )
    parser.add_argument("--methods", nargs="+", default=list(CAUSAL_METHODS))
    parser.add_argument(
        "--causal-caps", action="store_true",
        help="forced caps where only LoRA / only QLoRA fits: planned method runs, no OOM",
    )  # fmt: skip
    args = parser.parse_args()
    shapes = ["model"] if args.model else args.shapes
    command = "uv run python bench/bench_plan_vs_run_cpu.py " + " ".join(sys.argv[1:])
    results: dict = {"command": command.strip(), "torch": torch.__version__, "shapes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        if args.causal_caps:
            results["causal_caps"] = causal_caps(args, Path(tmp))
        elif args.causal:
            for name in ("llama-tiny", "gemma-tiny"):
                for method in args.methods:
                    key = f"{name}/{method}"
                    results["shapes"][key] = run_causal(name, method, args, Path(tmp))
        else:
            for name in shapes:
                results["shapes"][name] = run_shape(name, args, Path(tmp))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if args.causal_caps:
        ok = all(
            r["planned_method"] == r["expected_method"] and r["ooms_at_planned"] == 0
            for r in results["causal_caps"]
        )
        print("caps: planned methods ran without OOM" if ok else "caps: a forced case FAILED")
        return
    inside = all(p["inside"] for r in results["shapes"].values() for p in r["phases"].values())
    print("all phases inside the targets" if inside else "some phases OUTSIDE the targets")


if __name__ == "__main__":
    main()
