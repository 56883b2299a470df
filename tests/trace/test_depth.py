"""A deep model's timeline from shallow traces: exact insertions, and the same profile as a
full-depth trace for every family (T5, BART, Llama, Gemma-2 with its period of 2)."""

from __future__ import annotations

import pytest
from transformers import BartConfig, Gemma2Config, LlamaConfig, MT5Config, T5Config

from dialsum.models.architectures import known_config
from dialsum.trace import depth, repeat, reuse
from dialsum.trace.generation_trace import simulate_generate
from dialsum.trace.profile import GenerateShape, TrainOptions, TrainShape
from dialsum.trace.step_trace import simulate_train

# -- the alignment, on letters ----------------------------------------------------------


def test_insertions_are_the_fewest_runs_that_turn_a_into_b() -> None:
    a = list("xEEyDDz")
    b = list("xEEEyDDDz")
    # Any E of a run could be "the new one" (the same b); ties go to the first place.
    assert depth.insertions(a, b) == [(1, ["E"]), (4, ["D"])]
    assert depth.insertions(list("ab"), list("axyb")) == [(1, ["x", "y"])]  # one run
    assert depth.insertions(a, a) == []
    assert depth.insertions(list("abc"), list("ab")) is None  # shorter
    assert depth.insertions(list("abc"), list("abd")) is None  # not an insertion


def test_pumped_repeats_each_segment_at_its_position() -> None:
    a = list("ab")
    assert depth.pumped(a, [(1, ["x", "y"])], 3) == list("axyxyxyb")
    assert depth.pumped(a, [(0, ["s"]), (2, ["e"])], 2) == list("ssabee")
    assert depth.pumped(a, [(1, ["x"])], 0) == a


def test_repeating_splits_a_run_that_merged_two_stacks() -> None:
    # Two encoder layers' work, then two decoder layers'. One more layer of each could be
    # read as "E D" inserted between the stacks (one run, fewest), but repeated twice that
    # gives E E E D E D D D: the split must move D to the end of the decoder's layers.
    a, b, c = list("EEDD"), list("EEEDDD"), list("EEEEDDDD")
    found = depth.repeating(a, b, c)
    assert found is not None
    assert depth.pumped(a, found, 1) == b
    assert depth.pumped(a, found, 2) == c
    assert depth.pumped(a, found, 5) == list("E" * 7 + "D" * 7)


def test_repeating_refuses_what_does_not_repeat() -> None:
    # The third trace is not the first with the same layer added twice.
    assert depth.repeating(list("ab"), list("axb"), list("axyb")) is None


def _upper(events) -> list:
    """A view that forgets what a batch size changes (here: the letter's case)."""
    return [e.upper() for e in events]


def test_repeating_across_batches_checks_structure_and_equal_copies() -> None:
    # c is at another batch size: other sizes (other letters), the same ops. E and D look
    # alike in structure ("a layer"), so only c's unequal copies reveal the merged run.
    a, b, c = list("eedd"), list("eeeddd"), list("xxxxyyyy")

    def layer_view(events) -> list:
        return ["layer"] * len(events)

    found = depth.repeating(a, b, c, view=layer_view)
    assert found == [(2, ["e"]), (4, ["d"])]
    assert depth.split(c, repeat.Repeat.of(0, found).layout, 2) == (
        list("xxyy"),
        [(2, ["x"]), (4, ["y"])],
    )
    # The copies differ at the other batch size: not repeated there.
    assert depth.repeating(a, b, list("xxxzyyyy"), view=layer_view) is None


def test_split_undoes_pumped_and_refuses_unequal_copies() -> None:
    a, inserted = list("abc"), [(1, ["x", "y"]), (3, ["z"])]
    longer = depth.pumped(a, inserted, 2)
    assert depth.split(longer, [(1, 2), (3, 1)], 2) == (a, inserted)
    longer[3] = "q"  # the second copy of "x y" differs
    assert depth.split(longer, [(1, 2), (3, 1)], 2) is None
    assert depth.split(list("ab"), [(1, 2)], 2) is None  # too short for two copies


def test_carried_layout_places_copies_that_lost_events() -> None:
    # At REPLAY_LO a layer is "X z Y"; at batch 1 its copy "z" is skipped in every layer.
    a, inserted = list("AB"), [(1, list("XZY"))]
    longer = depth.pumped(a, inserted, 2)  # A XZY XZY B
    other = list("axyxyb")
    assert depth.carried_layout(longer, inserted, other, _upper) == [(1, 2)]
    assert depth.split(other, [(1, 2)], 2) == (list("ab"), [(1, list("xy"))])
    # One copy lost an event the other kept: no common layout.
    assert depth.carried_layout(longer, inserted, list("axyxzyb"), _upper) is None
    # An event the recording at REPLAY_LO does not have: not a subsequence.
    assert depth.carried_layout(longer, inserted, list("axwyxyb"), _upper) is None


# -- shallow traces repeated == the full-depth trace ------------------------------------

