"""The computed guide, driven by an analytic fake simulator whose numbers we can check.

Fake training memory, P = vocab_size x d_model "parameters" (differs per model):
    weights 4P + gradients 4P + optimizer state (AdamW 8P, Adafactor 0)
    + activations: 4 MiB per token per row in fp32, 2 MiB with mixed precision
      (so small GPUs need gradient accumulation).
Fake generation memory: weights (4P fp32, 2P otherwise) + 64 KiB per token per row per beam.
The exact parameter counts in the guide come from building the real architecture on the
meta device, not from the fake.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from dialsum.cli.printers import breakdown_table, format_plan, plan_json
from dialsum.core.config_load import load_section
from dialsum.memory.plan import make_plan
from dialsum.memory.request import PlanRequest
from dialsum.memory.simulator import Simulator
from dialsum.models.architectures import known_config
from dialsum.report.guide import build_guide, curve_precisions, plot_micro_batches, real_sections
from dialsum.report.plots import gpu_line_labels
from dialsum.report.snippets import settings_snippet
from dialsum.speed.gpus import resolve_gpu
from dialsum.trace.profile import GenerateShape, MemoryProfile, TrainOptions, TrainShape

CONFIG = Path(__file__).resolve().parents[2] / "config.yaml"
SECTIONS = [
    "eenzeenee",
    "xlsum_mt5",
    "kobart",
    "solar_qlora",
    "qwen2_5_3b",
    "llama3_2_3b",
    "gemma2_2b",
]
GPUS = ["v100-16gb", "rtx3080-10gb", "a100-40gb"]
EXACT_PARAMS = {
    "eenzeenee": 275_579_136,
    "xlsum_mt5": 582_401_280,
    "kobart": 123_859_968,
    "solar_qlora": 10_731_524_096,
    "qwen2_5_3b": 3_085_938_688,
    "llama3_2_3b": 3_212_749_824,
    "gemma2_2b": 2_614_341_888,
}
MT5_VOCAB = 250_112  # the second section's model: the crash test fails there
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
KIB, MIB = 2**10, 2**20
_STATE_BYTES_PER_PARAM = {
    "adamw": 8,
    "adamw8bit": 2,
    "paged_adamw8bit": 2,
    "adafactor": 0,
    "sgd": 0,
}


def fake_params(config: object) -> int:
    width = getattr(config, "d_model", None) or config.hidden_size  # seq2seq or causal
    return config.vocab_size * width


def fake_train_breakdown(config: object, shape: TrainShape, options: TrainOptions) -> dict:
    params = fake_params(config)
    per_token = 4 * MIB if options.precision == "fp32" else 2 * MIB
    if options.gradient_checkpointing:
        per_token //= 4
    return {
        "weights": 4 * params,
        "gradients": 4 * params,
        "optimizer_state": _STATE_BYTES_PER_PARAM[options.optimizer] * params,
        "activations": per_token * shape.batch * (shape.source_len + shape.target_len),
        "temporaries": 0,
    }


@dataclass
class FakeSimulator:
    """Exact analytic memory; records calls; optionally fails for one vocabulary size."""

    fail_on_vocab: int | None = None
    train_calls: list[tuple[int, TrainShape, TrainOptions]] = field(default_factory=list)
    generate_calls: list[tuple[int, GenerateShape, object]] = field(default_factory=list)

    def _maybe_fail(self, config: object) -> None:
        if config.vocab_size == self.fail_on_vocab:  # type: ignore[attr-defined]
            raise RuntimeError("simulated crash in the middle of the guide")

    def train(self, config: object, shape: TrainShape, options: TrainOptions) -> MemoryProfile:
        self._maybe_fail(config)
        self.train_calls.append((config.vocab_size, shape, options))  # type: ignore[attr-defined]
        breakdown = fake_train_breakdown(config, shape, options)
        params = fake_params(config)
        return MemoryProfile(params, params, sum(breakdown.values()), "backward", breakdown)

    def generate(self, config: object, shape: GenerateShape, options) -> MemoryProfile:
        self._maybe_fail(config)
        self.generate_calls.append((config.vocab_size, shape, options))  # type: ignore[attr-defined]
        params = fake_params(config)
        weights = params * (4 if options.precision == "fp32" or options.amp else 2)
        cache = 64 * KIB * shape.batch * shape.num_beams * (shape.source_len + shape.max_new_tokens)
        breakdown = {"weights": weights, "activations": cache}
        return MemoryProfile(params, 0, weights + cache, "decode_step", breakdown)

    def as_simulator(self) -> Simulator:
        return Simulator(train=self.train, generate=self.generate)


@pytest.fixture(autouse=True)
def _no_calibration_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # default_overheads() reads ~/.cache/dialsum/calibration.json when present: keep the
    # tests on the documented defaults whatever the machine has.
    monkeypatch.delenv("DIALSUM_CALIBRATION", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def build(out: Path, simulator: FakeSimulator | None = None, **kwargs: object):
    fake = simulator or FakeSimulator()
    return build_guide(
        CONFIG,
        sections=kwargs.pop("sections", SECTIONS),  # type: ignore[arg-type]
        gpus=GPUS,
        out=out,
        simulator=fake.as_simulator(),
        progress=False,
        **kwargs,  # type: ignore[arg-type]
    )


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def table_rows(markdown: str, slug: str) -> list[list[str]]:
    rows = [line for line in markdown.splitlines() if line.startswith(f"| {slug} |")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


@pytest.fixture(scope="module")
def guide(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("guide") / "guide.md"
    # Module-scoped: the autouse fixture is function-scoped, so pin the overheads here too.
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("DIALSUM_CALIBRATION", raising=False)
        for name in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF", "DIALSUM_SET_ALLOC_CONF"):
            mp.delenv(name, raising=False)
        mp.setenv("HOME", str(tmp_path_factory.mktemp("home")))
        fake = FakeSimulator()
        result = build(out, fake)
    return result, fake


# --- selection --------------------------------------------------------------------------


def test_default_sections_are_the_real_models_in_file_order() -> None:
    assert real_sections(CONFIG) == SECTIONS


def test_plot_micro_batches_reuse_the_planner_divisors() -> None:
    assert plot_micro_batches(16) == [1, 2, 4, 8, 16, 32]
    assert plot_micro_batches(12) == [1, 2, 3, 4, 6, 8, 12, 16, 32]


# --- the written guide -------------------------------------------------------------------


def test_guide_writes_markdown_yaml_and_one_png_per_section(guide) -> None:
    result, _ = guide
    assert result.markdown_path.is_file()
    assert result.yaml_path == result.markdown_path.with_suffix(".yaml")
    assert set(result.plot_paths) == set(SECTIONS)
    for section, path in result.plot_paths.items():
        assert path.name == f"guide-{section}.png"
        assert path.read_bytes()[:8] == PNG_MAGIC
    # Nothing but the guide is left behind (no temp files).
    names = {p.name for p in result.markdown_path.parent.iterdir() if p.is_file()}
    assert names == {p.name for p in result.paths}
    assert result.seconds > 0


def test_markdown_has_exact_parameter_counts(guide) -> None:
    result, _ = guide
    markdown = result.markdown_path.read_text()
    for section, count in EXACT_PARAMS.items():
        assert f"## {section}" in markdown
        assert f"**{count:,}**" in markdown
    assert "untied `lm_head` of 38,674,944" in markdown  # eenzeenee: 50358 x 768
    assert "30,000-element `final_logits_bias`" in markdown
    assert "1.2B" in markdown and "220M" in markdown  # the corrections list
    assert "silently gave 4, 8, 8, 16, 8 and 2 on different GPUs" in markdown
    assert "How this was computed" in markdown


def test_every_gpu_row_keeps_the_effective_batch(guide) -> None:
    result, _ = guide
    markdown = result.markdown_path.read_text()
    micro_sizes = set()
    for slug in GPUS:
        rows = table_rows(markdown, slug)
        assert len(rows) == len(SECTIONS)
        for cells in rows:
            micro, accumulation, effective = int(cells[3]), int(cells[4]), int(cells[5])
            assert effective == 16
            assert micro * accumulation == effective
            micro_sizes.add(micro)
    assert len(micro_sizes) > 1  # the GPUs really differ, yet the effective batch does not


def test_yaml_settings_keep_the_effective_batch(guide) -> None:
    result, _ = guide
    data = yaml.safe_load(result.yaml_path.read_text())
    assert list(data["sections"]) == SECTIONS
    for section in SECTIONS:
        entry = data["sections"][section]
        assert entry["params"] == EXACT_PARAMS[section]
        effective = load_section(CONFIG, section).training.effective_batch_size
        assert set(entry["gpus"]) == set(GPUS)
        for gpu in entry["gpus"].values():
            training = gpu["settings"]["training"]
            assert training["effective_batch_size"] == effective
            assert training["micro_batch_size"] * training["gradient_accumulation_steps"] == (
                effective
            )
            assert gpu["settings"]["inference"]["batch_size"] >= 1


def test_yaml_predictions_are_the_fake_numbers(guide) -> None:
    result, _ = guide
    data = yaml.safe_load(result.yaml_path.read_text())
    config = known_config("eenzeenee/t5-base-korean-summarization")
    gpu = data["sections"]["eenzeenee"]["gpus"]["a100-40gb"]
    training = gpu["settings"]["training"]
    assert training["precision"] == "bf16"
    shape = TrainShape(training["micro_batch_size"], 512, 64)
    expected = sum(fake_train_breakdown(config, shape, TrainOptions(precision="bf16")).values())
    assert gpu["predicted"]["train_peak_bytes"] == expected
    # Documented defaults with the allocator runs use (expandable segments; the fixture
    # clears any allocator setting of the environment): 3% fragmentation, rounded up, plus
    # 64 MiB of library workspaces.
    assert gpu["predicted"]["train_required_bytes"] == -(-expected * 103 // 100) + 64 * MIB
    # T5 on V100: fp32, never fp16.
    v100 = data["sections"]["eenzeenee"]["gpus"]["v100-16gb"]
    assert v100["settings"]["training"]["precision"] == "fp32"


def test_simulations_are_not_repeated_across_gpus(guide) -> None:
    _, fake = guide
    assert len(fake.train_calls) == len(set(fake.train_calls))
    assert len(fake.generate_calls) == len(set(fake.generate_calls))


def test_guide_result_holds_plans(guide) -> None:
    result, _ = guide
    assert set(result.plans) == set(SECTIONS)
    for plans in result.plans.values():
        assert set(plans) == set(GPUS)
    assert result.to_json_dict()["plans"]["kobart"]["a100-40gb"]["effective_batch_size"] == 16


# --- atomicity ---------------------------------------------------------------------------


def test_failure_mid_way_leaves_the_previous_guide_untouched(tmp_path: Path) -> None:
    out = tmp_path / "docs" / "guide.md"
    build(out)
    before = snapshot(out.parent)
    crash = FakeSimulator(fail_on_vocab=MT5_VOCAB)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build(out, crash)
    assert snapshot(out.parent) == before


def test_failure_without_previous_guide_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "docs" / "guide.md"
    crash = FakeSimulator(fail_on_vocab=MT5_VOCAB)
    with pytest.raises(RuntimeError):
        build(out, crash)
    assert not out.parent.exists() or not any(out.parent.iterdir())


# --- printers for `dialsum plan` --------------------------------------------------------


def _a100_plan():
    request = PlanRequest(
        model_config=known_config("eenzeenee/t5-base-korean-summarization"),
        source_len=512,
        target_len=64,
        effective_batch_size=16,
    )
    gpu = resolve_gpu("a100-40gb")
    return make_plan(request, gpu, simulator=FakeSimulator().as_simulator())


def test_format_plan_says_settings_and_memory() -> None:
    text = format_plan(_a100_plan())
    # By hand: usable 42,505,273,344 - 768 MiB context - 5% margin = 36.86 GiB; bf16 rows
    # of 512 + 64 tokens take 2 MiB x 576 = 1.125 GiB of fake activations, so micro-batch
    # 16 (18 GiB, plus 0.58 GiB of weights, gradients and AdamW state) fits without
    # accumulation.
    assert "GPU: A100 40GB (a100-40gb), 36.86 GiB usable of 39.59 GiB" in text
    assert "micro-batch 16 x 1 accumulation x 1 GPU(s) = effective batch 16" in text
    assert "predicted training peak 18.58 GiB (backward)" in text
    assert text.splitlines()[5].endswith("-> fits")


def test_breakdown_table_in_gib_with_shares() -> None:
    plan = _a100_plan()
    console = Console(record=True, width=120)
    console.print(breakdown_table(plan.train_profile))
    text = console.export_text()
    # By hand from the fake (P = 50,358 x 768 = 38,674,944; bf16, AdamW, micro-batch 16 of
    # 576 tokens): activations 2 MiB x 16 x 576 = 18 GiB of a 19,946,151,936-byte peak
    # (18.58 GiB) = 96.9%; weights 4P = 0.14 GiB = 0.8%; AdamW state 8P = 0.29 GiB = 1.6%.
    assert re.search(r"activations\s+│\s+18\.00\s+│\s+96\.9%", text)
    assert re.search(r"weights\s+│\s+0\.14\s+│\s+0\.8%", text)
    assert re.search(r"optimizer state\s+│\s+0\.29\s+│\s+1\.6%", text)
    assert re.search(r"peak\s+│\s+18\.58\s+│\s+100\.0%", text)


def test_plan_json_has_the_fields_the_cli_prints() -> None:
    plan = _a100_plan()
    data = plan_json(plan, params=275_579_136)
    for key in (
        "params",
        "micro_batch_size",
        "gradient_accumulation_steps",
        "effective_batch_size",
        "eval_batch_size",
        "generation_batch_size",
        "precision",
        "gradient_checkpointing",
        "predicted_peak_bytes",
        "usable_bytes",
        "breakdown",
    ):
        assert key in data
    assert data["params"] == 275_579_136
    assert plan_json(plan)["params"] == 38_674_944  # the fake's count: 50,358 x 768


def test_settings_snippet_adds_optimizer_and_length_only_when_the_ladder_changed_them() -> None:
    plan = _a100_plan()
    cfg = load_section(CONFIG, "eenzeenee")
    snippet = settings_snippet(plan, cfg)
    assert set(snippet) == {"training", "inference"}
    assert "optimizer" not in snippet["training"]
    assert curve_precisions([plan]) == ["bf16", "fp32"]


def test_gpu_line_labels_merge_cards_with_the_same_memory() -> None:
    usable = {"a100-80gb": 80_000, "h100-80gb": 79_990, "v100-16gb": 15_000}
    assert gpu_line_labels(usable, min_gap_bytes=100) == [
        (15_000, "v100-16gb"),
        (79_990, "h100-80gb, a100-80gb"),
    ]
