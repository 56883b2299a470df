"""The last OOM paths of the guarded trainer (issue 10, items 15-17 and the done-when
test), with real ``torch.OutOfMemoryError`` exceptions injected on CPU where a device
would raise them: mid-forward (a decoder forward hook), mid-backward (a hook on the
encoder output's gradient: the decoder's gradients exist, the encoder's not yet), at any
micro-batch of a step, inside ``optimizer.step()`` and during evaluation.

Dropout is on (0.1). A run at micro-batch 4 and a run at micro-batch 2 draw different
dropout masks (the same random stream is cut into other shapes), so "the same weights as a
run at the smaller micro-batch" cannot mean a run that used the small micro-batch from
the start. What RNG replay promises is narrower and exact: a step redone after an OOM
draws the masks a step would draw that *started* at the smaller micro-batch from the same
random state. The reference run is therefore the same run without OOMs whose micro-batch
is switched, at the start of each step where the OOM run shrank it, to what the OOM run
redid that step with (``MicroSchedule``). Redo and reference then compute the same
operations in the same order: the weights agree to fp32 tolerance (in practice exactly).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

import dialsum.training.guarded_trainer
import dialsum.training.recipe
from dialsum.core.config_load import load_section
from dialsum.training.oom_guard import GuardState, OOMUnrecoverable
from dialsum.training.recipe import run_training

ROOT = Path(__file__).resolve().parents[2]
STEPS = 3
ROWS_PER_STEP = 8
START_MICRO = 4  # two micro-batches per step, so the 2nd one exists from the first step
SMALLER = {4: 2, 2: 1}  # next divisor of 8: the guard's ladder


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny matmuls: one thread is 30x faster than two fighting over a busy 2-core machine
    (OpenMP threads spin-wait); the dozens of runs here stay within seconds each."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def section(tmp_path: Path, *, evaluate: bool = True):
    overrides = [
        "data.max_train_samples=16",
        "data.max_eval_samples=2",
        f"training.effective_batch_size={ROWS_PER_STEP}",
        f"training.micro_batch_size={START_MICRO}",
        "training.eval_batch_size=2",
        f"training.max_steps={STEPS}",
        # Evaluated once, after training (run_training's final evaluate), so a run with
        # and one without evaluation train alike: reference runs skip it (it is slow).
        f"training.eval_strategy={'steps' if evaluate else 'no'}",
        "training.eval_steps=1000",
        "training.save_strategy=no",
        "training.group_by_length=false",
        "training.report_to=[none]",
        "training.logging_steps=1",
        "inference.max_new_tokens=4",
        "model.dropout=0.1",
        # Short sequences: the test is about the order of operations, not their size.
        "tokenizer.max_source_length=64",
        "tokenizer.max_target_length=16",
        f"training.output_dir={tmp_path}",
    ]
    return load_section(ROOT / "config.yaml", "tiny", overrides)


def oom(where: str) -> torch.OutOfMemoryError:
    return torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 2.00 GiB ({where})")


@dataclass(frozen=True)
class Point:
    """One OOM: at optimizer step ``step`` (0-based), in ``kind`` (forward, backward,
    optimizer, eval), at micro-batch ``chunk`` of the attempt (eval: of the evaluation)."""

    step: int
    kind: str
    chunk: int = 0


@dataclass
class Injector:
    """Raises each planned OOM once, from hooks placed where a device would raise it."""

    points: set[Point]
    fired: list[Point] = field(default_factory=list)
    trainer: object = None
    _attempt: int = -1
    _chunk: int = -1
    _eval_chunk: int = -1

    def attach(self, trainer) -> None:
        self.trainer = trainer
        model = trainer.model
        model.get_decoder().register_forward_hook(self._in_forward)
        model.get_encoder().register_forward_hook(self._arm_backward)
        trainer.add_callback(_OptimizerHook(self))

    def fire(self, point: Point) -> None:
        if point in self.points:
            self.points.discard(point)
            self.fired.append(point)
            raise oom(f"{point.kind} at step {point.step}, micro-batch {point.chunk + 1}")

    def __call__(self, phase: str, rows: int) -> None:  # the trainer's fault_injector
        if phase == "train":
            attempt = len(self.trainer.step_attempts)  # one entry per (re)try of a step
            self._chunk = self._chunk + 1 if attempt == self._attempt else 0
            self._attempt = attempt
        elif phase == "eval":
            self._eval_chunk += 1
            self.fire(Point(self._step(), "eval", self._eval_chunk))

    def _step(self) -> int:
        return int(self.trainer.state.global_step)

    def _here(self, kind: str) -> Point:
        return Point(self._step(), kind, self._chunk)

    def _in_forward(self, module, args, output) -> None:
        if module.training:
            self.fire(self._here("forward"))

    def _arm_backward(self, module, args, output) -> None:
        point = self._here("backward")
        if module.training and point in self.points:
            # Raised when the encoder output's gradient arrives: mid-backward.
            output[0].register_hook(lambda grad: self.fire(point))


class _OptimizerHook(TrainerCallback):
    """Puts a step pre-hook on the real optimizer: raised inside ``optimizer.step()``."""

    def __init__(self, injector: Injector) -> None:
        self.injector = injector

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        inner = getattr(optimizer, "optimizer", optimizer)
        inner.register_step_pre_hook(
            lambda *_: self.injector.fire(Point(self.injector._step(), "optimizer"))
        )


class MicroSchedule(TrainerCallback):
    """The reference: at the start of step s, use the micro-batch the OOM run redid s with."""

    def __init__(self, trainer, micro_at_step: dict[int, int]) -> None:
        self.trainer, self.micro_at_step = trainer, micro_at_step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step in self.micro_at_step:
            self.trainer.guard.micro_batch_size = self.micro_at_step[state.global_step]


def hook_trainer(monkeypatch: pytest.MonkeyPatch, attach) -> None:
    original = dialsum.training.recipe.build_trainer

    def build_trainer(*args, **kwargs):
        trainer = original(*args, **kwargs)
        attach(trainer)
        return trainer

    monkeypatch.setattr(dialsum.training.recipe, "build_trainer", build_trainer)


def run_with(monkeypatch, tmp_path: Path, points: set[Point]):
    injector = Injector(set(points))
    cfg = section(tmp_path, evaluate=any(p.kind == "eval" for p in points))
    with monkeypatch.context() as patch:
        hook_trainer(patch, injector.attach)
        result = run_training(cfg, echo=lambda *_: None, fault_injector=injector)
    assert injector.points == set(), f"planned OOMs that never fired: {injector.points}"
    return result


def run_reference(monkeypatch, tmp_path: Path, micro_at_step: dict[int, int]):
    with monkeypatch.context() as patch:
        hook_trainer(patch, lambda t: t.add_callback(MicroSchedule(t, micro_at_step)))
        return run_training(section(tmp_path, evaluate=False), echo=lambda *_: None)


def shrinks(guard_path: Path) -> dict[int, int]:
    """Step -> micro-batch the step was (re)done with, from the run's recovery events."""
    events = GuardState.load(guard_path).events
    return {e.step: e.new_batch for e in events if e.phase == "train" and e.new_batch < e.old_batch}


