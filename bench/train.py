"""Training benchmark: loramerge's trainer vs a plain transformers Trainer, and alignment vs task step time.

Run:  .venv/bin/python bench/train.py [--quick] [--vocab N] [--only throughput|steps]
Prints markdown tables and writes bench/out/train.json and bench/out/train.md (train-<variant>.* with options).

1. Throughput. The same random Llama (built from a config, saved with a tokenizer exactly as
   `loramerge train-task --model DIR` reads it), the same fixed-length task JSONL, micro-batch, LoRA,
   AdamW, linear schedule, fp32 and step count for (a) `train_adapter(recipe, "task", out)` and (b) the
   reference code's baseline, a `transformers.Trainer` on a `peft.get_peft_model` model. The two run in
   two threads that take turns one optimizer step at a time (`Lockstep`), so each loramerge step is timed
   next to a Trainer step under the same background load. A step is timed from getting the turn to its
   end-of-step callback (loramerge's `on_step`, the Trainer's `on_step_end`): fetch and collate a batch,
   forward, backward, clip, optimizer and scheduler step, bookkeeping on both sides; model loading,
   tokenization and writing the adapter fall outside. The first `warmup_steps` steps are dropped. Tokens =
   non-pad tokens (attention_mask sum) of the timed steps, counted from each side's own batches. The
   headline ratio is the median over all step pairs of the pair's tokens/s ratio.
2. Alignment vs task step. `ObjectiveModel` with LoRA on all layers; a task batch of 2B rows and a pair
   batch of B pairs (2B rows) of the same length T, so both forward the same tokens; forward + backward.
   Each alignment step is timed between two task steps and divided by their mean (`flanked_ratios`).

The machine is shared and its load swings 3-15x within seconds: both parts compare steps that ran
seconds apart, never whole runs, so a concurrent load slows both sides alike and the ratios stay meaningful.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import transformers
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase, Trainer, TrainerCallback, TrainingArguments

from loramerge.data.records import IGNORE_INDEX, TokenizedTask, collate_pairs, read_task_file
from loramerge.data.tokenization import tokenize_task
from loramerge.models.layer_exit import default_layer
from loramerge.testing.tiny import ALL_LINEAR, EXAMPLE_PAIRS, save_tiny_llama_with_tokenizer
from loramerge.train.loop import LoopState
from loramerge.train.objectives import ALIGN, TASK, ObjectiveModel
from loramerge.train.recipe import AlignSettings, LoraSettings, OptimizerSettings, TrainRecipe
from loramerge.train.run import train_adapter

OUT = Path(__file__).resolve().parent / "out"
# ~23 M parameters: big enough that matrix products, not Python overhead, dominate a step (as in real
# fine-tuning), small enough for one 8-row x 128-token step to take ~1 s on 2 cores.
SHAPE = {
    "hidden_size": 512,
    "intermediate_size": 1376,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "max_position_embeddings": 256,
}
QUICK_SHAPE = {
    **SHAPE,
    "hidden_size": 128,
    "intermediate_size": 344,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
LORA = {"r": 8, "alpha": 16.0, "dropout": 0.1}  # the paper's LoRA, on all 7 linear projections
LEARNING_RATE = 5e-4
WARMUP_LR_STEPS = 2  # linear schedule: 2 warm-up steps, then linear decay to 0, on both sides
SEED = 0
# Every record is BOS + 63 prompt tokens + 63 completion tokens + EOS = 128 tokens: no padding, so both
# sides forward exactly the same tokens and the loss covers the 64 completion + EOS labels.
PROMPT_TOKENS = COMPLETION_TOKENS = 63


@dataclass(frozen=True)
class Setup:
    model_dir: Path
    data_file: Path
    shape: dict[str, int]
    batch_size: int  # micro-batch rows for the throughput runs; the step benchmark uses 2 x pairs rows
    steps: int
    warmup_steps: int  # steps left out of the timing
    rounds: int  # loramerge/Trainer rounds, alternating which goes first
    records: int
    pairs: int  # B of part 2: B pairs = 2B rows, task batch 2B rows
    step_repeats: int

    @property
    def sequence_tokens(self) -> int:
        return PROMPT_TOKENS + COMPLETION_TOKENS + 2


def full_setup(root: Path) -> Setup:
    # A step of 8 x 128 tokens takes ~1.1 s on 2 idle cores and 1.8-3.5 s on the loaded machine: 20 steps
    # with 4 dropped give 16 timed step pairs a round, and 3 rounds x 2 sides x 20 steps take 2.5 minutes
    # idle. 256 records = 32 batches of 8, so neither side crosses an epoch boundary.
    return Setup(
        root / "model",
        root / "task.jsonl",
        SHAPE,
        batch_size=8,
        steps=20,
        warmup_steps=4,
        rounds=3,
        records=256,
        pairs=4,
        step_repeats=7,
    )


def quick_setup(root: Path) -> Setup:
    return Setup(
        root / "model",
        root / "task.jsonl",
        QUICK_SHAPE,
        batch_size=4,
        steps=8,
        warmup_steps=2,
        rounds=1,
        records=64,
        pairs=2,
        step_repeats=3,
    )


# --- inputs ---------------------------------------------------------------------------------------


def encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def fixed_length_text(rng: random.Random, tokenizer: PreTrainedTokenizerBase, words: list[str], tokens: int, prefix: str) -> str:
    """prefix + words from EXAMPLE_PAIRS up to a few tokens short of `tokens`, then digits to hit it exactly.

    The tokenizer learned no merges of digits (EXAMPLE_PAIRS has none), so each appended digit is one
    token; the assertion catches a tokenizer for which that is false.
    """
    text = prefix + rng.choice(words)
    while True:
        longer = f"{text} {rng.choice(words)}"
        if len(encode(tokenizer, longer)) > tokens - 4:
            break
        text = longer
    text += "".join(rng.choice("0123456789") for _ in range(tokens - len(encode(tokenizer, text))))
    assert len(encode(tokenizer, text)) == tokens, text
    return text


def write_task_file(setup: Setup) -> None:
    tokenizer = AutoTokenizer.from_pretrained(setup.model_dir)
    words = [word for pair in EXAMPLE_PAIRS for sentence in pair for word in sentence.split()]
    rng = random.Random(SEED)
    with setup.data_file.open("w", encoding="utf-8") as handle:
        for _ in range(setup.records):
            prompt = fixed_length_text(rng, tokenizer, words, PROMPT_TOKENS, "")
            # The leading space makes the boundary a pre-tokenizer split, so prompt + completion tokenizes
            # as the two pieces concatenated (loramerge checks this and would fall back otherwise).
            completion = fixed_length_text(rng, tokenizer, words, COMPLETION_TOKENS, " ")
            handle.write(json.dumps({"prompt": prompt, "completion": completion}) + "\n")


def tokenized_examples(setup: Setup) -> list[TokenizedTask]:
    """The task file as loramerge tokenizes it; the Trainer gets the same ids, so both see equal tokens."""
    tokenizer = AutoTokenizer.from_pretrained(setup.model_dir)
    examples = tokenize_task(read_task_file(setup.data_file), tokenizer, setup.sequence_tokens)
    lengths = {len(example.input_ids) for example in examples}
    assert lengths == {setup.sequence_tokens} and len(examples) == setup.records, lengths
    return examples


def prepare_inputs(setup: Setup) -> None:
    if setup.model_dir.exists():
        shutil.rmtree(setup.model_dir)
    torch.manual_seed(SEED)
    save_tiny_llama_with_tokenizer(setup.model_dir, seed=SEED, **setup.shape)
    write_task_file(setup)
    tokenized_examples(setup)  # fail early if the records are not all exactly sequence_tokens long


def load_peft_model(setup: Setup) -> torch.nn.Module:
    """Base model loaded the way loramerge loads it (fp32, no KV cache), LoRA as loramerge configures it."""
    model = AutoModelForCausalLM.from_pretrained(setup.model_dir, dtype=torch.float32)
    model.config.use_cache = False
    config = LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules=list(ALL_LINEAR),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


# --- part 1: throughput ---------------------------------------------------------------------------

LORAMERGE, TRAINER = "loramerge", "trainer"


class Lockstep:
    """Runs the two trainings in two threads that take turns, one optimizer step each.

    Other jobs on this 2-core machine come and go within seconds: in back-to-back whole runs a step took
    0.6 s in one run and 8 s in the next, and single steps stalled for 9-15 s. Alternating single steps
    puts each loramerge step next to a Trainer step under the same background load. Only one side
    computes at a time (the other waits on the condition at its step boundary), so neither slows the other.

    A step's time runs from the moment its side got the turn to its own end-of-step callback: the same
    work on both sides (fetch and collate a batch, forward, backward, clip, optimizer and scheduler step,
    bookkeeping). Step 1 also holds the model loading (both sides load at once) and is always dropped.
    """

    def __init__(self, first: str) -> None:
        self.condition = threading.Condition()
        self.turn = first
        self.finished: set[str] = set()
        self.resumed = dict.fromkeys((LORAMERGE, TRAINER), time.perf_counter())
        self.seconds: dict[str, list[float]] = {LORAMERGE: [], TRAINER: []}
        self.tokens: dict[str, list[int]] = {LORAMERGE: [], TRAINER: []}

    @staticmethod
    def other(name: str) -> str:
        return TRAINER if name == LORAMERGE else LORAMERGE

    def step_end(self, name: str, tokens: int, last: bool) -> None:
        now = time.perf_counter()
        with self.condition:
            self.seconds[name].append(now - self.resumed[name])
            self.tokens[name].append(tokens)
            self.turn = self.other(name)
            if last:
                self.finished.add(name)
            self.condition.notify_all()
            # After its last step a side also waits, so its teardown (writing the adapter) cannot overlap
            # the other side's last step.
            self.condition.wait_for(lambda: self.other(name) in self.finished or (self.turn == name and not last))
        self.resumed[name] = time.perf_counter()

    def abandon(self, name: str) -> None:
        """A side that failed stops taking turns, so the other runs on to its end instead of hanging."""
        with self.condition:
            self.finished.add(name)
            self.condition.notify_all()


def loramerge_recipe(setup: Setup) -> TrainRecipe:
    return TrainRecipe(
        model=str(setup.model_dir),
        data=str(setup.data_file),
        lora=LoraSettings(**LORA),
        # loramerge takes ceil(warmup_ratio * steps) warm-up steps; aim half a step low so rounding cannot add one
        optimizer=OptimizerSettings(
            learning_rate=LEARNING_RATE,
            schedule="linear",
            warmup_ratio=(WARMUP_LR_STEPS - 0.5) / setup.steps,
            weight_decay=0.0,
            max_grad_norm=1.0,
        ),
        batch_size=setup.batch_size,
        max_steps=setup.steps,
        max_length=setup.sequence_tokens,
        seed=SEED,
        log_every=setup.steps,  # like the Trainer's logging_steps: one metrics line, at the end
    )


def run_loramerge(setup: Setup, out: Path, clock: Lockstep) -> dict[str, Any]:
    counted = [0]  # LoopState.tokens is cumulative non-pad tokens (attention_mask sum); keep the step's share

    def on_step(state: LoopState) -> None:
        step_tokens, counted[0] = state.tokens - counted[0], state.tokens
        clock.step_end(LORAMERGE, step_tokens, last=state.step == setup.steps)

    result = train_adapter(loramerge_recipe(setup), "task", out, overwrite=True, on_step=on_step)
    assert result.out is not None
    return {"final_loss": result.metrics["task_loss"]}


class PaddingCollator:
    """Right-pads input_ids/attention_mask/labels (labels with -100) and counts the non-pad tokens."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id
        self.tokens: list[int] = []  # per batch, in the order the DataLoader builds them

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(row["input_ids"]) for row in rows)

        def pad(key: str, value: int) -> torch.Tensor:
            return torch.tensor([row[key] + [value] * (width - len(row[key])) for row in rows], dtype=torch.long)

        batch = {"input_ids": pad("input_ids", self.pad_id), "labels": pad("labels", IGNORE_INDEX)}
        batch["attention_mask"] = torch.tensor([[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in rows])
        self.tokens.append(int(batch["attention_mask"].sum()))
        return batch


class LockstepCallback(TrainerCallback):
    def __init__(self, clock: Lockstep, collator: PaddingCollator, steps: int) -> None:
        self.clock, self.collator, self.steps = clock, collator, steps

    def on_step_end(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        # With grad_accum 1 and no DataLoader workers the Trainer collates step i's batch just before step i.
        tokens = self.collator.tokens[state.global_step - 1]
        self.clock.step_end(TRAINER, tokens, last=state.global_step == self.steps)


def trainer_arguments(setup: Setup, out: Path) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=setup.batch_size,
        max_steps=setup.steps,
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="linear",
        warmup_steps=WARMUP_LR_STEPS,
        weight_decay=0.0,
        max_grad_norm=1.0,
        # loramerge builds torch.optim.AdamW with its defaults; the Trainer's default is the fused variant.
        optim="adamw_torch",
        report_to=[],
        save_strategy="no",
        logging_steps=10**6,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=SEED,
        use_cpu=True,
    )


def build_trainer(setup: Setup, out: Path, clock: Lockstep) -> Trainer:
    """Built in the main thread before the round starts: TrainingArguments resets accelerate's process-wide
    state, which the loramerge thread's Accelerator reads at every step."""
    model = load_peft_model(setup)
    tokenizer = AutoTokenizer.from_pretrained(setup.model_dir)
    rows = [{"input_ids": e.input_ids, "labels": e.labels} for e in tokenized_examples(setup)]
    collator = PaddingCollator(tokenizer.pad_token_id)
    return Trainer(
        model=model,
        args=trainer_arguments(setup, out),
        train_dataset=rows,
        data_collator=collator,
        callbacks=[LockstepCallback(clock, collator, setup.steps)],
    )


def side_rates(seconds: list[float], tokens: list[int], warmup: int) -> dict[str, Any]:
    """tokens/s from the median step (robust to the odd stalled step) and from the whole timed window."""
    seconds, tokens = seconds[warmup:], tokens[warmup:]
    median = statistics.median(seconds)
    return {
        "timed_steps": len(seconds),
        "tokens": sum(tokens),
        "median_step_seconds": median,
        "tokens_per_second": sum(tokens) / len(tokens) / median,
        "window_seconds": sum(seconds),
        "window_tokens_per_second": sum(tokens) / sum(seconds),
        "step_seconds": [round(s, 4) for s in seconds],
    }


def run_round(setup: Setup, first: str) -> dict[str, Any]:
    clock = Lockstep(first)
    trainer = build_trainer(setup, OUT / "train" / TRAINER, clock)
    runners = {
        LORAMERGE: lambda: run_loramerge(setup, OUT / "train" / LORAMERGE, clock),
        TRAINER: lambda: {"final_loss": trainer.train().training_loss},
    }
    outcome: dict[str, Any] = {}

    def target(name: str) -> None:
        try:
            outcome[name] = runners[name]()
        except BaseException as error:  # re-raised in the main thread below
            outcome[name] = error
            clock.abandon(name)

    threads = [threading.Thread(target=target, args=(name,), name=name) for name in (first, Lockstep.other(first))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for value in outcome.values():
        if isinstance(value, BaseException):
            raise value
    result: dict[str, Any] = {"first": first}
    for name in (LORAMERGE, TRAINER):
        assert len(clock.seconds[name]) == setup.steps, (name, len(clock.seconds[name]))
        result[name] = {**side_rates(clock.seconds[name], clock.tokens[name], setup.warmup_steps), **outcome[name]}
    for key in ("tokens_per_second", "window_tokens_per_second"):
        result[f"ratio_{key}"] = result[LORAMERGE][key] / result[TRAINER][key]
    result["paired_ratios"] = paired_ratios(clock, setup.warmup_steps)
    return result


def paired_ratios(clock: Lockstep, warmup: int) -> list[float]:
    """(loramerge tokens/s) / (Trainer tokens/s) of step i of each side; the two ran back to back."""
    sides = [list(zip(clock.tokens[name], clock.seconds[name]))[warmup:] for name in (LORAMERGE, TRAINER)]
    return [round((lt / ls) / (tt / ts), 4) for (lt, ls), (tt, ts) in zip(*sides)]


def throughput_benchmark(setup: Setup) -> dict[str, Any]:
    rounds = []
    for index in range(setup.rounds):
        rounds.append(run_round(setup, LORAMERGE if index % 2 == 0 else TRAINER))  # alternate who steps first
        row = rounds[-1]
        print(
            f"  round {index + 1}: loramerge {row[LORAMERGE]['tokens_per_second']:.0f} tok/s, "
            f"Trainer {row[TRAINER]['tokens_per_second']:.0f} tok/s (median step), "
            f"paired ratio {statistics.median(row['paired_ratios']):.3f}",
            flush=True,
        )

    def median(name: str, key: str) -> float:
        return statistics.median(r[name][key] for r in rounds)

    pairs = [ratio for r in rounds for ratio in r["paired_ratios"]]
    quartiles = statistics.quantiles(pairs, n=4)
    return {
        "rounds": rounds,
        "loramerge_tokens_per_second": median(LORAMERGE, "tokens_per_second"),
        "trainer_tokens_per_second": median(TRAINER, "tokens_per_second"),
        # The headline ratio: median over all step pairs of all rounds. Each pair ran back to back, so a
        # background job that slows one slows both; the per-round figures below are for comparison.
        "ratio": statistics.median(pairs),
        "ratio_quartiles": [quartiles[0], quartiles[2]],
        "step_pairs": len(pairs),
        "ratio_of_median_steps": statistics.median(r["ratio_tokens_per_second"] for r in rounds),
        "loramerge_window_tokens_per_second": median(LORAMERGE, "window_tokens_per_second"),
        "trainer_window_tokens_per_second": median(TRAINER, "window_tokens_per_second"),
        "window_ratio": statistics.median(r["ratio_window_tokens_per_second"] for r in rounds),
        "tokens_per_step": setup.batch_size * setup.sequence_tokens,
    }


# --- part 2: alignment step vs task step ----------------------------------------------------------


def step_batches(setup: Setup, vocab: int) -> dict[str, dict[str, torch.Tensor]]:
    """A task batch of 2B rows and a pair batch of B pairs (2B rows), all T tokens, no padding."""
    generator = torch.Generator().manual_seed(SEED)
    rows, length = 2 * setup.pairs, setup.sequence_tokens
    ids = torch.randint(4, vocab, (rows, length), generator=generator)  # ids 0-3 are the special tokens
    labels = ids.clone()
    labels[:, : length // 2] = IGNORE_INDEX  # loss on the second half, as a prompt/completion record
    task = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    sources, targets = ids[: setup.pairs].tolist(), ids[setup.pairs :].tolist()
    return {TASK: task, ALIGN: collate_pairs(sources, targets, pad_id=0)}


def timed_step(model: ObjectiveModel, objective: str, batch: dict[str, torch.Tensor]) -> float:
    start = time.perf_counter()
    loss = model(objective, **batch)
    loss.backward()
    elapsed = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    return elapsed


STEADY = 1.25  # the two task steps around an alignment step must agree within 25 %


def flanked_ratios(
    models: dict[int, ObjectiveModel], batches: dict[str, dict[str, torch.Tensor]], ks: list[int], repeats: int
) -> tuple[dict[int, list[float]], list[float], dict[int, list[float]]]:
    """Every alignment step is timed between two task steps and divided by their mean.

    Background jobs here slow a step by 3-15x for seconds to minutes (8 x 128-token task steps of 1.1 s
    took 15.8 s in one run); a ratio to the neighbouring task steps, 1-2 s away, survives a slow change
    of load. A ratio whose two neighbours differ by more than STEADY saw the load change during the
    measurement and is left out (the kept count is reported), unless that would leave none.
    """
    ratios: dict[int, list[float]] = {k: [] for k in ks}
    unsteady: dict[int, list[float]] = {k: [] for k in ks}
    align_seconds: dict[int, list[float]] = {k: [] for k in ks}
    task_seconds = [timed_step(models[0], TASK, batches[TASK])]
    for repeat in range(repeats + 1):  # repeat 0 warms up every path and is dropped
        for k in ks if repeat % 2 == 0 else list(reversed(ks)):
            align = timed_step(models[k], ALIGN, batches[ALIGN])
            task_seconds.append(timed_step(models[0], TASK, batches[TASK]))
            if repeat > 0:
                before, after = task_seconds[-2:]
                steady = max(before, after) <= STEADY * min(before, after)
                (ratios if steady else unsteady)[k].append(align / statistics.mean((before, after)))
                align_seconds[k].append(align)
    kept = {k: ratios[k] or unsteady[k] for k in ks}
    return kept, task_seconds[1 + len(ks) :], align_seconds


def step_benchmark(setup: Setup) -> dict[str, Any]:
    peft_model = load_peft_model(setup)
    layers = setup.shape["num_hidden_layers"]
    # The default (L + 1) // 2, and L/4, 3L/4 to show the cost follows k/L.
    ks = sorted({max(1, layers // 4), default_layer(layers), (3 * layers) // 4})
    models = {k: ObjectiveModel(peft_model, k, AlignSettings()) for k in ks}
    models[0] = ObjectiveModel(peft_model, None, AlignSettings())  # task steps only
    models[0].train()
    batches = step_batches(setup, peft_model.config.vocab_size)
    ratios, task_seconds, align_seconds = flanked_ratios(models, batches, ks, setup.step_repeats)
    return {
        "rows": 2 * setup.pairs,
        "tokens_per_row": setup.sequence_tokens,
        "num_layers": layers,
        "default_layer": default_layer(layers),
        "task_step_seconds": statistics.median(task_seconds),
        "task_step_all": [round(t, 4) for t in task_seconds],
        "align": [
            {
                "layer": k,
                "k_over_L": k / layers,
                "step_seconds": statistics.median(align_seconds[k]),
                "ratio_to_task": statistics.median(ratios[k]),
                "ratios_kept": len(ratios[k]),
                "ratios": [round(r, 4) for r in ratios[k]],
                "all": [round(t, 4) for t in align_seconds[k]],
            }
            for k in ks
        ],
    }


# --- report ---------------------------------------------------------------------------------------


def git_state() -> dict[str, Any]:
    """The commit measured, and whether loramerge/ differed from it (other work may edit the tree)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=OUT.parent.parent).stdout.strip()

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "loramerge_uncommitted": bool(git("status", "--porcelain", "loramerge")),
    }


def machine() -> dict[str, Any]:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model_name = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), "?")
    return {
        "cpu": model_name,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        **git_state(),
    }


def throughput_table(part1: dict[str, Any]) -> list[str]:
    def per_round(name: str, key: str) -> str:
        return ", ".join(f"{r[name][key]:.0f}" for r in part1["rounds"])

    def ratios(key: str) -> str:
        return ", ".join(f"{r[key]:.3f}" for r in part1["rounds"])

    return [
        f"Throughput, {part1['tokens_per_step']} tokens per step:",
        "",
        "| trainer | tokens/s (median step, median of rounds) | per round |",
        "|---|---:|---|",
        f"| loramerge `train_adapter` | {part1['loramerge_tokens_per_second']:.0f} | {per_round(LORAMERGE, 'tokens_per_second')} |",
        f"| transformers `Trainer` + PEFT | {part1['trainer_tokens_per_second']:.0f} | {per_round(TRAINER, 'tokens_per_second')} |",
        "",
        "| loramerge / Trainer throughput | value | per round |",
        "|---|---:|---|",
        f"| **median of {part1['step_pairs']} back-to-back step pairs** (quartiles) | **{part1['ratio']:.3f}** "
        f"({part1['ratio_quartiles'][0]:.3f}-{part1['ratio_quartiles'][1]:.3f}) | "
        + ", ".join(f"{statistics.median(r['paired_ratios']):.3f}" for r in part1["rounds"])
        + " |",
        f"| ratio of median step times, median of rounds | {part1['ratio_of_median_steps']:.3f} | {ratios('ratio_tokens_per_second')} |",
        f"| ratio of whole timed windows (sum of steps), median of rounds | {part1['window_ratio']:.3f} | "
        f"{ratios('ratio_window_tokens_per_second')} |",
        "",
    ]


def steps_table(part2: dict[str, Any]) -> list[str]:
    lines = [
        f"| step ({part2['rows']} rows x {part2['tokens_per_row']} tokens, forward + backward) | median s | "
        "/ task step (median of flanked ratios) | ratios kept | k / L |",
        "|---|---:|---:|---:|---:|",
        f"| task (all {part2['num_layers']} blocks + LM head) | {part2['task_step_seconds']:.3f} | 1.000 | | |",
    ]
    for row in part2["align"]:
        default = " (default)" if row["layer"] == part2["default_layer"] else ""
        lines.append(
            f"| align, k = {row['layer']} of {part2['num_layers']}{default} | {row['step_seconds']:.3f} | "
            f"**{row['ratio_to_task']:.3f}** | {row['ratios_kept']} of {len(row['all'])} | {row['k_over_L']:.3f} |"
        )
    return [*lines, ""]


def markdown(results: dict[str, Any]) -> str:
    shape = results["setup"]["shape"]
    lines = [f"`{results['command']}`; model {json.dumps(shape)} (vocab {shape.get('vocab_size', 320)})", ""]
    if "throughput" in results:
        lines += throughput_table(results["throughput"])
    if "steps" in results:
        lines += steps_table(results["steps"])
    return "\n".join(lines)


def targets(results: dict[str, Any]) -> dict[str, bool]:
    reached = {}
    if "throughput" in results:
        reached["throughput >= 1.0x Trainer"] = results["throughput"]["ratio"] >= 1.0
    if "steps" in results:
        steps = results["steps"]
        default = next(r for r in steps["align"] if r["layer"] == steps["default_layer"])
        reached["align step <= 0.6x task step at the default layer"] = default["ratio_to_task"] <= 0.6
    return reached


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, few steps: a < 60 s smoke run")
    parser.add_argument(
        "--vocab",
        type=int,
        default=None,
        help="model vocabulary (default: the tokenizer's 320). Real models' LM heads are 32k-256k wide; "
        "a larger value adds embedding/LM-head rows the data never uses, so the logits cost what they would",
    )
    parser.add_argument("--only", choices=["throughput", "steps"], default=None, help="run one part")
    return parser.parse_args()


def output_name(args: argparse.Namespace) -> str:
    return (
        "train"
        + ("-quick" if args.quick else "")
        + (f"-vocab{args.vocab}" if args.vocab else "")
        + (f"-{args.only}" if args.only else "")
    )


def main() -> None:
    args = parse_args()
    name = output_name(args)
    root = OUT / f"{name}-inputs"
    root.mkdir(parents=True, exist_ok=True)
    setup = quick_setup(root) if args.quick else full_setup(root)
    if args.vocab:
        setup = replace(setup, shape={**setup.shape, "vocab_size": args.vocab})
    started = time.perf_counter()
    prepare_inputs(setup)
    results: dict[str, Any] = {
        "command": " ".join([".venv/bin/python bench/train.py", *sys.argv[1:]]),
        "machine": machine(),
        "setup": {**asdict(setup), "lora": LORA},
    }
    if args.only in (None, "throughput"):
        print("part 1: throughput", flush=True)
        results["throughput"] = throughput_benchmark(setup)
    if args.only in (None, "steps"):
        print("part 2: alignment vs task step", flush=True)
        results["steps"] = step_benchmark(setup)
    results["targets"] = targets(results)
    results["wall_seconds"] = time.perf_counter() - started
    table = markdown(results)
    print(table)
    for target, reached in results["targets"].items():
        print(f"{target}: {'reached' if reached else 'NOT reached'}")
    (OUT / f"{name}.json").write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    (OUT / f"{name}.md").write_text(table, encoding="utf-8")


if __name__ == "__main__":
    main()
