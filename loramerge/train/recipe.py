"""Training recipes: one schema for train-align and train-task (the objective mix is the difference)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from loramerge.recipes import StrictModel

Mode = Literal["align", "task"]  # train-align: pairs only; train-task: task data, with pairs jointly
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class LoraSettings(StrictModel):
    """The paper's LoRA: r=8, alpha=16, dropout 0.1 on every linear projection of every block."""

    r: int = Field(8, gt=0)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: list(ALL_LINEAR), min_length=1)
    use_rslora: bool = False


class AlignSettings(StrictModel):
    layer: int | Literal["auto"] | None = Field(
        None, description="hidden_states index k >= 1; default round(L/2); 'auto': best retrieval on eval_pairs"
    )
    temperature: float = Field(0.1, gt=0.0)
    symmetric: bool = Field(False, description="also score targets against sources (the reference is one-way)")
    # Measured with `loramerge probe` on gettext pairs in 7 languages (BENCHMARKS.md, "Alignment pooling"): leaving the
    # first token out lifts retrieval at layer round(L/2) from 0.31 to 0.49 (Gemma-3-270M) and from
    # 0.12 to 0.24 (SmolLM2-135M); its activation is so large it dominates the mean.
    skip_first_token: bool = Field(True, description="leave the first (BOS) token out of the mean")
    # Anisotropy: mean-pooled states of unrelated sentences share one large component (raw cosines ~0.99), so
    # InfoNCE on raw cosines spends its gradient on that shared direction. Measured on Gemma-3-270M, layer 9,
    # margin retrieval on 100 dev sentences (bench/align_study.py; BENCHMARKS.md, "Why early alignment training lowered retrieval"): raw, 40 steps at lr 1e-3,
    # 69.3 -> 30.0 (aligned languages), 54.5 -> 20.0 (Korean, no alignment data); centred 69.3 -> 89.0, 54.5 -> 74.5.
    center: bool = Field(
        True, description="subtract the micro-batch's mean pooled vector before the cosines; false: the reference's loss"
    )
    max_length: int = Field(128, gt=1, description="tokens per sentence")
    batch_size: int | None = Field(None, gt=1, description="pairs per micro-batch; default: batch_size (>= 2 for negatives)")
    gather_across_processes: bool = Field(True, description="under data parallelism, the global batch serves as negatives")


class OptimizerSettings(StrictModel):
    learning_rate: float = Field(5e-4, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    schedule: Literal["linear", "cosine", "inverse_sqrt", "constant"] = "inverse_sqrt"
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0)
    max_grad_norm: float | None = Field(1.0, gt=0.0)


class TrainRecipe(StrictModel):
    model: str | None = Field(None, description="local folder or org/name[@revision]")
    data: str | None = Field(None, description="task JSONL (train-task)")
    pairs: str | None = Field(None, description="parallel sentences, JSONL or TSV (train-align, joint train-task)")
    eval_data: str | None = None
    eval_pairs: str | None = None
    lora: LoraSettings = Field(default_factory=LoraSettings)
    align: AlignSettings = Field(default_factory=AlignSettings)
    optimizer: OptimizerSettings = Field(default_factory=OptimizerSettings)
    batch_size: int = Field(8, gt=0, description="examples per micro-batch per process")
    grad_accum: int = Field(1, gt=0, description="micro-batches per optimizer step")
    epochs: float = Field(1.0, gt=0.0, description="passes over the main data set (task data; pairs for train-align)")
    max_steps: int | None = Field(None, gt=0, description="optimizer steps; overrides epochs")
    task_per_align: list[int] = Field(
        default_factory=lambda: [1, 1],
        min_length=2,
        max_length=2,
        description="joint training: task, align micro-batches per cycle",
    )
    max_length: int = Field(512, gt=1, description="tokens per task example")
    precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast where the hardware has bf16 matrix units (CUDA, AMX), else float32"
    )
    gradient_checkpointing: bool = False
    split_by_length: bool = Field(
        True, description="run each micro-batch as sub-batches of similar length: the same loss, no compute on padding"
    )
    compact_vocabulary: bool = Field(
        True,
        description="on one CPU process, hold a frozen embedding/LM head that is exactly int8 groups (a Q8_0 GGUF's) in 189 of 671 MB",
    )
    seed: int = 0
    log_every: int = Field(10, gt=0)
    eval_every: int | None = Field(None, gt=0)
    save_every: int | None = Field(None, gt=0, description="checkpoint every N optimizer steps")

    @model_validator(mode="after")
    def _consistent(self) -> TrainRecipe:
        if any(count < 0 for count in self.task_per_align) or sum(self.task_per_align) == 0:
            raise ValueError("task_per_align needs two non-negative counts, not both zero, e.g. [1, 1]")
        return self
