"""One planning call: what a setting needs on this GPU, and the training decisions.

``Planner`` holds the call's request, GPU, overheads and memoized simulator, and measures
what a training step (``train_need``) or a generation batch (``generate_need``) needs with
the overheads added. ``set_up_plan`` starts a call: the request checked, the precision
chosen (``memory.precision``). ``PlanState`` carries what the steps decide, in order: the
fallback ladder (``climb_ladder``), the micro-batch (``choose_micro_batch``) and the
reasons about the engine (``explain_engine``). Eval and prediction batches are decided in
``memory.generation_batches``, the way out of a misfit in ``memory.alternatives``.

Memory is assumed monotone in batch size and sequence length, so searches bisect
(``largest_fitting``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from dialsum.memory.ladder import ladder_steps
from dialsum.memory.overheads import Overheads, required_bytes, usable_bytes
from dialsum.memory.precision import choose_precision
from dialsum.memory.request import (
    PlanRequest,
    request_family,
    resolve_optimizer,
    validate_request,
)
from dialsum.memory.simulator import SimulationMemo, Simulator, tracing_simulator
from dialsum.memory.zero import (
    ZeroStateBytes,
    communication_bytes,
    deepspeed_layout,
    largest_layer_params,
    sharded_profile_peak_bytes,
    zero_state_bytes,
)
from dialsum.speed.gpus import GPU
from dialsum.step.geometry import BatchGeometry, divisors
from dialsum.trace.profile import (
    GenerateOptions,
    GenerateShape,
    MemoryProfile,
    TrainOptions,
    TrainShape,
)

if TYPE_CHECKING:
    from transformers import PretrainedConfig

_GIB = 2**30

_CUT_WARNING = "source text is cut shorter"


def format_gib(n_bytes: int) -> str:
    return f"{n_bytes / _GIB:.2f} GiB"


@dataclass(frozen=True)
class Need:
    """What one setting needs: its simulated profile, the bytes it requires with the
    overheads, and whether they fit in the usable memory."""

    profile: MemoryProfile
    required_bytes: int
    fits: bool
    peak_bytes: int  # per rank: the simulated peak, with ZeRO's sharded model states
    zero_states: ZeroStateBytes | None = None


DDP_STAGING_BYTES = 25 * 2**20
"""The guarded trainer's all-reduce staging buffer at most (``training.distributed.
BUCKET_BYTES``): one flat buffer per dtype, made before the first forward and kept."""

DDP_BUCKET_BYTES_PER_PARAM = 4
"""DDP's reducer buckets hold one gradient per trainable parameter in the parameter's dtype:
fp32 (the master weights of AMP, fp32 training and fp32-upcast adapters alike)."""


def ddp_resident_bytes(profile: MemoryProfile) -> int:
    """What DDP keeps on each GPU beside the single-GPU step, at every moment of it.

    torch's ``Reducer`` allocates its bucket buffers when the model is wrapped (flat,
    parameter-sized unless ``gradient_as_bucket_view=True``, which accelerate does not set)
    and keeps them for the whole run: at accumulation 1 the step's peak, reached before any
    ``.grad`` exists, has them too, and so does evaluation. The guarded trainer reduces
    through its own staging buffer on top (``training.distributed.reduce_staging``): as
    large as its largest bucket of several gradients, so all the trainable gradients when
    they fit one 25 MiB bucket (a small model, LoRA adapters) and at most 25 MiB otherwise
    (24.0 MiB for a t5-small layout; the CPU bench ``bench/bench_plan_vs_run_ddp.py``
    measures both).
    """
    gradient_bytes = profile.trainable_params * DDP_BUCKET_BYTES_PER_PARAM
    return gradient_bytes + min(DDP_STAGING_BYTES, gradient_bytes)


class Planner:
    """The state of one planning call: request, GPU, overheads, memoized simulator."""

    def __init__(
        self,
        request: PlanRequest,
        gpu: GPU,
        overheads: Overheads,
        simulator: Simulator,
    ) -> None:
        self.request = request
        self.gpu = gpu
        self.device = "cpu" if gpu.is_cpu else "cuda"
        self.overheads = overheads
        self.simulator = simulator
        self.sim = SimulationMemo(simulator)
        self.usable = usable_bytes(gpu, overheads)
        self._largest_layer: int | None = request.largest_layer_params

    def largest_layer(self) -> int:
        if self._largest_layer is None:
            from dialsum.models.architectures import model_from_config  # torch: only here

            meta = model_from_config(self.request.model_config, device="meta")
            self._largest_layer = largest_layer_params(meta)
        return self._largest_layer

    def zero_states(self, profile: MemoryProfile, options: TrainOptions) -> ZeroStateBytes:
        request = self.request
        return zero_state_bytes(
            profile.params,
            deepspeed_layout(options.precision, options.optimizer),
            stage=request.zero_stage,
            world=request.world_size,
            offload=request.offload,
            trainable_params=profile.trainable_params,
            largest_layer_params=self.largest_layer() if request.zero_stage == 3 else 0,
        )

    def step_options(self, micro: int, options: TrainOptions) -> TrainOptions:
        """``options`` as the step at ``micro`` runs: with accumulation, a second micro-batch
        runs with the first one's gradients alive (DeepSpeed accumulates in its engine)."""
        accumulates = self.request.per_rank_batch // micro > 1 and self.request.zero_stage == 0
        return replace(options, micro_batches=2 if accumulates else 1, device=self.device)

    def ask_ahead(
        self, shape: TrainShape | GenerateShape, options: TrainOptions | GenerateOptions
    ) -> None:
        """Tell the simulator of a question this plan will probably ask later (``Simulator.
        ahead``): the real one starts its traces on another core meanwhile."""
        if self.simulator.ahead is not None:
            options = replace(options, device=self.device)
            self.simulator.ahead(self.request.model_config, shape, options)

    def train_need(
        self, micro: int, options: TrainOptions, source_len: int, target_len: int | None = None
    ) -> Need:
        target = target_len if target_len is not None else self.request.target_len
        options = self.step_options(micro, options)
        profile = self.sim.train(
            self.request.model_config, TrainShape(micro, source_len, target), options
        )
        if self.request.zero_stage > 0:
            # DeepSpeed holds the model states itself (sharded); activations stay per rank.
            states = self.zero_states(profile, options)
            comm = communication_bytes(
                self.request.zero_stage,
                _hidden_size(self.request.model_config),
                deepspeed_layout(options.precision, options.optimizer).grad_bytes,
            )
            peak = sharded_profile_peak_bytes(profile, states, comm)
            need = required_bytes(peak, self.overheads)
            return Need(profile, need, need <= self.usable, peak, states)
        ddp_bytes = ddp_resident_bytes(profile) if self.request.world_size > 1 else 0
        need = required_bytes(profile.peak_bytes + ddp_bytes, self.overheads)
        return Need(profile, need, need <= self.usable, profile.peak_bytes)

    def generate_need(
        self,
        batch: int,
        source_len: int,
        options: GenerateOptions,
        resident_bytes: int,
        label_len: int = 0,
    ) -> Need:
        shape = GenerateShape(
            batch, source_len, self.request.new_tokens, self.request.num_beams, label_len
        )
        profile = self.sim.generate(
            self.request.model_config, shape, replace(options, device=self.device)
        )
        need = required_bytes(profile.peak_bytes + resident_bytes, self.overheads)
        return Need(profile, need, need <= self.usable, profile.peak_bytes + resident_bytes)


