"""The typed configuration schema: the blocks of one section, each key's type, default
and help text.

A section has the blocks ``model``, ``tokenizer``, ``data``, ``training``, ``inference`` and
``hardware``; ``SectionConfig`` is one resolved section. Reading ``config.yaml`` (strict YAML,
``extends`` inheritance, ``--set`` overrides) is ``config_load``; turning the merged mapping
into these types, with every problem reported at once, is ``config_validate``.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from dialsum.core.tokens import SPECIAL_TOKENS

Auto = Literal["auto"]


def _f(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with its help text: the documentation of the key."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: copy.deepcopy(d), metadata={"help": help})
    return field(default=default, metadata={"help": help, **kwargs})


ModelKind = Literal["seq2seq", "causal"]
Method = Literal["full", "lora", "qlora"]

ALL_LINEAR = "all-linear"
"""peft's name for "every linear layer but the output head" (the causal LoRA default)."""

DEFAULT_PROMPT_TEMPLATE = "다음 대화를 읽고 핵심 내용을 한국어로 요약하세요.\n\n{dialogue}\n\n요약:"
"""The built-in Korean instruction for causal LMs (the user turn under a chat template)."""


@dataclass
class LoraConfig:
    enabled: bool = _f(
        False, "Train LoRA adapters instead of all weights (the same as model.method: lora)."
    )
    rank: int = _f(8, "LoRA rank r.")
    alpha: int = _f(16, "LoRA scaling alpha.")
    dropout: float = _f(0.05, "Dropout on the LoRA path.")
    target_modules: list[str] | Literal["all-linear"] | None = _f(
        None,
        "Module names that get adapters; null = the attention q,k,v,o projections for "
        "seq2seq models, 'all-linear' (peft: every linear layer but the head) for causal LMs.",
    )


@dataclass
class QuantizationConfig:
    quant_type: Literal["nf4", "fp4"] = _f("nf4", "4-bit data type of the frozen weights (qlora).")
    double_quant: bool = _f(True, "Quantize the 4-bit scales again (about 0.4 bit/param less).")
    compute_dtype: Literal["auto", "bf16", "fp16", "fp32"] = _f(
        "auto",
        "dtype the 4-bit weights are dequantized to for each matmul; auto = bf16 where the "
        "GPU has it, fp16 on older GPUs, fp32 on CPU.",
    )


@dataclass
class ModelConfig:
    name: str = _f(
        "", "Hub id, local directory, or tiny:t5 / tiny:bart / tiny:llama (built offline)."
    )
    kind: Literal["auto", "seq2seq", "causal"] = _f(
        "auto",
        "seq2seq (T5, mT5, BART) or causal (decoder-only: Llama, Qwen2, Gemma2, Mistral); "
        "auto = from the model's config (is_encoder_decoder / architectures).",
    )
    method: Method | None = _f(
        None,
        "full (every weight trains), lora (adapters, base frozen) or qlora (adapters on a "
        "4-bit base; causal LMs, needs `uv sync --extra bnb`); null = lora when "
        "model.lora.enabled, else full - and for a causal LM that does not fit, the plan "
        "names the method that would.",
    )
    trust_remote_code: bool = _f(False, "Run model code from the hub repository (off: safer).")
    dropout: float | None = _f(None, "Override every dropout probability of the model.")
    lora: LoraConfig = field(default_factory=LoraConfig)
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)

    @property
    def training_method(self) -> Method:
        """The method a run uses (validation resolves ``method`` from ``lora.enabled``)."""
        return self.method or ("lora" if self.lora.enabled else "full")

    @property
    def adapters(self) -> bool:
        """Whether the run trains LoRA adapters (lora or qlora)."""
        return self.training_method != "full"


@dataclass
class TokenizerConfig:
    name: str | None = _f(None, "Tokenizer id or directory; defaults to model.name.")
    prefix: str = _f("", "Text put before every dialogue, e.g. 'summarize: ' for T5.")
    max_source_length: int = _f(512, "Encoder tokens kept per dialogue (longer is truncated).")
    max_target_length: int = _f(64, "Decoder tokens kept per summary (longer is truncated).")
    special_tokens: list[str] = _f(list(SPECIAL_TOKENS), "Tokens never split (speakers, PII).")
    prompt_template: str = _f(
        DEFAULT_PROMPT_TEMPLATE,
        "Causal LMs: the instruction around each dialogue; {dialogue} marks where it goes "
        "(the user turn when a chat template is used). Seq2seq models use prefix instead.",
    )
    system_prompt: str | None = _f(
        None, "Causal LMs with a chat template: a system turn before the instruction."
    )
    chat_template: bool | Auto = _f(
        "auto",
        "Causal LMs: wrap the instruction in the tokenizer's chat template; auto = when the "
        "tokenizer has one (instruct models), else the plain template.",
    )


@dataclass
class DataConfig:
    train: str = _f("data/sample/train.csv", "Training CSV: fname, dialogue, summary[, topic].")
    dev: str = _f("data/sample/dev.csv", "Validation CSV with reference summaries.")
    test: str = _f("data/sample/test.csv", "Test CSV: fname, dialogue.")
    max_train_samples: int | None = _f(None, "Use only the first N training rows.")
    max_eval_samples: int | None = _f(None, "Evaluate on the first N validation rows only.")


@dataclass
class WandbConfig:
    project: str | None = _f(None, "W&B project; setting it turns W&B logging on.")
    mode: Literal["online", "offline", "disabled"] = _f("offline", "W&B mode.")


