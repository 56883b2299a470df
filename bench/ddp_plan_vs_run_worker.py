"""One rank of ``bench/bench_plan_vs_run_ddp.py``: two guarded-trainer steps, measured.

Launched by the bench twice per shape, with the same code: once as a plain process (no
launcher: no process group, the model is not wrapped) and once as ``torchrun
--nproc_per_node 2 ddp_plan_vs_run_worker.py SPEC`` (gloo on the CPU: the Trainer's
accelerator wraps the model in ``DistributedDataParallel`` inside ``trainer.train()``,
i.e. inside the profiled window, so the reducer's bucket buffers are seen being
allocated). SPEC is a JSON file ``{"shape", "model", "setup", "out"}`` (``setup``: the
fields of ``checks.cpu_loop.Setup``).

Each rank writes ``OUT/rank{N}.json``: its phase peaks (``train``, ``optimizer``, ``eval``;
``checks.measure.PhaseRecorder``), the optimizer state bytes it kept, how it ran (world
size, the wrapper's class, DDP's bucket sizes) and what stayed allocated before the first
step (the live total when the first ``train`` phase opened, over the weights).

Two blind spots of the profiler are handled. It records a free only if it saw the
allocation, and only on threads that carry its thread-local state:

- Under DDP on the CPU the Trainer's ``__init__`` moves the model to ``args.device``,
  which is ``cpu:0`` there, and ``.to(cpu:0)`` copies every CPU tensor (cpu:0 is not
  cpu): the old weights are freed. Built before the window, their free would be unseen
  and every phase would over-count by the weights (230.8 MiB for t5-60m). So the model is
  built inside the window (baseline 0); ``parameters_copied_by_trainer`` records the copy.
- gloo's worker threads are not seen. DDP's start-up broadcast (``_sync_module_states``)
  packs the weights into one flat buffer (up to 250 MiB) handed to a gloo work; whichever
  of the main thread and gloo's thread drops that work last frees it - a race. Freed on
  gloo's thread, the free is lost and every later total over-counts by the buffer (one
  rank in about one run of three). The sync runs inside a phase of its own (a wrapper
  around torch's ``_sync_module_states`` that only marks the window); it leaves nothing
  allocated, so whatever it nets is an unseen free, taken off the later phases' peaks
  and recorded (``unseen_free_bytes``; ``raw_peaks`` keeps the uncorrected ones).
"""

from __future__ import annotations

import gc
import json
import sys
from bisect import bisect_left, bisect_right
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.parallel.distributed as ddp_module
from bench_plan_vs_run_cpu import build  # this folder is sys.path[0] when run as a script
from torch.nn.parallel import DistributedDataParallel

from dialsum.checks.cpu_loop import PhaseMarks, Setup, fixed_rows, make_trainer, tensor_bytes
from dialsum.checks.measure import PhaseRecorder, PhaseWindow
from dialsum.trace.optimizers import state_tensors
from dialsum.training.distributed import ensure_process_group, main_process_first, rank
from dialsum.training.run_data import ListDataset

SYNC_PHASE = "ddp_init_sync"


def storage_bytes(tensors) -> int:
    unique = {id(t.untyped_storage()): t.untyped_storage() for t in tensors}.values()
    return sum(s.nbytes() for s in unique)


@contextmanager
def observe_init_sync(recorder: PhaseRecorder):
    """DDP's start-up broadcast runs inside ``recorder.phase(SYNC_PHASE)`` (nothing else
    changes: the original function runs with the same arguments)."""
    original = ddp_module._sync_module_states

    def observed(*args, **kwargs):
        with recorder.phase(SYNC_PHASE):
            return original(*args, **kwargs)

    ddp_module._sync_module_states = observed
    try:
        yield
    finally:
        ddp_module._sync_module_states = original


def total_at(recorder: PhaseRecorder, time_ns: int, *, after: bool) -> int:
    """Live total just before (``after=False``) or just after ``time_ns``."""
    times = recorder._times_ns
    index = bisect_right(times, time_ns) if after else bisect_left(times, time_ns)
    return recorder._total_before(index)