def _hidden_size(config: PretrainedConfig) -> int:
    return int(getattr(config, "d_model", None) or getattr(config, "hidden_size", 0) or 0)


def largest_fitting(candidates: Sequence[int], fits: Callable[[int], bool]) -> int | None:
    """Largest candidate for which ``fits`` holds, by bisection (``fits`` is monotone).

    The largest candidate is tried first: on a big GPU it often fits, and one trace then
    replaces the whole bisection (each real trace takes seconds).
    """
    if not candidates:
        return None
    if fits(candidates[-1]):
        return candidates[-1]
    lo, hi, best = 0, len(candidates) - 2, None
    while lo <= hi:
        mid = (lo + hi) // 2
        if fits(candidates[mid]):
            best, lo = candidates[mid], mid + 1
        else:
            hi = mid - 1
    return best


# --------------------------------------------------------------------------------------
# The start of a plan, shared by ``plan.make_plan`` and ``plan.bucket_table``


@dataclass
class PlanSetup:
    """What every plan of a request starts from: the checked request's planner, its
    family and precision (with their reasons) and the training options before any
    fallback."""

    planner: Planner
    family: str
    precision: str
    reasons: list[str]
    warnings: list[str]
    options: TrainOptions


def set_up_plan(
    request: PlanRequest, gpu: GPU, overheads: Overheads | None, simulator: Simulator | None
) -> PlanSetup:
    """Validate ``request`` and choose its precision (``ConfigError`` if the GPU can't)."""
    validate_request(request)
    planner = Planner(request, gpu, overheads or Overheads(), simulator or tracing_simulator())
    family = request_family(request)
    precision, reasons, warnings = choose_precision(request, gpu, family)
    options = requested_options(request, precision)
    if options.optimizer == "paged_adamw8bit":
        reasons.append(
            "optimizer paged 8-bit AdamW: 2 bytes of state per trainable parameter in CUDA "
            "unified memory, counted on the GPU (where it lives until the driver pages it out "
            "to CPU memory under pressure)"
        )
    return PlanSetup(planner, family, precision, reasons, warnings, options)


