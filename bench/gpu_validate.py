"""Predicted vs measured peak memory on a CUDA GPU, for the three real architectures.

    uv run python bench/gpu_validate.py --out gpu_validate.json        # on a CUDA machine
    uv run python bench/gpu_validate.py --smoke                        # CPU: code path only

Random weights (memory does not depend on their values), full-length random batches.
For every case it prints the simulator's prediction, ``torch.cuda.max_memory_allocated``
and ``max_memory_reserved``, and the error of the prediction against the allocated peak.
Budget: about 8 minutes on one H200 (each case is two training steps or one generate()).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import T5Config

from dialsum.architectures import known_config, model_from_config
from dialsum.memory.calibrate import measure_generate, measure_train
from dialsum.memory.profile import GenerateShape, TrainOptions, TrainShape
from dialsum.memory.simulate import simulate_generate, simulate_train

GIB = 1024**3
MODELS = {
    "eenzeenee": "eenzeenee/t5-base-korean-summarization",
    "xlsum_mt5": "csebuetnlp/mT5_multilingual_XLSum",
    "kobart": "digit82/kobart-summarization",
}
# (batch, source_len, target_len, precision, gradient checkpointing)
TRAIN_CASES = [
    (1, 512, 64, "fp32", False),
    (4, 512, 64, "fp32", False),
    (8, 512, 64, "bf16", False),
    (16, 256, 64, "bf16", False),
    (8, 512, 64, "bf16", True),
]
# (batch, source_len, max_new_tokens, beams, precision)
GENERATE_CASES = [
    (8, 512, 64, 4, "fp32"),
    (32, 512, 84, 4, "bf16"),
]


def tiny_t5() -> T5Config:
    return T5Config(
        vocab_size=512, d_model=64, d_ff=128, d_kv=16, num_layers=2, num_heads=4,
        tie_word_embeddings=False, decoder_start_token_id=0,
    )  # fmt: skip


def error_pct(predicted: int, measured: int) -> float | None:
    return round(100 * (predicted - measured) / measured, 2) if measured else None


def run(smoke: bool) -> list[dict]:
    device = torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")
    models = {"tiny_t5": tiny_t5()} if smoke else {k: known_config(v) for k, v in MODELS.items()}
    train_cases = [(2, 32, 8, "fp32", False), (2, 32, 8, "fp32", True)] if smoke else TRAIN_CASES
    gen_cases = [(2, 32, 8, 2, "fp32")] if smoke else GENERATE_CASES
    rows = []
    for name, config in models.items():
        model = model_from_config(config, device=device)
        for batch, src, tgt, precision, gc in train_cases:
            options = TrainOptions(precision=precision, gradient_checkpointing=gc)  # type: ignore[arg-type]
            shape = TrainShape(batch, src, tgt)
            predicted = simulate_train(config, shape, options)
            measured = measure_train(model, shape, options, device)
            rows.append(
                {
                    "model": name,
                    "kind": "train",
                    "shape": asdict(shape),
                    "precision": precision,
                    "gradient_checkpointing": gc,
                    "predicted_bytes": predicted.peak_bytes,
                    "predicted_phase": predicted.peak_phase,
                    **{k: v for k, v in asdict(measured).items()},
                    "error_pct": error_pct(predicted.peak_bytes, measured.max_allocated_bytes),
                }
            )
            print_row(rows[-1])
        for batch, src, new, beams, precision in gen_cases:
            gshape = GenerateShape(batch, src, new, beams)
            predicted = simulate_generate(config, gshape, precision)  # type: ignore[arg-type]
            if precision == "bf16":
                model.to(torch.bfloat16)
            measured = measure_generate(model, gshape, device, "fp32")
            model.to(torch.float32)
            rows.append(
                {
                    "model": name,
                    "kind": "generate",
                    "shape": asdict(gshape),
                    "precision": precision,
                    "predicted_bytes": predicted.peak_bytes,
                    "predicted_phase": predicted.peak_phase,
                    **{k: v for k, v in asdict(measured).items()},
                    "error_pct": error_pct(predicted.peak_bytes, measured.max_allocated_bytes),
                }
            )
            print_row(rows[-1])
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def print_row(r: dict) -> None:
    shape = "x".join(str(v) for v in r["shape"].values())
    measured = r["max_allocated_bytes"] / GIB if r["max_allocated_bytes"] else float("nan")
    err = "n/a" if r["error_pct"] is None else f"{r['error_pct']:+.1f}%"
    gc = str(r.get("gradient_checkpointing", "-"))
    print(
        f"{r['model']:10s} {r['kind']:8s} {shape:14s} {r['precision']:5s} "
        f"gc={gc:5s} predicted {r['predicted_bytes'] / GIB:7.2f} "
        f"GiB  measured {measured:7.2f} GiB (reserved {r['max_reserved_bytes'] / GIB:6.2f})  "
        f"error {err}{'  OOM' if r['oom'] else ''}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny model on CPU (code path)")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON")
    args = parser.parse_args()
    started = time.time()
    rows = run(args.smoke)
    errors = [abs(r["error_pct"]) for r in rows if r["error_pct"] is not None and not r["oom"]]
    summary = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "seconds": round(time.time() - started, 1),
        "max_abs_error_pct": max(errors) if errors else None,
        "mean_abs_error_pct": round(sum(errors) / len(errors), 2) if errors else None,
    }
    print(json.dumps(summary))
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
