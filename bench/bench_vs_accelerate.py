"""Our traced peak next to ``accelerate estimate-memory``'s rule, for the three known models.

accelerate's rule is ``accelerate.commands.estimate.estimate_training_usage(bytes,
"float32")``: model + gradients + 2 Adam states, i.e. the fp32 model size x 4 as the peak
("step"), independent of batch and sequence length. We call that function on the fp32
parameter bytes and print it beside ``simulate_train`` at fp32 AdamW, 512/64 tokens,
batch 1, 4 and 8, with the time each (cold) trace took.

Run: ``uv run python bench/bench_vs_accelerate.py``.
"""

from __future__ import annotations

import time

from accelerate.commands.estimate import estimate_training_usage

from dialsum.models.architectures import KNOWN_PARAM_COUNTS, known_config
from dialsum.trace.profile import TrainOptions, TrainShape
from dialsum.trace.step_trace import simulate_train

GIB = 1 << 30
BATCHES = (1, 4, 8)


def accelerate_peak_bytes(params: int) -> int:
    sizes = estimate_training_usage(params * 4, "float32")
    return max(sizes.values())


def main() -> None:
    print(f"{'model':42} {'batch':>5} {'ours GiB':>9} {'phase':>9} {'accel GiB':>9} "
          f"{'ratio':>6} {'trace s':>7}")  # fmt: skip
    for model_id, params in KNOWN_PARAM_COUNTS.items():
        config = known_config(model_id)
        accel = accelerate_peak_bytes(params)
        for batch in BATCHES:
            start = time.perf_counter()
            profile = simulate_train(config, TrainShape(batch, 512, 64), TrainOptions())
            took_s = time.perf_counter() - start
            print(
                f"{model_id:42} {batch:>5} {profile.peak_bytes / GIB:9.2f} "
                f"{profile.peak_phase:>9} {accel / GIB:9.2f} "
                f"{profile.peak_bytes / accel:6.2f} {took_s:7.1f}"
            )


if __name__ == "__main__":
    main()