@dataclass
class TrainingConfig:
    output_dir: str = _f("runs", "Folder that holds one sub-folder per run.")
    effective_batch_size: int = _f(16, "Rows per optimizer step over all GPUs (your intent).")
    micro_batch_size: int | Auto = _f("auto", "Rows per forward pass per GPU; auto = planner.")
    gradient_accumulation_steps: int | None = _f(
        None,
        "Derived: effective / (micro x GPUs); set it only to assert that. Loading checks that "
        "it x micro_batch_size divides effective_batch_size (when both are numbers); the run "
        "refuses to start unless it equals effective / (micro x GPUs) for the micro-batch the "
        "run uses (the planned one when auto) and the number of processes it runs on. A "
        "--resume that keeps a smaller micro-batch from an OOM recovery drops the assertion "
        "(the run already went on at more accumulation, same effective batch).",
    )
    eval_batch_size: int | Auto = _f("auto", "Rows per evaluation generate() call.")
    num_train_epochs: float = _f(3.0, "Epochs (ignored when max_steps > 0).")
    max_steps: int = _f(-1, "Optimizer steps; -1 = use num_train_epochs.")
    learning_rate: float = _f(5e-5, "Peak learning rate.")
    weight_decay: float = _f(0.01, "AdamW weight decay.")
    warmup_ratio: float = _f(0.0, "Fraction of steps for linear warm-up.")
    lr_scheduler_type: Literal[
        "linear", "cosine", "constant", "constant_with_warmup", "polynomial"
    ] = _f("linear", "Learning-rate schedule.")
    optimizer: Literal[
        "auto", "adamw", "adamw_foreach", "adafactor", "adamw8bit", "paged_adamw8bit", "sgd"
    ] = _f(
        "auto",
        "auto = fused AdamW, which the planner may replace by Adafactor when memory is short; "
        "a named optimizer is kept (adamw8bit and paged_adamw8bit - states pageable to CPU "
        "memory - need a CUDA GPU and `uv sync --extra bnb`).",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = _f(
        "auto", "auto = bf16 where the GPU has it, else fp32 (T5) / fp16 (BART)."
    )
    allow_fp16_for_t5: bool = _f(False, "Let fp16 be used for T5/mT5 (known to give NaN).")
    gradient_checkpointing: bool | Auto = _f("auto", "Recompute activations in backward.")
    group_by_length: bool = _f(True, "Batch rows of similar length (less padding).")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm.")
    label_smoothing: float = _f(0.0, "Label smoothing factor.")
    eval_strategy: Literal["no", "steps", "epoch"] = _f("epoch", "When to evaluate.")
    eval_steps: int | None = _f(None, "Evaluate every N steps (eval_strategy: steps).")
    save_strategy: Literal["no", "steps", "epoch", "best"] = _f("epoch", "When to checkpoint.")
    save_steps: int = _f(500, "Checkpoint every N steps (save_strategy: steps).")
    save_total_limit: int | None = _f(2, "Keep at most N checkpoints (the best is kept).")
    logging_steps: int = _f(10, "Log every N steps.")
    early_stopping_patience: int | None = _f(None, "Stop after N evaluations without gain.")
    early_stopping_threshold: float = _f(0.0, "Minimum score gain that counts.")
    metric_for_best_model: Literal["score", "rouge1", "rouge2", "rougeL", "loss"] = _f(
        "score", "Metric that picks the best checkpoint (score = mean ROUGE F1 x 100)."
    )
    seed: int = _f(42, "Random seed.")
    report_to: list[str] = _f(["tensorboard"], "Loggers: tensorboard, wandb, none.")
    wandb: WandbConfig = field(default_factory=WandbConfig)
    dataloader_num_workers: int = _f(0, "DataLoader worker processes.")


@dataclass
class InferenceConfig:
    batch_size: int | Auto = _f("auto", "Rows per generate() call; auto = planner.")
    num_beams: int = _f(4, "Beam search width.")
    max_new_tokens: int | None = _f(None, "Longest summary; default tokenizer.max_target_length.")
    min_new_tokens: int = _f(0, "Shortest summary in tokens.")
    no_repeat_ngram_size: int = _f(0, "Forbid repeating n-grams of this size (0 = off).")
    length_penalty: float = _f(1.0, "Beam length penalty (>1 favours longer).")
    early_stopping: bool = _f(True, "Stop beams when num_beams finished candidates exist.")
    output: str | None = _f(None, "Submission CSV; default <run>/submission.csv.")


@dataclass
class HardwareConfig:
    gpu: str = _f("auto", "auto = detected GPU; or a slug (a100-40gb) or a size (24GB).")
    memory_margin: float = _f(0.05, "Fraction of GPU memory kept free as a safety margin.")
    cpu: bool = _f(False, "Force CPU even when a GPU exists.")
    zero_stage: Literal[0, 1, 2, 3] = _f(0, "DeepSpeed ZeRO stage; 0 = no DeepSpeed.")
    offload: bool = _f(False, "DeepSpeed: offload optimizer state (and stage-3 params) to CPU.")
    memory_cap_gib: float | None = _f(
        None,
        "CPU runs only: emulate a device of this many GiB - plan against it and raise an "
        "out-of-memory error when live tensors would exceed it (checks plans without a GPU).",
    )


@dataclass
class SectionConfig:
    """One resolved section: the settings of one model/recipe."""

    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    name: str = field(default="", metadata={"internal": True})
    source: str = field(default="", metadata={"internal": True})

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("name")
        data.pop("source")
        return data

    @property
    def max_new_tokens(self) -> int:
        return self.inference.max_new_tokens or self.tokenizer.max_target_length