def net_bytes(recorder: PhaseRecorder, window: PhaseWindow) -> int:
    return total_at(recorder, window.end_ns, after=True) - total_at(
        recorder, window.start_ns, after=False
    )


def run(spec: dict) -> dict:
    distributed = ensure_process_group(cpu=True)
    world = torch.distributed.get_world_size() if distributed else 1
    setup = Setup(**spec["setup"])
    out = Path(spec["out"]) / f"rank{rank()}"
    # What earlier code left in reference cycles is freed before the profiled window.
    gc.collect()
    # The model is built inside the profiled window (baseline 0), unlike checks.cpu_loop:
    # under DDP on the CPU the Trainer's __init__ moves it to ``args.device`` = cpu:0,
    # and ``.to(cpu:0)`` copies every CPU tensor (cpu:0 is not cpu). Built before the
    # window, the old weights' free would be unseen (their allocation predates it) and
    # every phase would over-count by the weights (230.8 MiB for t5-60m).
    with PhaseRecorder(baseline_bytes=0) as recorder, observe_init_sync(recorder):
        torch.manual_seed(0)  # DDP broadcasts rank 0's weights anyway: the runs are equal
        # Rank 0 first: the tiny model and tokenizer are built once into the shared cache.
        with main_process_first():
            bench = build(spec["shape"], spec.get("model"), ["model.dropout=0.0"])
        model = bench.model
        weights = tensor_bytes(model)
        pointers = [p.data_ptr() for p in model.parameters()]
        trainer = make_trainer(model, bench.tokenizer, bench.cfg, setup, out)
        copied = sum(a != p.data_ptr() for a, p in zip(pointers, model.parameters(), strict=True))
        # make_trainer's eval set is one batch for one process; under DDP the sampler
        # splits it over the ranks. World x eval_batch rows: each rank evaluates one batch
        # of eval_batch rows, the batch the plan predicts.
        vocab = min(model.config.vocab_size, len(bench.tokenizer))
        trainer.eval_dataset = ListDataset(
            fixed_rows(world * setup.eval_batch, setup.source_len, setup.target_len, vocab, 1)
        )
        trainer.add_callback(PhaseMarks(recorder))
        trainer.train()
        with recorder.phase("eval"):
            trainer.evaluate()
    raw = recorder.peaks()
    syncs = [w for w in recorder.windows if w.name == SYNC_PHASE]
    unseen = sum(max(net_bytes(recorder, w), 0) for w in syncs)
    # Every measured phase comes after the wrap: each over-counts by the unseen free.
    peaks = {phase: raw[phase] - unseen for phase in ("train", "optimizer", "eval")}
    first_train = next(w for w in recorder.windows if w.name == "train")
    wrapped = trainer.model_wrapped
    staging = trainer._reduce_staging or {}
    result = {
        "rank": rank(),
        "world_size": world,
        "num_processes": trainer.accelerator.num_processes,
        "wrapper": type(wrapped).__name__,
        "is_ddp": isinstance(wrapped, DistributedDataParallel),
        "weights_bytes": weights,
        "parameters_copied_by_trainer": copied,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        # What the wrap and the Trainer's set-up left allocated before the first step.
        "before_first_step_bytes": total_at(recorder, first_train.start_ns, after=False)
        - weights
        - unseen,
        "staging_bytes": storage_bytes(staging.values()),
        "optimizer_state_bytes": storage_bytes(state_tensors(trainer.optimizer)),
        "init_syncs": len(syncs),
        "unseen_free_bytes": unseen,
        "peaks": peaks,
        "raw_peaks": {phase: raw[phase] for phase in peaks},
    }
    if isinstance(wrapped, DistributedDataParallel):
        logging_data = wrapped._get_ddp_logging_data()
        result["ddp"] = {
            key: logging_data.get(key)
            for key in ("bucket_sizes", "gradient_as_bucket_view", "broadcast_buffers")
        }
    (Path(spec["out"]) / f"rank{rank()}.json").write_text(json.dumps(result, indent=2))
    if distributed:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return result


if __name__ == "__main__":
    run(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8")))