T5 = T5Config(
    vocab_size=300,
    d_model=32,
    d_ff=64,
    d_kv=8,
    num_layers=6,  # T5's block 0 differs (position bias): repeats start at 2 layers
    num_decoder_layers=5,
    num_heads=4,
    tie_word_embeddings=False,
    decoder_start_token_id=0,
    pad_token_id=0,
)
# mT5's shape (gated-GELU FFN, untied head) with Adafactor: per-parameter updates whose
# ops and sizes repeat across parameters, so only parameter names cut them per layer.
MT5 = MT5Config(
    vocab_size=300,
    d_model=32,
    d_ff=48,
    d_kv=8,
    num_layers=6,
    num_decoder_layers=6,
    num_heads=4,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
    decoder_start_token_id=0,
    pad_token_id=0,
)
BART = BartConfig(
    vocab_size=300,
    d_model=32,
    encoder_layers=4,
    decoder_layers=5,
    encoder_ffn_dim=64,
    decoder_ffn_dim=64,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    max_position_embeddings=128,
)
LLAMA = LlamaConfig(
    vocab_size=300,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=6,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)
GEMMA2 = Gemma2Config(
    vocab_size=300,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=10,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    max_position_embeddings=256,
    sliding_window=16,
)


@pytest.fixture
def shallow(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """Stacks of 4+ layers are repeated from shallow traces (8+ in production: these
    models are small); records which of ``repeat.deep`` (one batch size, three traces),
    ``deep_pair`` (the two recordings for replay) and ``deep_one`` (batch 1, one trace)
    answered, to prove they were used."""
    monkeypatch.setattr(repeat, "MIN_LAYERS", 4)
    monkeypatch.setattr(reuse, "_TIMELINES", {})
    answered: list[tuple[str, bool]] = []

    def spy(name: str):
        original = getattr(reuse, name)

        def spied(*args, **kwargs):
            out = original(*args, **kwargs)
            answered.append((name, out is not None))
            return out

        # reuse calls it by the name it imported
        monkeypatch.setattr(reuse, name, spied)

    for name in ("deep", "deep_pair", "deep_one"):
        spy(name)
    return answered


@pytest.mark.parametrize(
    ("config", "options", "batches"),
    [
        (T5, TrainOptions(), (1, 5)),
        (T5, TrainOptions(precision="bf16", gradient_checkpointing=True), (1, 5)),
        (BART, TrainOptions(precision="fp16", optimizer="adafactor", micro_batches=2), (1, 5)),
        (MT5, TrainOptions(precision="bf16", optimizer="adafactor"), (5,)),
        (LLAMA, TrainOptions(lora=True, gradient_checkpointing=True, precision="bf16"), (1, 5)),
        (GEMMA2, TrainOptions(precision="bf16"), (5,)),
    ],
    ids=[
        "t5",
        "t5-bf16-ckpt",
        "bart-fp16-adafactor-micro2",
        "mt5-bf16-adafactor",
        "llama-lora-ckpt",
        "gemma2-bf16",
    ],
)
def test_train_profile_repeated_from_shallow_traces_equals_the_full_trace(
    config, options, batches, shallow
) -> None:
    # Batch 1 is repeated from one shallow trace at batch 1, placed by the recordings'
    # layout; batch 5 is replayed from recordings at 2 and 3 rows, both repeated from
    # three shallow traces.
    for batch in batches:
        shape = TrainShape(batch, 32, 8)
        full = simulate_train(config, shape, options, use_cache=False, replay_batches=False)
        repeated = simulate_train(config, shape, options, use_cache=False)
        assert repeated == full, batch
    assert shallow == [("deep_pair", True)] + [("deep_one", True)] * (1 in batches)


def test_a_pair_whose_first_layer_aligns_unlike_the_rest_starts_one_layer_deeper(
    shallow, monkeypatch: pytest.MonkeyPatch
) -> None:
    # kobart in fp32: with 1 and 2 layers per stack, the fewest insertions place the first
    # layer's backward events unlike the later layers', and 3 layers do not repeat them.
    # The pair then starts at 2 layers (the trace at 2 kept) instead of tracing every
    # batch size three times over (``repeat.deep``).
    starts: list[tuple[int, bool]] = []
    pair_from = repeat._pair_from

    def spied(stacks, start, *args):
        out = pair_from(stacks, start, *args)
        starts.append((start, out is not None))
        return out

    monkeypatch.setattr(repeat, "_pair_from", spied)
    config = known_config("digit82/kobart-summarization")
    shape = TrainShape(5, 32, 8)
    repeated = simulate_train(config, shape, TrainOptions(), use_cache=False)
    assert starts == [(1, False), (2, True)]
    assert shallow == [("deep_pair", True)]
    full = simulate_train(config, shape, TrainOptions(), use_cache=False, replay_batches=False)
    assert repeated == full


@pytest.mark.parametrize("config", [T5, BART, LLAMA, GEMMA2], ids=["t5", "bart", "llama", "gemma2"])
def test_generation_profile_repeated_from_shallow_traces_equals_the_full_trace(
    config, shallow
) -> None:
    shape = GenerateShape(5, 32, 6, num_beams=3)
    full = simulate_generate(config, shape, "bf16", use_cache=False, replay_batches=False)
    repeated = simulate_generate(config, shape, "bf16", use_cache=False)
    assert repeated == full
    assert shallow == [("deep_pair", True)]