def weights(run_path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_path / "best" / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-5, atol=1e-6, msg=key)


# ------------------------------------------------------------------ item 17: RNG replay


def test_oom_at_the_2nd_and_3rd_micro_batch_with_dropout_replays_the_rng(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Step 1: the 2nd micro-batch of 4 OOMs in its backward (the 1st one's gradients are
    # in place) -> step 1 redone at 2. Step 2: the 3rd micro-batch of 2 OOMs in its
    # forward -> redone at 1.
    points = {Point(1, "backward", 1), Point(2, "forward", 2)}
    run = run_with(monkeypatch, tmp_path / "oom", points)
    assert run.run.guard.is_file() and shrinks(run.run.guard) == {1: 2, 2: 1}
    reference = run_reference(monkeypatch, tmp_path / "ref", {1: 2, 2: 1})
    assert_same_weights(run.run.path, reference.run.path)

    # The test can tell: without the replay the redo draws other dropout masks.
    monkeypatch.setattr(dialsum.training.guarded_trainer, "_set_rng_state", lambda state: None)
    no_replay = run_with(monkeypatch, tmp_path / "no-replay", points)
    with pytest.raises(AssertionError):
        assert_same_weights(no_replay.run.path, reference.run.path)


# ------------------------------------------------------------------ item 15


def test_oom_in_the_first_optimizer_step_is_retried(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Step 0 is where AdamW creates its state (2 x the weights).
    run = run_with(monkeypatch, tmp_path / "oom", {Point(0, "optimizer")})
    events = GuardState.load(run.run.guard).events
    assert [(e.step, e.old_batch, e.new_batch) for e in events] == [(0, 4, 4)]
    assert "optimizer.step()" in events[0].message
    reference = run_reference(monkeypatch, tmp_path / "ref", {})
    assert_same_weights(run.run.path, reference.run.path)


def test_oom_in_the_gradient_all_reduce_stops_with_the_next_ladder_step(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Two ranks pretended: every step reduces gradients after the agreement, and the reduce
    # runs out of memory inside the collective.
    def reduce_oom(parameters, staging=None, bucket_bytes=None):
        raise oom("all-reduce")

    monkeypatch.setattr(
        dialsum.training.guarded_trainer.GuardedSeq2SeqTrainer,
        "_is_data_parallel",
        lambda self: True,
    )
    monkeypatch.setattr(dialsum.training.distributed, "average_gradients", reduce_oom)
    with pytest.raises(OOMUnrecoverable) as info:
        run_training(section(tmp_path, evaluate=False), echo=lambda *_: None)
    message = str(info.value)
    assert "averaging gradients over ranks" in message and "step 1" in message
    assert "Next step:" in message and "--resume" in message


# ------------------------------------------------------------------ done when


KINDS = ("forward", "backward", "2nd micro-batch", "optimizer", "eval")


def random_plan(rng: random.Random) -> set[Point]:
    """1-3 OOM points that all fire and leave the run recoverable: in step order, at most
    one micro-batch shrink per step and two per run (4 -> 2 -> 1), each at a micro-batch
    the step has at that moment."""
    draws = sorted((rng.randrange(STEPS), rng.choice(KINDS)) for _ in range(rng.randint(1, 3)))
    points: set[Point] = set()
    micro, shrunk_steps = START_MICRO, set()
    for step, kind in draws:
        if kind == "eval":
            points.add(Point(STEPS, "eval"))  # the final evaluation: batch 2 -> 1
        elif kind == "optimizer":
            points.add(Point(step, "optimizer"))
        elif micro > 1 and step not in shrunk_steps:
            chunks = ROWS_PER_STEP // micro
            chunk = 1 if kind == "2nd micro-batch" else rng.randrange(chunks)
            where = rng.choice(("forward", "backward")) if kind == "2nd micro-batch" else kind
            points.add(Point(step, where, chunk))
            micro, shrunk_steps = SMALLER[micro], shrunk_steps | {step}
    return points


def test_twenty_random_oom_points_with_dropout_give_the_reference_weights(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    rng = random.Random(20261130)  # seeded: the same 20 plans on every machine
    references: dict[tuple, Path] = {}
    kinds_seen: set[str] = set()
    for index in range(20):
        points = random_plan(rng)
        kinds_seen |= {p.kind if p.chunk == 0 else "2nd+ micro-batch" for p in points}
        run = run_with(monkeypatch, tmp_path / f"run{index}", points)
        schedule = shrinks(run.run.guard)
        key = tuple(sorted(schedule.items()))
        if key not in references:  # runs that shrank alike share one reference run
            references[key] = run_reference(monkeypatch, tmp_path / f"ref{index}", schedule)
        assert_same_weights(run.run.path, references[key].run.path)
        if any(p.kind == "eval" for p in points):
            assert "eval_score" in run.metrics
    assert kinds_seen >= {"forward", "backward", "2nd+ micro-batch", "optimizer", "eval"}


def test_the_cli_prints_an_oom_stop_as_a_message_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from dialsum.cli.app import main

    def stop(*args, **kwargs):
        raise OOMUnrecoverable("out of memory in optimizer.step() (...). Next step: adafactor.")

    monkeypatch.setattr(dialsum.training.recipe, "run_training", stop)
    assert main(["train", "-c", str(ROOT / "config.yaml"), "-s", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Next step: adafactor." in err
