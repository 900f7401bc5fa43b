"""One side of bench/train.py's lockstep: a whole training in its own process, one optimizer step per "go".

    python bench/train_side.py SPEC_JSON       (started by bench/train.py; not meant to be run by hand)

Sides: `loramerge` runs `train_adapter` (task, align or joint, as `loramerge train-*` would); `trainer` runs
a `transformers.Trainer` on `peft.get_peft_model`, the baseline users would pick instead, given the same
token ids in the same batches (a sequential sampler over loramerge's batch order). Its alignment loss is the
reference code's: the whole model forward with output_hidden_states, mean-pooled layer k, InfoNCE (the same
`info_nce` and `mean_pool` functions, so only the route differs).

Protocol on stdin/stdout (one JSON object per line, after PREFIX): after each optimizer step the side prints
{"step", "seconds", "tokens", "loss", "objective"} and waits for a line "go" before the next step. A step's
time runs from reading "go" to the end of the step, so the orchestrator can alternate the two sides and
neither computes while the other is timed. At the end it prints {"vmhwm_mib": ...}: the peak resident memory
of this process (VmHWM), model loading included, which is why each side runs in its own process, and on a
GPU the peak of torch's CUDA allocator.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from peft import get_peft_model
from torch.utils.data import SequentialSampler
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed

from loramerge.models.layer_exit import default_layer, num_decoder_layers
from loramerge.models.loading import load_causal_lm, load_tokenizer, parse_model_spec
from loramerge.models.pooling import mean_pool
from loramerge.train.loop import LoopState
from loramerge.train.losses import info_nce
from loramerge.train.objectives import ALIGN, TASK
from loramerge.train.recipe import TrainRecipe
from loramerge.train.run import lora_config, train_adapter
from loramerge.train.streams import build_streams

PREFIX = "@@bench "  # marks protocol lines among the trainings' own output


def vmhwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


class Turns:
    """Reports each step and blocks until the orchestrator hands the turn back."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def step_done(self, record: dict[str, Any]) -> None:
        print(PREFIX + json.dumps({**record, "seconds": time.perf_counter() - self.started}), flush=True)
        if sys.stdin.readline().strip() != "go":
            raise SystemExit("bench side: the orchestrator stopped")
        self.started = time.perf_counter()


def run_loramerge(spec: dict[str, Any], turns: Turns) -> None:
    recipe = TrainRecipe.model_validate(spec["recipe"])
    cycle = ["task", "align"] if spec["mode"] == "joint" else [spec["mode"]]
    counted = [0]

    def on_step(state: LoopState) -> None:
        tokens, counted[0] = state.tokens - counted[0], state.tokens
        objective = cycle[(state.micro - 1) % len(cycle)]
        turns.step_done(
            {"step": state.step, "tokens": tokens, "loss": state.last_losses.get(f"{objective}_loss"), "objective": objective}
        )

    mode = "align" if spec["mode"] == "align" else "task"
    train_adapter(recipe, mode, Path(spec["out"]), overwrite=True, on_step=on_step)


def loramerge_batches(recipe: TrainRecipe, spec: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
    """The batches loramerge's stream gives in its first steps (`build_streams`, the same code train_adapter
    runs), so the Trainer sees the same token ids."""
    tokenizer = load_tokenizer(parse_model_spec(recipe.model))
    mode = "align" if spec["mode"] == "align" else "task"
    streams, _, _ = build_streams(recipe, mode, tokenizer)
    stream = streams[ALIGN if mode == "align" else TASK]
    return [stream.next_batch() for _ in range(recipe.max_steps)]


class BatchList(torch.utils.data.Dataset):
    def __init__(self, batches: list[dict[str, torch.Tensor]]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.batches[index]


class PrebatchedTrainer(Trainer):
    """A Trainer whose data set items are whole batches, in order; records each step's exact loss."""

    def __init__(self, *args: Any, align_layer: int | None, temperature: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.align_layer = align_layer
        self.temperature = temperature
        self.step_losses: list[float] = []

    def _get_train_sampler(self, *args: Any, **kwargs: Any) -> SequentialSampler:
        return SequentialSampler(self.train_dataset)

    def compute_loss(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor], *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.align_layer is None:
            loss = super().compute_loss(model, inputs, *args, **kwargs)
        else:  # the reference code: the whole model (and head) runs to read hidden_states[k]
            output = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], output_hidden_states=True)
            pooled = mean_pool(output.hidden_states[self.align_layer], inputs["attention_mask"], True)
            half = pooled.shape[0] // 2
            loss = info_nce(pooled[:half], pooled[half:], self.temperature)
        self.step_losses.append(float(loss.detach()))
        return loss


class StepReporter(TrainerCallback):
    def __init__(self, turns: Turns, trainer_losses: list[float], batches: list[dict[str, torch.Tensor]], objective: str) -> None:
        self.turns, self.losses, self.batches, self.objective = turns, trainer_losses, batches, objective

    def on_step_end(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        batch = self.batches[state.global_step - 1]
        self.turns.step_done(
            {
                "step": state.global_step,
                "tokens": int(batch["attention_mask"].sum()),
                "loss": self.losses[-1],
                "objective": self.objective,
            }
        )


def peak_memory() -> dict[str, float]:
    peaks = {"vmhwm_mib": vmhwm_mib()}
    if torch.cuda.is_available():
        peaks["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return peaks


def run_trainer(spec: dict[str, Any], turns: Turns) -> None:
    recipe = TrainRecipe.model_validate(spec["recipe"])
    batches = loramerge_batches(recipe, spec)
    set_seed(recipe.seed)
    model = get_peft_model(load_causal_lm(parse_model_spec(recipe.model)), lora_config(recipe, None))
    arguments = TrainingArguments(
        output_dir=spec["out"],
        per_device_train_batch_size=1,  # one data set item is one whole batch
        max_steps=recipe.max_steps,
        learning_rate=recipe.optimizer.learning_rate,
        lr_scheduler_type="inverse_sqrt",
        warmup_steps=max(1, round(recipe.optimizer.warmup_ratio * recipe.max_steps)),
        weight_decay=recipe.optimizer.weight_decay,
        max_grad_norm=recipe.optimizer.max_grad_norm,
        optim="adamw_torch",
        report_to=[],
        save_strategy="no",
        logging_steps=10**6,
        dataloader_num_workers=0,
        disable_tqdm=True,
        remove_unused_columns=False,
        seed=recipe.seed,
        use_cpu=spec["device"] == "cpu",
        bf16=recipe.precision == "bf16",  # autocast with float32 master weights, as loramerge's precision: bf16
    )
    # loramerge's default layer, round(L/2), when the recipe names none
    align_layer = (recipe.align.layer or default_layer(num_decoder_layers(model))) if spec["mode"] == "align" else None
    trainer = PrebatchedTrainer(
        model=model,
        args=arguments,
        train_dataset=BatchList(batches),
        data_collator=lambda items: items[0],
        align_layer=align_layer,
        temperature=recipe.align.temperature,
    )
    trainer.add_callback(StepReporter(turns, trainer.step_losses, batches, spec["mode"]))
    trainer.train()


def main() -> None:
    spec = json.loads(sys.argv[1])
    torch.set_num_threads(spec.get("threads", torch.get_num_threads()))
    turns = Turns()
    {"loramerge": run_loramerge, "trainer": run_trainer}[spec["side"]](spec, turns)
    print(PREFIX + json.dumps(peak_memory()), flush=True)


if __name__ == "__main__":
    main()