def requested_options(request: PlanRequest, precision: str) -> TrainOptions:
    """Training options as ``request`` asks for them, at ``precision`` (before the ladder)."""
    return TrainOptions(
        precision=precision,  # type: ignore[arg-type]
        optimizer=resolve_optimizer(request.optimizer),  # type: ignore[arg-type]
        gradient_checkpointing=request.gradient_checkpointing is True,
        lora=request.lora or request.resolved_method in ("lora", "qlora"),
        lora_rank=request.lora_rank,
        quantization=request.quant_type if request.resolved_method == "qlora" else None,
        double_quant=request.double_quant,
    )


def plan_train_options(request: PlanRequest, plan) -> TrainOptions:
    """The training options ``plan`` (a ``memory.plan.Plan`` for ``request``) runs its
    step with, before the micro-batch split: its precision, optimizer, checkpointing and
    method (the ladder may have switched a causal LM to LoRA or QLoRA)."""
    options = requested_options(request, plan.precision)
    return replace(
        options,
        optimizer=plan.optimizer,
        gradient_checkpointing=plan.gradient_checkpointing,
        lora=options.lora or plan.method in ("lora", "qlora"),
        quantization=request.quant_type if plan.method == "qlora" else None,
    )


# --------------------------------------------------------------------------------------
# The training decisions, each a step over one mutable state


@dataclass
class PlanState:
    """What the planning steps decide, in order."""

    options: TrainOptions
    source_len: int
    reasons: list[str]
    warnings: list[str]
    need: Need | None = None  # training need at the chosen (or smallest) micro-batch
    micro: int = 1
    rejected: set[str] = field(default_factory=set)


def climb_ladder(planner: Planner, state: PlanState, smallest: int, search: bool = False) -> None:
    """Take fallback steps while the smallest allowed micro-batch does not fit.

    ``search``: the micro-batch is free (``choose_micro_batch`` searches it next). The
    search is run here first: when any divisor fits, micro-batch 1 does too (memory is
    monotone in the micro-batch, as the bisection already assumes) and no step is needed;
    its probes are replayed from recorded timelines and remembered, while micro-batch 1
    itself would be a direct trace (batch 1 is never replayed).
    """
    need = _starting_need(planner, state, smallest) if search else None
    if need is None:
        need = planner.train_need(smallest, state.options, state.source_len)
    tried: set[str] = set()
    while not need.fits:
        open_steps = [
            s
            for s in ladder_steps(planner.request, state.options, state.source_len, planner.gpu)
            if s.name not in tried
        ]
        if not open_steps:
            break
        step = open_steps[0]
        tried.add(step.name)
        trial = planner.train_need(smallest, step.options, step.source_len)
        before = f"micro-batch {smallest} needs {format_gib(need.required_bytes)}"
        if trial.required_bytes < need.required_bytes:
            state.reasons.append(
                f"{step.description}: {before} > {format_gib(planner.usable)} usable; "
                f"with it {format_gib(trial.required_bytes)}"
            )
            if step.name.startswith("source_len="):
                # Only the final length matters to the user: replace an earlier halving.
                state.warnings[:] = [w for w in state.warnings if not w.startswith(_CUT_WARNING)]
                state.warnings.append(f"{_CUT_WARNING}: {step.description}")
            state.options, state.source_len, need = step.options, step.source_len, trial
        else:
            state.rejected.add(step.name)
            state.reasons.append(
                f"{step.description}: skipped, it does not lower the need "
                f"({format_gib(trial.required_bytes)} vs {format_gib(need.required_bytes)})"
            )
    state.need = need


def _starting_need(planner: Planner, state: PlanState, smallest: int) -> Need | None:
    """The need at the largest fitting divisor of the per-GPU batch (None if none fits)."""
    candidates = [m for m in divisors(planner.request.per_rank_batch) if m >= smallest]

    def fits(m: int) -> bool:
        return planner.train_need(m, state.options, state.source_len).fits

    best = largest_fitting(candidates, fits)
    return None if best is None else planner.train_need(best, state.options, state.source_len)


def choose_micro_batch(planner: Planner, state: PlanState, fixed_micro: int | None) -> None:
    """The largest divisor of the per-GPU batch that fits (or the requested one)."""
    assert state.need is not None
    usable = format_gib(planner.usable)
    if not state.need.fits:
        state.micro = fixed_micro or 1
        state.reasons.append(
            f"does not fit: micro-batch {state.micro} at source length {state.source_len} "
            f"needs {format_gib(state.need.required_bytes)} but {planner.gpu.name} leaves "
            f"{usable} usable after every fallback"
        )
        return
    if fixed_micro is not None:
        state.micro = fixed_micro
        state.reasons.append(
            f"micro-batch {fixed_micro}: as requested; needs "
            f"{format_gib(state.need.required_bytes)} of {usable} usable"
        )
        return
    per_rank = planner.request.per_rank_batch
    candidates = divisors(per_rank)

    def fits(m: int) -> bool:
        return planner.train_need(m, state.options, state.source_len).fits

    state.micro = largest_fitting(candidates, fits) or 1
    state.need = planner.train_need(state.micro, state.options, state.source_len)
    larger = [d for d in candidates if d > state.micro]
    why = f"the largest divisor of {per_rank} that fits"
    if larger:
        above = planner.train_need(larger[0], state.options, state.source_len)
        why += f" ({larger[0]} would need {format_gib(above.required_bytes)})"
    state.reasons.append(
        f"micro-batch {state.micro}: {why}; needs {format_gib(state.need.required_bytes)} of "
        f"{usable} usable on {planner.gpu.name}"
    )


def explain_engine(planner: Planner, state: PlanState, geometry: BatchGeometry) -> None:
    """Reasons for the batch geometry, checkpointing, optimizer and DDP/ZeRO engine."""
    request = planner.request
    state.reasons.append(geometry.describe())
    if request.gradient_checkpointing == "auto" and not state.options.gradient_checkpointing:
        state.reasons.append(
            "gradient checkpointing off: not needed, it would cost ~30% more compute"
        )
    if state.options.optimizer == "adamw":
        state.reasons.append(
            "optimizer: fused AdamW (updates in place, no parameter-sized temporaries)"
        )
    assert state.need is not None
    if request.zero_stage > 0:
        where = "CPU" if request.offload else "the GPUs"
        sharded = {1: "optimizer state", 2: "optimizer state and gradients"}.get(
            request.zero_stage, "optimizer state, gradients and parameters"
        )
        states = state.need.zero_states
        state.reasons.append(
            f"DeepSpeed ZeRO-{request.zero_stage}: {sharded} sharded over "
            f"{request.world_size} GPU(s), optimizer state on {where}; per-rank model states "
            f"{format_gib(states.gpu_bytes if states else 0)} on the GPU"
        )
    elif request.world_size > 1:
        state.reasons.append(
            "counted DDP's gradient buckets (one fp32 gradient per trainable parameter, "
            "held from the start) and the all-reduce staging bucket per GPU"
        )
